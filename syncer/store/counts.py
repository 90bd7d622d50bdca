"""Each project's photo counts, kept in `project_counts` by triggers on `photos`.

`syncer status` and the daemon's `/status` show, per project, how many photos are known, mirrored,
pending and failed and how many bytes the mirror holds. Counting them took 12 s at a million
photos; the triggers keep them instead. They fire on every write of a counted column, whatever
the statement (a listing's upsert, a recorded download or failure, a deletion, a requeue, a
migration, an operator's SQL), so no write path can forget them and they cannot drift from the
rows, which a count kept by each store method could. `SCAN` counts the same from the rows, for
the migration that starts the counts and for the test that holds them to it.

A migration that rebuilds `photos` (SQLite's batch mode copies it to a new table) drops the
triggers with the old table: it must create them again (`create_triggers`).
"""

from __future__ import annotations

from sqlalchemy import Connection, text

LIVE = "{r}deleted_at IS NULL"
HELD = f"{LIVE} AND {{r}}local_file_key = {{r}}file_key"
DUE = f"{LIVE} AND ({{r}}local_file_key IS NULL OR {{r}}local_file_key != {{r}}file_key)"
"""The photo's file is in the mirror (`HELD`), or is not and is due (`DUE`, `models.DUE_SQL`)."""

COUNTED = {
    "known": f"CASE WHEN {LIVE} THEN 1 ELSE 0 END",
    "mirrored": f"CASE WHEN {HELD} THEN 1 ELSE 0 END",
    "pending": f"CASE WHEN {DUE} THEN 1 ELSE 0 END",
    "failed": f"CASE WHEN {DUE} AND {{r}}attempts > 0 THEN 1 ELSE 0 END",
    "bytes": f"CASE WHEN {HELD} THEN COALESCE({{r}}local_size, 0) ELSE 0 END",
}
"""What one photo row adds to each count of its project, `{r}` standing for the row's name."""
WATCHED = ("project_id", "deleted_at", "local_file_key", "file_key", "attempts", "local_size", "updated_at")
"""The columns the counts and `last_change_at` depend on: an update of no other fires a trigger
(a claim, a sidecar, a retry time)."""


def _later(r: str) -> str:
    """`last_change_at` moved on to the row's `updated_at` if that is later."""
    return (
        f"CASE WHEN last_change_at IS NULL OR {r}updated_at > last_change_at "
        f"THEN COALESCE({r}updated_at, last_change_at) ELSE last_change_at END"
    )


def _add(r: str, sign: str) -> str:
    """The UPDATE of `project_counts` that adds (`+`) or takes away (`-`) row `r`'s share."""
    sets = [f"{name} = {name} {sign} ({expr.format(r=r)})" for name, expr in COUNTED.items()]
    if sign == "+":
        sets.append(f"last_change_at = {_later(r)}")
    return f"UPDATE project_counts SET {', '.join(sets)} WHERE project_id = {r}project_id"  # noqa: S608 - no input


ZEROS = (
    "INSERT INTO project_counts (project_id, known, mirrored, pending, failed, bytes) "
    "VALUES (NEW.id, 0, 0, 0, 0, 0)"
)
"""A new project's row of counts."""


def _sqlite() -> list[str]:
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in WATCHED)
    return [
        f"CREATE TRIGGER tr_projects_counts AFTER INSERT ON projects BEGIN {ZEROS}; END",
        f"CREATE TRIGGER tr_photos_counts_insert AFTER INSERT ON photos BEGIN {_add('NEW.', '+')}; END",
        f"CREATE TRIGGER tr_photos_counts_delete AFTER DELETE ON photos BEGIN {_add('OLD.', '-')}; END",
        f"CREATE TRIGGER tr_photos_counts_update AFTER UPDATE OF {', '.join(WATCHED)} ON photos "
        f"WHEN {changed} BEGIN {_add('OLD.', '-')}; {_add('NEW.', '+')}; END",
    ]


def _postgresql() -> list[str]:
    changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in WATCHED)
    return [
        "CREATE FUNCTION projects_counts() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"{ZEROS}; RETURN NULL; END $$",
        "CREATE TRIGGER tr_projects_counts AFTER INSERT ON projects "
        "FOR EACH ROW EXECUTE FUNCTION projects_counts()",
        "CREATE FUNCTION photos_counts() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF TG_OP <> 'INSERT' THEN {_add('OLD.', '-')}; END IF; "
        f"IF TG_OP <> 'DELETE' THEN {_add('NEW.', '+')}; END IF; "
        "RETURN NULL; END $$",
        "CREATE TRIGGER tr_photos_counts_insert AFTER INSERT OR DELETE ON photos "
        "FOR EACH ROW EXECUTE FUNCTION photos_counts()",
        f"CREATE TRIGGER tr_photos_counts_update AFTER UPDATE OF {', '.join(WATCHED)} ON photos "
        f"FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION photos_counts()",
    ]


def create_triggers(conn: Connection) -> None:
    """Create the triggers (and, on PostgreSQL, their functions) that keep `project_counts`."""
    for statement in _postgresql() if conn.dialect.name == "postgresql" else _sqlite():
        conn.execute(text(statement))


def drop_triggers(conn: Connection) -> None:
    """Undo `create_triggers` (a downgrade)."""
    postgresql = conn.dialect.name == "postgresql"
    for trigger, table in (
        ("tr_photos_counts_update", "photos"),
        ("tr_photos_counts_insert", "photos"),
        ("tr_photos_counts_delete", "photos"),
        ("tr_projects_counts", "projects"),
    ):
        conn.execute(text(f"DROP TRIGGER IF EXISTS {trigger}" + (f" ON {table}" if postgresql else "")))
    if postgresql:
        conn.execute(text("DROP FUNCTION photos_counts()"))
        conn.execute(text("DROP FUNCTION projects_counts()"))


SCAN = (
    "SELECT projects.id, "  # noqa: S608 - no input
    + ", ".join(f"COALESCE(SUM({expr.format(r='photos.')}), 0)" for expr in COUNTED.values())
    + ", MAX(photos.updated_at) FROM projects LEFT JOIN photos ON photos.project_id = projects.id "
    "GROUP BY projects.id"
)
"""Every project's counts and `last_change_at` from its photo rows: (id, known, mirrored, pending,
failed, bytes, last_change_at) in `project_counts`' order, in one pass over the photos."""


def fill(conn: Connection) -> None:
    """Write every project's counts from its rows (a migration, before the triggers keep them)."""
    conn.execute(text("DELETE FROM project_counts"))
    columns = "project_id, known, mirrored, pending, failed, bytes, last_change_at"
    conn.execute(text(f"INSERT INTO project_counts ({columns}) {SCAN}"))
