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

from labelloop.settings import Settings

log = structlog.get_logger(__name__)

NEGATIVE_TTL_S = 60.0
NEGATIVE_MAX = 4096
TIMEOUT_S = 0.5


class LabelStudioProjects:
    """Asks Label Studio whether labelloop's token can read a project (async, bounded).

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
        self._access: str | None = None
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
        except (httpx.HTTPError, ValueError) as exc:
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
                f"{self.base_url}/api/projects/{int(project_id)}/", headers={"Authorization": f"Token {token}"}
            )
        except httpx.HTTPError as exc:
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
        client = self._http()
        url = f"{self.base_url}/api/projects/{int(project_id)}/"
        resp = await client.get(url, headers=await self._auth(client))
        if resp.status_code == 401 and self._access is not None:
            self._access = None  # an expired access token: exchange the personal access token again
            resp = await client.get(url, headers=await self._auth(client))
        return resp.status_code == 200

    async def _auth(self, client: httpx.AsyncClient) -> dict[str, str]:
        token = self.api_key or ""
        if token.count(".") != 2:  # a legacy token; a personal access token is a JWT
            return {"Authorization": f"Token {token}"}
        if self._access is None:
            resp = await client.post(f"{self.base_url}/api/token/refresh/", json={"refresh": token})
            access = resp.json().get("access") if resp.status_code == 200 else None
            if not isinstance(access, str) or not access:
                raise ValueError(f"Label Studio refused the personal access token (HTTP {resp.status_code})")
            self._access = access
        return {"Authorization": f"Bearer {self._access}"}

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False, transport=self._transport)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
