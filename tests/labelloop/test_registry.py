"""The model registry: immutable versions, an atomic CURRENT pointer, crash safety."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest

from labelloop.errors import RegistryError
from labelloop.registry import Registry


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
    with mock.patch("labelloop.registry.os.rename", side_effect=OSError("disk full")), pytest.raises(OSError):
        reg.publish(2, weights, {})
    assert reg.current_name(2) == "v1"
    assert sorted(p.name for p in (tmp_path / "2" / "versions").iterdir()) == ["v1"]


def test_crash_while_moving_current_keeps_the_old_pointer(tmp_path: Path, weights: Path) -> None:
    """If replacing CURRENT fails, the old pointer stays intact (no half-written file)."""
    reg = Registry(tmp_path)
    reg.publish(2, weights, {})
    with mock.patch("labelloop.registry.os.replace", side_effect=OSError("boom")), pytest.raises(OSError):
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
