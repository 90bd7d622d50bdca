"""`syncer login` and `syncer logout`: a person's sign-in to Procore, for `procore.auth:
authorization_code`.

Login prints Procore's authorize address; the person opens it, signs in and allows the app. Procore
then either shows a code to paste here (the out-of-band redirect, the default: works on a server
with no browser) or sends the browser to this machine's loopback address, where `syncer login`
waits for it. The code is exchanged for tokens once, the refresh token is saved durably before
anything else (`signin.LoginFile`), and Procore is asked who signed in and whether they can see the
configured company. A `state` value ties the answer to this login, so a code sent by anyone else's
page is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web

from syncer.config import Settings
from syncer.errors import ConfigError, SyncerError
from syncer.log import REDACT
from syncer.mirror.files import check_owner
from syncer.procore.auth import AuthError
from syncer.procore.http import ProcoreError
from syncer.procore.signin import LoginFile, SavedLogin, authorize_url, loopback, parse_tokens
from syncer.runner import procore_client

LOGIN_TIMEOUT = 600.0
"""How long `syncer login` waits for the browser or the pasted code."""
CODE_CHARS = 4096


def _need_user_auth(settings: Settings) -> None:
    if settings.procore.auth != "authorization_code":
        raise ConfigError(
            "procore.auth is client_credentials: a service account needs no sign-in; set procore.auth: "
            "authorization_code to sign in as a person"
        )


async def login(settings: Settings, *, say: Callable[[str], None] = print) -> str:
    """Sign in and save the sign-in; returns what to tell the person once it is saved. Only as the
    mirror's owner: the sign-in is readable by the user who saves it alone."""
    _need_user_auth(settings)
    check_owner(settings.mirror.root)
    p = settings.procore
    client_id = p.client_id.get_secret_value()
    state = secrets.token_urlsafe(24)
    url = authorize_url(p.login_base, client_id, p.redirect_uri, state)
    code = await _receive_code(url, p.redirect_uri, state, say)
    REDACT.add(code)
    file = LoginFile(settings.mirror.root)
    async with procore_client(settings, connections=4) as api:
        async with file.turn():
            grant = {"grant_type": "authorization_code", "code": code, "redirect_uri": p.redirect_uri}
            now = time.time()
            answer = await api.http.post_token(grant, refused="Procore refused the sign-in code", retry=False)
            access, refresh, expires_at = parse_tokens(answer, now)
            REDACT.add(access)
            REDACT.add(refresh)
            # Saved before anything else: from here on, this is the only copy of a working sign-in.
            first = SavedLogin(refresh, access, expires_at, "the signed-in user", redirect_uri=p.redirect_uri)
            await asyncio.to_thread(file.write, first)
        who = await api.me()
        async with file.turn():
            if (saved := file.read()) is not None:
                await asyncio.to_thread(file.write, replace(saved, user=who))
        signed_in = (
            f"signed in to Procore as {who}; the sign-in is saved in {file.path}, which only this user "
            "can read (sign in as the user the syncer runs as)"
        )
        try:
            companies = await api.companies()
        except ProcoreError as exc:
            return f"{signed_in}\ncould not list the companies this user can see ({exc})"
        company = next((c for c in companies if c.id == p.company_id), None)
        if company is None:
            listed = ", ".join(f"{c.name} ({c.id})" for c in companies) or "none"
            raise ConfigError(
                f"{signed_in}, but this user cannot see company {p.company_id} (procore.company_id); "
                f"the companies they can see: {listed}"
            )
        try:
            await api.projects()
        except ProcoreError as exc:
            if exc.status not in (403, 404):
                raise
            raise ConfigError(
                f"{signed_in}, but company {company.name} ({company.id}) does not let this user use the "
                f"app ({exc}): a company admin can turn on Allow User Installs, or install the app"
            ) from None
    return (
        f"{signed_in}\ncompany {company.name} ({company.id}) is visible; `syncer sync` now runs as this user"
    )


async def _receive_code(url: str, redirect_uri: str, state: str, say: Callable[[str], None]) -> str:
    address = loopback(redirect_uri)
    if address is None:
        say(f"Open this address in a browser, sign in to Procore and allow the app:\n\n  {url}\n")
        say("Then paste the code Procore shows here and press Enter:")
        try:
            code = (await asyncio.wait_for(_read_line(), LOGIN_TIMEOUT)).strip()
        except TimeoutError:
            minutes = f"{LOGIN_TIMEOUT / 60:.0f} minutes"
            raise ConfigError(f"no code was pasted in {minutes}: run syncer login again") from None
        if not code:
            raise ConfigError("no code was pasted: run syncer login again")
        if len(code) > CODE_CHARS or not code.isprintable() or " " in code:
            raise ConfigError("that is not a Procore authorization code: paste the code alone, on one line")
        return code
    host, port, path = address
    received: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def callback(request: web.Request) -> web.Response:
        query = request.query
        if query.get("state") != state:
            return web.Response(status=400, text="This answer is not for the login that is waiting.")
        if error := query.get("error"):
            detail = query.get("error_description", "")
            if not received.done():
                received.set_exception(ConfigError(f"Procore did not sign you in: {error} {detail}".strip()))
            return web.Response(text="Procore did not sign you in; see the terminal.")
        code = query.get("code", "")
        if not code or len(code) > CODE_CHARS:
            return web.Response(status=400, text="No code in this answer.")
        if not received.done():
            received.set_result(code)
        return web.Response(text="Signed in. You can close this tab and go back to the terminal.")

    app = web.Application()
    app.router.add_get(path, callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigError(
                f"procore.redirect_uri {redirect_uri}: cannot listen on {host}:{port} ({exc.strerror})"
            ) from None
        say(f"Open this address in a browser, sign in to Procore and allow the app:\n\n  {url}\n")
        say(f"Waiting for Procore to send the browser back to {redirect_uri} ...")
        try:
            return await asyncio.wait_for(received, LOGIN_TIMEOUT)
        except TimeoutError:
            raise ConfigError(
                f"no answer from Procore in {LOGIN_TIMEOUT / 60:.0f} minutes: run syncer login again"
            ) from None
    finally:
        await runner.cleanup()


async def _read_line() -> str:
    """A line from standard input, read on the event loop (not a thread that Ctrl-C could not stop)."""
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()
    if sys.stdin is None or sys.stdin.closed:
        raise ConfigError("standard input is closed: paste the code Procore shows into syncer login")
    fd = sys.stdin.fileno()
    if not stat.S_ISFIFO(os.fstat(fd).st_mode) and not os.isatty(fd):  # a file: never waits
        return sys.stdin.readline()
    received = bytearray()

    def readable() -> None:
        chunk = os.read(fd, 4096)
        received.extend(chunk)
        if (not chunk or b"\n" in received) and not line.done():
            line.set_result(received.split(b"\n", 1)[0].decode(errors="replace"))

    loop.add_reader(fd, readable)
    try:
        return await line
    finally:
        loop.remove_reader(fd)


async def logout(settings: Settings) -> str:
    """Forget the saved sign-in, after asking Procore to revoke it."""
    _need_user_auth(settings)
    check_owner(settings.mirror.root)
    file = LoginFile(settings.mirror.root)
    async with file.turn():
        try:
            saved = file.read()
        except AuthError:  # damaged: nothing to revoke, but it still goes
            saved = None
        if saved is None and not file.path.exists():
            return "not signed in: nothing to forget"
        revoked = ""
        if saved is not None:
            REDACT.add(saved.refresh_token)
            async with procore_client(settings, connections=2) as api:
                try:
                    await api.http.revoke(saved.refresh_token)
                    revoked = " and revoked in Procore"
                except SyncerError as exc:  # offline, an outage: it is forgotten here all the same
                    revoked = f" (Procore did not confirm revoking it: {exc})"
        with contextlib.suppress(FileNotFoundError):
            file.remove()
    return f"signed out: the saved sign-in was removed{revoked}"
