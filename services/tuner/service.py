"""The tuner service: wraps the pure tuner and assessor objects of each running experiment.

It answers ``suggest.request`` with ``trial.suggested``, feeds results (``trial.ended``) to
the tuner and intermediate results (``trial.metric``) to the assessor, which may ask for a
trial to be stopped early. Nothing here is the only copy: a restarted tuner rebuilds each
experiment's history from its state document (parameters and results of every trial) and
goes on; parameter ids are the dispatcher's, so none is ever repeated.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shared.bus import Bus, TransientError
from shared.messages import (
    ExperimentError,
    ExperimentStatusChanged,
    Message,
    MetricKind,
    SuggestRequest,
    TrialEnded,
    TrialMetric,
    TrialStatus,
    TrialStopRequested,
    TrialSuggested,
)
from shared.service import Running
from shared.settings import CommonSettings
from shared.state import ExperimentState
from shared.storage import BlobStore, Layout
from shared.topology import TUNER_QUEUE

from .algorithms import NoMoreTrials, TunerConfigError, create_tuner
from .assessors import AssessorConfigError, AssessResult, create_assessor

__all__ = ["TunerService", "TunerSettings"]

log = logging.getLogger("tunebus.tuner")

FINISHED_REMEMBERED = 10_000


class TunerSettings(CommonSettings):
    """Tuner settings (``TUNEBUS_`` environment variables)."""


def experiment_seed(experiment_id: str, class_args: dict[str, Any], start_seed: int | None) -> int:
    """classArgs' seed, else the start message's, else one derived from the experiment id."""
    if class_args.get("seed") is not None:
        return int(class_args["seed"])
    if start_seed is not None:
        return int(start_seed)
    return int.from_bytes(hashlib.sha256(experiment_id.encode()).digest()[:4], "big")


@dataclass
class _Session:
    """One experiment's search."""

    tuner: Any
    assessor: Any | None
    parameters: dict[int, dict[str, Any]] = field(default_factory=dict)  # by parameter id
    finished: set[str] = field(default_factory=set)  # trial ids whose end the tuner has seen
    histories: dict[str, dict[int, float]] = field(default_factory=dict)  # trial -> seq -> value
    stop_requested: set[str] = field(default_factory=set)
    exhausted: bool = False


def _learned_value(msg_status: TrialStatus, final: float | None, last: float | None) -> float | None:
    """What the tuner learns from a trial: its final result; an early-stopped one's last result."""
    if final is not None:
        return final
    if msg_status == TrialStatus.EARLY_STOPPED:
        return last
    return None


class TunerService:
    """Holds a session per running experiment; handlers run one at a time (in queue order)."""

    def __init__(self, bus: Bus, store: BlobStore) -> None:
        self.bus = bus
        self.store = store
        self._sessions: dict[str, _Session] = {}
        self._failed: set[str] = set()
        # Experiments seen to finish: late messages for them must not rebuild a session.
        self._finished: dict[str, None] = {}

    def handlers(self) -> dict[type[Message], Callable[[Any], Awaitable[None]]]:
        return {
            SuggestRequest: self.on_suggest,
            TrialEnded: self.on_ended,
            TrialMetric: self.on_metric,
            ExperimentStatusChanged: self.on_experiment_status,
        }

    # ------------------------------------------------------------------ sessions

    async def _session(self, experiment_id: str) -> _Session | None:
        session = self._sessions.get(experiment_id)
        if session is not None or experiment_id in self._failed or experiment_id in self._finished:
            return session
        layout = Layout(experiment_id)
        found = await self.store.read_json(layout.experiment_doc)
        if found is None:
            raise TransientError(f"{layout.experiment_doc} not found (yet)")
        doc = found[0]
        try:
            session = self._new_session(experiment_id, doc)
        except (TunerConfigError, AssessorConfigError, ValueError) as exc:
            self._failed.add(experiment_id)
            log.error("experiment %s: %s", experiment_id, exc)
            await self.bus.publish(ExperimentError(experiment_id=experiment_id, service="tuner",
                                                   reason=str(exc)))
            return None
        state = await self.store.read_json(layout.state_doc)
        if state is not None:
            self._replay(session, ExperimentState.model_validate(state[0]))
        self._sessions[experiment_id] = session
        return session

    @staticmethod
    def _new_session(experiment_id: str, doc: dict[str, Any]) -> _Session:
        config = doc["config"]
        spec = config["tuner"]
        class_args = dict(spec.get("classArgs") or {})
        if spec.get("name") in ("TPE", "Random", "Anneal", "Evolution"):
            class_args["seed"] = experiment_seed(experiment_id, class_args, doc.get("seed"))
        tuner = create_tuner(spec.get("name"), class_args, config["searchSpace"],
                             class_name=spec.get("className"), code_directory=spec.get("codeDirectory"))
        assessor_spec = config.get("assessor")
        assessor = None
        if assessor_spec:
            assessor = create_assessor(assessor_spec.get("name"), assessor_spec.get("classArgs") or {})
        return _Session(tuner=tuner, assessor=assessor)

    @staticmethod
    def _replay(session: _Session, state: ExperimentState) -> None:
        """Rebuild a session's history from the dispatcher's record."""
        records: list[dict[str, Any]] = []
        for trial in state.by_sequence():
            session.parameters[trial.sequence_id] = trial.parameters
            value = None
            if trial.ended:
                session.finished.add(trial.trial_id)
                value = _learned_value(trial.status, trial.final_value, trial.last_intermediate)
            # A record without a value (running, failed) is not learned from, but its
            # parameters are never suggested again.
            records.append({"parameter": trial.parameters, "value": value})
        for ready in state.ready:  # suggested, waiting for a slot: the same answer if asked again
            session.parameters[ready.parameter_id] = ready.parameters
            records.append({"parameter": ready.parameters, "value": None})
        if records:
            session.tuner.import_data(records)
        # Ids asked for whose answers are not on record may have been answered by the process
        # that died: answer them again first, in order, so that a deterministic tuner (grid
        # search) hands out the same points for them and not again for later ids.
        TunerService._suggest(session, sorted(state.requested))
        log.info("experiment %s: rebuilt %d trials (%d with results) from storage", state.experiment_id,
                 len(records), sum(r["value"] is not None for r in records))

    # ------------------------------------------------------------------ handlers

    async def on_suggest(self, msg: SuggestRequest) -> None:
        session = await self._session(msg.experiment_id)
        if session is None:
            return
        answers = await asyncio.to_thread(self._suggest, session, msg.parameter_ids)
        await self.bus.publish_many(
            TrialSuggested(experiment_id=msg.experiment_id, parameter_id=pid, parameters=params)
            for pid, params in answers
        )

    @staticmethod
    def _suggest(session: _Session, ids: list[int]) -> list[tuple[int, dict[str, Any] | None]]:
        out: list[tuple[int, dict[str, Any] | None]] = []
        for pid in ids:
            if pid in session.parameters:  # asked again (a redelivery): same answer
                out.append((pid, session.parameters[pid]))
                continue
            if session.exhausted:
                out.append((pid, None))
                continue
            try:
                params = session.tuner.generate_parameters(pid)
            except NoMoreTrials:
                session.exhausted = True
                out.append((pid, None))
                continue
            session.parameters[pid] = params
            out.append((pid, params))
        return out

    async def on_ended(self, msg: TrialEnded) -> None:
        session = await self._session(msg.experiment_id)
        if session is None or msg.trial_id in session.finished:
            return
        session.finished.add(msg.trial_id)
        params = session.parameters.get(msg.parameter_id)
        value = _learned_value(msg.status, msg.final_value, msg.last_intermediate)
        if params is not None and value is not None:
            session.tuner.receive_trial_result(msg.parameter_id, params, value)
        else:
            session.tuner.trial_end(msg.parameter_id, False)
        if session.assessor is not None:
            session.assessor.trial_end(msg.trial_id, msg.status == TrialStatus.SUCCEEDED)
        session.histories.pop(msg.trial_id, None)

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
        if session.assessor.assess_trial(msg.trial_id, values) == AssessResult.Bad:
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
        elif msg.status in ("DONE", "STOPPED", "ERROR"):
            self._sessions.pop(msg.experiment_id, None)  # free the memory
            self._failed.discard(msg.experiment_id)
            self._finished[msg.experiment_id] = None
            while len(self._finished) > FINISHED_REMEMBERED:
                del self._finished[next(iter(self._finished))]


async def start(settings: TunerSettings) -> Running:
    """Connect, declare, start consuming; returns its shutdown and health checks."""
    store = BlobStore(settings.storage_connection_string, settings.storage_container)
    await store.ensure_container()
    bus = Bus(settings.amqp_url, service="tuner")
    await bus.connect()
    service = TunerService(bus, store)
    await bus.consume(TUNER_QUEUE, service.handlers(), prefetch=32)
    log.info("tuner consuming %s", TUNER_QUEUE.name)

    async def shutdown() -> None:
        await bus.close()
        await store.close()

    return Running(shutdown, {"broker": bus.check, "storage": store.check})
