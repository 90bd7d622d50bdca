"""Several workers on one PostgreSQL database: who is alive, who lists which project, who
downloads which photo.

Liveness is one row per worker process with an expiry that the worker pushes forward (its
heartbeat). Project leases and photo claims name their worker and hold exactly while that
worker's row is live, so one UPDATE renews everything a worker holds, and a worker that dies
loses all of it at once when its row expires: its projects can be leased again and its photos
claimed again. Every time here is the database's clock, so hosts whose clocks disagree still
agree on who is alive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.elements import ColumnElement

from syncer.procore.models import BadRecord, Photo
from syncer.store.models import PhotoRow, ProjectLeaseRow, WorkerRow
from syncer.store.rows import STORED_COLUMNS, StoredPhoto
from syncer.store.store import Store

FORGET_AFTER = timedelta(days=7)
"""Rows of workers that stopped or died are kept this long, for `syncer status`."""


def db_now() -> ColumnElement[datetime]:
    """The database's clock as naive UTC, the form every time column holds."""
    return func.timezone("UTC", func.clock_timestamp())


def live_workers() -> Select[str]:
    """The ids of the workers whose leases and claims hold right now."""
    return select(WorkerRow.id).where(WorkerRow.expires_at > db_now(), WorkerRow.stopped_at.is_(None))


@dataclass(frozen=True, slots=True)
class Claim:
    """A due photo this worker now downloads, with what the download needs."""

    id: int
    project_id: int
    rel_path: str
    size: int | None
    attempts: int
    photo: Photo | None
    """The listed record with its signed URL, or None when there is no usable URL (the photo is
    then fetched again from Procore first)."""
    stored: StoredPhoto


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime
    stopped_at: datetime | None
    activity: str | None
    downloaded: int
    bytes: int
    failed: int
    live: bool
    projects: list[int]


def _photo(raw_json: str, url: str | None) -> Photo | None:
    """The claimed photo's record as listed, if its signed URL was handed over."""
    if url is None:
        return None
    try:
        raw: Any = json.loads(raw_json)
        raw["url"] = url
        return Photo.from_api(raw)
    except (ValueError, TypeError, BadRecord):
        return None


class SharedState:
    """The coordination queries; one instance per worker process, on the process's store."""

    def __init__(self, store: Store, *, worker_id: str, ttl: float) -> None:
        if store.engine.dialect.name != "postgresql":
            raise ValueError("several workers need PostgreSQL")
        self.store = store
        self.worker_id = worker_id
        self.ttl = timedelta(seconds=ttl)

    def _unclaimed(self) -> ColumnElement[bool]:
        """Held by no live worker, and not by this one: its own claims stay its own even when the
        others have just declared it dead and are about to take them."""
        return or_(
            PhotoRow.claimed_by.is_(None),
            (PhotoRow.claimed_by != self.worker_id) & PhotoRow.claimed_by.not_in(live_workers()),
        )

    # -- membership ----------------------------------------------------------------------------

    async def join(self, host: str, pid: int) -> None:
        now = db_now()
        async with self.store.engine.begin() as conn:
            await conn.execute(delete(WorkerRow).where(WorkerRow.expires_at < now - FORGET_AFTER))
            await conn.execute(
                pg_insert(WorkerRow).values(
                    id=self.worker_id,
                    host=host[:255],
                    pid=pid,
                    started_at=now,
                    heartbeat_at=now,
                    expires_at=now + self.ttl,
                    downloaded=0,
                    bytes=0,
                    failed=0,
                )
            )

    async def heartbeat(self, *, activity: str, downloaded: int, bytes_: int, failed: int) -> bool:
        """Extend this worker's life and so its leases and claims; False if it had already
        expired (others may have taken its work, so it must stop)."""
        now = db_now()
        stmt = (
            update(WorkerRow)
            .where(WorkerRow.id == self.worker_id, WorkerRow.expires_at > now, WorkerRow.stopped_at.is_(None))
            .values(
                heartbeat_at=now,
                expires_at=now + self.ttl,
                activity=activity[:200],
                downloaded=downloaded,
                bytes=bytes_,
                failed=failed,
            )
        )
        async with self.store.engine.begin() as conn:
            return bool((await conn.execute(stmt)).rowcount)

    async def leave(self, *, downloaded: int, bytes_: int, failed: int) -> None:
        """Stop at once: leases and claims return to the pool without waiting for the expiry."""
        async with self.store.engine.begin() as conn:
            await conn.execute(
                update(WorkerRow)
                .where(WorkerRow.id == self.worker_id)
                .values(
                    stopped_at=db_now(),
                    expires_at=db_now(),
                    activity="stopped",
                    downloaded=downloaded,
                    bytes=bytes_,
                    failed=failed,
                )
            )
            await conn.execute(delete(ProjectLeaseRow).where(ProjectLeaseRow.worker_id == self.worker_id))
            await conn.execute(
                update(PhotoRow).where(PhotoRow.claimed_by == self.worker_id).values(claimed_by=None)
            )

    async def live_members(self) -> list[tuple[str, str]]:
        """(id, host) of every live worker."""
        query = select(WorkerRow.id, WorkerRow.host).where(WorkerRow.id.in_(live_workers()))
        async with self.store.reads.connect() as conn:
            return [(row.id, row.host) for row in await conn.execute(query)]

    async def live_count(self) -> int:
        async with self.store.reads.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(live_workers().subquery())) or 0)

    # -- project leases ------------------------------------------------------------------------

    async def try_lease(self, project_id: int) -> bool:
        """Take the project's lease if it is free or its holder is dead; never waits."""
        ins = pg_insert(ProjectLeaseRow).values(
            project_id=project_id, worker_id=self.worker_id, acquired_at=db_now()
        )
        stmt = ins.on_conflict_do_update(
            index_elements=["project_id"],
            set_={"worker_id": ins.excluded.worker_id, "acquired_at": ins.excluded.acquired_at},
            where=ProjectLeaseRow.worker_id.not_in(live_workers()),
        ).returning(ProjectLeaseRow.worker_id)
        async with self.store.engine.begin() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def release_lease(self, project_id: int) -> None:
        async with self.store.engine.begin() as conn:
            await conn.execute(
                delete(ProjectLeaseRow).where(
                    ProjectLeaseRow.project_id == project_id, ProjectLeaseRow.worker_id == self.worker_id
                )
            )

    async def lease_holder(self, project_id: int) -> str | None:
        """The live worker listing the project, if any."""
        query = select(ProjectLeaseRow.worker_id).where(
            ProjectLeaseRow.project_id == project_id, ProjectLeaseRow.worker_id.in_(live_workers())
        )
        async with self.store.reads.connect() as conn:
            holder: str | None = await conn.scalar(query)
            return holder

    # -- download claims -----------------------------------------------------------------------

    @staticmethod
    def _due(project_id: int, now: datetime) -> ColumnElement[bool]:
        return (PhotoRow.project_id == project_id) & PhotoRow.due(now)

    async def claim(self, project_id: int, limit: int, now: datetime) -> list[Claim]:
        """Up to `limit` due photos of the project that no live worker holds, now held by this one.

        `SKIP LOCKED` lets workers claim side by side without waiting on each other's rows."""
        pick = (
            select(PhotoRow.id)
            .where(self._due(project_id, now), self._unclaimed())
            .order_by(PhotoRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        p = PhotoRow
        stmt = (
            update(p)
            .where(p.id.in_(pick.scalar_subquery()))
            .values(claimed_by=self.worker_id)
            .returning(p.size, p.attempts, p.raw_json, p.fetch_url, *STORED_COLUMNS)
        )
        async with self.store.engine.begin() as conn:
            rows = (await conn.execute(stmt)).all()
        claims = [
            Claim(
                id=r.id,
                project_id=r.project_id,
                rel_path=r.rel_path,
                size=r.size,
                attempts=r.attempts,
                photo=_photo(r.raw_json, r.fetch_url),
                stored=StoredPhoto(*r[4:]),
            )
            for r in rows
        ]
        return sorted(claims, key=lambda c: c.id)

    async def release(self, project_id: int, *, lister: bool) -> None:
        """Hand back this worker's claims in the project (jobs a stopped sync never did), their
        signed URLs dropped. The `lister` also drops the URLs it handed over that no live worker
        holds: a signed URL stays in the database only while a download may use it."""
        mine = PhotoRow.claimed_by == self.worker_id
        async with self.store.engine.begin() as conn:
            await conn.execute(
                update(PhotoRow)
                .where(PhotoRow.project_id == project_id, mine)
                .values(claimed_by=None, fetch_url=None)
            )
            if lister:
                await conn.execute(
                    update(PhotoRow)
                    .where(
                        PhotoRow.project_id == project_id,
                        PhotoRow.fetch_url.is_not(None),
                        self._unclaimed(),
                    )
                    .values(fetch_url=None)
                )

    async def unclaimed_due(self, project_id: int, now: datetime) -> int:
        """Due photos of the project that wait for a worker: how far listing runs ahead."""
        query = select(func.count()).where(self._due(project_id, now), self._unclaimed())
        async with self.store.reads.connect() as conn:
            return int(await conn.scalar(query) or 0)

    async def held_due(self, project_id: int) -> int:
        """Due photos of the project that a live worker holds: downloads still in flight, which
        come back to the pool if that worker dies."""
        query = select(func.count()).where(
            PhotoRow.project_id == project_id,
            PhotoRow.needs_download(),
            PhotoRow.claimed_by.in_(live_workers()),
        )
        async with self.store.reads.connect() as conn:
            return int(await conn.scalar(query) or 0)


@dataclass(frozen=True)
class TeamStatus:
    """What `syncer status` shows of the workers sharing a database."""

    workers: list[WorkerInfo]
    leases: dict[int, str]
    """Project id to the live worker listing it."""
    in_flight: dict[int, int]
    """Project id to the number of its downloads live workers hold."""


async def team_status(store: Store) -> TeamStatus:
    """Every worker seen in the last week (newest first), the live leases and claims."""
    live_ids = live_workers()
    live = WorkerRow.id.in_(live_ids)
    async with store.reads.connect() as conn:
        leases = {
            row.project_id: row.worker_id
            for row in await conn.execute(
                select(ProjectLeaseRow.project_id, ProjectLeaseRow.worker_id).where(
                    ProjectLeaseRow.worker_id.in_(live_ids)
                )
            )
        }
        in_flight = {
            row.project_id: int(row.n)
            for row in await conn.execute(
                select(PhotoRow.project_id, func.count().label("n"))
                .where(PhotoRow.needs_download(), PhotoRow.claimed_by.in_(live_ids))
                .group_by(PhotoRow.project_id)
            )
        }
        rows = await conn.execute(
            select(*WorkerRow.__table__.c, live.label("live")).order_by(WorkerRow.started_at.desc())
        )
        holding: dict[str, list[int]] = {}
        for project_id, worker_id in sorted(leases.items()):
            holding.setdefault(worker_id, []).append(project_id)
        workers = [WorkerInfo(**{**row._mapping, "projects": holding.get(row.id, [])}) for row in rows]
    return TeamStatus(workers=workers, leases=leases, in_flight=in_flight)
