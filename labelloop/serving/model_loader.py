"""Loading a project's version (or the base model) into an Ultralytics ``YOLO``, with what its
manifest says about serving it (task, control tag, imgsz, display threshold)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelloop.registry.store import Registry

BASE = "base"  # the version name of a project's base .pt model, before its first version


@dataclass
class LoadedModel:
    """A model in memory and what serving it needs.

    ``model``: the Ultralytics ``YOLO``; ``names``: its class id -> name; ``task``: the
    version's Ultralytics task (``detect``...) from its manifest (None for a base .pt: its own);
    ``from_name``: the control tag it was trained for; ``imgsz``: its training imgsz (manifest
    ``train_args``), None when unknown; ``show_conf``: its display threshold (manifest
    ``show_conf.value``), None when it has none.
    """

    version: str
    model: Any
    names: dict[int, str]
    task: str | None = None
    from_name: str | None = None
    imgsz: int | None = None
    show_conf: float | None = None


class ModelLoader:
    """Loads weights with Ultralytics (imported on first load, never at import).

    Args:
        registry: where versions are read from.
        base_model: weights served before a project's first version, when they are an existing
            .pt file; a model YAML has no weights, so such projects get nothing until trained.
        config_dir: Ultralytics' config dir (``labelloop.yolo_env``).
        device: ``LABELLOOP_DEVICE`` ("" picks, see ``labelloop.training.child.pick_device``).
    """

    def __init__(self, registry: Registry, base_model: str, config_dir: Path, device: str = "") -> None:
        self.registry = registry
        self.base_model = base_model
        self.config_dir = config_dir
        self.device = device

    def load(self, weights: str, version: str) -> LoadedModel:
        """``YOLO(weights)`` on the device, as ``version`` with its own task and class names."""
        from labelloop.yolo_env import prepare_ultralytics

        prepare_ultralytics(self.config_dir)
        from ultralytics.models import YOLO

        from labelloop.training.child import pick_device

        model = YOLO(weights)
        device = pick_device(self.device)
        model.to("cuda:0" if device == "0" else device)
        return LoadedModel(version, model, dict(model.names), model.task)

    def load_version(self, project_id: int, version: str | None) -> LoadedModel | None:
        """The project's ``version`` (None: the base .pt as ``BASE``), or None when there is nothing
        to load (no version and no base .pt).

        Raises:
            VersionNotFoundError: no such version.
            Exception: whatever Ultralytics raises on unreadable weights.
        """
        if version:
            mv = self.registry.get(project_id, version)
            loaded = self.load(str(mv.weights), version)
            record = mv.record
            loaded.task = ("task" in mv.manifest and record.task) or loaded.model.task
            loaded.from_name = record.from_name
            loaded.imgsz = record.trained_imgsz()
            loaded.show_conf = record.show_conf.value if record.show_conf is not None else None
            return loaded
        if self.base_model.endswith(".pt") and Path(self.base_model).exists():
            return self.load(self.base_model, BASE)
        return None
