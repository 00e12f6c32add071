"""bench.learning_report: a run read back gives its own figures; runs of one order each combine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.learning_report import aggregate, body, combine, load, main, targets

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
BOTH = RESULTS / "learning-order-cpu.json"  # random and labelloop, seeds 0-2, rounds 10/20/40


def _one_order(tmp_path: Path, order: str, **config: object) -> Path:
    """The committed two-order run cut down to one order (and ``config`` changed), as a file."""
    body = json.loads(BOTH.read_text())
    body["seeds"] = {s: {order: orders[order]} for s, orders in body["seeds"].items()}
    body["config"] |= {"orders": [order], **config}
    path = tmp_path / f"{order}.json"
    path.write_text(json.dumps(body))
    return path


def test_a_committed_run_read_back_gives_its_committed_figures() -> None:
    committed = json.loads(BOTH.read_text())
    _, runs = load(BOTH)
    assert list(runs) == ["random", "labelloop"]
    assert json.loads(json.dumps(aggregate(runs), default=str)) == committed["aggregate"]
    assert json.loads(json.dumps(targets(runs), default=str)) == committed["targets"]


def test_two_one_order_runs_combine_into_the_two_order_figures(tmp_path: Path) -> None:
    config, runs = combine([_one_order(tmp_path, "random"), _one_order(tmp_path, "labelloop")])
    assert config["orders"] == ["random", "labelloop"]
    assert aggregate(runs) == aggregate(load(BOTH)[1])
    assert [t["met"] for t in targets(runs)][:2] != [None, None]  # the order comparisons are measured


@pytest.mark.parametrize(("change", "why"), [({"seeds": [0, 1]}, "seeds"), ({"rounds": [10, 20]}, "rounds")])
def test_runs_of_other_seeds_or_rounds_do_not_combine(tmp_path: Path, change: dict, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        combine([_one_order(tmp_path, "random"), _one_order(tmp_path, "labelloop", **change)])


def test_the_same_order_twice_does_not_combine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _one_order(tmp_path, "random")
    assert main([str(path), str(path)]) == 2
    assert "random order is already" in capsys.readouterr().err


def test_the_command_writes_the_combined_figures(tmp_path: Path) -> None:
    out = tmp_path / "combined.json"
    assert main([str(_one_order(tmp_path, "random")), str(_one_order(tmp_path, "labelloop")), "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["config"]["orders"] == ["random", "labelloop"]
    assert written["targets"] == json.loads(BOTH.read_text())["targets"]


def test_what_a_run_writes_is_what_it_reads_back() -> None:
    """``body`` (what bench.learning writes, less its learning curve) of a run read back is the file."""
    committed = json.loads(BOTH.read_text())
    written = json.loads(json.dumps(body(*load(BOTH)), default=str))
    assert written == {k: v for k, v in committed.items() if k != "learning_curve"}
