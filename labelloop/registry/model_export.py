"""Exports of a model version for use outside labelloop: Ultralytics' own ``YOLO(...).export``.

Layout, inside the version's immutable directory (``labelloop.registry.store``)::

    versions/vN/exports/
        pt/           weights.pt  model_card.json
        onnx/         weights.onnx  model_card.json
        torchscript/  weights.torchscript  model_card.json
        openvino/     weights_openvino_model/ (Ultralytics' folder)  weights_openvino_model.zip  model_card.json
        .tmp-<uuid>/  an export in progress

An export is made in a fresh ``.tmp-`` directory and renamed to ``exports/<format>`` once its
files and card are written, so a reader sees a whole export or none, and a second export of the
same format finds it there and returns at once. A crash leaves at most a ``.tmp-`` directory,
which the next export of the version removes once it is older than the export timeout
(``sweep_stale``), or the version's removal takes with it (``Registry.prune`` deletes the whole
directory: retention removes exports with their version, nothing to do there). Two exports of one format at
once both work; the first rename wins, the second's directory is dropped.

Ultralytics runs in a child process (``python -m labelloop.registry.model_export JOB.json``), never in
the caller: the command line asks for exports and the receiver only serves the files
(``download_path``). The child runs with ``labelloop.yolo_env.prepare_ultralytics``
(``YOLO_OFFLINE=1``, ``YOLO_AUTOINSTALL=0``), and a format whose packages are not installed is
refused before the child starts (``MissingPackagesError``, naming them): nothing is installed
at run time; ``pip install -e '.[ml]'`` (``scripts/bootstrap.sh``) installs them.

No torch or ultralytics at import: the receiver imports this module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog

from labelloop.errors import BadRequestError, LabelloopError, RegistryError, VersionNotFoundError
from labelloop.files import fsync_dir, fsync_files, write_atomic
from labelloop.registry.model_card import CARD, ModelCard, model_card
from labelloop.registry.store import WEIGHTS, ModelVersion, Registry

log = structlog.get_logger(__name__)

EXPORTS = "exports"
EXPORT_TIMEOUT_S = 900  # one export on CPU takes seconds for yolov8n; openvino a minute at most
STALE_MARGIN_S = 60  # a .tmp- directory this long past the export timeout belongs to a dead process
# Format -> (the file or folder Ultralytics writes next to weights.pt, import names it needs, pip names).
FORMATS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "pt": (WEIGHTS, (), ()),
    "onnx": ("weights.onnx", ("onnx", "onnxslim", "onnxruntime"), ("onnx", "onnxslim", "onnxruntime")),
    "torchscript": ("weights.torchscript", (), ()),
    "openvino": ("weights_openvino_model", ("openvino",), ("openvino",)),
}


class UnknownFormatError(BadRequestError):
    """An export format labelloop does not offer (``FORMATS``)."""


class MissingPackagesError(LabelloopError):
    """The packages a format needs are not installed (labelloop never installs them at run time)."""


class ExportFailedError(LabelloopError):
    """Ultralytics' export failed or the child process died or timed out."""


class FileNotFound(VersionNotFoundError):
    """A version exists but has no such file to download (404)."""


@dataclass(frozen=True)
class ExportResult:
    """One export of a version.

    Attributes:
        version: the exported version's name.
        fmt: its format.
        directory: ``versions/<version>/exports/<fmt>``.
        file: the exported file or folder in ``directory`` (openvino: the folder).
        card: the model card (``labelloop.registry.model_card``), also in ``directory/model_card.json``.
        cached: whether it was already there.
        seconds: wall seconds this call took.
    """

    version: str
    fmt: str
    directory: Path
    file: Path
    card: ModelCard
    cached: bool
    seconds: float


def missing_packages(fmt: str) -> list[str]:
    """The pip names of the packages ``fmt`` needs that cannot be imported here (empty: ready).

    Raises:
        UnknownFormatError: not one of ``FORMATS``.
    """
    if fmt not in FORMATS:
        raise UnknownFormatError(f"unknown export format {fmt!r}: one of {', '.join(FORMATS)}")
    _, modules, pips = FORMATS[fmt]
    return [pip for module, pip in zip(modules, pips, strict=True) if importlib.util.find_spec(module) is None]


def export_dir(version: ModelVersion, fmt: str) -> Path:
    """Where ``fmt``'s export of ``version`` is cached (it exists once complete)."""
    return version.path / EXPORTS / fmt


def cached_export(version: ModelVersion, fmt: str) -> ExportResult | None:
    """The complete export of ``version`` in ``fmt``, or None (a card is written last)."""
    directory = export_dir(version, fmt)
    try:
        card = json.loads((directory / CARD).read_text())
    except (OSError, ValueError):
        return None
    return ExportResult(version.name, fmt, directory, directory / FORMATS[fmt][0], card, True, 0.0)


def export_version(
    registry: Registry,
    project_id: int,
    version: str | None,
    fmt: str,
    config_dir: Path,
    *,
    imgsz_override: int | None = None,
    project_show_conf: float | None = None,
    settings_show_conf: float | None = None,
    predict_conf: float = 0.25,
    timeout_s: float = EXPORT_TIMEOUT_S,
) -> ExportResult:
    """Export a version with Ultralytics in a child process, or return its cached export.

    Long because each way the export can end (cached, refused format, version removed meanwhile,
    another export winning the rename, a failed child) settles its temporary folder in one place.

    Args:
        version: the version's name; None: the served one.
        fmt: one of ``FORMATS``.
        config_dir: the child's ``YOLO_CONFIG_DIR`` (``labelloop.yolo_env``).
        imgsz_override, project_show_conf, settings_show_conf, predict_conf: what ``/predict``
            uses (the export's input size and the card's threshold; ``labelloop.registry.model_card``).

    Raises:
        UnknownFormatError: ``fmt`` is not offered.
        RegistryError: no version is served (``version`` None).
        VersionNotFoundError: no such version (or retention removed it during the export).
        MissingPackagesError: ``fmt``'s packages are not installed (named in the message).
        ExportFailedError: Ultralytics' export failed (its last output in the message).
    """
    t0 = time.monotonic()
    missing = missing_packages(fmt)
    name = version or registry.current_name(project_id)
    if name is None:
        raise RegistryError(f"project {project_id} serves no version: name one to export")
    mv = registry.get(project_id, name)
    if (hit := cached_export(mv, fmt)) is not None:
        log.info("model_export_cached", project_id=project_id, version=name, format=fmt)
        return hit
    if missing:
        raise MissingPackagesError(
            f"exporting to {fmt} needs {', '.join(missing)}, not installed: pip install {' '.join(missing)} "
            "(or pip install -e '.[ml]'); labelloop never installs packages at run time"
        )
    card = model_card(
        registry,
        mv,
        fmt,
        FORMATS[fmt][0],
        imgsz_override=imgsz_override,
        project_show_conf=project_show_conf,
        settings_show_conf=settings_show_conf,
        predict_conf=predict_conf,
    )
    exports = mv.path / EXPORTS
    try:
        exports.mkdir(exist_ok=True)
    except FileNotFoundError:
        raise VersionNotFoundError(f"project {project_id} has no version {name}") from None
    sweep_stale(exports, timeout_s)
    tmp = exports / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _write_files(mv, fmt, tmp, card, config_dir, timeout_s)
        # Synced before the rename and the folder after: a power cut never leaves a truncated
        # export that later calls would take for a finished one.
        fsync_files(p for p in tmp.rglob("*") if p.is_file())
        fsync_dir(tmp)
        try:
            os.rename(tmp, exports / fmt)
            fsync_dir(exports)
        except OSError:
            if not (exports / fmt / CARD).exists():  # not another export that won the race
                if not mv.path.is_dir():
                    raise VersionNotFoundError(f"project {project_id} version {name} was removed") from None
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.monotonic() - t0
    log.info("model_exported", project_id=project_id, version=name, format=fmt, seconds=round(seconds, 2))
    done = cached_export(mv, fmt)
    if done is None:
        raise VersionNotFoundError(f"project {project_id} version {name} was removed during the export")
    return ExportResult(done.version, fmt, done.directory, done.file, done.card, False, seconds)


def sweep_stale(exports: Path, timeout_s: float = EXPORT_TIMEOUT_S) -> list[str]:
    """Remove the ``.tmp-`` directories of exports that cannot still be running (last changed more
    than ``timeout_s`` + ``STALE_MARGIN_S`` ago: a process killed outright left them); returns their
    names. A live export's directory is younger: its child is killed at ``timeout_s``."""
    removed = []
    now = time.time()
    for path in exports.glob(".tmp-*"):
        try:
            stale = now - path.stat().st_mtime > timeout_s + STALE_MARGIN_S
        except FileNotFoundError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    if removed:
        log.info("model_export_swept", directory=str(exports), removed=removed)
    return removed


def _write_files(mv: ModelVersion, fmt: str, tmp: Path, card: ModelCard, config_dir: Path, timeout_s: float) -> None:
    """Fill ``tmp`` with ``fmt``'s files and the card (the card last)."""
    shutil.copyfile(mv.weights, tmp / WEIGHTS)
    if fmt != "pt":
        job = {"weights": str(tmp / WEIGHTS), "format": fmt, "imgsz": card["imgsz"], "config_dir": str(config_dir)}
        (tmp / ".job.json").write_text(json.dumps(job))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "labelloop.registry.model_export", str(tmp / ".job.json")],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                cwd=tmp,
                env=_child_env(),
            )
        except subprocess.TimeoutExpired:
            raise ExportFailedError(f"export to {fmt} did not finish in {timeout_s:.0f} s") from None
        (tmp / ".job.json").unlink(missing_ok=True)
        produced = tmp / FORMATS[fmt][0]
        if proc.returncode != 0 or not produced.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ExportFailedError(f"Ultralytics' export to {fmt} failed: " + " | ".join(tail)[-800:])
        (tmp / WEIGHTS).unlink()
        if produced.is_dir():  # one file to download
            shutil.make_archive(str(produced), "zip", root_dir=tmp, base_dir=produced.name)
    write_atomic(tmp / CARD, json.dumps(card, indent=2))
    os.chmod(tmp / CARD, 0o644)  # as readable as the weights beside it (write_atomic makes 0600)


def copy_out(result: ExportResult, out: Path) -> list[Path]:
    """Copy an export's files and folders (and its model card) into ``out`` (created; files of the
    same name replaced); returns the copied paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(result.directory.iterdir()):
        target = out / path.name
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(path, target)
        copied.append(target)
    return copied


def _child_env() -> dict[str, str]:
    """The environment of the export child: this one, with this labelloop first on its path (the
    child imports the same code as the caller, wherever it runs from)."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def download_path(registry: Registry, project_id: int, version: str, name: str) -> Path:
    """The file a download of ``name`` of ``version`` serves.

    Args:
        name: ``weights.pt`` (the version's own weights) or ``<format>/<file>`` of a finished
            export (``downloads``).

    Raises:
        VersionNotFoundError: no such version (404; also one retention removed).
        FileNotFound: the version has no such file, or that format was not exported yet (404).
    """
    mv = registry.get(project_id, version)
    path = downloads(mv).get(name)
    if path is None:
        exported = name.partition("/")[0] in FORMATS and "/" in name
        hint = (
            f": run labelloop models export {project_id} {version} --format {name.partition('/')[0]}"
            if exported
            else ""
        )
        raise FileNotFound(f"project {project_id} version {version} has no file {name!r}{hint}")
    return path


def downloads(version: ModelVersion) -> dict[str, Path]:
    """Every file of ``version`` that can be downloaded: ``{"weights.pt": path, "onnx/weights.onnx":
    path, "onnx/model_card.json": path, ...}`` (finished exports only, top-level files)."""
    out = {WEIGHTS: version.weights} if version.weights.is_file() else {}
    for fmt in FORMATS:
        directory = export_dir(version, fmt)
        try:
            if (directory / CARD).is_file():
                out.update({f"{fmt}/{p.name}": p for p in sorted(directory.iterdir()) if p.is_file()})
        except FileNotFoundError:  # retention removed the version meanwhile: nothing to list
            return {}
    return out


def _child(job_path: Path) -> int:
    """The child process: ``YOLO(weights).export(format=..., imgsz=..., dynamic=True)`` next to the
    weights, on the CPU (an export for any device; inputs of any height and width)."""
    job = json.loads(job_path.read_text())
    from labelloop.yolo_env import prepare_ultralytics

    prepare_ultralytics(Path(job["config_dir"]))
    # OpenVINO's converter sends usage data unless its consent file says no; unimportable, its own
    # stub stands in (openvino.tools.ovc.convert_impl): labelloop's exports stay offline.
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    from ultralytics.models import YOLO

    # dynamic: Ultralytics then letterboxes an exported model's input to the image's own aspect
    # (stride-aligned), as it does for the .pt that /predict runs; a fixed square input moves the boxes.
    YOLO(job["weights"]).export(format=job["format"], imgsz=int(job["imgsz"]), device="cpu", dynamic=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
