"""The registry's routes: version lists, a project's page and status, model files, promote and
rollback (behind the ML backend's credentials, ``service.auth.check_model``).

Routes:
    GET  /versions    model version names (Label Studio's model version list)
    GET  /projects/{id}  the project page (HTML: learning curve, per-class metrics, progress)
    GET  /projects/{id}/versions, /projects/{id}/status
    GET  /projects/{id}/versions/{version}/files/{name}  a version's weights or export, streamed
    POST /projects/{id}/promote {"version": "vN"}, /projects/{id}/rollback

Registry reads run in threads (never every manifest on the event loop); progress records come
from Redis within ``LABELLOOP_REDIS_TIMEOUT_S`` (they are a cache: absent when Redis is slow).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO, Any, TypedDict

import anyio
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from labelloop import keys
from labelloop.errors import BadRequestError
from labelloop.events import project_webhook
from labelloop.registry.model_export import download_path
from service.auth import check_model
from service.deps import AppState, authorize, check_origin, form_body, is_form, json_body, json_or_none, state
from service.page import project_view, render
from service.promotion import serve
from service.protocol import parse_project_id


class VersionItem(TypedDict):
    """One version in ``GET /projects/{id}/versions``: its registry index entry's fields
    (``labelloop.registry.store.Registry.summaries``; null when the entry lacks one) and its
    ``status`` (served, candidate, rejected, ... from ``Registry.statuses``)."""

    version: str
    status: str
    parent: str | None
    created_at: str | None
    metrics: dict[str, float] | None
    dataset_size: dict[str, int] | None
    promotion: dict[str, object] | None
    annotations: int | None


class VersionList(TypedDict):
    """``GET /projects/{id}/versions``: the served version's name (null: none) and every version,
    oldest first."""

    current: str | None
    versions: list[VersionItem]


async def versions(request: Request) -> JSONResponse:
    """Label Studio's ``GET /versions``: version names (it sends no project; ``?project=`` narrows)."""
    st = state(request)
    authorize(request, check_model)
    project = request.query_params.get("project")
    only = parse_project_id(project) if project else None

    def read() -> list[str]:
        projects = [only] if only is not None else st.registry.projects()
        return sorted({n for p in projects for n in st.registry.version_names(p)}, key=lambda n: int(n[1:]))

    return JSONResponse({"versions": await run_in_threadpool(read)})


async def project_versions(request: Request) -> JSONResponse:
    """Versions of a project with status, metrics and parent; the served one first in ``current``."""
    st = state(request)
    authorize(request, check_model)
    project_id = parse_project_id(request.path_params["project_id"])

    def read() -> VersionList:
        # The index (one small file) and one history read, in a thread: never every manifest on the loop.
        summaries = st.registry.summaries(project_id)
        statuses = st.registry.statuses(project_id, {e["version"]: e.get("status") or "rejected" for e in summaries})
        items = [
            VersionItem(
                version=e["version"],
                status=statuses[e["version"]],
                parent=e.get("parent"),
                created_at=e.get("created_at"),
                metrics=e.get("metrics"),
                dataset_size=e.get("dataset_size"),
                promotion=e.get("promotion"),
                annotations=e.get("annotations"),
            )
            for e in summaries
        ]
        return VersionList(current=st.registry.current_name(project_id), versions=items)

    return JSONResponse(await run_in_threadpool(read))


async def version_file(request: Request) -> Response:
    """A version's weights or a finished export's file (``labelloop.registry.model_export.downloads``),
    streamed: ``GET /projects/{id}/versions/{version}/files/weights.pt`` or ``.../files/onnx/weights.onnx``;
    404 for a version retention removed or a format not exported yet. The file is opened before the
    answer starts, so a retention that removes the version meanwhile does not cut it short."""
    st = state(request)
    authorize(request, check_model)
    project_id = parse_project_id(request.path_params["project_id"])
    version, name = request.path_params["version"], request.path_params["name"]

    def open_file() -> tuple[IO[bytes], int]:
        fh = download_path(st.registry, project_id, version, name).open("rb")
        return fh, os.fstat(fh.fileno()).st_size

    fh, size = await run_in_threadpool(open_file)

    def chunks() -> Iterator[bytes]:
        with fh:
            while chunk := fh.read(CHUNK_BYTES):
                yield chunk

    filename = f"project{project_id}-{version}-{name.replace('/', '-')}"
    headers = {"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)


CHUNK_BYTES = 1 << 20  # a download is streamed in chunks of this size (bounded memory per download)


async def promote(request: Request) -> Response:
    """Serve a given version: ``POST /projects/{id}/promote`` with ``{"version": "v3"}``, or the
    project page's form (``version=v3``; answered with a redirect back to the page)."""
    st = state(request)
    authorize(request, check_model)
    project_id = parse_project_id(request.path_params["project_id"])
    form = is_form(request)
    check_origin(request, form)
    body = await (form_body(request) if form else json_body(request))
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, str):
        raise BadRequestError('body must be {"version": "v<N>"}')
    await anyio.to_thread.run_sync(
        lambda: serve(st.settings, st.registry, st.celery, project_id, version, "promoted by operator")
    )
    return _back_to_page(project_id) if form else JSONResponse({"model_version": version})


async def rollback(request: Request) -> Response:
    """Serve the version served before the current one: ``POST /projects/{id}/rollback`` (the
    project page's form is answered with a redirect back to the page)."""
    st = state(request)
    authorize(request, check_model)
    project_id = parse_project_id(request.path_params["project_id"])
    form = is_form(request)
    check_origin(request, form)
    if form:
        await form_body(request)
    version = await run_in_threadpool(st.registry.rollback_target, project_id)
    await anyio.to_thread.run_sync(lambda: serve(st.settings, st.registry, st.celery, project_id, version, "rollback"))
    return _back_to_page(project_id) if form else JSONResponse({"model_version": version})


def _back_to_page(project_id: int) -> RedirectResponse:
    return RedirectResponse(f"/projects/{project_id}", status_code=303)


async def project_status(request: Request) -> JSONResponse:
    """Served version, running training (epoch, epochs, metrics) and pre-annotation progress."""
    st = state(request)
    authorize(request, check_model)
    project_id = parse_project_id(request.path_params["project_id"])
    training, preannotation = await _progress(st, project_id)
    version = await run_in_threadpool(st.registry.served_name, project_id)
    return JSONResponse(
        {
            "project_id": project_id,
            "model_version": version,
            "training": training,
            "preannotation": preannotation,
        }
    )


async def project_page(request: Request) -> HTMLResponse:
    """The project page (``service.page``): HTML, behind the same credentials as the other project routes."""
    st = state(request)
    authorize(request, check_model)
    project_id = parse_project_id(request.path_params["project_id"])
    view = await run_in_threadpool(project_view, st.registry, project_id)
    view.training, view.preannotation = await _progress(st, project_id)
    with anyio.move_on_after(st.settings.redis_timeout_s), contextlib.suppress(RedisError, OSError):
        view.webhook = project_webhook.parse(await st.redis.get(project_webhook.state_key(project_id)))
    view.base_url = str(request.base_url)
    return HTMLResponse(render(view), headers={"Content-Security-Policy": PAGE_POLICY})


# The page runs no script, loads nothing, posts forms only to the receiver and may not be framed
# (its buttons act with the browser's credentials: no clickjacking).
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'"


async def _progress(st: AppState, project_id: int) -> tuple[Any, Any]:
    """The running training's and pre-annotation's progress records from Redis (None when absent
    or when Redis does not answer in time: they are a cache)."""
    training = preannotation = None
    with anyio.move_on_after(st.settings.redis_timeout_s * 2):
        try:
            raw = await st.redis.mget(keys.progress(project_id), keys.preannotation(project_id))
            training, preannotation = (json_or_none(r) for r in raw)
        except (RedisError, OSError):
            pass
    return training, preannotation


def routes() -> list[Route]:
    """The registry's routes, in Starlette's routing."""
    return [
        Route("/versions", versions, methods=["GET"]),
        Route("/projects/{project_id}", project_page, methods=["GET"]),
        Route("/projects/{project_id}/versions", project_versions, methods=["GET"]),
        Route("/projects/{project_id}/versions/{version}/files/{name:path}", version_file, methods=["GET"]),
        Route("/projects/{project_id}/promote", promote, methods=["POST"]),
        Route("/projects/{project_id}/rollback", rollback, methods=["POST"]),
        Route("/projects/{project_id}/status", project_status, methods=["GET"]),
    ]
