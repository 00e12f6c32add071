"""One image's model outputs: the arrays an Ultralytics ``Results`` holds (or a caller gives
``labelloop.task_types.convert.predictions_to_regions``), checked once per image.

Arrays may be lists, numpy arrays or torch tensors (``labelloop.task_types.geometry.as_array``).
Shapes, for N instances: ``classes`` (N,) class ids; ``scores`` (N,) confidences;
``boxes_xyxy`` (N, 4) pixels; ``obb_xyxyxyxy`` (N, 4, 2) pixel corners; ``masks`` (N, h, w) at the
model's resolution; ``polygons_xyn`` N polygons (P, 2) normalised; ``keypoints_xy`` (N, K, 2)
pixels and ``keypoints_conf`` (N, K); ``probs`` (C,) classify's class probabilities;
``class_scores`` (N, nc) every class's score per box (the detect predictor of
``labelloop.serving.inference.class_scores_predictor``). Ultralytics' ``Results`` attributes: https://docs.ultralytics.com/modes/predict/#working-with-results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, cast

import numpy as np
import numpy.typing as npt

from labelloop.ls_json import Region
from labelloop.task_types.geometry import as_array
from labelloop.task_types.informativeness import (
    DEFAULT_STRATEGY,
    Strategy,
    classification_informativeness,
    detection_informativeness,
)


class ModelOutputs(TypedDict, total=False):
    """One image's model outputs by name (shapes in the module docstring); absent or None: not given."""

    boxes_xyxy: Any
    obb_xyxyxyxy: Any
    masks: Any
    polygons_xyn: Any
    keypoints_xy: Any
    keypoints_conf: Any
    classes: Any
    scores: Any
    probs: Any
    class_scores: Any


#: A task type's regions of instance ``i`` whose label (already in the spec's labels) is given.
RegionsOf = Callable[[int, str], list[Region]]


@dataclass(frozen=True)
class Instances:
    """One image's N instances: ``classes`` (N,) int, ``conf`` (N,) or None, the model's ``names``
    (class id -> label), the original image size in pixels, and every output by name."""

    outputs: ModelOutputs
    names: Mapping[int, str]
    width: int
    height: int
    classes: npt.NDArray[np.int_]
    conf: npt.NDArray[np.float64] | None

    @classmethod
    def of(cls, outputs: ModelOutputs, names: Mapping[int, str], width: int, height: int, task: str) -> Instances:
        """Check ``classes`` and ``scores``.

        Raises:
            ValueError: no ``classes``, or ``scores`` of another length.
        """
        classes, scores = outputs.get("classes"), outputs.get("scores")
        if classes is None:
            raise ValueError(f"{task} predictions need classes")
        found = as_array(classes).ravel().astype(int)
        conf = None if scores is None else as_array(scores).ravel()
        if conf is not None and len(conf) != len(found):
            raise ValueError(f"{len(conf)} scores for {len(found)} classes")
        return cls(outputs, names, int(width), int(height), found, conf)

    def __len__(self) -> int:
        return len(self.classes)

    def score(self, i: int) -> float | None:
        """Instance ``i``'s confidence, or None without ``scores``."""
        return None if self.conf is None else float(self.conf[i])

    def rows(self, x: Any, what: str, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
        """``x`` as (N, *shape) float64 rows, one per instance.

        Raises:
            ValueError: not one row per instance (``what`` names them in the message).
        """
        a = as_array(x).reshape((-1, *shape))
        if len(a) != len(self):
            raise ValueError(f"{len(a)} {what} for {len(self)} classes")
        return a

    def labelled(self, labels: tuple[str, ...]) -> Iterator[tuple[int, str]]:
        """``(i, label)`` of the instances whose label (``names[classes[i]]``) is one of ``labels``,
        in order."""
        for i, c in enumerate(self.classes):
            label = self.names.get(int(c))
            if label is not None and label in labels:
                yield i, label


def instances_or_none(outputs: ModelOutputs) -> ModelOutputs | None:
    """``outputs``, or None when they hold no instance."""
    return outputs if len(as_array(outputs["classes"]).ravel()) else None


def at_least(outputs: ModelOutputs, conf: float | None) -> ModelOutputs:
    """A copy of ``outputs`` with only the instances scoring ``>= conf``; all of them when ``conf``
    is None or nothing is scored (classify)."""
    scores = outputs.get("scores")
    if conf is None or scores is None or outputs.get("probs") is not None:
        return outputs.copy()
    keep = as_array(scores).ravel() >= conf
    if keep.all():
        return outputs.copy()
    index = np.flatnonzero(keep)
    out: dict[str, Any] = {}
    for key, value in outputs.items():
        if value is None:
            out[key] = None
        elif isinstance(value, list | tuple):
            out[key] = [value[i] for i in index]
        else:  # numpy of its own dtype (float32 masks stay float32)
            out[key] = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)[index]
    return cast(ModelOutputs, out)  # the keys of ``outputs``


def outputs_informativeness(
    outputs: ModelOutputs, labels: tuple[str, ...], names: Mapping[int, str], strategy: Strategy = DEFAULT_STRATEGY
) -> float:
    """An image's informativeness in [0, 1] (``labelloop.task_types.informativeness``): classify's
    ``probs``, else the candidate boxes' ``scores`` (and ``class_scores`` (N, nc) when given) of the
    classes in ``labels``."""
    if outputs.get("probs") is not None:
        probs = as_array(outputs["probs"]).ravel().astype(np.float64)
        return classification_informativeness(
            [float(p) for i, p in enumerate(probs) if names.get(i) in labels], strategy
        )
    cls = as_array(outputs["classes"]).ravel().astype(int)
    scores = outputs.get("scores")
    conf = np.ones(len(cls)) if scores is None else as_array(scores).ravel().astype(np.float64)
    keep = np.array([names.get(int(c)) in labels for c in cls], dtype=bool)
    rows = None
    class_scores = outputs.get("class_scores")
    if class_scores is not None:
        all_rows = as_array(class_scores).astype(np.float64)
        rows = all_rows[keep] if all_rows.ndim == 2 and len(all_rows) == len(cls) else all_rows
    return detection_informativeness(conf[keep], rows, strategy)
