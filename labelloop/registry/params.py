"""Per-project training settings from the ML backend's "extra params" in Label Studio.

Label Studio sends the model connection's extra params (a JSON object) with every ``/setup``;
the receiver validates them and stores them in ``<models_dir>/<project>/params.json``, where
the workers read them. Unset keys fall back to the environment's settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from labelloop.errors import ParamsError
from labelloop.registry.base_models import is_asset_name
from labelloop.registry.store import ProjectFiles
from labelloop.task_types.labels import TrainSpec, parse_label_config

FILE = "params.json"

Checkpoint = Literal["best", "last"]
ScoreStrategy = Literal["least_confidence", "margin", "entropy"]


class ParamDefaults(Protocol):
    """The environment's defaults under a project's extra params: the attributes ``ProjectParams.effective``
    reads (``labelloop.settings.Settings`` has them all, with the same names and types; ``control_tag`` and
    ``obb`` have no environment default)."""

    @property
    def epochs(self) -> int | None: ...
    @property
    def imgsz(self) -> int | None: ...
    @property
    def batch(self) -> int | None: ...
    @property
    def nbs(self) -> int | None: ...
    @property
    def train_time_s(self) -> float | None: ...
    @property
    def freeze(self) -> int | None: ...
    @property
    def mosaic(self) -> float | None: ...
    @property
    def close_mosaic(self) -> int | None: ...
    @property
    def checkpoint(self) -> Checkpoint | None: ...
    @property
    def base_model(self) -> str: ...
    @property
    def train_every_n(self) -> int: ...
    @property
    def val_fraction(self) -> float: ...
    @property
    def promotion_metric(self) -> str: ...
    @property
    def promotion_margin(self) -> float: ...
    @property
    def preannotate(self) -> bool: ...
    @property
    def score_strategy(self) -> ScoreStrategy: ...
    @property
    def show_conf(self) -> float | None: ...
    @property
    def informative_tab(self) -> bool: ...
    @property
    def pseudo_labels(self) -> bool: ...
    @property
    def set_sampling(self) -> bool: ...
    @property
    def first_picks(self) -> bool: ...


class EffectiveParams(TypedDict):
    """A project's training settings: its extra params over the environment's (``Settings``).

    None where neither sets it: the recipe then decides (``epochs``, ``imgsz``, ``batch``, ``nbs``,
    ``freeze``, ``mosaic``, ``close_mosaic``, ``checkpoint``; ``labelloop.training.recipe``), no
    time limit (``train_time_s``, seconds), the version's own display threshold (``show_conf``),
    the label config decides (``control_tag``, ``obb``).
    """

    epochs: int | None
    imgsz: int | None
    batch: int | None
    nbs: int | None
    train_time_s: float | None
    freeze: int | None
    mosaic: float | None
    close_mosaic: int | None
    checkpoint: Checkpoint | None
    base_model: str
    train_every_n: int
    val_fraction: float
    promotion_metric: str
    promotion_margin: float
    preannotate: bool
    score_strategy: ScoreStrategy
    show_conf: float | None
    informative_tab: bool
    pseudo_labels: bool
    set_sampling: bool
    first_picks: bool
    control_tag: str | None
    obb: bool | None


class ProjectParams(BaseModel):
    """The extra params labelloop understands; anything else is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(None, ge=1, le=10_000)
    imgsz: int | None = Field(None, ge=32, le=8192)
    batch: int | None = Field(None, ge=1, le=4096)
    nbs: int | None = Field(None, ge=1, le=4096)
    train_time_s: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    freeze: int | None = Field(None, ge=0, le=100)
    mosaic: float | None = Field(None, ge=0.0, le=1.0)
    close_mosaic: int | None = Field(None, ge=0, le=10_000)
    checkpoint: Literal["best", "last"] | None = None
    base_model: str | None = Field(None, min_length=1, max_length=64)
    train_every_n: int | None = Field(None, ge=1)
    val_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    promotion_metric: Literal["map50_95", "map50", "precision", "recall"] | None = None
    promotion_margin: float | None = Field(None, ge=0.0, le=1.0)
    preannotate: bool | None = None
    score_strategy: Literal["least_confidence", "margin", "entropy"] | None = None
    show_conf: float | None = Field(None, ge=0.0, le=1.0)
    informative_tab: bool | None = None
    pseudo_labels: bool | None = None
    set_sampling: bool | None = None
    first_picks: bool | None = None
    control_tag: str | None = Field(None, min_length=1)
    obb: bool | None = None

    @field_validator("imgsz")
    @classmethod
    def _stride(cls, v: int | None) -> int | None:
        if v is not None and v % 32:
            raise ValueError("imgsz must be a multiple of 32 (the YOLO stride)")
        return v

    @field_validator("base_model")
    @classmethod
    def _asset_name(cls, v: str | None) -> str | None:
        # Extra params come from whoever can edit the ML backend connection: a name from
        # Ultralytics' fixed list only, never a path, a URL or a YAML to evaluate from disk.
        if v is not None and not is_asset_name(v):
            raise ValueError("must be an Ultralytics model name such as yolo26n.pt, yolo11s.pt or yolov8n.yaml")
        return v

    def effective(self, defaults: ParamDefaults) -> EffectiveParams:
        """These params over the environment's defaults (``defaults``' attribute of the same name, e.g.
        ``Settings``'; None where it has none: ``control_tag``, ``obb``)."""
        base = {k: getattr(defaults, k, None) for k in type(self).model_fields}
        # Each key is a field of both, validated by pydantic with the same type (EffectiveParams').
        return cast(EffectiveParams, {**base, **self.model_dump(exclude_none=True)})


def train_spec(label_config: str, params: ProjectParams) -> TrainSpec:
    """What the project trains: ``labelloop.task_types.labels.parse_label_config`` with the project's
    ``control_tag`` and ``obb`` extra params.

    Raises:
        LabelConfigError: see ``parse_label_config`` (422 at /setup).
    """
    return parse_label_config(label_config, control_tag=params.control_tag, obb=bool(params.obb))


def parse_extra_params(raw: Any) -> ProjectParams:
    """Validate Label Studio's ``extra_params`` (an object, a JSON string, or null).

    Raises:
        ParamsError: not an object, an unknown key or a value out of range (422 at /setup).
    """
    if raw is None or raw == "":
        return ProjectParams()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ParamsError("extra params must be a JSON object") from None
        if raw is None:
            return ProjectParams()
    if not isinstance(raw, dict):
        raise ParamsError("extra params must be a JSON object")
    try:
        return ProjectParams.model_validate(raw)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'extra params'}: {e['msg']}" for e in exc.errors())
        raise ParamsError(f"invalid extra params: {reasons}") from None


def load(models_dir: Path, project_id: int) -> ProjectParams:
    """The stored params of a project (defaults when none were stored or the file is unreadable)."""
    text = ProjectFiles(models_dir).read(project_id, FILE)
    try:
        return ProjectParams.model_validate_json(text) if text is not None else ProjectParams()
    except ValidationError:
        return ProjectParams()


def store(models_dir: Path, project_id: int, params: ProjectParams) -> bool:
    """Write the params atomically when they changed; returns whether the file was written."""
    files = ProjectFiles(models_dir)
    if files.read(project_id, FILE) is not None and load(models_dir, project_id) == params:
        return False
    files.write(project_id, FILE, params.model_dump_json(exclude_none=True))
    return True


def preannotates(models_dir: Path, defaults: ParamDefaults, project_id: int) -> bool:
    """Whether a newly served version of the project pre-annotates its unlabeled tasks
    (``LABELLOOP_PREANNOTATE``, ``defaults.preannotate``, under the project's extra param ``preannotate``)."""
    return load(models_dir, project_id).effective(defaults)["preannotate"]
