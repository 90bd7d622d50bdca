"""The command line as admins expect from rclone or restic: global options before or after the
command, a config found in the usual places, -q for cron, and usage errors that show the usage of
the command that was given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from syncer.errors import ExitCode
from syncer.simulator import Simulator
from tests.conftest import write_config
from tests.test_cli import assert_no_traceback, syncer

NO_CONFIG = {"SYNCER_CONFIG": "", "XDG_CONFIG_HOME": ""}
SYSTEM_CONFIG = "/etc/procore-photo-sync/config.yaml"


async def synced(sim: Simulator, folder: Path) -> Path:
    config = write_config(sim, folder)
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.err
    return config


async def test_global_options_work_before_and_after_the_command(sim: Simulator, tmp_path: Path) -> None:
    config = str(await synced(sim, tmp_path))
    before = await syncer("-v", "--config", config, "--log-format", "json", "status", "--json")
    after = await syncer("status", "--json", "-v", "-c", config, "--log-format", "json")
    assert before.code == after.code == ExitCode.OK, before.err + after.err
    assert json.loads(before.out) == json.loads(after.out)


async def test_an_option_after_the_command_wins_over_the_same_before_it(
    sim: Simulator, tmp_path: Path
) -> None:
    config = str(await synced(sim, tmp_path))
    run = await syncer("--config", str(tmp_path / "absent.yaml"), "status", "--config", config, "--json")
    assert run.code == ExitCode.OK, run.err


async def test_without_config_the_users_config_file_is_used(sim: Simulator, tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = home / ".config" / "procore-photo-sync"
    folder.mkdir(parents=True)
    await synced(sim, folder)
    run = await syncer("status", "--json", env={**NO_CONFIG, "HOME": str(home)})
    assert run.code == ExitCode.OK, run.err
    assert sum(p["mirrored"] for p in json.loads(run.out)["projects"]) == 60


async def test_xdg_config_home_is_where_the_users_config_file_is(sim: Simulator, tmp_path: Path) -> None:
    folder = tmp_path / "xdg" / "procore-photo-sync"
    folder.mkdir(parents=True)
    await synced(sim, folder)
    env = {**NO_CONFIG, "HOME": str(tmp_path / "empty"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    run = await syncer("status", "--json", env=env)
    assert run.code == ExitCode.OK, run.err


async def test_syncer_config_goes_before_the_users_config_file(sim: Simulator, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config" / "procore-photo-sync").mkdir(parents=True)
    (home / ".config" / "procore-photo-sync" / "config.yaml").write_text("not: [valid", encoding="utf-8")
    config = await synced(sim, tmp_path)
    run = await syncer("status", env={**NO_CONFIG, "HOME": str(home), "SYNCER_CONFIG": str(config)})
    assert run.code == ExitCode.OK, run.err


@pytest.mark.skipif(Path(SYSTEM_CONFIG).exists(), reason="this machine has a system config file to find")
async def test_when_no_config_is_found_the_error_names_every_place_searched(tmp_path: Path) -> None:
    run = await syncer("status", env={**NO_CONFIG, "HOME": str(tmp_path)})
    assert run.code == ExitCode.USAGE
    assert run.err.startswith("syncer: no configuration: give --config PATH, set SYNCER_CONFIG, or create ")
    assert f"{tmp_path}/.config/procore-photo-sync/config.yaml" in run.err
    assert SYSTEM_CONFIG in run.err
    assert_no_traceback(run)


async def test_help_names_every_place_a_config_is_looked_for() -> None:
    run = await syncer("status", "--help")
    text = " ".join(run.out.split())
    assert "$SYNCER_CONFIG, then ~/.config/procore-photo-sync/config.yaml" in text
    assert SYSTEM_CONFIG in text


async def test_quiet_sync_that_completes_prints_nothing(sim: Simulator, tmp_path: Path) -> None:
    run = await syncer("sync", "-q", "--config", str(write_config(sim, tmp_path)))
    assert run.code == ExitCode.OK, run.err
    assert (run.out, run.err) == ("", "")


async def test_quiet_sync_that_fails_photos_prints_its_summary(sim: Simulator, tmp_path: Path) -> None:
    sim.config.broken_files.add(sorted(sim.company.photos)[0])
    config = write_config(sim, tmp_path, procore={"retry_attempts": 1})
    run = await syncer("-q", "sync", "--config", str(config))
    assert run.code == ExitCode.INCOMPLETE
    assert run.out.splitlines()[-1].startswith("INCOMPLETE: "), run.out
    assert " INFO " not in run.err


async def test_quiet_and_verbose_together_are_a_usage_error(tmp_path: Path) -> None:
    run = await syncer("-q", "status", "-v", env={"SYNCER_CONFIG": str(tmp_path / "c.yaml")})
    assert run.code == ExitCode.USAGE
    assert "-q and -v contradict each other" in run.err


async def test_status_project_shows_only_that_project(sim: Simulator, tmp_path: Path) -> None:
    config = str(await synced(sim, tmp_path))
    first = min(sim.company.projects)
    run = await syncer("status", "--project", str(first), "--json", "--config", config)
    assert run.code == ExitCode.OK, run.err
    assert [p["id"] for p in json.loads(run.out)["projects"]] == [first]


async def test_status_of_a_project_the_database_does_not_know_is_a_usage_error(
    sim: Simulator, tmp_path: Path
) -> None:
    config = str(await synced(sim, tmp_path))
    run = await syncer("status", "--project", "999", "--config", config)
    assert run.code == ExitCode.USAGE
    assert run.err.startswith("syncer: --project 999: no such project in the database (it knows ")


async def test_an_unknown_option_shows_the_usage_of_the_command_given(tmp_path: Path) -> None:
    run = await syncer("status", "--no-such-option", "--config", str(tmp_path / "c.yaml"))
    assert run.code == ExitCode.USAGE
    assert run.err.startswith("usage: syncer status ")
    assert "syncer status: error: unrecognized arguments: --no-such-option" in run.err


async def test_an_unknown_option_of_a_nested_command_shows_that_commands_usage(tmp_path: Path) -> None:
    run = await syncer("db", "upgrade", "--no-such-option")
    assert run.err.startswith("usage: syncer db upgrade ")
