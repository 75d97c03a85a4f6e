"""Claims: one create-only blob per trial attempt, so that a redelivered or duplicated
``trial.submit`` never starts a second job (states: starting, started, released, abandoned)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from shared.bus import TransientError
from shared.messages import TrialStatus, TrialSubmit
from shared.storage import BlobStore, ConcurrentWriteError, Layout

from .backend import Backend

__all__ = ["CLAIM_STALE_SECONDS", "Claim", "Claims"]

log = logging.getLogger("tunebus.submitter")

CLAIM_STALE_SECONDS = 10.0  # seconds a claim may stay 'starting' before it is abandoned
MARK_STARTED_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)  # seconds between tries to mark a claim started


@dataclass(frozen=True)
class Claim:
    """What :meth:`Claims.claim` found: start the job (``etag``: our claim's), it is handled
    elsewhere, or it was abandoned by ``previous`` (the attempt is reported lost)."""

    outcome: Literal["start", "handled", "abandoned"]
    etag: str | None = None
    previous: str | None = None


class Claims:
    """This replica's claims on trial attempts, in the deployment's storage."""

    def __init__(self, store: BlobStore, replica: str) -> None:
        self.store = store
        self.replica = replica

    async def claim(self, msg: TrialSubmit, stale_after: float, *, reruns: bool) -> Claim:
        """Take the job, unless another replica has it.

        A live replica marks its claim "started" at once after starting the job (before it
        reports anything), so a claim still "starting" after ``stale_after`` belongs to a replica
        that died or stalled mid-start; its delivery is why we see the message again. What it left
        may have started: a local trial may be writing the attempt's results still, so the attempt
        is not run again into the same results blob but *abandoned* (reported lost: the ingestor
        ends it from what it stored, or the dispatcher runs a new attempt). Only a backend whose
        submissions are idempotent (``reruns``: an AML run has a fixed id per attempt) takes the
        job over and submits it again.
        """
        path = Layout(msg.experiment_id).claim_blob(msg.trial_id, msg.attempt)
        starting = {"replica": self.replica, "state": "starting", "time": datetime.now(UTC).isoformat()}
        try:
            return Claim("start", etag=await self.store.write_json(path, starting, create_only=True))
        except ConcurrentWriteError:
            pass
        while True:
            found = await self.store.read_json(path)
            if found is None:
                raise TransientError(f"claim {path} vanished")
            doc, etag = found
            if doc.get("state") == "started" and not msg.resubmit:
                return Claim("handled")  # a duplicate of a job that runs
            if doc.get("state") == "started":
                # Sent again: the dispatcher heard nothing of the job for its claim timeout, and a
                # replica running one beats for it, so the one that started it is gone.
                previous = str(doc.get("replica"))
                try:
                    await self.store.write_json(path, {
                        "replica": self.replica, "state": "abandoned", "previous": previous,
                        "time": datetime.now(UTC).isoformat()}, etag=etag)
                except ConcurrentWriteError:
                    continue
                log.warning("trial %s/%s attempt %d: started by %s, which went silent; reported lost",
                            msg.experiment_id, msg.trial_id, msg.attempt, previous)
                return Claim("abandoned", previous=previous)
            if doc.get("state") == "abandoned":  # reported lost already; its report is sent again
                return Claim("abandoned", previous=str(doc.get("previous")))
            if doc.get("state") == "released":  # its replica started nothing: claimed afresh
                try:
                    return Claim("start", etag=await self.store.write_json(path, starting, etag=etag))
                except ConcurrentWriteError:
                    continue
            age = (datetime.now(UTC) - datetime.fromisoformat(doc["time"])).total_seconds()
            if age >= stale_after:
                break
            await asyncio.sleep(min(1.0, stale_after - age))
        previous = str(doc.get("replica"))
        if reruns:
            try:
                etag = await self.store.write_json(path, starting, etag=etag)
            except ConcurrentWriteError:
                return Claim("handled")  # another replica took it over first
            log.warning("trial %s/%s attempt %d: taking over from %s, which did not finish starting it",
                        msg.experiment_id, msg.trial_id, msg.attempt, previous)
            return Claim("start", etag=etag)
        abandoned = {"replica": self.replica, "state": "abandoned", "previous": previous,
                     "time": datetime.now(UTC).isoformat()}
        try:
            await self.store.write_json(path, abandoned, etag=etag)
        except ConcurrentWriteError:
            return Claim("handled")  # its replica marked it started after all, or another abandoned it
        log.warning("trial %s/%s attempt %d: %s did not finish starting it; reported lost, not run "
                    "again into the same results", msg.experiment_id, msg.trial_id, msg.attempt, previous)
        return Claim("abandoned", previous=previous)

    async def release(self, msg: TrialSubmit, etag: str) -> None:
        """Give back a claim whose job was not started (its retry may then start it anywhere at
        once). Best effort: a claim left behind is abandoned by the next replica, after a while."""
        path = Layout(msg.experiment_id).claim_blob(msg.trial_id, msg.attempt)
        released = {"replica": self.replica, "state": "released", "time": datetime.now(UTC).isoformat()}
        try:
            await self.store.write_json(path, released, etag=etag)
        except Exception as exc:
            log.warning("trial %s/%s attempt %d: releasing its claim failed: %r", msg.experiment_id,
                        msg.trial_id, msg.attempt, exc)

    async def mark_started(self, msg: TrialSubmit, etag: str | None, backend: Backend) -> None:
        """Mark the claim "started" — only if it is still ours (``etag``): another replica may
        have abandoned it while this one stalled mid-start, and the dispatcher then runs a new
        attempt; this attempt's job is stopped instead of running beside it. The job runs
        whatever else happens here, so this never raises: it retries a while (storage may be
        restarting), then leaves the claim "starting" (a redelivered submit would then report
        the attempt lost, never start it twice)."""
        path = Layout(msg.experiment_id).claim_blob(msg.trial_id, msg.attempt)
        for delay in (*MARK_STARTED_RETRY_DELAYS, None):
            try:
                await self.store.write_json(path, {"replica": self.replica, "state": "started",
                                                   "time": datetime.now(UTC).isoformat()}, etag=etag)
                return
            except ConcurrentWriteError:
                await self._after_lost_claim(msg, path, backend)
                return
            except Exception as exc:
                if delay is None:
                    log.error("trial %s/%s attempt %d runs, but marking its claim started failed: %r",
                              msg.experiment_id, msg.trial_id, msg.attempt, exc)
                    return
                await asyncio.sleep(delay)

    async def _after_lost_claim(self, msg: TrialSubmit, path: str, backend: Backend) -> None:
        """The claim changed under this replica while it started the job: stop the job if the
        claim was abandoned (that attempt is reported lost; another runs in its place)."""
        found = await self.store.read_json(path)
        doc = found[0] if found is not None else {}
        if doc.get("state") == "started" and doc.get("replica") == self.replica:
            return  # our own earlier write got through; its answer was lost
        if doc.get("state") != "abandoned":
            return  # taken over by a replica that re-submits idempotently (an AML run): nothing to stop
        log.warning("trial %s/%s attempt %d: its claim was abandoned by %s while this replica started it; "
                    "stopping it", msg.experiment_id, msg.trial_id, msg.attempt, doc.get("replica"))
        await backend.kill(msg.experiment_id, msg.trial_id, TrialStatus.SYS_CANCELED,
                           f"its claim was abandoned by {doc.get('replica')} while {self.replica} started it "
                           f"(the attempt was reported lost and runs again)", attempt=msg.attempt)
