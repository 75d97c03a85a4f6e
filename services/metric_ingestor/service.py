"""The metric ingestor: turns what trials wrote to blob storage into ordered events.

When the experiment has an assessor (the one consumer that judges intermediate results while
a trial runs), an ``ingest.watch`` ticket comes back every few seconds while the trial runs
(through a delay queue, so any replica can take it and a crash loses nothing) and publishes new
intermediate results; an ``ended.json`` marker stops it. Without an assessor nobody polls.
When the backend reports the job's end, the ingestor reads every metric the attempt wrote,
publishes them in order, and then the authoritative ``trial.ended``.
Message ids are derived from (trial, attempt, sequence), so consumers recognise repeats.

Metrics are read where the trials wrote them: the experiment's AzureBlob ``sharedStorage``
container if it has one, else the deployment's (:mod:`.results`). The ``ended.json`` markers
and everything else the ingestor reads or writes stay in the deployment's container.
"""

from __future__ import annotations

import asyncio
import logging
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
    TrialMetric,
    TrialStatus,
    TrialStatusChanged,
)
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


class IngestorSettings(CommonSettings):
    """Metric ingestor settings (``TUNEBUS_`` environment variables)."""

    metric_poll_seconds: float = 2.0
    max_concurrent: int = 16


class Ingestor:
    """Stateless: everything it needs is in the message, the ticket or blob storage."""

    def __init__(self, bus: Bus, store: BlobStore, poll_seconds: float,
                 results: ResultsStores | None = None) -> None:
        self.bus = bus
        self.store = store  # the deployment's: markers, state
        self.poll_seconds = poll_seconds
        self.results = results or ResultsStores(store)  # where each experiment's metrics are

    def handlers(self) -> dict[type[Message], Callable[[Any], Awaitable[None]]]:
        return {TrialStatusChanged: self.on_status, Ticket: self.on_ticket}

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
            experiment_id=experiment_id, trial_id=trial_id, parameter_id=parameter_id,
            sequence=metric.sequence, kind=metric.kind, value=metric.value, raw=metric.raw,
        )

    async def _ended(self, experiment_id: str, trial_id: str, attempt: int) -> bool:
        marker = Layout(experiment_id).attempt_root(trial_id, attempt) + "/ended.json"
        return await self.store.read_json(marker) is not None

    async def on_status(self, msg: TrialStatusChanged) -> None:
        if msg.status == TrialStatus.RUNNING:
            if not await self.results.live_metrics(msg.experiment_id):
                return  # nobody judges intermediate results live: they go out with the end
            await self.bus.publish_ticket(Ticket(
                experiment_id=msg.experiment_id, purpose="ingest.watch", trial_id=msg.trial_id,
                due=datetime.now(UTC) + timedelta(seconds=self.poll_seconds),
                state={"attempt": msg.attempt, "parameter_id": msg.parameter_id, "published": -1},
            ))
        elif msg.status in TERMINAL_TRIAL_STATUSES:
            await self._finish(msg)

    async def on_ticket(self, msg: Ticket) -> None:
        if msg.purpose != "ingest.watch" or msg.trial_id is None:
            raise PermanentError(f"ingestor does not handle {msg.purpose} tickets")
        if msg.due > datetime.now(UTC):
            await self.bus.publish_ticket(msg)
            return
        attempt = int(msg.state.get("attempt", 1))
        checks = int(msg.state.get("checks", 0)) + 1
        if await self._ended(msg.experiment_id, msg.trial_id, attempt):
            return  # the end was handled; this watch is over
        if checks % STATE_CHECK_EVERY == 0 and not await self._still_current(msg, attempt):
            return  # the attempt was superseded (lost, retried) or the experiment is over
        published = int(msg.state.get("published", -1))
        metrics, _ = await self._read_metrics(msg.experiment_id, msg.trial_id, attempt, published)
        intermediate = [m for m in metrics if m.kind == MetricKind.PERIODICAL]
        if intermediate:
            parameter_id = int(msg.state.get("parameter_id", 0))
            await self.bus.publish_many(
                self._metric_message(msg.experiment_id, msg.trial_id, attempt, parameter_id, m)
                for m in intermediate
            )
            published = intermediate[-1].sequence
        await self.bus.publish_ticket(Ticket(
            experiment_id=msg.experiment_id, purpose="ingest.watch", trial_id=msg.trial_id,
            due=datetime.now(UTC) + timedelta(seconds=self.poll_seconds),
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
        if not await self.results.live_metrics(msg.experiment_id):
            return  # no watch ticket runs for it: nothing to stop
        marker = Layout(msg.experiment_id).attempt_root(msg.trial_id, msg.attempt) + "/ended.json"
        try:
            await self.store.write_json(marker, ended.model_dump(mode="json"), create_only=True)
        except ConcurrentWriteError:
            pass  # a redelivered end: already recorded


async def start(settings: IngestorSettings) -> Callable[[], Awaitable[None]]:
    """Connect, declare, start consuming; returns the shutdown function."""
    store = BlobStore(settings.storage_connection_string, settings.storage_container)
    await store.ensure_container()
    bus = Bus(settings.amqp_url, service="metric-ingestor")
    await bus.connect()
    results = ResultsStores(store, endpoint_template=settings.shared_storage_endpoint)
    ingestor = Ingestor(bus, store, settings.metric_poll_seconds, results)
    await bus.consume(INGESTOR_QUEUE, ingestor.handlers(), concurrency=settings.max_concurrent)
    log.info("metric ingestor consuming %s", INGESTOR_QUEUE.name)

    async def shutdown() -> None:
        await bus.close()
        await results.close()
        await store.close()

    return shutdown
