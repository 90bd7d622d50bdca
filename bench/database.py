"""A large company's database, built in a minute, and what it costs: the bytes a photo takes and
how long `syncer status` takes over a million photos.

The rows are those of a real sync against the simulator, copied under new ids and paths into as
many projects as asked, with the store's own schema (the migrations, their triggers included), so
they are shaped, packed and indexed as a real sync leaves them. Copies fill their pages tighter
than a sync does (it writes each row twice: listed, then downloaded), so the bytes a photo takes
are measured on the synced database itself.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Table
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from bench.harness import Figure, measure, run_syncer, scratch, simulator, syncer_config
from syncer.store import Store
from syncer.store.models import SyncRunRow

DIALECT = SQLiteDialect_pysqlite()


def insert_rows(
    conn: sqlite3.Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Insert Python values (datetimes, hex digests, JSON text) as the store would write them:
    through each column's type, so times, records and digests are in their stored form."""
    processors = [table.c[name].type.bind_processor(DIALECT) for name in columns]
    encoded = (
        [value if process is None else process(value) for process, value in zip(processors, row, strict=True)]
        for row in rows
    )
    marks = ", ".join("?" * len(columns))
    conn.executemany(f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})", encoded)  # noqa: S608


def bytes_per_photo(database: Path) -> float:
    """The database file's size (its write-ahead log folded in) over its photo rows."""
    with sqlite3.connect(database) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (photos,) = conn.execute("SELECT count(*) FROM photos").fetchone()
    return database.stat().st_size / photos


def synced(folder: Path, photos: int) -> Path:
    """The database of a real first sync of `photos` photos (small files: only the rows matter)."""
    folder.mkdir(parents=True)
    limits = {"spike_limit": 10**9, "hourly_limit": 10**9}
    with simulator(photos=photos, projects=3, photo_size=2000, max_per_page=1000, **limits) as sim:
        run_syncer(syncer_config(sim, folder, per_page=1000))
    return folder / "state" / "syncer.db"


ROWS_TO_JUDGE = 5000
"""Photos a sync needs for its database's size to be its rows', not the pages every table and index
takes however small."""
RUNS = 100
"""Runs each project has had: a day of them, every 15 minutes."""


async def create(database: Path) -> None:
    """An empty database of the store's schema."""
    await (await Store.open(f"sqlite+aiosqlite:///{database}")).close()


def large(folder: Path, sample: Path, photos: int, projects: int) -> Path:
    """A config and database of `photos` photos in `projects` projects, each photo a copy of a
    row of `sample` under a new id and path, each project with `RUNS` runs behind it."""
    folder.mkdir(parents=True)
    config = folder / "config.yaml"
    settings = {
        "procore": {
            "company_id": 1,
            "client_id": "unused",
            "client_secret": "unused",
        },  # nothing calls Procore
        "database": {"url": "sqlite:///state/syncer.db"},
        "mirror": {"root": "mirror"},
    }
    config.write_text(yaml.safe_dump(settings))
    database = folder / "state" / "syncer.db"
    asyncio.run(create(database))
    with sqlite3.connect(sample) as source:
        source.row_factory = sqlite3.Row
        templates = [dict(row) for row in source.execute("SELECT * FROM photos ORDER BY id")]
    first = 10**12
    with sqlite3.connect(database) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.executemany(
            "INSERT INTO projects (id, company_id, name, active) VALUES (?, 1, ?, 1)",
            [(first + p, f"Project {p:04d}") for p in range(projects)],
        )
        columns = list(templates[0])
        at = columns.index
        for start in range(0, photos, 50_000):
            batch = []
            for i in range(start, min(start + 50_000, photos)):
                row = list(templates[i % len(templates)].values())
                old, new = str(row[at("id")]), str(first + i)
                row[at("id")], row[at("project_id")] = first + i, first + i % projects
                row[at("rel_path")] = row[at("rel_path")].replace(old, new)
                if row[at("local_path")] is not None:
                    row[at("local_path")] = row[at("local_path")].replace(old, new)
                batch.append(row)  # the stored form already: copied as the sync wrote it
            marks = ", ".join("?" * len(columns))
            conn.executemany(f"INSERT INTO photos ({', '.join(columns)}) VALUES ({marks})", batch)  # noqa: S608
        now = datetime.now(UTC)
        runs = (
            (
                first + p,
                now - timedelta(minutes=15 * k),
                now - timedelta(minutes=15 * k - 1),
                now,
                False,
                "ok",
            )
            for k in range(RUNS, 0, -1)
            for p in range(projects)
        )
        zeros = ("listed", "new", "changed", "downloaded", "bytes", "failed")
        insert_rows(
            conn,
            SyncRunRow.__table__,
            ("project_id", "started_at", "finished_at", "window_end", "full", "outcome", *zeros),
            (run + (0,) * len(zeros) for run in runs),
        )
        conn.commit()
        # As the syncer leaves it: its writes are checkpointed as they go, where one bulk insert
        # leaves a write-ahead log of the whole database, which the next process to close it
        # would copy back (about half a second per gigabyte, charged to `syncer status`).
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return config


def status_wall(config: Path) -> float:
    """The wall time of `syncer status` (a whole process: start-up, the query, the table)."""
    run = measure([sys.executable, "-m", "syncer", "status", "--config", str(config)])
    if run.code != 0:
        raise RuntimeError(f"syncer status exited {run.code}:\n{run.output[-2000:]}")
    return run.wall


def database(scale: dict[str, Any], _aria2c: str | None) -> list[Figure]:
    photos, projects, sample = scale["database"]
    with scratch() as folder:
        per_photo = bytes_per_photo(synced(folder / "synced", sample))
        config = large(folder / "large", folder / "synced" / "state" / "syncer.db", photos, projects)
        small, big = [], []
        for _ in range(scale["repeat"]):  # in turns, so that the machine's load falls on both alike
            small.append(status_wall(folder / "synced" / "config.yaml"))
            big.append(status_wall(config))
        large_per_photo = bytes_per_photo(folder / "large" / "state" / "syncer.db")
    size = Figure(f"database bytes per photo after a first sync of {sample:,} photos", [per_photo], "B")
    if sample >= ROWS_TO_JUDGE:
        size.target, size.passed = "<= 1200 B", per_photo <= 1200
    status = Figure(f"syncer status, {photos:,} photos in {projects:,} projects: wall", big, "s", "<= 1 s")
    status.passed = status.median <= 1
    return [
        size,
        status,
        Figure(f"syncer status, {sample:,} photos in 3 projects (start-up and all): wall", small, "s"),
        Figure(f"database bytes per photo, {photos:,} copied rows", [large_per_photo], "B"),
    ]
