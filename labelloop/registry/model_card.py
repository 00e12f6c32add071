"""The model card written next to every export of a model version (``model_card.json``).

What someone outside labelloop needs to use a version as ``/predict`` does: the classes in id
order with their Label Studio labels, the task type, the imgsz and score threshold ``/predict``
uses, and where the version comes from (metrics, lineage, annotations, label config digest).
Everything is read from the registry (``labelloop.registry.store``: the version's manifest, its
``annotations.json``, the parents' manifests) and the project's extra params
(``labelloop.registry.params``): a pure function of those, no torch or ultralytics.

Schema (``SCHEMA`` 1)::

    {"schema": 1, "project_id": 7, "version": "v3", "created_at": "...Z", "status": "promoted",
     "format": "onnx", "file": "weights.onnx",
     "task": "detect", "from_name": "label", "to_name": "image",
     "classes": [{"id": 0, "label": "square"}, ...],        id order; label: Label Studio's value
     "imgsz": 640, "trained_imgsz": 640,                     pixels (letterboxed square input)
     "score_threshold": 0.31, "score_threshold_source": "version show_conf",
     "iou": 0.7, "max_det": 300,                             Ultralytics' predict defaults
     "metrics": {...}, "class_metrics": {...},               fractions, on the validation split
     "lineage": {"parent": "v2", "ancestors": ["v2", "v1"], "base_model": {...}, "run_id": "..."},
     "annotations": 48, "dataset_size": {"train": 38, "val": 10},
     "label_config_sha1": "..." | null}
"""

from __future__ import annotations

from typing import TypedDict

from labelloop.manifest import BaseModelRecord, Manifest
from labelloop.registry.store import ModelVersion, Registry

SCHEMA = 1
CARD = "model_card.json"
DEFAULT_IMGSZ = 640  # Ultralytics' default: what /predict uses for a version that does not record its imgsz
IOU = 0.7  # Ultralytics' predict default NMS IoU, which /predict keeps
MAX_DET = 300  # Ultralytics' predict default, which /predict keeps


class CardClass(TypedDict):
    """One class of the card: its YOLO class id and its Label Studio label."""

    id: int
    label: str


class CardLineage(TypedDict):
    """Where the version comes from: ``base_model`` is the manifest's."""

    parent: str | None
    ancestors: list[str]
    base_model: BaseModelRecord
    run_id: str | None


class ModelCard(TypedDict):
    """``model_card.json`` (schema in the module docstring)."""

    schema: int
    project_id: int
    version: str
    created_at: str | None
    status: str | None
    format: str
    file: str
    task: str
    from_name: str | None
    to_name: str | None
    classes: list[CardClass]
    imgsz: int
    trained_imgsz: int | None
    score_threshold: float
    score_threshold_source: str
    iou: float
    max_det: int
    metrics: dict[str, float]
    class_metrics: dict[str, dict[str, float]]
    lineage: CardLineage
    annotations: int
    dataset_size: dict[str, int]
    label_config_sha1: str | None


def serving_imgsz(record: Manifest, imgsz_override: int | None) -> tuple[int, int | None]:
    """The imgsz ``/predict`` uses for a version, and the one it was trained at.

    Args:
        record: the version's manifest.
        imgsz_override: the project's extra param or ``LABELLOOP_IMGSZ`` (None: unset).

    Returns:
        ``(imgsz, trained_imgsz)`` in pixels; ``trained_imgsz`` None when the manifest lacks it.
    """
    trained = record.train_args.get("imgsz")
    trained_at = int(trained) if isinstance(trained, int) and trained > 0 else None
    return int(imgsz_override or trained_at or DEFAULT_IMGSZ), trained_at


def score_threshold(
    record: Manifest, project_show_conf: float | None, settings_show_conf: float | None, predict_conf: float
) -> tuple[float, str]:
    """The score threshold ``/predict`` shows a version's regions at, and where it comes from.

    The same order as ``labelloop.serving.inference.Inference.show_threshold``: the project's extra param
    ``show_conf``, then ``LABELLOOP_SHOW_CONF``, then the version's own (manifest ``show_conf``,
    ``labelloop.training.threshold``), then ``LABELLOOP_PREDICT_CONF``.

    Returns:
        ``(threshold, source)``: a score in [0, 1] and one of "project show_conf",
        "LABELLOOP_SHOW_CONF", "version show_conf", "LABELLOOP_PREDICT_CONF".
    """
    own = record.show_conf.value if record.show_conf is not None else None
    for value, source in (
        (project_show_conf, "project show_conf"),
        (settings_show_conf, "LABELLOOP_SHOW_CONF"),
        (own, "version show_conf"),
    ):
        if value is not None:
            return float(value), source
    return float(predict_conf), "LABELLOOP_PREDICT_CONF"


def ancestors(registry: Registry, version: ModelVersion, limit: int = 50) -> list[str]:
    """The version's parents, nearest first, as far as their manifests still exist (retention
    deletes old versions; the walk stops at the first one missing or unreadable)."""
    out: list[str] = []
    parent = version.manifest.get("parent")
    while isinstance(parent, str) and parent not in out and len(out) < limit:
        out.append(parent)
        try:
            parent = registry.get(version.project_id, parent).manifest.get("parent")
        except Exception:  # deleted by retention or unreadable: the lineage ends at its name
            break
    return out


def model_card(
    registry: Registry,
    version: ModelVersion,
    fmt: str,
    file: str,
    *,
    imgsz_override: int | None = None,
    project_show_conf: float | None = None,
    settings_show_conf: float | None = None,
    predict_conf: float = 0.25,
) -> ModelCard:
    """The model card of one export of ``version`` (see the module docstring for the schema).

    Args:
        fmt: the export format ("pt", "onnx", "torchscript", "openvino").
        file: the exported file's name, next to the card.
        imgsz_override, project_show_conf, settings_show_conf, predict_conf: what ``/predict``
            would use (``serving_imgsz``, ``score_threshold``).
    """
    record = version.record
    imgsz, trained_imgsz = serving_imgsz(record, imgsz_override)
    threshold, source = score_threshold(record, project_show_conf, settings_show_conf, predict_conf)
    sync = record.dataset.get("sync") if isinstance(record.dataset.get("sync"), dict) else {}
    digest = sync.get("label_config_sha1") if isinstance(sync, dict) else None
    return {
        "schema": SCHEMA,
        "project_id": version.project_id,
        "version": version.name,
        "created_at": record.created_at,
        "status": record.status,
        "format": fmt,
        "file": file,
        "task": record.task,
        "from_name": record.from_name,
        "to_name": record.to_name,
        "classes": [{"id": i, "label": label} for i, label in sorted(record.class_names().items())],
        "imgsz": imgsz,
        "trained_imgsz": trained_imgsz,
        "score_threshold": threshold,
        "score_threshold_source": source,
        "iou": IOU,
        "max_det": MAX_DET,
        "metrics": record.metrics,
        "class_metrics": record.class_metrics,
        "lineage": {
            "parent": record.parent,
            "ancestors": ancestors(registry, version),
            "base_model": record.base_model,
            "run_id": record.run_id,
        },
        "annotations": len(version.annotations()),
        "dataset_size": record.dataset_size,
        "label_config_sha1": digest if isinstance(digest, str) else None,
    }
