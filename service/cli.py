"""``labelloop``: the command line of the receiver, the workers, Flower and the demo.

labelloop serve     the receiver (uvicorn, factory service.app:create_app_from_env)
labelloop worker    a Celery worker for one or more queues (events, train, predict, preannotate)
labelloop flower    Flower, the Celery monitor
labelloop demo      the whole stack, with a local Label Studio and a demo project

No process starts with a credential still set to the examples' placeholder (CHANGE-ME); the
receiver warns (``receiver_open``) when it listens beyond loopback with no credential, and
Flower refuses to listen beyond loopback without Basic auth.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from pathlib import Path
from typing import Any, cast

from labelloop.settings import Settings


def _fail(message: str) -> int:
    """Refuse to start: the message on stderr, exit status 2 (as argparse's usage errors)."""
    print(f"labelloop: error: {message}", file=sys.stderr)
    return 2


def _refuse_placeholders(settings: Settings) -> int:
    """2 (after saying why) when a credential is still an example placeholder, else 0."""
    from service.auth import placeholder_credentials

    names = placeholder_credentials(settings)
    if not names:
        return 0
    return _fail(
        f"{', '.join(names)} still {'holds' if len(names) == 1 else 'hold'} the example's placeholder "
        "(CHANGE-ME): set real values in the environment or the labelloop-secrets Secret"
    )


def _serve(args: argparse.Namespace) -> int:
    import structlog
    import uvicorn

    from labelloop.logconfig import configure_logging
    from service.connections import HeaderTimeoutProtocol
    from service.ops_doctor import open_warning

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json, process="receiver")
    if refused := _refuse_placeholders(settings):
        return refused
    if warning := open_warning(settings, args.host):
        structlog.get_logger("service.cli").warning("receiver_open", host=args.host, detail=warning)
    # Connections that send no complete request head are closed after the header timeout;
    # requests in flight are bounded in the app (service.limits), not by uvicorn's
    # limit_concurrency, which counts idle connections too (503 for everyone while they stay).
    protocol = functools.partial(HeaderTimeoutProtocol, header_timeout_s=settings.header_timeout_s)
    uvicorn.run(
        "service.app:create_app_from_env",
        http=cast("type[asyncio.Protocol]", protocol),
        factory=True,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        workers=args.workers,
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    settings = Settings()
    if refused := _refuse_placeholders(settings):
        return refused
    port = args.metrics_port if args.metrics_port is not None else settings.worker_metrics_port
    if port:
        from workers.metrics import prepare_multiprocess_dir

        # Before anything imports prometheus-client: it reads the directory at import.
        prepare_multiprocess_dir(Path(settings.cache_dir) / "prometheus", args.queues.replace(",", "-"))

    from labelloop.logconfig import configure_logging
    from workers.celery_app import create_celery

    configure_logging(settings.log_level, settings.log_json, process=f"worker-{args.queues}")
    app = create_celery(settings, with_tasks=True)
    if port:
        from workers.metrics import install_worker_metrics

        install_worker_metrics(app, port)
    argv = [
        "worker",
        "--queues",
        args.queues,
        "--concurrency",
        str(args.concurrency),
        "--hostname",
        f"{args.queues.replace(',', '-')}@%h",
        "--loglevel",
        settings.log_level,
        "--task-events",
    ]
    if args.pool:
        argv += ["--pool", args.pool]
    app.worker_main(argv)
    return 0


def _beat(args: argparse.Namespace) -> int:
    from labelloop.logconfig import configure_logging
    from workers.celery_app import create_celery

    settings = Settings()
    if refused := _refuse_placeholders(settings):
        return refused
    configure_logging(settings.log_level, settings.log_json, process="beat")
    app = create_celery(settings)
    schedule = Path(settings.cache_dir).absolute() / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", settings.log_level, "--schedule", str(schedule)])
    return 0


def _flower(args: argparse.Namespace) -> int:
    import os

    from service.auth import is_placeholder
    from service.ops_doctor import is_loopback

    # Flower itself reads FLOWER_BASIC_AUTH too; checked here so that it never listens open.
    basic_auth = args.basic_auth or os.environ.get("FLOWER_BASIC_AUTH") or ""
    pairs = [pair.partition(":") for pair in basic_auth.split(",") if pair]
    if not pairs and not is_loopback(args.address):
        return _fail(
            f"Flower would listen on {args.address} without authentication: pass --basic-auth user:password "
            "(or set FLOWER_BASIC_AUTH), or listen on --address 127.0.0.1"
        )
    if any(not sep or not user or not password for user, sep, password in pairs):
        return _fail("Flower's basic auth must be user:password (comma-separated for several users)")
    if any(is_placeholder(password) for _, _, password in pairs):
        return _fail("Flower's basic-auth password is still the example's placeholder (CHANGE-ME): set a real one")

    from workers.celery_app import create_celery

    settings = Settings()
    if refused := _refuse_placeholders(settings):
        return refused
    app = create_celery(settings)
    argv = ["flower", f"--port={args.port}", f"--address={args.address}"]
    if basic_auth:
        argv.append(f"--basic-auth={basic_auth}")
    app.start(argv)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from labelloop.dev.demo import run_demo

    return run_demo(args)


def _ops(module: str, name: str) -> Any:
    """A handler that calls ``service.ops_<module>.<name>(settings, *args)`` with the parsed
    arguments (the module imported when the command runs: the command line starts fast)."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        from service.ops import run

        command = getattr(importlib.import_module(f"service.ops_{module}"), name)
        params = {k: v for k, v in vars(args).items() if k not in {"command", "func", "sub"}}
        return run(lambda: int(command(Settings(), **params)))

    return handler


def _dataset_build(args: argparse.Namespace) -> int:
    """``labelloop dataset build``: into OUT, or into the live training dataset only with ``--live``
    (a training builds there and Ultralytics reads it during the run)."""
    from service.ops import run
    from service.ops_training import dataset_build

    settings = Settings()
    live = settings.paths.dataset_dir(args.project_id) / "yolo"
    if args.out is None and not args.live:
        return _fail(f"give a folder to write the dataset into, or --live to update the training dataset ({live})")
    if args.out is not None and args.live:
        return _fail("give either a folder or --live, not both")
    if args.out is not None and args.out.absolute().resolve() == live.resolve():
        return _fail(f"{args.out} is the project's live training dataset: add --live (without the folder) to write it")
    return run(lambda: dataset_build(settings, args.project_id, args.out))


def _models_export(args: argparse.Namespace) -> int:
    """``labelloop models export``: Ultralytics' export in a child process, cached in the version's
    directory (``labelloop.registry.model_export``); prints where the files are."""
    from labelloop.registry.model_export import copy_out, export_version
    from labelloop.registry.params import load as load_params
    from labelloop.registry.store import Registry

    settings = Settings()
    params = load_params(settings.models_dir, args.project_id)
    result = export_version(
        Registry(settings.models_dir),
        args.project_id,
        args.version,
        args.fmt,
        settings.paths.yolo_config_dir,
        imgsz_override=params.effective(settings)["imgsz"],
        project_show_conf=params.show_conf,
        settings_show_conf=settings.show_conf,
        predict_conf=settings.predict_conf,
    )
    how = "cached" if result.cached else f"exported in {result.seconds:.1f} s"
    print(f"project {args.project_id} {result.version} as {args.fmt} ({how}): {result.file}")
    for path in copy_out(result, args.out) if args.out is not None else []:
        print(f"copied {path}")
    return 0


def _settings_table(args: argparse.Namespace) -> int:
    import re

    from service.settings_table import settings_table

    table = settings_table()
    if not args.write:
        print(table)
        return 0
    text = args.write.read_text()
    pattern = r"(<!-- settings-table:start -->\n).*?(\n<!-- settings-table:end -->)"
    new = re.sub(pattern, lambda m: m.group(1) + table + m.group(2), text, flags=re.S)
    if new == text and table not in text:
        print(f"{args.write} has no settings-table markers")
        return 1
    args.write.write_text(new)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``labelloop`` command line: one sub-parser per command, each bound to its handler.

    Long because it is the command line's declaration, one parser after another.
    """
    parser = argparse.ArgumentParser(
        prog="labelloop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the receiver (Label Studio ML backend API)")
    p.add_argument(
        "--host", default="0.0.0.0", help="bind address (beyond loopback, set credentials: see labelloop doctor)"
    )
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.set_defaults(func=_serve)

    p = sub.add_parser("worker", help="run a Celery worker")
    p.add_argument("--queues", "-Q", default="events,train,predict,preannotate", help="comma-separated queues")
    p.add_argument("--concurrency", "-c", type=int, default=1)
    p.add_argument("--pool", default=None, help="Celery pool (prefork, solo, threads)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.set_defaults(func=_worker)

    p = sub.add_parser("beat", help="run Celery beat: periodic reconciliation with Label Studio")
    p.set_defaults(func=_beat)

    p = sub.add_parser("flower", help="run Flower, the Celery monitor")
    p.add_argument("--port", type=int, default=5555)
    p.add_argument("--address", default="127.0.0.1", help="bind address (beyond loopback only with --basic-auth)")
    p.add_argument("--basic-auth", default=None, help="user:password (default: $FLOWER_BASIC_AUTH)")
    p.set_defaults(func=_flower)

    p = sub.add_parser("demo", help="run the whole stack on a demo project (local Label Studio if none is configured)")
    p.add_argument("--workdir", default="var/demo", help="where the demo keeps data and logs")
    p.add_argument("--images", type=int, default=40, help="demo images to import")
    p.add_argument("--annotate", type=int, default=12, help="images to annotate through the API per round")
    p.add_argument("--rounds", type=int, default=2, help="rounds of annotations (each trains a new version)")
    p.add_argument("--port", type=int, default=9090, help="receiver port")
    p.add_argument("--ls-port", type=int, default=8080, help="port of the local Label Studio")
    p.add_argument("--exit", action="store_true", help="stop once the loop has produced a version and predictions")
    p.set_defaults(func=_demo)
    p = sub.add_parser("dataset", help="datasets")
    dsub = p.add_subparsers(dest="sub", required=True)
    q = dsub.add_parser(
        "build",
        help="read a project from Label Studio and write its Ultralytics dataset into a folder (no training)",
    )
    q.add_argument("project_id", type=int)
    q.add_argument("out", type=Path, nargs="?", default=None, help="dataset folder, updated in place on rebuilds")
    q.add_argument(
        "--live",
        action="store_true",
        help="write the project's live training dataset (<cache_dir>/datasets/<project>/yolo) instead of OUT; "
        "only while no training of the project runs",
    )
    q.set_defaults(func=_dataset_build)

    p = sub.add_parser("train", help="request a training of a project now (like Label Studio's Start Training)")
    p.add_argument("project_id", type=int)
    p.add_argument("--wait", action="store_true", help="wait for the new version, with an epoch progress bar")
    p.set_defaults(func=_ops("training", "train"))

    p = sub.add_parser("cancel", help="cancel the running training of a project")
    p.add_argument("project_id", type=int)
    p.set_defaults(func=_ops("training", "cancel"))

    p = sub.add_parser("models", help="model versions: list, promote, rollback, export")
    msub = p.add_subparsers(dest="sub", required=True)
    q = msub.add_parser("list", help="list a project's versions (* marks the served one)")
    q.add_argument("project_id", type=int)
    q.set_defaults(func=_ops("versions", "models_list"))
    q = msub.add_parser("promote", help="serve a given version")
    q.add_argument("project_id", type=int)
    q.add_argument("version")
    q.set_defaults(func=_ops("versions", "models_promote"))
    q = msub.add_parser("rollback", help="serve the version served before the current one")
    q.add_argument("project_id", type=int)
    q.set_defaults(func=_ops("versions", "models_rollback"))
    q = msub.add_parser("export", help="export a version (default: the served one) with its model card")
    q.add_argument("project_id", type=int, metavar="PROJECT")
    q.add_argument("version", nargs="?", default=None, metavar="VERSION")
    q.add_argument("--format", dest="fmt", default="pt", choices=("pt", "onnx", "torchscript", "openvino"))
    q.add_argument("--out", type=Path, default=None, help="also copy the files and the model card into this folder")
    q.set_defaults(func=_models_export)

    p = sub.add_parser("sampling", help="the project's task sampling in Label Studio")
    ssub = p.add_subparsers(dest="sub", required=True)
    q = ssub.add_parser("restore", help='put back the sampling found before labelloop set "Uncertainty sampling"')
    q.add_argument("project_id", type=int, metavar="PROJECT")
    q.set_defaults(func=_ops("versions", "sampling_restore"))

    p = sub.add_parser("status", help="queues, workers, running trainings with epoch progress, served versions")
    p.set_defaults(func=_ops("status", "status"))

    p = sub.add_parser("doctor", help="check Redis, Label Studio URL and token, GPU, models and cache dirs")
    p.set_defaults(func=_ops("doctor", "doctor"))

    p = sub.add_parser("settings-table", help="print README's configuration table (generated from the settings)")
    p.add_argument("--write", type=Path, default=None, help="replace the table between the markers in this file")
    p.set_defaults(func=_settings_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a labelloop error (Label Studio or Redis unreachable, a refused token, ...)
    is one line on stderr saying what to fix, exit status 1, never a traceback."""
    from labelloop.errors import LabelloopError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LabelloopError as exc:
        print(f"labelloop: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
