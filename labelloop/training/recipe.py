"""The training recipe for the active-learning regime: Ultralytics arguments chosen from the data.

Ultralytics' defaults (batch 16, ``nbs=64``, imgsz 640, a fixed epoch count) suit COCO-sized
datasets. An active-learning project trains on 10 to a few thousand images, and on the small
end those defaults barely train: with 9 training images at batch 16 Ultralytics accumulates
gradients up to its nominal batch of 64, so the optimizer steps once every four epochs and 20
epochs are 5 optimizer steps. ``plan_recipe`` chooses, at each training, from the dataset and
the device (pure function, every rule below; ``Recipe.reasons`` says which rule chose what):

- **batch**: small enough to leave at least ``MIN_STEPS_PER_EPOCH`` optimizer steps per epoch
  (at least 2 images per batch, for BatchNorm), at most ``MAX_BATCH``: Ultralytics' 16 on a
  GPU, 4 on a CPU, where a training is bound by wall-clock time and four small steps learn
  more than one large one in the same seconds (measured here: 64 images, 300 s on one core,
  yolo26n from its YAML: held-out mAP50 0.092 at batch 4, 0.001 at batch 16).
- **nbs** (nominal batch, Ultralytics' gradient accumulation target): equal to the batch, so
  that every batch is an optimizer step, until the train split is large enough for
  accumulation to still leave ``ACCUMULATE_ABOVE_STEPS`` steps per epoch; at most 64.
- **epochs**: a budget of optimizer steps (``STEPS_FIRST`` for a first training from the base
  model, ``STEPS_WARM`` for fine-tuning the served version) turned into epochs, between
  ``MIN_EPOCHS`` and ``MAX_EPOCHS``; then capped by a wall-clock budget (``time_s``, set by
  ``train_time_s``; see ``labelloop.training.child.time_cap``): after each epoch the epoch count
  shrinks to what fits, the way Ultralytics' own ``time`` argument re-plans, but never grows
  past the step budget.
- **imgsz**: the 90th percentile of the images' longer sides, rounded up to a multiple of 32,
  between 64 and 640: no upscaling of 320-pixel images to 640. On a CPU, where a training is
  bound by wall-clock time and a step's cost grows with the pixels, at most ``CPU_IMGSZ``, unless
  that would shrink the smallest tenth of the labelled objects below ``MIN_OBJECT_PX`` pixels
  (then the size that keeps them at that; unknown object sizes: no cap). Measured here: 20
  annotations of ``bench.shapes``' project (images 320-384 pixels, the smallest tenth of the
  objects about 5% of the longer side), 16 trained on, 170 s from the model YAML, held-out mAP50
  over seeds 0-5: 0.125 [0.023-0.319] at 384 (59-65 epochs), 0.223 [0.063-0.308] at 256
  (109-118 epochs), ahead in 5 of 6 seeds; at 224 (seeds 0-2) 0.194, against 0.265 at 256.
- **augmentation**: Ultralytics' mosaic, closed for the last ~10% of the epochs
  (``close_mosaic``), as its fine-tuning guide advises for small datasets.
- **freeze**: the first 10 layers (the backbone) when fine-tuning pretrained weights on fewer
  than ``FREEZE_BELOW`` images (Ultralytics' transfer-learning guide); never when training from
  a model YAML (nothing to keep) or fine-tuning labelloop's own version.
- **checkpoint**: with fewer than ``BEST_CHECKPOINT_MIN_VAL`` validation images, the last
  epoch's weights (EMA, at the end of the learning-rate decay), and no validation per epoch:
  picking the best epoch on a handful of images picks noise. With more, Ultralytics' best.pt.

Every choice can be overridden (settings, then extra params); overrides are kept as given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from labelloop.manifest import TrainArgs

MIN_STEPS_PER_EPOCH = 4
ACCUMULATE_ABOVE_STEPS = 16
MAX_BATCH = {"cpu": 4, "gpu": 16}
MAX_NBS = 64
STEPS_FIRST = 1200
STEPS_WARM = 600
MIN_EPOCHS = 10
MAX_EPOCHS = 300
IMGSZ_MIN, IMGSZ_MAX = 64, 640
CPU_IMGSZ = 256
MIN_OBJECT_PX = 10
FREEZE_BELOW = 100
FREEZE_LAYERS = 10
BEST_CHECKPOINT_MIN_VAL = 20
# Wall-clock budgets of one training (seconds): on 2 CPU cores a new version must be served
# within minutes of an annotation; a GPU trains the same step budget well within its budget.
TIME_BUDGET_S = {"cpu": 170.0, "gpu": 1800.0}
OVERRIDABLE = ("epochs", "imgsz", "batch", "nbs", "train_time_s", "freeze", "mosaic", "close_mosaic", "checkpoint")


@dataclass(frozen=True)
class DataShape:
    """What the recipe looks at in a built dataset.

    Attributes:
        train_images, val_images: images per split.
        long_side_p90: the 90th percentile of the images' longer sides in pixels (EXIF
            orientation applied; see ``labelloop.dataset.long_side_p90``), None when unknown.
        object_side_p10: the 10th percentile of the labelled objects' shorter sides, as a
            fraction of their image's longer side (``labelloop.dataset.object_sides``), None
            when unknown.
    """

    train_images: int
    val_images: int
    long_side_p90: int | None = None
    object_side_p10: float | None = None


@dataclass(frozen=True)
class Recipe:
    """Ultralytics training arguments for one training, and why each was chosen.

    ``epochs``, ``imgsz``, ``batch``, ``nbs``, ``mosaic``, ``close_mosaic``, ``freeze`` and
    ``val`` are passed to ``YOLO.train`` as is; ``time_s`` is labelloop's wall-clock cap
    (seconds, 0: none); ``checkpoint`` is ``"last"`` or ``"best"``.
    """

    epochs: int
    imgsz: int
    batch: int
    nbs: int
    time_s: float
    mosaic: float
    close_mosaic: int
    freeze: int
    checkpoint: str
    val: bool
    reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """The recipe as JSON: its Ultralytics arguments and ``reasons``."""
        return asdict(self)

    def train_args(self) -> TrainArgs:
        """The recipe's Ultralytics arguments (``reasons`` left out), in the manifest's order."""
        return TrainArgs(
            epochs=self.epochs,
            imgsz=self.imgsz,
            batch=self.batch,
            nbs=self.nbs,
            time_s=self.time_s,
            mosaic=self.mosaic,
            close_mosaic=self.close_mosaic,
            freeze=self.freeze,
            checkpoint=self.checkpoint,
            val=self.val,
        )


def auto_imgsz(long_side: int | None) -> int:
    """``long_side`` rounded up to a multiple of 32 (the YOLO stride), in [64, 640]; 640 when unknown."""
    if not long_side:
        return IMGSZ_MAX
    return max(IMGSZ_MIN, min(IMGSZ_MAX, math.ceil(long_side / 32) * 32))


def plan_recipe(
    data: DataShape,
    *,
    device: str,
    warm_start: bool,
    pretrained: bool,
    overrides: Mapping[str, Any] | None = None,
) -> Recipe:
    """Choose the training arguments for ``data`` (rules in the module docstring).

    Args:
        data: the built dataset's split sizes and image sizes.
        device: ``"cpu"`` or an Ultralytics CUDA device (``"0"``, ``"0,1"``): sets the time budget.
        warm_start: fine-tuning the served version (smaller step budget).
        pretrained: the weights are pretrained (an Ultralytics ``.pt``), not a model YAML.
        overrides: values set by the operator or the project's extra params (keys in
            ``OVERRIDABLE``; None values are ignored).

    Returns:
        the recipe; ``reasons`` maps each argument to the rule (or override) that set it.

    Long because it is a table: one rule per Ultralytics argument next to the reason it records.
    """
    given = {k: v for k, v in (overrides or {}).items() if k in OVERRIDABLE and v is not None}
    reasons: dict[str, str] = {}
    n = max(1, int(data.train_images))
    kind = "cpu" if str(device).lower() in {"", "cpu", "mps"} else "gpu"

    if "batch" in given:
        batch = int(given["batch"])
        reasons["batch"] = "set"
    else:
        batch = max(2, min(MAX_BATCH[kind], n // MIN_STEPS_PER_EPOCH))
        reasons["batch"] = f"{n} train images on {kind}: at most {MAX_BATCH[kind]}, >= {MIN_STEPS_PER_EPOCH} per epoch"
    batches = max(1, math.ceil(n / batch))

    if "nbs" in given:
        nbs = int(given["nbs"])
        reasons["nbs"] = "set"
    else:
        accumulate = max(1, min(max(1, MAX_NBS // batch), batches // ACCUMULATE_ABOVE_STEPS))
        nbs = batch * accumulate
        reasons["nbs"] = (
            "= batch: no gradient accumulation past the data"
            if accumulate == 1
            else f"{accumulate} batches per optimizer step, still >= {ACCUMULATE_ABOVE_STEPS} steps per epoch"
        )
    steps_per_epoch = max(1, batches // max(1, round(nbs / batch)))

    if "epochs" in given:
        epochs = int(given["epochs"])
        reasons["epochs"] = "set"
    else:
        steps = STEPS_WARM if warm_start else STEPS_FIRST
        epochs = max(MIN_EPOCHS, min(MAX_EPOCHS, math.ceil(steps / steps_per_epoch)))
        reasons["epochs"] = (
            f"{steps} optimizer steps ({'fine-tuning the served version' if warm_start else 'first training'}) "
            f"at {steps_per_epoch} per epoch, in [{MIN_EPOCHS}, {MAX_EPOCHS}]"
        )

    if "train_time_s" in given:
        time_s = float(given["train_time_s"])
        reasons["time_s"] = "set"
    else:
        time_s = TIME_BUDGET_S[kind]
        reasons["time_s"] = f"{kind} wall-clock budget: epochs shrink after the first one when they would not fit"

    if "imgsz" in given:
        imgsz = int(given["imgsz"])
        reasons["imgsz"] = "set"
    else:
        imgsz = auto_imgsz(data.long_side_p90)
        reasons["imgsz"] = "90th percentile of the images' longer sides, multiple of 32, in [64, 640]"
        if kind == "cpu" and data.object_side_p10 and imgsz > CPU_IMGSZ:
            keeps = auto_imgsz(math.ceil(MIN_OBJECT_PX / data.object_side_p10))
            if keeps < imgsz:
                imgsz = max(CPU_IMGSZ, keeps)
                reasons["imgsz"] = (
                    f"on cpu at most {CPU_IMGSZ} (more steps in the time budget) while the smallest tenth "
                    f"of the objects keeps >= {MIN_OBJECT_PX} px; images' 90th percentile: "
                    f"{auto_imgsz(data.long_side_p90)}"
                )

    mosaic = float(given.get("mosaic", 1.0))
    reasons["mosaic"] = "set" if "mosaic" in given else "Ultralytics default (more objects per image on tiny sets)"
    if "close_mosaic" in given:
        close_mosaic = int(given["close_mosaic"])
        reasons["close_mosaic"] = "set"
    else:
        close_mosaic = max(1, round(0.1 * epochs)) if mosaic > 0 else 0
        reasons["close_mosaic"] = "last ~10% of the epochs without mosaic"

    if "freeze" in given:
        freeze = int(given["freeze"])
        reasons["freeze"] = "set"
    elif pretrained and not warm_start and n < FREEZE_BELOW:
        freeze = FREEZE_LAYERS
        reasons["freeze"] = f"pretrained weights, fewer than {FREEZE_BELOW} train images: backbone frozen"
    else:
        freeze = 0
        reasons["freeze"] = "training from a model YAML" if not pretrained and not warm_start else "all layers train"

    if "checkpoint" in given:
        checkpoint = str(given["checkpoint"])
        reasons["checkpoint"] = "set"
    elif data.val_images < BEST_CHECKPOINT_MIN_VAL:
        checkpoint = "last"
        reasons["checkpoint"] = f"{data.val_images} val images (< {BEST_CHECKPOINT_MIN_VAL}): best epoch would be noise"
    else:
        checkpoint = "best"
        reasons["checkpoint"] = f"{data.val_images} val images: Ultralytics' best.pt"

    return Recipe(
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        nbs=nbs,
        time_s=time_s,
        mosaic=mosaic,
        close_mosaic=close_mosaic,
        freeze=freeze,
        checkpoint=checkpoint,
        val=checkpoint == "best",
        reasons=reasons,
    )
