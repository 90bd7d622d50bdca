"""The mirror's identity: the id kept in `<mirror>/.syncer/mirror-id`, recorded here, so a run
whose mirror root does not hold it (a disk or share that did not mount) writes nothing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from syncer.store.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mirrors",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("root", sa.String(length=4000), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mirrors")),
    )


def downgrade() -> None:
    op.drop_table("mirrors")
