"""Typed records of a training: the job sent to the training process, its result, and the
version manifest the registry keeps (``<models_dir>/<project>/versions/vN/manifest.json``).

The manifest is JSON on disk and stays readable by older and newer labelloop: unknown keys are
kept (``extra="allow"``) and every field has a default, so a manifest written before a field
existed still loads. ``ModelVersion.record`` (``labelloop.registry.store``) is the typed view every
reader uses; ``ModelVersion.manifest`` stays the raw dict.

A manifest stays small whatever the project's size: a list that grows with the tasks or the
annotations (the dataset report's ``skipped`` and ``dropped_regions``, the pseudo-labelled
``task_ids``) keeps its first ``SAMPLE`` items and its length goes in ``<key>_total``; the
counts (``skipped_counts``, ``images``...) stay whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator, with_config
from typing_extensions import TypedDict  # pydantic validates typing_extensions TypedDicts before 3.12

if TYPE_CHECKING:  # the pseudo job travels inside the training job (labelloop.dataset.pseudo.job)
    from labelloop.dataset.pseudo.job import PseudoJob

SAMPLE = 20  # items kept of a list that grows with the tasks (its length kept in <key>_total)


def bounded(data: Any) -> Any:
    """``data`` with every list longer than ``SAMPLE`` (in dicts, at any depth) cut to its first
    ``SAMPLE`` items and its length recorded next to it as ``<key>_total``; other values as they
    are. A new object: ``data`` is not changed."""
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, list) and len(value) > SAMPLE:
            out[key] = value[:SAMPLE]
            out[f"{key}_total"] = len(value)
        else:
            out[key] = bounded(value)
    return out


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")


# The manifest's free-form parts, typed where their shape is known. TypedDicts, not models: they
# stay the plain JSON objects readers ``.get`` from, and keys a newer labelloop adds are kept.


@with_config(ConfigDict(extra="allow"))
class SpecRecord(TypedDict, total=False):
    """What the version was trained for: ``labelloop.task_types.spec.TrainSpec`` as JSON (the
    manifest's ``spec``; absent in manifests written before it)."""

    task: str
    region_type: str
    from_name: str
    to_name: str
    value_key: str
    labels: list[str]
    keypoint_from_name: str | None
    keypoint_labels: list[str]


@with_config(ConfigDict(extra="allow"))
class TrainArgs(TypedDict, total=False):
    """Ultralytics' ``YOLO.train`` arguments a training used (the manifest's ``train_args``), and
    a training job's ``extra`` (``labelloop.training.recipe.Recipe``'s arguments beyond epochs,
    imgsz and batch, and a few for experiments: ``optimizer``, ``lr0``, ``warmup_epochs``).

    ``time_s``: the wall-clock budget in seconds (0: none; labelloop's, not Ultralytics' ``time``);
    ``checkpoint``: ``"best"`` or ``"last"``; ``freeze``: layers frozen; ``weights``: what
    ``YOLO(...)`` was given.
    """

    weights: str
    epochs: int
    imgsz: int
    batch: int
    nbs: int
    time_s: float
    mosaic: float
    close_mosaic: int
    freeze: int
    checkpoint: str
    val: bool
    device: str
    workers: int
    seed: int
    optimizer: str
    lr0: float
    warmup_epochs: float


@with_config(ConfigDict(extra="allow"))
class BaseModelRecord(TypedDict, total=False):
    """Where a version's weights started (the manifest's ``base_model``): a first training's base
    model (``labelloop.registry.base_models.BaseModel``'s fields, ``note`` when it was replaced),
    or ``fine_tuned_from``: the version fine-tuned."""

    requested: str
    weights: str
    pretrained: bool
    source: str
    note: str
    fine_tuned_from: str | None


class Promotion(_Record):
    """The promotion gate's decision (``labelloop.registry.promotion.decide_promotion``)."""

    metric: str | None = None
    margin: float | None = None
    promoted: bool = False
    reason: str | None = None
    noise: float | None = None
    val_objects: int | None = None


class Incumbent(_Record):
    """The served version the candidate was compared with, and its metrics on the same split."""

    version: str
    metrics: dict[str, float] | None = None


class Recipe(_Record):
    """Why the training arguments are what they are (``labelloop.training.recipe``), and what ran."""

    reasons: dict[str, str] = Field(default_factory=dict)
    warm_start: bool | None = None
    epochs_run: int | None = None
    checkpoint_used: str | None = None


class PseudoLabels(_Record):
    """Self-training's part of a training (``labelloop.dataset.pseudo``): recorded when the setting was on.

    ``applied``: whether pseudo-labelled images were trained on (else ``skipped`` says why);
    ``version``: the served version that predicted them; ``conf``, ``low_conf``: the rule's
    thresholds; ``ratio``, ``cap``: images allowed per human train image, and that number;
    ``pool``: unlabeled tasks chosen to predict, ``predicted``: images predicted,
    ``qualified``: those that met the rule, ``images``, ``regions``: what was trained on, and
    ``task_ids`` (all in the train split; the first ``SAMPLE``, all of them counted in
    ``task_ids_total``); ``seconds``: spent predicting and writing.
    """

    applied: bool = False
    skipped: str | None = None
    version: str | None = None
    conf: float | None = None
    low_conf: float | None = None
    ratio: float | None = None
    cap: int | None = None
    pool: int | None = None
    predicted: int | None = None
    qualified: int | None = None
    images: int = 0
    regions: int = 0
    task_ids: list[int] = Field(default_factory=list)
    task_ids_total: int | None = None
    seconds: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        return bounded(data)


class ShowConf(_Record):
    """The score threshold the version shows annotators (``labelloop.training.threshold``): regions scoring
    below ``value`` are not shown by ``/predict`` and pre-annotations. ``value`` None: not
    applicable (classify) or not measured, and ``predict_conf`` applies.

    ``raw``: the validation split's optimum (fewest edits); ``value`` is it shrunk toward
    ``prior`` with weight ``objects / (objects + prior_objects)``; ``edits_per_image*``: missed
    plus wrong regions per validation image at ``value``, ``raw`` and ``prior``.
    """

    value: float | None = None
    note: str | None = None
    raw: float | None = None
    prior: float | None = None
    prior_objects: int | None = None
    objects: int | None = None
    images: int | None = None
    sweep_conf: float | None = None
    edits_per_image: float | None = None
    edits_per_image_at_raw: float | None = None
    edits_per_image_at_prior: float | None = None


class Manifest(_Record):
    """A model version's manifest.

    Written by the pipeline (everything but the last five fields) and completed by the registry
    (``version``, ``project_id``, ``parent``, ``created_at``, ``status``).
    """

    task: str = "detect"
    classes: list[str] = Field(default_factory=list)
    names: dict[str, str] = Field(default_factory=dict)
    spec: SpecRecord = Field(default_factory=lambda: SpecRecord())
    from_name: str | None = None
    to_name: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    # Class name -> {"ap50", "map50_95", "precision", "recall"} on the same validation (fractions).
    class_metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    incumbent: Incumbent | None = None
    promotion: Promotion = Field(default_factory=Promotion)
    dataset: dict[str, Any] = Field(default_factory=dict)
    dataset_size: dict[str, int] = Field(default_factory=dict)
    train_args: TrainArgs = Field(default_factory=lambda: TrainArgs())
    recipe: Recipe = Field(default_factory=Recipe)
    base_model: BaseModelRecord = Field(default_factory=lambda: BaseModelRecord())
    run_id: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    pseudo_labels: PseudoLabels | None = None
    # None in versions published before display thresholds: they show what predict_conf lets through.
    show_conf: ShowConf | None = None
    # Only in manifests written before annotations.json; read it with ModelVersion.annotations().
    annotations: dict[str, str] = Field(default_factory=dict)

    version: str | None = None
    project_id: int | None = None
    parent: str | None = None
    created_at: str | None = None
    status: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bounded_dataset(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("dataset"), dict):
            return {**data, "dataset": bounded(data["dataset"])}
        return data

    def class_names(self) -> dict[int, str]:
        """Class id -> label the version was trained with (older manifests: ``classes`` order)."""
        old = self.names or {str(i): c for i, c in enumerate(self.classes)}
        return {int(k): v for k, v in old.items()}

    def trained_imgsz(self) -> int | None:
        """The imgsz the version trained at (``train_args``), which serving predicts at; None when unrecorded."""
        imgsz = self.train_args.get("imgsz")
        return imgsz if isinstance(imgsz, int) and imgsz > 0 else None

    def to_json(self) -> dict[str, Any]:
        """The manifest as the JSON object written to disk (unset registry fields left out)."""
        registry_fields = ("version", "project_id", "parent", "created_at", "status")
        data = self.model_dump(mode="json")
        return {k: v for k, v in data.items() if not (k in registry_fields and v is None)}


@dataclass
class TrainingJob:
    """What the training child process runs (``labelloop.training.child.train``; JSON in ``spec.json``).

    ``weights``: a version's weights, an Ultralytics asset or a model YAML; ``incumbent``: the
    served version's weights, validated on the same split for the promotion gate, at
    ``incumbent_imgsz`` (the imgsz it trained and is served at; None: ``imgsz``);
    ``fallback_weights``: trained instead when ``weights`` cannot be downloaded; ``extra``: the
    recipe's other Ultralytics arguments; ``pseudo``: pseudo-label the unlabeled pool first
    (``labelloop.dataset.pseudo``); ``validate_only``: score these weights on the val split
    instead of training (the promotion gate's second look, ``labelloop.jobs.gate``).
    """

    weights: str
    data: str
    task: str
    config_dir: str
    epochs: int
    imgsz: int
    batch: int
    device: str = ""
    workers: int = 0
    seed: int = 0
    incumbent: str | None = None
    incumbent_imgsz: int | None = None
    fallback_weights: str | None = None
    show_prior: float = 0.5  # the display threshold's prior (labelloop.training.threshold.PRIOR)
    extra: TrainArgs = field(default_factory=lambda: TrainArgs())
    pseudo: PseudoJob | None = None
    validate_only: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The JSON object ``spec.json`` holds (``labelloop.training.job.read_job`` reads it back):
        ``extra``'s keys, then the fields by name (``pseudo`` as ``PseudoJob.to_dict()``),
        ``incumbent_imgsz`` and ``validate_only`` only when set (the format written before they
        were fields)."""
        body: dict[str, object] = {**self.extra}
        body.update((f.name, getattr(self, f.name)) for f in fields(self) if f.name not in _JOB_OWN)
        body["pseudo"] = self.pseudo.to_dict() if self.pseudo is not None else None
        for name in ("incumbent_imgsz", "validate_only"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        return body


_JOB_OWN = ("extra", "pseudo", "incumbent_imgsz", "validate_only")  # written by TrainingJob.to_dict itself


class TrainingResult(_Record):
    """What the training child process wrote (``result.json``).

    ``best``: the checkpoint to publish; ``metrics``: its validation metrics (fractions);
    ``incumbent_metrics``: the incumbent's on the same split, or None; ``class_metrics``: the
    candidate's per class name (``TaskType.class_metrics``); ``seconds``, ``val_seconds``: wall
    seconds training and validating; ``weights``: what was trained from (``fallback_weights``
    when the job's could not be had, ``base_model_note`` says why); ``epochs_run``, of
    ``epochs_planned``; ``checkpoint``: ``"best"`` or ``"last"``; ``pseudo_labels``: what
    ``labelloop.dataset.pseudo.label_unlabeled`` trained on, when it ran; ``show_conf``: its
    display threshold.
    """

    best: str
    metrics: dict[str, float]
    device: str
    seconds: float = 0.0
    val_seconds: float = 0.0
    incumbent_metrics: dict[str, float] | None = None
    incumbent_class_metrics: dict[str, dict[str, float]] | None = None  # the incumbent's class_metrics
    class_metrics: dict[str, dict[str, float]] | None = None
    weights: str | None = None
    epochs_run: int | None = None
    epochs_planned: int | None = None
    checkpoint: str | None = None
    base_model_note: str | None = None
    pseudo_labels: PseudoLabels | None = None
    show_conf: ShowConf | None = None

    @classmethod
    def from_dict(cls, data: object) -> TrainingResult:
        """``result.json``'s object read back (raises pydantic's ``ValidationError`` when malformed)."""
        return cls.model_validate(data)


class ValidationScore(_Record):
    """What a validation-only run of the training child wrote (``result.json``,
    ``TrainingJob.validate_only``): the weights' ``metrics`` and ``class_metrics`` on the val split
    (as ``TrainingResult``'s), the wall seconds and the device."""

    metrics: dict[str, float]
    class_metrics: dict[str, dict[str, float]] | None = None
    val_seconds: float = 0.0
    device: str = ""
