"""Calling Label Studio: the SDK client, and the one translation of its failures into labelloop
errors that say what to fix.

Every call labelloop makes to Label Studio's API goes through ``client(url, key)`` inside
``calling(url, doing)``: a connection failure, a timeout or a 5xx becomes
``LabelStudioUnavailable`` (transient: Celery tasks retry it), a refused token (401/403) or a
missing project (404) a ``LabelStudioError`` naming the setting to check. Image downloads have
their own guarded client (``labelloop.labelstudio.media``), with the token by
``labelloop.labelstudio.auth``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from labelloop.errors import DatasetError, LabelStudioError, LabelStudioUnavailable

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio


def client(url: str | None, api_key: str | None) -> LabelStudio:
    """A label-studio-sdk client (``label_studio_sdk.LabelStudio``); accepts a legacy token or
    a personal access token, handled by the SDK itself (``label_studio_sdk/tokens/client_ext.py``
    exchanges a personal access token at ``/api/token/refresh/`` and again before the access
    token expires), so not by ``labelloop.labelstudio.auth``, which labelloop's own httpx clients
    use.

    Raises:
        DatasetError: the URL or the token is not configured.
    """
    if not url or not api_key:
        raise DatasetError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set to read projects")
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=url, api_key=api_key)


@contextlib.contextmanager
def calling(url: str | None, doing: str) -> Iterator[None]:
    """Translate the failures of the Label Studio calls made inside the block.

    Args:
        url: Label Studio's base URL (named in the messages).
        doing: what the calls do, e.g. "reading project 7".

    Raises:
        LabelStudioUnavailable: unreachable, timed out or a 5xx.
        LabelStudioError: the token was refused (401, 403) or something is missing (404), or
            another 4xx.
    """
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except httpx.TransportError as exc:
        raise LabelStudioUnavailable(
            f"Label Studio at {url} is unreachable while {doing} ({type(exc).__name__}: {exc}): check "
            "LABEL_STUDIO_URL and that this machine can reach it"
        ) from exc
    except ApiError as exc:
        status = int(exc.status_code or 0)
        if status >= 500:
            raise LabelStudioUnavailable(f"Label Studio at {url} answered HTTP {status} while {doing}") from exc
        if status in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {url} refuses the token while {doing} (HTTP {status}): check LABEL_STUDIO_API_KEY "
                "(a legacy token works only while legacy tokens are enabled; a personal access token always does)"
            ) from exc
        if status == 404:
            raise LabelStudioError(f"Label Studio at {url} has no such object while {doing} (HTTP 404)") from exc
        raise LabelStudioError(f"Label Studio at {url} refused a request while {doing} (HTTP {status})") from exc


@dataclass(frozen=True)
class Connection:
    """Where Label Studio is and the token to call it with (``LABEL_STUDIO_URL``,
    ``LABEL_STUDIO_API_KEY``); the SDK client is made on first use (``client``), so a missing URL or
    token fails where Label Studio is called, not where the connection is built."""

    url: str | None
    api_key: str | None = field(default=None, repr=False)

    def client(self) -> LabelStudio:
        """``client(url, api_key)``. Raises DatasetError: the URL or the token is not configured."""
        return client(self.url, self.api_key)

    def calling(self, doing: str) -> contextlib.AbstractContextManager[None]:
        """``calling(url, doing)``: Label Studio's failures inside the block as labelloop errors."""
        return calling(self.url, doing)
