"""Shared fixtures: a running simulator on loopback, and settings that point a sync at it."""

from __future__ import annotations

import json
import logging
import sqlite3
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from syncer.config import Settings, load_settings
from syncer.procore.models import Photo, Project
from syncer.report import LogProgress
from syncer.result import RunSummary
from syncer.runner import run_sync
from syncer.simulator import SimConfig, Simulator
from syncer.store import Store, photo_row
from syncer.store.packed import unpack
from tests.postgres import new_database, postgres_server

__all__ = ["postgres_server"]  # a fixture, shared with every test module

SMALL = {"photos": 60, "projects": 2, "photo_size": 6_000}
DOCUMENTED_LIMITS: dict[str, Any] = {
    "hourly_limit": 3_600,
    "hourly_window": 3600.0,
    "spike_limit": 25,
    "spike_window": 10.0,
}
"""Procore's documented default rate limits, 3,600 an hour and 25 in 10 s, for the tests about the
budget; the others keep the simulator's generous defaults, which no test has to wait for."""


@pytest.fixture
async def make_sim() -> AsyncIterator[Callable[..., Any]]:
    """Start simulators with given `SimConfig` fields; all are stopped after the test."""
    started: list[Simulator] = []

    async def start(**overrides: Any) -> Simulator:
        sim = Simulator(SimConfig(**{**SMALL, **overrides}))
        await sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


TIME_MODELS = {
    "fine-inclusive": {"sub_second": True, "range_end": "inclusive"},
    "fine-exclusive": {"sub_second": True, "range_end": "exclusive"},
    "whole-inclusive": {"sub_second": False, "range_end": "inclusive"},
    "whole-exclusive": {"sub_second": False, "range_end": "exclusive"},
}


@pytest.fixture(params=list(TIME_MODELS))
def times(request: pytest.FixtureRequest) -> dict[str, Any]:
    """`SimConfig` fields for one way Procore might keep times and end ranges (stored finer than
    the whole seconds it shows, or not; ranges that hold their end, or not): a test that takes
    this fixture runs under each."""
    return TIME_MODELS[request.param]


@pytest.fixture
async def sim(make_sim: Callable[..., Any]) -> Simulator:
    result: Simulator = await make_sim()
    return result


def write_config(sim: Simulator, folder: Path, **sections: dict[str, Any]) -> Path:
    config: dict[str, Any] = {
        "procore": sim.procore_settings(),
        "database": {"url": "sqlite:///state/syncer.db"},
        "mirror": {"root": "mirror"},
        "sync": {"concurrency": 4, "per_page": 25, "overlap": 0},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def lose_database(folder: Path) -> None:
    """Delete the SQLite database `write_config` puts in `folder`, with its WAL."""
    for state in (folder / "state").iterdir():
        state.unlink()


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., Settings]:
    def make(sim: Simulator, **sections: dict[str, Any]) -> Settings:
        return load_settings(write_config(sim, tmp_path, **sections))

    return make


async def sync(settings: Settings, **kwargs: Any) -> RunSummary:
    return await run_sync(settings, progress=LogProgress(), **kwargs)


def in_mirror(path: Path, root: Path) -> bool:
    """Whether `path` is part of the mirror proper, not its state folder or trash."""
    return path.relative_to(root).parts[0] not in (".syncer", ".trash")


def sidecars(root: Path) -> list[dict[str, Any]]:
    """What Procore said of each mirrored photo, as its sidecar keeps it."""
    found = [json.loads(p.read_text(encoding="utf-8")) for p in root.rglob("*.json") if in_mirror(p, root)]
    return [s["procore"] for s in found]


def mirror_photos(root: Path) -> dict[int, bytes]:
    """Photo bytes in the mirror by photo id (read from each sidecar), ignoring state and trash."""
    found: dict[int, bytes] = {}
    for sidecar in root.rglob("*.json"):
        if not in_mirror(sidecar, root):
            continue
        photo_id = json.loads(sidecar.read_text(encoding="utf-8"))["procore"]["id"]
        found[photo_id] = sidecar.with_name(sidecar.name.removesuffix(".json")).read_bytes()
    return found


def assert_byte_exact(sim: Simulator, settings: Settings) -> None:
    """Every live photo is mirrored byte for byte; anything else is a photo deleted upstream
    (kept, as `on_delete: keep` says), and each photo has exactly one file and one sidecar."""
    expected = sim.expected_files()
    actual = mirror_photos(settings.mirror.root)
    missing = sorted(set(expected) - set(actual))
    assert not missing, f"{len(missing)} live photos missing from the mirror, e.g. {missing[:5]}"
    extra = set(actual) - set(expected)
    assert all(sim.company.photos[i].deleted for i in extra), "the mirror holds photos Procore never had"
    wrong = [pid for pid, data in expected.items() if actual[pid] != data]
    assert not wrong, f"{len(wrong)} photos differ, e.g. {wrong[:3]}"
    files = [p for p in settings.mirror.root.rglob("*") if p.is_file() and in_mirror(p, settings.mirror.root)]
    assert len(files) == 2 * len(actual), "every photo has exactly one file and one sidecar"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same store test on both back ends, as a config `database.url`."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state/syncer.db"
    return new_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def pg_url(postgres_server: str) -> str:
    """A fresh PostgreSQL database, as a config `database.url`."""
    return new_database(postgres_server)


def async_url(url: str) -> str:
    """The SQLAlchemy URL the syncer derives from a config `database.url`."""
    return Settings.model_validate(
        {"procore": {"company_id": 1, "client_id": "a", "client_secret": "b"}, "database": {"url": url}}
    ).database_url


@asynccontextmanager
async def project_store(url: str, project_id: int, name: str) -> AsyncIterator[Store]:
    """A store on a config `database.url` that knows one project."""
    store = await Store.open(async_url(url))
    try:
        await store.save_projects(1, [Project(id=project_id, name=name, active=True)])
        yield store
    finally:
        await store.close()


def listed_row(
    photo_id: int, project_id: int, *, size: int = 10, description: str = "", key: str = "k1"
) -> dict[str, Any]:
    """The database row of a listed photo the mirror does not have yet; its file URL (Procore's v5
    shape, on the storage host) names the file by `key`."""
    url = (
        f"https://storage.procore.com/api/v5/files/us-east-1/pro-core.com/companies/1/{photo_id}-{key}"
        f"?companyId=1&projectId={project_id}&sig=x"
    )
    photo = Photo.from_api({"id": photo_id, "url": url, "size": size, "description": description})
    return photo_row(
        photo, project_id=project_id, rel_path=f"project-{project_id}/{photo_id}.jpg", now=datetime.now(UTC)
    )


def stored_time(value: int) -> datetime:
    """A time read straight from a SQLite database file, where the store keeps microseconds
    since 1970."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)


def db_rows(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    path = settings.database.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def readable(value: bytes) -> str:
    """A binary value of a photo row as text: its Procore record unpacked, or else hex."""
    try:
        return unpack(value)
    except (zlib.error, KeyError, UnicodeDecodeError):
        return value.hex()


@pytest.fixture
def log_lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="syncer")
    return caplog
