"""What real companies meet in their first month, from the outside: closed projects that Procore
lists only when asked, a mirror disk that did not mount, file URLs that move, and one record that
cannot be read. A real `syncer` process, the simulator as Procore behaves, the mirror's bytes."""

from __future__ import annotations

import json
from pathlib import Path

from syncer.config import load_settings
from syncer.errors import ExitCode
from syncer.simulator import Simulator
from tests.conftest import assert_byte_exact, mirror_photos, write_config
from tests.test_cli import syncer

# -- closed projects ---------------------------------------------------------------------------------


def close_a_project(sim: Simulator) -> int:
    """Close out the simulated company's first project, as a finished job is in Procore."""
    closed = min(sim.company.projects)
    sim.company.projects[closed].active = False
    return closed


def photos_of(sim: Simulator, project_id: int) -> set[int]:
    return {p.id for p in sim.company.photos.values() if p.project_id == project_id}


async def test_projects_all_mirrors_closed_projects_too(sim: Simulator, tmp_path: Path) -> None:
    closed = close_a_project(sim)
    config = write_config(sim, tmp_path)
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.err
    assert photos_of(sim, closed) <= set(mirror_photos(tmp_path / "mirror"))
    assert_byte_exact(sim, load_settings(config))


async def test_project_status_active_leaves_closed_projects_out(sim: Simulator, tmp_path: Path) -> None:
    closed = close_a_project(sim)
    config = write_config(sim, tmp_path, sync={"project_status": "active"})
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.err
    mirrored = set(mirror_photos(tmp_path / "mirror"))
    assert mirrored and not photos_of(sim, closed) & mirrored


async def test_a_closed_project_named_by_id_is_synced(sim: Simulator, tmp_path: Path) -> None:
    closed = close_a_project(sim)
    config = write_config(sim, tmp_path, sync={"projects": [closed], "project_status": "active"})
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.err
    assert set(mirror_photos(tmp_path / "mirror")) == photos_of(sim, closed)


async def test_status_says_which_projects_are_closed(sim: Simulator, tmp_path: Path) -> None:
    closed = close_a_project(sim)
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    document = json.loads((await syncer("status", "--config", str(config), "--json")).out)
    assert {p["id"]: p["active"] for p in document["projects"]} == {
        pid: pid != closed for pid in sim.company.projects
    }
    table = (await syncer("status", "--config", str(config))).out
    assert f"({closed}, closed)" in table
    assert sum(", closed)" in line for line in table.splitlines()) == 1
