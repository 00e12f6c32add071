"""The registry reads a models directory written by the layout before the split (tests/fixtures/registry-v0)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from labelloop.registry.store import Registry
from tests.factories import publish_version

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "registry-v0" / "models"
PROJECT = 3


@pytest.fixture
def old(tmp_path: Path) -> Registry:
    """A copy of the fixture's models directory (the tests may change it)."""
    shutil.copytree(FIXTURE, tmp_path / "models")
    return Registry(tmp_path / "models")


def test_versions_and_manifests_of_the_old_layout_are_read(old: Registry) -> None:
    """Every version directory is listed, its manifest, weights and annotation map read as written
    (v4's map embedded in its manifest went to annotations.json)."""
    assert old.projects() == [PROJECT]
    assert [v.name for v in old.list_versions(PROJECT)] == ["v1", "v2", "v3", "v4"]
    v4 = old.get(PROJECT, "v4")
    assert v4.manifest["parent"] == "v2" and v4.manifest["status"] == "promoted"
    assert v4.record.task == "detect" and v4.record.from_name == "label"
    assert v4.record.train_args == {"epochs": 5, "imgsz": 320}
    assert "annotations" not in v4.manifest
    assert v4.annotations() == {"1": "2026-01-01T00:00:00Z", "5": "2026-01-04T00:00:00Z"}
    assert v4.weights.read_bytes() == b"not-a-model-v4\n"
    assert old.get(PROJECT, "v3").manifest["status"] == "rejected"


def test_the_old_index_is_used_as_written(old: Registry) -> None:
    """The old index.json lists exactly the version directories: summaries come from it, unchanged
    and not rewritten."""
    path = old.project_dir(PROJECT) / "index.json"
    before = path.read_bytes()
    entries = old.summaries(PROJECT)
    assert entries == json.loads(before)["versions"]
    assert [(e["version"], e["status"], e["annotations"]) for e in entries] == [
        ("v1", "promoted", 2),
        ("v2", "promoted", 3),
        ("v3", "rejected", 4),
        ("v4", "promoted", 2),
    ]
    assert path.read_bytes() == before


def test_current_and_history_of_the_old_layout_resolve(old: Registry) -> None:
    """CURRENT (v2 after a rollback from v4) resolves; the history gives each version its status and
    the rollback stack."""
    assert old.current_name(PROJECT) == "v2" and old.served_name(PROJECT) == "v2"
    current = old.current(PROJECT)
    assert current is not None and current.weights.read_bytes() == b"not-a-model-v2\n"
    assert old.statuses(PROJECT, {e["version"]: e["status"] for e in old.summaries(PROJECT)}) == {
        "v1": "promoted",
        "v2": "serving",
        "v3": "rejected",
        "v4": "rolled back",
    }
    assert [h["reason"] for h in old.history(PROJECT)] == ["promoted", "promoted", "promoted", "rollback"]
    assert old.rollback_stack(PROJECT) == ["v1", "v2"]
    assert old.rollback_target(PROJECT) == "v1"


def test_retention_applies_to_the_old_layout(old: Registry) -> None:
    """prune(keep_last=1) on the old directory deletes only v3 (v4 is the newest, v2 served, v1 the
    next rollback's), drops it from the index (the other entries as they were) and records it."""
    index = old.project_dir(PROJECT) / "index.json"
    kept_entries = [e for e in json.loads(index.read_text())["versions"] if e["version"] != "v3"]
    assert old.prune(PROJECT, keep_last=1) == ["v3"]
    assert old.version_names(PROJECT) == ["v1", "v2", "v4"]
    assert json.loads(index.read_text())["versions"] == kept_entries
    last = old.history(PROJECT, deletions=True)[-1]
    assert (last["version"], last.get("event"), last["reason"]) == ("v3", "deleted", "retention")
    assert old.current_name(PROJECT) == "v2"


def test_a_publish_on_the_old_layout_continues_it(old: Registry, tmp_path: Path) -> None:
    """A new version on top of the old directory is v5, parented on the served v2, appended to the
    old index (its entries kept) and served."""
    index = old.project_dir(PROJECT) / "index.json"
    before = json.loads(index.read_text())["versions"]
    v5 = publish_version(old, PROJECT, b"new", metrics={"map50_95": 0.5})
    assert (v5.name, v5.manifest["parent"]) == ("v5", "v2")
    after = json.loads(index.read_text())["versions"]
    assert after[:4] == before and after[4]["version"] == "v5"
    assert old.current_name(PROJECT) == "v5" and old.rollback_target(PROJECT) == "v2"
