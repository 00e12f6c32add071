"""The label-mistakes records, typed: what ``labelloop.quality.label_quality`` scores and
``labelloop.quality.mistakes`` keeps in ``mistakes.json`` (``labelloop.quality.mistakes_report``).
No dependency: the receiver's project page reads these without numpy or the predictor."""

from __future__ import annotations

from typing import TypedDict


class Percent(TypedDict):
    """A box in percent of the image, top-left corner and size (Label Studio's region value keys,
    https://labelstud.io/tags/rectanglelabels)."""

    x: float
    y: float
    width: float
    height: float


class DrawnBox(Percent):
    """An annotated box drawn on the project page, with its label."""

    label: str


class IssueRecord(TypedDict):
    """A ``label_quality.Issue`` as the report keeps it."""

    kind: str
    label: str
    score: float
    region: Percent
    predicted: str | None


class ScoredTask(TypedDict):
    """One scored task of the report: its task and annotation ids, the annotation's ``updated_at``,
    the version that judged it, its score in [0, 1] (low: likely mistaken), its issues worst first
    and its annotated boxes."""

    task: int
    annotation: int
    updated_at: str | None
    version: str
    score: float
    issues: list[IssueRecord]
    boxes: list[DrawnBox]


class MistakesReport(TypedDict, total=False):
    """``mistakes.json``: when it was scored (``at``, ISO 8601), whether the project's task type is
    scored (``supported``, else ``reason``), counts, and the scored tasks worst first."""

    project_id: int
    at: str
    supported: bool
    reason: str | None
    scored: int
    unscored: int
    predicted: int
    tasks: list[ScoredTask]
