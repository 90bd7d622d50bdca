"""Several workers on one PostgreSQL database: worker rows, project leases, photo claims, and an
index of the photos still due for download (which every claim and `due_downloads` query reads),
and one of the claimed photos (which a stopping worker hands back).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from syncer.store.models import CLAIMED_SQL, DUE_SQL, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("stopped_at", UTCDateTime(), nullable=True),
        sa.Column("activity", sa.String(length=200), nullable=True),
        sa.Column("downloaded", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_table(
        "project_leases",
        sa.Column("project_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("worker_id", sa.String(length=40), nullable=False),
        sa.Column("acquired_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_project_leases")),
    )
    with op.batch_alter_table("photos") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("fetch_url", sa.Text(), nullable=True))
    op.create_index(
        "ix_photos_due",
        "photos",
        ["project_id", "id"],
        sqlite_where=sa.text(DUE_SQL),
        postgresql_where=sa.text(DUE_SQL),
    )
    op.create_index(
        "ix_photos_claimed",
        "photos",
        ["claimed_by"],
        sqlite_where=sa.text(CLAIMED_SQL),
        postgresql_where=sa.text(CLAIMED_SQL),
    )


def downgrade() -> None:
    op.drop_index("ix_photos_claimed", table_name="photos")
    op.drop_index("ix_photos_due", table_name="photos")
    with op.batch_alter_table("photos") as batch:
        batch.drop_column("fetch_url")
        batch.drop_column("claimed_by")
    op.drop_table("project_leases")
    op.drop_table("workers")
