"""One experiment's search (a :class:`Session`) and what is done to it, synchronously, inside
the experiment's algorithm calls: building it from the config, replaying its history, suggesting."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from shared.messages import TrialStatus
from shared.records import ExperimentDocument
from shared.state import ExperimentState

from .algorithms import NoMoreTrials, RemoteTuner, TunerConfigError, WaitForResults, create_tuner
from .assessors import AssessorConfigError, RemoteAssessor, create_assessor
from .calls import AlgorithmCalls, BuiltinCalls, ProcessCalls
from .custom_process import AlgorithmProcess, RemoteConfigError

__all__ = ["ROLES", "SEEDED_TUNERS", "Session", "experiment_seed", "learned_value", "new_session", "replay",
           "role_name", "suggest"]

log = logging.getLogger("tunebus.tuner")

#: Built-in tuners that take a ``seed`` (the experiment's is given to them unless classArgs has one).
SEEDED_TUNERS = ("TPE", "Random", "Anneal", "Evolution", "GP", "Metis", "DNGO", "Hyperband", "BOHB", "PBT")
ROLES = ("tuner", "assessor")


def experiment_seed(experiment_id: str, class_args: dict[str, Any], start_seed: int | None) -> int:
    """classArgs' seed, else the start message's, else one derived from the experiment id."""
    if class_args.get("seed") is not None:
        return int(class_args["seed"])
    if start_seed is not None:
        return int(start_seed)
    return int.from_bytes(hashlib.sha256(experiment_id.encode()).digest()[:4], "big")


@dataclass
class Session:
    """One experiment's search."""

    tuner: Any
    assessor: Any | None
    calls: AlgorithmCalls = field(default_factory=BuiltinCalls)
    tuner_name: str = "tuner"  # e.g. "custom tuner 'my_tuner.MyTuner'", for reasons
    assessor_name: str = "assessor"
    parameters: dict[int, dict[str, Any]] = field(default_factory=dict)  # by parameter id
    finished: set[str] = field(default_factory=set)  # trial ids whose end the tuner has seen
    histories: dict[str, dict[int, float]] = field(default_factory=dict)  # trial -> seq -> value
    stop_requested: set[str] = field(default_factory=set)
    exhausted: bool = False
    waiting: list[int] = field(default_factory=list)  # ids asked for that the tuner will answer later
    withdrawn: set[int] = field(default_factory=set)  # answered ids the dispatcher will never run

    @property
    def advisor(self) -> bool:
        """An NNI advisor (Hyperband): learns from the last intermediate result, may wait for results."""
        return bool(getattr(self.tuner, "learns_from_intermediate", False))


def learned_value(msg_status: TrialStatus, final: float | None, last: float | None,
                   advisor: bool = False) -> float | None:
    """What the tuner learns from a trial: its final result; an early-stopped one's last result
    (an advisor's: any ended trial's last result, as NNI's Hyperband ranks by the latest metric)."""
    if final is not None:
        return final
    if msg_status == TrialStatus.EARLY_STOPPED or advisor:
        return last
    return None


def new_session(experiment_id: str, doc: ExperimentDocument, calls: AlgorithmCalls) -> Session:
    config = doc.config
    spec = config["tuner"]
    assessor_spec = config.get("assessor") or {}
    process = calls.process if isinstance(calls, ProcessCalls) else None
    if process is not None:
        _load_custom(process, config)
    tuner: Any
    if spec.get("className") and process is not None:
        tuner = RemoteTuner(process, spec["className"])
    else:
        class_args = dict(spec.get("classArgs") or {})
        if spec.get("name") in SEEDED_TUNERS:
            class_args["seed"] = experiment_seed(experiment_id, class_args, doc.seed)
        tuner = create_tuner(spec.get("name"), class_args, config["searchSpace"])
    assessor: Any = None
    if assessor_spec.get("className") and process is not None:
        assessor = RemoteAssessor(process, assessor_spec["className"])
    elif assessor_spec:
        assessor = create_assessor(assessor_spec.get("name"), assessor_spec.get("classArgs") or {})
    return Session(tuner=tuner, assessor=assessor, calls=calls, tuner_name=role_name("tuner", spec),
                    assessor_name=role_name("assessor", assessor_spec))


def replay(session: Session, state: ExperimentState, *, answer_requested: bool = True) -> None:
    """Rebuild a session's history from the dispatcher's record (and, unless told not to,
    answer again the ids asked for: see below)."""
    records: list[dict[str, Any]] = []
    for trial in state.by_sequence():
        session.parameters[trial.sequence_id] = trial.parameters
        value = None
        if trial.ended:
            session.finished.add(trial.trial_id)
            value = learned_value(trial.status, trial.final_value, trial.last_intermediate,
                                   session.advisor)
        # A record without a value (running, failed) is not learned from, but its
        # parameters are never suggested again.
        record: dict[str, Any] = {"parameter": trial.parameters, "value": value}
        if session.advisor:  # its rounds complete when their trials end, with or without results
            record["ended"] = trial.ended
        records.append(record)
    for ready in state.ready:  # suggested, waiting for a slot: the same answer if asked again
        session.parameters[ready.parameter_id] = ready.parameters
        records.append({"parameter": ready.parameters, "value": None})
    if records:
        session.tuner.import_data(records)
    # Ids asked for whose answers are not on record may have been answered by the process
    # that died: answer them again first, in order, so that a deterministic tuner (grid
    # search) hands out the same points for them and not again for later ids.
    if answer_requested:
        suggest(session, sorted(state.requested))
    log.info("experiment %s: rebuilt %d trials (%d with results) from storage", state.experiment_id,
             len(records), sum(r["value"] is not None for r in records))


def suggest(session: Session, ids: list[int]) -> list[tuple[int, dict[str, Any] | None]]:
    """Answers for ``ids``: the same for an id asked again; none yet for one an advisor puts off."""
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
        except WaitForResults:  # answered after a later trial ends (_answer_waiting)
            if pid not in session.waiting:
                session.waiting.append(pid)
            continue
        if pid in session.waiting:
            session.waiting.remove(pid)
        session.parameters[pid] = params
        out.append((pid, params))
    return out


def _load_custom(process: AlgorithmProcess, config: dict[str, Any]) -> None:
    """Start the worker and build the experiment's custom algorithms in it; a config problem is
    raised as the role's config error (its message is the experiment's reason)."""
    algorithms = {}
    for role in ROLES:
        spec = config.get(role) or {}
        if spec.get("className"):
            algorithms[role] = {"className": spec["className"], "classArgs": spec.get("classArgs") or {},
                                "searchSpace": config.get("searchSpace") if role == "tuner" else None}
    directories = [str(process.work_dir / role) for role in algorithms]
    try:
        process.request({"op": "load", "code_directories": directories, "algorithms": algorithms})
    except RemoteConfigError as exc:
        role = exc.role if exc.role in algorithms else "tuner"
        error = TunerConfigError if role == "tuner" else AssessorConfigError
        raise error(algorithms[role]["className"], str(exc)) from None


def role_name(role: str, spec: dict[str, Any]) -> str:
    """How a reason names the algorithm: ``tuner 'TPE'``, ``custom tuner 'my_tuner.MyTuner'``."""
    if spec.get("className"):
        return f"custom {role} '{spec['className']}'"
    return f"{role} '{spec.get('name')}'"
