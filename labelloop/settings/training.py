"""Training settings: when a project trains (``LABELLOOP_TRAIN_EVERY_N``, the quiet period), the recipe
(base model, epochs, imgsz, augmentation...), one run's time limit, lock and redeliveries, and the
promotion gate."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TrainingFields(BaseModel):
    """The training trigger, the recipe, run limits and locks, the promotion gate.

    A field group of ``Settings``, never built alone; unset recipe fields are chosen from the data
    (``labelloop.training``).
    """

    train_every_n: int = Field(10, ge=1, description="Train after this many new annotation events per project.")
    base_model: str = Field(
        "auto",
        description="Weights a project's first version starts from: an Ultralytics asset name (yolo26n.pt, "
        "yolo11s.pt, ...), a local .pt, a model YAML, or `auto` (the installed ultralytics' recommended nano "
        "detection model). Offline, an asset not on disk trains from its model YAML instead.",
    )
    offline: bool | None = Field(
        None, description="Never download base models (unset: download when the machine is online)."
    )
    epochs: int | None = Field(
        None, ge=1, description="Training epochs per run (unset: from the recipe's optimizer-step budget)."
    )
    imgsz: int | None = Field(
        None, ge=32, description="Training and inference image size in pixels (unset: from the project's images)."
    )
    batch: int | None = Field(None, ge=1, description="Training batch size (unset: from the train split's size).")
    nbs: int | None = Field(
        None, ge=1, description="Ultralytics' nominal batch for gradient accumulation (unset: from the data)."
    )
    train_time_s: float | None = Field(
        None, gt=0, description="Wall-clock budget of one training (seconds; unset: 170 on CPU, 1800 on a GPU)."
    )
    freeze: int | None = Field(
        None,
        ge=0,
        description="Layers to freeze (unset: the backbone when fine-tuning pretrained weights on few images).",
    )
    mosaic: float | None = Field(None, ge=0.0, le=1.0, description="Mosaic augmentation probability (unset: 1.0).")
    close_mosaic: int | None = Field(
        None, ge=0, description="Final epochs without mosaic (unset: the last ~10% of the epochs)."
    )
    checkpoint: Literal["best", "last"] | None = Field(
        None, description="Checkpoint a training publishes (unset: last below 20 validation images, else best)."
    )
    device: str = Field("", description="Ultralytics device ('' picks CUDA when available, else 'cpu').")
    dataloader_workers: int = Field(2, ge=0, description="DataLoader worker processes during training.")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Fraction of tasks in the validation split.")
    min_val_images: int = Field(1, ge=1, description="Minimum validation images per dataset.")
    video_frame_stride: int = Field(
        5,
        ge=1,
        description="Video projects: every Nth frame of a video's annotated span (and every keyframe) becomes a "
        "training image; consecutive frames are near-duplicates.",
    )
    seed: int = Field(0, description="Training seed.")
    train_time_limit_s: int = Field(
        4 * 3600,
        ge=10,
        description="Time limit of one training run, dataset build, training and validation together (seconds): "
        "over it the run is stopped, cleaned up and the follow-up started (Celery's soft time limit).",
    )
    train_lock_ttl_s: int = Field(
        30,
        ge=3,
        description="TTL of a running training's project lock (seconds), renewed every third of it for the whole "
        "run: a dead worker's lock is free this long after it died.",
    )
    train_lock_orphan_s: int = Field(
        120,
        ge=1,
        description="A project's training lock that no delivery holds and whose run has no message waiting (in the "
        "train queue or a worker; revoked, purged or never sent) is reaped by the reconciliation once its run has "
        "been due this long (seconds); `labelloop status`, `doctor` and labelloop_project_locks_without_owner show "
        "it meanwhile.",
    )
    train_redelivery_s: int = Field(
        45,
        ge=10,
        description="A training whose worker died is redelivered this long after its last sign of life (seconds; "
        "the broker's visibility timeout, which running trainings keep from expiring).",
    )
    train_max_deliveries: int = Field(
        3,
        ge=1,
        description="Deliveries of one training run that may die with their worker before the run is given up.",
    )
    train_quiet_s: float = Field(
        15.0,
        ge=0,
        description="A training due after annotations waits, before it reads the data, until no annotation arrived "
        "for this long (seconds; 0: no wait), so a burst of annotations makes one version. START_TRAINING never "
        "waits.",
    )
    train_max_delay_s: float = Field(
        90.0,
        ge=0,
        description="Longest such wait, from when the training became due (seconds; 0: no wait); it is added to "
        "the train task's Celery time limits.",
    )
    promotion_metric: str = Field(
        "map50_95", pattern="^(map50_95|map50|precision|recall)$", description="Metric of the promotion gate."
    )
    promotion_margin: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="A candidate is promoted unless its metric is worse by more than this plus the validation "
        "split's noise (see README, How the promotion gate decides).",
    )
