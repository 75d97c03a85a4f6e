"""The metric ingestor: turns what trials wrote to blob storage into ordered events.

While a trial runs, an ``ingest.watch`` ticket comes back (through a delay queue, so any
replica can take it and a crash loses nothing) and publishes its new intermediate results
(``trial.metric``) and its progress for the record (``trial.progress``, shown by ``tunebus trial
ls``): every couple of seconds when the experiment has an assessor (which judges them), every
ten seconds otherwise. The watch starts with the trial's RUNNING status when an assessor judges
it or the trial runs on Azure ML; a local trial without an assessor is watched once a submitter
heartbeat shows it still running (a create-only ``watch.json`` makes that happen once), so the
many that last seconds cost nothing. When the backend reports the job's end, the ingestor reads
every metric the attempt wrote, publishes them in order, and then the authoritative
``trial.ended``; the watch then stops: at once on the replica that saw the end, elsewhere through
an ``ended.json`` marker (assessor experiments) or the experiment's state (checked at the first
check and every tenth).
Message ids are derived from (trial, attempt, sequence), so consumers recognise repeats.

Metrics are read where the trials wrote them: the experiment's AzureBlob ``sharedStorage``
container if it has one, else the deployment's (:mod:`.results`). The ``ended.json`` markers
and everything else the ingestor reads or writes stay in the deployment's container.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

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
from shared.service import Running
from shared.settings import CommonSettings
from shared.state import ExperimentState
from shared.storage import BlobStore, ConcurrentWriteError, ContainerNotFoundError, Layout
from shared.topology import INGESTOR_QUEUE

from .metrics import InvalidMetric, ParsedMetric, parse_metric_blob, sequence_of
from .results import ResultsStores

__all__ = ["Ingestor", "IngestorSettings"]

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


class Ingestor:
    """Stateless: everything it needs is in the message, the ticket or blob storage."""

    def __init__(self, bus: Bus, store: BlobStore, poll_seconds: float,
                 results: ResultsStores | None = None, *, progress_seconds: float = 10.0) -> None:
        self.bus = bus
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

    async def _read_metrics(self, experiment_id: str, trial_id: str, attempt: int,
                            after: int = -1) -> tuple[list[ParsedMetric], list[str]]:
        """Valid metrics with sequence > ``after``, in order, and the problems found."""
        layout = Layout(experiment_id)
        problems: list[str] = []
        async with self.results.use(experiment_id) as store:
            try:
                names = await store.list(layout.metrics_prefix(trial_id, attempt))
            except ContainerNotFoundError:  # a sharedStorage container nobody created
                names = []
                problems.append(f"metrics container {store.container_name!r} does not exist")
            wanted = []
            for name in names:
                try:
                    if sequence_of(name) > after:
                        wanted.append(name)
                except InvalidMetric as exc:
                    problems.append(str(exc))
            bodies = await asyncio.gather(*(store.read_bytes(n) for n in wanted))
        metrics: list[ParsedMetric] = []
        for name, body in zip(wanted, bodies, strict=True):
            try:
                metrics.append(parse_metric_blob(name, body or b""))
            except InvalidMetric as exc:
                problems.append(str(exc))
        return metrics, problems

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
        found = await self.store.read_json(Layout(msg.experiment_id).state_doc)
        if found is None:
            return
        state = ExperimentState.model_validate(found[0])
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
        metrics, _ = await self._read_metrics(msg.experiment_id, msg.trial_id, attempt, published)
        intermediate = [m for m in metrics if m.kind == MetricKind.PERIODICAL]
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
            state={**msg.state, "published": published, "checks": checks},
        ))

    async def _still_current(self, msg: Ticket, attempt: int) -> bool:
        """Whether the experiment's record still expects metrics from this trial attempt."""
        found = await self.store.read_json(Layout(msg.experiment_id).state_doc)
        if found is None:
            return False
        state = ExperimentState.model_validate(found[0])
        trial = state.trials.get(msg.trial_id or "")
        return not state.finished and trial is not None and trial.attempt == attempt and not trial.ended

    async def _finish(self, msg: TrialStatusChanged) -> None:
        metrics, problems = await self._read_metrics(msg.experiment_id, msg.trial_id, msg.attempt)
        parameter_id = msg.parameter_id
        finals = [m for m in metrics if m.kind == MetricKind.FINAL]
        intermediate = [m for m in metrics if m.kind == MetricKind.PERIODICAL]
        errors = [e for e in (msg.error, *problems) if e]
        ended = TrialEnded(
            message_id=f"{msg.experiment_id}-{msg.trial_id}-{msg.attempt}-ended",
            experiment_id=msg.experiment_id, trial_id=msg.trial_id, parameter_id=parameter_id,
            attempt=msg.attempt, status=msg.status,
            final_value=finals[0].value if finals else None,
            last_intermediate=intermediate[-1].value if intermediate else None,
            metric_count=len(metrics), error="\n".join(errors) or None,
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
    store = BlobStore(settings.storage_connection_string, settings.storage_container)
    await store.ensure_container()
    bus = Bus(settings.amqp_url, service="metric-ingestor")
    await bus.connect()
    results = ResultsStores(store, endpoint_template=settings.shared_storage_endpoint)
    ingestor = Ingestor(bus, store, settings.metric_poll_seconds, results,
                        progress_seconds=settings.progress_poll_seconds)
    await bus.consume(INGESTOR_QUEUE, ingestor.handlers(), concurrency=settings.max_concurrent)
    log.info("metric ingestor consuming %s", INGESTOR_QUEUE.name)

    async def shutdown() -> None:
        await bus.close()
        await results.close()
        await store.close()

    return Running(shutdown, {"broker": bus.check, "storage": store.check})
