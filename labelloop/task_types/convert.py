"""Label Studio regions <-> Ultralytics YOLO labels and predictions, for every task type (pure functions).

The functions here bind the spec's task type once (``labelloop.task_types.task_type(spec)``) and
call it; geometry lives in ``labelloop.task_types.geometry``, brush RLE in ``.brush``, region
building in ``.regions``, model outputs in ``.outputs``.

Label Studio side (https://labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks,
https://labelstud.io/guide/predictions): coordinates are percent of the image
(``original_width`` x ``original_height``):

- rectangle ``value``: ``x, y`` (top-left corner), ``width, height`` and ``rotation``, degrees
  clockwise around the top-left corner (image y axis points down). ``width`` is percent of the
  image width and ``height`` percent of the image height whatever the rotation.
- polygon ``value.points``: ``[[x, y], ...]``.
- keypoint ``value``: ``x, y`` (the point) and ``width`` (the drawn size).
- brush ``value``: ``format: "rle"`` and ``rle``, label-studio-sdk's RLE
  (``label_studio_sdk.converter.brush``) of the RGBA bytes of an
  ``original_height x original_width`` image; the alpha channel is the mask (any alpha > 0,
  as the SDK's own COCO export reads it).
- choices ``value.choices``: ``[name]``.

YOLO side (https://docs.ultralytics.com/datasets/), one line per object, normalised to [0, 1]:
detect ``cls cx cy w h``; obb ``cls x1 y1 x2 y2 x3 y3 x4 y4``; segment ``cls x1 y1 x2 y2 ...``;
pose ``cls cx cy w h px1 py1 v1 ...`` (``kpt_shape [K, 3]``, ``v=2`` visible, a missing
keypoint is ``0 0 0``).

Rotation conventions agree: a Label Studio rectangle with ``rotation`` r (degrees) is the
Ultralytics ``xywhr`` box with ``r`` in radians and the same width and height, both rotating
clockwise on screen. Ultralytics' ``xyxyxyxy`` corners come in a different order (the local
bottom-right first); ``corners_to_rectangle`` accepts any cyclic order and picks the corner
that gives the smallest rotation, so nearly axis-aligned boxes get a rotation near 0.

Pixel masks become polygons through pixel centres: mask pixel ``(i, j)`` is the point
``((j + 0.5) / W, (i + 0.5) / H)``, and ``polygons_to_mask`` fills polygons back onto the
same pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from labelloop.ls_json import Region
from labelloop.task_types import TASK_TYPES, task_type
from labelloop.task_types.brush import brush_to_mask, mask_to_brush
from labelloop.task_types.classify import Classify
from labelloop.task_types.geometry import (
    MIN_BRUSH_AREA_PX,
    MIN_POLYGON_AREA_PX,
    PREDICTION_POLYGON_EPSILON_PX,
    clip_polygon,
    corners_to_rectangle,
    mask_to_polygons,
    polygon_area,
    polygons_to_mask,
    rectangle_corners,
)
from labelloop.task_types.informativeness import DEFAULT_STRATEGY, NO_DETECTION, Strategy, prediction_score
from labelloop.task_types.outputs import ModelOutputs, at_least, outputs_informativeness
from labelloop.task_types.pose import MIN_KEYPOINT_CONF
from labelloop.task_types.regions import KEYPOINT_WIDTH, region_id
from labelloop.task_types.spec import TrainSpec

__all__ = [
    "KEYPOINT_WIDTH",
    "MIN_BRUSH_AREA_PX",
    "MIN_KEYPOINT_CONF",
    "MIN_POLYGON_AREA_PX",
    "PREDICTION_POLYGON_EPSILON_PX",
    "annotation_to_class",
    "annotation_to_yolo",
    "brush_to_mask",
    "clip_polygon",
    "corners_to_rectangle",
    "has_rotation",
    "mask_to_brush",
    "mask_to_polygons",
    "polygon_area",
    "polygons_to_mask",
    "predictions_to_regions",
    "rectangle_corners",
    "region_id",
    "results_to_regions",
    "yolo_to_regions",
]

_LINE_TASKS = tuple(name for name, kind in TASK_TYPES.items() if kind.label_files)


def annotation_to_yolo(
    result: Sequence[Region], spec: TrainSpec, class_ids: Mapping[str, int], width: int, height: int
) -> tuple[list[str], list[str]]:
    """Turn one annotation's ``result`` into YOLO label lines for ``spec.task``.

    Only regions whose ``from_name`` is one of ``spec.control_tags`` count. Per task:

    - ``detect``: rectangles -> ``cls cx cy w h`` (a rotated rectangle becomes the axis-aligned
      box around it), clamped to the image.
    - ``obb``: rectangles -> ``cls x1 y1 .. x4 y4``, the corners top-left, top-right,
      bottom-right, bottom-left of the unrotated box (clockwise on screen), each clamped to
      [0, 1].
    - ``segment``: polygons -> one ``cls x1 y1 ...`` line, clipped to the image; brush masks ->
      one line per connected part (external contours, ``cv2.findContours``), parts under
      ``MIN_BRUSH_AREA_PX`` pixels dropped.
    - ``pose``: rectangles of ``spec.from_name`` are instances; each keypoint of
      ``spec.keypoint_from_name`` belongs to the rectangle its ``parentID`` names, else to the
      smallest rectangle containing it. Line ``cls cx cy w h`` then ``x y 2`` per keypoint in
      ``spec.keypoint_labels`` order, ``0 0 0`` for a missing one.

    Args:
        result: the annotation's ``result`` list (Label Studio JSON export).
        spec: what is trained; ``spec.task`` must be detect, obb, segment or pose.
        class_ids: label -> class id (the dataset's stable ids, not the config order).
        width, height: the (EXIF-corrected) image size in pixels. Normalised coordinates come
            from the percents; the size only sets the pixel thresholds (boxes narrower than
            ``MIN_BOX_PX``, polygons under ``MIN_POLYGON_AREA_PX``), and obb angles.

    Returns:
        ``(lines, dropped)``: label lines (coordinates with 6 decimals) and a human-readable
        reason per dropped region: no label, label without class id, malformed value,
        degenerate after clamping, keypoint without a box.

    Raises:
        ValueError: ``spec.task`` is not one of detect, obb, segment, pose.
    """
    if spec.task not in _LINE_TASKS:
        raise ValueError(f"annotation_to_yolo converts {', '.join(_LINE_TASKS)}, not {spec.task}")
    if spec.task == "pose" and (not spec.keypoint_from_name or not spec.keypoint_labels):
        raise ValueError("a pose TrainSpec needs keypoint_from_name and keypoint_labels")
    return task_type(spec).annotation_to_lines(result, class_ids, width, height)


def annotation_to_class(
    result: Sequence[Region], spec: TrainSpec, class_ids: Mapping[str, int]
) -> tuple[str | None, list[str]]:
    """The class label of one classify annotation (``labelloop.task_types.classify.Classify.annotation_to_class``
    bound to ``spec``): ``(label, reasons)``, or None with the reason the task is skipped."""
    return Classify(spec).annotation_to_class(result, class_ids)


def has_rotation(result: Sequence[Region], spec: TrainSpec) -> bool:
    """Whether any region of ``spec.from_name`` has a ``rotation`` that is not a multiple of 360 degrees."""
    for region in result:
        if region.get("from_name") != spec.from_name:
            continue
        value = region.get("value")
        if not isinstance(value, Mapping):
            continue
        try:
            r = float(value.get("rotation") or 0.0) % 360
        except (TypeError, ValueError):
            continue
        if min(r, 360 - r) > 1e-6:
            return True
    return False


def yolo_to_regions(line: str, spec: TrainSpec, names: Mapping[int, str], width: int, height: int) -> list[Region]:
    """Convert one YOLO label line back to Label Studio regions (the inverse of ``annotation_to_yolo``).

    Args:
        line: ``cls ...`` in the format of ``spec.task`` (detect, obb, segment, pose).
        spec: what the line was made for; segment lines become ``polygonlabels`` or, with
            ``spec.region_type == "brushlabels"``, an RLE ``brushlabels`` region.
        names: class id -> label.
        width, height: image size in pixels.

    Returns:
        Regions without ``score``: one rectangle (obb: with the rotation closest to 0), one
        polygon or brush region, or for pose the box and a ``keypointlabels`` region (``parentID``
        = the box id) per visible keypoint. Empty when the label is not in ``spec.labels``.

    Raises:
        ValueError: the line does not parse for ``spec.task``, or its class id is not in ``names``.
    """
    return task_type(spec).line_regions(line, names, width, height)


def predictions_to_regions(
    spec: TrainSpec,
    names: Mapping[int, str],
    width: int,
    height: int,
    *,
    boxes_xyxy: Any = None,
    obb_xyxyxyxy: Any = None,
    masks: Any = None,
    polygons_xyn: Sequence[Any] | None = None,
    keypoints_xy: Any = None,
    keypoints_conf: Any = None,
    classes: Any = None,
    scores: Any = None,
    probs: Any = None,
) -> list[Region]:
    """Model outputs for one image as Label Studio prediction regions (https://labelstud.io/guide/predictions).

    Arrays may be lists, numpy arrays or torch tensors (e.g. ``res.boxes.xyxy``). Every region
    has ``id`` (10 hex characters), ``from_name``, ``to_name``, ``type``, ``original_width``,
    ``original_height``, ``image_rotation`` 0, ``value`` and, when ``scores`` is given (or for
    classify and keypoints with ``keypoints_conf``), ``score``. Instances whose label
    (``names[cls]``) is not in ``spec.labels`` are skipped.

    Per ``spec.task``:

    - detect / obb: ``rectanglelabels``. With ``obb_xyxyxyxy`` (N, 4, 2) pixel corners, rotated
      (Label Studio convention, rotation closest to 0, not clamped); else ``boxes_xyxy`` (N, 4)
      pixels, clamped to the image, rotation 0. Boxes under ``MIN_BOX_PX`` are skipped.
    - segment with ``spec.region_type == "polygonlabels"``: one ``polygonlabels`` region per
      polygon: ``polygons_xyn[i]`` ((P, 2) normalised, clipped to the image) when given, else
      every connected part of ``masks[i]`` (traced, simplified to
      ``PREDICTION_POLYGON_EPSILON_PX``, specks under ``MIN_BRUSH_AREA_PX`` dropped).
    - segment with ``brushlabels``: one ``brushlabels`` region (``format: "rle"``, SDK
      ``mask2rle`` at the original size) from ``masks[i]``, else from ``polygons_xyn[i]`` filled.
      ``masks`` is (N, h, w), bool or probabilities (> 0.5); a mask of another size is resized to
      ``height x width``, and one of another aspect ratio is taken to be letterboxed (centred
      padding, as Ultralytics' ``ops.scale_masks``) and cropped first.
    - pose: a ``rectanglelabels`` box per instance from ``boxes_xyxy`` (``from_name =
      spec.from_name``) and a ``keypointlabels`` region (``from_name = spec.keypoint_from_name``,
      ``width`` ``KEYPOINT_WIDTH``, ``parentID`` = the box id) for each of ``keypoints_xy``
      (N, K, 2 pixels) whose ``keypoints_conf`` (N, K) is >= ``MIN_KEYPOINT_CONF``; without
      ``keypoints_conf`` every keypoint except ``(0, 0)`` (YOLO's "missing").
    - classify: one ``choices`` region with the most probable label of ``probs`` (C,) that is in
      ``spec.labels``; score = its probability.

    Args:
        spec: the trained spec (``spec.task`` picks the format above).
        names: class id -> label, the model's names.
        width, height: the original image size in pixels.
        classes: (N,) class ids; scores: (N,) confidences.

    Raises:
        ValueError: the inputs ``spec.task`` needs are missing or their lengths disagree.
    """
    outputs = ModelOutputs(
        boxes_xyxy=boxes_xyxy,
        obb_xyxyxyxy=obb_xyxyxyxy,
        masks=masks,
        polygons_xyn=polygons_xyn,
        keypoints_xy=keypoints_xy,
        keypoints_conf=keypoints_conf,
        classes=classes,
        scores=scores,
        probs=probs,
    )
    return task_type(spec).predictions(names, int(width), int(height), outputs)


def results_to_regions(
    res: Any,
    spec: TrainSpec,
    names: Mapping[int, str],
    strategy: Strategy = DEFAULT_STRATEGY,
    *,
    show_conf: float | None = None,
    score_conf: float | None = None,
) -> tuple[list[Region], float]:
    """Label Studio regions from one Ultralytics ``Results`` (duck-typed; ultralytics is not imported).

    Reads ``res.orig_shape`` and, by ``spec.task``: ``res.probs.data`` (classify);
    ``res.obb.xyxyxyxy/cls/conf`` when ``res.obb`` is set, else ``res.boxes.xyxy/cls/conf``;
    ``res.masks.data`` (model resolution, letterboxed; see ``predictions_to_regions``);
    ``res.keypoints.xy/conf``; ``res.class_scores`` ((N, nc) every class's score per box, set by
    ``labelloop.serving.inference.class_scores_predictor``) when present. A detect spec given obb
    results produces rotated rectangles.

    Args:
        show_conf: regions scoring below it are left out (the version's display threshold,
            ``labelloop.training.threshold``); None: every instance in ``res``.
        score_conf: the candidate boxes of the score are those scoring at least this
            (``predict_conf``, when ``res`` was predicted lower to show regions below it); None:
            every instance. Neither applies to classify.

    Returns:
        ``(regions, score)``: regions as ``predictions_to_regions`` makes them, and the task's
        prediction score ``1 - informativeness`` under ``strategy`` over the candidate boxes whose
        class is in the label config (``labelloop.task_types.informativeness``: low = label it first; an
        image without a candidate box scores 0.0 as the most uncertain).
    """
    height, width = (int(v) for v in res.orig_shape[:2])
    kind = task_type(spec)
    outputs = kind.outputs(res)
    if outputs is None:
        return [], prediction_score(NO_DETECTION)
    candidates = at_least(outputs, score_conf)
    shown = at_least(outputs, show_conf)
    shown.pop("class_scores", None)
    regions = kind.predictions(names, width, height, shown)
    return regions, prediction_score(outputs_informativeness(candidates, spec.labels, names, strategy))
