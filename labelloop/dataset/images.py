"""A project's Ultralytics dataset from Label Studio: read the tasks, then build its images (or video
frames), incrementally; and the dataset room's public names, gathered in one place.

The build is composed of small collaborators, one module each:

* ``labelloop.dataset.sources``: where images come from (``Fetch``: the image cache, local files);
* ``labelloop.dataset.splits``: train/val by a hash of the task id;
* ``labelloop.dataset.classes``: stable class ids, ``classes.json``;
* ``labelloop.dataset.plan``: which annotation and image per task, and the folder's target state;
* ``labelloop.dataset.writer``: links, label files, fsyncs, the YAML, then the state file;
* ``labelloop.dataset.state``: the state file (``.labelloop-state.json``) and its typed records;
* ``labelloop.dataset.report``: ``DatasetReport`` (``report.json``) and ``BuildResult``;
* ``labelloop.dataset.build``: ``build_dataset``, plan then write (layouts in its docstring);
* ``labelloop.dataset.video``: the same for VideoRectangle projects (frames of videos).

This module reads a project from Label Studio (``build_project_dataset``, given a ``DatasetSource``)
and dispatches to the image or the video build. ``labelloop.jobs.datasets`` builds the source from
``Settings``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from labelloop.dataset.build import build_dataset
from labelloop.dataset.classes import load_class_names, stable_names, store_class_names
from labelloop.dataset.report import BuildResult, DatasetReport
from labelloop.dataset.sources import Fetch, cached_fetch, local_images
from labelloop.dataset.splits import assign_splits, val_score
from labelloop.dataset.state import STATE_FILE
from labelloop.events.changes import ChangeLog
from labelloop.ls_json import Task
from labelloop.paths import Paths
from labelloop.task_types.spec import TrainSpec

if TYPE_CHECKING:
    from labelloop.labelstudio.client import Connection
    from labelloop.labelstudio.media_types import MediaConfig
    from labelloop.registry.params import ParamDefaults

__all__ = [
    "STATE_FILE",
    "BuildResult",
    "DatasetReport",
    "DatasetSource",
    "Fetch",
    "assign_splits",
    "build_dataset",
    "build_project_dataset",
    "cached_fetch",
    "load_class_names",
    "local_images",
    "stable_names",
    "store_class_names",
    "val_score",
]


@dataclass(frozen=True)
class DatasetSource:
    """What a project's dataset build reads, and where it keeps things (``labelloop.jobs.datasets``
    builds it from ``Settings``).

    Attributes:
        label_studio: Label Studio's URL and token (the SDK client is made on first use).
        paths: ``<cache_dir>/datasets/<project>`` (tasks and dataset), the image and video caches,
            ``<models_dir>/<project>/params.json`` and ``classes.json``.
        media: the image downloads' configuration (``LABELLOOP_MEDIA_*``).
        video_media: the video downloads' (the same, with the video size and time limits).
        defaults: the environment's defaults under the project's extra params (``LABELLOOP_VAL_FRACTION``...).
        verify_s: seconds between full exports that check the recorded webhooks (``LABELLOOP_DATASET_VERIFY_S``).
        min_val_images: minimum validation images (``LABELLOOP_MIN_VAL_IMAGES``).
        video_frame_stride: every n-th frame of a video track (``LABELLOOP_VIDEO_FRAME_STRIDE``).
    """

    label_studio: Connection
    paths: Paths
    media: MediaConfig
    video_media: MediaConfig
    defaults: ParamDefaults
    verify_s: float
    min_val_images: int
    video_frame_stride: int


def build_project_dataset(
    source: DatasetSource,
    project_id: int,
    out_dir: Path | None = None,
    on_image: Callable[[], None] | None = None,
    changes: ChangeLog | None = None,
) -> BuildResult:
    """Read a project from Label Studio and build (or update) its Ultralytics dataset.

    Stages (seconds in the report): ``export`` (label config and tasks, incremental after the
    first build, from the recorded webhooks when ``changes`` is given and can stand in for
    Label Studio, see ``labelloop.labelstudio.export.sync_tasks``), ``download`` (images through
    ``labelloop.labelstudio.media.ImageCache``: cached by task id and URL, so a rebuild downloads only new
    images), ``build`` (files, updated in place). The control tag and task come from the
    project's label config and extra params (``control_tag``, ``obb``); class ids are stable
    for the project (``stable_names``) and stored in ``<models_dir>/<project>/classes.json``.

    Args:
        out_dir: the dataset folder; default ``<cache_dir>/datasets/<project>/yolo``.
        on_image: called once per image fetched or looked up in the image cache (progress
            bars); images unchanged since the last build into the same folder are not.

    Raises:
        DatasetError: Label Studio is not configured, or too little data is usable.
        LabelStudioUnavailable, LabelStudioError: Label Studio cannot be read (``labelloop.labelstudio.client``).
        LabelConfigError: the label config has nothing trainable, or is ambiguous.
    """
    from labelloop.events.changes import label_config_digest
    from labelloop.labelstudio.export import sync_tasks
    from labelloop.registry.params import load as load_params
    from labelloop.registry.params import train_spec

    paths = source.paths
    client = source.label_studio.client()
    params = load_params(paths.models_dir, project_id)
    effective = params.effective(source.defaults)
    home = paths.dataset_dir(project_id)
    with source.label_studio.calling(f"reading project {project_id}"):
        label_config, exported, sync = sync_tasks(
            client, project_id, home / "tasks.json", changes=changes, verify_every_s=source.verify_s
        )
    tasks: list[Task] = exported
    spec = train_spec(label_config, params)
    sync["label_config_sha1"] = label_config_digest(label_config)  # in the manifest: the model card's digest
    names = stable_names(load_class_names(paths.models_dir, project_id, spec.from_name), spec.labels)
    out = Path(out_dir) if out_dir is not None else home / "yolo"
    if spec.region_type == "videorectangle":  # frames of videos: labelloop.dataset.video
        report = DatasetReport(
            task=spec.task, tasks_exported=len(tasks), seconds={"export": sync.pop("seconds")}, sync=sync
        )
        splits = functools.partial(assign_splits, val_fraction=effective["val_fraction"], min_val=1)
        data = _build_video(source, tasks, spec, out, splits, names, report)
        result = BuildResult(data, spec, names, report, tasks)
    else:
        with contextlib.ExitStack() as stack:
            fetch = cached_fetch(stack, paths.images_dir, source.media, on_image)
            report = DatasetReport(seconds={"export": sync.pop("seconds")}, sync=sync)
            result = build_dataset(
                tasks, spec, out, fetch, effective["val_fraction"], source.min_val_images, names, report
            )
        result.tasks = tasks
    store_class_names(paths.models_dir, project_id, spec.from_name, names)
    return result


def _build_video(
    source: DatasetSource,
    tasks: list[Task],
    spec: TrainSpec,
    out: Path,
    splits: Callable[[list[int]], dict[int, str]],
    names: dict[int, str],
    report: DatasetReport,
) -> Path:
    """The video build (``labelloop.dataset.video``), its videos through the video cache."""
    from labelloop.dataset.video import build_video_dataset
    from labelloop.labelstudio.video_media import cached_video_fetch

    with contextlib.ExitStack() as stack:
        fetch = cached_video_fetch(stack, source.paths.videos_dir, source.video_media)
        return build_video_dataset(tasks, spec, out, fetch, splits, names, report, source.video_frame_stride)
