"""Prepare a process to import ultralytics offline, before its first import.

- Ultralytics reads ``YOLO_CONFIG_DIR``, ``YOLO_OFFLINE`` and ``YOLO_AUTOINSTALL`` at import
  and fetches ``Arial.ttf`` on every training when the font is missing; a local TTF
  (matplotlib's DejaVuSans, already installed with ultralytics) is copied there instead.
- PyPI's torchvision wheels are CUDA builds; with the CPU torch their compiled ops do not
  load and ``import torchvision`` fails with "operator torchvision::nms does not exist".
  Then a pure-torch NMS is registered with ``torch.library``; when the ops load, nothing is
  done.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_prepared = False


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's semantics: indices of kept boxes, by score descending.

    Args:
        boxes: (N, 4) xyxy; scores: (N,).

    Returns:
        (K,) int64 indices into ``boxes``, on ``boxes.device``.
    """
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    ix1 = torch.maximum(x1[:, None], x1[None, :])
    iy1 = torch.maximum(y1[:, None], y1[None, :])
    ix2 = torch.minimum(x2[:, None], x2[None, :])
    iy2 = torch.minimum(y2[:, None], y2[None, :])
    inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
    iou = inter / (areas[:, None] + areas[None, :] - inter).clamp(min=1e-12)
    n = boxes.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep = []
    iou_cpu = (iou > iou_threshold).cpu()
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou_cpu[i].to(suppressed.device)
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def ensure_torchvision_ops() -> bool:
    """Register pure-torch ``torchvision::nms``/``qnms`` when torchvision's compiled ops are missing.

    Returns:
        True when the fallback was registered, False when the compiled ops load (or
        torchvision is not installed).
    """
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "nms"):
        return False
    pkg = Path(next(iter(spec.submodule_search_locations)))
    for compiled in sorted(pkg.glob("_C*.so")) + sorted(pkg.glob("_C*.pyd")):
        try:
            torch.ops.load_library(str(compiled))
            if hasattr(torch.ops.torchvision, "nms"):
                return False
        except (OSError, RuntimeError):
            pass
    lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 - must stay alive
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms, "CompositeExplicitAutograd")
    lib.impl("qnms", _nms, "CompositeExplicitAutograd")
    _LIBS.append(lib)
    import torchvision.extension

    # torchvision.ops.nms asserts its own flag, which stays False without the compiled ops.
    torchvision.extension._has_ops = lambda: True
    return True


_LIBS: list[object] = []


def prepare_ultralytics(config_dir: Path) -> None:
    """Set ultralytics' environment for offline use and make torchvision importable.

    Must run before ``import ultralytics`` in this process. Idempotent.

    Args:
        config_dir: becomes ``YOLO_CONFIG_DIR``; ``<config_dir>/Ultralytics/Arial.ttf`` is
            created from a locally installed TTF.
    """
    global _prepared
    if _prepared:
        return
    config_dir = Path(config_dir).absolute()
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    # Checkpoints load with torch's weights_only and Ultralytics' allow-list of model classes, and
    # model YAMLs build without eval: a base model labelloop did not write runs no code.
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    font_dir = config_dir / "Ultralytics"
    font_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = font_dir / name
        if not target.exists():
            mpl = importlib.util.find_spec("matplotlib")
            if mpl and mpl.submodule_search_locations:
                src = Path(next(iter(mpl.submodule_search_locations))) / "mpl-data/fonts/ttf/DejaVuSans.ttf"
                if src.exists():
                    shutil.copyfile(src, target)
    ensure_torchvision_ops()
    from ultralytics import settings as yolo_settings

    yolo_settings.update({"sync": False})
    _prepared = True
