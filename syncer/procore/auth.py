"""OAuth access tokens: fetched once, reused, renewed before they expire.

How a token is obtained is the grant's business, chosen once at setup: a service account asks for
a new one with its client credentials (that grant has no refresh token); a person's sign-in
(`signin.py`) reuses or refreshes a saved one. A 401 from the API makes the caller `invalidate`
the token it used; the next `token()` fetches a fresh one, and concurrent callers wait for that
single request instead of each sending their own.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from syncer.errors import ExitCode, FatalError

RENEW_BEFORE = 300.0
"""Seconds before expiry at which a token is replaced, so no request leaves with a dying token."""
UNSAID_LIFETIME = 60.0
"""The lifetime taken for an `expires_in` of 0 or less, which would otherwise mean a token request
before every call (a 401 still renews a token that really died sooner)."""
MIN_LIFETIME = 1.0
"""The shortest positive lifetime taken as it is."""
TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")
"""What may go in an `Authorization` header: visible ASCII, no spaces or line breaks."""


class AuthError(FatalError):
    """Procore refused the credentials (exit 3)."""

    exit_code = ExitCode.AUTH


@dataclass(frozen=True)
class Token:
    value: str
    renew_at: float

    def __repr__(self) -> str:  # never print the secret, even in a debugger's repr
        return f"Token(renew_at={self.renew_at:.0f})"


FetchToken = Callable[[], Awaitable[dict[str, Any]]]
"""Obtains a token and returns the decoded JSON answer (raising on HTTP errors)."""


class PostToken(Protocol):
    """`ProcoreHttp.post_token`: one form POST to `/oauth/token`, the client's credentials added;
    `refused` starts the AuthError of a 400, 401 or 403; `retry=False` sends it once."""

    def __call__(
        self, grant: dict[str, str], *, refused: str, retry: bool = True
    ) -> Awaitable[dict[str, Any]]: ...


class Grant(Protocol):
    """How this process obtains access tokens."""

    async def fetch(self, post: PostToken) -> dict[str, Any]: ...


class ServiceAccount:
    """A Developer Managed Service Account: client credentials buy each token."""

    async def fetch(self, post: PostToken) -> dict[str, Any]:
        return await post(
            {"grant_type": "client_credentials"}, refused="Procore refused the client credentials"
        )


class TokenSource:
    def __init__(self, fetch: FetchToken, *, clock: Callable[[], float] = time.time) -> None:
        self._fetch = fetch
        self._clock = clock
        self._token: Token | None = None
        self._lock = asyncio.Lock()
        self.on_new_token: Callable[[str], None] | None = None
        """Called with each new token value, so the log redactor can learn it."""

    async def token(self) -> str:
        async with self._lock:
            now = self._clock()
            if self._token is None or now >= self._token.renew_at:
                self._token = self._parse(await self._fetch(), now)
                if self.on_new_token:
                    self.on_new_token(self._token.value)
            return self._token.value

    def invalidate(self, value: str) -> None:
        """Forget `value` if it is still the current token (a 401 proved it dead)."""
        if self._token is not None and self._token.value == value:
            self._token = None

    @staticmethod
    def _parse(answer: dict[str, Any], now: float) -> Token:
        value = answer.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError("the token endpoint answered without an access_token")
        if not TOKEN.fullmatch(value):
            raise AuthError("the token endpoint answered with an access_token that cannot go in a header")
        expires_in = answer.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
        if not math.isfinite(lifetime):
            lifetime = 3600.0
        lifetime = max(MIN_LIFETIME, lifetime) if lifetime > 0 else UNSAID_LIFETIME
        # `created_at` is the server's clock; measuring from our own `now` avoids clock skew.
        # Short lifetimes are renewed at half their life rather than at once.
        return Token(value=value, renew_at=now + lifetime - min(RENEW_BEFORE, lifetime / 2))
