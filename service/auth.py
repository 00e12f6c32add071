"""Authentication of Label Studio's calls: HTTP Basic for the ML backend routes, a shared secret
header for webhooks. Comparisons are constant-time.

Label Studio sends the ML backend's Basic auth (``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` on the
model's connection) with ``/setup``, ``/predict`` and START_TRAINING; project webhooks carry
no signature, only the custom headers configured on the webhook.

Which credential a route needs (``check_model`` and ``check_annotation_webhook``): each route
takes its own credential when it is configured, and the other one when only that is configured,
so that no route is open while any credential is set. With neither configured every route is
open (meant for loopback only: ``labelloop serve`` warns, ``labelloop doctor`` fails).

==========================  ==========================  =========================
route                       both configured             only one configured
==========================  ==========================  =========================
annotation webhooks         webhook secret header       that one
/setup, /predict,           HTTP Basic                  that one
START_TRAINING, /versions,
/projects/...
==========================  ==========================  =========================
"""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.datastructures import Headers

from labelloop.errors import LabelloopError
from labelloop.settings import Settings

PLACEHOLDERS = frozenset({"change-me", "changeme", "replace-me"})


class AuthError(LabelloopError):
    """Missing or wrong credentials (401)."""

    status_code = 401

    def __init__(self, message: str, basic: bool) -> None:
        super().__init__(message)
        self.basic = basic


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def basic_configured(settings: Settings) -> bool:
    return bool(settings.basic_auth_user) and settings.basic_auth_pass is not None


def secret_configured(settings: Settings) -> bool:
    return settings.webhook_secret is not None


def any_configured(settings: Settings) -> bool:
    """Whether any credential is set (then no route but /health and /metrics is open)."""
    return basic_configured(settings) or secret_configured(settings)


def check_model(headers: Headers, settings: Settings) -> None:
    """The credential of the ML backend and operator routes: Basic auth, or the webhook secret
    when it is the only credential configured.

    Raises:
        AuthError: credentials missing or wrong.
    """
    if basic_configured(settings):
        check_basic(headers, settings)
    elif secret_configured(settings):
        check_webhook_secret(headers, settings)


def check_annotation_webhook(headers: Headers, settings: Settings) -> None:
    """The credential of annotation webhooks: the webhook secret header, or Basic auth when it
    is the only credential configured (a project webhook can send an ``Authorization`` header).

    Raises:
        AuthError: credentials missing or wrong.
    """
    if secret_configured(settings):
        check_webhook_secret(headers, settings)
    elif basic_configured(settings):
        check_basic(headers, settings)


def check_either(headers: Headers, settings: Settings) -> None:
    """Either configured credential, from the headers alone: what ``/webhook`` checks before it
    reads the body (which says the action, and so the credential it needs).

    Raises:
        AuthError: neither configured credential is present and right.
    """
    if not any_configured(settings):
        return
    error: AuthError | None = None
    for configured, check in ((secret_configured, check_webhook_secret), (basic_configured, check_basic)):
        if configured(settings):
            try:
                check(headers, settings)
                return
            except AuthError as exc:
                error = error or exc
    assert error is not None
    raise error


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


def is_placeholder(value: str) -> bool:
    """Whether a credential is one of the example values (``CHANGE-ME``, ...), in any case."""
    return value.strip().lower() in PLACEHOLDERS


def placeholder_credentials(settings: Settings) -> list[str]:
    """The environment variables whose value is still an example placeholder (see ``PLACEHOLDERS``)."""
    values = {
        "BASIC_AUTH_USER": settings.basic_auth_user,
        "BASIC_AUTH_PASS": settings.basic_auth_pass.get_secret_value() if settings.basic_auth_pass else None,
        "LABELLOOP_WEBHOOK_SECRET": settings.webhook_secret.get_secret_value() if settings.webhook_secret else None,
        "LABEL_STUDIO_API_KEY": settings.api_key,
    }
    return [name for name, value in values.items() if value is not None and is_placeholder(value)]
