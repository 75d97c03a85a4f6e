"""The stand-in's errors, shaped like azureml-core's: the HTTP status where the SDK puts it."""

from __future__ import annotations

import json

__all__ = [
    "ComputeTargetException",
    "ExperimentExecutionException",
    "RunAlreadyExists",
    "RunNotFound",
    "ServiceException",
    "SnapshotException",
    "StandinError",
]


class StandinError(Exception):
    """An error of the stand-in's 'service' (the base of the SDK-shaped ones below)."""


class ServiceException(StandinError):
    """Shaped like azureml's run-history ``ServiceException``: the HTTP status as ``status_code``."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(f"ServiceException:\n\tCode: {status_code}\n\tMessage: {message}")
        self.status_code = status_code


class RunNotFound(ServiceException):
    """No run with that id in the registry (AML: 404)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"Run {run_id} not found", 404)


class ExperimentExecutionException(StandinError):
    """Shaped like azureml's: the HTTP status only inside a JSON message, no attribute."""

    def __init__(self, status: int, message: str, url: str = "standin://not-azure/execution") -> None:
        super().__init__(json.dumps({"error_details": {"error": {"message": message}},
                                     "status_code": status, "url": url}, indent=4, sort_keys=True))


class RunAlreadyExists(ExperimentExecutionException):
    """A run with that id exists already (AML: 409 Conflict, inside the message)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(409, f"Run {run_id} already exists")


class ComputeTargetException(StandinError):
    """Shaped like azureml's: a missing cluster has no status, a service error has one in the text."""


class SnapshotException(StandinError):
    """The snapshot is over the SDK's limits (file count or size)."""
