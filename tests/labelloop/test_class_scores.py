"""labelloop.serving.inference.class_scores_predictor: every class's score of each box Ultralytics keeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def test_class_scores_are_those_of_the_kept_boxes(tmp_path: Path) -> None:
    """With the detect predictor subclass a real YOLO keeps the same boxes, and each box's class scores (N, nc) peak at
    its own class with its own confidence."""
    from labelloop.yolo_env import prepare_ultralytics

    prepare_ultralytics(tmp_path / "yolo")
    from ultralytics import YOLO

    from labelloop.serving.inference import class_scores_predictor

    model = YOLO("yolov8n.yaml")  # built from its YAML: random weights, nothing downloaded
    image = np.random.default_rng(0).integers(0, 255, (192, 160, 3), dtype=np.uint8)
    # an untrained head scores everything near 0: a tiny threshold keeps boxes to compare
    plain = model.predict(image, conf=1e-9, imgsz=192, verbose=False)[0]
    res = model.predict(image, conf=1e-9, imgsz=192, verbose=False, predictor=class_scores_predictor())[0]
    assert len(res.boxes) > 10
    np.testing.assert_allclose(res.boxes.data.numpy(), plain.boxes.data.numpy())
    assert res.class_scores.shape == (len(res.boxes), len(model.names))
    np.testing.assert_allclose(res.class_scores.max(axis=1), res.boxes.conf.numpy(), rtol=1e-5)
    assert (res.class_scores.argmax(axis=1) == res.boxes.cls.numpy().astype(int)).all()
