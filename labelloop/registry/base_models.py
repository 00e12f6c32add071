"""Base models: which weights a project's first training starts from.

The base model comes from the operator (``LABELLOOP_BASE_MODEL``) or, per project, from a fixed
list of Ultralytics asset names in the extra params; never a path or a URL from Label Studio.
Accepted forms:

- an Ultralytics asset name (``yolo26n.pt``, ``yolo11s.pt``, ``yolov8n.pt``, with or without a
  task suffix): pretrained weights. Found on disk (the labelloop weights folder
  ``<cache_dir>/weights``, or Ultralytics' ``weights_dir``), else downloaded by Ultralytics'
  own ``attempt_download_asset`` when the machine is online. Offline, the same family is
  trained from its model YAML (``yolo26n.yaml``), which labelloop logs once per process and
  records in the version's manifest (``base_model``); ``labelloop doctor`` says so too.
- a model YAML name (``yolo26n.yaml``): trained from scratch.
- from the operator only: a local ``.pt`` or ``.yaml`` path.
- ``auto`` (the default): the recommended nano detection model of the installed ultralytics
  (``RECOMMENDED``, newest family first).

A detection model becomes the task's variant for other tasks (``yolo26n.pt`` -> ``yolo26n-seg.pt``,
``-obb``, ``-pose``, ``-cls``). Standard library only (no torch import).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

AUTO = "auto"
# Ultralytics' recommended detection models, newest first: the first whose model YAML the
# installed ultralytics ships is the default.
RECOMMENDED = ("yolo26n.pt", "yolo11n.pt", "yolov8n.pt")
_FAMILY_DIR = {"yolo26": "26", "yolo11": "11", "yolov8": "v8"}
# Ultralytics asset names labelloop knows how to train (detect and its task variants).
ASSET_RE = re.compile(
    r"^(?P<family>yolo26|yolo11|yolov8)(?P<scale>[nslmx])(?P<task>-seg|-obb|-pose|-cls)?\.(pt|ya?ml)$"
)
_TASK_SUFFIX = {"detect": "", "obb": "-obb", "segment": "-seg", "pose": "-pose", "classify": "-cls"}
_offline_noted: set[str] = set()


@dataclass(frozen=True)
class BaseModel:
    """What a first training starts from.

    Attributes:
        requested: the setting or extra param as given (``auto`` resolved to a name).
        weights: what ``YOLO(...)`` gets: a path, an asset name to download, or a model YAML.
        pretrained: whether ``weights`` are pretrained weights (not a YAML).
        source: ``disk``, ``download`` (Ultralytics fetches it), ``yaml`` or ``offline-yaml``
            (the asset was wanted, the machine is offline: its family's YAML instead).
        note: why an asset was replaced, for the log, the manifest and ``labelloop doctor``.
    """

    requested: str
    weights: str
    pretrained: bool
    source: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_asset_name(name: str) -> bool:
    """Whether ``name`` is an Ultralytics asset or model YAML name labelloop accepts from extra
    params (no folder, no URL)."""
    return bool(ASSET_RE.fullmatch(name))


def _ultralytics_cfg_dir() -> Path | None:
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "cfg" / "models"


def default_base_model() -> str:
    """The recommended nano detection model of the installed ultralytics (``yolo26n.pt`` for
    ultralytics 8.4); ``yolov8n.pt`` when ultralytics is not installed here."""
    cfg = _ultralytics_cfg_dir()
    for name in RECOMMENDED:
        family = name[: name.index("n.pt")]
        if cfg is not None and (cfg / _FAMILY_DIR[family] / f"{family}.yaml").exists():
            return name
    return RECOMMENDED[-1]


def for_task(name: str, task: str) -> str:
    """The task's variant of a detection asset or YAML name (``yolo26n.pt`` + segment ->
    ``yolo26n-seg.pt``); anything else (a path, a name already naming a task) as given."""
    m = ASSET_RE.fullmatch(name)
    if m is None or m["task"]:
        return name
    suffix = name[name.rindex(".") :]
    return f"{m['family']}{m['scale']}{_TASK_SUFFIX[task]}{suffix}"


def family_yaml(name: str) -> str:
    """The model YAML of an asset's architecture (``yolo26n-seg.pt`` -> ``yolo26n-seg.yaml``): what
    trains in its place, from scratch, when the weights cannot be had."""
    return name[: -len(".pt")] + ".yaml" if name.endswith(".pt") else name


def online(timeout_s: float = 2.0) -> bool:
    """Whether the machine can reach the internet: the DNS check Ultralytics' own ``is_online``
    makes (Cloudflare's and Google's resolver names), without importing ultralytics (torch)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        for host in ("one.one.one.one", "dns.google"):
            try:
                socket.getaddrinfo(host, 0, socket.AF_UNSPEC, 0, 0, socket.AI_ADDRCONFIG)
                return True
            except OSError:
                continue
        return False
    finally:
        socket.setdefaulttimeout(old)


def _on_disk(name: str, weights_dir: Path) -> Path | None:
    for folder in (weights_dir, _ultralytics_weights_dir()):
        if folder is not None and (folder / name).is_file():
            return folder / name
    return None


def _ultralytics_weights_dir() -> Path | None:
    """Ultralytics' ``weights_dir`` setting, read from its settings file (no import)."""
    config = os.environ.get("YOLO_CONFIG_DIR")
    if not config:
        return None
    try:
        return Path(json.loads((Path(config) / "settings.json").read_text())["weights_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resolve(
    base_model: str, task: str, weights_dir: Path, offline: bool | None = None, *, from_operator: bool = True
) -> BaseModel:
    """Decide what a first training of ``task`` starts from (rules in the module docstring).

    Args:
        base_model: the setting or extra param (``auto``, an asset or YAML name, or from the
            operator a path).
        weights_dir: labelloop's folder for downloaded assets (``<cache_dir>/weights``).
        offline: True: never download; False: download missing assets; None: ``online()``.
        from_operator: False for extra params: only asset and YAML names are accepted.

    Raises:
        ValueError: a path or URL where only names are accepted.
    """
    requested = default_base_model() if base_model in ("", AUTO) else base_model
    if not from_operator and not is_asset_name(requested):
        raise ValueError(f"base_model {requested!r} is not an Ultralytics model name such as yolo26n.pt")
    if "://" in requested:
        raise ValueError("base_model must not be a URL: put the weights on disk and give their path")
    name = for_task(requested, task)
    if not name.endswith(".pt"):
        return BaseModel(requested, name, False, "yaml")
    if not is_asset_name(name):  # an operator's own weights file
        return BaseModel(requested, name, True, "disk")
    found = _on_disk(name, weights_dir)
    if found is not None:
        return BaseModel(requested, str(found), True, "disk")
    if offline is None:
        offline = not online()
    if not offline:
        return BaseModel(requested, str(Path(weights_dir).absolute() / name), True, "download")
    yaml_name = family_yaml(name)
    note = f"{name} is not on disk and the machine is offline: training {yaml_name} from scratch instead"
    if name not in _offline_noted:
        _offline_noted.add(name)
        log.warning("base_model_offline", wanted=name, using=yaml_name, weights_dir=str(weights_dir))
    return BaseModel(requested, yaml_name, False, "offline-yaml", note)
