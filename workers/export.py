"""Read a project out of Label Studio with label-studio-sdk: annotated tasks and their images.

Follows Label Studio's JSON export format
(https://labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from service.errors import DatasetError


def ls_client(url: str | None, api_key: str | None) -> Any:
    """A label-studio-sdk client; accepts a legacy token or a personal access token.

    Raises:
        DatasetError: the URL or the token is not configured.
    """
    if not url or not api_key:
        raise DatasetError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set to read projects")
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=url, api_key=api_key)


def export_tasks(client: Any, project_id: int) -> list[dict[str, Any]]:
    """Export the project's annotated tasks as Label Studio JSON (list of task dicts).

    Uses the SDK's synchronous export (``GET /api/projects/{id}/export?exportType=JSON``),
    which returns tasks that have at least one annotation, with ``annotations`` inline.
    """
    body = b"".join(client.projects.exports.download_sync(project_id, export_type="JSON"))
    tasks = json.loads(body or b"[]")
    if not isinstance(tasks, list):
        raise DatasetError(f"project {project_id}: export is not a list of tasks")
    return tasks


def select_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """Pick the annotation to train on: completed, not cancelled; ground truth first, else newest.

    Drafts are never part of ``annotations`` in an export; skipped tasks show up as
    cancelled annotations and are left out.

    Returns:
        the chosen annotation dict, or None when the task has no usable annotation.
    """
    usable = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not usable:
        return None
    return max(usable, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at") or ""), a.get("id", 0)))


def fetch_image(url: str, task_id: int, cache_dir: Path, hostname: str | None, api_key: str | None) -> Path:
    """Download (or reuse from ``cache_dir``) the image a task points at.

    Uses label-studio-sdk's ``get_local_path``, which resolves ``/data/upload/...``,
    ``/data/local-files/?d=...``, cloud storage URIs (through the task's presign endpoint)
    and plain http(s) URLs, authenticating to the Label Studio host with the token.

    Raises:
        OSError / requests errors: the image cannot be fetched.
    """
    from label_studio_sdk._extensions.label_studio_tools.core.utils.io import get_local_path

    cache_dir.mkdir(parents=True, exist_ok=True)
    return Path(get_local_path(url, cache_dir=str(cache_dir), hostname=hostname, access_token=api_key, task_id=task_id))


def fetch_images(
    items: list[tuple[int, str]],
    cache_dir: Path,
    hostname: str | None,
    api_key: str | None,
    threads: int = 8,
    on_done: Callable[[], None] | None = None,
) -> dict[int, Path | Exception]:
    """Fetch many task images concurrently with a bounded pool.

    Args:
        items: ``(task_id, url)`` pairs.
        on_done: called once per image, fetched or not (e.g. to advance a progress bar).

    Returns:
        task id -> local path, or the exception that prevented fetching it.
    """

    def one(item: tuple[int, str]) -> tuple[int, Path | Exception]:
        task_id, url = item
        try:
            return task_id, fetch_image(url, task_id, cache_dir, hostname, api_key)
        except Exception as exc:  # a bad image skips its task, it does not fail the build
            return task_id, exc
        finally:
            if on_done is not None:
                on_done()

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return dict(pool.map(one, items))
