"""``labelloop models list``, ``promote``, ``rollback`` and ``sampling restore``: which version a
project serves, and the task sampling labelloop set in Label Studio."""

from __future__ import annotations

from labelloop.registry.curve import text_learning_curve
from labelloop.registry.store import Registry
from labelloop.settings import Settings
from service.page import project_view
from service.promotion import Served, serve
from workers.celery_app import create_celery


def models_list(settings: Settings, project_id: int) -> int:
    registry = Registry(settings.models_dir)
    current = registry.current_name(project_id)
    versions = registry.summaries(project_id)
    if not versions:
        print(f"project {project_id} has no model versions")
        return 0
    print(f"{'':2}{'version':<8} {'created':<21} {'parent':<7} {'train/val':<10} {'mAP50-95':>8}")
    for v in versions:
        size = v.get("dataset_size") or {}
        mark = "* " if v["version"] == current else "  "
        map_ = (v.get("metrics") or {}).get("map50_95")
        print(
            f"{mark}{v['version']:<8} {v.get('created_at') or '':<21} {v.get('parent') or '-':<7} "
            f"{size.get('train', 0)}/{size.get('val', 0):<8} {map_ if map_ is None else f'{map_:.4f}':>8}"
        )
    view = project_view(registry, project_id)
    print("\nlearning curve (annotations trained on; bar: '=' mAP50-95, '-' on to mAP50, full width 1.0):")
    for line in text_learning_curve(view.points):
        print("  " + line)
    return 0


def models_promote(settings: Settings, project_id: int, version: str) -> int:
    """Serve ``version`` once the predict workers have it (``service.promotion.serve``); prints
    what was served and whether its pre-annotation was queued."""
    served = serve(
        settings, Registry(settings.models_dir), create_celery(settings), project_id, version, "promoted by operator"
    )
    print(f"project {project_id} now serves {version}")
    _print_preannotation(served, project_id, version)
    return 0


def models_rollback(settings: Settings, project_id: int) -> int:
    """Serve the version served before the current one (``Registry.rollback_target``)."""
    registry = Registry(settings.models_dir)
    version = registry.rollback_target(project_id)
    served = serve(settings, registry, create_celery(settings), project_id, version, "rollback")
    print(f"project {project_id} rolled back to {version}")
    _print_preannotation(served, project_id, version)
    return 0


def _print_preannotation(served: Served, project_id: int, version: str) -> None:
    if served.preannotation == "queued":
        print(f"pre-annotation of project {project_id} with {version} queued")
    elif served.preannotation == "not queued":
        print(f"pre-annotation of project {project_id} with {version} not queued ({served.error})")


def sampling_restore(settings: Settings, project_id: int) -> int:
    """Put back the task sampling the project had before labelloop set "Uncertainty sampling"."""
    from labelloop.labelstudio import client as labelstudio
    from labelloop.labelstudio.sampling import restore

    with labelstudio.calling(settings.label_studio_url, f"restoring the sampling of project {project_id}"):
        previous = restore(
            labelstudio.client(settings.label_studio_url, settings.api_key), settings.models_dir, project_id
        )
    if previous is None:
        print(f"project {project_id}: labelloop has not changed its sampling (nothing to restore)")
        return 1
    print(f"project {project_id}: sampling restored to {previous!r}")
    return 0
