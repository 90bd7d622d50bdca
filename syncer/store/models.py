"""The database schema. Alembic migrations in `migrations/` create exactly this (a test checks), and
the triggers of `syncer.store.counts` that keep `project_counts`.

A photo row keeps two views of the file: what Procore has now (`file_key`, `rel_path`) and what
the mirror verifiably holds (`local_path`, `local_file_key`, `sha256`). A download is due exactly
when they differ, so "pending" is derived, never a flag that could drift.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    or_,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeEngine

from syncer.store.counts import DUE
from syncer.store.packed import pack, unpack

DUE_SQL = DUE.format(r="")
"""Photos whose file the mirror lacks: what `PhotoRow.needs_download` selects."""
CLAIMED_SQL = "claimed_by IS NOT NULL"
"""Photos a worker holds or held: few at any time, found at once when a worker stops."""
FAILING_SQL = f"attempts > 0 AND {DUE_SQL}"
"""Photos whose download failed and that the mirror still lacks: what `syncer status` lists."""

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


EPOCH = datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC in Python. PostgreSQL keeps naive UTC; SQLite, which has no time type, keeps the
    microseconds since 1970 as an integer: 8 bytes where the text form took 26, in the same
    order."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(BigInteger() if dialect.name == "sqlite" else DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | int | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime written to the database")
        naive = value.astimezone(UTC).replace(tzinfo=None)
        return (naive - EPOCH) // MICROSECOND if dialect.name == "sqlite" else naive

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, int):
            return (EPOCH + value * MICROSECOND).replace(tzinfo=UTC)
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class PackedJSON(TypeDecorator[str]):
    """JSON text in Python, deflated in the database (`syncer.store.packed`)."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> bytes | None:
        return None if value is None else pack(value)

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> str | None:
        return None if value is None else unpack(bytes(value))


class Digest(TypeDecorator[str]):
    """A SHA-256 as lowercase hex in Python, its 32 bytes in the database."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> bytes | None:
        return None if value is None else bytes.fromhex(value)

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> str | None:
        return None if value is None else bytes(value).hex()


class hex_text(FunctionElement[str]):
    """A `Digest` column as the hex text Python sees, inside a query (NULL stays NULL)."""

    type = String()
    inherit_cache = True


@compiles(hex_text, "sqlite")
def _hex_sqlite(element: hex_text, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"CASE WHEN {column} IS NULL THEN NULL ELSE lower(hex({column})) END"


@compiles(hex_text, "postgresql")
def _hex_postgresql(element: hex_text, compiler: SQLCompiler, **kw: Any) -> str:
    return f"encode({compiler.process(element.clauses, **kw)}, 'hex')"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ProjectRow(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    company_id: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(1000))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    checkpoint: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """Upper bound of the last window listed completely; the next window starts before it."""
    last_full_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    backfill_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """How far back a first backfill has proven the listing: photos shown as updated from here
    up to the checkpoint are listed, older ones not yet. Null: nothing older is left (or, without
    a checkpoint, nothing was listed yet)."""


class AlbumRow(Base):
    __tablename__ = "albums"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    project_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(1000))
    private: Mapped[bool] = mapped_column(Boolean, default=False)


class PhotoRow(Base):
    __tablename__ = "photos"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    project_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("projects.id"))
    album_id: Mapped[int | None] = mapped_column(BigInteger)
    album_name: Mapped[str | None] = mapped_column(String(1000))
    filename: Mapped[str | None] = mapped_column(String(1000))
    description: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    taken_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    private: Mapped[bool | None] = mapped_column(Boolean)
    starred: Mapped[bool | None] = mapped_column(Boolean)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    gps_lat: Mapped[float | None] = mapped_column(Float)
    gps_long: Mapped[float | None] = mapped_column(Float)
    location_name: Mapped[str | None] = mapped_column(String(1000))
    uploader_name: Mapped[str | None] = mapped_column(String(1000))
    trades: Mapped[str | None] = mapped_column(Text)
    """The trades' names, a line each: searchable without parsing `raw_json`."""
    raw_json: Mapped[str] = mapped_column(PackedJSON)
    """The record as Procore sent it, signed-URL query strings removed (deflated: `PackedJSON`)."""
    file_key: Mapped[str] = mapped_column(String(2000))
    """Identity of the upstream file as last listed (URL path and size). A change means new bytes
    unless the size and `updated_at` stayed (`plan.decide`): then the URL moved, and the mirror's
    copy is recorded under the new key."""
    rel_path: Mapped[str] = mapped_column(String(4000))
    """Where the photo belongs in the mirror under the current layout and metadata."""
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    local_path: Mapped[str | None] = mapped_column(String(4000), unique=True)
    local_file_key: Mapped[str | None] = mapped_column(String(2000))
    local_size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(Digest)
    downloaded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sidecar_of: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """The `updated_at` whose metadata the sidecar on disk shows."""
    trashed_path: Mapped[str | None] = mapped_column(String(4000))
    """Where `on_delete: trash` put the file (under `.trash/`), to restore it if the photo returns."""

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    claimed_by: Mapped[str | None] = mapped_column(String(40))
    """With several workers: the worker downloading this photo; valid while that worker lives."""
    fetch_url: Mapped[str | None] = mapped_column(Text)
    """With several workers: the signed URL from the listing, for whichever worker claims the
    download. It is a short-lived credential, so it stays only while a download may use it:
    cleared when the photo is downloaded, fails or is handed back, and by the listing worker for
    whatever is left when its run ends."""

    __table_args__ = (
        Index("ix_photos_project_updated", "project_id", "updated_at"),
        Index(
            "ix_photos_due",
            "project_id",
            "id",
            sqlite_where=text(DUE_SQL),
            postgresql_where=text(DUE_SQL),
        ),
        Index(
            "ix_photos_failing",
            "id",
            sqlite_where=text(FAILING_SQL),
            postgresql_where=text(FAILING_SQL),
        ),
        Index(
            "ix_photos_claimed",
            "claimed_by",
            sqlite_where=text(CLAIMED_SQL),
            postgresql_where=text(CLAIMED_SQL),
        ),
    )

    @classmethod
    def needs_download(cls) -> ColumnElement[bool]:
        """The same condition as the `ix_photos_due` index, so queries for due photos can use it."""
        return (cls.deleted_at.is_(None)) & or_(
            cls.local_file_key.is_(None), cls.local_file_key != cls.file_key
        )

    @classmethod
    def failing(cls) -> ColumnElement[bool]:
        """The same condition as the `ix_photos_failing` index: failed, and still not mirrored."""
        return (cls.attempts > 0) & cls.needs_download()

    @classmethod
    def current(cls) -> ColumnElement[bool]:
        """The mirrored file and its sidecar are of the record the row holds: nothing pending."""
        return (cls.sidecar_of == cls.updated_at) & (cls.local_file_key == cls.file_key)

    @classmethod
    def due(cls, now: datetime) -> ColumnElement[bool]:
        """Needs a download and its retry time has come: what a run downloads."""
        return cls.needs_download() & (cls.next_retry_at.is_(None) | (cls.next_retry_at <= now))


class ProjectCountsRow(Base):
    """What `syncer status` shows of a project's photos, kept by triggers on `photos` as each row
    changes (`syncer.store.counts`), so that no query counts a million rows."""

    __tablename__ = "project_counts"

    project_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("projects.id"), primary_key=True, autoincrement=False
    )
    known: Mapped[int] = mapped_column(BigInteger, default=0)
    """Photos not marked deleted."""
    mirrored: Mapped[int] = mapped_column(BigInteger, default=0)
    pending: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    last_change_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """The newest `updated_at` among the project's photos (it never moves back): when Procore last
    changed one of them."""


class WorkerRow(Base):
    """One syncer process sharing a PostgreSQL database. It is live while `expires_at` lies
    ahead; its project leases and photo claims are valid exactly as long."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    activity: Mapped[str | None] = mapped_column(String(200))
    downloaded: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)


class ProjectLeaseRow(Base):
    """Which worker lists a project and moves its checkpoint; free again when that worker dies."""

    __tablename__ = "project_leases"

    project_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    worker_id: Mapped[str] = mapped_column(String(40))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)


class MirrorRow(Base):
    """The mirror this database describes: the id in its `.syncer/mirror-id`. One row; a new one
    replaces it only when a person says the mirror starts over (`syncer sync --new-mirror`)."""

    __tablename__ = "mirrors"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    root: Mapped[str] = mapped_column(String(4000))
    """Where it was when recorded (for messages: several workers may mount it elsewhere)."""
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SyncRunRow(Base):
    __tablename__ = "sync_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("projects.id"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    full: Mapped[bool] = mapped_column(Boolean, default=False)
    listed: Mapped[int] = mapped_column(Integer, default=0)
    new: Mapped[int] = mapped_column(Integer, default=0)
    changed: Mapped[int] = mapped_column(Integer, default=0)
    downloaded: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(20), default="running")
    """running, ok, incomplete, failed or interrupted."""

    __table_args__ = (Index("ix_sync_runs_project_last", "project_id", "id"),)
    """A project's last run is found at once, however long the history."""
