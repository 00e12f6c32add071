"""Train/val split by a hash of the task id: a task stays on the same side across rebuilds."""

from __future__ import annotations

import hashlib

_HASH_SPACE = float(2**64)


def val_score(task_id: int) -> float:
    """A stable pseudo-random number in [0, 1) for a task id (first 8 bytes of its SHA-1)."""
    digest = hashlib.sha1(str(int(task_id)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / _HASH_SPACE


def assign_splits(task_ids: list[int], val_fraction: float, min_val: int) -> dict[int, str]:
    """Deterministic train/val split by a hash of the task id.

    A task is in val when ``val_score(id) < val_fraction``, so it stays on the same side
    across rebuilds. When fewer than ``min_val`` tasks fall in val, the train tasks with the
    smallest scores move over; at least one task always stays in train.

    Returns:
        task id -> "train" or "val".
    """
    split = {t: ("val" if val_score(t) < val_fraction else "train") for t in task_ids}
    val = [t for t, s in split.items() if s == "val"]
    want = min(min_val, max(0, len(task_ids) - 1))
    if len(val) < want:
        train_sorted = sorted((t for t, s in split.items() if s == "train"), key=val_score)
        for t in train_sorted[: want - len(val)]:
            split[t] = "val"
    if task_ids and all(s == "val" for s in split.values()):
        split[max(task_ids, key=val_score)] = "train"
    return split
