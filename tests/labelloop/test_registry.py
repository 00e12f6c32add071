"""The model registry: immutable versions, an atomic CURRENT pointer, crash safety."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from unittest import mock

import pytest

from labelloop.errors import CurrentMovedError, RegistryError
from labelloop.registry.store import Registry

# Registry.publish is called by hand here, not through tests.factories.publish_version: this module
# is about publish itself (numbering, CURRENT, crash safety), manifests and all.


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "best.pt"
    path.write_bytes(b"weights-1")
    return path


def test_publish_numbers_versions_and_moves_current(tmp_path: Path, weights: Path) -> None:
    """Each publish creates v<N+1> with parent and manifest, and CURRENT points at it."""
    reg = Registry(tmp_path / "models")
    assert reg.current_name(4) is None
    v1 = reg.publish(4, weights, {"metrics": {"map50_95": 0.1}})
    v2 = reg.publish(4, weights, {"metrics": {"map50_95": 0.2}})
    assert (v1.name, v2.name) == ("v1", "v2")
    assert reg.current_name(4) == "v2"
    assert v2.manifest["parent"] == "v1" and v1.manifest["parent"] is None
    assert v2.manifest["metrics"] == {"map50_95": 0.2}
    assert v2.weights.read_bytes() == b"weights-1"
    assert [v.name for v in reg.list_versions(4)] == ["v1", "v2"]


def test_registry_reads_survive_a_new_process(tmp_path: Path, weights: Path) -> None:
    """A fresh Registry object over the same directory sees the same current version."""
    Registry(tmp_path).publish(9, weights, {})
    assert Registry(tmp_path).current_name(9) == "v1"


def test_crash_while_publishing_keeps_the_current_version(tmp_path: Path, weights: Path) -> None:
    """A failure while writing a version leaves CURRENT and the versions as they were, and no temp dirs."""
    reg = Registry(tmp_path)
    reg.publish(2, weights, {})
    with mock.patch("labelloop.registry.publish.os.rename", side_effect=OSError("disk full")), pytest.raises(OSError):
        reg.publish(2, weights, {})
    assert reg.current_name(2) == "v1"
    assert sorted(p.name for p in (tmp_path / "2" / "versions").iterdir()) == ["v1"]


def test_crash_while_moving_current_keeps_the_old_pointer(tmp_path: Path, weights: Path) -> None:
    """If replacing CURRENT fails, the old pointer stays intact (no half-written file)."""
    reg = Registry(tmp_path)
    reg.publish(2, weights, {})
    with mock.patch("labelloop.registry.served.os.replace", side_effect=OSError("boom")), pytest.raises(OSError):
        reg.publish(2, weights, {})
    assert reg.current_name(2) == "v1"
    assert not [p for p in os.listdir(tmp_path / "2") if p.startswith(".CURRENT-")]


def test_unknown_versions_are_errors(tmp_path: Path) -> None:
    """Pointing CURRENT at a missing version or a bad name raises RegistryError."""
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError):
        reg.set_current(1, "v3")
    with pytest.raises(RegistryError):
        reg.get(1, "../etc")


def test_promote_and_rollback_follow_the_history(tmp_path: Path, weights: Path) -> None:
    """Rollbacks walk back through the served versions; a promotion starts a new step on top."""
    reg = Registry(tmp_path)
    for _ in range(3):
        reg.publish(1, weights, {})
    assert reg.rollback(1) == "v2"
    assert reg.current_name(1) == "v2"
    assert reg.rollback(1) == "v1"
    with pytest.raises(RegistryError):
        reg.rollback(1)
    reg.set_current(1, "v3")
    assert reg.rollback(1) == "v1"
    assert [h["reason"] for h in reg.history(1)] == ["promoted"] * 3 + ["rollback"] * 2 + ["promoted", "rollback"]


def test_rollback_without_an_earlier_version_is_an_error(tmp_path: Path, weights: Path) -> None:
    """A project with one served version cannot roll back."""
    reg = Registry(tmp_path)
    reg.publish(1, weights, {})
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback(1)


def test_rejected_candidate_is_kept_and_not_served(tmp_path: Path, weights: Path) -> None:
    """A candidate the gate rejects is stored with status "rejected" and CURRENT stays."""
    reg = Registry(tmp_path)
    reg.publish(3, weights, {})
    rejected = reg.publish(3, weights, {"promotion": {"promoted": False}}, promote=False)
    assert rejected.manifest["status"] == "rejected"
    assert reg.current_name(3) == "v1"
    assert reg.status(3, "v2") == "rejected" and reg.status(3, "v1") == "serving"


def test_a_torn_history_tail_is_skipped_and_the_next_entry_kept(tmp_path: Path, weights: Path) -> None:
    """A history line cut short by a crash is left out by every reader (rollback still works), and
    the next change of CURRENT starts on a line of its own instead of joining the torn one."""
    reg = Registry(tmp_path)
    for _ in range(3):
        reg.publish(1, weights, {})
    with open(tmp_path / "1" / "history.jsonl", "a") as fh:
        fh.write('{"version": "v9", "rea')  # the crash cut this append short
    assert [h["version"] for h in reg.history(1)] == ["v1", "v2", "v3"]
    assert reg.rollback(1) == "v2"
    assert [h["version"] for h in reg.history(1)] == ["v1", "v2", "v3", "v2"]
    assert reg.status(1, "v3") == "rolled back"


def test_an_emptied_manifest_degrades_instead_of_failing(tmp_path: Path, weights: Path) -> None:
    """A served version whose manifest a crash emptied still serves: ``current`` and
    ``list_versions`` return it with an empty manifest (default record) instead of raising."""
    reg = Registry(tmp_path)
    reg.publish(2, weights, {"task": "segment"})
    reg.publish(2, weights, {"task": "segment"})
    (tmp_path / "2" / "versions" / "v2" / "manifest.json").write_bytes(b"")
    served = reg.current(2)
    assert served is not None and served.name == "v2" and served.manifest == {}
    assert served.weights.is_file() and served.record.task == "detect"
    assert [v.name for v in reg.list_versions(2)] == ["v1", "v2"]
    assert reg.get(2, "v1").record.task == "segment"
    with pytest.raises(RegistryError, match="unreadable manifest"):
        reg.get(2, "v2")


def _in_another_process(code: str, root: Path) -> str:
    """Run ``code`` with ``reg = Registry(root)`` in a fresh Python process; its stdout."""
    script = "from pathlib import Path\nfrom labelloop.registry.store import Registry\n"
    script += f"reg = Registry(Path({str(root)!r}))\n{code}"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_current_moves_only_by_compare_and_swap_when_asked(tmp_path: Path, weights: Path) -> None:
    """set_current(expect=v) moves CURRENT only if it still names v: after another process rolled back,
    it raises CurrentMovedError with the version served now and changes neither CURRENT nor the history."""
    reg = Registry(tmp_path)
    for _ in range(2):
        reg.publish(1, weights, {})
    candidate = reg.publish(1, weights, {}, promote=False)
    assert _in_another_process("print(reg.rollback(1))", tmp_path).strip() == "v1"
    history = reg.history(1)
    with pytest.raises(CurrentMovedError) as moved:
        reg.set_current(1, candidate.name, expect="v2")
    assert moved.value.current == "v1" and reg.current_name(1) == "v1" and reg.history(1) == history
    reg.set_current(1, candidate.name, expect="v1")
    assert reg.current_name(1) == "v3"


def test_the_registry_lock_is_held_across_processes(tmp_path: Path, weights: Path) -> None:
    """While one process holds a project's registry lock, another process's set_current waits for it."""
    reg = Registry(tmp_path)
    reg.publish(1, weights, {})
    reg.publish(1, weights, {})
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom pathlib import Path\nfrom labelloop.registry.store import Registry\n"
            f"reg = Registry(Path({str(tmp_path)!r}))\n"
            "with reg.lock(1):\n    print('held', flush=True)\n    sys.stdin.readline()\n"
            "    reg.set_current(1, 'v1', reason='rollback')\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "held"
    waited = threading.Event()

    def promote() -> None:
        reg.set_current(1, "v2", expect="v1")  # passes only after the holder's rollback
        waited.set()

    thread = threading.Thread(target=promote)
    thread.start()
    holder.stdin.write("\n")
    holder.stdin.flush()
    holder.wait(timeout=60)
    thread.join(timeout=60)
    assert waited.is_set() and [h["version"] for h in reg.history(1)] == ["v1", "v2", "v1", "v2"]


def test_the_annotation_map_lives_beside_the_manifest_and_old_manifests_still_read(
    tmp_path: Path, weights: Path
) -> None:
    """publish writes the per-annotation map to annotations.json, not into manifest.json; a version written
    before that file existed (map embedded in its manifest) still reads its map."""
    reg = Registry(tmp_path)
    new = reg.publish(1, weights, {"task": "detect"}, annotations={"5": "2026-01-01T00:00:00Z"})
    manifest = json.loads((new.path / "manifest.json").read_text())
    assert "annotations" not in manifest
    assert new.annotations() == {"5": "2026-01-01T00:00:00Z"}
    old = reg.publish(1, weights, {})
    (old.path / "annotations.json").unlink()
    (old.path / "manifest.json").write_text(json.dumps({**old.manifest, "annotations": {"7": "t7"}}))
    assert reg.get(1, "v2").annotations() == {"7": "t7"}
    (tmp_path / "1" / "index.json").unlink()  # an older registry: no index either
    assert reg.summaries(1)[1]["annotations"] == 1


def test_listing_reads_the_index_and_rebuilds_it_when_it_is_wrong(tmp_path: Path, weights: Path) -> None:
    """summaries come from index.json (a listing opens no manifest); an index that is missing, torn or does not
    list exactly the version directories is rebuilt from the manifests."""
    reg = Registry(tmp_path)
    reg.publish(1, weights, {"metrics": {"map50_95": 0.1}}, annotations={str(i): "t" for i in range(3)})
    reg.publish(1, weights, {"metrics": {"map50_95": 0.2}}, promote=False)
    for v in ("v1", "v2"):
        (tmp_path / "1" / "versions" / v / "manifest.json").write_text("{}")  # listing must not read these
    listed = reg.summaries(1)
    assert [(e["version"], e["status"], e["metrics"], e["annotations"]) for e in listed] == [
        ("v1", "promoted", {"map50_95": 0.1}, 3),
        ("v2", "rejected", {"map50_95": 0.2}, 0),
    ]
    (tmp_path / "1" / "index.json").write_text('{"versions": [')  # torn
    assert [e["version"] for e in reg.summaries(1)] == ["v1", "v2"]
    shutil.copytree(tmp_path / "1" / "versions" / "v2", tmp_path / "1" / "versions" / "v3")  # not in the index
    assert [e["version"] for e in reg.summaries(1)] == ["v1", "v2", "v3"]
    assert [e["version"] for e in json.loads((tmp_path / "1" / "index.json").read_text())["versions"]] == [
        "v1",
        "v2",
        "v3",
    ]


def test_retention_keeps_the_newest_the_served_and_the_rollback_targets(tmp_path: Path, weights: Path) -> None:
    """prune deletes every version but the newest N, the served one and those the next rollbacks serve; each
    deletion is in the history (rollback skips nothing it needs) and version numbers go on from the newest."""
    reg = Registry(tmp_path)
    for i in range(6):
        reg.publish(1, weights, {}, promote=i in (0, 1, 2))  # v1..v3 served in turn, v4..v6 rejected
    (tmp_path / "1" / "versions" / ".tmp-0123").mkdir()  # a publish killed mid-copy
    assert reg.prune(1, keep_last=2) == ["v4"]  # v1: the second rollback's target
    assert not (tmp_path / "1" / "versions" / ".tmp-0123").exists()
    assert reg.prune(1, keep_last=1) == ["v1", "v5"]
    assert reg.version_names(1) == ["v2", "v3", "v6"]
    assert [e["version"] for e in reg.summaries(1)] == ["v2", "v3", "v6"]
    deleted = [e for e in reg.history(1, deletions=True) if e.get("event") == "deleted"]
    assert [(e["version"], e["reason"]) for e in deleted] == [
        ("v4", "retention"),
        ("v1", "retention"),
        ("v5", "retention"),
    ]
    assert [h["version"] for h in reg.history(1)] == ["v1", "v2", "v3"]  # history() stays CURRENT's changes
    assert reg.rollback(1) == "v2"
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback(1)  # v1 is gone
    assert reg.publish(1, weights, {}).name == "v7"
    assert reg.prune(1, keep_last=1) == ["v3", "v6"]  # v3 was rolled back from: no rollback serves it again
    assert reg.version_names(1) == ["v2", "v7"] and reg.rollback_target(1) == "v2"


@pytest.mark.parametrize(
    ("names", "stack", "current", "keep_last", "doomed"),
    [
        (["v1", "v2", "v3"], ["v1", "v2", "v3"], "v3", 1, ["v1"]),  # v3 newest and served, v2 the next rollback
        (["v1", "v2", "v3", "v4"], ["v1", "v2", "v3", "v4"], "v4", 1, ["v1", "v2"]),
        (["v1", "v2", "v3", "v4"], ["v1", "v2"], "v2", 1, ["v3"]),  # v4 (rolled back from) newest
        (["v1", "v2", "v3", "v4", "v5"], ["v1", "v3"], "v3", 2, ["v2"]),
        (["v1", "v2"], [], None, 0, ["v1"]),  # keep_last counts as 1: numbers are never reused
        (["v1", "v2", "v3"], ["v1", "v2", "v1"], "v1", 1, []),  # a repeat counts once among the targets
    ],
)
def test_the_retention_plan_keeps_the_newest_the_served_and_the_rollback_targets(
    names: list[str], stack: list[str], current: str | None, keep_last: int, doomed: list[str]
) -> None:
    """plan_retention deletes all but the newest keep_last, the served one and the next rollbacks'
    targets, oldest first."""
    from labelloop.registry.retention import plan_retention

    assert plan_retention(names, stack, current, keep_last) == doomed
