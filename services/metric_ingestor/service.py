"""The metric ingestor: turns what trials wrote to blob storage into ordered events.

While a trial runs, ``ingest.watch`` tickets publish its new intermediate results
(``trial.metric``) and its progress (``trial.progress``); at the job's end it publishes every
metric the attempt wrote, in order, then the authoritative ``trial.ended``. Message ids are
derived from (trial, attempt, sequence), so consumers recognise repeats. How and where it
reads: :class:`Ingestor`.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import Field

from shared.bus import Bus, PermanentError
from shared.messages import (
    TERMINAL_TRIAL_STATUSES,
    Message,
    MetricKind,
    Ticket,
    TrialEnded,
    TrialHeartbeat,
    TrialMetric,
    TrialProgress,
    TrialStatus,
    TrialStatusChanged,
)
from shared.records import read_summary
from shared.results_records import ParsedMetric, ResultsLimits, ResultsRead, parse_results
from shared.service import Running, open_connections
from shared.settings import CommonSettings
from shared.storage import BlobStore, ConcurrentWriteError, ContainerNotFoundError, Layout
from shared.topology import INGESTOR_QUEUE

from .results import ResultsStores

__all__ = ["Ingestor", "IngestorSettings", "start"]

log = logging.getLogger("tunebus.ingestor")

# Every so many checks a watch also reads the experiment's state, so that the watch of an
# attempt whose end will never be reported (its job was lost and run again) stops.
STATE_CHECK_EVERY = 10
# Trial attempts whose end this process remembers publishing (their watches stop at once).
ENDED_REMEMBERED = 10_000


class IngestorSettings(CommonSettings):
    """Metric ingestor settings (``TUNEBUS_`` environment variables)."""

    metric_poll_seconds: float = 2.0  # a running trial's metrics, when an assessor judges them
    progress_poll_seconds: float = 10.0  # otherwise (for people watching)
    max_concurrent: int = 16
    # Caps on one trial attempt's results blob (hostile input: the trial writes it).
    results_max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    results_max_records: int = Field(default=10_000, ge=1, le=1_000_000)
    results_max_record_bytes: int = Field(default=64 * 1024, ge=256, le=16 * 1024 * 1024)
    error_max_chars: int = Field(default=4000, ge=200, le=100_000)  # a trial's error text

    def results_limits(self) -> ResultsLimits:
        return ResultsLimits(self.results_max_bytes, self.results_max_records, self.results_max_record_bytes)


class Ingestor:
    """Stateless: everything it needs is in the message, the ticket or blob storage.

    A watch ticket comes back through a delay queue, so any replica can take it and a crash
    loses nothing: every couple of seconds when the experiment has an assessor (which judges
    the results), every ten seconds otherwise. The watch starts with the trial's RUNNING status
    when an assessor judges it or the trial runs on Azure ML; a local trial without an assessor
    is watched once a submitter heartbeat shows it still running (a create-only ``watch.json``
    makes that happen once), so the many that last seconds cost nothing. After the end the
    watch stops: at once on the replica that saw the end, elsewhere through an ``ended.json``
    marker (assessor experiments) or the experiment's state (checked at the first check and
    every tenth).

    Metrics are read from the attempt's results blob alone (``.../results.jsonl``, the one blob
    the trial's credential can append to) where the trial wrote it: the experiment's AzureBlob
    ``sharedStorage`` container if it has one, else the deployment's (:mod:`.results`). A watch
    reads it incrementally (a range from the last whole line it consumed); the end reads it from
    the start, at most ``results_max_bytes``. Whatever the blob holds ends as metrics or named
    problems (:mod:`.metrics`); a trial whose results had problems ends FAILED, naming them.
    The ``ended.json`` markers and everything else the ingestor reads or writes stay in the
    deployment's container.
    """

    def __init__(self, bus: Bus, store: BlobStore, poll_seconds: float,
                 results: ResultsStores | None = None, *, progress_seconds: float = 10.0,
                 limits: ResultsLimits | None = None, error_max_chars: int = 4000) -> None:
        self.bus = bus
        self.limits = limits or ResultsLimits()
        self.error_max_chars = error_max_chars
        self.store = store  # the deployment's: markers, state
        self.poll_seconds = poll_seconds
        self.progress_seconds = progress_seconds
        self.results = results or ResultsStores(store)  # where each experiment's metrics are
        # Attempts whose end this process published: their watch stops without a request.
        self._ended_here: OrderedDict[tuple[str, str, int], None] = OrderedDict()
        # Trials this process knows to be watched (heartbeats list them again and again).
        self._watching: OrderedDict[tuple[str, str], None] = OrderedDict()

    def handlers(self) -> dict[type[Message], Callable[[Any], Awaitable[None]]]:
        return {TrialStatusChanged: self.on_status, Ticket: self.on_ticket, TrialHeartbeat: self.on_heartbeat}

    async def _read_results(self, experiment_id: str, trial_id: str, attempt: int, *,
                            offset: int = 0, complete: bool) -> ResultsRead:
        """The attempt's results from byte ``offset`` (at most up to ``limits.max_bytes``).

        ``consumed`` of the answer counts from ``offset``. Never raises on the blob's content;
        a missing blob (the trial never reported) or container reads as no results.
        """
        path = Layout(experiment_id).results_blob(trial_id, attempt)
        room = self.limits.max_bytes - offset
        if room <= 0:
            return ResultsRead()  # a watch read all it may; the end names the excess
        async with self.results.use(experiment_id) as store:
            try:
                found = await store.read_range(path, offset, room)
            except ContainerNotFoundError:  # a sharedStorage container nobody created
                return ResultsRead(problems=[f"results container {store.container_name!r} does not exist"])
        if found is None:
            return ResultsRead()  # never created or never reported to
        data, size = found
        return parse_results(data, self.limits, complete=complete and size <= self.limits.max_bytes,
                             base_offset=offset, total_size=size if complete else None)

    def _metric_message(self, experiment_id: str, trial_id: str, attempt: int, parameter_id: int,
                        metric: ParsedMetric) -> TrialMetric:
        return TrialMetric(
            message_id=f"{experiment_id}-{trial_id}-{attempt}-m{metric.sequence}",
            experiment_id=experiment_id, trial_id=trial_id, parameter_id=parameter_id, attempt=attempt,
            sequence=metric.sequence, kind=metric.kind, value=metric.value, raw=metric.raw,
        )

    async def _ended(self, experiment_id: str, trial_id: str, attempt: int) -> bool:
        marker = Layout(experiment_id).attempt_root(trial_id, attempt) + "/ended.json"
        return await self.store.read_json(marker) is not None

    async def on_status(self, msg: TrialStatusChanged) -> None:
        if msg.status == TrialStatus.RUNNING:
            if await self.results.watched_from_the_start(msg.experiment_id):
                await self._watch(msg.experiment_id, msg.trial_id, msg.attempt, msg.parameter_id)
        elif msg.status in TERMINAL_TRIAL_STATUSES:
            await self._finish(msg)

    async def on_heartbeat(self, msg: TrialHeartbeat) -> None:
        """Local trials still running: watch those not watched yet (once, whichever replica).

        Best effort: a heartbeat of an experiment the ingestor cannot read (its sharedStorage
        has no key, say) is dropped, not dead-lettered every few seconds; its trials' ends are.
        """
        try:
            if await self.results.watched_from_the_start(msg.experiment_id):
                return  # their watches started with their RUNNING status
        except PermanentError as exc:
            log.debug("heartbeat of %s ignored: %s", msg.experiment_id, exc)
            return
        new = [t for t in msg.trial_ids if (msg.experiment_id, t) not in self._watching]
        if not new:
            return
        state = await read_summary(self.store, msg.experiment_id)  # its active trials: those it runs
        if state is None:
            return
        for trial_id in new:
            trial = state.trials.get(trial_id)
            if trial is None or trial.ended:
                continue
            marker = Layout(msg.experiment_id).attempt_root(trial_id, trial.attempt) + "/watch.json"
            try:
                await self.store.write_json(marker, {"since": datetime.now(UTC).isoformat()},
                                            create_only=True)
            except ConcurrentWriteError:
                self._remember_watching(msg.experiment_id, trial_id)  # watched already
                continue
            await self._watch(msg.experiment_id, trial_id, trial.attempt, trial.sequence_id)

    async def _watch(self, experiment_id: str, trial_id: str, attempt: int, parameter_id: int) -> None:
        live = await self.results.live_metrics(experiment_id)
        interval = self.poll_seconds if live else self.progress_seconds
        await self.bus.publish_ticket(Ticket(
            experiment_id=experiment_id, purpose="ingest.watch", trial_id=trial_id,
            due=datetime.now(UTC) + timedelta(seconds=interval),
            state={"attempt": attempt, "parameter_id": parameter_id, "published": -1, "interval": interval},
        ))
        self._remember_watching(experiment_id, trial_id)

    def _remember_watching(self, experiment_id: str, trial_id: str) -> None:
        self._watching[(experiment_id, trial_id)] = None
        while len(self._watching) > ENDED_REMEMBERED:
            self._watching.popitem(last=False)

    async def on_ticket(self, msg: Ticket) -> None:
        if msg.purpose != "ingest.watch" or msg.trial_id is None:
            raise PermanentError(f"ingestor does not handle {msg.purpose} tickets")
        if msg.due > datetime.now(UTC):
            await self.bus.publish_ticket(msg)
            return
        attempt = int(msg.state.get("attempt", 1))
        checks = int(msg.state.get("checks", 0)) + 1
        if (msg.experiment_id, msg.trial_id, attempt) in self._ended_here:
            return  # this process published its end; the watch is over
        if await self.results.live_metrics(msg.experiment_id):
            if await self._ended(msg.experiment_id, msg.trial_id, attempt):
                return  # the end was handled (the marker says so); this watch is over
            state_check = checks % STATE_CHECK_EVERY == 0
        else:
            state_check = checks == 1 or checks % STATE_CHECK_EVERY == 0
        if state_check and not await self._still_current(msg, attempt):
            return  # ended, superseded (lost, run again), or the experiment is over
        published = int(msg.state.get("published", -1))
        offset = int(msg.state.get("offset", 0))
        read = await self._read_results(msg.experiment_id, msg.trial_id, attempt, offset=offset,
                                        complete=False)
        offset += read.consumed  # problems are reported with the trial's end, which reads it all again
        intermediate = [m for m in read.metrics if m.kind == MetricKind.PERIODICAL and m.sequence > published]
        if intermediate:
            parameter_id = int(msg.state.get("parameter_id", 0))
            last = intermediate[-1]
            await self.bus.publish_many([
                *(self._metric_message(msg.experiment_id, msg.trial_id, attempt, parameter_id, m)
                  for m in intermediate),
                TrialProgress(message_id=f"{msg.experiment_id}-{msg.trial_id}-{attempt}-p{last.sequence}",
                              experiment_id=msg.experiment_id, trial_id=msg.trial_id,
                              parameter_id=parameter_id, attempt=attempt, metric_count=last.sequence + 1,
                              last_intermediate=last.value),
            ])
            published = last.sequence
        interval = float(msg.state.get("interval", self.poll_seconds))
        await self.bus.publish_ticket(Ticket(
            experiment_id=msg.experiment_id, purpose="ingest.watch", trial_id=msg.trial_id,
            due=datetime.now(UTC) + timedelta(seconds=interval),
            state={**msg.state, "published": published, "offset": offset, "checks": checks},
        ))

    async def _still_current(self, msg: Ticket, attempt: int) -> bool:
        """Whether the experiment's record still expects metrics from this trial attempt."""
        state = await read_summary(self.store, msg.experiment_id)
        if state is None:
            return False
        trial = state.trials.get(msg.trial_id or "")  # an ended trial has left the summary
        return not state.finished and trial is not None and trial.attempt == attempt and not trial.ended

    def _error_text(self, job_error: str | None, problems: list[str]) -> str | None:
        """The trial's error: the job's, then the results' problems, within ``error_max_chars``."""
        lines = [e for e in (job_error, *problems[:20]) if e]
        if len(problems) > 20:
            lines.append(f"... and {len(problems) - 20} more problems with the results")
        text = "\n".join(lines)
        if len(text) > self.error_max_chars:
            text = text[: self.error_max_chars - 15] + " ...[truncated]"
        return text or None

    async def _finish(self, msg: TrialStatusChanged) -> None:
        read = await self._read_results(msg.experiment_id, msg.trial_id, msg.attempt, complete=True)
        metrics = read.metrics
        parameter_id = msg.parameter_id
        finals = [m for m in metrics if m.kind == MetricKind.FINAL]
        intermediate = [m for m in metrics if m.kind == MetricKind.PERIODICAL]
        status, lost, job_error = msg.status, msg.lost, msg.error
        if lost and finals:
            # Its submitter was lost after the trial reported its final result: it finished.
            log.info("trial %s/%s attempt %d: job lost after its final result; SUCCEEDED from storage",
                     msg.experiment_id, msg.trial_id, msg.attempt)
            status, lost, job_error = TrialStatus.SUCCEEDED, False, None
        # Results with problems fail a trial that would have SUCCEEDED (a killed one keeps its
        # status): its valid metrics still count, the problems are named in its error.
        if read.problems and status == TrialStatus.SUCCEEDED:
            status = TrialStatus.FAILED
        if read.problems:
            log.warning("trial %s/%s attempt %d: %d problem(s) with its results, first: %s",
                        msg.experiment_id, msg.trial_id, msg.attempt, len(read.problems), read.problems[0])
        ended = TrialEnded(
            message_id=f"{msg.experiment_id}-{msg.trial_id}-{msg.attempt}-ended",
            experiment_id=msg.experiment_id, trial_id=msg.trial_id, parameter_id=parameter_id,
            attempt=msg.attempt, status=status,
            final_value=finals[0].value if finals else None,
            last_intermediate=intermediate[-1].value if intermediate else None,
            metric_count=len(metrics), error=self._error_text(job_error, read.problems), lost=lost,
        )
        await self.bus.publish_many([
            *(self._metric_message(msg.experiment_id, msg.trial_id, msg.attempt, parameter_id, m)
              for m in metrics),
            ended,
        ])
        self._ended_here[(msg.experiment_id, msg.trial_id, msg.attempt)] = None
        while len(self._ended_here) > ENDED_REMEMBERED:
            self._ended_here.popitem(last=False)
        if not await self.results.live_metrics(msg.experiment_id):
            return  # other replicas' watches stop on the state (checked at their first check)
        marker = Layout(msg.experiment_id).attempt_root(msg.trial_id, msg.attempt) + "/ended.json"
        try:
            await self.store.write_json(marker, ended.model_dump(mode="json"), create_only=True)
        except ConcurrentWriteError:
            pass  # a redelivered end: already recorded


async def start(settings: IngestorSettings) -> Running:
    """Connect, declare, start consuming; returns its shutdown and health checks."""
    connections = await open_connections(settings, service="metric-ingestor")
    bus, store = connections.bus, connections.store
    results = ResultsStores(store, endpoint_template=settings.shared_storage_endpoint)
    ingestor = Ingestor(bus, store, settings.metric_poll_seconds, results,
                        progress_seconds=settings.progress_poll_seconds, limits=settings.results_limits(),
                        error_max_chars=settings.error_max_chars)
    await bus.consume(INGESTOR_QUEUE, ingestor.handlers(), concurrency=settings.max_concurrent)
    log.info("metric ingestor consuming %s", INGESTOR_QUEUE.name)

    async def shutdown() -> None:
        await connections.close(results)

    return connections.running(shutdown)
