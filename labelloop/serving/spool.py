"""Predicted results spooled to disk while a pre-annotation ranks its tasks."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


class Spool:
    """Predicted ``result`` lists kept in a temporary file until they are imported (JSON lines;
    memory holds one offset and length per task, not its regions). Reads are positional
    (``os.pread``), so the import threads may read it at once."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self._spans: list[tuple[int, int]] = []
        self._end = 0

    def append(self, result: list[Any]) -> None:
        """Keep one task's ``result`` (any JSON list), after the ones kept before."""
        line = json.dumps(result).encode()
        written = 0
        while written < len(line):
            written += os.pwrite(self._file.fileno(), line[written:], self._end + written)
        self._spans.append((self._end, len(line)))
        self._end += len(line)

    def __getitem__(self, index: int) -> list[Any]:
        """The ``index``-th ``result`` kept (0-based, in ``append`` order)."""
        offset, length = self._spans[index]
        return list(json.loads(os.pread(self._file.fileno(), length, offset)))

    def close(self) -> None:
        """Delete the file (its space is freed at once)."""
        self._file.close()
