"""Fine-tune a YOLO model with ultralytics: the training child process's side.

Celery's prefork children are daemonic and may not start DataLoader worker processes, so the
train task runs ``python -m labelloop.training.child <spec.json>`` and waits for it
(``labelloop.training.process``). The child writes ``result.json`` next to the spec
(``labelloop.manifest.TrainingResult``, or ``ValidationScore`` for a ``validate_only`` run) and
``progress.json`` after each epoch (``labelloop.training.process.EpochProgress``); a crash writes
no result, and nothing is published.

The spec is ``labelloop.manifest.TrainingJob.to_dict()`` plus ``run_dir``, read back typed by
``labelloop.training.job.ChildRun``: ``data`` (data.yaml), ``weights`` (.pt path or model YAML),
``epochs``, ``imgsz``, ``batch``, ``device``, ``workers``, ``seed``, ``config_dir``; optional:
``show_prior`` (the display threshold's prior, ``labelloop.training.threshold.PRIOR``; 0.5) and, in the
job's ``extra``, from ``labelloop.training.recipe.Recipe``: ``nbs``, ``time_s``, ``mosaic``,
``close_mosaic``, ``freeze``, ``val`` and ``checkpoint`` (absent: Ultralytics' defaults, best.pt);
``pseudo`` (``labelloop.dataset.pseudo``: the served version pseudo-labels unlabeled images into the
train split first).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from labelloop.errors import TrainingError
from labelloop.manifest import ShowConf, TrainingJob, TrainingResult, ValidationScore
from labelloop.training.job import ChildRun, EpochProgress


def pick_device(device: str) -> str:
    """'' -> '0' when CUDA is available, else 'cpu'; anything else is passed to ultralytics as is.

    ``torch.cuda.is_available()`` initialises the CUDA driver in the calling process: call it only
    in a process that forks no one afterwards (the training child, a Celery pool child), never in
    a worker's main process (``tests/workers/test_cuda_fork.py``); there use ``cuda_present``.
    """
    if device:
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


# Optional spec keys passed to ``YOLO.train`` as they are (the recipe's, and a few for experiments).
# Ultralytics' augmentation arguments a job may set (``bench.recipe --augment`` compares them).
AUGMENT_ARGS = ("flipud", "fliplr", "degrees", "translate", "scale", "mixup", "hsv_h", "hsv_s", "hsv_v", "copy_paste")
TRAIN_ARGS = ("nbs", "mosaic", "close_mosaic", "val", "optimizer", "lr0", "warmup_epochs", *AUGMENT_ARGS)


def cuda_present() -> bool:
    """Whether an NVIDIA GPU is visible, without importing torch (the driver's /proc entries and
    ``CUDA_VISIBLE_DEVICES``); the training process itself picks the device with torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def train(run: ChildRun) -> TrainingResult:
    """Train ``run.job`` in this process with ``YOLO(weights).train(...)``.

    Returns:
        ``best``: path of best.pt (last.pt with ``checkpoint: last``); ``metrics``:
        ``{"map50_95", "map50", "precision", "recall"}`` (``evaluate``); ``class_metrics``: class
        name -> ``{"ap50", "map50_95", "precision", "recall"}``; ``incumbent_metrics``,
        ``incumbent_class_metrics``: the same of ``job.incumbent`` (None without one);
        ``show_conf``: the display threshold (``display_threshold``); seconds, device, epochs.

    Raises:
        TrainingError: Ultralytics returned no trainer or wrote no weights.

    Long because it is the training process's main: load, register the callbacks, train, validate,
    write the result.
    """
    from labelloop.yolo_env import prepare_ultralytics

    job, run_dir = run.job, run.run_dir
    prepare_ultralytics(Path(job.config_dir))
    from ultralytics.models import YOLO

    device = pick_device(job.device)
    pseudo_labels = None
    if job.pseudo:
        from labelloop.dataset.pseudo import label_unlabeled

        job, pseudo_labels = label_unlabeled(job, device)
    t0 = time.perf_counter()
    note = ""
    try:
        model = YOLO(job.weights, task=job.task or None)
    except Exception as exc:  # Ultralytics' download raises several kinds (ConnectionError, OSError, ...)
        fallback = job.fallback_weights
        if not fallback:
            raise
        note = f"{Path(job.weights).name} could not be loaded or downloaded ({exc}): trained {fallback}"
        print(f"labelloop: {note}", flush=True)
        job = replace(job, weights=fallback)
        model = YOLO(fallback, task=job.task or None)
    progress_path = run_dir / "progress.json"

    def report_epoch(trainer: Any) -> None:
        # Read by the parent while it waits: epoch, total epochs and the latest validation metrics.
        metrics = {k: float(v) for k, v in (trainer.metrics or {}).items() if isinstance(v, int | float)}
        # The epoch's mean training losses, e.g. {"train/box_loss": 1.9, "train/cls_loss": 3.1, ...}.
        items = trainer.label_loss_items(trainer.tloss, prefix="train") if trainer.tloss is not None else {}
        losses = {k: float(v) for k, v in items.items()} if isinstance(items, dict) else {}
        tmp = progress_path.with_suffix(".tmp")
        epoch = min(int(trainer.epoch) + 1, int(trainer.epochs))
        report = EpochProgress(epoch=epoch, epochs=int(trainer.epochs), metrics=metrics, losses=losses)
        tmp.write_text(json.dumps(report))
        os.replace(tmp, progress_path)

    model.add_callback("on_fit_epoch_end", report_epoch)
    time_s = float(job.extra.get("time_s") or 0)
    if time_s > 0:
        model.add_callback("on_fit_epoch_end", time_cap(time_s))
    extra: dict[str, object] = {k: v for k, v in job.extra.items() if k in TRAIN_ARGS and v is not None}
    if freeze := job.extra.get("freeze"):
        extra["freeze"] = int(freeze)
    model.train(
        data=job.data,
        epochs=job.epochs,
        imgsz=job.imgsz,
        batch=job.batch,
        device=device,
        workers=job.workers,
        seed=job.seed,
        project=str(run_dir),
        name="train",
        exist_ok=True,
        amp=device != "cpu",
        plots=False,
        verbose=False,
        pretrained=job.weights.endswith(".pt"),
        **extra,
    )
    seconds = time.perf_counter() - t0
    trainer = model.trainer
    if trainer is None:
        raise TrainingError("ultralytics returned no trainer")
    last = Path(trainer.last)
    preferred = [last, Path(trainer.best)] if job.extra.get("checkpoint") == "last" else [Path(trainer.best), last]
    best = next((p for p in preferred if p.exists()), None)
    if best is None:
        raise TrainingError(f"training wrote no weights under {run_dir}")
    epochs_run = int(trainer.epoch) + 1
    t1 = time.perf_counter()
    # Candidate and incumbent are scored by the same validation call on the same split, so the
    # promotion gate compares like with like; each at the imgsz it is served at.
    metrics, class_metrics = _evaluate_with_classes(str(best), job, device, run_dir / "val-candidate")
    incumbent = job.incumbent
    as_served = replace(job, imgsz=job.incumbent_imgsz or job.imgsz)
    incumbent_metrics, incumbent_classes = (
        _evaluate_with_classes(incumbent, as_served, device, run_dir / "val-incumbent") if incumbent else (None, None)
    )
    show_conf = display_threshold(str(best), job, device)
    return TrainingResult(
        best=str(best),
        metrics=metrics,
        class_metrics=class_metrics,
        incumbent_metrics=incumbent_metrics,
        incumbent_class_metrics=incumbent_classes,
        seconds=seconds,
        val_seconds=time.perf_counter() - t1,
        device=device,
        epochs_run=epochs_run,
        weights=job.weights,
        base_model_note=note,
        epochs_planned=job.epochs,
        checkpoint="last" if best == last else "best",
        pseudo_labels=pseudo_labels,
        show_conf=show_conf,
    )


def display_threshold(weights: str, job: TrainingJob, device: str) -> ShowConf:
    """The candidate's display threshold on the val split (``labelloop.training.threshold.measure``, prior
    ``job.show_prior``), as the manifest's ``show_conf``; a failure is recorded in its
    ``note`` (the version then shows what ``predict_conf`` lets through), never fails the run."""
    from labelloop.training.threshold import measure

    task = job.task or "detect"
    try:
        record = measure(weights, task, Path(job.data), job.imgsz, job.batch, device, job.show_prior)
    except Exception as exc:  # a convenience on top of a finished training: keep the version
        print(f"labelloop: display threshold not measured: {exc!r}", flush=True)
        record = ShowConf(note=f"not measured: {type(exc).__name__}: {str(exc)[:200]}")
    return record


def time_cap(budget_s: float) -> Callable[[Any], None]:
    """An ``on_fit_epoch_end`` callback that keeps a training within ``budget_s`` wall seconds.

    After each epoch it estimates the epoch time from the epochs so far and sets the trainer's
    epoch count to what fits in the budget (at least one more epoch, so the run ends on
    Ultralytics' final-epoch validation and save), never above the planned count, then
    re-plans the learning-rate schedule and ``close_mosaic`` for it, as Ultralytics does for
    its own ``time`` argument (which, unlike this cap, also stretches a run to fill the time).
    """
    start = time.monotonic()
    planned: list[int] = []

    def cap(trainer: Any) -> None:
        if not planned:
            planned.append(int(trainer.epochs))
        done = int(trainer.epoch) + 1 - int(getattr(trainer, "start_epoch", 0))
        elapsed = time.monotonic() - start  # model and dataloader setup included
        per_epoch = (time.time() - float(getattr(trainer, "train_time_start", 0) or time.time())) / max(1, done)
        per_epoch = per_epoch if per_epoch > 0 else elapsed / max(1, done)
        fits = int(trainer.epoch) + 1 + max(1, math.floor((budget_s - elapsed) / per_epoch))
        epochs = min(planned[0], fits)
        if epochs == int(trainer.epochs):
            return
        trainer.epochs = trainer.args.epochs = epochs
        if trainer.args.close_mosaic:
            trainer.args.close_mosaic = max(1, round(0.1 * epochs))
        trainer._setup_scheduler()
        trainer.scheduler.last_epoch = trainer.epoch

    return cap


def evaluate(weights: str, job: TrainingJob, device: str, save_dir: Path) -> dict[str, float]:
    """``YOLO(weights).val(...)`` on the val split of ``job.data`` (imgsz, batch, workers and task
    of ``job``; ``detect`` when it names none).

    Returns:
        fractions in [0, 1]: ``{"map50_95", "map50", "precision", "recall"}`` of the task's own
        regions (boxes for detect, rotated boxes for obb, masks for segment, keypoints for
        pose; segment and pose add ``box_map50_95``), or ``{"accuracy_top1",
        "accuracy_top5"}`` for classify.
    """
    return _evaluate_with_classes(weights, job, device, save_dir)[0]


def _evaluate_with_classes(
    weights: str, job: TrainingJob, device: str, save_dir: Path
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """``evaluate``'s metrics and, from the same validation, the per-class ones
    (``TaskType.class_metrics``: class name -> ``{"ap50", "map50_95", "precision", "recall"}``)."""
    from ultralytics.models import YOLO

    from labelloop.task_types import task_class

    task = job.task or "detect"
    result = YOLO(weights, task=task).val(
        data=job.data,
        imgsz=job.imgsz,
        batch=job.batch,
        device=device,
        workers=job.workers,
        project=str(save_dir.parent),
        name=save_dir.name,
        exist_ok=True,
        plots=False,
        verbose=False,
    )
    kind = task_class(task)
    return kind.val_metrics(result), kind.class_metrics(result)


def validate(run: ChildRun, weights: str) -> ValidationScore:
    """Score ``weights`` (a version's, ``run.validate_only``) on the dataset's val split in this
    process, as ``train`` scores the incumbent: the promotion gate's second look when the
    served version changed during a training (``labelloop.jobs.pipeline``).

    Returns:
        ``metrics``: ``evaluate``'s fractions; ``class_metrics``: per class name; seconds and device.
    """
    from labelloop.yolo_env import prepare_ultralytics

    prepare_ultralytics(Path(run.job.config_dir))
    device = pick_device(run.job.device)
    t0 = time.perf_counter()
    metrics, classes = _evaluate_with_classes(weights, run.job, device, run.run_dir / "val-incumbent")
    return ValidationScore(metrics=metrics, class_metrics=classes, val_seconds=time.perf_counter() - t0, device=device)


def main(argv: list[str]) -> int:
    spec_path = Path(argv[1])
    run = ChildRun.read(spec_path)
    result = validate(run, run.validate_only) if run.validate_only else train(run)
    tmp = spec_path.with_name("result.json.tmp")
    tmp.write_text(json.dumps(result.model_dump(mode="json"), indent=2))
    os.replace(tmp, spec_path.with_name("result.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
