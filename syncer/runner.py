"""Wiring for sync runs: the HTTP session, client, store, mirror and engine, in that order.

The composition root of a syncing process: the module that puts the parts of a sync together, so
the parts need not know each other. `open_syncer` builds them once; `run_sync` (for `syncer sync`
and `syncer demo`) uses them for one run, and the daemon keeps them for its whole life. (Commands
that only read, `status`, `verify`, `export` and `gallery`, open the store themselves.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

import syncer
from syncer.config import Settings
from syncer.coordination import Coordinator
from syncer.coordination.solo import Solo
from syncer.coordination.team import team
from syncer.engine import Engine
from syncer.errors import ConfigError, NothingYet, SyncerError, database_error
from syncer.estimate import Budget
from syncer.locks import Locks
from syncer.log import REDACT
from syncer.mirror.fetch import Fetcher
from syncer.mirror.files import MirrorFS, check_owner, sharing_of
from syncer.mirror.identity import ensure_mirror
from syncer.mirror.layout import Layout
from syncer.mirror.sidecar import Sidecars
from syncer.procore.api import IncompleteListing, ProcoreApi
from syncer.procore.auth import Grant, ServiceAccount
from syncer.procore.http import ProcoreError, ProcoreHttp, RetryPolicy
from syncer.procore.models import Project
from syncer.procore.pacing import Pacer
from syncer.procore.signin import LoginFile, UserGrant
from syncer.report import LogProgress, Progress
from syncer.result import RunSummary, Turns
from syncer.store import Store

if TYPE_CHECKING:
    from syncer.gallery import GalleryReport

log = logging.getLogger(__name__)
GALLERY_INTERRUPTED = (
    "the gallery was not brought up to date: interrupted; the next sync (or `syncer gallery`) does it"
)
MAX_HEADER = 32 * 1024
"""Bytes one answer header may hold: Procore's `Link` repeats the query four times, and a query
that names ids (`filters[id]`) is long."""


@dataclass
class Selection:
    """Which of the company's projects the configuration selects, as Procore shows them."""

    settings: Settings
    api: ProcoreApi

    @property
    def who(self) -> str:
        return (
            "the signed-in user"
            if self.settings.procore.auth == "authorization_code"
            else "this service account"
        )

    async def _company_refused(self, exc: ProcoreError) -> ConfigError:
        """Why Procore will not show the company: for a person, whether they cannot see it at all or
        the company does not let them use an app its admins did not install."""
        company = self.settings.procore.company_id
        if self.settings.procore.auth == "client_credentials":
            return ConfigError(
                f"Procore does not let this service account see company {company} ({exc}): check "
                "procore.company_id, and that the account's app is installed in that company"
            )
        try:
            theirs = await self.api.companies()
        except ProcoreError:
            theirs = None
        if theirs is not None and company not in {c.id for c in theirs}:
            listed = ", ".join(f"{c.name} ({c.id})" for c in theirs) or "none"
            return ConfigError(
                f"the signed-in user cannot see company {company}; the companies they can see: {listed}: "
                "check procore.company_id, or sign in as someone in that company (syncer login)"
            )
        return ConfigError(
            f"company {company} does not let the signed-in user use this app ({exc}): a company admin "
            "can turn on Allow User Installs in the company's App Management, or install the app"
        )

    def wanted(self, project_ids: Sequence[int] | None = None) -> list[int] | None:
        if project_ids:
            return list(project_ids)
        return None if self.settings.sync.projects == "all" else list(self.settings.sync.projects)

    async def projects(self, project_ids: Sequence[int] | None = None) -> tuple[list[Project], list[str]]:
        """The projects to sync, in Procore's order, and an error for each wanted id not visible.

        A company Procore will not show, or wanted projects none of which are visible, is a
        configuration or permission problem (exit 2) rather than a failed run: nothing could be
        synced, and running again will not change that."""
        company = self.settings.procore.company_id
        wanted = self.wanted(project_ids)
        closed = wanted is not None or self.settings.sync.project_status == "all"
        try:
            visible, errors = await self.api.projects(closed=closed), []
        except IncompleteListing as exc:  # sync what was listed; the run still ends incomplete
            visible, errors = exc.projects, [str(exc)]
        except ProcoreError as exc:
            if exc.status not in (403, 404):
                raise
            raise await self._company_refused(exc) from None
        if wanted is None:
            return visible, errors
        by_id = {p.id: p for p in visible}
        missing = list(dict.fromkeys(pid for pid in wanted if pid not in by_id))
        if missing and set(missing) == set(wanted) and not errors:
            named = ", ".join(map(str, missing))
            one = len(missing) == 1
            raise ConfigError(
                f"{'project' if one else 'projects'} {named} of company {company} {'is' if one else 'are'} "
                f"not visible to {self.who}: check the ids (--project, sync.projects) and the "
                "account's access in each project's Directory"
            )
        errors = [
            *(errors if missing else []),
            *(f"project {pid} is not visible to {self.who}" for pid in missing),
        ]
        return [by_id[pid] for pid in dict.fromkeys(wanted) if pid in by_id], errors


@dataclass
class Syncer(Selection):
    """The long-lived parts of a syncer process."""

    store: Store
    fs: MirrorFS
    engine: Engine
    coordinator: Coordinator
    """How this process shares the mirror: file locks (SQLite) or leases and claims (PostgreSQL)."""

    async def after_sync(self, project_ids: Sequence[int] | None) -> tuple[GalleryReport | None, str | None]:
        """What follows syncing these projects (None: every project), for a one-shot run and a
        daemon's turn alike: the gallery brought up to date. What its build did, and what went
        wrong in one line (the photos are safe either way)."""
        try:
            return await self.refresh_gallery(project_ids), None
        except SyncerError as exc:
            return None, f"the gallery was not brought up to date: {exc}"

    async def refresh_gallery(self, project_ids: Sequence[int] | None) -> GalleryReport | None:
        """With `gallery.enabled`, bring the gallery up to date for `project_ids` (None: every
        project, removing the pages of projects that left). A gallery that cannot be written
        raises a SyncerError naming it: the photos are safe either way."""
        if not self.settings.gallery.enabled:
            return None
        from syncer.gallery import gallery_of  # imported by the runs that build one

        return await gallery_of(self.settings).build(self.store, project_ids)


def grant_of(settings: Settings) -> Grant:
    """How this process obtains access tokens: `procore.auth` decides, once."""
    if settings.procore.auth == "authorization_code":
        return UserGrant(
            LoginFile(settings.mirror.root), redirect_uri=settings.procore.redirect_uri, on_secret=REDACT.add
        )
    return ServiceAccount()


@asynccontextmanager
async def procore_client(settings: Settings, *, connections: int) -> AsyncIterator[ProcoreApi]:
    """One HTTP session for the whole process, with the credentials registered for redaction."""
    p = settings.procore
    secret = p.client_secret.get_secret_value()
    REDACT.add(secret)
    timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_connect=10, sock_read=p.request_timeout)
    tls = ssl.create_default_context()
    if p.ca_file is not None:
        tls.load_verify_locations(cafile=p.ca_file)
    connector = aiohttp.TCPConnector(limit=connections, ttl_dns_cache=300, ssl=tls)
    async with aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        max_field_size=MAX_HEADER,
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
            grant=grant_of(settings),
        )
        http.tokens.on_new_token = REDACT.add
        yield ProcoreApi(http, company_id=p.company_id)


@asynccontextmanager
async def _store(settings: Settings, *, dry_run: bool) -> AsyncIterator[Store]:
    """The configured database; for a dry run, never made or pruned: where there is none yet, a
    throwaway one in a temporary folder, against which every photo is new."""
    with (
        tempfile.TemporaryDirectory(prefix="syncer-dry-run-")
        if dry_run
        else contextlib.nullcontext() as spare
    ):
        if spare is None:
            store = await Store.open(settings.database_url, keep_runs=settings.database.keep_runs)
        else:
            try:
                store = await Store.open(settings.database_url, create=False)
            except NothingYet:
                store = await Store.open(f"sqlite+aiosqlite:///{spare}/empty.db")
        try:
            yield store
        finally:
            await store.close()


@asynccontextmanager
async def open_syncer(
    settings: Settings,
    *,
    progress: Progress,
    connections: int | None = None,
    new_mirror: bool = False,
    dry_run: bool = False,
) -> AsyncIterator[Syncer]:
    """The parts of a syncer process. Nothing is written under the mirror root before it proved to
    be the mirror the database knows (`ensure_mirror`); `new_mirror` makes it so. Nothing at all,
    the database included, by another user than the mirror's owner (`check_owner`). A dry run
    creates nothing: no database, no state folder, no lock (so any user may make one)."""
    concurrency = settings.sync.concurrency
    if not dry_run:
        check_owner(settings.mirror.root)
    async with _store(settings, dry_run=dry_run) as store:
        fs = MirrorFS(
            settings.mirror.root,
            threads=concurrency + 2,
            sidecars=Sidecars(settings.mirror.xmp, settings.procore.web_base),
            sharing=sharing_of(settings.mirror.group),
        )
        try:
            fs.identity = await ensure_mirror(store, fs.root, new=new_mirror, create=not dry_run)
            if not dry_run:
                fs.prepare()
            async with (
                procore_client(settings, connections=connections or concurrency * 2 + 4) as api,
                _coordinator(settings, store, fs, dry_run=dry_run) as coordinator,
            ):
                engine = Engine(
                    api=api,
                    store=store,
                    fs=fs,
                    fetcher=Fetcher(
                        api.http,
                        fs,
                        shared=coordinator.shares_mirror,
                        max_size=settings.mirror.max_file_size,
                        deadline=settings.procore.download_timeout,
                        on_bytes=progress.received,
                    ),
                    layout=Layout(settings.mirror.layout),
                    settings=settings.sync,
                    mirror=settings.mirror,
                    progress=progress,
                    work=coordinator,
                    retry=api.http.retry,
                )
                yield Syncer(settings, api, store, fs, engine, coordinator)
        finally:
            fs.close()


@asynccontextmanager
async def _coordinator(
    settings: Settings, store: Store, fs: MirrorFS, *, dry_run: bool
) -> AsyncIterator[Coordinator]:
    """Where a syncing process asks which database this is: PostgreSQL makes it one of several
    workers; SQLite keeps processes apart with file locks (`verify` and `status` ask too, for
    what they show of the workers). A dry run joins no team (it
    holds no lock either: see `_run`)."""
    if dry_run or store.engine.dialect.name != "postgresql":
        yield Solo(store, Locks(settings.mirror.root))
        return
    async with team(store, fs, ttl=settings.database.lease_ttl, share=settings.procore.workers_share) as mine:
        yield mine


async def run_sync(
    settings: Settings,
    *,
    project_ids: Sequence[int] | None = None,
    full: bool = False,
    dry_run: bool = False,
    force: bool = False,
    retry_failed: bool = False,
    new_mirror: bool = False,
    progress: Progress | None = None,
    summary: RunSummary | None = None,
) -> RunSummary:
    """One sync run over the selected projects; `retry_failed` first makes failed photos due now.
    `new_mirror`: the mirror root becomes the mirror (a new disk), and the run is a full one, so
    every recorded file is looked for and what is missing fetched.

    The run fills in `summary` (a new one if not given) as it goes, and this is where its tallies
    are known: a run cancelled by Ctrl-C or SIGTERM still completes it (what it mirrored, what it
    leaves to the next run, what stopped it) before the cancellation goes on, so a caller that
    passed its own `summary` can print it then."""
    summary = RunSummary() if summary is None else summary
    progress = progress or LogProgress()
    started = time.monotonic()
    try:
        with database_errors(settings.database_url):
            await _run(
                settings,
                summary,
                started,
                project_ids,
                full=full,
                dry_run=dry_run,
                force=force,
                retry_failed=retry_failed,
                new_mirror=new_mirror,
                progress=progress,
            )
    except asyncio.CancelledError as stop:
        # run_stoppable names SIGTERM; asyncio.run cancels the run without a word on Ctrl-C
        summary.interrupted = stop.args[0] if stop.args and isinstance(stop.args[0], str) else "Ctrl-C"
        summary.seconds = summary.seconds or time.monotonic() - started  # set once the syncing ended
        raise
    finally:  # stopped before its end, once it knew its projects: what it leaves to the next run
        if (summary.interrupted or any(r.stopped for r in summary.results)) and progress.tally.projects:
            summary.left = progress.tally.left()
    return summary


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """A statement the database refused (full, read-only, gone) as one line naming it."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise database_error(exc, make_url(url).render_as_string(hide_password=True)) from None


async def _run(
    settings: Settings,
    summary: RunSummary,
    started: float,
    project_ids: Sequence[int] | None,
    *,
    full: bool,
    dry_run: bool,
    force: bool,
    retry_failed: bool,
    new_mirror: bool,
    progress: Progress,
) -> None:
    full = full or new_mirror
    async with open_syncer(
        settings, progress=progress, new_mirror=new_mirror and not dry_run, dry_run=dry_run
    ) as syncer:
        engine, coordinator = syncer.engine, syncer.coordinator
        deadline = engine.deadline()
        projects, summary.errors = await syncer.projects(project_ids)
        progress.expect((p.id for p in projects), budget=Budget.of(settings))
        ids = [p.id for p in projects]
        with contextlib.nullcontext() if dry_run else coordinator.hold(ids):  # a dry run only reads
            if retry_failed:
                await syncer.store.retry_now(ids)
            if not dry_run:
                await syncer.store.save_projects(settings.procore.company_id, projects)
            with progress:
                if not (dry_run or full):
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(deadline):
                            await engine.count_backlog(projects)  # the ETA's counts, before any turn
                turns = Turns()
                try:
                    if dry_run:
                        for project in projects:
                            turns.end(
                                await engine.sync_project(project, dry_run=True, full=full, turns=turns)
                            )
                    else:
                        await coordinator.sync(
                            engine, projects, turns, full=full, force=force, deadline=deadline
                        )
                finally:  # interrupted too: what each project's turns did so far
                    summary.results = turns.results(projects)
                    summary.seconds = time.monotonic() - started  # the gallery's time is its own
        if not dry_run:
            try:
                summary.gallery, problem = await syncer.after_sync(
                    None if syncer.wanted(project_ids) is None else ids
                )
            except asyncio.CancelledError:
                if settings.gallery.enabled:
                    summary.errors.append(GALLERY_INTERRUPTED)
                raise
            summary.errors += [problem] if problem else []
