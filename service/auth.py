"""Who may do what: an admin bearer token for management, optional API keys for inference.

The admin token comes from ``SPIKESERVE_ADMIN_TOKEN``; when that is unset the server makes one
at start-up and prints it once, so management is never open by accident. Inference is open
unless ``SPIKESERVE_API_KEYS`` lists keys; then a request needs one, as ``X-API-Key: KEY`` or
``Authorization: Bearer KEY`` (the admin token is accepted too). Comparisons are constant-time.
"""

from __future__ import annotations

import hmac
import secrets
import sys
from dataclasses import dataclass

from fastapi import Request

from workers.errors import SpikeserveError


class AuthenticationError(SpikeserveError):
    """No credentials, or wrong ones: HTTP 401 with ``WWW-Authenticate: Bearer``."""

    code = "unauthorized"


@dataclass(frozen=True)
class Credentials:
    admin_token: str
    api_keys: tuple[str, ...] = ()
    generated: bool = False  # the admin token was made here (and must be shown to the operator)


def make_credentials(admin_token: str | None, api_keys: list[str] | tuple[str, ...]) -> Credentials:
    """The process's credentials; a fresh random admin token when none is configured."""
    keys = tuple(key for key in api_keys if key)
    if admin_token:
        return Credentials(admin_token, keys)
    return Credentials(secrets.token_urlsafe(32), keys, generated=True)


def announce_generated_token(credentials: Credentials) -> None:
    """Print a generated admin token once, on stderr, where the operator starting the server sees it."""
    if credentials.generated:
        print(
            "spikeserve: SPIKESERVE_ADMIN_TOKEN is not set; management API token for this run:\n"
            f"    {credentials.admin_token}\n"
            "  use it as 'Authorization: Bearer <token>'; set SPIKESERVE_ADMIN_TOKEN to choose your own.",
            file=sys.stderr,
            flush=True,
        )


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _credentials(request: Request) -> Credentials:
    return request.app.state.spikeserve.credentials


async def require_admin(request: Request) -> None:
    """FastAPI dependency of the management routes: a valid admin bearer token, else 401."""
    token = _bearer(request)
    if token is None:
        raise AuthenticationError(
            "management needs 'Authorization: Bearer <admin token>' (SPIKESERVE_ADMIN_TOKEN)"
        )
    if not _matches(token, _credentials(request).admin_token):
        raise AuthenticationError("the admin token is not valid")


async def require_api_key(request: Request) -> None:
    """FastAPI dependency of the inference routes: an API key when keys are configured."""
    credentials = _credentials(request)
    if not credentials.api_keys:
        return
    given = request.headers.get("x-api-key") or _bearer(request)
    if given is None:
        raise AuthenticationError(
            "inference needs an API key: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'"
        )
    accepted = (*credentials.api_keys, credentials.admin_token)
    # check every key, so the time taken does not say which prefix matched
    if not any([_matches(given, key) for key in accepted]):
        raise AuthenticationError("the API key is not valid")
