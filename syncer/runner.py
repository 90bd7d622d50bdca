"""Wiring for one sync run: the HTTP session, client, store, mirror and engine, in that order.

The composition root: the only module that knows every part, so the parts need not know each
other. `syncer sync`, `syncer demo` and the daemon all run syncs through `run_sync`.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

import syncer
from syncer.config import Settings
from syncer.engine import ProjectResult, SyncEngine
from syncer.errors import ExitCode, LockedError
from syncer.log import REDACT
from syncer.mirror.fetch import Fetcher
from syncer.mirror.files import STATE_DIR, MirrorFS
from syncer.mirror.layout import Layout
from syncer.procore.api import ProcoreApi
from syncer.procore.http import ProcoreHttp, RetryPolicy
from syncer.procore.models import Project
from syncer.report import LogProgress, Progress
from syncer.store import Store


@dataclass
class RunSummary:
    results: list[ProjectResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Problems outside any one project (a configured project that is not visible, say)."""
    seconds: float = 0.0

    @property
    def exit_code(self) -> ExitCode:
        ok = not self.errors and all(r.ok for r in self.results)
        return ExitCode.OK if ok else ExitCode.INCOMPLETE


@contextmanager
def mirror_lock(root: Path) -> Iterator[None]:
    """One run at a time per mirror: a second `syncer` on the same mirror stops at once."""
    state = root / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"another syncer is already working on {root} (lock: {state / 'lock'})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


@asynccontextmanager
async def procore_client(settings: Settings, *, connections: int) -> AsyncIterator[ProcoreApi]:
    """One HTTP session for the whole run, with the credentials registered for redaction."""
    p = settings.procore
    secret = p.client_secret.get_secret_value()
    REDACT.add(secret)
    timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_connect=10, sock_read=p.request_timeout)
    connector = aiohttp.TCPConnector(limit=connections, ttl_dns_cache=300)
    async with aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": f"procore-photo-sync/{syncer.__version__}"},
    ) as session:
        http = ProcoreHttp(
            session,
            api_base=p.api_base,
            login_base=p.login_base,
            company_id=p.company_id,
            client_id=p.client_id.get_secret_value(),
            client_secret=secret,
            retry=RetryPolicy(attempts=p.retry_attempts),
        )
        http.tokens.on_new_token = REDACT.add
        yield ProcoreApi(http, company_id=p.company_id)


async def select_projects(api: ProcoreApi, wanted: Sequence[int] | None) -> tuple[list[Project], list[str]]:
    """The projects to sync, in Procore's order, and an error for each wanted id not visible."""
    visible = await api.projects()
    if wanted is None:
        return visible, []
    by_id = {p.id: p for p in visible}
    errors = [f"project {pid} is not visible to this service account" for pid in wanted if pid not in by_id]
    return [by_id[pid] for pid in wanted if pid in by_id], errors


async def run_sync(
    settings: Settings,
    *,
    project_ids: Sequence[int] | None = None,
    full: bool = False,
    dry_run: bool = False,
    force: bool = False,
    retry_failed: bool = False,
    progress: Progress | None = None,
) -> RunSummary:
    """One sync run over the selected projects; `retry_failed` first makes failed photos due now."""
    started = time.monotonic()
    summary = RunSummary()
    wanted = project_ids or (None if settings.sync.projects == "all" else list(settings.sync.projects))
    concurrency = settings.sync.concurrency
    progress = progress or LogProgress()
    with mirror_lock(settings.mirror.root):
        store = await Store.open(settings.database_url)
        fs = MirrorFS(settings.mirror.root, threads=concurrency + 2)
        try:
            fs.prepare()
            if retry_failed:
                await store.retry_now(wanted)
            async with procore_client(settings, connections=concurrency * 2 + 4) as api:
                projects, summary.errors = await select_projects(api, wanted)
                if not dry_run:
                    await store.save_projects(settings.procore.company_id, projects)
                engine = SyncEngine(
                    api=api,
                    store=store,
                    fs=fs,
                    fetcher=Fetcher(api.http, fs),
                    layout=Layout(settings.mirror.layout),
                    settings=settings.sync,
                    mirror=settings.mirror,
                    progress=progress,
                )
                with progress:
                    for project in projects:
                        summary.results.append(
                            await engine.sync_project(project, full=full, dry_run=dry_run, force=force)
                        )
        finally:
            fs.close()
            await store.close()
    summary.seconds = time.monotonic() - started
    return summary
