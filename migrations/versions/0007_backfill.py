"""A first backfill lists each project newest first, in slices: how far back it has proven the
listing (`projects.backfill_until`), so an interrupted one resumes from there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from syncer.store.models import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ALTER TABLE: a batch would copy the table, which photos' foreign keys forbid.
    op.add_column("projects", sa.Column("backfill_until", UTCDateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column("projects", "backfill_until")
