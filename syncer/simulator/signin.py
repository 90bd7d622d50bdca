"""The simulator's User Level Authentication: the authorization code grant as Procore serves it,
with its awkward part kept: a refresh token dies the moment a refresh is received, before the
answer is sent (and `refresh_delay` holds the answer back, so a test can kill a client inside that
window). A user sees the projects they are a member of and nothing else; a company can refuse
apps its admins did not install (`allow_user_installs`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiMapping

OUT_OF_BAND = "urn:ietf:wg:oauth:2.0:oob"
CODE_TTL = 600.0


@dataclass
class SimUser:
    id: int
    name: str
    login: str
    projects: set[int]
    """The projects whose Directory lists this user: all they can see."""
    companies: list[tuple[int, str]]


@dataclass
class SignInStats:
    codes_issued: int = 0
    refreshes: int = 0
    """Refresh requests that spent a valid token."""
    refused_refreshes: int = 0
    revoked: int = 0
    issued: list[str] = field(default_factory=list)
    """Every code, access token and refresh token handed out: none may appear in a client's files."""


class SignIn:
    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        company: tuple[int, str],
        projects: list[int],
        live: dict[str, float],
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        member = set(projects[:-1] if len(projects) > 1 else projects)
        other = (99_001, "Other Builders")
        self.users = {
            7001: SimUser(7001, "Pat Jones", "pat@example.com", member, [company, other]),
            7002: SimUser(7002, "Sam Outsider", "sam@example.com", set(), [other]),
        }
        """Pat is a member of every project but the last; Sam is not in this company at all."""
        self.auto_approve: int | None = None
        """A user id that approves every authorize request at once (no login form): for tests."""
        self.allow_user_installs = True
        self.token_ttl = 5400.0
        self.refresh_delay = 0.0
        self.stats = SignInStats()
        self._codes: dict[str, tuple[str, int, float]] = {}
        """code -> (redirect URI, user id, expiry)"""
        self.refresh_tokens: dict[str, tuple[int, str]] = {}
        """refresh token -> (user id, the redirect URI its sign-in was made with)"""
        self.access_tokens: dict[str, int] = {}
        self._live = live
        """The server's access tokens and their expiry: a revoked one leaves it."""

    # -- the authorize page -----------------------------------------------------------------------

    async def authorize(self, request: web.Request) -> web.Response:
        params = (
            dict(request.query)
            if request.method == "GET"
            else {k: str(v) for k, v in (await request.post()).items()}
        )
        if params.get("client_id") != self.client_id or params.get("response_type") != "code":
            return web.Response(status=400, text="unknown client or response_type")
        redirect_uri = params.get("redirect_uri", "")
        if not redirect_uri:
            return web.Response(status=400, text="redirect_uri is required")
        user = self.auto_approve if request.method == "GET" else int(params.get("user", "0") or 0)
        if user is None:
            return self._form(params)
        if user not in self.users:
            return web.Response(status=400, text="unknown user")
        code = secrets.token_urlsafe(24)
        self._codes[code] = (redirect_uri, user, time.time() + CODE_TTL)
        self.stats.codes_issued += 1
        self.stats.issued.append(code)
        if redirect_uri == OUT_OF_BAND:
            page = f'<p>Your authorization code:</p><code id="code">{code}</code>'
            return web.Response(text=f"<html><body>{page}</body></html>", content_type="text/html")
        query = urlencode({"code": code, **({"state": params["state"]} if "state" in params else {})})
        raise web.HTTPFound(f"{redirect_uri}?{query}")

    def _form(self, params: dict[str, str]) -> web.Response:
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
        )
        users = "".join(
            f'<label><input type="radio" name="user" value="{u.id}">{html.escape(u.name)}</label>'
            for u in self.users.values()
        )
        page = f'<html><body><form method="post">{hidden}{users}<button>Allow</button></form></body></html>'
        return web.Response(text=page, content_type="text/html")

    # -- the token grants -------------------------------------------------------------------------

    def grant(self, form: dict[str, str], now: float) -> web.Response | tuple[int, dict[str, Any]]:
        """The answer to an authorization code or refresh grant (client credentials already
        checked): an error response, or the user id and the new tokens."""
        if form.get("grant_type") == "authorization_code":
            entry = self._codes.pop(form.get("code", ""), None)
            if entry is None or entry[2] < now or form.get("redirect_uri") != entry[0]:
                return _invalid_grant("The provided authorization grant is invalid, expired or revoked.")
            return entry[1], self._issue(entry[1], entry[0], now)
        held = self.refresh_tokens.pop(form.get("refresh_token", ""), None)  # spent as it arrives
        if held is None:
            self.stats.refused_refreshes += 1
            return _invalid_grant("The refresh token is invalid, expired or revoked.")
        user, redirect_uri = held
        if form.get("redirect_uri") != redirect_uri:  # Procore's example sends it; checked here
            self.stats.refused_refreshes += 1
            return _invalid_grant("The redirect uri included is not valid.")
        self.stats.refreshes += 1
        return user, self._issue(user, redirect_uri, now)

    def _issue(self, user: int, redirect_uri: str, now: float) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.access_tokens[access] = user
        self.refresh_tokens[refresh] = (user, redirect_uri)
        self.stats.issued += [access, refresh]
        return {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "bearer",
            "expires_in": int(self.token_ttl),
            "created_at": int(now),
        }

    async def revoke(self, request: web.Request) -> web.Response:
        form = await request.post()
        if not hmac.compare_digest(client_credentials(request.headers, form)[1], self.client_secret):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = str(form.get("token", ""))
        if (
            self.refresh_tokens.pop(token, None) is not None
            or self.access_tokens.pop(token, None) is not None
        ):
            self._live.pop(token, None)
            self.stats.revoked += 1
        return web.json_response({})

    def revoke_user(self, user: int) -> None:
        """Every token of `user` stops working, as when an admin removes them."""
        refresh = [t for t, (u, _) in self.refresh_tokens.items() if u == user]
        access = [t for t, u in self.access_tokens.items() if u == user]
        for token in refresh + access:
            self.refresh_tokens.pop(token, None)
            self.access_tokens.pop(token, None)
            self._live.pop(token, None)

    # -- what a user sees -------------------------------------------------------------------------

    def company_refusal(self, user: int, company: int) -> str | None:
        """Why `user` may not call the API in `company`, or None."""
        if company not in {c for c, _ in self.users[user].companies}:
            return "You do not have access to this company"
        if not self.allow_user_installs:
            return "This app is not installed in this company, and the company does not allow user installs"
        return None

    def me(self, user: int | None) -> dict[str, Any]:
        if user is None:
            return {"id": 1, "login": "service-account@procore-sim", "name": "Simulator Service Account"}
        u = self.users[user]
        return {"id": u.id, "login": u.login, "name": u.name}

    def companies(self, user: int | None, company: tuple[int, str]) -> list[dict[str, Any]]:
        owned = [company] if user is None else self.users[user].companies
        return [{"id": cid, "name": name, "is_active": True} for cid, name in owned]


def client_credentials(headers: Mapping[str, str], form: MultiMapping[Any]) -> tuple[str, str]:
    """The client id and secret a token or revoke request carries: by HTTP Basic (propycore sends
    them so), else in the form body (pyprocore); Procore takes both. Unreadable Basic is no
    credentials at all."""
    scheme, _, encoded = headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return str(form.get("client_id", "")), str(form.get("client_secret", ""))
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    client_id, _, secret = decoded.partition(":")
    return client_id, secret


def _invalid_grant(description: str) -> web.Response:
    return web.json_response({"error": "invalid_grant", "error_description": description}, status=400)
