"""`syncer run`: the service that keeps the mirror minutes behind Procore, for months unattended.

APScheduler 3 runs one job per project and kind (incremental, full reconcile) with
`max_instances=1` and `coalesce`, so a slow run is never doubled and missed ticks collapse into one.
Projects run concurrently up to `schedule.max_parallel_projects`, sharing one HTTP session and so
one rate-limit pacer. Each run takes the project's file lock, so a cron `syncer sync` and the
daemon never work on the same project at once. With PostgreSQL, several daemons (on one host or
many) share the work: a run takes the project's lease in the database, and a run that finds the
lease taken downloads a share of the project's photos instead.

SIGTERM/SIGINT stop taking work and cancel running syncs: workers stop at their next await, what is
done is committed, partial files stay under `.syncer/tmp/` for the next run to resume. SIGHUP
reloads the configuration (what cannot change without a restart is said in the log).

The operator hears about incidents, not ticks: the first failed run of a project, an
authentication failure (once, until it works again), and each recovery.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.exc import SQLAlchemyError

from syncer.config import Every, Settings, load_settings
from syncer.errors import ConfigError, MirrorMissing, SyncerError
from syncer.mirror.layout import Layout
from syncer.notify import Notifier
from syncer.observe import Health, Metrics, web_app
from syncer.procore.auth import AuthError
from syncer.procore.models import Project
from syncer.report import LogProgress, human_bytes, human_seconds
from syncer.result import ProjectResult
from syncer.runner import Syncer, open_syncer
from syncer.status import status_document

log = logging.getLogger(__name__)
STOP_GRACE = 8.0
"""Seconds running syncs get to commit after a stop signal; the process exits within 10."""
PROJECTS_REFRESH = 3600.0


def trigger_for(schedule: str | Every, timezone: str) -> CronTrigger | IntervalTrigger:
    if isinstance(schedule, Every):
        return IntervalTrigger(seconds=schedule.every, timezone=timezone)
    return CronTrigger.from_crontab(schedule, timezone=timezone)


class Daemon:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.settings: Settings = load_settings(config_path)
        self.stopping = asyncio.Event()
        self.running: set[asyncio.Task[Any]] = set()
        self.health = Health(unhealthy_after=self.settings.http.unhealthy_after)
        self.projects: dict[int, Project] = {}
        self.projects_loaded_at = float("-inf")
        self.project_busy: dict[int, asyncio.Lock] = {}
        self.incident: set[int] = set()
        self.slots = asyncio.Semaphore(self.settings.schedule.max_parallel_projects)

    async def run(self) -> int:
        async with open_syncer(self.settings, progress=LogProgress(every=60.0)) as syncer:
            with syncer.coordinator.serving():  # with SQLite, one daemon per mirror
                return await self._serve(syncer)

    async def _serve(self, syncer: Syncer) -> int:
        self.syncer = syncer
        self.notifier = Notifier(self.settings.notify, syncer.api.http.session)
        self.metrics = Metrics(lambda: syncer.api.http.pacer, self.health)
        for status in await syncer.store.status():
            self.health.checkpoints[status.id] = status.checkpoint
            self.health.names[status.id] = status.name
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        web_runner = await self._start_http()
        schedule = self.settings.schedule
        self.scheduler = AsyncIOScheduler(
            timezone=schedule.timezone,
            job_defaults={
                "max_instances": 1,
                "coalesce": True,
                "misfire_grace_time": int(schedule.misfire_grace),
            },
        )
        self.scheduler.start()
        self.health.scheduler_running = True
        self.scheduler.add_job(
            self._refresh_projects,
            trigger_for(schedule.incremental, schedule.timezone),
            id="projects",
            next_run_time=self._now(),
        )
        log.info(
            "syncer daemon started: incremental %s, full %s",
            _describe(schedule.incremental),
            _describe(schedule.full) if schedule.full else "off",
        )
        try:
            await self.stopping.wait()
        finally:
            self.health.scheduler_running = False
            self.scheduler.shutdown(wait=False)
            await self._cancel_running()
            await self.notifier.close()
            if web_runner is not None:
                await web_runner.cleanup()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("syncer daemon stopped")
        return 0

    def _now(self) -> datetime:
        return datetime.now(ZoneInfo(self.settings.schedule.timezone))

    # -- lifecycle -----------------------------------------------------------------------------

    def _stop(self, sig: signal.Signals) -> None:
        if not self.stopping.is_set():
            log.info("%s received: stopping; running syncs commit what is done", sig.name)
            self.stopping.set()

    async def _cancel_running(self) -> None:
        for task in self.running:
            task.cancel()
        if self.running:
            await asyncio.wait(self.running, timeout=STOP_GRACE)

    async def _start_http(self) -> web.AppRunner | None:
        listen = self.settings.http.listen
        if listen is None:
            return None
        host, _, port = listen.rpartition(":")
        app = web_app(self.metrics, self.health, lambda: status_document(self.settings, self.syncer.store))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        log.info("serving /healthz, /metrics and /status on http://%s", listen)
        return runner

    def _reload(self) -> None:
        try:
            new = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        old = self.settings
        fixed = [name for name in ("procore", "database", "http") if getattr(new, name) != getattr(old, name)]
        if new.mirror.root != old.mirror.root:
            fixed.append("mirror.root")
        if fixed:
            log.warning("reload: changes to %s take effect after a restart", ", ".join(fixed))
        self.settings = new.model_copy(
            update={
                "procore": old.procore,
                "database": old.database,
                "http": old.http,
                "mirror": new.mirror.model_copy(update={"root": old.mirror.root}),
            }
        )
        engine = self.syncer.engine
        engine.settings, engine.mirror = self.settings.sync, self.settings.mirror
        engine.layout = Layout(self.settings.mirror.layout)
        self.notifier.settings = self.settings.notify
        self.slots = asyncio.Semaphore(self.settings.schedule.max_parallel_projects)
        self.projects_loaded_at = float("-inf")  # the project selection may have changed
        self._schedule_projects(reschedule=True)
        log.info("configuration reloaded from %s", self.config_path)

    # -- jobs ----------------------------------------------------------------------------------

    async def _refresh_projects(self) -> None:
        loop = asyncio.get_running_loop()
        if self.projects and loop.time() - self.projects_loaded_at < PROJECTS_REFRESH:
            return
        try:
            projects, errors = await self.syncer.projects()
        except AuthError as exc:
            self._auth_failed(exc)
            return
        except SyncerError as exc:
            log.warning("could not list projects (will try again): %s", exc)
            return
        self._auth_ok()
        for error in errors:
            log.warning("%s", error)
        await self.syncer.store.save_projects(self.settings.procore.company_id, projects)
        self.projects = {p.id: p for p in projects}
        self.health.names.update((p.id, p.name) for p in projects)
        self.projects_loaded_at = loop.time()
        self._schedule_projects()

    def _schedule_projects(self, *, reschedule: bool = False) -> None:
        schedule = self.settings.schedule
        wanted = {("incremental", pid) for pid in self.projects}
        if schedule.full is not None:
            wanted |= {("full", pid) for pid in self.projects}
        for job in self.scheduler.get_jobs():
            if job.id != "projects" and tuple(job.args) not in wanted:
                job.remove()
        for kind, pid in sorted(wanted):
            spec = schedule.incremental if kind == "incremental" else schedule.full
            assert spec is not None
            trigger = trigger_for(spec, schedule.timezone)
            job_id = f"{kind}:{pid}"
            if self.scheduler.get_job(job_id) is None:
                first = self._now() if kind == "incremental" else None
                self.scheduler.add_job(
                    self._project_job,
                    trigger,
                    args=(kind, pid),
                    id=job_id,
                    **({"next_run_time": first} if first else {}),
                )
            elif reschedule:
                self.scheduler.reschedule_job(job_id, trigger=trigger)
        if reschedule:
            self.scheduler.reschedule_job(
                "projects", trigger=trigger_for(schedule.incremental, schedule.timezone)
            )

    async def _project_job(self, kind: str, project_id: int) -> None:
        project = self.projects.get(project_id)
        if project is None or self.stopping.is_set():
            return
        busy = self.project_busy.setdefault(project_id, asyncio.Lock())
        if busy.locked() and kind == "incremental":
            log.info("project %s is still syncing; skipping this incremental run", project_id)
            return
        task = asyncio.current_task()
        assert task is not None
        self.running.add(task)
        try:
            async with busy, self.slots:
                await self._take_turn(project, kind)
        except asyncio.CancelledError:
            if not self.stopping.is_set():
                raise
            # a stop is not an error: the engine recorded every installed file and closed the run
            log.info("%s sync of %s stopped by the shutdown; the next run continues", kind, project.name)
        finally:
            self.running.discard(task)

    async def _take_turn(self, project: Project, kind: str) -> None:
        """Sync the project if no other process lists it now; else download a share of it where
        the coordinator gives one (several workers), or skip this tick."""
        coordinator, engine = self.syncer.coordinator, self.syncer.engine
        if not await self._mirror_there():
            return
        try:
            async with coordinator.take(project.id) as mine:
                if mine:
                    await self._sync(project, kind)
                    return
            helped = await coordinator.help(engine, project, deadline=engine.deadline())
        except (SyncerError, SQLAlchemyError, OSError) as exc:
            log.error("project %s: %s", project.id, exc)
            return
        if helped is None:
            log.info("project %s is being synced by another process; skipping this %s run", project.id, kind)
            return
        outcome = _outcome(helped)
        self.metrics.record(helped, "help", outcome)
        log.info(
            "%s sync of %s: listed by another worker; %s", kind, project.name, _one_line(helped, outcome)
        )

    async def _mirror_there(self) -> bool:
        """Whether the mirror root still holds the mirror: checked before each run takes a lock or
        writes anything there. While it does not, runs are skipped and /healthz says why; the first
        run after the disk is back goes on by itself."""
        fs = self.syncer.fs
        try:
            await fs.run(fs.check_identity)
        except MirrorMissing as exc:
            if self.health.mirror_missing is None:
                log.error("%s; runs are skipped until it is back", exc)
                self.notifier.send({"event": "mirror_missing", "error": str(exc)})
            self.health.mirror_missing = str(exc)
            return False
        if self.health.mirror_missing is not None:
            self.health.mirror_missing = None
            log.info("the mirror is back at %s", fs.root)
            self.notifier.send({"event": "recovered", "what": "mirror"})
        return True

    async def _sync(self, project: Project, kind: str) -> None:
        engine = self.syncer.engine
        deadline = engine.deadline()
        try:
            result = await engine.sync_project(project, full=kind == "full", deadline=deadline)
            while result.backfill_left and result.proven and not (result.stopped or self.stopping.is_set()):
                # A first backfill goes on turn by turn in this job, as it did in one run.
                turn = await engine.sync_project(project, deadline=deadline)
                result = turn.absorb(result)
        except AuthError as exc:
            self._auth_failed(exc)
            return
        except SyncerError as exc:  # the database or mirror refused: a failed run, reported
            log.error("%s sync of project %s failed: %s", kind, project.id, exc)
            self.health.record(project.id, ok=False)
            self._notify_failed(project, kind, str(exc))
            return
        self._auth_ok()
        outcome = _outcome(result)
        self.metrics.record(result, kind, outcome)
        self.health.record(project.id, result.ok)
        self.health.checkpoints[project.id] = await self.syncer.store.checkpoint(project.id)
        if result.ok or result.stopped:
            log.info("%s sync of %s: %s", kind, project.name, _one_line(result, outcome))
        else:
            log.warning(
                "%s sync of %s: %s; %s", kind, project.name, _one_line(result, outcome), _cause(result)
            )
        if result.listed or result.deleted_upstream or result.retried:
            try:
                await self.syncer.refresh_gallery([project.id])
            except SyncerError as exc:
                log.warning("the gallery of %s was not brought up to date: %s", project.name, exc)
        if result.ok:
            if project.id in self.incident:
                self.incident.discard(project.id)
                log.info("project %s recovered", project.id)
                self.notifier.send({"event": "recovered", "project": _project(project), "kind": kind})
        elif not result.stopped:
            self._notify_failed(project, kind, _one_line(result, outcome), result)

    # -- incidents -----------------------------------------------------------------------------

    def _notify_failed(
        self, project: Project, kind: str, summary: str, result: ProjectResult | None = None
    ) -> None:
        if project.id in self.incident:
            return
        self.incident.add(project.id)
        event: dict[str, Any] = {
            "event": "run_failed",
            "project": _project(project),
            "kind": kind,
            "summary": summary,
        }
        if result is not None:
            event["failures"] = [{"id": i, "path": p, "error": e} for i, p, e in result.failures[:50]]
            event["listing_error"] = result.listing_error
        self.notifier.send(event)

    def _auth_failed(self, exc: AuthError) -> None:
        if self.health.auth_failing:
            log.debug("still failing to authenticate: %s", exc)
            return
        self.health.auth_failing = True
        log.error("authentication failed; syncing is paused until it works again: %s", exc)
        self.notifier.send({"event": "auth_failed", "error": str(exc)})

    def _auth_ok(self) -> None:
        if self.health.auth_failing:
            self.health.auth_failing = False
            log.info("authentication works again")
            self.notifier.send({"event": "recovered", "what": "authentication"})


def _outcome(result: ProjectResult) -> str:
    return "ok" if result.ok else "stopped" if result.stopped else "incomplete"


def _cause(result: ProjectResult) -> str:
    """Why a run is incomplete, in the words of its first problem (the notification has them all)."""
    if result.listing_error:
        return f"listing failed: {result.listing_error}"
    if result.unproven:
        return f"listing not proven complete: {result.unproven[0]}"
    if result.unreadable:
        return f"a record Procore listed cannot be read: {result.unreadable[0]}"
    if result.deletions_blocked:
        return f"deletions stopped: {result.deletions_blocked}"
    if result.failures:
        photo, _path, error = result.failures[0]
        more = len(result.failures) - 1
        reason = error.removeprefix(f"photo {photo}: ")
        return f"photo {photo} failed: {reason}" + (f" (and {more} more)" if more else "")
    return f"{result.waiting} photos wait for their retry time"


def _project(project: Project) -> dict[str, Any]:
    return {"id": project.id, "name": project.name}


def _describe(schedule: str | Every) -> str:
    return f"every {schedule.every:g} s" if isinstance(schedule, Every) else f"cron '{schedule}'"


def _one_line(result: ProjectResult, outcome: str) -> str:
    return (
        f"{outcome}; {result.listed} listed, {result.downloaded} downloaded ({human_bytes(result.bytes)}), "
        f"{len(result.failures)} failed, {result.deleted_upstream} gone upstream, {result.requests} requests "
        f"in {human_seconds(result.seconds)}"
    )
