"""The training child's half of self-training: the served version predicts the pool, the rule
chooses (``labelloop.dataset.pseudo.rule``), and the chosen images become a train folder of their own
next to the human one."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from labelloop.dataset.pseudo.job import PseudoJob
from labelloop.dataset.pseudo.rule import ImagePrediction, Region, choose, qualifies
from labelloop.files import write_atomic
from labelloop.manifest import PseudoLabels, TrainingJob

PREDICT_BATCH = 16


def label_unlabeled(training: TrainingJob, device: str) -> tuple[TrainingJob, PseudoLabels]:
    """Predict the pool with the served version and write the chosen pseudo-labels (in the
    training child, before training).

    Args:
        training: the training job; ``training.pseudo`` is ``prepare``'s job (not None).
        device: the Ultralytics device the training uses.

    Returns:
        ``(job, record)``: the job to train (``data`` is the run's data.yaml with the
        pseudo-labelled folder in ``train`` when any image was chosen; ``extra["time_s"]`` less
        the seconds spent here, so the training's wall-clock budget holds), and the manifest
        record.

    Raises:
        ValueError: the training job has no pseudo job.
    """
    t0 = time.perf_counter()
    job = training.pseudo
    if job is None:
        raise ValueError("the training job has no pseudo-labelling job")
    predictions = predict(job, training.imgsz, device)
    chosen = choose(predictions, job.conf, job.low_conf, job.cap)
    images = {task_id: Path(path) for task_id, path in job.images}
    data = write_overlay(Path(job.out_dir), Path(training.data), chosen, images) if chosen else None
    seconds = time.perf_counter() - t0
    record = PseudoLabels(
        applied=bool(chosen),
        skipped=None if chosen else "no unlabeled image qualified",
        version=job.version,
        conf=job.conf,
        low_conf=job.low_conf,
        ratio=job.ratio,
        cap=job.cap,
        pool=job.pool,
        predicted=len(predictions),
        qualified=sum(qualifies(p, job.conf, job.low_conf) for p in predictions),
        images=len(chosen),
        regions=sum(len(c.regions) for c in chosen),
        task_ids=[c.task_id for c in chosen],
        seconds=round(seconds, 3),
    )
    print(f"labelloop: pseudo-labels {record.images} images, {record.regions} regions", flush=True)
    out = replace(training, data=str(data)) if data is not None else training
    if (time_s := float(training.extra.get("time_s") or 0)) > 0:
        out = replace(out, extra={**out.extra, "time_s": max(1.0, time_s - seconds)})
    return out, record


def predict(job: PseudoJob, imgsz: int, device: str) -> list[ImagePrediction]:
    """The served version's regions at ``low_conf`` or more on each pool image, in dataset class
    ids (a region of a class the label config lacks is left out, as ``/predict`` leaves it out)."""
    from ultralytics.models import YOLO

    class_ids = {int(k): v for k, v in job.class_ids.items()}
    model = YOLO(job.weights, task="detect")
    out: list[ImagePrediction] = []
    for start in range(0, len(job.images), PREDICT_BATCH):
        batch = [(t, p) for t, p in job.images[start : start + PREDICT_BATCH] if os.path.exists(p)]
        if not batch:
            continue
        results: Any = model.predict(
            [p for _, p in batch], imgsz=imgsz, conf=job.low_conf, batch=len(batch), device=device, verbose=False
        )
        for (task_id, _), res in zip(batch, results, strict=True):
            boxes = res.boxes
            regions = []
            if boxes is not None:
                for cls, conf, xywhn in zip(boxes.cls.tolist(), boxes.conf.tolist(), boxes.xywhn.tolist(), strict=True):
                    if int(cls) in class_ids:
                        cx, cy, w, h = (float(v) for v in xywhn)
                        regions.append(Region(class_ids[int(cls)], float(conf), (cx, cy, w, h)))
            out.append(ImagePrediction(task_id, tuple(regions)))
    del model  # the training loads its own; free the served version's memory first
    if device not in ("cpu", "mps"):
        import torch

        torch.cuda.empty_cache()
    return out


def write_overlay(
    out_dir: Path, data_yaml: Path, chosen: Sequence[ImagePrediction], images: Mapping[int, Path]
) -> Path:
    """Write the pseudo-labelled images as a train folder of their own and the run's data.yaml.

    Layout (Ultralytics finds a label by replacing the last ``/images/`` of the image path by
    ``/labels/``)::

        <out_dir>/images/train/<task_id>.<ext>   a hard link (or copy) of the cached image
        <out_dir>/labels/train/<task_id>.txt     ``cls cx cy w h`` per region
        <out_dir>/data.yaml                      the dataset's, with train = [its train, this one]

    Returns:
        the run's data.yaml.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "images" / "train").mkdir(parents=True)
    (out_dir / "labels" / "train").mkdir(parents=True)
    for image in chosen:
        src = images[image.task_id]
        dst = out_dir / "images" / "train" / f"{image.task_id}{src.suffix.lower() or '.png'}"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        label = "".join(r.line() + "\n" for r in image.regions)
        write_atomic(out_dir / "labels" / "train" / f"{image.task_id}.txt", label, sync=False)  # rebuilt each run
    content = yaml.safe_load(data_yaml.read_text())
    root = Path(str(content.get("path") or data_yaml.parent))
    human = content["train"] if isinstance(content["train"], list) else [content["train"]]
    content["train"] = [str(root / t) for t in human] + [str(out_dir / "images" / "train")]
    content["val"] = str(root / content["val"]) if isinstance(content["val"], str) else content["val"]
    data = out_dir / "data.yaml"
    write_atomic(data, yaml.safe_dump(content, sort_keys=False))
    return data
