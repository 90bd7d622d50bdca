"""A database that stays small and fast at a million photos.

- Each project's counts (`project_counts`), kept by triggers on `photos` (`syncer.store.counts`):
  `syncer status` reads them instead of counting every photo. Started here from the rows.
- A photo's Procore record is stored deflated (`syncer.store.packed`) and its SHA-256 as 32
  bytes; `last_seen_at`, which nothing read, is gone. On SQLite times are integers (microseconds
  since 1970) instead of 26 characters of text.
- An index of the failed photos that `syncer status` lists, and two on `sync_runs`: each
  project's last run, and the start times that `database.keep_runs` prunes by.

Existing rows are rewritten a thousand photos at a time. On SQLite the file keeps its size (the
pages freed are used again as it grows): `VACUUM` gives them back to the disk.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

from syncer.store.counts import create_triggers, drop_triggers, fill
from syncer.store.models import CLAIMED_SQL, DUE_SQL, FAILING_SQL, UTCDateTime
from syncer.store.packed import pack, unpack

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BATCH = 1000
TIMES = {
    "projects": ("checkpoint", "last_full_at"),
    "photos": (
        "taken_at",
        "created_at",
        "updated_at",
        "first_seen_at",
        "deleted_at",
        "downloaded_at",
        "sidecar_of",
        "next_retry_at",
    ),
    "sync_runs": ("started_at", "finished_at", "window_start", "window_end"),
    "workers": ("started_at", "heartbeat_at", "expires_at", "stopped_at"),
    "project_leases": ("acquired_at",),
    "mirrors": ("recorded_at",),
}
PHOTO_INDEXES = {
    "ix_photos_project_updated": (["project_id", "updated_at"], None),
    "ix_photos_due": (["project_id", "id"], DUE_SQL),
    "ix_photos_claimed": (["claimed_by"], CLAIMED_SQL),
}


def _micros(column: str) -> str:
    """SQLite: the microseconds since 1970 of a time SQLAlchemy stored as text
    (`YYYY-MM-DD HH:MM:SS.ffffff`, UTC)."""
    return (
        f"CAST(strftime('%s', substr({column}, 1, 19)) AS INTEGER) * 1000000"
        f" + CAST(substr({column}, 21, 6) AS INTEGER)"
    )


def _rewrite_photos(conn: sa.Connection, rewrite: Callable[[Any, Any], tuple[Any, Any]]) -> None:
    """Each photo's record and SHA-256 through `rewrite`, a thousand photos at a time."""
    photos = sa.table("photos", sa.column("id", sa.BigInteger), sa.column("raw_json"), sa.column("sha256"))
    last = None
    while True:
        query = sa.select(photos.c.id, photos.c.raw_json, photos.c.sha256).order_by(photos.c.id).limit(BATCH)
        if last is not None:
            query = query.where(photos.c.id > last)
        rows = conn.execute(query).all()
        if not rows:
            return
        changed = [(ident, *rewrite(raw, sha)) for ident, raw, sha in rows]
        conn.execute(
            photos.update().where(photos.c.id == sa.bindparam("photo_id")),
            [{"photo_id": ident, "raw_json": raw, "sha256": sha} for ident, raw, sha in changed],
        )
        last = rows[-1][0]


def _packed(raw: Any, sha: Any) -> tuple[bytes, bytes | None]:
    """The record deflated (from text, or UTF-8 in a binary column) and the SHA-256 as bytes."""
    text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")
    return pack(text), bytes.fromhex(sha) if isinstance(sha, str) else sha


def _unpacked(raw: Any, sha: Any) -> tuple[str, str | None]:
    return unpack(bytes(raw)), None if sha is None else bytes(sha).hex()


def _sqlite(conn: sa.Connection) -> None:
    for table, columns in TIMES.items():
        for column in columns:
            converted = _micros(column)
            op.execute(f"UPDATE {table} SET {column} = {converted} WHERE typeof({column}) = 'text'")  # noqa: S608
    _rewrite_photos(conn, _packed)
    # A table that others refer to cannot be rebuilt inside the migration's transaction (SQLite
    # would check the references against the dropped table), so `projects` keeps its declared
    # types: to SQLite a column type is only a name, and its integers are kept as integers.
    for table in ("photos", "sync_runs", "workers", "project_leases", "mirrors"):
        with op.batch_alter_table(table, recreate="always") as batch:
            for column in TIMES[table]:
                batch.alter_column(column, type_=UTCDateTime())
            if table == "photos":
                batch.alter_column("raw_json", type_=sa.LargeBinary())
                batch.alter_column("sha256", type_=sa.LargeBinary())
                batch.drop_column("last_seen_at")


def _postgresql(conn: sa.Connection) -> None:
    op.execute("ALTER TABLE photos ALTER COLUMN raw_json TYPE bytea USING convert_to(raw_json, 'UTF8')")
    op.execute("ALTER TABLE photos ALTER COLUMN sha256 TYPE bytea USING decode(sha256, 'hex')")
    op.drop_column("photos", "last_seen_at")
    _rewrite_photos(conn, _packed)


def upgrade() -> None:
    conn = op.get_bind()
    # Made again once every row is rewritten: faster than keeping them up to date row by row.
    for name in PHOTO_INDEXES:
        op.drop_index(name, table_name="photos")
    if conn.dialect.name == "sqlite":
        _sqlite(conn)
    else:
        _postgresql(conn)
    for name, (columns, where) in {**PHOTO_INDEXES, "ix_photos_failing": (["id"], FAILING_SQL)}.items():
        partial = (
            {} if where is None else {"sqlite_where": sa.text(where), "postgresql_where": sa.text(where)}
        )
        op.create_index(name, "photos", columns, **partial)
    op.drop_index("ix_sync_runs_project_id", table_name="sync_runs")
    op.create_index("ix_sync_runs_project_last", "sync_runs", ["project_id", "id"])
    op.create_index(op.f("ix_sync_runs_started_at"), "sync_runs", ["started_at"])
    op.create_table(
        "project_counts",
        sa.Column("project_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("known", sa.BigInteger(), nullable=False),
        sa.Column("mirrored", sa.BigInteger(), nullable=False),
        sa.Column("pending", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("last_change_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_project_counts_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_project_counts")),
    )
    fill(conn)
    create_triggers(conn)


def _text_time(column: str) -> str:
    """SQLite: `_micros` undone (floored, so times before 1970 come back too)."""
    micros = f"(({column} % 1000000) + 1000000) % 1000000"
    return (
        f"strftime('%Y-%m-%d %H:%M:%S', ({column} - {micros}) / 1000000, 'unixepoch')"
        f" || '.' || printf('%06d', {micros})"
    )


def downgrade() -> None:
    conn = op.get_bind()
    drop_triggers(conn)
    op.drop_table("project_counts")
    op.drop_index(op.f("ix_sync_runs_started_at"), table_name="sync_runs")
    op.drop_index("ix_sync_runs_project_last", table_name="sync_runs")
    op.create_index(op.f("ix_sync_runs_project_id"), "sync_runs", ["project_id"])
    op.drop_index("ix_photos_failing", table_name="photos")
    if conn.dialect.name == "postgresql":  # text as UTF-8 while the columns are binary (below)
        _rewrite_photos(conn, lambda raw, sha: tuple(v and v.encode() for v in _unpacked(raw, sha)))
    else:
        _rewrite_photos(conn, _unpacked)
    with op.batch_alter_table("photos") as batch:
        batch.add_column(sa.Column("last_seen_at", UTCDateTime(), nullable=True))
    op.execute("UPDATE photos SET last_seen_at = first_seen_at")
    if conn.dialect.name == "postgresql":
        op.execute("ALTER TABLE photos ALTER COLUMN last_seen_at SET NOT NULL")
        op.execute("ALTER TABLE photos ALTER COLUMN raw_json TYPE text USING convert_from(raw_json, 'UTF8')")
        op.execute(
            "ALTER TABLE photos ALTER COLUMN sha256 TYPE varchar(64) USING convert_from(sha256, 'UTF8')"
        )
        return
    for table, columns in TIMES.items():
        for column in columns:
            converted = _text_time(column)
            op.execute(f"UPDATE {table} SET {column} = {converted} WHERE typeof({column}) = 'integer'")  # noqa: S608
