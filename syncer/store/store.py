"""The queries the engine needs, each a batch: a page of rows per transaction, never a row each.

Writes are serialised by one lock, so the download workers never contend for SQLite's write lock;
their results reach the database through the engine's recorder in batches.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import String, bindparam, cast, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from syncer.errors import ConfigError, LocalFault, NothingYet, database_error
from syncer.procore.models import Album, Project
from syncer.store.db import create_engine, reader, sqlite_path, upgrade
from syncer.store.models import AlbumRow, Base, MirrorRow, PhotoRow, ProjectCountsRow, ProjectRow, hex_text
from syncer.store.rows import (
    INSERT_ONLY,
    STORED_COLUMNS,
    ArchiveDigest,
    ArchivedPhoto,
    Downloaded,
    DueDownload,
    Failed,
    MirroredFile,
    Relocated,
    StoredPhoto,
    Vanished,
)
from syncer.store.runs import RunLog

ID_BATCH = 500


def _sqlite_folder_problem(engine: AsyncEngine) -> str | None:
    """Why SQLite cannot work in its folder, when the reason is that the folder is not writable
    (SQLite's own message is only 'unable to open database file')."""
    if engine.dialect.name != "sqlite" or not engine.url.database:
        return None
    folder = Path(engine.url.database).parent
    if folder.is_dir() and not os.access(folder, os.W_OK):
        readonly = os.statvfs(folder).f_flag & os.ST_RDONLY
        why = "is on a read-only file system" if readonly else "is not writable"
        return (
            f"database {engine.url.database}: its folder {folder} {why} (SQLite writes its "
            "journal beside the database): let the user running syncer write there, or point "
            "database.url at a folder it can write"
        )
    return None


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Store(RunLog):
    def __init__(self, engine: AsyncEngine, *, keep_runs: float | None = None) -> None:
        self.engine = engine
        self.reads = reader(engine)
        self.keep_runs = keep_runs
        self._pruned = None
        self._write = asyncio.Lock()
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    @classmethod
    async def open(cls, url: str, *, keep_runs: float | None = None, create: bool = True) -> Store:
        """Connect and bring the schema up to date (the app migrates itself on start). A store
        that runs syncs is given `database.keep_runs`, and prunes the run history it outlives.
        Without `create` (a command that only reads), a database that does not exist yet is not
        made: `NothingYet`."""
        if not create and (path := sqlite_path(url)) is not None and not path.exists():
            raise NothingYet(
                f"nothing synced yet: there is no database at {path} (the first `syncer sync` makes it; "
                "if one was made, check database.url)"
            )
        try:
            engine = create_engine(url, create=create)
        except OSError as exc:  # SQLite: the folder for the file cannot be made
            raise database_error(exc, url) from None
        except ModuleNotFoundError as exc:  # the driver of a database this install was not set up for
            if exc.name != "asyncpg":
                raise
            raise ConfigError(
                "database.url is a PostgreSQL database, which needs the [postgres] extra (asyncpg, "
                "not installed): install syncer with `pip install '.[postgres]'`, or `pip install "
                "asyncpg` into its environment"
            ) from None
        if (problem := _sqlite_folder_problem(engine)) is not None:  # before a connection is tried:
            await engine.dispose()  # SQLite's own word would only be 'unable to open database file'
            raise LocalFault(problem)
        try:
            await upgrade(engine, create=create)
        except (OSError, SQLAlchemyError) as exc:
            await engine.dispose()
            raise database_error(exc, engine.url.render_as_string(hide_password=True)) from None
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, keep_runs=keep_runs)

    async def close(self) -> None:
        await self.engine.dispose()

    @property
    def url(self) -> str:
        """The database's URL with the password hidden, for error messages."""
        return self.engine.url.render_as_string(hide_password=True)

    async def _hold_counts(
        self, conn: AsyncConnection, *, projects: Iterable[int] = (), photos: Sequence[int] = ()
    ) -> None:
        """PostgreSQL: lock, in project order, the counts the transaction's writes will change
        (of `projects`, and of the projects of `photos`), before it locks a photo row.

        The triggers lock a project's counts row after the photo rows a statement changed, and
        hold it to the commit. Two transactions writing the same project's photos (a listing
        worker's page, another worker's downloads) would otherwise each hold what the other
        waits for: photo rows one, the counts the other, which PostgreSQL breaks by failing one.
        Taken first, the counts row makes them wait in turn. SQLite runs one writer at a time."""
        if self.engine.dialect.name != "postgresql":
            return
        ids = set(projects)
        for chunk in _chunks(photos, ID_BATCH):
            query = select(PhotoRow.project_id).where(PhotoRow.id.in_(chunk)).distinct()
            ids.update(await conn.scalars(query))
        if ids:
            c = ProjectCountsRow
            await conn.execute(
                select(c.project_id)
                .where(c.project_id.in_(sorted(ids)))
                .order_by(c.project_id)
                .with_for_update()
            )

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
        async with self._write, self.engine.begin() as conn:
            await conn.execute(self._upsert_statement(model, update, fixed), list(rows))

    def _upsert_statement(
        self, model: type[Base], update: Sequence[str], fixed: dict[str, Any] | None = None
    ) -> Any:
        ins = self._insert(model)
        return ins.on_conflict_do_update(
            index_elements=["id"], set_={**{c: ins.excluded[c] for c in update}, **(fixed or {})}
        )

    async def save_projects(self, company_id: int, projects: Sequence[Project]) -> None:
        rows = [{"id": p.id, "company_id": company_id, "name": p.name, "active": p.active} for p in projects]
        await self._upsert(ProjectRow, rows, ("name", "active", "company_id"))

    async def save_albums(self, project_id: int, albums: Sequence[Album]) -> None:
        rows = [{"id": a.id, "project_id": project_id, "name": a.name, "private": a.private} for a in albums]
        await self._upsert(AlbumRow, rows, ("name", "private", "project_id"))

    async def checkpoint(self, project_id: int) -> datetime | None:
        async with self.reads.connect() as conn:
            return await conn.scalar(select(ProjectRow.checkpoint).where(ProjectRow.id == project_id))

    async def marks(self, project_id: int) -> tuple[datetime | None, datetime | None]:
        """The project's checkpoint and the end of its last full run: what a finished run moves."""
        query = select(ProjectRow.checkpoint, ProjectRow.last_full_at).where(ProjectRow.id == project_id)
        async with self.reads.connect() as conn:
            row = (await conn.execute(query)).first()
        return (row.checkpoint, row.last_full_at) if row else (None, None)

    async def all_marks(
        self,
    ) -> dict[int, tuple[datetime | None, datetime | None, datetime | None, datetime | None]]:
        """Every project's checkpoint, end of its last full run, newest photo change (the
        maintained `last_change_at`) and backfill mark: where the daemon's round takes each up."""
        query = select(
            ProjectRow.id,
            ProjectRow.checkpoint,
            ProjectRow.last_full_at,
            ProjectCountsRow.last_change_at,
            ProjectRow.backfill_until,
        ).outerjoin(ProjectCountsRow, ProjectCountsRow.project_id == ProjectRow.id)
        async with self.reads.connect() as conn:
            return {row[0]: (row[1], row[2], row[3], row[4]) for row in await conn.execute(query)}

    async def set_checkpoint(self, project_id: int, value: datetime, *, full: bool) -> None:
        """Move the checkpoint; a full run listed everything, so no backfill is left after it."""
        values: dict[str, Any] = {"checkpoint": value}
        if full:
            values.update(last_full_at=value, backfill_until=None)
        async with self._write, self.engine.begin() as conn:
            await conn.execute(update(ProjectRow).where(ProjectRow.id == project_id).values(**values))

    async def backfill_until(self, project_id: int) -> datetime | None:
        """How far back the project's listing is proven (see `ProjectRow.backfill_until`)."""
        async with self.reads.connect() as conn:
            return await conn.scalar(select(ProjectRow.backfill_until).where(ProjectRow.id == project_id))

    async def set_backfill(
        self, project_id: int, until: datetime | None, *, checkpoint: datetime | None = None
    ) -> None:
        """Record a proven backfill slice in one transaction: the listing is proven back to
        `until` (None: to the beginning, nothing older left), and, for a project's first slice,
        up to `checkpoint`."""
        values: dict[str, Any] = {"backfill_until": until}
        if checkpoint is not None:
            values["checkpoint"] = checkpoint
        async with self._write, self.engine.begin() as conn:
            await conn.execute(update(ProjectRow).where(ProjectRow.id == project_id).values(**values))

    async def photos_since(self, project_id: int, since: datetime) -> int:
        """Photos recorded for the project shown as updated at `since` or later (the index on
        project and `updated_at` answers it): how dense the listed part of a backfill was."""
        query = select(func.count()).where(PhotoRow.project_id == project_id, PhotoRow.updated_at >= since)
        async with self.reads.connect() as conn:
            return int(await conn.scalar(query) or 0)

    # -- photos ------------------------------------------------------------------------------

    async def stored_photos(self, ids: Sequence[int]) -> dict[int, StoredPhoto]:
        out: dict[int, StoredPhoto] = {}
        async with self.reads.connect() as conn:
            for chunk in _chunks(ids, ID_BATCH):
                for row in await conn.execute(select(*STORED_COLUMNS).where(PhotoRow.id.in_(chunk))):
                    out[row.id] = StoredPhoto(*row)
        return out

    async def save_photos(self, rows: Sequence[dict[str, Any]], *, moved_urls: Sequence[int] = ()) -> None:
        """Insert or update a page of photo rows in one transaction. A listed photo exists, so a
        deletion mark from earlier is cleared. The local file columns are untouched, but for the
        `moved_urls` photos: their file moved to another URL, and the mirror's copy is recorded
        under the new key in the same transaction, so no moment exists in which it is due. Their
        sidecar still shows the old URL until it is rewritten, so it is recorded as not current
        (a run stopped before the rewrite leaves it to the next)."""
        if not rows:
            return
        listed = [c for c in rows[0] if c not in INSERT_ONLY]
        async with self._write, self.engine.begin() as conn:
            await self._hold_counts(conn, projects={row["project_id"] for row in rows})
            await conn.execute(self._upsert_statement(PhotoRow, listed, {"deleted_at": None}), list(rows))
            if moved_urls:
                await conn.execute(
                    update(PhotoRow)
                    .where(PhotoRow.id.in_(moved_urls))
                    .values(local_file_key=PhotoRow.file_key, sidecar_of=None)
                )

    async def due_downloads(self, project_id: int, now: datetime) -> list[DueDownload]:
        """Photos whose verified local file is missing or stale and whose retry time has come."""
        query = (
            select(PhotoRow.id, PhotoRow.rel_path, PhotoRow.size, PhotoRow.attempts)
            .where(PhotoRow.project_id == project_id, PhotoRow.due(now))
            .order_by(PhotoRow.id)
        )
        async with self.reads.connect() as conn:
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
            counted: list[Downloaded | Failed | Vanished] = [*downloaded, *failed, *vanished]
            await self._hold_counts(conn, photos=[r.id for r in counted])
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

    async def recorded(self, project_id: int) -> dict[int, tuple[datetime | None, str | None]]:
        """`updated_at` and mirror path of every photo not marked deleted: what a full run
        compares with the ids upstream and the files in the mirror."""
        query = select(PhotoRow.id, PhotoRow.updated_at, PhotoRow.local_path).where(
            PhotoRow.project_id == project_id, PhotoRow.deleted_at.is_(None)
        )
        async with self.reads.connect() as conn:
            return {row.id: (row.updated_at, row.local_path) for row in await conn.execute(query)}

    async def live_ids(self, project_id: int) -> set[int]:
        query = select(PhotoRow.id).where(PhotoRow.project_id == project_id, PhotoRow.deleted_at.is_(None))
        async with self.reads.connect() as conn:
            return set((await conn.execute(query)).scalars())

    async def mark_deleted(self, ids: Sequence[int], at: datetime) -> None:
        if not ids:
            return
        async with self._write, self.engine.begin() as conn:
            await self._hold_counts(conn, photos=ids)
            for chunk in _chunks(ids, ID_BATCH):
                await conn.execute(update(PhotoRow).where(PhotoRow.id.in_(chunk)).values(deleted_at=at))

    async def deleted_files(self, project_id: int) -> list[tuple[int, str]]:
        """(id, local path) of photos marked deleted whose file is still in place."""
        query = select(PhotoRow.id, PhotoRow.local_path).where(
            PhotoRow.project_id == project_id,
            PhotoRow.deleted_at.is_not(None),
            PhotoRow.local_path.is_not(None),
        )
        async with self.reads.connect() as conn:
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
            await self._hold_counts(conn, photos=ids)
            for chunk in _chunks(ids, ID_BATCH):
                await conn.execute(
                    update(PhotoRow)
                    .where(PhotoRow.id.in_(chunk))
                    .values(local_path=None, local_file_key=None, local_size=None, sha256=None)
                )

    # -- verification and retries -------------------------------------------------------------

    async def mirror(self) -> tuple[str, str] | None:
        """The recorded mirror's id and the root it was recorded at, if any."""
        async with self.reads.connect() as conn:
            row = (await conn.execute(select(MirrorRow.id, MirrorRow.root).limit(1))).first()
        return (row.id, row.root) if row else None

    async def record_mirror(self, mirror_id: str, root: str, at: datetime) -> None:
        """Make `mirror_id` the mirror this database describes, forgetting any other. Several
        workers starting on a new mirror at once record the same id: the first one stands."""
        async with self._write, self.engine.begin() as conn:
            await conn.execute(delete(MirrorRow).where(MirrorRow.id != mirror_id))
            await conn.execute(
                self._insert(MirrorRow)
                .values(id=mirror_id, root=root, recorded_at=at)
                .on_conflict_do_nothing(index_elements=["id"])
            )

    async def mirrored_sample(self, limit: int) -> tuple[int, list[str]]:
        """How many photos the database says the mirror holds, and the paths of up to `limit` of
        them, the most recently downloaded first."""
        query = (
            select(PhotoRow.local_path)
            .where(PhotoRow.local_path.is_not(None))
            .order_by(PhotoRow.downloaded_at.desc())
            .limit(limit)
        )
        async with self.reads.connect() as conn:
            count = await conn.scalar(
                select(func.count()).select_from(PhotoRow).where(PhotoRow.local_path.is_not(None))
            )
            paths = [path for (path,) in await conn.execute(query) if path is not None]
        return int(count or 0), paths

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
                (
                    (PhotoRow.sidecar_of == PhotoRow.updated_at)
                    & (PhotoRow.local_file_key == PhotoRow.file_key)
                ).label("current"),
            )
            .join(ProjectRow, ProjectRow.id == PhotoRow.project_id)
            .where(PhotoRow.local_path.is_not(None))
        )
        if project_ids is not None:
            query = query.where(PhotoRow.project_id.in_(project_ids))
        async with self.reads.connect() as conn:
            rows = await conn.execute(query.order_by(PhotoRow.local_path))
            return [MirroredFile(**row._mapping) for row in rows]

    async def archived(self, project_ids: Sequence[int] | None = None) -> list[ArchivedPhoto]:
        """Every photo whose file is in the mirror, by project name and path: an archive's index."""
        p = PhotoRow
        query = (
            select(
                p.id,
                p.project_id,
                ProjectRow.name.label("project_name"),
                p.album_name,
                p.local_path,
                p.filename,
                p.taken_at,
                p.created_at,
                p.uploader_name,
                p.location_name,
                p.description,
                p.starred,
                p.private,
                p.local_size.label("size"),
                p.sha256,
                p.deleted_at,
                p.width,
                p.height,
                p.gps_lat,
                p.gps_long,
                p.trades,
            )
            .join(ProjectRow, ProjectRow.id == p.project_id)
            .where(p.local_path.is_not(None))
        )
        if project_ids is not None:
            query = query.where(p.project_id.in_(project_ids))
        async with self.reads.connect() as conn:
            rows = await conn.execute(query.order_by(ProjectRow.name, p.project_id, p.local_path))
            archived = []
            for row in rows:  # by position: a mirror of 100,000 photos is read on every gallery build
                *columns, trades = row
                values: Any = (*columns, tuple(trades.split("\n")) if trades else ())
                archived.append(ArchivedPhoto(*values))
            return archived

    async def archive_digests(self) -> dict[int, ArchiveDigest]:
        """A digest of each project's archive index (`archived`, with the project's name) and the
        SHA-256s of its files, computed mostly in the database: what the gallery compares to learn,
        without reading 100,000 rows, that a project is unchanged. Rows are concatenated in
        whatever order the database visits them, so a different order can only report a change
        that is not one."""
        p = PhotoRow
        # Free text goes in as its length, a colon, then the text, so no value can pass for the end
        # of another whatever characters it holds (-1 is NULL); numbers and times cannot hold the
        # separator that ends each of them.
        texts: list[Any] = [p.album_name, p.local_path, p.filename, p.uploader_name, p.location_name]
        texts += [p.description, hex_text(p.sha256), p.trades]
        others: list[Any] = [p.id, p.taken_at, p.created_at, p.starred, p.private, p.local_size, p.deleted_at]
        others += [p.width, p.height, p.gps_lat, p.gps_long]
        fields: list[Any] = [
            cast(func.coalesce(func.length(t), -1), String) + ":" + func.coalesce(t, "") for t in texts
        ]
        fields += [func.coalesce(cast(c, String), "") + "\x1f" for c in others]
        row_text = functools.reduce(lambda a, b: a + b, fields)
        query = (
            select(
                p.project_id,
                ProjectRow.name,
                func.count(),
                func.aggregate_strings(row_text, "\x1e"),
                func.aggregate_strings(hex_text(p.sha256), ","),
            )
            .join(ProjectRow, ProjectRow.id == p.project_id)
            .where(p.local_path.is_not(None))
            .group_by(p.project_id, ProjectRow.name)
        )
        async with self.reads.connect() as conn:
            rows = (await conn.execute(query)).all()
        digests = {}
        for pid, name, count, rows_text, hashes in rows:
            digest = hashlib.sha256(f"{name}\x1d{count}\x1d{rows_text}".encode(errors="surrogatepass"))
            digests[pid] = ArchiveDigest(
                count, digest.hexdigest(), frozenset((hashes or "").split(",")) - {""}
            )
        return digests

    async def requeue(self, ids: Sequence[int]) -> None:
        """Forget that these photos are mirrored, so the next sync downloads them at once."""
        async with self._write, self.engine.begin() as conn:
            await self._hold_counts(conn, photos=ids)
            for chunk in _chunks(ids, ID_BATCH):
                await conn.execute(
                    update(PhotoRow)
                    .where(PhotoRow.id.in_(chunk))
                    .values(local_file_key=None, sha256=None, attempts=0, last_error=None, next_retry_at=None)
                )

    async def failing_count(self, project_id: int) -> int:
        """Photos that failed to download and are not mirrored yet."""
        query = select(ProjectCountsRow.failed).where(ProjectCountsRow.project_id == project_id)
        async with self.reads.connect() as conn:
            return int(await conn.scalar(query) or 0)

    async def retry_now(self, project_ids: Sequence[int] | None = None) -> int:
        """Make every failed photo due immediately; returns how many there were."""
        stmt = update(PhotoRow).where(PhotoRow.failing()).values(next_retry_at=None)
        if project_ids is not None:
            stmt = stmt.where(PhotoRow.project_id.in_(project_ids))
        async with self._write, self.engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount
