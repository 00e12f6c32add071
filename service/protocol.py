"""Pydantic models of what Label Studio 1.23 sends to an ML backend, built from captures.

Sources: the requests in ``shared/fixtures/label-studio/`` (captured from a real Label Studio
1.23.2) and https://labelstud.io/guide/ml_create. Unknown fields are allowed and ignored;
only what labelloop uses is required.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from labelloop.errors import BadRequestError
from labelloop.events.changes import in_future

ANNOTATION_EVENTS = frozenset({"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED"})
DELETE_EVENTS = frozenset({"ANNOTATIONS_DELETED"})
TRAIN_EVENTS = frozenset({"START_TRAINING"})
ACCEPTED_ACTIONS = ANNOTATION_EVENTS | DELETE_EVENTS | TRAIN_EVENTS

# Label Studio's ids are database bigints; larger numbers are refused rather than rounded.
MAX_ID = 2**63 - 1


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


def parse_project_id(value: Any) -> int:
    """Project id from ``/setup``/``/predict``'s ``"<id>.<timestamp>"`` string, a route's
    ``{project_id}``, or an int: a positive Label Studio bigint (1 to 2**63-1).

    Raises:
        BadRequestError: not of that form (400 with the reason).
    """
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID:
        return value
    if isinstance(value, str):
        head = value.split(".", 1)[0]
        # ASCII digits only ('²'.isdigit() is true), and at most a bigint's 19 before int():
        # int() of thousands of digits is slow and raises ValueError past 4,300.
        if head.isascii() and head.isdigit() and len(head) <= len(str(MAX_ID)) and 0 < int(head) <= MAX_ID:
            return int(head)
    raise BadRequestError(f"project must be '<id>.<timestamp>' or an integer id from 1 to {MAX_ID}")


class ProjectRef(_Loose):
    """The ``project`` object in webhooks (it also carries the project token: never log it)."""

    id: int = Field(gt=0, le=MAX_ID)


class AnnotationRef(_Loose):
    id: int = Field(gt=0, le=MAX_ID)
    task: int | None = None
    updated_at: str | None = None
    was_cancelled: bool = False


class DeletedAnnotation(_Loose):
    id: int = Field(gt=0, le=MAX_ID)


class WebhookEvent(_Loose):
    """An accepted webhook: ANNOTATION_CREATED/UPDATED, ANNOTATIONS_CREATED (bulk: ``annotation``
    is a list), ANNOTATIONS_DELETED (``annotations``: ids only) or START_TRAINING."""

    action: str
    project: ProjectRef
    annotation: AnnotationRef | list[AnnotationRef] | None = None
    annotations: list[DeletedAnnotation] | None = None

    @field_validator("project", mode="before")
    @classmethod
    def _project_int(cls, v: Any) -> Any:
        # Some Label Studio versions send the project id alone.
        return {"id": v} if isinstance(v, int) and not isinstance(v, bool) else v

    def check(self) -> None:
        """Require the fields each action needs.

        Raises:
            BadRequestError: a required field for this action is missing, or an annotation's
                ``updated_at`` is more than ``labelloop.events.changes.CLOCK_SKEW_S`` in the future.
        """
        if self.action in ANNOTATION_EVENTS and not self.annotation:
            raise BadRequestError(f"{self.action} needs an 'annotation' object (a list for ANNOTATIONS_CREATED)")
        if self.action in DELETE_EVENTS and not self.annotations:
            raise BadRequestError(f"{self.action} needs a non-empty 'annotations' list")
        for annotation_id, updated_at in self.changes():
            if in_future(updated_at):  # it would outrank every real update of the annotation
                raise BadRequestError(
                    f"annotation {annotation_id}: updated_at {(updated_at or '')[:40]} is in the future"
                )

    def changes(self) -> list[tuple[int, str | None]]:
        """``(annotation id, updated_at)`` per annotation this event changes; updated_at None = deleted."""
        if self.action in DELETE_EVENTS:
            return [(a.id, None) for a in self.annotations or []]
        if self.action in ANNOTATION_EVENTS:
            items = self.annotation if isinstance(self.annotation, list) else [self.annotation]
            return [(a.id, a.updated_at or "") for a in items if a is not None]
        return []

    def delivery_key(self) -> str | None:
        """Identity of one delivery, for deduplication; None for START_TRAINING (each click counts)."""
        changes = self.changes()
        if not changes:
            return None
        return f"{self.action}:" + ",".join(f"{i}@{u or ''}" for i, u in changes)


class SetupRequest(_Loose):
    """``POST /setup``: ``project`` is "<id>.<timestamp>", ``schema`` the label config."""

    project: str | int
    label_config: str = Field(alias="schema")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: Any = None

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class PredictTask(_Loose):
    id: int
    data: dict[str, Any]
    project: int | None = Field(None, gt=0, le=MAX_ID)


class PredictRequest(_Loose):
    """``POST /predict``: tasks to predict, the project and its label config."""

    tasks: list[PredictTask]
    project: str | int | None = None
    label_config: str
    params: dict[str, Any] | None = None
