"""The score threshold a version shows annotators: chosen on its validation split to minimise edits.

Every region a pre-annotation or ``/predict`` shows costs the annotator an edit when it is wrong
(delete it), and every object it does not show costs one too (draw it): ``labelloop.training.scoring.edits``.
A fixed ``predict_conf`` (0.25) is right for no model in particular: early versions score their
right boxes low, later ones their wrong boxes high. So after its final validation the training
child predicts the validation images at ``SWEEP_CONF``, sweeps every candidate score as a
threshold (a region is shown when its score is ``>=`` the threshold) and takes the one with the
fewest edits over the split (``optimum``; ties go to the higher threshold: fewer regions shown for
the same cost).

That optimum is noisy on a small split (one object more or less moves it), so it is shrunk toward
a prior, weighted by the number of validation objects ``n`` (``shrink``)::

    t = (n * t_val + k * prior) / (n + k)

``prior`` is ``PRIOR`` (0.5), measured: on the learning benchmark's project from scratch on a CPU
(``bench/thresholds.py``, the 24 versions of a 3-seed run of both orders to 80 annotations), the
threshold with the fewest edits on held-out images was 0.38 to 1.0 for every version (median about
0.6), and on 60 new images per seed that no version saw and no rule was read off, shrinking toward
0.5 cost 78% of the boxes in edits against 84% toward 0.25 (``predict_conf``, Ultralytics' default
predict conf, the prior before), fewer in 20 of the 24 versions, more in 2 (pretrained weights on a
GPU: not measured). ``k = PRIOR_OBJECTS`` (20): the split and the prior weigh equally at 20 objects,
where one object is 5% of the edits and still moves the optimum; at 8 objects (a first version)
the prior keeps 71%, at 100 objects the split decides 83%. ``k`` is a judgement, not a measurement:
it should be small enough that a project with a few hundred annotations is ruled by its own split.

Matching is ``labelloop.training.scoring``'s (greedy, IoU 0.5 per label) on axis-aligned pixel boxes:
detect's boxes; segment's and pose's boxes (the box around a mask; pose's rectangle); obb's box
around the rotated one (lenient: a rotated box at the wrong angle can still match). Classify
shows its top-1 choice and has no threshold.

The pure part (``sweep``, ``optimum``, ``shrink``, ``choose``) takes ``labelloop.training.scoring.Det``;
``measure`` is the training child's I/O around it (Ultralytics predict, the dataset's label files).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from labelloop.manifest import ShowConf
from labelloop.training.scoring import Det, edits, match

PRIOR = 0.5  # the threshold a small split's optimum is shrunk toward (module docstring)
PRIOR_OBJECTS = 20  # k: validation objects at which the split's optimum and the prior weigh equally
SWEEP_CONF = 0.01  # the lowest score considered (Ultralytics' predict conf for the sweep)
NOTHING = 1.0  # the threshold that shows nothing (a region scoring exactly 1.0 aside)
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def sweep(preds: Sequence[Det], truths: Sequence[Det]) -> list[tuple[float, int]]:
    """Edits at every threshold that changes what is shown, from ``NOTHING`` down to the lowest score.

    Greedy matching (``labelloop.training.scoring.match``) takes predictions in descending score order and
    each one's match depends only on those before it, so the predictions at or above a threshold
    match exactly as the prefix of one full matching: one matching gives the whole curve, equal
    to ``scoring.edits`` at each threshold (one matching instead of one per threshold).

    Returns:
        ``[(threshold, edits)]``, thresholds strictly descending: ``(NOTHING, len(truths))`` first
        (nothing shown, every object drawn; left out when a prediction scores 1.0), then one
        entry per distinct score ``s``, the edits when the regions scoring ``>= s`` are shown.
    """
    matched = match(preds, truths)
    curve: list[tuple[float, int]] = []
    if not matched or matched[0][0].score < NOTHING:
        curve.append((NOTHING, len(truths)))
    tp = 0
    for i, (pred, hit) in enumerate(matched):
        tp += hit
        if i + 1 < len(matched) and matched[i + 1][0].score == pred.score:
            continue  # all regions of one score are shown together
        shown = i + 1
        curve.append((pred.score, (len(truths) - tp) + (shown - tp)))
    return curve


def optimum(preds: Sequence[Det], truths: Sequence[Det]) -> tuple[float, int]:
    """The threshold with the fewest edits on ``preds`` and ``truths``, and those edits; among
    equal edits the highest threshold (``NOTHING`` when showing nothing is as good as any)."""
    curve = sweep(preds, truths)
    best = min(e for _, e in curve)
    return next((t, e) for t, e in curve if e == best)


def shrink(raw: float, prior: float, objects: int, prior_objects: int = PRIOR_OBJECTS) -> float:
    """``(objects * raw + prior_objects * prior) / (objects + prior_objects)``; ``prior`` when
    there is no object."""
    if objects <= 0:
        return prior
    return (objects * raw + prior_objects * prior) / (objects + prior_objects)


def shown(preds: Sequence[Det], threshold: float) -> list[Det]:
    """The predictions an annotator sees at ``threshold``: those scoring ``>= threshold``."""
    return [p for p in preds if p.score >= threshold]


def choose(
    preds: Sequence[Det],
    truths: Sequence[Det],
    images: int,
    prior: float,
    prior_objects: int = PRIOR_OBJECTS,
    sweep_conf: float = SWEEP_CONF,
) -> ShowConf:
    """A version's display threshold from its validation predictions (pure).

    Args:
        preds: the version's predictions on the validation images at ``sweep_conf`` (``Det.image``
            the image's index, ``label`` its class, ``box`` pixels xyxy).
        truths: the validation objects, same keys.
        images: validation images (those without objects included), for edits per image.
        prior: the threshold shrunk toward (``PRIOR``).
        prior_objects: ``k`` (see the module docstring).
        sweep_conf: the conf ``preds`` were predicted at (recorded only).

    Returns:
        ``ShowConf`` with ``value`` rounded to 4 decimals, ``raw`` the split's optimum, the object
        and image counts and the edits per image at ``value``, ``raw`` and ``prior``; with no
        validation object ``value`` is the prior (``note`` says so).
    """
    raw, _ = optimum(preds, truths)
    value = round(shrink(raw, prior, len(truths), prior_objects), 4)

    def per_image(threshold: float) -> float:
        return round(edits(shown(preds, threshold), truths)["edits"] / max(1, images), 4)

    note = "shrunk toward the prior" if truths else "no validation object: the prior"
    return ShowConf(
        value=value,
        note=note,
        raw=round(raw, 4),
        prior=prior,
        prior_objects=prior_objects,
        objects=len(truths),
        images=images,
        sweep_conf=sweep_conf,
        edits_per_image=per_image(value),
        edits_per_image_at_raw=per_image(raw),
        edits_per_image_at_prior=per_image(prior),
    )


def not_applicable(task: str) -> ShowConf:
    """The record of a task type without a threshold (classify: its top-1 choice is always shown)."""
    return ShowConf(note=f"not applicable: {task} shows its top-1 choice")


def truth_boxes(line: str, task: str, width: int, height: int) -> tuple[str, tuple[float, float, float, float]] | None:
    """``(class id, pixel xyxy)`` of one YOLO label line (Ultralytics dataset formats: detect and
    pose ``cls cx cy w h ...``; obb and segment ``cls x1 y1 x2 y2 ...``, the box around the
    points); None for an empty or malformed line."""
    parts = line.split()
    try:
        cls, nums = parts[0], [float(v) for v in parts[1:]]
    except (IndexError, ValueError):
        return None
    if task in ("detect", "pose"):
        if len(nums) < 4:
            return None
        cx, cy, w, h = nums[:4]
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    else:
        if len(nums) < 4 or len(nums) % 2:
            return None
        xs, ys = nums[0::2], nums[1::2]
        x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
    return cls, (x1 * width, y1 * height, x2 * width, y2 * height)


def result_dets(res: Any, image: int) -> list[Det]:
    """Detections of one Ultralytics ``Results``: ``res.obb`` (the box around each rotated one)
    when set, else ``res.boxes``; label = the class id as a string."""
    obb = getattr(res, "obb", None)
    if obb is not None:
        corners = obb.xyxyxyxy.cpu().numpy().reshape(-1, 4, 2)
        boxes = [(c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()) for c in corners]
        cls, conf = obb.cls.cpu().numpy(), obb.conf.cpu().numpy()
    elif getattr(res, "boxes", None) is not None:
        boxes = [tuple(b) for b in res.boxes.xyxy.cpu().numpy()]
        cls, conf = res.boxes.cls.cpu().numpy(), res.boxes.conf.cpu().numpy()
    else:
        return []
    return [
        Det(image, str(int(c)), float(s), (float(b[0]), float(b[1]), float(b[2]), float(b[3])))
        for b, c, s in zip(boxes, cls, conf, strict=True)
    ]


def val_images(data_yaml: Path) -> list[Path]:
    """The validation images of a ``data.yaml`` (its ``path`` joined with ``val``, a folder), sorted."""
    import yaml

    data = yaml.safe_load(data_yaml.read_text()) or {}
    root = Path(str(data.get("path") or data_yaml.parent))
    if not root.is_absolute():
        root = data_yaml.parent / root
    folder = root / str(data.get("val", "images/val"))
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def label_path(image: Path) -> Path:
    """Ultralytics' label file of an image: the last ``images`` folder replaced by ``labels``, ``.txt``."""
    parts = list(image.parts)
    i = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:i], "labels", *parts[i + 1 : -1], image.stem + ".txt")


def measure(weights: str, task: str, data_yaml: Path, imgsz: int, batch: int, device: str, prior: float) -> ShowConf:
    """The training child's step: predict the validation images with ``weights`` at ``SWEEP_CONF``
    and ``choose`` the display threshold (``not_applicable`` for classify).

    Raises:
        whatever Ultralytics raises on predict (the caller records the failure instead).
    """
    if task not in ("detect", "obb", "segment", "pose"):
        return not_applicable(task)
    from ultralytics.models import YOLO

    images = val_images(data_yaml)
    model = YOLO(weights, task=task)
    preds: list[Det] = []
    truths: list[Det] = []
    for start in range(0, len(images), max(1, batch)):
        chunk = images[start : start + max(1, batch)]
        results: Iterable[Any] = model.predict(
            [str(p) for p in chunk], imgsz=imgsz, conf=SWEEP_CONF, device=device, verbose=False, batch=len(chunk)
        )
        for offset, (path, res) in enumerate(zip(chunk, results, strict=True)):
            key = start + offset
            preds.extend(result_dets(res, key))
            height, width = (int(v) for v in res.orig_shape[:2])
            labels = label_path(path)
            lines = labels.read_text().splitlines() if labels.exists() else []
            for line in lines:
                if (box := truth_boxes(line, task, width, height)) is not None:
                    truths.append(Det(key, box[0], 1.0, box[1]))
    return choose(preds, truths, len(images), prior)
