"""labelloop's one error hierarchy, and how each error maps to an HTTP status.

    LabelloopError                 base; never shown to a client with a traceback
    ├── BadRequestError            400: the request cannot be understood
    │   ├── LabelConfigError       422: label config unsupported or ambiguous for training
    │   ├── ParamsError            422: the model's extra params are invalid
    │   └── UnknownProjectError    404: a webhook for a project labelloop does not know
    ├── ForbiddenError             403: authenticated, but not allowed to change that project
    ├── UnavailableError           503: Redis or the predict workers cannot be reached in time
    │   └── LabelStudioUnavailable 503: Label Studio unreachable, timed out or a 5xx (retried)
    ├── LabelStudioError           502: Label Studio refused the token or lacks the object
    ├── DatasetError               a project has too little usable data to train
    ├── TrainingError              ultralytics training or validation failed
    └── RegistryError              409: the registry cannot do that (e.g. nothing to roll back to)
        ├── VersionNotFoundError   404: no such model version
        └── CurrentMovedError      409: CURRENT no longer points where the caller expected

The receiver maps them to responses in one place (``service.app``); workers log them as
events and leave the current model version serving.
"""

from __future__ import annotations


class LabelloopError(Exception):
    """Base class of every error labelloop raises on purpose."""

    status_code = 500


class BadRequestError(LabelloopError):
    """The request is well-formed HTTP but its content cannot be used."""

    status_code = 400


class LabelConfigError(BadRequestError):
    """The label config has no trainable control tag, or several and none chosen."""

    status_code = 422


class ParamsError(BadRequestError):
    """The extra params Label Studio passed to /setup are not valid training settings."""

    status_code = 422


class UnknownProjectError(BadRequestError):
    """A webhook names a project that is neither connected (``/setup``) nor readable with
    labelloop's Label Studio token (``service.projects``)."""

    status_code = 404


class ForbiddenError(LabelloopError):
    """The caller may not do this to that project (e.g. set its extra params from a ``/setup``
    whose access token cannot read it in Label Studio)."""

    status_code = 403


class UnavailableError(LabelloopError):
    """A dependency (Redis, the predict workers) did not answer within its timeout."""

    status_code = 503


class LabelStudioUnavailable(UnavailableError):
    """Label Studio could not be reached, timed out or answered a 5xx (``labelloop.labelstudio.client``);
    transient: Celery tasks retry it."""


class LabelStudioError(LabelloopError):
    """Label Studio refused the token (401, 403) or has no such object (404); the message names
    the setting to check."""

    status_code = 502


class DatasetError(LabelloopError):
    """The exported project does not give a dataset that can be trained on."""


class TrainingError(LabelloopError):
    """Training or validation of a candidate model failed."""


class RegistryError(LabelloopError):
    """The registry cannot do what was asked (e.g. roll back with no earlier version)."""

    status_code = 409


class VersionNotFoundError(RegistryError):
    """The named model version does not exist."""

    status_code = 404


class CurrentMovedError(RegistryError):
    """``CURRENT`` moved (an operator's promote or rollback) since the caller read it.

    Attributes:
        current: the version served now (None when nothing is).
    """

    def __init__(self, message: str, current: str | None) -> None:
        super().__init__(message)
        self.current = current
