"""Wiring for sync runs: the HTTP session, client, store, mirror and engine, in that order.

The composition root: the only module that knows every part, so the parts need not know each
other. `open_syncer` builds them once; `run_sync` (for `syncer sync` and `syncer demo`) uses them
for one run, and the daemon keeps them for its whole life.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

import syncer
from syncer.config import Settings
from syncer.engine import ProjectResult, SyncEngine
from syncer.errors import ExitCode
from syncer.locks import Locks
from syncer.log import REDACT
from syncer.mirror.fetch import Fetcher
from syncer.mirror.files import MirrorFS
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


@dataclass
class Syncer:
    """The long-lived parts of a syncer process."""

    settings: Settings
    api: ProcoreApi
    store: Store
    fs: MirrorFS
    engine: SyncEngine
    locks: Locks

    def wanted(self, project_ids: Sequence[int] | None = None) -> list[int] | None:
        if project_ids:
            return list(project_ids)
        return None if self.settings.sync.projects == "all" else list(self.settings.sync.projects)

    async def projects(self, project_ids: Sequence[int] | None = None) -> tuple[list[Project], list[str]]:
        """The projects to sync, in Procore's order, and an error for each wanted id not visible."""
        visible = await self.api.projects()
        wanted = self.wanted(project_ids)
        if wanted is None:
            return visible, []
        by_id = {p.id: p for p in visible}
        errors = [
            f"project {pid} is not visible to this service account" for pid in wanted if pid not in by_id
        ]
        return [by_id[pid] for pid in wanted if pid in by_id], errors


@asynccontextmanager
async def procore_client(settings: Settings, *, connections: int) -> AsyncIterator[ProcoreApi]:
    """One HTTP session for the whole process, with the credentials registered for redaction."""
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


@asynccontextmanager
async def open_syncer(
    settings: Settings, *, progress: Progress, connections: int | None = None
) -> AsyncIterator[Syncer]:
    concurrency = settings.sync.concurrency
    store = await Store.open(settings.database_url)
    fs = MirrorFS(settings.mirror.root, threads=concurrency + 2)
    try:
        fs.prepare()
        async with procore_client(settings, connections=connections or concurrency * 2 + 4) as api:
            engine = SyncEngine(
                api=api,
                store=store,
                fs=fs,
                fetcher=Fetcher(api.http, fs),
                layout=Layout(settings.mirror.layout),
                settings=settings.sync,
                mirror=settings.mirror,
                progress=progress,
                retry=api.http.retry,
            )
            yield Syncer(settings, api, store, fs, engine, Locks(settings.mirror.root))
    finally:
        fs.close()
        await store.close()


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
    progress = progress or LogProgress()
    max_duration = settings.sync.max_duration
    deadline = asyncio.get_running_loop().time() + max_duration if max_duration else None
    async with open_syncer(settings, progress=progress) as syncer:
        projects, summary.errors = await syncer.projects(project_ids)
        with syncer.locks.projects([p.id for p in projects]):
            if retry_failed:
                await syncer.store.retry_now([p.id for p in projects])
            if not dry_run:
                await syncer.store.save_projects(settings.procore.company_id, projects)
            with progress:
                for project in projects:
                    result = await syncer.engine.sync_project(
                        project, full=full, dry_run=dry_run, force=force, deadline=deadline
                    )
                    summary.results.append(result)
    summary.seconds = time.monotonic() - started
    return summary
