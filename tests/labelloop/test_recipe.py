"""The training recipe for small datasets (pure decisions, table-driven)."""

from __future__ import annotations

import math

import pytest

from labelloop.dataset import long_side_p90, object_sides, p10
from labelloop.training.recipe import (
    BEST_CHECKPOINT_MIN_VAL,
    CPU_IMGSZ,
    MIN_OBJECT_PX,
    MIN_STEPS_PER_EPOCH,
    STEPS_FIRST,
    STEPS_WARM,
    DataShape,
    auto_imgsz,
    plan_recipe,
)


@pytest.mark.parametrize(
    ("train", "device", "batch", "nbs"),
    [
        (8, "cpu", 2, 2),
        (9, "cpu", 2, 2),
        (16, "cpu", 4, 4),
        (64, "cpu", 4, 4),
        (300, "cpu", 4, 16),
        (2000, "cpu", 4, 64),
        (9, "0", 2, 2),
        (64, "0", 16, 16),
        (300, "0", 16, 16),
        (2000, "0", 16, 64),
    ],
)
def test_batch_and_nominal_batch_follow_the_train_split(train: int, device: str, batch: int, nbs: int) -> None:
    """Small splits get a batch that leaves several optimizer steps per epoch and no gradient
    accumulation (nbs = batch); large ones accumulate up to Ultralytics' nbs 64; a CPU (time-bound)
    takes batches of at most 4, a GPU Ultralytics' 16."""
    r = plan_recipe(DataShape(train, 4, 320), device=device, warm_start=False, pretrained=False)
    assert (r.batch, r.nbs) == (batch, nbs)
    steps_per_epoch = math.ceil(train / r.batch) // (r.nbs // r.batch)
    assert steps_per_epoch >= MIN_STEPS_PER_EPOCH


def test_old_defaults_starved_the_optimizer() -> None:
    """What the recipe fixes: Ultralytics' batch 16 / nbs 64 on 9 images steps once per 4 epochs."""
    r = plan_recipe(DataShape(9, 3, 320), device="cpu", warm_start=False, pretrained=False)
    old_steps = 20 * math.ceil(9 / 16) / round(64 / 16)
    new_steps = r.epochs * math.ceil(9 / r.batch) / (r.nbs // r.batch)
    assert old_steps == 5
    assert new_steps >= STEPS_FIRST


def test_step_budget_sets_epochs_and_warm_start_needs_less() -> None:
    """Epochs come from an optimizer-step budget; fine-tuning the served version gets a smaller one."""
    first = plan_recipe(DataShape(64, 16, 320), device="cpu", warm_start=False, pretrained=False)
    warm = plan_recipe(DataShape(64, 16, 320), device="cpu", warm_start=True, pretrained=False)
    assert first.epochs == math.ceil(STEPS_FIRST / 16) and warm.epochs == math.ceil(STEPS_WARM / 16)
    big = plan_recipe(DataShape(2000, 500, 640), device="0", warm_start=False, pretrained=True)
    assert big.epochs == math.ceil(STEPS_FIRST / (math.ceil(2000 / 16) // 4))
    assert first.time_s < big.time_s  # CPU budget below the GPU one


@pytest.mark.parametrize(
    ("sizes", "imgsz"),
    [
        ([(320, 240)] * 10, 320),
        ([(240, 320), (288, 384)] * 5, 384),
        ([(300, 200)] * 10, 320),
        ([(4000, 3000)] * 10, 640),
        ([(40, 30)] * 10, 64),
        ([(320, 240)] * 9 + [(1920, 1080)], 320),  # one outlier does not set the size
        ([], 640),
    ],
)
def test_imgsz_from_the_images(sizes: list[tuple[int, int]], imgsz: int) -> None:
    """imgsz is the 90th percentile longer side rounded up to 32, never an upscale past it, in [64, 640]."""
    assert auto_imgsz(long_side_p90(sizes)) == imgsz


@pytest.mark.parametrize(
    ("long_side", "object_side", "device", "imgsz"),
    [
        (384, 0.05, "cpu", CPU_IMGSZ),  # bench.shapes' project: the smallest tenth keeps 12.8 px at 256
        (384, 0.05, "0", 384),  # a GPU is not bound by the clock: the images' size
        (384, None, "cpu", 384),  # object sizes unknown (classify, video): no cap
        (640, 0.03, "cpu", 352),  # small objects: the size that keeps them at MIN_OBJECT_PX (334 -> 352)
        (640, 0.01, "cpu", 640),  # tiny objects: never below what keeps them visible, never past the images
        (192, 0.05, "cpu", 192),  # already small: unchanged
    ],
)
def test_cpu_imgsz_is_capped_while_small_objects_stay_visible(
    long_side: int, object_side: float | None, device: str, imgsz: int
) -> None:
    r = plan_recipe(DataShape(16, 4, long_side, object_side), device=device, warm_start=False, pretrained=False)
    assert r.imgsz == imgsz
    if object_side is not None and device == "cpu" and imgsz < long_side:
        assert imgsz * object_side >= MIN_OBJECT_PX and "on cpu" in r.reasons["imgsz"]
    set_ = plan_recipe(
        DataShape(16, 4, long_side, object_side),
        device=device,
        warm_start=False,
        pretrained=False,
        overrides={"imgsz": 512},
    )
    assert (set_.imgsz, set_.reasons["imgsz"]) == (512, "set")


def test_object_sides_read_each_task_types_label_lines() -> None:
    """Shorter side over the image's longer side: boxes for detect and pose, polygon extents for segment and obb."""
    assert object_sides("0 0.5 0.5 0.1 0.2\n1 0.5 0.5 0.5 0.05\n", "detect", 400, 200) == pytest.approx([0.1, 0.025])
    assert object_sides("0 0.5 0.5 0.1 0.2 0.4 0.4 2 0 0 0\n", "pose", 400, 200) == pytest.approx([0.1])
    assert object_sides("0 0.1 0.1 0.3 0.1 0.3 0.4 0.1 0.4\n", "obb", 100, 100) == pytest.approx([0.2])
    assert object_sides("0 0.1 0.1 0.5 0.2 0.2 0.3\n", "segment", 100, 100) == pytest.approx([0.2])
    assert object_sides("", "detect", 100, 100) == []
    assert object_sides("0 0.5 0.5 0 0.2\n0 0.5\n", "detect", 100, 100) == []  # degenerate and malformed lines
    assert p10([]) is None
    assert p10([float(v) for v in range(20, 0, -1)]) == 2.0


def test_freeze_only_for_pretrained_weights_on_few_images() -> None:
    """The backbone is frozen when fine-tuning pretrained weights on few images, not from a YAML
    nor when fine-tuning labelloop's own version."""
    shape = DataShape(16, 4, 320)
    assert plan_recipe(shape, device="cpu", warm_start=False, pretrained=True).freeze == 10
    assert plan_recipe(shape, device="cpu", warm_start=False, pretrained=False).freeze == 0
    assert plan_recipe(shape, device="cpu", warm_start=True, pretrained=True).freeze == 0
    assert plan_recipe(DataShape(500, 100, 320), device="cpu", warm_start=False, pretrained=True).freeze == 0


def test_small_validation_split_takes_the_last_checkpoint() -> None:
    """Below the threshold the last epoch is published and no per-epoch validation runs; above it best.pt."""
    small = plan_recipe(
        DataShape(40, BEST_CHECKPOINT_MIN_VAL - 1, 320), device="cpu", warm_start=False, pretrained=False
    )
    large = plan_recipe(DataShape(200, BEST_CHECKPOINT_MIN_VAL, 320), device="cpu", warm_start=False, pretrained=False)
    assert (small.checkpoint, small.val) == ("last", False)
    assert (large.checkpoint, large.val) == ("best", True)


def test_overrides_win_and_are_recorded() -> None:
    """Every overridden argument is used as given and its reason says so."""
    overrides = {"epochs": 7, "imgsz": 256, "batch": 3, "nbs": 12, "train_time_s": 30, "freeze": 2, "mosaic": 0.0}
    r = plan_recipe(DataShape(100, 20, 640), device="cpu", warm_start=False, pretrained=False, overrides=overrides)
    assert (r.epochs, r.imgsz, r.batch, r.nbs, r.time_s, r.freeze, r.mosaic) == (7, 256, 3, 12, 30.0, 2, 0.0)
    assert r.close_mosaic == 0
    assert all(r.reasons[k] == "set" for k in ("epochs", "imgsz", "batch", "nbs", "time_s", "freeze", "mosaic"))


def test_time_budget_setting_describes_the_recipe_budgets() -> None:
    # The setting's help (README's configuration table) names the budgets plan_recipe uses when unset.
    from labelloop.settings import Settings
    from labelloop.training.recipe import TIME_BUDGET_S

    text = Settings.model_fields["train_time_s"].description or ""
    assert f"{TIME_BUDGET_S['cpu']:g} on CPU" in text
    assert f"{TIME_BUDGET_S['gpu']:g} on a GPU" in text
    recipe = plan_recipe(DataShape(16, 4, 320), device="cpu", warm_start=False, pretrained=False)
    assert recipe.time_s == TIME_BUDGET_S["cpu"]
