"""A hostile or broken listing, through a real `syncer` process: odd values fail one photo or
leave one project's listing unproven, never the run; the other projects are synced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from syncer.config import load_settings
from syncer.errors import ExitCode
from syncer.simulator import Simulator
from tests.conftest import db_rows, mirror_photos, stored_time, write_config
from tests.test_cli import Run, assert_no_traceback, syncer


def photos_of(sim: Simulator, project: int) -> list[int]:
    """The photo ids of the `project`-th project (0 or 1)."""
    pid = sorted(sim.company.projects)[project]
    return sorted(i for i, p in sim.company.photos.items() if p.project_id == pid)


async def sync_process(sim: Simulator, tmp_path: Path, **sections: Any) -> Run:
    run = await syncer("sync", "--config", str(write_config(sim, tmp_path, **sections)))
    assert_no_traceback(run)
    return run


def assert_mirrored(sim: Simulator, tmp_path: Path, ids: list[int]) -> None:
    mirrored = mirror_photos(tmp_path / "mirror")
    expected = sim.expected_files()
    assert {i: mirrored.get(i) for i in ids} == {i: expected[i] for i in ids}


ODD = [
    {"taken_at": "0001-01-01T00:00:00+01:00"},
    {"created_at": "9999-12-31T23:59:59-01:00"},
    {"image_category_id": 2**63},
    {"image_category_id": "\u00b2"},
    {"width": 2**70, "height": -(2**70)},
    {"gps_lat": "1e999", "gps_long": "nan"},
    {"size": "\u00b2"},
    {"filename": "../../etc/passwd\u0000.jpg"},
    {"description": "a\ud800b", "filename": "x\udc00.jpg", "uploader": {"name": "\udfff"}},  # lone surrogates
]


async def test_odd_values_in_records_leave_their_photos_mirrored(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=20, projects=1)
    ids = photos_of(sim, 0)
    sim.config.odd_fields.update(dict(zip(ids, ODD, strict=False)))
    run = await sync_process(sim, tmp_path)
    assert run.code == ExitCode.OK, run.out + run.err
    assert_mirrored(sim, tmp_path, ids)
    status = await syncer("status", "--config", str(tmp_path / "config.yaml"), "--json")
    assert json.loads(status.out)["projects"][0]["mirrored"] == len(ids)


@pytest.mark.parametrize(
    "ident", [2**63, "\u00b2", 10**30, -1], ids=["2^63", "superscript", "10^30", "negative"]
)
async def test_an_unusable_id_fails_its_record_alone(make_sim: Any, tmp_path: Path, ident: Any) -> None:
    sim = await make_sim(photos=20, projects=2)
    bad = photos_of(sim, 0)[3]
    sim.config.odd_fields[bad] = {"id": ident}
    run = await sync_process(sim, tmp_path)
    assert run.code == ExitCode.INCOMPLETE
    assert "missing or invalid id" in run.out + run.err
    assert_mirrored(sim, tmp_path, [i for i in sorted(sim.company.photos) if i != bad])


async def test_an_unreadable_record_is_named_and_its_window_stays_unproven(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=40, projects=1)
    bad = photos_of(sim, 0)[17]
    sim.config.odd_fields[bad] = {"id": None}
    config = write_config(sim, tmp_path, sync={"per_page": 5})  # the record is on page 4 of 8
    first = await syncer("sync", "--config", str(config))
    assert first.code == ExitCode.INCOMPLETE, first.out + first.err
    named = [line for line in first.out.splitlines() if "cannot be read" in line]
    assert len(named) == 1 and repr(sim.company.photos[bad].filename) in named[0], first.out
    assert_mirrored(sim, tmp_path, [i for i in photos_of(sim, 0) if i != bad])
    # 8 pages, and the backfill's counts, its slices and the rest below the unproven one
    assert sim.stats.requests["images"] <= 30, "counted once in the proof: no endless split"
    ((checkpoint, until),) = db_rows(load_settings(config), "SELECT checkpoint, backfill_until FROM projects")
    shown = sim.company.photos[bad].updated_at
    assert checkpoint is None or (until and stored_time(until) > shown)
    downloads = sum(sim.stats.downloads.values())
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.INCOMPLETE
    assert sum(sim.stats.downloads.values()) == downloads, "what was mirrored stays mirrored"


async def test_a_listing_nested_too_deep_leaves_its_project_unproven_and_the_others_sync(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=20, projects=2)
    sim.config.raw_listing[sorted(sim.company.projects)[0]] = b"[" * 200_000 + b"]" * 200_000
    run = await sync_process(sim, tmp_path, procore={"retry_attempts": 2})  # each answer fails alike
    assert run.code == ExitCode.INCOMPLETE
    assert "answer is not JSON" in run.out + run.err
    assert_mirrored(sim, tmp_path, photos_of(sim, 1))


async def test_relative_pagination_links_are_followed(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(
        photos=60, projects=12, relative_links=True, max_per_page=10
    )  # two pages of projects
    run = await sync_process(sim, tmp_path)
    assert run.code == ExitCode.OK, run.out + run.err
    assert_mirrored(sim, tmp_path, sorted(sim.company.photos))


@pytest.mark.parametrize("url", ["file:///etc/passwd", "relative/path.jpg", "http://[::1", "data:,x"])
async def test_a_file_url_that_is_not_a_web_url_fails_that_photo_alone(
    make_sim: Any, tmp_path: Path, url: str
) -> None:
    sim = await make_sim(photos=10, projects=1)
    bad, *others = photos_of(sim, 0)
    sim.config.odd_fields[bad] = {"url": url}
    run = await sync_process(sim, tmp_path)
    assert run.code == ExitCode.INCOMPLETE
    assert "unusable file URL" in run.out + run.err
    assert_mirrored(sim, tmp_path, others)
