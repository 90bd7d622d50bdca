"""The one HTTP path to Procore: auth headers, pacing, retries and error reports.

Every API call goes through `ProcoreHttp`, so the token rule (the API's host and its Procore domain
only), the rate-limit budget and the retry policy live in one place. Retries are bounded: 5xx, 408
and transport errors back off exponentially with full jitter; 429 and 503 wait as the server says;
a 401 renews the token once. An answer that is not what Procore documents becomes a
`ProcoreError` carrying the status and a short excerpt, never a crash.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from syncer.errors import FatalError, SyncerError
from syncer.log import REDACT
from syncer.procore.auth import AuthError, Grant, ServiceAccount, TokenSource
from syncer.procore.pacing import Pacer, Sleep, retry_after_seconds
from syncer.procore.query import encode_query

T = TypeVar("T")
log = logging.getLogger(__name__)
EXCERPT_CHARS = 160
ERROR_BODY = 16 * 1024
"""Bytes of an error answer read, for its excerpt: a hostile server's 300 MB 403 stays unread."""
MAX_ANSWER = 32 << 20
"""The largest JSON answer taken: a page of 100 images is about 100 KB."""


@dataclass
class Tally:
    """Requests sent on behalf of one piece of work (a project's sync), across all its tasks."""

    requests: int = 0


TALLY: ContextVar[Tally | None] = ContextVar("syncer_request_tally", default=None)
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
PROCORE_DOMAINS = ("procore.com", "procoregov.com")
"""Procore's registrable domains: its commercial environments, and the US government zone (FedRAMP)."""


def worth_retrying(status: int) -> bool:
    """Whether another attempt may get a better answer: any 5xx, and 408 Request Timeout (what
    Procore answers when fetching a large dataset takes too long)."""
    return status >= 500 or status == 408


def _host(url: URL) -> str:
    return (url.host or "").lower().rstrip(".")


def procore_domain(url: URL) -> str | None:
    """The Procore domain `url`'s host lies under (`procore.com`, `procoregov.com`), if any."""
    host = _host(url)
    return next((d for d in PROCORE_DOMAINS if host == d or host.endswith(f".{d}")), None)


class UntrustedServer(FatalError):
    """A server's TLS certificate did not verify: every request to it would fail the same way,
    and it may not be who it claims to be, so the run stops."""


class Unreachable(FatalError):
    """A Procore host cannot be reached in a way no retry can change (its name does not resolve,
    or TLS with it fails): every request would fail the same way, so the run stops at once."""


def transport_failure(what: str, exc: BaseException, key: str | None = None) -> ProcoreError | FatalError:
    """One line for a request that got no answer: fatal where retrying cannot help (an unknown
    host, TLS that fails), else an error another attempt may fix. `key`: the setting that named
    the host (`procore.api_base`, `procore.login_base`), said where a wrong one is the likely cause."""
    check = f"; check {key}, and that this machine may connect there" if key else ""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return untrusted(what, exc)
    if isinstance(exc, aiohttp.ClientConnectorDNSError) and exc.os_error.errno in PERMANENT_DNS:
        return Unreachable(
            f"{what}: the host {exc.host} is unknown ({exc.os_error.strerror}); check procore.api_base "
            "and procore.login_base"
        )
    if isinstance(exc, aiohttp.ClientSSLError) and not isinstance(
        exc.os_error, ssl.SSLEOFError | ConnectionError
    ):
        return Unreachable(f"{what}: TLS with {exc.host} failed ({_reason(exc.os_error)})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        where = exc.host if exc.port in (80, 443, None) else f"{exc.host}:{exc.port}"
        return ProcoreError(f"{what}: cannot reach {where}: {_reason(exc.os_error)}{check}")
    if isinstance(exc, asyncio.TimeoutError):
        return ProcoreError(f"{what}: no answer in time ({type(exc).__name__}){check}")
    detail = str(exc)
    return ProcoreError(f"{what}: {type(exc).__name__}" + (f": {detail}" if detail else ""))


PERMANENT_DNS = frozenset({socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)})
"""What a resolver says of a name that does not exist; EAI_AGAIN (no answer yet) is retried."""


def _reason(error: OSError) -> str:
    """An OS error's own words in lower case ("connection refused"), without the errno."""
    if isinstance(error, ssl.SSLError):
        return str(getattr(error, "reason", None) or error)
    if error.errno is not None and error.errno > 0:  # asyncio's text adds the address again
        text = os.strerror(error.errno)
    else:
        text = error.strerror or str(error) or type(error).__name__
    return text[:1].lower() + text[1:]


def untrusted(what: str, exc: aiohttp.ClientConnectorCertificateError) -> UntrustedServer:
    reason = getattr(exc.certificate_error, "verify_message", None) or str(exc.certificate_error)
    return UntrustedServer(
        f"{what}: the TLS certificate of {exc.host} is not trusted ({reason}); if a company proxy "
        "or a private CA signs it, name that CA's PEM file in procore.ca_file"
    )


class ProcoreError(SyncerError):
    """A call to Procore that did not succeed; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientError(ProcoreError):
    """One attempt failed in a way another may fix (5xx, 429, a dropped connection); `wait` is
    how long the server asked to wait, if it said."""

    def __init__(self, message: str, *, status: int | None = None, wait: float | None = None) -> None:
        super().__init__(message, status=status)
        self.wait = wait


class _Retry(Exception):
    """One attempt failed in a way that another attempt may fix."""

    def __init__(self, error: ProcoreError, *, wait: float | None = None, pace: bool = False):
        super().__init__(str(error))
        self.error = error
        self.wait = wait
        self.pace = pace


class _Unauthorized(Exception):
    def __init__(self, token: str | None) -> None:
        self.token = token


_HTML = re.compile(r"\s*<(?:!doctype|html|head|body|title|h1)\b", re.IGNORECASE)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_HIDDEN = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>?")


def excerpt(body: bytes | str) -> str:
    """What a person should read of an error body: the message fields of JSON, else its start."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        for key in ("errors", "message", "error_description", "error"):
            if key in data:
                text = json.dumps(data[key]) if not isinstance(data[key], str) else data[key]
                break
    elif _HTML.match(text):  # a proxy's or load balancer's error page: its title, else its text
        title = _TITLE.search(text)
        if title and title.group(1).strip():
            text = html.unescape(title.group(1))
        else:
            text = html.unescape(_TAG.sub(" ", _HIDDEN.sub(" ", text)))
    text = REDACT(" ".join(text.split()))  # before the cut, or a secret cut in half would stay
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def _client_hint(body: bytes) -> str:
    """What to check when the token endpoint does not know the client: most often credentials of
    the other environment (a sandbox's against production, or the reverse)."""
    if b"invalid_client" not in body:
        return ""
    return (
        "; check procore.client_id and procore.client_secret, and that they belong to the Procore "
        "environment procore.login_base names: sandbox credentials work only with the sandbox's "
        "hosts, production ones only with production's"
    )


def describe_status(what: str, status: int, body: bytes) -> str:
    detail = excerpt(body)
    return f"{what}: HTTP {status}" + (f": {detail}" if detail else "")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 30.0

    def backoff(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Full-jitter exponential backoff: spreads retries of many workers apart."""
        return rng() * min(self.max_delay, self.base_delay * float(1 << min(attempt, 30)))


@dataclass(frozen=True)
class Answer:
    data: Any
    headers: Mapping[str, str]


class ProcoreHttp:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        api_base: str,
        login_base: str,
        company_id: int,
        client_id: str,
        client_secret: str,
        pacer: Pacer | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        grant: Grant | None = None,
    ) -> None:
        self.session = session
        self.api_base = URL(api_base)
        self._token_domain = procore_domain(self.api_base)
        self._login_base = URL(login_base)
        self._company_id = company_id
        self._client_id = client_id
        self._client_secret = client_secret
        self.pacer = pacer or Pacer()
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        grant = grant or ServiceAccount()
        self.tokens = TokenSource(lambda: grant.fetch(self.post_token))

    def _setting_of(self, url: URL) -> str | None:
        """The setting that names `url`'s server, if one does (a file's storage host: none)."""
        for key, base in (("procore.login_base", self._login_base), ("procore.api_base", self.api_base)):
            if url.origin() == base.origin():
                return key
        return None

    def may_carry_token(self, url: URL) -> bool:
        """Whether the bearer token may go to `url` (Procore's file hosts need it; nothing else may
        see it): the API's own host with the API's scheme, on any port, or an HTTPS host under
        the Procore domain of `api_base`. That domain is `procore.com`, or `procoregov.com` for a
        company in the US government zone, never both: the zone's storage host is its own, and a
        token of one zone has no business in the other. An `api_base` under neither (a proxy, a
        simulator) trusts its own host alone. Never plain HTTP from an HTTPS API."""
        if url.scheme == self.api_base.scheme and _host(url) == _host(self.api_base):
            return True
        return (
            self._token_domain is not None
            and url.scheme == "https"
            and procore_domain(url) == self._token_domain
        )

    def api_url(self, path: str, params: list[tuple[str, str]]) -> URL:
        return URL(f"{self.api_base}{path}?{encode_query(params)}", encoded=True)

    async def get_json(self, url: URL, *, what: str, once: bool = False) -> Answer:
        """GET an API URL and decode its JSON, retrying what can be retried; `once`: a single
        attempt, for a caller that owns the retries."""

        async def attempt() -> Answer:
            response = await self._send_once("GET", url, what=what)
            async with response:
                try:
                    body, whole = await read_head(
                        response, ERROR_BODY if response.status >= 300 else MAX_ANSWER
                    )
                except TRANSPORT_ERRORS as exc:
                    raise _Retry(ProcoreError(f"{what}: body cut short ({type(exc).__name__})")) from None
                if response.status >= 300:
                    raise ProcoreError(describe_status(what, response.status, body), status=response.status)
                if not whole:
                    raise ProcoreError(
                        f"{what}: answer larger than {MAX_ANSWER} bytes", status=response.status
                    )
                try:
                    data = json.loads(body)
                except (ValueError, RecursionError):  # RecursionError: nested deeper than Python parses
                    raise _Retry(
                        ProcoreError(f"{what}: answer is not JSON: {excerpt(body)!r}", status=response.status)
                    ) from None
                return Answer(data=data, headers=response.headers)

        return await self._retrying(attempt, what=what, attempts=1 if once else self.retry.attempts)

    async def open(
        self, url: URL, *, what: str, headers: Mapping[str, str] | None = None, decompress: bool = True
    ) -> aiohttp.ClientResponse:
        """Send one GET to a Procore file host with the token; the caller reads and releases the answer.

        It carries only what a browser would add to the token: a storage host is not the API (no
        `Accept: application/json`, no company header). Used for the first hop of a photo
        download, whose caller owns the retries (one retry layer per photo): 5xx, 408, 429, 503 and
        transport errors raise `TransientError` after one attempt (a 429 or 503 also pauses the
        shared budget as told). A 3xx or 4xx is the caller's to interpret; a 401 here usually means
        the URL's signature expired, not the token.
        """
        return await self._retrying(
            lambda: self._send_once(
                "GET",
                url,
                what=what,
                api=False,
                renew_on_401=False,
                extra_headers=headers,
                decompress=decompress,
            ),
            what=what,
            attempts=1,
        )

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], *, what: str, attempts: int) -> T:
        """Up to `attempts` tries, backing off between them; a 401 renews the token once (not
        counted as a try). What still fails is a `TransientError`."""
        renewed = False
        tried = 0
        while True:
            try:
                answer = await attempt()
            except _Unauthorized as exc:
                if renewed or exc.token is None:
                    raise AuthError(f"{what}: Procore refused the access token (HTTP 401)") from None
                self.tokens.invalidate(exc.token)
                renewed = True
            except _Retry as exc:
                wait = exc.wait if exc.wait is not None else self.retry.backoff(tried)
                tried += 1
                if exc.pace:
                    self.pacer.pause(wait)  # the budget is shared: every request waits
                if tried >= attempts:
                    gave_up = f" (gave up after {attempts} attempts)" if attempts > 1 else ""
                    raise TransientError(
                        f"{exc.error}{gave_up}", status=exc.error.status, wait=exc.wait
                    ) from None
                if tried == 1:  # said at once, so a person watching a run that cannot reach Procore
                    log.warning(  # knows why; the retries after it are counted, not each logged
                        "%s; retry %d/%d in %s s", exc.error, tried + 1, attempts, f"{wait:.{wait < 10:d}f}"
                    )
                if not exc.pace:
                    await self._sleep(wait)
            else:
                if tried > 1:
                    log.info("%s: answered at attempt %d of %d", what, tried + 1, attempts)
                return answer

    async def _send_once(
        self,
        method: str,
        url: URL,
        *,
        what: str,
        auth: bool = True,
        api: bool = True,
        data: Mapping[str, str] | None = None,
        renew_on_401: bool = True,
        extra_headers: Mapping[str, str] | None = None,
        decompress: bool = True,
    ) -> aiohttp.ClientResponse:
        """One request; `api` adds the headers of an API call (JSON, the company)."""
        token = await self.tokens.token() if auth else None
        headers = dict(extra_headers or {})
        if api:
            headers = {"Accept": "application/json", "Procore-Company-Id": str(self._company_id), **headers}
        if token:
            if not self.may_carry_token(url):
                raise ProcoreError(f"{what}: refusing to send the token to {url.origin()}")
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self.pacer.slot() as sent:
                if (tally := TALLY.get()) is not None:
                    tally.requests += 1
                response = await self.session.request(
                    method, url, headers=headers, data=data, allow_redirects=False, auto_decompress=decompress
                )
                self.pacer.observe(response.headers, sent=sent)
        except TRANSPORT_ERRORS as exc:
            failure = transport_failure(what, exc, self._setting_of(url))
            if isinstance(failure, FatalError):
                raise failure from None
            raise _Retry(failure) from None
        status = response.status
        if status == 401 and auth and renew_on_401:
            response.release()
            raise _Unauthorized(token)
        if status in (429, 503):
            if status == 429:
                self.pacer.throttled += 1
            body = await _read_quietly(response)
            wait = retry_after_seconds(response.headers, now=time.time())
            if wait is None and status == 429:
                wait = self.pacer.reset_in()
            raise _Retry(
                ProcoreError(describe_status(what, status, body), status=status),
                wait=wait,
                pace=True,
            )
        if worth_retrying(status):
            body = await _read_quietly(response)
            raise _Retry(ProcoreError(describe_status(what, status, body), status=status))
        return response

    async def post_token(self, grant: dict[str, str], *, refused: str, retry: bool = True) -> dict[str, Any]:
        """POST a grant to `/oauth/token` with the client's credentials and return the answer; a 400,
        401 or 403 is an AuthError starting with `refused`. `retry=False` sends it once (a refresh
        token is spent by being sent, so it is never sent twice)."""
        url = self._login_base / "oauth" / "token"
        form = {**grant, "client_id": self._client_id, "client_secret": self._client_secret}
        what = "token request"

        async def attempt() -> dict[str, Any]:
            response = await self._send_once("POST", url, what=what, auth=False, data=form)
            async with response:
                body = await _read_quietly(response)
                if response.status in (400, 401, 403):
                    raise AuthError(describe_status(refused, response.status, body) + _client_hint(body))
                if response.status >= 300:
                    raise ProcoreError(describe_status(what, response.status, body), status=response.status)
                try:
                    answer = json.loads(body)
                except (ValueError, RecursionError):
                    raise _Retry(ProcoreError(f"{what}: answer is not JSON")) from None
                if not isinstance(answer, dict):
                    raise AuthError(f"{what}: unexpected answer shape")
                return answer

        return await self._retrying(attempt, what=what, attempts=self.retry.attempts if retry else 1)

    async def revoke(self, token: str) -> None:
        """Ask Procore to revoke a token (`/oauth/revoke`, RFC 7009), once."""
        url = self._login_base / "oauth" / "revoke"
        form = {"token": token, "client_id": self._client_id, "client_secret": self._client_secret}
        try:
            response = await self._send_once("POST", url, what="revoking the sign-in", auth=False, data=form)
        except _Retry as exc:  # a 5xx, a 429 or no connection: said as it is, not retried
            raise exc.error from None
        async with response:
            body = await _read_quietly(response)
            if response.status >= 300:
                raise ProcoreError(describe_status("revoking the sign-in", response.status, body))


async def read_head(response: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """Up to `cap` bytes of a body, and whether that was all of it; the rest stays unread, so an
    endless body costs no memory."""
    body = bytearray()
    while len(body) <= cap:
        chunk = await response.content.read(cap + 1 - len(body))
        if not chunk:
            return bytes(body), True
        body += chunk
    return bytes(body[:cap]), False


async def _read_quietly(response: aiohttp.ClientResponse) -> bytes:
    """The start of an error answer's body, or nothing if even that fails; releases the connection."""
    try:
        return (await read_head(response, ERROR_BODY))[0]
    except TRANSPORT_ERRORS:
        return b""
    finally:
        response.release()
