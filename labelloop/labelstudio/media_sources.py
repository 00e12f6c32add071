"""What a task's image URL names: a file of a mounted Label Studio folder, or a URL to download.

A task's image URL is one of (Label Studio docs: https://labelstud.io/guide/storage,
https://labelstud.io/guide/tasks#Import-data):

- ``/data/upload/<project>/<file>``: a file uploaded to Label Studio; read from disk under
  ``media_dir`` (Label Studio's media folder, ``<LABEL_STUDIO_BASE_DATA_DIR>/media``, when it
  is mounted here), otherwise downloaded from the Label Studio URL with the API key.
- ``/data/local-files/?d=<path>``: a Local Storage file
  (https://labelstud.io/guide/storage#Local-storage); read from disk under
  ``document_root`` (Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``, when it is mounted here),
  otherwise downloaded from Label Studio with the API key.
- ``s3://``, ``gs://``, ``azure-blob://`` URIs of a project's cloud storage; resolved by Label
  Studio's presign endpoint ``GET /tasks/<task_id>/presign/?fileuri=<base64url(uri)>``, which
  redirects (303) to a signed URL, or streams the object itself when the storage has
  presigned URLs turned off.
- ``http(s)://`` URLs: on the Label Studio host (one of the media paths below, sent with the API
  key), or on a host listed in ``allow_hosts`` (sent without it; ``media_guard`` decides).

The API key is only ever sent to Label Studio's media paths (``MEDIA_PATHS``), checked once
percent-decoded and refused with a ``.``, ``..`` or empty segment (``media_path_refusal``); a task
path that is not one of them is refused before any request. A path of a mounted folder that
resolves outside it, symlinks included, is refused.
"""

from __future__ import annotations

import base64
import os
import posixpath
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import structlog

from labelloop.labelstudio.media_types import MediaConfig, MediaError

log = structlog.get_logger(__name__)

#: Label Studio's cloud storage URI schemes, resolved through its presign endpoint.
CLOUD_SCHEMES = ("s3:", "gs:", "azure-blob:")

#: Label Studio's paths that serve task media, the only ones requested with the API key: (name,
#: path once percent-decoded, query parameter it needs). Label Studio 1.23: ``data_import/urls.py``
#: (uploads; ``/storage-data/uploaded/`` when uploads are kept in cloud storage) and
#: ``io_storages/urls.py`` (Local Storage; cloud URIs resolved by ``/resolve/`` or the older
#: ``/presign/``, for a task or a project).
MEDIA_PATHS = (
    ("upload", re.compile(r"/data/upload/.+"), None),
    ("local-files", re.compile(r"/data/local-files/?"), "d"),
    ("storage-data", re.compile(r"/storage-data/uploaded/?"), "filepath"),
    ("presign", re.compile(r"/(?:tasks|projects)/[0-9]+/(?:presign|resolve)/?"), "fileuri"),
)
_MEDIA_PATHS_SHOWN = (
    "/data/upload/..., /data/local-files/?d=..., /storage-data/uploaded/?filepath=..., "
    "/tasks/<id>/presign/?fileuri=... and /projects/<id>/presign/?fileuri=... (or .../resolve/)"
)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def shown(url: str) -> str:
    """A URL for messages: no query string (signatures), at most 200 characters."""
    parts = urlsplit(url)
    text = f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else parts.path
    if parts.query and not parts.scheme:  # task paths such as /data/local-files/?d=... keep their query
        text += "?" + parts.query
    return text if len(text) <= 200 else text[:197] + "..."


def presign_path(task_id: int, uri: str) -> str:
    """Label Studio's presign path for a cloud URI of a task (1.23: ``io_storages/urls.py``;
    ``fileuri`` is base64url, as ``TaskResolveStorageUri`` decodes it)."""
    fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
    return f"/tasks/{int(task_id)}/presign/?fileuri={fileuri}"


def local_files_rel(url: str) -> str:
    """The ``?d=`` path of a ``/data/local-files/`` URL, decoded once, last value winning (as
    Label Studio's ``localfiles_data`` view reads it)."""
    values = parse_qs(urlsplit(url).query, keep_blank_values=True).get("d")
    return values[-1] if values else ""


def media_path_refusal(path: str, query: str = "") -> str | None:
    """Why a request for ``path`` (relative to Label Studio's base URL) must not be sent the API
    key, or None when it is one of Label Studio's media paths (``MEDIA_PATHS``).

    The path is checked as a server would route it, percent-decoded (until it no longer changes,
    so a double-encoded ``%252e%252e`` counts as ``..``), and must have no ``.``, ``..`` or empty
    segment and no backslash: ``/data/upload/../../api/users`` cannot reach the API. Messages
    name the path, never the query.
    """
    decoded = path
    for _ in range(4):
        step = unquote(decoded)
        if step == decoded:
            break
        decoded = step
    else:
        return f"path percent-encoded more than 3 times: {shown(path)}"
    segments = decoded.split("/")
    if (
        not decoded.startswith("/")
        or "\\" in decoded
        or "\x00" in decoded
        or any(seg in (".", "..") for seg in segments)
        or "" in segments[1:-1]
    ):
        return f"path escapes Label Studio's media paths ('.', '..' or empty segment once decoded): {shown(path)}"
    for name, pattern, param in MEDIA_PATHS:
        if pattern.fullmatch(decoded):
            if param is not None and param not in parse_qs(query, keep_blank_values=True):
                return f"{name} URL has no ?{param}=: {shown(path)}"
            return None
    return (
        f"not a Label Studio media path, so it is not requested with the API key (allowed: {_MEDIA_PATHS_SHOWN}): "
        + shown(path)
    )


@dataclass(frozen=True)
class LocalFile:
    """A task's image in a mounted folder: ``path`` resolved and under the folder, ``rel`` as
    the task names it and ``what`` the folder (for messages), ``link`` whether the cache may
    hard-link it."""

    path: Path
    rel: str
    what: str
    link: bool


class Sources:
    """Where the bytes of a task's image URL are (see the module docstring).

    Args:
        config: ``label_studio_url`` (the origin and base path of Label Studio URLs),
            ``document_root`` and ``media_dir`` (mounted folders; ``/`` is ignored: it would
            expose every file) and ``max_bytes`` (a mounted file over it is refused).

    Raises:
        ValueError: ``label_studio_url`` is not an http(s) URL.
    """

    def __init__(self, config: MediaConfig) -> None:
        self.ls_origin = origin(config.label_studio_url) if config.label_studio_url else None
        if config.label_studio_url and self.ls_origin is None:
            raise ValueError(f"label_studio_url must be an http(s) URL: {config.label_studio_url!r}")
        self.ls_base = (config.label_studio_url or "").rstrip("/")
        self._max_bytes = config.max_bytes
        root = Path(config.document_root).resolve() if config.document_root else None
        if root is not None and root == Path(root.anchor):
            log.warning("media_document_root_ignored", document_root=str(root), reason="it would expose every file")
            root = None
        self._root = root
        media = Path(config.media_dir).resolve() / "upload" if config.media_dir else None
        self._uploads = media if media is not None and media != Path(media.anchor) else None

    def locate(self, task_id: int, url: str) -> LocalFile | str:
        """Where the bytes ``url`` names are: a file of a mounted folder, or the URL to download
        (absolute; a Label Studio path is joined to ``label_studio_url``).

        Raises:
            MediaError: no URL, an unsupported scheme, a Label Studio path that is not one of
                its media paths or escapes a mounted folder, or one that needs
                ``LABEL_STUDIO_URL`` when none is set.
        """
        if not url:
            raise MediaError("task has no image URL")
        if url.startswith(("upload/", "/upload/")):  # older exports store the upload key itself
            url = "/data/" + url.lstrip("/")
        low = url.lower()
        if low.startswith(CLOUD_SCHEMES):
            return self._ls_url(presign_path(task_id, url), url)
        if url.startswith("/"):
            path, _, query = url.split("#", 1)[0].partition("?")
            refusal = media_path_refusal(path, query)
            if refusal is not None:
                raise MediaError(refusal)
            local = None
            if url.startswith("/data/local-files"):
                local = self._read_local(url)
            elif url.startswith("/data/upload/"):
                local = self._read_upload(url)
            return local if local is not None else self._ls_url(url, url)
        where = origin(url)
        if where is None:
            raise MediaError(f"unsupported image URL (not http(s), /data/..., or a cloud URI): {shown(url)}")
        if where == self.ls_origin:
            path = urlsplit(url).path
            local = None
            if path.startswith("/data/local-files"):
                local = self._read_local(url)
            elif path.startswith("/data/upload/"):
                local = self._read_upload(path)
            if local is not None:
                return local
        return url

    def _ls_url(self, path: str, task_url: str) -> str:
        if not self.ls_base:
            raise MediaError(f"LABEL_STUDIO_URL is needed to fetch {shown(task_url)}")
        return self.ls_base + path

    def _read_local(self, url: str) -> LocalFile | None:
        """A Local Storage file under ``document_root``; None when it is not there (then Label
        Studio serves it). A ``?d=`` path that climbs out of the root is refused with or without
        a document root, before any request. Copied, never linked: files there are the user's,
        and may be rewritten in place."""
        rel = local_files_rel(url)
        if not rel:
            raise MediaError(f"local-files URL has no ?d= path: {shown(url)}")
        if "\x00" in rel:
            raise MediaError("local-files path contains a NUL byte")
        # The view's own normalization: "?d=" is always relative to the root
        norm = posixpath.normpath(rel).lstrip("/")
        if norm == ".." or norm.startswith("../"):
            raise MediaError(f"local-files path escapes the document root: {rel!r}")
        if self._root is None:
            return None
        return self._under(self._root, norm, rel, "the document root", link=False)

    def _read_upload(self, url: str) -> LocalFile | None:
        """An uploaded file under ``media_dir``; None when no media folder is mounted or the file
        is not there (then Label Studio serves it). Label Studio never rewrites an upload (a new
        one gets a new name), so it may be hard-linked."""
        if self._uploads is None:
            return None
        rel = unquote(urlsplit(url).path[len("/data/upload/") :])
        norm = posixpath.normpath(rel).lstrip("/")
        if "\x00" in rel or norm == ".." or norm.startswith("../"):
            raise MediaError(f"upload path escapes the media folder: {rel!r}")
        return self._under(self._uploads, norm, rel, "the media folder", link=True)

    def _under(self, root: Path, norm: str, rel: str, what: str, link: bool) -> LocalFile | None:
        """``norm`` (normalized, relative, no ``..``) as a file under ``root`` (resolved).

        Each component is checked with ``lstat``: without a symlink on the way, the path is
        its own resolved path. A symlink makes it resolved in full and checked to be under
        ``root`` (then it may be followed, as Label Studio would).
        """
        path = str(root)
        info: os.stat_result | None = None
        for part in norm.split("/"):
            path = os.path.join(path, part)
            try:
                info = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                info = None
                break
            if stat.S_ISLNK(info.st_mode):
                candidate = (root / norm).resolve()
                if not candidate.is_relative_to(root):
                    raise MediaError(f"path escapes {what}: {rel!r}")
                path = str(candidate)
                try:
                    info = os.stat(path)
                except (FileNotFoundError, NotADirectoryError):
                    info = None
                break
        if info is None or not stat.S_ISREG(info.st_mode):
            if self.ls_base:
                return None
            raise MediaError(f"file not found under {what}: {rel!r}")
        if info.st_size > self._max_bytes:
            raise MediaError(f"image is larger than {self._max_bytes} bytes: {rel!r}")
        return LocalFile(Path(path), rel, what, link)
