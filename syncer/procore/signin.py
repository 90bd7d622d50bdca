"""Signing in as a person: Procore's User Level Authentication (the OAuth authorization code
grant), and the refresh token that keeps the sign-in alive between runs.

Procore's refresh tokens are single-use, and the old one dies the moment a refresh is *sent*, even
if the answer is lost. So the saved sign-in (`.syncer/procore-login.json` in the mirror, mode
0600, nothing else holds it) follows one rule: the new refresh token is on disk (temp file, fsync,
rename, folder fsync) before the new access token is used. Before a refresh is sent, the file
records that one is under way; if the process is killed while Procore answers, the next run finds
that mark, and when Procore then refuses the old token it says so and names `syncer login` as the
fix. Nothing can do better: the only token that would still work was in the lost answer.

Processes sharing a mirror (a cron run beside the daemon) take turns: one file lock is held from
reading the saved sign-in to writing the new one, and a process that waited reads the file again,
so it uses the token its neighbour just obtained instead of spending the dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from syncer.errors import LocalFault, SyncerError, local_fault
from syncer.locks import Locks
from syncer.mirror.files import STATE_DIR, fsync_dir, replace_file, state_folder
from syncer.procore.auth import RENEW_BEFORE, AuthError, PostToken

log = logging.getLogger(__name__)
OUT_OF_BAND = "urn:ietf:wg:oauth:2.0:oob"
"""The redirect URI of a tool with no web server: Procore shows the code for the person to paste."""
LOGIN_FILE = "procore-login.json"
STOP_GRACE = 30.0
"""Seconds a stopping process waits for a refresh it has sent to be answered and saved."""


LOGIN_AGAIN = "sign in again with `syncer login`"


@dataclass(frozen=True)
class SavedLogin:
    refresh_token: str
    access_token: str | None
    expires_at: float
    """When the access token dies (Unix time, this machine's clock)."""
    user: str
    """Who signed in, for messages ("Pat Jones (pat@example.com)")."""
    refreshing_since: float | None = None
    """Set, durably, just before a refresh is sent; cleared with the answer saved."""
    redirect_uri: str | None = None
    """The redirect URI the sign-in was made with, which each refresh names again, as Procore's
    own example does. None in a sign-in saved before it was kept: the configured one is sent."""

    def __repr__(self) -> str:  # never print a token, even in a debugger
        return f"SavedLogin(user={self.user!r}, expires_at={self.expires_at:.0f})"


class LoginFile:
    """The saved sign-in of one mirror, and the lock that makes its refreshes take turns."""

    def __init__(self, mirror_root: Path) -> None:
        self.folder = mirror_root / STATE_DIR
        self.path = self.folder / LOGIN_FILE
        self.locks = Locks(mirror_root)

    def read(self) -> SavedLogin | None:
        """The saved sign-in, or None if there is none; a damaged file is an AuthError."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuthError(
                f"the saved Procore sign-in {self.path} cannot be read ({exc.strerror})"
            ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise AuthError(f"the saved Procore sign-in {self.path} is not a file: {LOGIN_AGAIN}")
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read()
        try:
            saved = json.loads(raw)
            login = SavedLogin(
                refresh_token=str(saved["refresh_token"]),
                access_token=saved["access_token"] if isinstance(saved["access_token"], str) else None,
                expires_at=float(saved["expires_at"]),
                user=str(saved["user"]),
                refreshing_since=float(saved["refreshing_since"]) if saved.get("refreshing_since") else None,
                redirect_uri=saved["redirect_uri"] if isinstance(saved.get("redirect_uri"), str) else None,
            )
        except (ValueError, KeyError, TypeError):
            raise AuthError(f"the saved Procore sign-in {self.path} is damaged: {LOGIN_AGAIN}") from None
        return login

    def write(self, login: SavedLogin) -> None:
        """Replace the saved sign-in durably, readable by this user alone."""
        state_folder(self.folder)
        try:
            replace_file(self.path, json.dumps(asdict(login)).encode(), mode=0o600)
        except IsADirectoryError:
            raise LocalFault(
                f"{self.path} is a folder, where the syncer keeps the sign-in: remove it"
            ) from None

    def remove(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(self.folder)
        return True

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """This process's turn with the saved sign-in; other processes wait for theirs."""
        async with self.locks.waiting("procore-login"):
            await asyncio.to_thread(self._recover)
            yield

    def _recover(self) -> None:
        """Finish a save that a killed process left between writing its temporary file (fsynced)
        and renaming it: the newest such file that reads whole is the sign-in it was saving (which
        may be the only one Procore still accepts). Any others go."""
        leftovers = sorted(
            self.folder.glob(f".{LOGIN_FILE}.*.tmp"), key=lambda p: p.lstat().st_mtime_ns, reverse=True
        )
        for number, tmp in enumerate(leftovers):
            if number == 0 and tmp.is_file() and not tmp.is_symlink() and _readable(tmp):
                os.replace(tmp, self.path)
                fsync_dir(self.folder)
            else:
                with contextlib.suppress(OSError):
                    tmp.unlink()


def _readable(path: Path) -> bool:
    try:
        saved = json.loads(path.read_bytes())
        return isinstance(saved, dict) and isinstance(saved.get("refresh_token"), str)
    except (OSError, ValueError):
        return False


MAX_LIFETIME = 366 * 86400.0
"""The longest access-token life taken as said (a larger `expires_in` is read as this)."""


def parse_tokens(answer: dict[str, Any], now: float) -> tuple[str, str, float]:
    """(access token, refresh token, expiry) from a token answer of the authorization code or
    refresh grant; an answer without both tokens is refused."""
    access, refresh = answer.get("access_token"), answer.get("refresh_token")
    if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
        raise AuthError("Procore's token answer has no access and refresh token")
    expires_in = answer.get("expires_in")
    lifetime = 3600.0
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        lifetime = min(float(expires_in), MAX_LIFETIME) if 0 < expires_in < float("inf") else 3600.0
    return access, refresh, now + lifetime


class UserGrant:
    """Access tokens of a person's sign-in: the saved one while it lives, else a refresh."""

    def __init__(
        self,
        file: LoginFile,
        *,
        redirect_uri: str,
        on_secret: Callable[[str], None] = lambda _: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.file = file
        self.redirect_uri = redirect_uri
        """`procore.redirect_uri`, for a saved sign-in that does not say its own."""
        self.on_secret = on_secret
        """Called with each token read or received, so the log redactor learns it."""
        self.clock = clock
        self._unsaved: SavedLogin | None = None
        """A refreshed sign-in the disk refused: the only working one, kept until a save works."""
        self._spent: str | None = None
        """The refresh token `_unsaved` replaced: a file still holding it may be overwritten."""
        self._used: set[str] = set()
        """Access tokens this process was given: asked again, it needs another (one expired or died)."""

    async def fetch(self, post: PostToken) -> dict[str, Any]:
        async with self.file.turn():
            await self._save()  # a sign-in this process could not save before
            saved = self._unsaved or self.file.read()
            if saved is None:
                raise AuthError(f"not signed in to Procore: {LOGIN_AGAIN}")
            self.on_secret(saved.refresh_token)
            now = self.clock()
            if (
                saved.access_token
                and saved.access_token not in self._used
                and saved.expires_at - RENEW_BEFORE > now
            ):
                self.on_secret(saved.access_token)
                return self._hand_out(saved.access_token, saved.expires_at - now)
            return await self._refresh(saved, post, now)

    async def _refresh(self, saved: SavedLogin, post: PostToken, now: float) -> dict[str, Any]:
        interrupted = saved.refreshing_since is not None
        try:  # the mark first: if the disk refuses it, nothing is sent and nothing is spent
            await asyncio.to_thread(self.file.write, replace(saved, refreshing_since=now))
        except OSError as exc:
            raise local_fault(exc, "the saved Procore sign-in") or exc from None
        # Once sent, the old token is spent: a stop (Ctrl-C, SIGTERM, `systemctl stop`) waits for
        # the answer to be saved rather than lose the only token that still works.
        exchange = asyncio.ensure_future(self._exchange(saved, post, now, interrupted))
        try:
            return await asyncio.shield(exchange)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(exchange, STOP_GRACE)
            raise

    async def _exchange(
        self, saved: SavedLogin, post: PostToken, now: float, interrupted: bool
    ) -> dict[str, Any]:
        redirect_uri = saved.redirect_uri or self.redirect_uri
        grant = {
            "grant_type": "refresh_token",
            "refresh_token": saved.refresh_token,
            "redirect_uri": redirect_uri,
        }
        refused = f"Procore refused the saved sign-in of {saved.user}"
        if interrupted:
            refused += " (a refresh was interrupted before its answer was saved, which spends the token)"
        try:
            # Sent once: a retry after a lost answer would spend a token that is already dead.
            answer = await post(grant, refused=refused, retry=False)
        except SyncerError as exc:
            if not isinstance(exc, AuthError):  # no usable answer: Procore may have spent it or not
                log.warning(
                    "the refresh of the Procore sign-in got no usable answer (%s); if the next run "
                    "is refused, %s",
                    exc,
                    LOGIN_AGAIN,
                )
                raise
            # Refused, not interrupted: the mark goes, so later runs do not blame an interruption.
            # (It may be the client that was refused, a secret since rotated: the token is kept.)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.file.write, replace(saved, refreshing_since=None))
            raise AuthError(f"{exc}; {LOGIN_AGAIN}") from None
        try:
            access, refresh, expires_at = parse_tokens(answer, now)
        except AuthError as exc:
            raise AuthError(f"{exc}, and the old one is spent: {LOGIN_AGAIN}") from None
        self.on_secret(access)
        self.on_secret(refresh)
        self._unsaved = SavedLogin(refresh, access, expires_at, saved.user, redirect_uri=redirect_uri)
        self._spent = saved.refresh_token
        await self._save()
        log.debug("refreshed the Procore sign-in of %s", saved.user)
        return self._hand_out(access, expires_at - now)

    async def _save(self) -> None:
        """Save the sign-in only this process holds. If the disk refuses (full, read-only), this
        process goes on with it (a backup run is worth finishing) and tries again at its next
        refresh; a process that ends first leaves the mark, and the next run asks for a login. A
        file that a `syncer login` or `logout` changed since is left as it is."""
        if self._unsaved is None:
            return
        try:
            on_disk = self.file.read()
        except AuthError:
            on_disk = None
        if on_disk is None or on_disk.refresh_token != self._spent:
            self._unsaved = None  # signed out, or signed in anew: that is what counts now
            return
        try:
            await asyncio.to_thread(self.file.write, self._unsaved)
        except OSError as exc:
            log.error(
                "the refreshed Procore sign-in could not be saved in %s (%s): this process goes on "
                "with it; unless a later save works, the next run will need `syncer login`",
                self.file.path,
                exc.strerror or exc,
            )
            return
        self._unsaved = None

    def _hand_out(self, access: str, lifetime: float) -> dict[str, Any]:
        self._used.add(access)
        return {"access_token": access, "expires_in": lifetime}


def authorize_url(login_base: str, client_id: str, redirect_uri: str, state: str) -> str:
    query = urlencode(
        {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": state}
    )
    return f"{login_base}/oauth/authorize?{query}"


def loopback(redirect_uri: str) -> tuple[str, int, str] | None:
    """(host, port, path) when the redirect URI is this machine (`http://127.0.0.1:8765/callback`),
    where `syncer login` itself receives the code; None for out-of-band and anything else."""
    if redirect_uri == OUT_OF_BAND:
        return None
    parts = urlsplit(redirect_uri)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1") or not parts.port:
        return None
    return parts.hostname, parts.port, parts.path or "/"


def check_redirect_uri(value: str) -> str:
    if value == OUT_OF_BAND or loopback(value) is not None:
        return value
    raise ValueError(
        f"expected {OUT_OF_BAND} (paste the code Procore shows) or a loopback address with a port "
        f"like http://127.0.0.1:8765/callback, got {value!r}"
    )
