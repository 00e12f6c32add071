"""structlog configuration shared by the receiver, the workers and the CLI.

One JSON event per line when stderr is not a TTY; stdlib loggers (uvicorn, celery,
ultralytics) go through the same processors so every line has the same shape.
"""

from __future__ import annotations

import logging
import sys

import structlog

_configured = False


def configure_logging(level: str = "INFO", json: bool | None = None, process: str | None = None) -> None:
    """Configure structlog and the stdlib root logger once per process.

    Args:
        level: log level name for every logger.
        json: JSON lines when True, a console renderer when False; None picks JSON unless
            stderr is a TTY.
        process: bound into every event as ``process`` (e.g. "receiver", "worker").
    """
    global _configured
    if json is None:
        json = not sys.stderr.isatty()
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn.access is left as uvicorn configured it: off unless access logs were asked for.
    for name in ("uvicorn", "uvicorn.error", "celery", "ultralytics"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # One line per HTTP request the SDK or the image fetcher makes is noise unless debugging.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)
    if process:
        structlog.contextvars.bind_contextvars(process=process)
    _configured = True
