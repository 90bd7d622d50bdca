"""`syncer run`: the service that keeps the mirror minutes behind Procore, for months unattended.

One queue (`schedule.Queue`) holds every project, and one loop here starts the next turn whenever
a slot is free (`schedule.max_parallel_projects`) and a project is due, the most stale first. All
turns share one HTTP session and so one rate-limit pacer; from what turns cost and the budget the
pacer observed, the daemon knows the round it can keep, and says when that is slower than the
schedule ("behind schedule": a warning, `/healthz`, a metric). A turn takes the project's file
lock, so a cron `syncer sync` and the daemon never work on the same project at once. With
PostgreSQL, several daemons (on one host or many) share the work: a turn takes the project's
lease in the database, and a turn that finds the lease taken downloads a share of the project's
photos instead.

SIGTERM/SIGINT stop taking work and cancel running syncs: workers stop at their next await, what is
done is committed, partial files stay under `.syncer/tmp/` for the next run to resume. SIGHUP
reloads the configuration (what cannot change without a restart is said in the log).

The operator hears about incidents, not ticks: the first failed run of a project, an
authentication failure (once, until it works again), falling behind schedule, and each recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from syncer.config import Every, Settings, load_settings
from syncer.errors import ConfigError, MirrorMissing, SyncerError
from syncer.mirror.layout import Layout
from syncer.notify import Notifier
from syncer.observe import Health, Metrics, web_app
from syncer.plan import Change
from syncer.procore.auth import AuthError
from syncer.procore.models import Project
from syncer.report import LogProgress, human_bytes, human_seconds
from syncer.result import ProjectResult
from syncer.runner import Syncer, open_syncer
from syncer.schedule import BEHIND, CAUGHT_UP, Outlook, Queue, Turn, period_of
from syncer.status import status_document
from syncer.words import plural

log = logging.getLogger(__name__)
STOP_GRACE = 8.0
"""Seconds running syncs get to commit after a stop signal; the process exits within 10."""
PROJECTS_REFRESH = 3600.0
MIRROR_RECHECK = 10.0
"""Seconds between looks for a mirror that went away (a stat each)."""
UNCHANGED = frozenset({Change.UNCHANGED, Change.STALE})


class Daemon:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.settings: Settings = load_settings(config_path)
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        """Set when a turn ends, the projects or the configuration change: look at the queue again."""
        self.running: set[asyncio.Task[Any]] = set()
        self.health = Health(unhealthy_after=self.settings.http.unhealthy_after)
        self.projects: dict[int, Project] = {}
        self.refresh_projects = asyncio.Event()
        self.incident: set[int] = set()
        self.queue = Queue(**self._queue_settings(), started=0.0)

    def _queue_settings(self) -> dict[str, Any]:
        schedule = self.settings.schedule
        return {
            "period": period_of(schedule.incremental, schedule.timezone),
            "full_period": period_of(schedule.full, schedule.timezone) if schedule.full is not None else None,
            "quiet_slowdown": schedule.quiet_slowdown,
            "parallel": schedule.max_parallel_projects,
        }

    async def run(self) -> int:
        async with open_syncer(self.settings, progress=LogProgress(every=60.0)) as syncer:
            with syncer.coordinator.serving():  # with SQLite, one daemon per mirror
                return await self._serve(syncer)

    async def _serve(self, syncer: Syncer) -> int:
        self.syncer = syncer
        self.notifier = Notifier(self.settings.notify, syncer.api.http.session)
        self.metrics = Metrics(lambda: syncer.api.http.pacer, self.health, self._round)
        for status in await syncer.store.status():
            self.health.checkpoints[status.id] = status.checkpoint
            self.health.names[status.id] = status.name
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        web_runner = await self._start_http()
        self.queue.started = loop.time()
        self._warn_retired()
        schedule = self.settings.schedule
        log.info(
            "syncer daemon started: incremental %s, full %s",
            _describe(schedule.incremental),
            _describe(schedule.full) if schedule.full else "off",
        )
        self.refresh_projects.set()
        background = [
            asyncio.create_task(self._keep_projects(), name="projects"),
            asyncio.create_task(self._dispatch(), name="dispatch"),
        ]
        try:
            await self.stopping.wait()
        finally:
            self.health.scheduler_running = False
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._cancel_running()
            await self.notifier.close()
            if web_runner is not None:
                await web_runner.cleanup()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        log.info("syncer daemon stopped")
        return 0

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
        app = web_app(self.metrics, self.health, self._status)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        log.info("serving /healthz, /metrics and /status on http://%s", listen)
        return runner

    def _warn_retired(self) -> None:
        if self.settings.schedule.misfire_grace is not None:
            log.warning(
                "schedule.misfire_grace no longer has an effect (a turn that could not start on time "
                "runs as soon as it can); remove it from %s",
                self.config_path,
            )

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
        self.queue.configure(**self._queue_settings())
        self._warn_retired()
        self.refresh_projects.set()  # the project selection may have changed
        self.wake.set()
        log.info("configuration reloaded from %s", self.config_path)

    # -- the round -----------------------------------------------------------------------------

    async def _keep_projects(self) -> None:
        """Learn the projects at start, then every hour (and on a reload); a failed attempt is
        tried again a period later."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROJECTS_REFRESH if self.projects else self.queue.period):
                    await self.refresh_projects.wait()
            self.refresh_projects.clear()
            await self._refresh_projects()

    async def _refresh_projects(self) -> None:
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
        store = self.syncer.store
        await store.save_projects(self.settings.procore.company_id, projects)
        self.projects = {p.id: p for p in projects}
        self.health.names.update((p.id, p.name) for p in projects)
        marks = await store.all_marks()
        procore_now = self.syncer.engine.procore_now()

        def ago(moment: datetime | None) -> float | None:
            return None if moment is None else max(0.0, (procore_now - moment).total_seconds())

        # the operator's figures are about the projects synced now, not those left behind
        self.health.checkpoints = {pid: marks[pid][0] if pid in marks else None for pid in self.projects}
        synced = {pid: ago(m[0]) for pid, m in marks.items()}
        fulls = {pid: ago(m[1]) for pid, m in marks.items()}
        self.queue.update(
            self.projects,
            now=asyncio.get_running_loop().time(),
            synced_ago={pid: s for pid, s in synced.items() if s is not None},
            full_ago={pid: f for pid, f in fulls.items() if f is not None},
            last_change={pid: m[2] for pid, m in marks.items()},
            backfilling=[pid for pid, m in marks.items() if m[0] is None or m[3] is not None],
        )
        self.wake.set()

    async def _dispatch(self) -> None:
        """Start the next due turn whenever a slot is free; sleep until one falls due or a turn
        ends. Runs for the daemon's life."""
        loop = asyncio.get_running_loop()
        self.health.scheduler_running = True
        while True:
            self.wake.clear()
            now, wall = loop.time(), datetime.now(UTC)
            turn = self.queue.next(now, wall)
            if turn is not None and not await self._mirror_there():
                await asyncio.sleep(MIRROR_RECHECK)
                continue
            if turn is not None:
                self.queue.started_turn(turn, now)
                self._start(self._turn(turn))
                continue
            wait = self.queue.wake_at(now, wall) - now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if math.isinf(wait) else wait):
                    await self.wake.wait()

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _turn(self, turn: Turn) -> None:
        project = self.projects[turn.project_id]
        result: ProjectResult | None = None
        try:
            result = await self._take_turn(project, turn.kind)
        except asyncio.CancelledError:
            if not self.stopping.is_set():
                raise
            # a stop is not an error: the engine recorded every installed file and closed the run
            log.info("%s sync of %s stopped by the shutdown; the next run continues", turn.kind, project.name)
        finally:
            changed = result is not None and any(
                n for change, n in result.changes.items() if change not in UNCHANGED
            )
            self.queue.finished_turn(
                turn,
                requests=result.requests if result else 0,
                seconds=result.seconds if result else 0.0,
                changed_at=datetime.now(UTC) if changed else None,
                backfill_left=result is not None and result.backfill_left and result.proven,
            )
            self._judge_round()
            self.wake.set()

    def _round(self) -> Outlook:
        return self.queue.outlook(self.syncer.api.http.pacer.sustained_rate(), datetime.now(UTC))

    def _judge_round(self) -> None:
        """Say once when the budget cannot keep the schedule, and once when it can again."""
        outlook = self._round()
        if self.health.behind is None and outlook.ratio > BEHIND:
            self.health.behind = behind_message(outlook)
            log.warning("%s", self.health.behind)
            self.notifier.send({"event": "behind_schedule", "summary": self.health.behind})
        elif self.health.behind is not None:
            if outlook.ratio <= CAUGHT_UP:
                self.health.behind = None
                log.info(
                    "back on schedule: every project comes round within %s", human_seconds(outlook.period)
                )
                self.notifier.send({"event": "recovered", "what": "schedule"})
            else:
                self.health.behind = behind_message(outlook)  # the figures move; the log line is said once

    async def _status(self) -> dict[str, Any]:
        """The status page: the database's view, and where each project stands in the round."""
        document = await status_document(self.settings, self.syncer.store)
        loop = asyncio.get_running_loop()
        now, wall = loop.time(), datetime.now(UTC)
        next_turns = self.queue.next_turns(now, wall)
        for entry in document["projects"]:
            pid = entry["id"]
            checkpoint = self.health.checkpoints.get(pid)
            entry["staleness_seconds"] = (
                round((wall - checkpoint).total_seconds(), 1) if checkpoint is not None else None
            )
            queued = self.queue.entries.get(pid)
            entry["next_turn"] = (
                None
                if queued is None
                else "running"
                if queued.busy
                else _iso(wall + timedelta(seconds=max(0.0, next_turns[pid] - now)))
            )
        outlook = self._round()
        document["schedule"] = {
            "period_seconds": outlook.period,
            "achievable_cycle_seconds": round(outlook.cycle, 1),
            "budget_requests_per_second": outlook.rate,
            "requests_per_period": round(outlook.requests, 1),
            "behind": self.health.behind,
        }
        return document

    async def _take_turn(self, project: Project, kind: str) -> ProjectResult | None:
        """Sync the project if no other process lists it now; else download a share of it where
        the coordinator gives one (several workers), or skip this turn."""
        engine = self.syncer.engine
        try:
            result = await self.syncer.coordinator.turn(
                engine, project, full=kind == "full", deadline=engine.deadline()
            )
        except AuthError as exc:
            self._auth_failed(exc)
            return None
        except SyncerError as exc:  # the database or mirror refused: a failed run, reported
            log.error("%s sync of project %s failed: %s", kind, project.id, exc)
            self.health.record(project.id, ok=False)
            self._notify_failed(project, kind, str(exc))
            return None
        except (SQLAlchemyError, OSError) as exc:
            log.error("project %s: %s", project.id, exc)
            return None
        if result is None:
            log.info("project %s is being synced by another process; skipping this %s run", project.id, kind)
        elif result.helped:
            outcome = _outcome(result)
            self.metrics.record(result, "help", outcome)
            log.info(
                "%s sync of %s: listed by another worker; %s", kind, project.name, _one_line(result, outcome)
            )
        else:
            await self._synced(project, kind, result)
        return result

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

    async def _synced(self, project: Project, kind: str, result: ProjectResult) -> None:
        """A turn that synced the project: metrics, the log line, the gallery, incidents."""
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
        if result.listed or result.deleted_upstream or result.retried:  # a no-op turn changes nothing
            gallery, problem = await self.syncer.after_sync([project.id])
            if gallery is not None:
                from syncer.gallery import render_report  # imported where a gallery was built

                log.info("%s", render_report(gallery).splitlines()[0])
            if problem:
                log.warning("%s: %s", project.name, problem)
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
    waits = "waits for its" if result.waiting == 1 else "wait for their"
    return f"{plural(result.waiting, 'photo')} {waits} retry time"


def _project(project: Project) -> dict[str, Any]:
    return {"id": project.id, "name": project.name}


def behind_message(outlook: Outlook) -> str:
    """The verdict with both figures and what sets the pace."""
    if outlook.budget_bound:
        assert outlook.rate is not None
        why = (
            f"one period's turns cost about {plural(round(outlook.requests), 'request')} and the rate budget "
            "gives "
            f"{outlook.rate * outlook.period:,.0f} ({outlook.rate:.2f} a second)"
        )
    else:
        why = (
            f"one period's turns take about {human_seconds(outlook.seconds)} and "
            f"{plural(outlook.parallel, 'turn')} run at once"
        )
    return (
        f"behind schedule: each project comes round about every {human_seconds(outlook.cycle)}, not every "
        f"{human_seconds(outlook.period)} as the schedule asks: {why} (see docs/operations.md, "
        '"How the daemon spends the budget")'
    )


def _iso(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat()


def _describe(schedule: str | Every) -> str:
    return f"every {schedule.every:g} s" if isinstance(schedule, Every) else f"cron '{schedule}'"


def _one_line(result: ProjectResult, outcome: str) -> str:
    return (
        f"{outcome}; {result.listed:,} listed, {result.downloaded:,} downloaded "
        f"({human_bytes(result.bytes)}), {len(result.failures):,} failed, "
        f"{result.deleted_upstream:,} gone upstream, "
        f"{plural(result.requests, 'request')} in {human_seconds(result.seconds)}"
    )
