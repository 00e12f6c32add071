"""The generated videos the video tests and bench/video.py use: a rare class and distractors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from labelloop.dev.synthetic_video import RARE_LABEL, write_video


def _frame(path: Path, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    try:
        for _ in range(index):
            cap.read()
        ok, image = cap.read()
    finally:
        cap.release()
    assert ok
    return image


def test_rare_class_and_distractors_leave_the_labelled_shapes_as_they_were(tmp_path: Path) -> None:
    """rare=True adds one triangle track drawn in green; distractors are drawn but in no track; the
    other shapes keep the boxes the same seed gives without them."""
    plain = write_video(tmp_path / "plain.mp4", seed=11, frames=12, shapes=3)
    busy = write_video(tmp_path / "busy.mp4", seed=11, frames=12, shapes=3, rare=True, distractors=2)
    assert [t.label for t in busy.tracks] == [t.label for t in plain.tracks] + [RARE_LABEL]
    assert [t.boxes for t in busy.tracks[:3]] == [t.boxes for t in plain.tracks]
    assert busy.distractors == 2 and plain.distractors == 0
    triangle = busy.tracks[-1]
    first = min(triangle.boxes)
    x, y, w, h = triangle.boxes[first]
    image = _frame(busy.path, first - 1)
    patch = image[int(y) + int(h) // 2 : int(y + h) - 1, int(x) + int(w) // 3 : int(x + w) - int(w) // 3]
    b, g, r = (float(c) for c in patch.reshape(-1, 3).mean(axis=0))
    assert g > 120 and g > r + 60 and g > b + 60, (b, g, r)
    # the distractors change pixels that no labelled box covers
    diff = np.abs(_frame(busy.path, 0).astype(int) - _frame(plain.path, 0).astype(int)).sum(axis=2) > 60
    covered = np.zeros_like(diff)
    for t in busy.tracks:
        if 1 in t.boxes:
            bx, by, bw, bh = t.boxes[1]
            covered[int(by) : int(by + bh) + 1, int(bx) : int(bx + bw) + 1] = True
    assert (diff & ~covered).sum() > 20
