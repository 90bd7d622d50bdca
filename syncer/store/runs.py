"""The history of sync runs, and what `syncer status` shows per project: a part of `Store`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from syncer.store.models import PhotoRow, ProjectRow, SyncRunRow


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
    checkpoint: datetime | None
    last_run_at: datetime | None
    last_outcome: str | None
    failures: list[dict[str, Any]]


class RunLog:
    """Queries on the `sync_runs` table and the per-project summary; `Store` inherits them."""

    engine: AsyncEngine
    _write: asyncio.Lock

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

    async def status(
        self, project_ids: Sequence[int] | None = None, *, failures_limit: int | None = 1000
    ) -> list[ProjectStatus]:
        """Each project's counts, checkpoint and last run, and its failed photos: at most
        `failures_limit` of them in all (the daemon's /status page), or every one (None)."""
        p = PhotoRow
        live = p.deleted_at.is_(None)
        mirrored = live & (p.local_file_key == p.file_key)
        failing = p.needs_download() & (p.attempts > 0)
        counts = select(
            p.project_id,
            func.sum(case((live, 1), else_=0)),
            func.sum(case((mirrored, 1), else_=0)),
            func.sum(case((p.needs_download(), 1), else_=0)),
            func.sum(case((failing, 1), else_=0)),
            func.sum(case((mirrored, p.local_size), else_=0)),
        ).group_by(p.project_id)
        last_run = (
            select(SyncRunRow.project_id, func.max(SyncRunRow.id).label("run_id"))
            .group_by(SyncRunRow.project_id)
            .subquery()
        )
        async with self.engine.connect() as conn:
            projects = (
                await conn.execute(
                    select(ProjectRow.id, ProjectRow.name, ProjectRow.active, ProjectRow.checkpoint).order_by(
                        ProjectRow.name
                    )
                )
            ).all()
            by_project = {row[0]: row[1:] for row in await conn.execute(counts)}
            runs = {
                row.project_id: row
                for row in await conn.execute(
                    select(
                        SyncRunRow.project_id,
                        SyncRunRow.finished_at,
                        SyncRunRow.started_at,
                        SyncRunRow.outcome,
                    ).join(last_run, SyncRunRow.id == last_run.c.run_id)
                )
            }
            failures: dict[int, list[dict[str, Any]]] = {}
            for row in await conn.execute(
                select(p.project_id, p.id, p.rel_path, p.attempts, p.last_error, p.next_retry_at)
                .where(failing)
                .order_by(p.id)
                .limit(failures_limit)
            ):
                failures.setdefault(row.project_id, []).append(
                    {
                        "id": row.id,
                        "path": row.rel_path,
                        "attempts": row.attempts,
                        "error": row.last_error,
                        "next_retry_at": row.next_retry_at.isoformat() if row.next_retry_at else None,
                    }
                )
        out = []
        for proj in projects:
            if project_ids is not None and proj.id not in project_ids:
                continue
            # int(): PostgreSQL sums come back as Decimal
            known, done, pending, failed, size = (
                int(v or 0) for v in by_project.get(proj.id, (0, 0, 0, 0, 0))
            )
            run = runs.get(proj.id)
            out.append(
                ProjectStatus(
                    id=proj.id,
                    name=proj.name,
                    active=proj.active is not False,
                    known=known or 0,
                    mirrored=done or 0,
                    pending=pending or 0,
                    failed=failed or 0,
                    bytes=size or 0,
                    checkpoint=proj.checkpoint,
                    last_run_at=(run.finished_at or run.started_at) if run else None,
                    last_outcome=run.outcome if run else None,
                    failures=failures.get(proj.id, []),
                )
            )
        return out
