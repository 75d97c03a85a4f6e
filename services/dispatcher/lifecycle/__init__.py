"""An experiment's lifecycle as pure functions: (state, event, now) -> messages to publish.

Every function mutates the given :class:`ExperimentState` and returns the messages that follow
from the change. The service persists the state (with those messages in its outbox) before
publishing them. Each function is idempotent: applying the same event twice changes nothing
the second time and returns no messages. By phase: :mod:`.control` (start, stop, resume,
update, error), :mod:`.trials` (a trial's suggestion, reports and end), :mod:`.ticks` (the
periodic check); :mod:`.steps` holds what they share, :mod:`.plan` what they read.
"""

from .control import (
    RESUMABLE_STATUSES,
    apply_error,
    apply_resume,
    apply_stop,
    apply_update,
    start_experiment,
)
from .plan import Plan, Policy, plan_from_config, plan_with_limits, utcnow
from .steps import suggest_requests
from .ticks import apply_rearm, apply_tick, tick_interval, tick_overdue
from .trials import (
    apply_ended,
    apply_heartbeat,
    apply_progress,
    apply_status,
    apply_stop_request,
    apply_suggested,
)

__all__ = [
    "RESUMABLE_STATUSES",
    "Plan",
    "Policy",
    "apply_ended",
    "apply_error",
    "apply_heartbeat",
    "apply_progress",
    "apply_rearm",
    "apply_resume",
    "apply_status",
    "apply_stop",
    "apply_stop_request",
    "apply_suggested",
    "apply_tick",
    "apply_update",
    "plan_from_config",
    "plan_with_limits",
    "start_experiment",
    "suggest_requests",
    "tick_interval",
    "tick_overdue",
    "utcnow",
]
