"""Fine-tune a YOLO model with ultralytics, in a child process of its own.

Celery's prefork children are daemonic and may not start DataLoader worker processes, so the
train task runs ``python -m labelloop.training.child <spec.json>`` and waits for it. The child writes
``result.json`` next to the spec; a crash writes nothing, and nothing is published.

The spec is ``labelloop.manifest.TrainingJob.to_dict()`` plus ``run_dir``, read back typed by
``labelloop.training.job.ChildRun``: ``data`` (data.yaml), ``weights`` (.pt path or model YAML),
``epochs``, ``imgsz``, ``batch``, ``device``, ``workers``, ``seed``, ``config_dir``; optional:
``predict_conf`` (the display threshold's prior, ``labelloop.training.threshold``; 0.25) and, in the
job's ``extra``, from ``labelloop.training.recipe.Recipe``: ``nbs``, ``time_s``, ``mosaic``,
``close_mosaic``, ``freeze``, ``val`` and ``checkpoint`` (absent: Ultralytics' defaults, best.pt);
``pseudo`` (``labelloop.dataset.pseudo``: the served version pseudo-labels unlabeled images into the
train split first).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from labelloop.errors import TrainingError
from labelloop.manifest import TrainingJob
from labelloop.training.job import ChildRun, read_job


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
TRAIN_ARGS = ("nbs", "mosaic", "close_mosaic", "val", "optimizer", "lr0", "warmup_epochs")


def cuda_present() -> bool:
    """Whether an NVIDIA GPU is visible, without importing torch (the driver's /proc entries and
    ``CUDA_VISIBLE_DEVICES``); the training process itself picks the device with torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def train(run: ChildRun) -> dict[str, Any]:
    """Train ``run.job`` in this process with ``YOLO(weights).train(...)``; returns the result dict
    (``result.json``, read as ``labelloop.manifest.TrainingResult``).

    Returns:
        ``{"best": path of best.pt, "metrics": {"map50_95", "map50", "precision", "recall"},
        "class_metrics": {class name: {"ap50", "map50_95", "precision", "recall"}},
        "incumbent_metrics", "incumbent_class_metrics": the same of ``spec["incumbent"]`` (None
        without one), "seconds": wall seconds, "device": device used, "show_conf": the display threshold
        (``display_threshold``), ...}``.

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

        pseudo_spec, pseudo_labels = label_unlabeled(job.to_dict(), device)
        job = read_job(pseudo_spec)
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
        tmp.write_text(
            json.dumps({"epoch": epoch, "epochs": int(trainer.epochs), "metrics": metrics, "losses": losses})
        )
        os.replace(tmp, progress_path)

    model.add_callback("on_fit_epoch_end", report_epoch)
    time_s = float(job.extra.get("time_s") or 0)
    if time_s > 0:
        model.add_callback("on_fit_epoch_end", time_cap(time_s))
    extra = {k: job.extra[k] for k in TRAIN_ARGS if job.extra.get(k) is not None}
    if job.extra.get("freeze"):
        extra["freeze"] = int(job.extra["freeze"])
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
    # promotion gate compares like with like.
    metrics, class_metrics = _evaluate_with_classes(str(best), job, device, run_dir / "val-candidate")
    incumbent = job.incumbent
    incumbent_metrics, incumbent_classes = (
        _evaluate_with_classes(incumbent, job, device, run_dir / "val-incumbent") if incumbent else (None, None)
    )
    show_conf = display_threshold(str(best), job, device)
    return {
        "best": str(best),
        "metrics": metrics,
        "class_metrics": class_metrics,
        "incumbent_metrics": incumbent_metrics,
        "incumbent_class_metrics": incumbent_classes,
        "seconds": seconds,
        "val_seconds": time.perf_counter() - t1,
        "device": device,
        "epochs_run": epochs_run,
        "weights": job.weights,
        "base_model_note": note,
        "epochs_planned": job.epochs,
        "checkpoint": "last" if best == last else "best",
        "pseudo_labels": pseudo_labels,
        "show_conf": show_conf,
    }


def display_threshold(weights: str, job: TrainingJob, device: str) -> dict[str, Any]:
    """The candidate's display threshold on the val split (``labelloop.training.threshold.measure``, prior
    ``job.predict_conf``), as the manifest's ``show_conf``; a failure is recorded in its
    ``note`` (the version then shows what ``predict_conf`` lets through), never fails the run."""
    from labelloop.manifest import ShowConf
    from labelloop.training.threshold import measure

    task = job.task or "detect"
    try:
        record = measure(weights, task, Path(job.data), job.imgsz, job.batch, device, job.predict_conf)
    except Exception as exc:  # a convenience on top of a finished training: keep the version
        print(f"labelloop: display threshold not measured: {exc!r}", flush=True)
        record = ShowConf(note=f"not measured: {type(exc).__name__}: {str(exc)[:200]}")
    return record.model_dump(mode="json")


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


def run_training_process(
    spec: dict[str, Any],
    run_dir: Path,
    timeout_s: float,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    poll_s: float = 1.0,
) -> dict[str, Any]:
    """Run ``train(spec)`` in a child Python process and return its result.

    The child's output goes to ``<run_dir>/train.log``. While it runs, ``on_progress`` gets
    ``{"epoch", "epochs", "metrics"}`` after each epoch; ``should_cancel`` is called every
    ``poll_s`` seconds (the project's lock is kept by ``labelloop.jobs.lease.RunLease``). The
    child gets SIGKILL when this process dies, so a killed worker leaves no orphan training.

    Raises:
        TrainingError: the child failed, timed out, was cancelled or wrote no result.
    """
    run_dir = Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps({**spec, "run_dir": str(run_dir)}, indent=2))
    result_path = run_dir / "result.json"
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir / "train.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labelloop.training.child", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(Path(__file__).resolve().parent.parent),
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        last: str | None = None
        try:
            while (code := proc.poll()) is None:
                if time.monotonic() > deadline:
                    raise TrainingError(f"training exceeded {timeout_s:.0f} s and was killed")
                if should_cancel is not None and should_cancel():
                    raise TrainingError("training cancelled")
                progress = run_dir / "progress.json"
                if on_progress is not None and progress.exists():
                    text = progress.read_text()
                    if text != last:
                        last = text
                        on_progress(json.loads(text))
                time.sleep(poll_s)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if code != 0 or not result_path.exists():
        tail = (run_dir / "train.log").read_text(errors="replace")[-2000:]
        raise TrainingError(f"training process exited with {code}; log tail:\n{tail}")
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL it when its parent dies (PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:  # not Linux: the parent's own cleanup still kills it on errors
        pass


def validate(run: ChildRun, weights: str) -> dict[str, Any]:
    """Score ``weights`` (a version's, ``run.validate_only``) on the dataset's val split in this
    process, as ``train`` scores the incumbent: the promotion gate's second look when the
    served version changed during a training (``labelloop.jobs.pipeline``).

    Returns:
        ``{"metrics": evaluate(...)'s fractions, "class_metrics": per class name, "val_seconds",
        "device"}``.
    """
    from labelloop.yolo_env import prepare_ultralytics

    prepare_ultralytics(Path(run.job.config_dir))
    device = pick_device(run.job.device)
    t0 = time.perf_counter()
    metrics, classes = _evaluate_with_classes(weights, run.job, device, run.run_dir / "val-incumbent")
    return {"metrics": metrics, "class_metrics": classes, "val_seconds": time.perf_counter() - t0, "device": device}


def main(argv: list[str]) -> int:
    spec_path = Path(argv[1])
    run = ChildRun.read(spec_path)
    result = validate(run, run.validate_only) if run.validate_only else train(run)
    tmp = spec_path.with_name("result.json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, spec_path.with_name("result.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
