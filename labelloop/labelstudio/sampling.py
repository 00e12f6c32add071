"""Label Studio's own label stream follows labelloop's order: the project's sampling.

Label Studio 1.23 Community serves "Label All Tasks" (``GET /api/projects/{id}/next/``) with
``label_studio/projects/functions/next_task.py``: when the project's ``sampling`` is
"Uncertainty sampling" and some unlabeled task holds a prediction of the project's
``model_version``, it serves, among the tasks with such a prediction, the one from the cluster
(prediction ``cluster``) the annotator has solved least, lowest prediction ``score`` first
(``_try_uncertainty_sampling``); otherwise a random task. labelloop writes a ``score`` (low =
label first) and a ``cluster`` on every prediction (``labelloop.serving.preannotate``), so it sets the
project's model version to the one its predictions carry, then the sampling
(``follow_labelloop``; two ``PATCH /api/projects/{id}/``, since Label Studio refuses a
``model_version`` with no predictions yet, and answers 400 to both in one body).

Reversible: the sampling found before labelloop changed it is kept in
``<models_dir>/<project>/sampling.json`` (``{"previous": ..., "set": ...}``) and logged
(``sampling_set``); ``restore`` (``labelloop sampling restore PROJECT``) puts it back. Off with
``LABELLOOP_SET_SAMPLING=false`` or the extra param ``"set_sampling": false``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import structlog

from labelloop.registry.store import ProjectFiles

log = structlog.get_logger(__name__)

UNCERTAINTY = "Uncertainty sampling"
FILE = "sampling.json"
# The model version of the first picks (``labelloop.serving.first_picks``): predictions with an empty result, a
# score and a cluster, until a version's pre-annotation replaces them.
FIRST_PICKS_VERSION = "labelloop-first-picks"


def stored(models_dir: Path, project_id: int) -> dict[str, Any]:
    """The project's sampling record (``{"previous", "set"}``), ``{}`` when there is none."""
    text = ProjectFiles(models_dir).read(project_id, FILE)
    try:
        record = json.loads(text) if text else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def follow_labelloop(
    client: Any, models_dir: Path, project_id: int, model_version: str, set_sampling: bool = True
) -> dict[str, Any]:
    """Make Label Studio's label stream serve labelloop's order: the project's model version becomes
    ``model_version`` (predictions of it must exist), then, with ``set_sampling``, its sampling
    "Uncertainty sampling".

    The sampling found before is recorded (``sampling.json``) whenever labelloop changes it, so
    ``restore`` can put it back; a project already on uncertainty sampling keeps its record.

    Args:
        client: a label-studio-sdk ``LabelStudio`` client (``labelloop.labelstudio.client.client``).

    Returns:
        ``{"model_version", "sampling", "previous"}`` (``sampling``/``previous`` None without
        ``set_sampling``).

    Raises:
        label-studio-sdk's ``ApiError`` / httpx errors (call it inside ``labelstudio.calling``).
    """
    client.projects.update(id=project_id, model_version=model_version)
    out: dict[str, Any] = {"model_version": model_version, "sampling": None, "previous": None}
    if not set_sampling:
        return out
    previous = getattr(client.projects.get(id=project_id), "sampling", None)
    out.update(sampling=UNCERTAINTY, previous=previous)
    if previous == UNCERTAINTY:
        return out
    ProjectFiles(models_dir).write(project_id, FILE, json.dumps({"previous": previous, "set": UNCERTAINTY}))
    client.projects.update(id=project_id, sampling=UNCERTAINTY)
    log.info("sampling_set", project_id=project_id, previous=previous, sampling=UNCERTAINTY, version=model_version)
    return out


def restore(client: Any, models_dir: Path, project_id: int) -> str | None:
    """Put back the sampling the project had before labelloop set it; returns it, or None when
    labelloop has nothing to restore (it never changed the sampling, or it was restored already).
    The record is then emptied: a later ``follow_labelloop`` records again.

    Raises:
        label-studio-sdk's ``ApiError`` / httpx errors.
    """
    previous = stored(models_dir, project_id).get("previous")
    if not previous:
        return None
    client.projects.update(id=project_id, sampling=previous)
    ProjectFiles(models_dir).write(project_id, FILE, json.dumps({}))
    log.info("sampling_restored", project_id=project_id, sampling=previous)
    return str(previous)


def delete_predictions(client: Any, project_id: int, version: str) -> None:
    """Delete every prediction of ``version`` in the project in one request
    (``DELETE /api/projects/{id}/model-versions/``, which label-studio-sdk does not wrap: sent
    with the SDK's own authenticated HTTP client).

    Raises:
        label-studio-sdk's ``ApiError`` on an error status.
    """
    from label_studio_sdk.core.api_error import ApiError

    resp = client._client_wrapper.httpx_client.request(
        f"api/projects/{int(project_id)}/model-versions/", method="DELETE", json={"model_version": version}
    )
    if resp.status_code >= 400:
        raise ApiError(status_code=resp.status_code, body=resp.text[:500])
