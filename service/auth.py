"""Authentication of Label Studio's calls: HTTP Basic for the ML backend routes, a shared secret
header for webhooks. Comparisons are constant-time.

Label Studio sends the ML backend's Basic auth (``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` on the
model's connection) with ``/setup``, ``/predict`` and START_TRAINING; project webhooks carry
no signature, only the custom headers configured on the webhook.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.datastructures import Headers

from service.errors import LabelloopError
from service.settings import Settings


class AuthError(LabelloopError):
    """Missing or wrong credentials (401)."""

    status_code = 401

    def __init__(self, message: str, basic: bool) -> None:
        super().__init__(message)
        self.basic = basic


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def check_basic(headers: Headers, settings: Settings) -> None:
    """Require HTTP Basic credentials when ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` are set.

    Raises:
        AuthError: credentials missing or wrong (the response carries ``WWW-Authenticate``).
    """
    if not settings.basic_auth_user or settings.basic_auth_pass is None:
        return
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not token:
        raise AuthError("HTTP Basic credentials required", basic=True)
    try:
        user, sep, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError("malformed HTTP Basic credentials", basic=True) from None
    ok_user = _equal(user, settings.basic_auth_user)
    ok_pass = _equal(password, settings.basic_auth_pass.get_secret_value())
    if not (sep and ok_user and ok_pass):
        raise AuthError("wrong HTTP Basic credentials", basic=True)


def check_webhook_secret(headers: Headers, settings: Settings) -> None:
    """Require the shared secret in ``webhook_secret_header`` when ``webhook_secret`` is set.

    Raises:
        AuthError: header missing or wrong.
    """
    if settings.webhook_secret is None:
        return
    given = headers.get(settings.webhook_secret_header)
    if given is None:
        raise AuthError(f"{settings.webhook_secret_header} header required", basic=False)
    if not _equal(given, settings.webhook_secret.get_secret_value()):
        raise AuthError(f"wrong {settings.webhook_secret_header}", basic=False)
