"""The tuner service: wraps the pure tuner and assessor objects of each running experiment.

It answers ``suggest.request`` with ``trial.suggested``, feeds results (``trial.ended``) to
the tuner and intermediate results (``trial.metric``) to the assessor, which may ask for a
trial to be stopped early. Nothing here is the only copy: a restarted tuner rebuilds each
experiment's history from its state document (parameters and results of every trial) and
goes on; parameter ids are the dispatcher's, so none is ever repeated.
"""
from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from shared.bus import Bus, KeyedLocks, PermanentError
from shared.messages import (
    FINISHED_EXPERIMENT_STATUSES,
    ExperimentError,
    ExperimentStatusChanged,
    Message,
    MetricKind,
    SuggestionsWithdrawn,
    SuggestRequest,
    TrialEnded,
    TrialMetric,
    TrialStatus,
    TrialStopRequested,
    TrialSuggested,
)
from shared.records import (
    BadExperimentDocument,
    ExperimentDocument,
    read_full_state,
    require_experiment_doc,
)
from shared.sandbox import Sandbox, SandboxError, make_non_dumpable
from shared.search_space import SearchSpaceError
from shared.secrets_mask import mask_secrets
from shared.service import Running, open_connections
from shared.shards import ShardedConsumer
from shared.storage import BlobStore
from shared.topology import TUNER_QUEUE, TUNER_SHARDS

from .algorithms import TunerConfigError
from .assessors import AssessorConfigError, AssessResult
from .calls import AlgorithmCalls, AlgorithmFailed, BuiltinCalls, ProcessCalls
from .custom_code import CustomCodeError, fetch_algorithm_code
from .custom_process import AlgorithmProcess
from .session import ROLES, Session, learned_value, new_session, replay, role_name, suggest
from .settings import TunerSettings

__all__ = ["TunerService", "TunerSettings", "start"]

log = logging.getLogger("tunebus.tuner")
FINISHED_REMEMBERED = 10_000
#: The longest reason an experiment.error carries (it is stored in state.json).
MAX_REASON_CHARS = 4000
# Errors a user fixes in the config: their message is the reason, no traceback.
_CONFIG_ERRORS = (TunerConfigError, AssessorConfigError, SearchSpaceError)


class TunerService:
    """Holds a session per running experiment; handlers run one at a time (in queue order).

    Handlers of one experiment run one at a time, in queue order; different experiments' run
    side by side (``TUNEBUS_TUNER_CONCURRENCY``), so one slow experiment does not hold up the others.
    Every call into an algorithm goes through the experiment's :mod:`calls <services.tuner.calls>`:
    off the event loop, and for a user's own (``className``) tuner or assessor, in a worker process
    of the experiment's own (:mod:`services.tuner.worker`) with a time limit per call
    (``TUNEBUS_CUSTOM_CALL_TIMEOUT``) and a memory limit (``TUNEBUS_CUSTOM_MEMORY_LIMIT_MB``). Its
    code is the archive ``tunebus create`` stored next to the trial code
    (:meth:`shared.layout.Layout.algorithm_code_archive`), unpacked into the experiment's folder
    under ``TUNEBUS_TUNER_WORK_DIR``: any tuner host runs it. A call that raises, hangs or finds
    the worker dead ends its experiment in ERROR with the traceback's tail as the reason
    (``experiment.error``).
    """

    def __init__(self, bus: Bus, store: BlobStore, *, custom_call_timeout: float = 60.0,
                 custom_memory_limit_mb: int = 2048, work_dir: Path | None = None,
                 sandbox: Sandbox | str | None = None) -> None:
        self.bus = bus
        #: Who custom workers run as (None: this process's user), or why they cannot run.
        self.sandbox = sandbox
        self.store = store
        self.custom_call_timeout = custom_call_timeout
        self.custom_memory_limit_bytes = custom_memory_limit_mb * 2**20
        self.work_dir = work_dir or TunerSettings.model_fields["tuner_work_dir"].get_default()
        self._locks = KeyedLocks()  # one FIFO lock per experiment with messages in hand
        self._sessions: dict[str, Session] = {}
        self._failed: set[str] = set()
        # Experiments seen to finish: late messages for them must not rebuild a session.
        self._finished: dict[str, None] = {}

    def handlers(self) -> dict[type[Message], Callable[[Any], Awaitable[None]]]:
        return {
            SuggestRequest: self._one_at_a_time(self.on_suggest),
            SuggestionsWithdrawn: self._one_at_a_time(self.on_withdrawn),
            TrialEnded: self._one_at_a_time(self.on_ended),
            TrialMetric: self._one_at_a_time(self.on_metric),
            ExperimentStatusChanged: self._one_at_a_time(self.on_experiment_status),
        }

    def _one_at_a_time(self, handler: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """``handler``, serialized per experiment (handlers of different experiments overlap)."""
        async def serialized(msg: Message) -> None:
            async with self._locks.hold(msg.experiment_id):
                await handler(msg)

        return serialized

    # ------------------------------------------------------------------ sessions

    async def _session(self, experiment_id: str) -> Session | None:
        session = self._sessions.get(experiment_id)
        if session is not None or experiment_id in self._failed or experiment_id in self._finished:
            return session
        try:
            doc = await require_experiment_doc(self.store, experiment_id)
        except BadExperimentDocument as exc:
            raise PermanentError(str(exc)) from None
        try:
            calls = await self._calls_for(experiment_id, doc)
        except CustomCodeError as exc:
            await self._fail(experiment_id, AlgorithmFailed(str(exc)))
            return None
        # Every trial handed out so far (the ended log's too): the search's whole history.
        record = await read_full_state(self.store, experiment_id)
        owed: list[tuple[int, dict[str, Any] | None]] = []
        try:
            config = doc.config
            what = "loading " + " and ".join(role_name(role, config[role]) for role in ROLES
                                             if config.get(role))
            session = await calls.run(what, lambda: new_session(experiment_id, doc, calls))
            if record is not None:
                await calls.run(f"{session.tuner_name}: import_data",
                                lambda: replay(session, record, answer_requested=False))
                owed = await calls.run(f"{session.tuner_name}: generate_parameters",
                                       lambda: suggest(session, sorted(record.requested)))
        except AlgorithmFailed as exc:
            calls.close()
            await self._fail(experiment_id, exc)
            return None
        self._sessions[experiment_id] = session
        if owed:
            # The ids the dispatcher still waits for: the process that died may have taken their
            # requests and put them off (an advisor between steps), and those deliveries went with
            # it. Answered now, whatever message brought the session up (the dispatcher keeps
            # the first answer for an id; one it waits for no more is ignored).
            await self._publish_answers(experiment_id, owed)
        return session

    async def _calls_for(self, experiment_id: str, doc: ExperimentDocument) -> AlgorithmCalls:
        """Built-in algorithms' calls; or, with a custom one, a worker process in a fresh folder
        holding the experiment's stored algorithm code (CustomCodeError if it cannot be had)."""
        custom = [role for role in ROLES if (doc.config.get(role) or {}).get("className")]
        if not custom:
            return BuiltinCalls()
        if isinstance(self.sandbox, str):
            raise CustomCodeError(f"this tuner service runs no custom algorithm: {self.sandbox}")
        folder = self._experiment_folder(experiment_id)
        await fetch_algorithm_code(self.store, experiment_id, doc, custom, folder)
        process = AlgorithmProcess(experiment_id, folder, memory_limit_bytes=self.custom_memory_limit_bytes,
                                   sandbox=self.sandbox)
        return ProcessCalls(experiment_id, self.custom_call_timeout, process)

    def _experiment_folder(self, experiment_id: str) -> Path:
        return Path(self.work_dir) / experiment_id

    async def _fail(self, experiment_id: str, exc: AlgorithmFailed) -> None:
        """End the experiment in ERROR (through the dispatcher): its algorithm failed."""
        cause = exc.__cause__
        reason = str(cause) if isinstance(cause, _CONFIG_ERRORS) else exc.reason
        reason = mask_secrets(reason)
        if len(reason) > MAX_REASON_CHARS:
            reason = "..." + reason[-MAX_REASON_CHARS:]
        self._failed.add(experiment_id)
        self._end_session(experiment_id)
        log.error("experiment %s: %s", experiment_id, reason)
        await self.bus.publish(ExperimentError(experiment_id=experiment_id, service="tuner", reason=reason))

    def _end_session(self, experiment_id: str) -> None:
        """Drop the experiment's session: its worker ends, its code folder goes."""
        session = self._sessions.pop(experiment_id, None)
        if session is not None:
            session.calls.close()
        # The worker's folder (its cwd): removing it under a process about to be killed is harmless.
        shutil.rmtree(self._experiment_folder(experiment_id), ignore_errors=True)

    async def forget(self, experiment_ids: list[str]) -> None:
        """Drop these experiments' sessions (and what is known of their end): another replica
        handles them now, so a session here would miss what it learns. Rebuilt from storage if
        they come back. Each waits for its experiment's handler in hand, if any."""
        for experiment_id in experiment_ids:
            async with self._locks.hold(experiment_id):
                self._end_session(experiment_id)
                self._failed.discard(experiment_id)
                self._finished.pop(experiment_id, None)

    # ------------------------------------------------------------------ handlers

    async def on_suggest(self, msg: SuggestRequest) -> None:
        session = await self._session(msg.experiment_id)
        if session is None:
            return
        await self._answer(msg.experiment_id, session, msg.parameter_ids)

    async def _answer(self, experiment_id: str, session: Session, ids: list[int]) -> None:
        """Ask the tuner for ``ids`` and publish its answers (those it has now)."""
        try:
            answers = await session.calls.run(f"{session.tuner_name}: generate_parameters",
                                              lambda: suggest(session, ids))
        except AlgorithmFailed as exc:
            await self._fail(experiment_id, exc)
            return
        await self._publish_answers(experiment_id, answers)

    async def _publish_answers(self, experiment_id: str,
                               answers: list[tuple[int, dict[str, Any] | None]]) -> None:
        await self.bus.publish_many(
            TrialSuggested(experiment_id=experiment_id, parameter_id=pid, parameters=params)
            for pid, params in answers
        )

    async def on_withdrawn(self, msg: SuggestionsWithdrawn) -> None:
        """Ids the dispatcher will never run: those still held are not answered; those answered
        end as trials that never ran, so that an advisor's round does not wait for them."""
        session = await self._session(msg.experiment_id)
        if session is None:
            return
        tuner = session.tuner
        for pid in msg.parameter_ids:
            if pid in session.waiting:
                session.waiting.remove(pid)
            params = session.parameters.get(pid)
            if params is None or pid in session.withdrawn:
                continue
            session.withdrawn.add(pid)
            end = functools.partial(tuner.trial_end, pid, False,
                                    **({"parameters": params} if session.advisor else {}))
            try:
                await session.calls.run(f"{session.tuner_name}: trial_end", end)
            except AlgorithmFailed as exc:
                await self._fail(msg.experiment_id, exc)
                return
        await self._answer_waiting(msg.experiment_id, session)

    async def on_ended(self, msg: TrialEnded) -> None:
        session = await self._session(msg.experiment_id)
        if session is None:
            return
        if msg.trial_id in session.finished:  # seen, or learned when the session was rebuilt
            await self._answer_waiting(msg.experiment_id, session)
            return
        session.finished.add(msg.trial_id)
        params = session.parameters.get(msg.parameter_id)
        value = learned_value(msg.status, msg.final_value, msg.last_intermediate, session.advisor)
        tuner, assessor = session.tuner, session.assessor
        succeeded = msg.status == TrialStatus.SUCCEEDED
        # An advisor finds a trial handed out before a restart by its parameters.
        end_args: dict[str, Any] = {"parameters": params} if session.advisor else {}
        try:
            # As NNI's dispatcher: the final result (if any), then the end of the trial.
            if params is not None and value is not None:
                await session.calls.run(f"{session.tuner_name}: receive_trial_result",
                                        lambda: tuner.receive_trial_result(msg.parameter_id, params, value))
            await session.calls.run(f"{session.tuner_name}: trial_end",
                                    lambda: tuner.trial_end(msg.parameter_id, succeeded, **end_args))
            if assessor is not None:
                await session.calls.run(f"{session.assessor_name}: trial_end",
                                        lambda: assessor.trial_end(msg.trial_id, succeeded))
        except AlgorithmFailed as exc:
            await self._fail(msg.experiment_id, exc)
            return
        session.histories.pop(msg.trial_id, None)
        await self._answer_waiting(msg.experiment_id, session)

    async def _answer_waiting(self, experiment_id: str, session: Session) -> None:
        """Answer the requests an advisor put off, now that a trial has ended (in order)."""
        if not session.waiting:
            return
        await self._answer(experiment_id, session, list(session.waiting))

    async def on_metric(self, msg: TrialMetric) -> None:
        if msg.kind != MetricKind.PERIODICAL:
            return  # final results arrive with trial.ended
        session = await self._session(msg.experiment_id)
        if session is None or session.assessor is None or msg.trial_id in session.finished:
            return
        history = session.histories.setdefault(msg.trial_id, {})
        if msg.sequence in history:
            return
        history[msg.sequence] = msg.value
        if msg.trial_id in session.stop_requested:
            return
        values = [history[s] for s in sorted(history)]
        assessor = session.assessor
        try:
            verdict = await session.calls.run(f"{session.assessor_name}: assess_trial",
                                              lambda: assessor.assess_trial(msg.trial_id, values))
        except AlgorithmFailed as exc:
            await self._fail(msg.experiment_id, exc)
            return
        if verdict == AssessResult.Bad:
            session.stop_requested.add(msg.trial_id)
            await self.bus.publish(TrialStopRequested(
                experiment_id=msg.experiment_id, trial_id=msg.trial_id,
                reason=f"assessor stopped it after {len(values)} intermediate results",
            ))

    async def on_experiment_status(self, msg: ExperimentStatusChanged) -> None:
        if msg.status == "RUNNING":
            # Started, or resumed: a session for it is built (again) from storage when asked.
            self._finished.pop(msg.experiment_id, None)
            self._failed.discard(msg.experiment_id)
        elif msg.status in FINISHED_EXPERIMENT_STATUSES:
            self._end_session(msg.experiment_id)  # free the memory (and a worker process)
            self._failed.discard(msg.experiment_id)
            self._finished[msg.experiment_id] = None
            while len(self._finished) > FINISHED_REMEMBERED:
                del self._finished[next(iter(self._finished))]


def _worker_sandbox(trial_user: str) -> Sandbox | str:
    """Who custom algorithms' workers run as: the trial user when this tuner is root (its
    Sandbox), else this process's user; or why none can run safely (root without that user)."""
    try:
        return Sandbox.for_this_process(trial_user)
    except SandboxError as exc:
        log.error("custom tuners and assessors cannot run here: %s", exc)
        return str(exc)


async def start(settings: TunerSettings) -> Running:
    """Connect, declare, start consuming; returns its shutdown and health checks."""
    make_non_dumpable()  # a worker of this user (a non-root tuner's) must not read its secrets
    connections = await open_connections(settings, service="tuner")
    bus = connections.bus
    service = TunerService(bus, connections.store, custom_call_timeout=settings.custom_call_timeout,
                           custom_memory_limit_mb=settings.custom_memory_limit_mb,
                           work_dir=settings.tuner_work_dir, sandbox=_worker_sandbox(settings.trial_user))
    await bus.drain_retired_queues(TUNER_SHARDS, TUNER_QUEUE)
    consumer = ShardedConsumer(bus, TUNER_SHARDS, service.handlers(),
                               prefetch=max(32, settings.tuner_concurrency),
                               concurrency=settings.tuner_concurrency, on_release=service.forget)
    await consumer.start()

    async def shutdown() -> None:
        await consumer.stop()
        await connections.close()

    return connections.running(shutdown)
