"""Wiring for sync runs: the HTTP session, client, store, mirror and engine, in that order.

The composition root: the only module that knows every part, so the parts need not know each
other. `open_syncer` builds them once; `run_sync` (for `syncer sync` and `syncer demo`) uses them
for one run, and the daemon keeps them for its whole life.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp

import syncer
from syncer.config import Settings
from syncer.engine import ProjectResult, SyncEngine
from syncer.errors import ExitCode
from syncer.locks import Locks
from syncer.log import REDACT
from syncer.membership import Membership, membership
from syncer.mirror.fetch import Fetcher
from syncer.mirror.files import MirrorFS
from syncer.mirror.layout import Layout
from syncer.procore.api import ProcoreApi
from syncer.procore.http import ProcoreHttp, RetryPolicy
from syncer.procore.models import Project
from syncer.procore.pacing import Pacer
from syncer.report import LogProgress, Progress
from syncer.store import Store

log = logging.getLogger(__name__)


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
    membership: Membership | None
    """This process as one of several workers (PostgreSQL); None with SQLite, where the file
    locks in `locks` keep runs apart."""

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
            pacer=Pacer(share=p.workers_share),
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
        async with (
            procore_client(settings, connections=connections or concurrency * 2 + 4) as api,
            _membership(settings, store) as member,
        ):
            engine = SyncEngine(
                api=api,
                store=store,
                fs=fs,
                fetcher=Fetcher(api.http, fs, shared=member is not None),
                layout=Layout(settings.mirror.layout),
                settings=settings.sync,
                mirror=settings.mirror,
                progress=progress,
                retry=api.http.retry,
                membership=member,
            )
            yield Syncer(settings, api, store, fs, engine, Locks(settings.mirror.root), member)
    finally:
        fs.close()
        await store.close()


@asynccontextmanager
async def _membership(settings: Settings, store: Store) -> AsyncIterator[Membership | None]:
    """With PostgreSQL, join the workers sharing it; SQLite has no membership."""
    if store.engine.dialect.name != "postgresql":
        yield None
        return
    async with membership(store, ttl=settings.database.lease_ttl, mirror_root=settings.mirror.root) as member:
        live, share = await member.shared.live_count(), settings.procore.workers_share
        if live * share > 1.0 + 1e-9:
            log.warning(
                "%d workers share this database, each spending procore.workers_share=%g of the rate "
                "budget (%g of it together); set procore.workers_share to %g or less to avoid 429s",
                live,
                share,
                live * share,
                1 / live,
            )
        yield member


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
        ids = [p.id for p in projects]
        with syncer.locks.projects(ids) if syncer.membership is None else contextlib.nullcontext():
            if retry_failed:
                await syncer.store.retry_now(ids)
            if not dry_run:
                await syncer.store.save_projects(settings.procore.company_id, projects)
            with progress:
                if syncer.membership is not None and not dry_run:
                    summary.results = await _share(
                        syncer, projects, full=full, force=force, deadline=deadline
                    )
                else:
                    for project in projects:
                        result = await syncer.engine.sync_project(
                            project, full=full, dry_run=dry_run, force=force, deadline=deadline
                        )
                        summary.results.append(result)
    summary.seconds = time.monotonic() - started
    return summary


async def _share(
    syncer: Syncer, projects: list[Project], *, full: bool, force: bool, deadline: float | None
) -> list[ProjectResult]:
    """Sync the projects as one of several workers.

    Each project is listed by the worker holding its lease. This worker first takes every project
    no one holds and no one has listed since this run began; then it downloads its share of the
    others until their holders let go. A project whose holder moved its checkpoint is done; one
    whose holder died or failed first is taken over and synced here."""
    member = syncer.membership
    assert member is not None
    engine, store = syncer.engine, syncer.store
    _, run_end = engine.window(None, engine.now())  # where this run's windows would end
    results: dict[int, ProjectResult] = {}
    busy_at: dict[int, datetime | None] = {}
    """The project's mark when it was first found busy."""

    async def mark(project: Project) -> datetime | None:
        """What a finished run of this kind moves: the checkpoint, or the last full run."""
        checkpoint, last_full = await store.marks(project.id)
        return last_full if full else checkpoint

    async def moved(project: Project) -> bool:
        """Whether another worker listed the project since this run began (or since it was busy)."""
        now = await mark(project)
        if now is None:
            return False
        return now >= run_end or (project.id in busy_at and now != busy_at[project.id])

    waiting = list(projects)
    while waiting:
        for project in list(waiting):
            if await moved(project):
                continue  # listed meanwhile: only its downloads may be left (below)
            async with member.project(project.id) as mine:
                if mine:
                    result = await engine.sync_project(project, full=full, force=force, deadline=deadline)
                    results[project.id] = result.absorb(results.get(project.id))
                    waiting.remove(project)
                elif project.id not in busy_at:
                    busy_at[project.id] = await mark(project)
        for project in list(waiting):
            log.info("project %s is listed by another worker; downloading a share of it", project.id)
            helped = await engine.help_project(project, deadline=deadline)
            results[project.id] = helped.absorb(results.get(project.id))
            if helped.stopped or await moved(project):
                waiting.remove(project)
    return [results[p.id] for p in projects if p.id in results]
