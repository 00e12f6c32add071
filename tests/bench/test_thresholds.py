"""bench.thresholds: edits per image under each display-threshold rule, and the held-out bound."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.learning import project_title
from bench.thresholds import projects, summarise, version_row
from labelloop.training.scoring import Det

TRUTHS = [Det(0, "a", 1.0, (0, 0, 10, 10)), Det(1, "a", 1.0, (20, 20, 30, 30))]
PREDS = [
    Det(0, "a", 0.9, (0, 0, 10, 10)),  # right
    Det(1, "a", 0.6, (50, 50, 60, 60)),  # wrong
    Det(1, "a", 0.3, (20, 20, 30, 30)),  # right, low
    Det(0, "a", 0.1, (40, 40, 45, 45)),  # wrong, lower
]


def test_each_rule_counts_missed_plus_wrong_and_the_bound_is_the_fewest() -> None:
    row = version_row(PREDS, TRUTHS, 2, {"value": 0.7, "raw": 0.3, "objects": 20})
    # 0.7: 1 right shown, 1 missed -> 1 edit; 0.3 (raw): 2 right + 1 wrong -> 1; 0.25 the same;
    # 0.5, and 0.3 shrunk halfway toward 0.5 (0.4): 1 right + 1 wrong, 1 missed -> 2;
    # best: 1 edit, at the highest threshold giving it (0.9)
    assert row["edits"] == {"own": 0.5, "prior 0.5": 1.0, "raw": 0.5, "0.25": 0.5, "0.5": 1.0, "best": 0.5}
    assert row["thresholds"]["prior 0.5"] == 0.4
    assert row["thresholds"]["best"] == 0.9
    assert row["boxes"] == 1.0
    assert 0 < row["map50"] <= 1


def test_a_version_without_a_threshold_leaves_its_rules_out_of_the_means() -> None:
    rows = [
        {"annotations": 10, "order": "labelloop"} | version_row(PREDS, TRUTHS, 2, {}),
        {"annotations": 10, "order": "labelloop"} | version_row(PREDS, TRUTHS, 2, {"value": 0.5, "raw": 0.5}),
        {"annotations": 10, "order": "random"} | version_row(PREDS, TRUTHS, 2, {"value": 0.05, "raw": 0.05}),
    ]
    random, labelloop = summarise(rows)
    assert (random["order"], labelloop["order"]) == ("random", "labelloop")
    assert labelloop["versions"] == 2 and labelloop["own"] == {"edits": 1.0, "share": 1.0}
    assert random["own"] == {"edits": 1.0, "share": 1.0}  # 0.05: 2 right + 2 wrong shown
    assert labelloop["best"]["edits"] <= min(labelloop[r]["edits"] for r in ("own", "raw", "0.25", "0.5"))


def test_projects_come_from_the_bench_titles(tmp_path: Path) -> None:
    (tmp_path / "label-studio").mkdir()
    db = sqlite3.connect(str(tmp_path / "label-studio" / "label_studio.sqlite3"))
    db.execute("create table project (id integer, title text)")
    db.executemany(
        "insert into project values (?, ?)",
        [(1, project_title(0, "random")), (2, project_title(0, "labelloop")), (3, "other")],
    )
    db.commit()
    db.close()
    assert projects(tmp_path) == {1: (0, "random"), 2: (0, "labelloop")}
