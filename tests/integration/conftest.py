"""Fixtures the integration tests share, on top of tests/conftest.py's infrastructure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.storage import BlobStore
from tests.conftest import Infra


@pytest.fixture
async def store(infra: Infra, fresh_container: str) -> AsyncIterator[BlobStore]:
    """A BlobStore on a container of this test's own."""
    async with BlobStore(infra.storage_connection_string, fresh_container) as blob_store:
        yield blob_store


@pytest.fixture
def work_dir(reachable_dir: Path) -> Path:
    """The submitter's work folder: one the trial user can reach."""
    return reachable_dir
