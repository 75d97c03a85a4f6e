"""The submitter's claims on local trials against Azurite: an attempt's trial runs at most once, so
its results blob has one writer, whatever the broker and the other replicas do.

Found by the chaos test: a replica started a trial, its RUNNING report failed (the broker was
down), so the claim stayed "starting"; another replica took it over and ran the same attempt
again into the same results blob, and the trial FAILED with "sequence 0 reported twice".
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.aml_submitter.backend import SubmitError
from services.aml_submitter.local import LocalBackend
from services.aml_submitter.service import Submitter
from shared.bus import TransientError
from shared.code_archive import build_code_archive
from shared.messages import TERMINAL_TRIAL_STATUSES, Message, TrialStatus, TrialStatusChanged, TrialSubmit
from shared.sandbox import Sandbox
from shared.storage import BlobStore, Layout

pytestmark = pytest.mark.integration

TRIAL = """import nni
params = nni.get_next_parameter()
nni.report_intermediate_result(params["x"] / 2)
nni.report_final_result(params["x"])
"""


@dataclass
class FlakyBus:
    """Records what is published; the first ``failures`` publishes raise, as with the broker down."""

    failures: int = 0
    published: list[Message] = field(default_factory=list)

    async def publish(self, msg: Message) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("the broker is down")
        self.published.append(msg)

    def statuses(self) -> list[TrialStatusChanged]:
        return [m for m in self.published if isinstance(m, TrialStatusChanged)]


async def _experiment(store: BlobStore, work_dir: Path, experiment_id: str) -> None:
    code = work_dir / "src"
    code.mkdir(exist_ok=True)
    (code / "trial.py").write_text(TRIAL)
    config = {"searchSpace": {"x": {"_type": "uniform", "_value": [0, 1]}},
              "trialCommand": "python3 trial.py", "trialConcurrency": 1, "maxTrialDuration": 600,
              "tuner": {"name": "Random"}, "trainingService": {"platform": "local"}}
    layout = Layout(experiment_id)
    await store.write_bytes(layout.code_archive, build_code_archive(code))
    await store.write_json(layout.experiment_doc, {"config": config, "code_blob": layout.code_archive})


def _submitter(store: BlobStore, work_dir: Path, bus: FlakyBus, replica: str = "replica-b") -> Submitter:
    submitter = Submitter(bus, store, work_dir / "work", replica)  # type: ignore[arg-type]
    submitter.backends["local"] = LocalBackend(work_dir / "work", submitter.report, submitter.upload_logs,
                                               sandbox=Sandbox.for_this_process())
    return submitter


def _submit(experiment_id: str) -> TrialSubmit:
    return TrialSubmit(experiment_id=experiment_id, trial_id="t1", sequence_id=0, parameters={"x": 0.5})


async def _end(bus: FlakyBus, timeout: float = 60, lost: bool | None = None) -> TrialStatusChanged:
    """The first end reported (with ``lost``: the first that is, or is not, a lost report)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for msg in bus.statuses():
            if msg.status in TERMINAL_TRIAL_STATUSES and lost in (None, msg.lost):
                return msg
        await asyncio.sleep(0.05)
    raise AssertionError(f"no end: {bus.published}")


async def test_a_failed_running_report_still_marks_the_claim_started(store: BlobStore,
                                                                     work_dir: Path) -> None:
    await _experiment(store, work_dir, "claims-a")
    bus = FlakyBus(failures=2)  # the RUNNING report fails twice, then the broker is back
    submitter = _submitter(store, work_dir, bus)
    await submitter.on_submit(_submit("claims-a"))  # does not raise: the trial runs
    claim = await store.read_json(Layout("claims-a").claim_blob("t1", 1))
    assert claim is not None and claim[0]["state"] == "started"
    end = await _end(bus)
    assert end.status == TrialStatus.SUCCEEDED, end.error
    statuses = [s.status for s in bus.statuses()]
    assert statuses == [TrialStatus.RUNNING, TrialStatus.SUCCEEDED], statuses  # in order, each once
    # The delivery seen again (by this replica or another) starts nothing more.
    await _submitter(store, work_dir, bus, "replica-c").on_submit(_submit("claims-a"))
    await asyncio.sleep(0.5)
    assert [s.status for s in bus.statuses()] == statuses
    results = await store.read_bytes(Layout("claims-a").results_blob("t1", 1))
    assert results is not None and len(results.splitlines()) == 2


async def test_a_claim_left_starting_is_reported_lost_not_run_again(store: BlobStore, work_dir: Path) -> None:
    """The replica that claimed the attempt may have started its trial (which may be writing its
    results still): the attempt is not run again into the same blob. Reported lost, the ingestor
    ends it from what it stored (a final result: SUCCEEDED) or the dispatcher runs a new attempt."""
    await _experiment(store, work_dir, "claims-b")
    layout = Layout("claims-b")
    stale = (datetime.now(UTC) - timedelta(seconds=60)).isoformat()
    await store.write_json(layout.claim_blob("t1", 1), {"replica": "replica-dead", "state": "starting",
                                                         "time": stale})
    bus = FlakyBus()
    submitter = _submitter(store, work_dir, bus)
    await submitter.on_submit(_submit("claims-b"))
    [report] = bus.statuses()
    assert report.lost and report.status == TrialStatus.FAILED and report.attempt == 1, report
    assert report.error is not None and "replica-dead" in report.error
    claim = await store.read_json(layout.claim_blob("t1", 1))
    assert claim is not None and claim[0]["state"] == "abandoned" and claim[0]["replica"] == "replica-b"
    assert not submitter.backends["local"].running()  # nothing started here
    assert not (work_dir / "work" / "claims-b" / "trials").exists()
    # Seen again (its report may not have got out), it is reported again, as the same message.
    await _submitter(store, work_dir, bus, "replica-c").on_submit(_submit("claims-b"))
    assert [s.message_id for s in bus.statuses()] == [report.message_id] * 2


async def test_a_started_claim_the_dispatcher_sent_again_for_is_reported_lost(
        store: BlobStore, work_dir: Path) -> None:
    """The dispatcher sends an attempt's submit again only when it heard nothing of it for its
    claim timeout; a replica that runs a job beats for it, so a claim "started" then belongs to a
    replica that is gone (chaos: its reports were lost with the broker, then it was killed).
    Answering "running elsewhere" for ever left the experiment unable to end."""
    await _experiment(store, work_dir, "claims-e")
    layout = Layout("claims-e")
    await store.write_json(layout.claim_blob("t1", 1), {"replica": "replica-gone", "state": "started",
                                                         "time": datetime.now(UTC).isoformat()})
    bus = FlakyBus()
    submitter = _submitter(store, work_dir, bus)
    await submitter.on_submit(_submit("claims-e"))  # a duplicate delivery of the first submit
    assert bus.statuses() == []  # the job runs elsewhere, as far as this replica can tell
    await submitter.on_submit(_submit("claims-e").model_copy(update={"resubmit": True}))
    [report] = bus.statuses()
    assert report.lost and report.status == TrialStatus.FAILED and report.attempt == 1, report
    assert report.error is not None and "replica-gone" in report.error
    claim = await store.read_json(layout.claim_blob("t1", 1))
    assert claim is not None and claim[0]["state"] == "abandoned" and claim[0]["previous"] == "replica-gone"
    assert not submitter.backends["local"].running()  # not run again into the same results


async def test_a_claim_whose_start_failed_is_released_for_the_retry(store: BlobStore, work_dir: Path) -> None:
    await _experiment(store, work_dir, "claims-c")
    bus = FlakyBus()
    broken = _submitter(store, work_dir, bus, "replica-x")
    broken.backends["local"].submit = _fails  # type: ignore[method-assign]
    with pytest.raises(TransientError):
        await broken.on_submit(_submit("claims-c"))
    claim = await store.read_json(Layout("claims-c").claim_blob("t1", 1))
    assert claim is not None and claim[0]["state"] == "released"
    # The retry, on another replica, starts it (a claim still "starting" would instead be
    # waited for and then abandoned: reported lost, never run).
    await _submitter(store, work_dir, bus, "replica-y").on_submit(_submit("claims-c"))
    end = await _end(bus)
    assert end.status == TrialStatus.SUCCEEDED, end.error


async def _fails(job: object) -> None:
    raise SubmitError("throttled")


async def test_a_replica_whose_claim_was_abandoned_while_it_started_stops_its_job(
        store: BlobStore, work_dir: Path) -> None:
    """Replica A stalls between starting the job and marking its claim started; meanwhile B
    abandons the claim (reported lost, so the dispatcher runs attempt 2). A must not mark the
    claim "started" over B's "abandoned" and leave its attempt running beside attempt 2."""
    await _experiment(store, work_dir, "claims-d")
    layout = Layout("claims-d")
    (work_dir / "src" / "trial.py").write_text("import time\ntime.sleep(600)\n")
    await store.write_bytes(layout.code_archive, build_code_archive(work_dir / "src"))
    bus = FlakyBus()
    slow = _submitter(store, work_dir, bus, "replica-a")
    backend = slow.backends["local"]
    started, resume = asyncio.Event(), asyncio.Event()
    real_submit = backend.submit

    async def stalls_after_starting(job: object) -> None:
        await real_submit(job)  # type: ignore[arg-type]
        started.set()
        await resume.wait()  # e.g. a long GC pause or a frozen VM

    backend.submit = stalls_after_starting  # type: ignore[method-assign]
    first = asyncio.create_task(slow.on_submit(_submit("claims-d")))
    await asyncio.wait_for(started.wait(), 60)
    assert backend.running() == {"claims-d": {"t1": 1}}

    other = _submitter(store, work_dir, bus, "replica-b")
    other.backends["local"].claim_stale_seconds = 0.2  # type: ignore[attr-defined]
    await other.on_submit(_submit("claims-d"))
    [lost] = [s for s in bus.statuses() if s.lost]
    assert lost.attempt == 1

    resume.set()
    await asyncio.wait_for(first, 60)
    claim = await store.read_json(layout.claim_blob("t1", 1))
    assert claim is not None and claim[0]["state"] == "abandoned", claim
    end = await _end(bus, lost=False)
    assert end.attempt == 1 and end.status == TrialStatus.SYS_CANCELED, end
    assert end.error is not None and "abandoned" in end.error
    assert backend.running() == {}


@dataclass
class Busy:
    """A backend that only says which experiments have trials running on it."""

    experiments: set[str] = field(default_factory=set)

    def running(self) -> dict[str, dict[str, int]]:
        return {e: {"t": 1} for e in self.experiments}


async def test_an_experiment_leaving_the_cache_takes_its_code_folder_unless_a_trial_of_it_runs(
        store: BlobStore, work_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.aml_submitter.service.MAX_CACHED_EXPERIMENTS", 1)
    for experiment_id in ("code-a", "code-b", "code-c"):
        await _experiment(store, work_dir, experiment_id)
    bus = FlakyBus()
    submitter = _submitter(store, work_dir, bus)
    busy = Busy()
    submitter.backends["busy"] = busy  # type: ignore[assignment]
    folder = submitter.code.folder

    async def run(experiment_id: str, trial_id: str) -> None:
        bus.published.clear()
        await submitter.on_submit(TrialSubmit(experiment_id=experiment_id, trial_id=trial_id, sequence_id=0,
                                              parameters={"x": 0.5}))
        assert (await _end(bus)).status == TrialStatus.SUCCEEDED  # its code was there to run

    await run("code-a", "t1")
    assert folder("code-a").is_dir()
    busy.experiments = {"code-b"}
    await run("code-b", "t1")  # a leaves the cache: nothing of it runs, its folder goes
    assert not folder("code-a").exists() and folder("code-b").is_dir()
    await run("code-c", "t1")  # b leaves the cache, but a trial of it still runs here: kept
    assert folder("code-b").is_dir() and folder("code-c").is_dir()
    busy.experiments = set()
    await run("code-a", "t2")  # unpacked again; c leaves, and b's trial has ended: both go
    assert folder("code-a").is_dir() and not folder("code-b").exists() and not folder("code-c").exists()
    await submitter.close()
    assert not submitter.code.root.exists()
