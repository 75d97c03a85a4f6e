"""Every AML run status maps to a trial status; which errors are worth retrying."""

from __future__ import annotations

import pytest

from services.aml_submitter.aml.errors import is_conflict, is_transient, status_code_of
from services.aml_submitter.aml.status import AmlRunStatus, is_terminal, trial_status_for
from shared.messages import TrialStatus

EXPECTED = {
    "NotStarted": TrialStatus.WAITING,
    "Queued": TrialStatus.WAITING,
    "Preparing": TrialStatus.WAITING,
    "Provisioning": TrialStatus.WAITING,
    "Starting": TrialStatus.WAITING,
    "Running": TrialStatus.RUNNING,
    "Finalizing": TrialStatus.RUNNING,
    "CancelRequested": TrialStatus.RUNNING,
    "Completed": TrialStatus.SUCCEEDED,
    "Failed": TrialStatus.FAILED,
    "Canceled": TrialStatus.USER_CANCELED,
    "NotResponding": TrialStatus.RUNNING,  # watched on; failed only after NOT_RESPONDING_LIMIT
}


def test_the_table_covers_every_aml_status() -> None:
    assert set(EXPECTED) == {s.value for s in AmlRunStatus}


@pytest.mark.parametrize(("aml", "trial"), sorted(EXPECTED.items()))
def test_status_mapping(aml: str, trial: TrialStatus) -> None:
    assert trial_status_for(aml) == trial
    assert is_terminal(aml) == (aml in {"Completed", "Failed", "Canceled"})


def test_a_canceled_run_ends_as_its_kill_asked() -> None:
    assert trial_status_for("Canceled", canceled_as=TrialStatus.EARLY_STOPPED) == TrialStatus.EARLY_STOPPED
    assert trial_status_for("Completed", canceled_as=TrialStatus.EARLY_STOPPED) == TrialStatus.SUCCEEDED


def test_an_unknown_status_is_not_final() -> None:
    assert trial_status_for("Paused") == TrialStatus.WAITING
    assert not is_terminal("Paused")


class _HttpError(Exception):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class _Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class _WrappedError(Exception):
    """Like msrest's HttpOperationError: the status is on .response."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.response = _Response(status_code)


class AuthenticationException(Exception):
    """Named like azureml's."""


class ComputeTargetException(Exception):
    """Named like azureml's."""


@pytest.mark.parametrize(("exc", "transient"), [
    (_HttpError("Too Many Requests", 429), True),
    (_HttpError("Internal Server Error", 500), True),
    (_HttpError("Service Unavailable", 503), True),
    (_WrappedError("Bad Gateway", 502), True),
    (_HttpError("Request Timeout", 408), True),
    (ConnectionResetError("connection reset by peer"), True),
    (TimeoutError("read timed out"), True),
    (Exception("Received 429 from the service: throttled"), True),
    (_HttpError("Unauthorized", 401), False),
    (_HttpError("Forbidden", 403), False),
    (_WrappedError("Not Found", 404), False),
    (_HttpError("Bad Request: invalid image name", 400), False),
    (AuthenticationException("could not authenticate"), False),
    (ComputeTargetException("ComputeTargetNotFound: gpu-cluster"), False),
    (ValueError("bad value"), False),
])
def test_transient_or_permanent(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_status_is_found_on_a_cause() -> None:
    try:
        try:
            raise _HttpError("throttled", 429)
        except _HttpError as inner:
            raise RuntimeError("submitting failed") from inner
    except RuntimeError as outer:
        assert status_code_of(outer) == 429
        assert is_transient(outer)


def test_conflict() -> None:
    assert is_conflict(_HttpError("Conflict", 409))
    assert is_conflict(Exception("Run tunebus_x_y_1 already exists"))
    assert not is_conflict(_HttpError("Bad Request", 400))
