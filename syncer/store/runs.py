"""The history of sync runs, and what `syncer status` shows per project: a part of `Store`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from syncer.store.models import PhotoRow, ProjectCountsRow, ProjectRow, SyncRunRow

PRUNE_EVERY = 3600.0
"""Seconds between two prunes of the run history by one process (a daemon finishes many runs)."""


@dataclass(frozen=True)
class ProjectStatus:
    id: int
    name: str
    active: bool
    """False for a closed project (inactive in Procore): kept and synced like the others."""
    known: int
    mirrored: int
    pending: int
    failed: int
    bytes: int
    last_change_at: datetime | None
    """When Procore last changed one of its photos (their newest `updated_at`), as far as listed."""
    checkpoint: datetime | None
    last_run_at: datetime | None
    last_outcome: str | None
    failures: list[dict[str, Any]]


class RunLog:
    """Queries on the `sync_runs` table and the per-project summary; `Store` inherits them."""

    engine: AsyncEngine
    reads: AsyncEngine
    _write: asyncio.Lock
    keep_runs: float | None
    """`database.keep_runs`: seconds of run history kept (`prune_runs`); None keeps all."""
    _pruned: float | None
    """When (monotonic) this process last pruned the runs: at its first finished run, then hourly."""

    async def start_run(
        self,
        project_id: int,
        *,
        started_at: datetime,
        window_start: datetime | None,
        window_end: datetime,
        full: bool,
    ) -> int:
        async with self._write, self.engine.begin() as conn:
            result = await conn.execute(
                insert(SyncRunRow).values(
                    project_id=project_id,
                    started_at=started_at,
                    window_start=window_start,
                    window_end=window_end,
                    full=full,
                    listed=0,
                    new=0,
                    changed=0,
                    downloaded=0,
                    bytes=0,
                    failed=0,
                    outcome="running",
                )
            )
            run_id = result.inserted_primary_key
            assert run_id is not None
            return int(run_id[0])

    async def finish_run(
        self,
        run_id: int,
        *,
        finished_at: datetime,
        outcome: str,
        listed: int,
        new: int,
        changed: int,
        downloaded: int,
        bytes_: int,
        failed: int,
        errors: list[str],
    ) -> None:
        async with self._write, self.engine.begin() as conn:
            await conn.execute(
                update(SyncRunRow)
                .where(SyncRunRow.id == run_id)
                .values(
                    finished_at=finished_at,
                    outcome=outcome,
                    listed=listed,
                    new=new,
                    changed=changed,
                    downloaded=downloaded,
                    bytes=bytes_,
                    failed=failed,
                    errors=json.dumps(errors) if errors else None,
                )
            )
        if self.keep_runs is not None and (
            self._pruned is None or time.monotonic() - self._pruned > PRUNE_EVERY
        ):
            self._pruned = time.monotonic()
            await self.prune_runs(finished_at)

    async def status(
        self, project_ids: Sequence[int] | None = None, *, failures_limit: int | None = 1000
    ) -> list[ProjectStatus]:
        """Each project's counts, checkpoint and last run, and its failed photos: at most
        `failures_limit` of them in all (the daemon's /status page), or every one (None).

        Nothing here reads more than a few rows per project: the counts are kept as photos change
        (`syncer.store.counts`), each last run is one index probe, and the failed photos have an
        index of their own."""
        p, c, runs = PhotoRow, ProjectCountsRow, SyncRunRow.__table__.alias("runs")
        last_run = (
            select(func.max(runs.c.id))
            .where(runs.c.project_id == ProjectRow.id)
            .correlate(ProjectRow)
            .scalar_subquery()
        )
        projects = (
            select(
                ProjectRow.id,
                ProjectRow.name,
                ProjectRow.active,
                ProjectRow.checkpoint,
                c.known,
                c.mirrored,
                c.pending,
                c.failed,
                c.bytes,
                c.last_change_at,
                SyncRunRow.started_at,
                SyncRunRow.finished_at,
                SyncRunRow.outcome,
            )
            .outerjoin(c, c.project_id == ProjectRow.id)
            .outerjoin(SyncRunRow, SyncRunRow.id == last_run)
            .order_by(ProjectRow.name)
        )
        if project_ids is not None:
            projects = projects.where(ProjectRow.id.in_(project_ids))
        failing = (
            select(p.project_id, p.id, p.rel_path, p.attempts, p.last_error, p.next_retry_at)
            .where(p.failing())
            .order_by(p.id)
            .limit(failures_limit)
        )
        if project_ids is not None:
            failing = failing.where(p.project_id.in_(project_ids))
        async with self.reads.connect() as conn:
            rows = (await conn.execute(projects)).all()
            failures: dict[int, list[dict[str, Any]]] = {}
            for row in await conn.execute(failing):
                failures.setdefault(row.project_id, []).append(
                    {
                        "id": row.id,
                        "path": row.rel_path,
                        "attempts": row.attempts,
                        "error": row.last_error,
                        "next_retry_at": row.next_retry_at.isoformat() if row.next_retry_at else None,
                    }
                )
        return [
            ProjectStatus(
                id=row.id,
                name=row.name,
                active=row.active is not False,
                known=row.known or 0,
                mirrored=row.mirrored or 0,
                pending=row.pending or 0,
                failed=row.failed or 0,
                bytes=row.bytes or 0,
                last_change_at=row.last_change_at,
                checkpoint=row.checkpoint,
                last_run_at=row.finished_at or row.started_at,
                last_outcome=row.outcome,
                failures=failures.get(row.id, []),
            )
            for row in rows
        ]

    async def prune_runs(self, now: datetime) -> int:
        """Forget runs that started more than `keep_runs` seconds before `now`, but each project's
        last one (which `status` shows); returns how many. Cheap when there is little to forget:
        the runs' start times and each project's last run are indexed."""
        if self.keep_runs is None:
            return 0
        later = SyncRunRow.__table__.alias("later")
        newer = (
            select(later.c.id)
            .where(later.c.project_id == SyncRunRow.project_id, later.c.id > SyncRunRow.id)
            .exists()
        )
        cutoff = now - timedelta(seconds=self.keep_runs)
        stmt = delete(SyncRunRow).where(SyncRunRow.started_at < cutoff, newer)
        async with self._write, self.engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount
