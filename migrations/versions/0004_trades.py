"""Photos keep their trades' names in a column, so an archive's index (the gallery, the CSV) reads
them without parsing every record's JSON. Existing rows get them from their `raw_json`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from syncer.procore.models import trade_names

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table("photos") as batch:
        batch.add_column(sa.Column("trades", sa.Text(), nullable=True))
    photos = sa.table(
        "photos", sa.column("id", sa.BigInteger), sa.column("raw_json", sa.Text), sa.column("trades")
    )
    conn = op.get_bind()
    last = None
    while True:
        query = sa.select(photos.c.id, photos.c.raw_json).order_by(photos.c.id).limit(BATCH)
        if last is not None:
            query = query.where(photos.c.id > last)
        rows = conn.execute(query).all()
        if not rows:
            return
        conn.execute(
            photos.update().where(photos.c.id == sa.bindparam("photo_id")),
            [{"photo_id": ident, "trades": "\n".join(_trades(raw))} for ident, raw in rows],
        )
        last = rows[-1][0]


def _trades(raw: str) -> tuple[str, ...]:
    try:
        record = json.loads(raw)
    except ValueError:
        return ()
    return trade_names(record.get("trades")) if isinstance(record, dict) else ()


def downgrade() -> None:
    with op.batch_alter_table("photos") as batch:
        batch.drop_column("trades")
