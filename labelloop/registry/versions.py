"""Reading the immutable version directories: ``ModelVersion`` and the reader that loads them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelloop.errors import RegistryError, VersionNotFoundError
from labelloop.manifest import Manifest
from labelloop.registry.layout import ANNOTATIONS, MANIFEST, WEIGHTS, Layout, is_version_name


@dataclass(frozen=True)
class ModelVersion:
    """One immutable model version of a project.

    ``manifest`` is the raw ``manifest.json`` (unknown keys kept); ``record`` its typed view.
    """

    project_id: int
    name: str
    path: Path
    manifest: dict[str, Any]

    @property
    def weights(self) -> Path:
        """Path of the version's Ultralytics weights file (best.pt of its training)."""
        return self.path / WEIGHTS

    @property
    def record(self) -> Manifest:
        """The manifest as a typed record (``labelloop.manifest.Manifest``)."""
        return Manifest.model_validate(self.manifest)

    def annotations(self) -> dict[str, str]:
        """Annotation id (text) -> ``updated_at`` of what the version was trained on.

        Read from ``annotations.json`` next to the manifest; a manifest written before that file
        existed embeds the map (``annotations``). Empty when neither can be read.
        """
        try:
            data = json.loads((self.path / ANNOTATIONS).read_text())
        except (OSError, ValueError):
            data = self.manifest.get("annotations")
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


class VersionReader:
    """Loads versions from their directories (``<project>/versions/v<N>/manifest.json``).

    Args:
        layout: the registry's paths.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def get(self, project_id: int, name: str) -> ModelVersion:
        """Load one version's manifest.

        Raises:
            VersionNotFoundError: ``name`` is not a version name, or there is no such version.
            RegistryError: its manifest cannot be read or parsed.
        """
        if not is_version_name(name):
            raise VersionNotFoundError(f"not a version name: {name!r}")
        path = self.layout.version_dir(project_id, name)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise VersionNotFoundError(f"project {project_id} has no version {name}") from None
        except (OSError, ValueError) as exc:
            raise RegistryError(f"project {project_id} version {name}: unreadable manifest ({exc})") from None
        return ModelVersion(int(project_id), name, path, manifest)

    def find(self, project_id: int, name: str) -> ModelVersion:
        """``get``, with an empty manifest when the manifest cannot be read (a crash emptied it).

        Raises:
            VersionNotFoundError: as ``get``.
        """
        try:
            return self.get(project_id, name)
        except VersionNotFoundError:
            raise
        except RegistryError:
            return ModelVersion(int(project_id), name, self.layout.version_dir(project_id, name), {})

    def list(self, project_id: int) -> list[ModelVersion]:
        """All published versions of a project, oldest first (an unreadable manifest reads as empty)."""
        return [self.find(project_id, n) for n in self.layout.version_names(project_id)]
