"""The queries the engine needs, each a batch: a page of rows per transaction, never a row each.

Writes are serialised by one lock, so the download workers never contend for SQLite's write lock;
their results reach the database through the engine's recorder in batches.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from syncer.errors import database_error
from syncer.procore.models import Album, Project
from syncer.store.db import create_engine, upgrade
from syncer.store.models import AlbumRow, Base, PhotoRow, ProjectRow, SyncRunRow

ID_BATCH = 500
METADATA_COLUMNS = (
    "project_id",
    "album_id",
    "album_name",
    "filename",
    "description",
    "size",
    "taken_at",
    "created_at",
    "updated_at",
    "private",
    "starred",
    "width",
    "height",
    "gps_lat",
    "gps_long",
    "location_name",
    "uploader_name",
    "raw_json",
    "file_key",
    "rel_path",
    "last_seen_at",
    "fetch_url",
)


@dataclass(frozen=True, slots=True)
class StoredPhoto:
    id: int
    file_key: str
    rel_path: str
    updated_at: datetime | None
    local_path: str | None
    local_file_key: str | None
    local_size: int | None
    sha256: str | None
    sidecar_of: datetime | None
    deleted_at: datetime | None
    trashed_path: str | None


@dataclass(frozen=True, slots=True)
class DueDownload:
    id: int
    rel_path: str
    size: int | None
    attempts: int


@dataclass(frozen=True, slots=True)
class Downloaded:
    id: int
    local_path: str
    file_key: str
    size: int
    sha256: str
    sidecar_of: datetime | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Relocated:
    """The file stayed; its path or sidecar changed."""

    id: int
    local_path: str
    sidecar_of: datetime | None


@dataclass(frozen=True, slots=True)
class Failed:
    id: int
    error: str
    next_retry_at: datetime


@dataclass(frozen=True, slots=True)
class Vanished:
    """Deleted in Procore after it was listed: no longer due, marked deleted."""

    id: int
    at: datetime


@dataclass(frozen=True, slots=True)
class MirroredFile:
    id: int
    project_id: int
    project_name: str
    local_path: str
    size: int | None
    sha256: str | None
    raw_json: str


@dataclass(frozen=True)
class ProjectStatus:
    id: int
    name: str
    known: int
    mirrored: int
    pending: int
    failed: int
    bytes: int
    checkpoint: datetime | None
    last_run_at: datetime | None
    last_outcome: str | None
    failures: list[dict[str, Any]]


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._write = asyncio.Lock()
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect and bring the schema up to date (the app migrates itself on start)."""
        try:
            engine = create_engine(url)
        except OSError as exc:  # SQLite: the folder for the file cannot be made
            raise database_error(exc, url) from None
        try:
            await upgrade(engine)
        except (OSError, SQLAlchemyError) as exc:
            await engine.dispose()
            raise database_error(exc, engine.url.render_as_string(hide_password=True)) from None
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # -- projects and albums -----------------------------------------------------------------

    async def _upsert(
        self,
        model: type[Base],
        rows: Sequence[dict[str, Any]],
        update: Sequence[str],
        fixed: dict[str, Any] | None = None,
    ) -> None:
        """Insert rows, or, where the id exists, update the `update` columns (and set `fixed`
        values), in one transaction."""
        if not rows:
            return
        ins = self._insert(model)
        stmt = ins.on_conflict_do_update(
            index_elements=["id"], set_={**{c: ins.excluded[c] for c in update}, **(fixed or {})}
        )
        async with self._write, self.engine.begin() as conn:
            await conn.execute(stmt, list(rows))

    async def save_projects(self, company_id: int, projects: Sequence[Project]) -> None:
        rows = [{"id": p.id, "company_id": company_id, "name": p.name, "active": p.active} for p in projects]
        await self._upsert(ProjectRow, rows, ("name", "active", "company_id"))

    async def save_albums(self, project_id: int, albums: Sequence[Album]) -> None:
        rows = [{"id": a.id, "project_id": project_id, "name": a.name, "private": a.private} for a in albums]
        await self._upsert(AlbumRow, rows, ("name", "private", "project_id"))

    async def checkpoint(self, project_id: int) -> datetime | None:
        async with self.engine.connect() as conn:
            return await conn.scalar(select(ProjectRow.checkpoint).where(ProjectRow.id == project_id))

    async def marks(self, project_id: int) -> tuple[datetime | None, datetime | None]:
        """The project's checkpoint and the end of its last full run: what a finished run moves."""
        query = select(ProjectRow.checkpoint, ProjectRow.last_full_at).where(ProjectRow.id == project_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return (row.checkpoint, row.last_full_at) if row else (None, None)

    async def set_checkpoint(self, project_id: int, value: datetime, *, full: bool) -> None:
        values: dict[str, Any] = {"checkpoint": value}
        if full:
            values["last_full_at"] = value
        async with self._write, self.engine.begin() as conn:
            await conn.execute(update(ProjectRow).where(ProjectRow.id == project_id).values(**values))

    # -- photos ------------------------------------------------------------------------------

    async def stored_photos(self, ids: Sequence[int]) -> dict[int, StoredPhoto]:
        cols = [
            PhotoRow.id,
            PhotoRow.file_key,
            PhotoRow.rel_path,
            PhotoRow.updated_at,
            PhotoRow.local_path,
            PhotoRow.local_file_key,
            PhotoRow.local_size,
            PhotoRow.sha256,
            PhotoRow.sidecar_of,
            PhotoRow.deleted_at,
            PhotoRow.trashed_path,
        ]
        out: dict[int, StoredPhoto] = {}
        async with self.engine.connect() as conn:
            for chunk in _chunks(ids, ID_BATCH):
                for row in await conn.execute(select(*cols).where(PhotoRow.id.in_(chunk))):
                    out[row.id] = StoredPhoto(**row._mapping)
        return out

    async def save_photos(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or update a page of photo rows in one transaction; local file columns untouched.
        A listed photo exists, so a deletion mark from earlier is cleared."""
        await self._upsert(PhotoRow, rows, METADATA_COLUMNS, fixed={"deleted_at": None})

    async def due_downloads(self, project_id: int, now: datetime) -> list[DueDownload]:
        """Photos whose verified local file is missing or stale and whose retry time has come."""
        query = (
            select(PhotoRow.id, PhotoRow.rel_path, PhotoRow.size, PhotoRow.attempts)
            .where(PhotoRow.project_id == project_id, PhotoRow.needs_download())
            .where((PhotoRow.next_retry_at.is_(None)) | (PhotoRow.next_retry_at <= now))
            .order_by(PhotoRow.id)
        )
        async with self.engine.connect() as conn:
            return [DueDownload(*row) for row in await conn.execute(query)]

    async def record(
        self,
        downloaded: Sequence[Downloaded] = (),
        relocated: Sequence[Relocated] = (),
        failed: Sequence[Failed] = (),
        vanished: Sequence[Vanished] = (),
    ) -> None:
        """Write a batch of worker results; called only after the files are durable. Each result
        also ends the photo's claim (with several workers) and drops its signed URL."""
        if not (downloaded or relocated or failed or vanished):
            return
        async with self._write, self.engine.begin() as conn:
            if downloaded:
                await conn.execute(
                    update(PhotoRow)
                    .where(PhotoRow.id == bindparam("b_id"))
                    .values(
                        local_path=bindparam("b_path"),
                        local_file_key=bindparam("b_key"),
                        local_size=bindparam("b_size"),
                        sha256=bindparam("b_sha"),
                        downloaded_at=bindparam("b_at"),
                        sidecar_of=bindparam("b_sidecar"),
                        attempts=0,
                        last_error=None,
                        next_retry_at=None,
                        trashed_path=None,
                        claimed_by=None,
                        fetch_url=None,
                    ),
                    [
                        {
                            "b_id": d.id,
                            "b_path": d.local_path,
                            "b_key": d.file_key,
                            "b_size": d.size,
                            "b_sha": d.sha256,
                            "b_at": d.at,
                            "b_sidecar": d.sidecar_of,
                        }
                        for d in downloaded
                    ],
                )
            if relocated:
                await conn.execute(
                    update(PhotoRow)
                    .where(PhotoRow.id == bindparam("b_id"))
                    .values(
                        local_path=bindparam("b_path"),
                        sidecar_of=bindparam("b_sidecar"),
                        trashed_path=None,
                        claimed_by=None,
                    ),
                    [{"b_id": r.id, "b_path": r.local_path, "b_sidecar": r.sidecar_of} for r in relocated],
                )
            if failed:
                await conn.execute(
                    update(PhotoRow)
                    .where(PhotoRow.id == bindparam("b_id"))
                    .values(
                        attempts=PhotoRow.attempts + 1,
                        last_error=bindparam("b_error"),
                        next_retry_at=bindparam("b_retry"),
                        claimed_by=None,
                        fetch_url=None,
                    ),
                    [{"b_id": f.id, "b_error": f.error, "b_retry": f.next_retry_at} for f in failed],
                )

            if vanished:
                await conn.execute(
                    update(PhotoRow)
                    .where(PhotoRow.id == bindparam("b_id"))
                    .values(deleted_at=bindparam("b_at"), claimed_by=None, fetch_url=None),
                    [{"b_id": v.id, "b_at": v.at} for v in vanished],
                )

    # -- deletions ---------------------------------------------------------------------------

    async def live_times(self, project_id: int) -> list[datetime | None]:
        """`updated_at` of every photo not marked deleted, ascending: where to cut an id listing."""
        query = (
            select(PhotoRow.updated_at)
            .where(PhotoRow.project_id == project_id, PhotoRow.deleted_at.is_(None))
            .order_by(PhotoRow.updated_at)
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())

    async def live_ids(self, project_id: int) -> set[int]:
        query = select(PhotoRow.id).where(PhotoRow.project_id == project_id, PhotoRow.deleted_at.is_(None))
        async with self.engine.connect() as conn:
            return set((await conn.execute(query)).scalars())

    async def mark_deleted(self, ids: Sequence[int], at: datetime) -> None:
        if not ids:
            return
        async with self._write, self.engine.begin() as conn:
            for chunk in _chunks(ids, ID_BATCH):
                await conn.execute(update(PhotoRow).where(PhotoRow.id.in_(chunk)).values(deleted_at=at))

    async def deleted_files(self, project_id: int) -> list[tuple[int, str]]:
        """(id, local path) of photos marked deleted whose file is still in place."""
        query = select(PhotoRow.id, PhotoRow.local_path).where(
            PhotoRow.project_id == project_id,
            PhotoRow.deleted_at.is_not(None),
            PhotoRow.local_path.is_not(None),
        )
        async with self.engine.connect() as conn:
            return [(row.id, row.local_path) for row in await conn.execute(query)]

    async def record_trashed(self, moved: Sequence[tuple[int, str]]) -> None:
        """Files now under `.trash/`: no longer in the mirror, remembered for a restore."""
        if not moved:
            return
        async with self._write, self.engine.begin() as conn:
            await conn.execute(
                update(PhotoRow)
                .where(PhotoRow.id == bindparam("b_id"))
                .values(local_path=None, trashed_path=bindparam("b_trash")),
                [{"b_id": i, "b_trash": path} for i, path in moved],
            )

    async def record_removed(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        async with self._write, self.engine.begin() as conn:
            for chunk in _chunks(ids, ID_BATCH):
                await conn.execute(
                    update(PhotoRow)
                    .where(PhotoRow.id.in_(chunk))
                    .values(local_path=None, local_file_key=None, local_size=None, sha256=None)
                )

    # -- verification and retries -------------------------------------------------------------

    async def mirrored_files(self, project_ids: Sequence[int] | None = None) -> list[MirroredFile]:
        """Every file the database says is in the mirror, with what it should hash to."""
        query = (
            select(
                PhotoRow.id,
                PhotoRow.project_id,
                ProjectRow.name.label("project_name"),
                PhotoRow.local_path,
                PhotoRow.local_size.label("size"),
                PhotoRow.sha256,
                PhotoRow.raw_json,
            )
            .join(ProjectRow, ProjectRow.id == PhotoRow.project_id)
            .where(PhotoRow.local_path.is_not(None))
        )
        if project_ids is not None:
            query = query.where(PhotoRow.project_id.in_(project_ids))
        async with self.engine.connect() as conn:
            rows = await conn.execute(query.order_by(PhotoRow.local_path))
            return [MirroredFile(**row._mapping) for row in rows]

    async def requeue(self, ids: Sequence[int]) -> None:
        """Forget that these photos are mirrored, so the next sync downloads them at once."""
        async with self._write, self.engine.begin() as conn:
            for chunk in _chunks(ids, ID_BATCH):
                await conn.execute(
                    update(PhotoRow)
                    .where(PhotoRow.id.in_(chunk))
                    .values(local_file_key=None, sha256=None, attempts=0, last_error=None, next_retry_at=None)
                )

    async def failing_count(self, project_id: int) -> int:
        """Photos that failed to download and are not mirrored yet."""
        query = select(func.count()).where(
            PhotoRow.project_id == project_id, PhotoRow.needs_download(), PhotoRow.attempts > 0
        )
        async with self.engine.connect() as conn:
            return int(await conn.scalar(query) or 0)

    async def retry_now(self, project_ids: Sequence[int] | None = None) -> int:
        """Make every failed photo due immediately; returns how many there were."""
        failing = PhotoRow.needs_download() & (PhotoRow.attempts > 0)
        stmt = update(PhotoRow).where(failing).values(next_retry_at=None)
        if project_ids is not None:
            stmt = stmt.where(PhotoRow.project_id.in_(project_ids))
        async with self._write, self.engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount

    # -- runs and status ---------------------------------------------------------------------

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

    async def status(self, project_ids: Sequence[int] | None = None) -> list[ProjectStatus]:
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
                    select(ProjectRow.id, ProjectRow.name, ProjectRow.checkpoint).order_by(ProjectRow.name)
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
                .limit(1000)
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
