"""Which projects the receiver takes webhooks for: the projects labelloop knows.

A project is known once a ``/setup`` with valid credentials named it and Label Studio confirms
it (``confirms``: the ``/setup`` access_token or labelloop's own token reads it; without a
``LABEL_STUDIO_URL`` the credentials alone decide), once it has versions in the registry, or
once labelloop's own Label Studio token can read it (``GET /api/projects/<id>/`` on
``LABEL_STUDIO_URL``). Label Studio calls ``/setup`` when the ML backend is connected, and
again on its settings changes. Known projects are the Redis set
``labelloop:projects`` (``labelloop.events.ledger.PROJECTS_KEY``), which reconciliation walks.

A webhook for any other project id is refused (404, with the fix), so made-up project ids
cannot grow Redis. The Label Studio check runs at most once per unknown project every
``NEGATIVE_TTL_S`` seconds (refusals are remembered in memory, ``NEGATIVE_MAX`` at most), so a
flood of made-up ids costs Label Studio one request per id and minute, not one per webhook.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import httpx
import structlog

from labelloop.labelstudio.auth import LabelStudioAuth, TokenRefreshError
from labelloop.settings import Settings

log = structlog.get_logger(__name__)

NEGATIVE_TTL_S = 60.0
NEGATIVE_MAX = 4096
TIMEOUT_S = 0.5


class LabelStudioProjects:
    """Asks Label Studio whether labelloop's token can read a project (async, bounded).

    Tokens go through ``labelloop.labelstudio.auth.LabelStudioAuth`` (a legacy token as ``Token``;
    a personal access token exchanged, cached and refreshed once after a 401), to
    ``LABEL_STUDIO_URL``'s origin only.

    Args:
        settings: ``label_studio_url`` and ``label_studio_api_key``; without both, no project is
            readable this way (only ``/setup`` makes one known).
        transport: an httpx transport (tests inject faults with it); None: the default.
    """

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = settings.label_studio_url
        self.api_key = settings.api_key
        self._client: httpx.AsyncClient | None = None
        self._transport = transport
        # labelloop's token (a personal access token is exchanged and refreshed by the auth)
        self._auth = LabelStudioAuth(self.base_url, self.api_key) if self.base_url and self.api_key else None
        self._refused: OrderedDict[int, float] = OrderedDict()

    @property
    def configured(self) -> bool:
        return bool(self.base_url and self.api_key)

    async def readable(self, project_id: int) -> bool:
        """True when Label Studio answers 200 for the project with labelloop's token; False for
        any other answer, a timeout or no Label Studio configured (never raises)."""
        if not self.configured:
            return False
        now = time.monotonic()
        refused_at = self._refused.get(project_id)
        if refused_at is not None and now - refused_at < NEGATIVE_TTL_S:
            return False
        try:
            ok = await self._get_project(project_id)
        except (httpx.HTTPError, TokenRefreshError) as exc:
            log.info("project_check_failed", project_id=project_id, error_type=type(exc).__name__, error=str(exc)[:200])
            ok = False
        if not ok:
            self._refused[project_id] = now
            self._refused.move_to_end(project_id)
            while len(self._refused) > NEGATIVE_MAX:
                self._refused.popitem(last=False)
        return ok

    async def token_reads(self, project_id: int, token: str) -> bool:
        """True when ``token`` (a legacy token, as Label Studio puts its project creator's in
        ``/setup``'s ``access_token``) reads the project on ``LABEL_STUDIO_URL`` (never the
        ``hostname`` the request names); False for any other answer or a timeout."""
        if not self.base_url or not token:
            return False
        try:
            resp = await self._http().get(
                f"{self.base_url}/api/projects/{int(project_id)}/", auth=LabelStudioAuth(self.base_url, token)
            )
        except (httpx.HTTPError, TokenRefreshError) as exc:
            log.info("setup_token_check_failed", project_id=project_id, error_type=type(exc).__name__)
            return False
        return resp.status_code == 200

    async def confirms(self, project_id: int, access_token: str | None) -> bool:
        """True when Label Studio confirms the project exists for a ``/setup``: its
        ``access_token`` reads it, or labelloop's own token does (``readable``); never raises."""
        if access_token and await self.token_reads(project_id, access_token):
            return True
        return await self.readable(project_id)

    async def _get_project(self, project_id: int) -> bool:
        resp = await self._http().get(f"{self.base_url}/api/projects/{int(project_id)}/", auth=self._auth)
        return resp.status_code == 200

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False, transport=self._transport)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
