"""Factories the tests share: labelloop's settings (as an object and as a process environment), a
published model version, and a Label Studio project set up as the tests need it.

Each builds the real thing (a validated ``Settings``, a version directory written by the real
``Registry.publish``, a project in a real Label Studio) with the defaults most tests want; a test
passes only what it is about.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from labelloop.dev.demo import LabelStudioAPI
from labelloop.dev.synthetic import LABEL_CONFIG, LABELS, Sample, make_sample
from labelloop.dev.synthetic_video import GeneratedVideo, video_config
from labelloop.ls_json import Region
from labelloop.manifest import Manifest
from labelloop.registry.store import ModelVersion, Registry
from labelloop.settings import Settings

# Bytes enough for a version whose weights are never loaded (the registry only copies them).
FAKE_WEIGHTS = b"weights"

# A few-epoch model scores its boxes low: a tracker that starts tracks from low scores, so the test
# sees tracks at all (the settings' trackers start them at 0.25).
LOW_TRACKER = """tracker_type: bytetrack
track_high_thresh: 0.0005
track_low_thresh: 0.0001
new_track_thresh: 0.0005
track_buffer: 30
match_thresh: 0.8
fuse_score: True
"""


def make_settings(
    tmp_path: Path,
    *,
    redis_url: str | None = None,
    label_studio: tuple[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """labelloop's settings for a test: models and caches under ``tmp_path`` (``models``, ``cache``).

    Args:
        tmp_path: the test's directory.
        redis_url: the Redis to use (e.g. the ``redis_url`` fixture); unset: ``Settings``' default.
        label_studio: ``(url, token)`` as the ``label_studio`` fixture yields; unset: no Label Studio.
        overrides: any other ``Settings`` field (``imgsz=160``, ``train_every_n=4``...); they win
            over the above.

    Raises:
        pydantic.ValidationError: a field out of its range, as at start-up.

    Like every ``Settings``, ``LABELLOOP_*`` variables in the environment fill the fields not given.
    """
    fields: dict[str, Any] = {"models_dir": tmp_path / "models", "cache_dir": tmp_path / "cache"}
    if redis_url is not None:
        fields["redis_url"] = redis_url
    if label_studio is not None:
        fields["label_studio_url"], fields["label_studio_api_key"] = label_studio
    return Settings(**{**fields, **overrides})


def settings_env(
    tmp_path: Path,
    *,
    redis_url: str | None = None,
    label_studio: tuple[str, str] | None = None,
    **env: str,
) -> dict[str, str]:
    """The environment that gives a labelloop process (receiver, worker, CLI) the settings
    ``make_settings`` gives the test: ``LABELLOOP_MODELS_DIR``, ``LABELLOOP_CACHE_DIR`` under
    ``tmp_path``, ``LABELLOOP_REDIS_URL`` and ``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY`` when
    given, then ``env`` (variable names as they are, e.g. ``LABELLOOP_IMGSZ="160"``)."""
    out = {"LABELLOOP_MODELS_DIR": str(tmp_path / "models"), "LABELLOOP_CACHE_DIR": str(tmp_path / "cache")}
    if redis_url is not None:
        out["LABELLOOP_REDIS_URL"] = redis_url
    if label_studio is not None:
        out["LABEL_STUDIO_URL"], out["LABEL_STUDIO_API_KEY"] = label_studio
    return {**out, **env}


def publish_version(
    registry: Registry,
    project_id: int,
    weights: Path | str | bytes = FAKE_WEIGHTS,
    *,
    promote: bool = True,
    annotations: dict[str, str] | None = None,
    **manifest: Any,
) -> ModelVersion:
    """Publish the project's next version through ``Registry.publish``; returns it.

    Args:
        weights: a checkpoint to copy (e.g. the ``trained`` fixture's ``best``), or the bytes of the
            weights file (default: bytes that are no model, for versions never loaded).
        promote: served at once (else published "rejected", as the promotion gate does).
        annotations: annotation id -> updated_at the version was trained on.
        manifest: manifest fields (``labelloop.manifest.Manifest``). Defaults: ``task`` "detect",
            ``classes`` the generated images' labels (``labelloop.dev.synthetic.LABELS``), ``names``
            the class ids of ``classes`` (or ``classes`` the values of ``names`` when only those are
            given). No ``from_name``: the version answers whatever control tag asks.

    Raises:
        pydantic.ValidationError: a field ``Manifest`` does not take (a wrong type).
        RegistryError: ``weights`` is a path that does not exist.
    """
    names = manifest.get("names")
    classes = manifest.get("classes") or ([str(names[k]) for k in sorted(names, key=int)] if names else list(LABELS))
    fields = {"task": "detect", "classes": classes, "names": {str(i): c for i, c in enumerate(classes)}, **manifest}
    # Validated as the registry's readers read it; only the fields set here are written.
    body = Manifest.model_validate(fields).model_dump(mode="json", exclude_unset=True)
    if not isinstance(weights, bytes):
        return registry.publish(project_id, Path(weights), body, promote=promote, annotations=annotations)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.pt"
        path.write_bytes(weights)
        return registry.publish(project_id, path, body, promote=promote, annotations=annotations)


def image_project(
    api: LabelStudioAPI,
    title: str,
    samples: Sequence[Sample],
    *,
    annotate: int = 0,
    label_config: str = LABEL_CONFIG,
    result: Callable[[Sample], list[Region]] | None = None,
) -> tuple[int, list[int]]:
    """A Label Studio project of ``samples`` uploaded as image tasks, the first ``annotate`` annotated.

    Args:
        label_config: the project's label config (default: RectangleLabels ``label`` on ``image``).
        result: an annotation's result for a sample (default: the sample's boxes, ``ls_result()``).

    Returns:
        The project id and its task ids in the order of ``samples``.
    """
    pid = api.create_project(title, label_config)
    ids = api.import_images(pid, list(samples))
    for task_id, sample in list(zip(ids, samples, strict=True))[:annotate]:
        api.annotate(task_id, result(sample) if result else sample.ls_result())
    return pid, ids


def video_project(
    api: LabelStudioAPI, title: str, videos: Sequence[GeneratedVideo]
) -> tuple[int, list[int], dict[int, dict[str, Any]]]:
    """A Label Studio video project (``video_config()``) of ``videos`` uploaded as ``clip<i>.mp4``
    tasks: its id, the task ids in the order of ``videos``, and each task's data as listed."""
    pid = api.create_project(title, video_config())
    api.upload(pid, [(f"clip{i}.mp4", v.path.read_bytes(), "video/mp4") for i, v in enumerate(videos)])
    tasks: list[Any] = list(api.sdk.tasks.list(project=pid))
    by_name = {str(t.data["video"]).rsplit("-", 1)[-1]: int(t.id) for t in tasks}
    return pid, [by_name[f"clip{i}.mp4"] for i in range(len(videos))], {int(t.id): dict(t.data) for t in tasks}


def served_image_project(
    client: Any,
    title: str,
    base_url: str,
    tasks: int,
    *,
    annotate: int = 0,
    label_config: str = LABEL_CONFIG,
) -> tuple[int, list[int]]:
    """A Label Studio project of ``tasks`` tasks whose images are http URLs on the ``image_server``
    (``<base_url>/img<i % 12>.png``), the first ``annotate`` annotated with their truth.

    ``client`` is a label-studio-sdk client (e.g. one that records its requests). Returns the project
    id and its task ids in import order.
    """
    pid = int(client.projects.create(title=title, label_config=label_config).id)
    client.projects.import_tasks(
        id=pid, request=[{"data": {"image": f"{base_url}/img{i % 12}.png"}} for i in range(tasks)]
    )
    ids = sorted(int(t.id) for t in client.tasks.list(project=pid, fields="task_only"))
    for i, task_id in enumerate(ids[:annotate]):
        client.annotations.create(id=task_id, result=make_sample(i % 12, 160, 120).ls_result(), was_cancelled=False)
    return pid, ids


def connect_backend(
    api: LabelStudioAPI,
    project_id: int,
    receiver_url: str,
    *,
    basic_auth: tuple[str, str] | None = None,
    webhook_secret: str | None = None,
    extra_params: dict[str, Any] | None = None,
) -> int:
    """Connect labelloop's receiver at ``receiver_url`` as the project's ML backend, as a person does
    in Label Studio's settings; returns the ML backend's id.

    Label Studio then calls ``/setup`` (with the Basic credentials and extra params when given) and
    creates a webhook to ``<receiver_url>/webhook``, which gets the ``X-Labelloop-Secret`` header
    when ``webhook_secret`` is given. Label Studio gives ``/setup`` 3 s: a loaded machine can miss
    that, so a connection Label Studio found no valid ML backend at is tried up to 3 times.
    """
    from label_studio_sdk.core.api_error import ApiError

    for attempt in range(3):
        try:
            ml_id = api.connect_backend(project_id, receiver_url, basic_auth=basic_auth, extra_params=extra_params)
            break
        except ApiError as exc:
            if attempt == 2 or "valid ML backend" not in str(exc.body):
                raise
    if webhook_secret is not None:
        api.set_webhook_headers(project_id, receiver_url, {"X-Labelloop-Secret": webhook_secret})
    return ml_id
