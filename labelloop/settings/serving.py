"""Serving settings: pre-annotation after a promotion, ``/predict``'s limits and thresholds, video
tracking, the order of what to label next (scores, tabs, sampling, first picks), label mistakes and
pseudo-labels."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

#: Ultralytics' own tracker configs (``ultralytics/cfg/trackers``).
BUILTIN_TRACKERS = ("bytetrack.yaml", "botsort.yaml")


class ServingFields(BaseModel):
    """Predictions and what they drive: pre-annotation, ``/predict``, video tracks, active learning.

    A field group of ``Settings``, never built alone.
    """

    preannotate: bool = Field(True, description="After a promotion, predict every unlabeled task into Label Studio.")
    preannotate_batch: int = Field(16, ge=1, description="Tasks per pre-annotation batch.")
    set_project_model_version: bool = Field(
        True, description="After pre-annotation, make the new version the project's displayed model version."
    )
    predict_timeout_s: float = Field(
        90.0,
        gt=0,
        description="How long /predict waits for a predict worker; a predict task not started by then expires "
        "(workers discard it) and /predict answers 503.",
    )
    predict_batch: int = Field(
        16,
        ge=1,
        description="Tasks of one /predict predicted per model call (one chunk: its images downloaded and "
        "predicted together); bounds a predict worker's memory whatever the selection's size.",
    )
    predict_deadline_s: float = Field(
        60.0,
        gt=0,
        description="A predict worker starts no further chunk of a /predict after this many seconds and answers "
        "with what is ready (the other tasks get no prediction; Label Studio retrieves them next time); shortened "
        "to 0.8 of the time the receiver still waits (LABELLOOP_PREDICT_TIMEOUT_S from when it queued the task).",
    )
    predict_max_tasks: int = Field(
        256,
        ge=1,
        description="Tasks one /predict predicts itself (a Data Manager 'Retrieve Predictions' selection); more "
        "is answered 202 at once and handed to the pre-annotation queue, which writes their predictions into "
        "Label Studio (413 without LABEL_STUDIO_URL or a served version).",
    )
    predict_cache_projects: int = Field(
        4,
        ge=1,
        description="Projects whose models one predict process keeps loaded (least recently predicted dropped "
        "first); each keeps its served version and up to 2 recent ones for instant rollback.",
    )
    predict_warm: bool = Field(
        True,
        description="A worker that consumes the predict queue loads the served versions of the most recently "
        "served projects (the LABELLOOP_PREDICT_CACHE_PROJECTS most recent) when each pool process starts, "
        "in the background, so the first /predict after a start or a deploy does not spend its deadline loading.",
    )
    predict_conf: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Confidence threshold of a prediction's candidate boxes (what its score is computed over), "
        "and what versions without a display threshold of their own show (see LABELLOOP_SHOW_CONF).",
    )
    video_tracker: str = Field(
        "bytetrack.yaml",
        description="Ultralytics tracker that links a video's detections into tracks (pre-annotations): "
        "bytetrack.yaml, botsort.yaml, or the path of a tracker YAML of your own (Ultralytics' format, "
        "https://docs.ultralytics.com/modes/track/#tracker-selection).",
    )
    video_keyframe_tolerance: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="A predicted track keeps a keyframe where Label Studio's linear interpolation between kept "
        "keyframes would move its box by more than this (percent of the frame).",
    )
    show_conf: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Score threshold of the regions shown by /predict and pre-annotations, for every version; "
        "unset: each version's own, chosen on its validation split to minimise edits (manifest show_conf), else "
        "predict_conf. The prediction score always counts the regions above predict_conf.",
    )
    score_strategy: Literal["least_confidence", "margin", "entropy"] = Field(
        "least_confidence",
        description="How a prediction's score ranks what to label next: least_confidence, margin or entropy "
        "(score = 1 - informativeness; low first = most informative first).",
    )
    informative_tab: bool = Field(
        True,
        description="After a promotion, keep a Data Manager tab 'labelloop: most informative first' in the "
        "project (unlabeled tasks, lowest prediction score first).",
    )
    label_mistakes: bool = Field(
        True,
        description="After a pre-annotation, score each annotated task (detection) with the newest version not "
        "trained on its annotation (cleanlab ObjectLab), write labelloop_label_quality / labelloop_suspected into the "
        "task data and keep a Data Manager tab 'labelloop: possible label mistakes' (lowest score first).",
    )
    pseudo_labels: bool = Field(
        False,
        description="Self-training (detect): the served version's confident predictions on unlabeled tasks join "
        "a training's train split as pseudo-labels (see README, How it trains). Off until the benchmark shows "
        "it helps.",
    )
    pseudo_conf: float = Field(
        0.7,
        ge=0.0,
        le=1.0,
        description="An unlabeled image is pseudo-labelled only when every region predicted on it at "
        "LABELLOOP_PREDICT_CONF or more is at least this confident.",
    )
    pseudo_ratio: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="Pseudo-labelled images per human-labelled train image, at most (most confident first).",
    )
    pseudo_pool: int = Field(
        500,
        ge=1,
        description="Unlabeled tasks predicted per training for pseudo-labels, at most (4 per pseudo-label "
        "allowed, up to this).",
    )
    set_sampling: bool = Field(
        True,
        description="Set the project's sampling to 'Uncertainty sampling' once labelloop's predictions are in, so "
        "Label Studio's label stream serves labelloop's order (the previous sampling is kept for "
        "`labelloop sampling restore`).",
    )
    first_picks: bool = Field(
        True,
        description="Before the first version, order a connected project's unlabeled tasks by coverage of the "
        "images (predictions of model version labelloop-first-picks with a score and a cluster).",
    )

    @field_validator("video_tracker")
    @classmethod
    def _tracker(cls, v: str) -> str:
        """Ultralytics' two tracker names, or an existing ``.yaml``/``.yml`` file (an operator's
        setting: a file on this machine, never anything from Label Studio or the network)."""
        v = v.strip()
        if v in BUILTIN_TRACKERS:
            return v
        path = Path(v).expanduser()
        if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
            raise ValueError(
                f"LABELLOOP_VIDEO_TRACKER must be one of {BUILTIN_TRACKERS} or an existing tracker YAML file"
            )
        return str(path.absolute())
