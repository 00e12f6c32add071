"""The store file of ``labelloop.labelstudio.export.sync_tasks``: its typed state, read and
written atomically, and reused in-process while nobody else wrote it.

The file is JSON (orjson), written by ``labelloop.files.write_atomic``; its keys have not changed
since it was introduced (``StoreState``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict

import orjson

from labelloop.events.changes import PositionRecord
from labelloop.files import write_atomic
from labelloop.ls_json import Task


class StoreState(TypedDict, total=False):
    """The store file of ``sync_tasks`` (JSON, keys as written since the first version): tasks by
    id as text, the label config, Label Studio's server time of the last read (epoch seconds),
    when the tasks were last verified against an export (epoch seconds), the change-log position
    (``Position.as_dict``) and the deleted annotation ids (sorted)."""

    server_time: float
    verified_at: float
    label_config: str
    tasks: dict[str, Task]
    deleted: list[int]
    changes: PositionRecord


class SyncInfo(TypedDict, total=False):
    """How ``sync_tasks`` read the project (see its Returns); a dataset build adds the label
    config's digest (``label_config_sha1``) and takes ``seconds`` out into its report."""

    mode: str
    tasks_fetched: int
    seconds: float
    changes: int
    confirmed: int
    disagreed: int
    corrected: int
    change_log: str
    label_config_sha1: str


# The state each store file was last written with by this process, keyed by its absolute path,
# with the file's (inode, size, mtime) then: a worker's next build reuses it instead of parsing
# the file again (~10 ms per 1,000 tasks). Taken out when read, so a state a failed sync may have
# changed is never reused; a file written by anyone else does not match and is parsed.
_WRITTEN: dict[str, tuple[tuple[int, int, int], StoreState]] = {}


def _signature(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def read_store(store: Path) -> StoreState:
    """The store's state (raises OSError, ValueError as reading and parsing it would)."""
    key = os.path.abspath(store)
    signature = _signature(key)
    kept = _WRITTEN.pop(key, None)
    if kept is not None and kept[0] == signature:
        return kept[1]
    state: StoreState = orjson.loads(Path(key).read_bytes())
    return state


def write_store(store: Path, state: StoreState) -> None:
    """Write the store atomically (``write_atomic``: temp file, fsync, rename) and keep ``state``
    for this process's next ``read_store`` of it."""
    key = os.path.abspath(store)
    write_atomic(Path(key), orjson.dumps(state))
    _WRITTEN[key] = (_signature(key), state)
