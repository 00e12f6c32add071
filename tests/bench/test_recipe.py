"""bench.recipe's summary: each variant against the first one, per size or per model and size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.recipe import box_outlines, parse_augment, summarise

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def _row(seed: int, imgsz: int, map50: float, weights: str | None = None) -> dict:
    row = {"seed": seed, "imgsz": imgsz, "held_out_map50": map50}
    return row if weights is None else row | {"weights": weights}


def test_one_model_keys_by_imgsz_and_compares_with_the_first_size() -> None:
    rows = [_row(0, 384, 0.2), _row(1, 384, 0.1), _row(0, 256, 0.3), _row(1, 256, 0.05)]
    got = summarise(rows)
    assert list(got) == ["384", "256"]
    assert got["256"]["mean"] == pytest.approx(0.175)
    assert got["256"]["x_peer"] == pytest.approx(round(0.175 / 0.15, 2))
    assert got["256"]["seeds_ahead_of_peer"] == 1
    assert got["384"]["x_peer"] == 1.0 and got["384"]["seeds_ahead_of_peer"] == 0


def test_several_models_key_by_model_and_size_the_first_being_the_peer() -> None:
    rows = [
        _row(0, 256, 0.2, "yolo26n.yaml"),
        _row(1, 256, 0.4, "yolo26n.yaml"),
        _row(0, 256, 0.5, "yolov8n.yaml"),
        _row(1, 256, 0.3, "yolov8n.yaml"),
    ]
    got = summarise(rows, several_weights=True)
    assert list(got) == ["yolo26n.yaml@256", "yolov8n.yaml@256"]
    assert got["yolov8n.yaml@256"] == {
        "mean": pytest.approx(0.4),
        "min": 0.3,
        "max": 0.5,
        "x_peer": pytest.approx(1.33),
        "seeds_ahead_of_peer": 1,
        "seeds": 2,
    }


def test_the_committed_summary_is_what_its_rows_give() -> None:
    """README quotes bench/results/recipe-imgsz-cpu.json's summary: it must follow from its rows."""
    for name in ("recipe-imgsz-cpu.json", "recipe-augment-cpu.json"):
        committed = json.loads((RESULTS / name).read_text())
        assert summarise(committed["rows"]) == committed["summary"], name


def test_augmentation_variants_key_by_size_and_arguments_the_recipe_s_being_the_peer() -> None:
    rows = [_row(0, 256, 0.2), _row(1, 256, 0.4), _row(0, 256, 0.3) | {"augment": "flipud=0.5"}]
    rows.append(_row(1, 256, 0.3) | {"augment": "flipud=0.5"})
    got = summarise(rows)
    assert list(got) == ["256", "256+flipud=0.5"]
    assert got["256+flipud=0.5"]["x_peer"] == pytest.approx(1.0) and got["256+flipud=0.5"]["seeds_ahead_of_peer"] == 1


def test_augmentation_arguments_parse_and_a_typo_is_refused() -> None:
    assert parse_augment("") == {}
    assert parse_augment("flipud=0.5,mixup=0.1") == {"flipud": 0.5, "mixup": 0.1}
    with pytest.raises(ValueError, match="'flipup' is not an augmentation argument"):
        parse_augment("flipup=0.5")
    with pytest.raises(ValueError):
        parse_augment("flipud=half")


def test_box_outlines_are_the_same_boxes_as_segments(tmp_path: Path) -> None:
    """``box_outlines`` rewrites ``c x y w h`` as the rectangle's four corners, which Ultralytics
    reads back as the same box (``segments2boxes``); an empty label file stays empty."""
    import numpy as np

    from labelloop.yolo_env import prepare_ultralytics

    prepare_ultralytics(tmp_path / "yolo")
    from ultralytics.utils.ops import segments2boxes

    (tmp_path / "a.txt").write_text("0 0.5 0.4 0.2 0.1\n2 0.25 0.75 0.1 0.3\n")
    (tmp_path / "empty.txt").write_text("")
    box_outlines(tmp_path)
    rows = [[float(v) for v in line.split()] for line in (tmp_path / "a.txt").read_text().splitlines()]
    assert [r[0] for r in rows] == [0, 2] and all(len(r) == 9 for r in rows)
    boxes = segments2boxes([np.array(r[1:]).reshape(-1, 2) for r in rows])
    np.testing.assert_allclose(boxes, [[0.5, 0.4, 0.2, 0.1], [0.25, 0.75, 0.1, 0.3]], atol=1e-6)
    assert (tmp_path / "empty.txt").read_text() == ""
