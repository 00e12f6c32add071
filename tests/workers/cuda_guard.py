"""Run ``service.cli`` with every entry into CUDA recorded: ``python tests/workers/cuda_guard.py
<log> <labelloop CLI args...>``.

Before anything else imports torch, ``torch.cuda`` is wrapped on import: each call of its
initialising or device-querying functions (``init``, ``_lazy_init``, ``is_available``,
``device_count``, ...) and of ``torch._C``'s CUDA entry points appends ``<pid> cuda <name>`` to
``<log>``; each fork of the process that started appends ``<pid> fork``. A process that forks
Celery's pool children must never appear with a ``cuda`` line (CUDA cannot be used in a child
forked after it was initialised; ``is_available`` already initialises the driver).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path
from typing import Any

WATCHED = (
    "init",
    "_lazy_init",
    "is_available",
    "device_count",
    "current_device",
    "set_device",
    "get_device_name",
    "get_device_properties",
    "mem_get_info",
    "synchronize",
    "empty_cache",
)
WATCHED_C = ("_cuda_init", "_cuda_getDeviceCount", "_cuda_setDevice", "_cuda_getDevice")


def main() -> int:
    log = Path(sys.argv[1])
    main_pid = os.getpid()

    def note(event: str) -> None:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {event}\n")

    def watch(owner: Any, name: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return

        @functools.wraps(original)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            note(f"cuda {name}")
            return original(*args, **kwargs)

        setattr(owner, name, recorded)

    class Guard(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            if name != "torch.cuda":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            assert spec is not None and spec.loader is not None
            execute = spec.loader.exec_module

            def exec_module(module: Any) -> None:
                execute(module)
                for fn in WATCHED:
                    watch(module, fn)
                for fn in WATCHED_C:
                    watch(sys.modules["torch._C"], fn)

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, Guard())
    os.register_at_fork(before=lambda: os.getpid() == main_pid and note("fork"))
    from service.cli import main as cli

    return cli(sys.argv[2:])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
