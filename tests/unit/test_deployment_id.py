"""The deployment id: configured, or made once and shared by every replica through storage."""

from __future__ import annotations

import asyncio

import pytest

from shared.deployment import DEPLOYMENT_DOC, DEPLOYMENT_ID_PATTERN, deployment_id
from tests.unit.test_aml_backend import MemoryStore


async def test_made_once_and_then_read_by_every_replica() -> None:
    store = MemoryStore()
    ids = await asyncio.gather(*(deployment_id(store) for _ in range(5)))  # type: ignore[arg-type]
    assert len(set(ids)) == 1 and DEPLOYMENT_ID_PATTERN.match(ids[0])
    assert store.docs[DEPLOYMENT_DOC][0] == {"deployment_id": ids[0]}
    assert await deployment_id(store) == ids[0]  # type: ignore[arg-type]


async def test_a_configured_id_wins_and_a_bad_one_is_refused() -> None:
    store = MemoryStore()
    assert await deployment_id(store, "prod01") == "prod01"  # type: ignore[arg-type]
    assert DEPLOYMENT_DOC not in store.docs
    with pytest.raises(ValueError, match="TUNEBUS_DEPLOYMENT_ID"):
        await deployment_id(store, "Prod_01")  # type: ignore[arg-type]
