"""Brush RLE is bounded before label-studio-sdk decodes it: a list longer than any encoding of the region's
image could be, or holding something other than bytes, is dropped with the reason, without allocating."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

from labelloop.task_types.convert import annotation_to_yolo
from labelloop.task_types.labels import TrainSpec

LABELS = ("cat", "dog")
BRUSH = TrainSpec("segment", "brushlabels", "brush", "image", "image", LABELS)
CLASS_IDS = {"cat": 0, "dog": 1}


def brush(rle: list[int], width: int = 40, height: int = 30) -> dict[str, Any]:
    return {
        "id": "b1",
        "from_name": "brush",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": width,
        "original_height": height,
        "value": {"format": "rle", "rle": rle, "brushlabels": ["cat"]},
    }


def blob() -> list[int]:
    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 10:30] = 255
    return [int(v) for v in mask2rle(mask)]


def test_a_valid_brush_still_converts() -> None:
    """A brush RLE as Label Studio encodes it converts to one polygon line."""
    lines, dropped = annotation_to_yolo([brush(blob())], BRUSH, CLASS_IDS, 40, 30)
    assert len(lines) == 1 and lines[0].startswith("0 ") and dropped == []


def test_a_noisy_mask_at_the_worst_case_encoding_still_converts() -> None:
    """A mask of alternating pixels (the SDK's longest encoding, 14 bits per byte of RGBA) is within the cap."""
    mask = np.zeros((30, 40), np.uint8)
    mask[::2, ::2] = 255
    lines, dropped = annotation_to_yolo([brush([int(v) for v in mask2rle(mask)])], BRUSH, CLASS_IDS, 40, 30)
    assert not any("malformed" in d for d in dropped), dropped


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        pytest.param([0] * 3_000_000, "more than", id="three-million-trailing-values"),
        pytest.param(["x"], "not a list of bytes", id="a-string-inside"),
        pytest.param([300], "not a list of bytes", id="a-value-over-255"),
    ],
)
def test_a_huge_or_malformed_rle_is_dropped_before_decoding(tail: list[Any], reason: str) -> None:
    """A brush whose RLE list is longer than any encoding of its 40x30 region (3 million values after a valid
    header), or holds a non-byte value, is dropped with the reason, in well under a second and 50 MiB."""
    region = brush(blob() + tail)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        lines, dropped = annotation_to_yolo([region], BRUSH, CLASS_IDS, 40, 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == [] and any(reason in d for d in dropped), dropped
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB allocated"
    assert time.perf_counter() - start < 2.0
