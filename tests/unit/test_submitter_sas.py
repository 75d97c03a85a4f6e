"""Each trial gets a SAS made when it is submitted, living for its own time limit plus a margin."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from services.aml_submitter.service import Submitter, _Experiment
from services.aml_submitter.trial_env import DEFAULT_TRIAL_LIMIT, SAS_MARGIN, sas_lifetime
from shared.settings import AZURITE_CONNECTION_STRING
from shared.storage import BlobStore


def _expiry(url: str) -> datetime:
    expiry = parse_qs(urlsplit(url).query)["se"][0]
    return datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def test_a_trial_submitted_late_in_a_long_experiment_gets_a_sas_that_outlives_it(tmp_path: Path) -> None:
    store = BlobStore(AZURITE_CONNECTION_STRING, "tunebus")  # no I/O: signing is local
    submitter = Submitter(bus=None, store=store, work_dir=tmp_path, replica="r1")  # type: ignore[arg-type]
    experiment = _Experiment(config={"maxTrialDuration": 600}, code_dir=None, shared_storage=None)
    url = submitter._results_sas_url(experiment, "experiments/e/trials/t/results.jsonl")
    expected = datetime.now(UTC) + timedelta(seconds=600) + timedelta(hours=1)
    assert abs((_expiry(url) - expected).total_seconds()) < 60
    query = parse_qs(urlsplit(url).query)
    assert query["sp"] == ["a"] and query["sr"] == ["b"]  # append only, to that one blob
    assert urlsplit(url).path == "/devstoreaccount1/tunebus/experiments/e/trials/t/results.jsonl"


def test_without_a_trial_limit_the_sas_does_not_end_with_the_experiment_s_duration() -> None:
    # At maxExperimentDuration no new trial starts but running ones go on (as in NNI), so a
    # trial without maxTrialDuration must be able to write metrics after the experiment's time.
    one_hour = sas_lifetime({"maxExperimentDuration": 3600})
    assert one_hour >= DEFAULT_TRIAL_LIMIT
    long_run = sas_lifetime({"maxExperimentDuration": 30 * 86400})
    assert long_run >= timedelta(days=30) + SAS_MARGIN
    limited = sas_lifetime({"maxExperimentDuration": 3600, "maxTrialDuration": 600})
    assert limited == timedelta(seconds=600) + SAS_MARGIN


def test_a_development_storage_connection_string_signs_sas_urls_too() -> None:
    # UseDevelopmentStorage=true names no AccountKey field: the key is Azurite's well-known one.
    store = BlobStore("UseDevelopmentStorage=true", "tunebus")
    url = store.results_sas_url("a b/results.jsonl", timedelta(minutes=5))
    assert url.startswith("http://127.0.0.1:10000/devstoreaccount1/tunebus/a%20b/results.jsonl?")
    assert parse_qs(urlsplit(url).query)["sp"] == ["a"]


class _DocStore:
    """experiment.json of any experiment (no code, no sharedStorage); counts the reads."""

    def __init__(self) -> None:
        self.reads: list[str] = []

    async def read_json(self, path: str) -> tuple[object, str]:
        self.reads.append(path)
        return {"config": {"trialConcurrency": 1}, "code_blob": None}, "etag"


def test_a_replica_keeps_a_bounded_number_of_experiments_loaded(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from services.aml_submitter import service

    monkeypatch.setattr(service, "MAX_CACHED_EXPERIMENTS", 3)
    store = _DocStore()
    submitter = Submitter(bus=None, store=store, work_dir=tmp_path, replica="r1")  # type: ignore[arg-type]

    async def load(*ids: str) -> None:
        for experiment_id in ids:
            await submitter._experiment(experiment_id)

    asyncio.run(load("e1", "e2", "e3", "e1", "e4", "e5"))
    assert list(submitter._experiments) == ["e1", "e4", "e5"]  # the least recently used left
    assert submitter._loading == {}
    reads = len(store.reads)
    asyncio.run(load("e5", "e1"))
    assert len(store.reads) == reads  # still cached: not read again
    asyncio.run(load("e2"))
    assert len(store.reads) == reads + 1 and "e4" not in submitter._experiments
