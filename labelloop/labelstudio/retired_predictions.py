"""Delete from Label Studio the predictions of the model versions that retention removed.

Label Studio keeps every prediction of every model version for ever (one per task per
version). The registry's retention (``Registry.prune``) deletes old versions and records each
in the project's history (``{"version", "event": "deleted", "reason": "retention"}``); their
predictions stay in Label Studio, no longer servable, until this sweep deletes them.

The sweep needs no state of its own: it asks Label Studio which model versions its predictions
carry (``GET /api/projects/{id}/model-versions/``: ``{model_version: count}``,
``projects/api.py`` ``ProjectModelVersions`` in 1.23.2) and deletes those the registry's history
says retention removed (``DELETE`` on the same path, ``sampling.delete_predictions``). A sweep a
failure cut short is finished by the next one. Version names are never reused (retention keeps
the newest), so a retired name never means a live version.
"""

from __future__ import annotations

from typing import Any

import structlog

from labelloop.labelstudio.sampling import delete_predictions
from labelloop.registry.store import Registry

log = structlog.get_logger(__name__)


def retired(registry: Registry, project_id: int) -> set[str]:
    """Names of the project's versions that retention deleted (from the registry's history)."""
    return {e["version"] for e in registry.history(project_id, deletions=True) if e.get("event") == "deleted"}


def model_versions(client: Any, project_id: int) -> dict[str, int]:
    """``{model_version: predictions}`` of the project in Label Studio.

    Raises:
        label-studio-sdk's ``ApiError`` on an error status; httpx errors.
    """
    from label_studio_sdk.core.api_error import ApiError

    resp = client._client_wrapper.httpx_client.request(f"api/projects/{int(project_id)}/model-versions/", method="GET")
    if resp.status_code >= 400:
        raise ApiError(status_code=resp.status_code, body=resp.text[:500])
    body = resp.json()
    return {str(k): int(v or 0) for k, v in body.items()} if isinstance(body, dict) else {}


def sweep(client: Any, registry: Registry, project_id: int) -> list[str]:
    """Delete the predictions of every version retention removed that Label Studio still holds;
    returns those versions, sorted. Logs ``retired_predictions_deleted`` per version.

    Raises:
        label-studio-sdk's ``ApiError`` / httpx errors (call it inside ``labelstudio.calling``).
    """
    gone = retired(registry, project_id)
    if not gone:
        return []
    held = model_versions(client, project_id)
    deleted = []
    for version in sorted(v for v in gone if held.get(v)):
        delete_predictions(client, project_id, version)
        log.info("retired_predictions_deleted", project_id=project_id, version=version, predictions=held[version])
        deleted.append(version)
    return deleted
