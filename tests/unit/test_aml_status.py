"""Every AML run status maps to a trial status; which errors are worth retrying."""

from __future__ import annotations

from typing import Any

import pytest

from services.aml_submitter.aml.errors import (
    is_auth_error,
    is_conflict,
    is_not_found,
    is_transient,
    status_code_of,
)
from services.aml_submitter.aml.status import AmlRunStatus, is_terminal, trial_status_for
from shared.messages import TrialStatus

# What each of the SDK's status words means for a trial (status.py's table says why).
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
    "Unapproved": TrialStatus.WAITING,  # quota approval pending
    "Pausing": TrialStatus.RUNNING,
    "Paused": TrialStatus.RUNNING,  # not an end: the slot stays taken
}


def _sdk_run_status() -> Any:
    """azureml-core's own ``RunStatus`` (the words Azure ML's run history answers with)."""
    return pytest.importorskip("azureml._restclient.constants").RunStatus


def test_the_table_is_the_sdk_s_list_of_statuses() -> None:
    """The SDK's words, not a list written from memory: a status the SDK adds fails here."""
    sdk = _sdk_run_status().list()
    assert len(sdk) == len(set(sdk)) == 15
    assert set(EXPECTED) == set(sdk)


def test_every_status_of_the_sdk_is_known() -> None:
    """Each SDK status is one the project names (none falls through to 'unknown, watched on')."""
    assert {s.value for s in AmlRunStatus} == set(_sdk_run_status().list())


def test_the_sdk_s_unfinished_statuses_never_end_a_trial() -> None:
    """What azureml-core itself counts as running or post-processing (its wait loop goes on) is no
    end for tunebus either; everything else of its list is an end."""
    run_status = _sdk_run_status()
    unfinished = set(run_status.get_running_statuses()) | set(run_status.get_post_processing_statuses())
    assert {"Unapproved", "Pausing", "Paused", "NotResponding"} <= unfinished
    for status in unfinished:
        assert not is_terminal(status), status
        assert trial_status_for(status) in {TrialStatus.WAITING, TrialStatus.RUNNING}, status
    ends = set(run_status.list()) - unfinished
    assert ends == {"Completed", "Failed", "Canceled"}
    assert all(is_terminal(status) for status in ends)


def test_every_job_status_of_sdk_v2_is_known() -> None:
    """azure-ai-ml's job statuses are v1's words, plus ``Unknown`` (its default when a status maps to
    none of them): watched on like any word tunebus does not know, never taken for an end."""
    enums = pytest.importorskip("azure.ai.ml._restclient.arm_ml_service.models._enums")
    words = {status.value for status in enums.JobStatus}
    assert words - set(EXPECTED) == {"Unknown"}
    assert not is_terminal("Unknown") and trial_status_for("Unknown") == TrialStatus.WAITING


@pytest.mark.parametrize(("aml", "trial"), sorted(EXPECTED.items()))
def test_status_mapping(aml: str, trial: TrialStatus) -> None:
    assert trial_status_for(aml) == trial
    assert is_terminal(aml) == (aml in {"Completed", "Failed", "Canceled"})


def test_a_canceled_run_ends_as_its_kill_asked() -> None:
    assert trial_status_for("Canceled", canceled_as=TrialStatus.EARLY_STOPPED) == TrialStatus.EARLY_STOPPED
    assert trial_status_for("Completed", canceled_as=TrialStatus.EARLY_STOPPED) == TrialStatus.SUCCEEDED


def test_an_unknown_status_is_not_final() -> None:
    assert trial_status_for("Hibernating") == TrialStatus.WAITING
    assert not is_terminal("Hibernating")


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


# ---------------------------------------------------------------- the SDK's own exceptions


def _execution_error(status: int) -> Exception:
    """What azureml-core's ``_raise_request_error`` raises: the status only inside a JSON message."""
    exceptions = pytest.importorskip("azureml.exceptions")
    common = pytest.importorskip("azureml._base_sdk_common.common")

    class Response:  # what get_http_exception_response_string reads of a requests.Response
        url = "https://eastus.api.azureml.ms/execution/v1.0/.../experiments/tunebus-e/run"
        status_code = status
        text = '{"error": {"code": "Throttled", "message": "slow down"}}'

        def json(self) -> dict[str, object]:
            return {"error": {"code": "Throttled", "message": "slow down"}}

    error = exceptions.ExperimentExecutionException(common.get_http_exception_response_string(Response()))
    assert not hasattr(error, "status_code")  # the premise: nothing but the message
    return error


def _compute_error(status: int) -> Exception:
    exceptions = pytest.importorskip("azureml.exceptions")
    return exceptions.ComputeTargetException(
        "Received bad response from Resource Provider:\n"
        f"Response Code: {status}\nHeaders: {{}}\nContent: b'...'"
    )


@pytest.mark.parametrize(("status", "transient"), [(429, True), (500, True), (503, True), (400, False),
                                                    (403, False), (404, False)])
def test_execution_service_errors_by_the_status_in_the_message(status: int, transient: bool) -> None:
    error = _execution_error(status)
    assert status_code_of(error) == status
    assert is_transient(error) is transient


def test_a_conflict_from_the_execution_service_is_recognised() -> None:
    assert is_conflict(_execution_error(409))


@pytest.mark.parametrize(("status", "transient"), [(429, True), (502, True), (400, False)])
def test_compute_target_errors_by_the_status_in_the_message(status: int, transient: bool) -> None:
    assert is_transient(_compute_error(status)) is transient


def test_a_missing_cluster_is_permanent() -> None:
    exceptions = pytest.importorskip("azureml.exceptions")
    error = exceptions.ComputeTargetException(
        "ComputeTargetNotFound: Compute Target with name gpu not found in provided workspace")
    assert status_code_of(error) is None
    assert not is_transient(error)


def test_run_history_errors_carry_the_status_as_an_attribute() -> None:
    """``Run.get`` of a missing run: a ServiceException with ``status_code`` 404."""
    restclient = pytest.importorskip("azureml._restclient.exceptions")
    models = pytest.importorskip("azureml._restclient.models")

    class Response:
        status_code = 404
        headers: dict[str, str] = {}
        reason = "Not Found"
        text = "{}"

        def json(self) -> dict[str, object]:
            return {}

        def raise_for_status(self) -> None:
            raise RuntimeError("404 Not Found")

    inner = models.ErrorResponseException(lambda *_: None, Response())
    error = restclient.ServiceException(inner)
    assert status_code_of(error) == 404
    assert is_not_found(error) and not is_transient(error)
    assert is_auth_error(_HttpError("Forbidden", 403)) and not is_auth_error(error)
