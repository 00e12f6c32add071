"""Is Label Studio still sending a project's annotations to labelloop? The project webhook's health.

When an ML backend is added to a project, Label Studio 1.23.2 creates a webhook to
``<ML backend URL>/webhook`` with ``send_payload`` and ``send_for_all_actions``
(``ml/models.py`` ``create_ml_webhook``). A person can delete or deactivate it
(``webhooks/`` app: ``Webhook.is_active``), and Label Studio Enterprise and newer servers switch
one off after consecutive failed deliveries (label-studio-sdk 2.1's
``Webhook.consecutive_failures``); labelloop then hears of annotations only at reconciliation.

Reconciliation (``labelloop.jobs.reconcile``) calls ``watch`` for each project: for each ML backend of the
project the webhook to its URL is looked up (``GET /api/ml/?project=``, ``GET
/api/webhooks/?project=``) and found ``ok``, ``missing``, ``inactive`` or ``failing``; a missing
one is created again as Label Studio creates it, with labelloop's webhook secret header when one
is set, and an inactive one switched back on (``PATCH /api/webhooks/{id}/`` with its
``actions`` resent: a PATCH without them clears them), when labelloop's token may (a refusal is
reported, not raised). The outcome is kept in Redis (``labelloop:project:<id>:webhook``, a JSON
``Check``, ``STATE_TTL_S``) for ``labelloop status``, ``doctor``, the project page and the
``labelloop_project_webhook_ok{project_id}`` gauge.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis
import structlog

log = structlog.get_logger(__name__)

STATE_TTL_S = 7 * 86400  # a project no longer reconciled loses its state after a week
OK, MISSING, INACTIVE, FAILING, NO_BACKEND = "ok", "missing", "inactive", "failing", "no_backend"


def state_key(project_id: int) -> str:
    """Redis key of a project's last webhook check."""
    return f"labelloop:project:{int(project_id)}:webhook"


@dataclass(frozen=True)
class Check:
    """One check of a project's webhook to labelloop.

    ``state``: what was found (``ok``, ``missing``, ``inactive``, ``failing``; ``no_backend``: the
    project has no ML backend, so no webhook is expected); ``url``: the webhook URL expected;
    ``rearmed``: labelloop created or re-activated it just now; ``detail``: why it is not
    ``ok`` and what labelloop did or could not do; ``at``: Unix seconds.
    """

    state: str
    url: str | None = None
    rearmed: bool = False
    detail: str = ""
    at: float = 0.0

    @property
    def ok(self) -> bool | None:
        """Whether annotations reach labelloop now (None: no webhook expected)."""
        if self.state == NO_BACKEND:
            return None
        return self.state == OK or self.rearmed


def _refused(exc: Exception) -> str | None:
    """The HTTP status of a label-studio-sdk ``ApiError``, as text; None for any other error."""
    from label_studio_sdk.core.api_error import ApiError

    return str(exc.status_code) if isinstance(exc, ApiError) else None


def check(client: Any, project_id: int, headers: dict[str, str] | None = None, rearm: bool = True) -> Check:
    """Find the project's webhook to its ML backend and, with ``rearm``, create or re-activate it.

    Args:
        client: a label-studio-sdk ``LabelStudio`` client.
        headers: the headers a re-created webhook sends (labelloop's webhook secret).

    Raises:
        label-studio-sdk's ``ApiError`` / httpx errors from the reads (call it inside
        ``labelstudio.calling``); a refused create or update is reported in the ``Check``.
    """
    backends = list(client.ml.list(project=project_id) or [])
    urls = [str(b.url).rstrip("/") + "/webhook" for b in backends if getattr(b, "url", None)]
    now = time.time()
    if not urls:
        return Check(NO_BACKEND, at=now)
    hooks = {str(h.url): h for h in client.webhooks.list(project=str(project_id)) or []}
    for url in urls:  # the first ML backend without a working webhook decides
        hook = hooks.get(url)
        if hook is None:
            return _create(client, project_id, url, headers, rearm, now)
        if getattr(hook, "is_active", True) is False:
            return _activate(client, project_id, hook, url, rearm, now)
        if failures := int(getattr(hook, "consecutive_failures", 0) or 0):
            return Check(FAILING, url, detail=f"{failures} deliveries in a row failed", at=now)
    return Check(OK, urls[0], at=now)


def _create(client: Any, project_id: int, url: str, headers: dict[str, str] | None, rearm: bool, now: float) -> Check:
    if not rearm:
        return Check(MISSING, url, detail="no webhook to the ML backend", at=now)
    try:
        client.webhooks.create(
            url=url,
            project=project_id,
            send_payload=True,
            send_for_all_actions=True,
            is_active=True,
            **({"headers": headers} if headers else {}),
        )
    except Exception as exc:
        if (status := _refused(exc)) is None:
            raise
        return Check(MISSING, url, detail=f"no webhook; labelloop's token may not create one (HTTP {status})", at=now)
    log.warning("project_webhook_rearmed", project_id=project_id, url=url, found=MISSING)
    return Check(MISSING, url, rearmed=True, detail="no webhook: labelloop created it again", at=now)


def _activate(client: Any, project_id: int, hook: Any, url: str, rearm: bool, now: float) -> Check:
    if not rearm:
        return Check(INACTIVE, url, detail="the webhook is switched off", at=now)
    try:
        client.webhooks.update(
            id=int(hook.id),
            url=url,
            is_active=True,
            actions=list(hook.actions or []),
            send_for_all_actions=hook.send_for_all_actions,
            send_payload=hook.send_payload,
        )
    except Exception as exc:
        if (status := _refused(exc)) is None:
            raise
        return Check(
            INACTIVE, url, detail=f"switched off; labelloop's token may not switch it on (HTTP {status})", at=now
        )
    log.warning("project_webhook_rearmed", project_id=project_id, url=url, found=INACTIVE)
    return Check(INACTIVE, url, rearmed=True, detail="switched off: labelloop switched it on again", at=now)


def record(client: redis.Redis, project_id: int, result: Check) -> None:
    """Keep ``result`` as the project's last check (``state_key``, ``STATE_TTL_S``)."""
    client.set(state_key(project_id), json.dumps(asdict(result)), ex=STATE_TTL_S)


def parse(raw: bytes | str | None) -> Check | None:
    """A ``Check`` from the JSON ``record`` wrote, or None (absent or unreadable)."""
    try:
        data = json.loads(raw) if raw else None
        return Check(**data) if isinstance(data, dict) else None
    except (TypeError, ValueError):
        return None


def last(client: redis.Redis, project_id: int) -> Check | None:
    """The project's last check, or None (never checked, expired or unreadable)."""
    return parse(client.get(state_key(project_id)))


def secret_headers(header: str, secret: str | None) -> dict[str, str] | None:
    """The headers a re-created webhook sends: ``{header: secret}``, or None without a secret."""
    return {header: secret} if secret else None


def watch(client: Any, store: redis.Redis, project_id: int, headers: dict[str, str] | None = None) -> Check:
    """``check`` the project's webhook (re-arming it), ``record`` the outcome and log
    ``project_webhook_checked`` (warning when not ``ok``, with the check's ``detail``: what was
    found and what labelloop did or could not do); returns the check.

    Raises:
        what ``check`` raises; redis-py's errors.
    """
    result = check(client, project_id, headers)
    record(store, project_id, result)
    event = log.info if result.state in (OK, NO_BACKEND) else log.warning
    event(
        "project_webhook_checked",
        project_id=project_id,
        state=result.state,
        rearmed=result.rearmed,
        url=result.url,
        detail=result.detail,
    )
    return result


def describe(result: Check | None) -> str:
    """One line for ``labelloop status`` and the project page."""
    if result is None:
        return "not checked yet (reconciliation checks it)"
    if result.state == NO_BACKEND:
        return "no ML backend connected in Label Studio"
    age = max(0, int(time.time() - result.at))
    if result.state == OK:
        return f"ok ({result.url}, checked {age} s ago)"
    return f"{result.state}: {result.detail} ({result.url}, {age} s ago)"
