"""Detection scoring used by bench/learning and the demo: hand-computed cases."""

from __future__ import annotations

from labelloop.training.scoring import Det, average_precision, edits, iou, regions_to_dets, score


def test_scoring_hand_cases() -> None:
    """Perfect predictions score 1, none 0, wrong labels 0; ranking, duplicates, interpolation and
    percent-to-pixel conversion give the hand-computed values."""
    t = [Det(1, "a", 1.0, (0, 0, 10, 10)), Det(1, "b", 1.0, (20, 20, 40, 40)), Det(2, "a", 1.0, (5, 5, 25, 25))]
    perfect = [Det(d.image, d.label, 0.9, d.box) for d in t]
    assert score(perfect, t)["map50"] == 1.0 and score(perfect, t)["precision"] == 1.0
    assert score(perfect, t)["recall"] == 1.0
    assert score([], t) == {**score([], t), "map50": 0.0, "precision": 0.0, "recall": 0.0}
    # wrong label everywhere: 0; a box shifted to IoU < 0.5: a false positive
    assert score([Det(d.image, "b" if d.label == "a" else "a", 0.9, d.box) for d in t], t)["map50"] == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == 1 / 3
    # class a: one hit ranked under one miss -> AP 0.25 (recall 0.5 reached at precision 0.5);
    # class b found: AP 1 -> mAP 0.625
    preds = [Det(1, "a", 0.8, (0, 0, 10, 10)), Det(2, "a", 0.9, (100, 100, 120, 120)), Det(1, "b", 0.5, t[1].box)]
    s = score(preds, t)
    assert abs(s["ap"]["a"] - 0.25) < 1e-9, s  # 1 of 2 truths found, at precision 1/2
    assert s["ap"]["b"] == 1.0 and abs(s["map50"] - 0.625) < 1e-9
    assert abs(s["precision"] - 2 / 3) < 1e-9 and abs(s["recall"] - 2 / 3) < 1e-9
    # a duplicate of a found box is a false positive; the same box ranked first keeps AP 1
    dup = [*perfect, Det(1, "a", 0.1, (0, 0, 10, 10))]
    assert score(dup, t)["map50"] == 1.0 and score(dup, t)["precision"] == 0.75
    # all-point interpolation: hits F T T over 2 truths -> precision envelope 2/3 over recall 0..1
    assert abs(average_precision([False, True, True], 2) - 2 / 3) < 1e-9
    # a region in percent of the displayed frame
    r = {
        "type": "rectanglelabels",
        "score": 0.7,
        "value": {"x": 10, "y": 20, "width": 50, "height": 25, "rectanglelabels": ["a"]},
    }
    assert regions_to_dets(3, [r], 200, 100) == [Det(3, "a", 0.7, (20.0, 20.0, 120.0, 45.0))]


def test_edits_count_missed_objects_and_wrong_regions() -> None:
    truths = [Det(0, "a", 1.0, (0, 0, 10, 10)), Det(0, "b", 1.0, (20, 20, 30, 30)), Det(1, "a", 1.0, (0, 0, 5, 5))]
    preds = [
        Det(0, "a", 0.9, (0, 0, 10, 11)),  # right
        Det(0, "a", 0.8, (20, 20, 30, 30)),  # wrong label: one wrong region, and "b" is missed
        Det(1, "a", 0.7, (50, 50, 60, 60)),  # nowhere near: wrong, and image 1's "a" is missed
    ]
    assert edits(preds, truths) == {"missed": 2, "wrong": 2, "edits": 4, "truths": 3, "predictions": 3}
    assert edits([], truths)["edits"] == 3
    assert edits(preds[:1], truths[:1])["edits"] == 0
