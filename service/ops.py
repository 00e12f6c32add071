"""Operator commands behind ``labelloop``, one module per concern (``service.ops_<concern>``):

- ``training``: ``dataset build``, ``train`` (optionally waiting with an epoch bar), ``cancel``;
- ``versions``: ``models list``, ``models promote``, ``models rollback``, ``sampling restore``;
- ``status``: queues, workers, running trainings, locks without owner, served versions;
- ``doctor``: every dependency checked, and the exposure checks the process commands run at
  start (``open_warning``, ``is_loopback``) beside the doctor's check that says the same
  (``credential_check``).

Each command takes the settings and plain arguments, prints for a person, and returns an exit
code (0 fine, 1 something is wrong); ``run`` turns labelloop's errors into one line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from labelloop.errors import LabelloopError


def run(func: Callable[[], int]) -> int:
    """Run an ops command, turning labelloop's errors into one line on stderr and exit code 1."""
    try:
        return int(func())
    except LabelloopError as exc:
        print(f"labelloop: error: {exc}", file=sys.stderr)
        return 1
