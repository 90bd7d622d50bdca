"""The gallery's figures: thumbnails of 12-megapixel JPEGs, and a rebuild with nothing changed.

Thumbnails are made by the gallery's own `thumbnail` on a pool of one thread per core (as a build
makes them), against the thumbnail a first attempt would write (decode the whole image, then
shrink it) on the same files in the same run. The rebuild runs `syncer gallery` as a process over a
database of photos whose thumbnails already exist, so it reads, renders and compares everything
and writes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from bench.database import insert_rows
from bench.harness import Figure, measure, scratch
from syncer.gallery.pages import thumb_path
from syncer.gallery.thumbs import SIZE, thumbnail
from syncer.mirror.files import MARKER
from syncer.store import Store
from syncer.store.models import MirrorRow, PhotoRow


def twelve_megapixel_jpegs(folder: Path, count: int) -> list[Path]:
    """`count` different 4000 x 3000 JPEGs of about 3 MB (detail under noise, like a site photo):
    one drawn image, each copy made distinct by a comment segment after the start marker."""
    noise = Image.effect_noise((4000, 3000), 30).convert("RGB")
    gradient = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    out = io.BytesIO()
    Image.blend(noise, gradient, 0.8).save(out, "JPEG", quality=90)
    body = out.getvalue()
    paths = []
    for i in range(count):
        comment = f"bench photo {i}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        path = folder / f"IMG_{i:04d}.JPG"
        path.write_bytes(body[:2] + segment + body[2:])
        paths.append(path)
    return paths


def full_decode_thumbnail(source: Path) -> bytes:
    """The reference: the whole image decoded, then shrunk (loaded first, so no draft scaling)."""
    with Image.open(source) as image:
        image.load()
        image.thumbnail((SIZE, SIZE), Image.Resampling.LANCZOS, reducing_gap=2.0)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=80, optimize=True)
        return out.getvalue()


def timed(make: Callable[[Path], Any], files: list[Path], threads: int) -> tuple[float, float]:
    """(wall, CPU) seconds to make every file's thumbnail on `threads` threads."""
    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(make, files))
    assert all(results), "every bench photo decodes"
    return time.perf_counter() - wall, time.process_time() - cpu


def thumbnails(scale: dict[str, Any], _aria2c: str | None) -> list[Figure]:
    n, repeat, threads = scale["thumbnails"], scale["repeat"], os.cpu_count() or 2
    rates, cpu_ms, ratios = [], [], []
    with scratch() as folder:
        files = twelve_megapixel_jpegs(folder, n)
        for _ in range(repeat):
            wall, cpu = timed(thumbnail, files, threads)
            _, reference = timed(full_decode_thumbnail, files, threads)
            rates.append(n / wall)
            cpu_ms.append(cpu * 1000 / n)
            ratios.append(cpu / reference)
    name = f"gallery thumbnails of {n} 12-MP JPEGs"
    ratio = Figure(f"{name}: CPU per thumbnail / a full decode's", ratios, "x", "<= 0.5x")
    ratio.passed = ratio.median <= 0.5
    return [
        Figure(f"{name}: thumbnails per second ({threads} threads)", rates, "thumbnails/s"),
        Figure(f"{name}: CPU per thumbnail", cpu_ms, "ms"),
        ratio,
    ]


def archive(folder: Path, count: int, projects: int = 3) -> Path:
    """A config and a database of `count` mirrored photos over `projects` projects, each with a
    thumbnail in place: what a large mirror's gallery looks like the day after its first build."""
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
    store = asyncio.run(Store.open(f"sqlite+aiosqlite:///{database}"))
    asyncio.run(store.close())
    # The archive's files are not there (thumbnails are): its id says it is the mirror all the same.
    (folder / "mirror" / ".syncer").mkdir(parents=True)
    (folder / "mirror" / MARKER).write_text("benchmirror\n")
    start = datetime(2020, 1, 1, tzinfo=UTC)
    thumb = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE * 3 // 4), (120, 130, 140)).save(thumb, "JPEG")
    rows = []
    for i in range(count):
        pid = 1000 + i % projects
        sha = hashlib.sha256(f"photo {i}".encode()).hexdigest()
        when = start + timedelta(minutes=37 * i)
        path = f"Project {pid}/Album {i % 30}/{when:%Y-%m}/{10**6 + i}_IMG_{i:06d}.JPG"
        description = f"Photo {i}: conduit, slab and framing at grid line {i % 90}"
        rows.append(
            (10**6 + i, pid, f"Album {i % 30}", f"IMG_{i:06d}.JPG", description, when, when, when,
             f"Building {i % 5} > Level {i % 12}", f"Person {i % 60}", "Electrical\nConcrete", "{}",
             f"k{i}", path, when, path, 3_000_000 + i, sha, 0)
        )  # fmt: skip
        target = folder / "mirror" / ".gallery" / thumb_path(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(thumb.getvalue())
    with sqlite3.connect(database) as conn:
        insert_rows(
            conn,
            MirrorRow.__table__,
            ("id", "root", "recorded_at"),
            [("benchmirror", str(folder / "mirror"), start)],
        )
        conn.executemany(
            "INSERT INTO projects (id, company_id, name, active) VALUES (?, 1, ?, 1)",
            [(1000 + p, f"Project {1000 + p}") for p in range(projects)],
        )
        columns = (
            "id", "project_id", "album_name", "filename", "description", "taken_at", "created_at",
            "updated_at", "location_name", "uploader_name", "trades", "raw_json", "file_key", "rel_path",
            "first_seen_at", "local_path", "local_size", "sha256", "attempts",
        )  # fmt: skip
        insert_rows(conn, PhotoRow.__table__, columns, rows)
    return config


def rebuild(scale: dict[str, Any], _aria2c: str | None) -> list[Figure]:
    n, repeat = scale["gallery"], scale["repeat"]
    builds, walls, cpus = [], [], []
    with scratch() as folder:
        config = archive(folder, n)
        command = [sys.executable, "-m", "syncer", "gallery", "--config", str(config)]
        first = measure(command)
        if first.code != 0:
            raise RuntimeError(f"syncer gallery exited {first.code}:\n{first.output[-2000:]}")
        for _ in range(repeat):
            run = measure(command)
            if "nothing changed" not in run.output:
                raise RuntimeError(f"a rebuild with nothing changed changed something:\n{run.output}")
            seconds = re.search(r"nothing changed in ([\d.]+) s", run.output)
            assert seconds is not None, run.output
            builds.append(float(seconds[1]))
            walls.append(run.wall)
            cpus.append(run.cpu)
    name = f"gallery rebuild, nothing changed, {n:,} photos"
    build = Figure(f"{name}: the build (as syncer gallery reports it)", builds, "s", "<= 1 s")
    build.passed = build.median <= 1
    return [
        build,
        Figure(f"{name}: the whole process, wall", walls, "s"),
        Figure(f"{name}: the whole process, CPU", cpus, "s"),
    ]
