"""The `syncer` command as a real process: exit codes, one-line errors, status output."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
from asyncio.subprocess import Process
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from syncer.cli import build_parser
from syncer.errors import ExitCode
from syncer.locks import Locks
from syncer.simulator import Simulator
from tests.conftest import write_config


@dataclass
class Run:
    code: int
    out: str
    err: str


async def spawn(
    *args: str,
    output: Any = asyncio.subprocess.PIPE,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
    **options: Any,
) -> Process:
    """A `syncer` process with these arguments; stdout and stderr both go to `output`; `options`
    for the process (`stdin=`, `user=`, `umask=`, ...)."""
    return await asyncio.create_subprocess_exec(
        python,
        "-m",
        "syncer",
        *args,
        stdout=output,
        stderr=output,
        env={**os.environ, **(env or {})},
        **options,
    )


async def syncer(*args: str, env: dict[str, str] | None = None, **options: Any) -> Run:
    proc = await spawn(*args, env=env, **options)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def assert_no_traceback(run: Run) -> None:
    assert "Traceback" not in run.out + run.err


async def test_sync_exits_0_and_status_reports_the_mirror(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path)
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.OK, run.err
    assert run.out.splitlines()[-1].startswith("complete: 2 projects, 60 photos downloaded")
    status = await syncer("status", "--config", str(config), "--json")
    document = json.loads(status.out)
    assert sum(p["mirrored"] for p in document["projects"]) == 60
    assert all(p["last_outcome"] == "ok" and p["checkpoint"] for p in document["projects"])
    table = await syncer("status", "--config", str(config))
    assert "mirrored" in table.out and "ok" in table.out


async def test_config_path_can_come_from_the_environment(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path)
    run = await syncer("sync", "--dry-run", env={"SYNCER_CONFIG": str(config)})
    assert run.code == ExitCode.OK, run.err
    assert run.out.count(" photos listed; would download ") == 2
    last = run.out.splitlines()[-1]
    assert last.startswith("dry run, nothing written: 2 projects; a sync would download 60 photos ("), last
    assert not list((tmp_path / "mirror").rglob("*.jpg"))


async def test_wrong_credentials_exit_3(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path, procore={"client_secret": "not-the-secret"})
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.AUTH
    assert run.err.startswith("syncer: Procore refused the client credentials: HTTP 401")
    assert "not-the-secret" not in run.out + run.err
    assert_no_traceback(run)


async def test_bad_config_exits_2_naming_the_key(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path, sync={"concurrency": "lots"})
    run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.USAGE
    assert run.err.startswith("syncer: sync.concurrency:")
    assert_no_traceback(run)


async def test_missing_config_exits_2(tmp_path: Path) -> None:
    run = await syncer("sync", env={"SYNCER_CONFIG": "", "XDG_CONFIG_HOME": "", "HOME": str(tmp_path)})
    assert run.code == ExitCode.USAGE
    assert "give --config PATH, set SYNCER_CONFIG, or create" in run.err


async def test_usage_error_exits_2() -> None:
    run = await syncer("sync", "--no-such-flag")
    assert run.code == ExitCode.USAGE


async def test_unreachable_procore_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config: dict[str, Any] = {
        "procore": {
            "api_base": "http://127.0.0.1:9",
            "login_base": "http://127.0.0.1:9",
            "company_id": 1,
            "client_id": "a",
            "client_secret": "b",
            "retry_attempts": 4,
        },
        "mirror": {"root": "m"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    run = await syncer("sync", "--config", str(path))
    assert run.code == ExitCode.INCOMPLETE
    *retries, last = run.err.strip().splitlines()
    refused = "token request: cannot reach 127.0.0.1:9: connection refused"
    check = "; check procore.login_base, and that this machine may connect there"
    assert last == f"syncer: {refused}{check} (gave up after 4 attempts)"
    (retry,) = retries  # said when it happens, not only at the end; the retries after it are counted
    assert f" WARNING {refused}{check}; retry 2/4 in " in retry
    assert_no_traceback(run)


def procore_at(tmp_path: Path, base: str) -> Path:
    """A config whose Procore is `base`, with every retry the default allows."""
    config = {
        "procore": {
            "api_base": base,
            "login_base": base,
            "company_id": 1,
            "client_id": "a",
            "client_secret": "b",
        },
        "mirror": {"root": "m"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_an_unknown_host_fails_at_once_in_one_line(tmp_path: Path) -> None:
    run = await syncer("sync", "--config", str(procore_at(tmp_path, "http://no-such-host.invalid")))
    assert run.code == ExitCode.INCOMPLETE
    (line,) = run.err.strip().splitlines()  # no retry: a name that does not exist stays so
    assert line.startswith("syncer: token request: the host no-such-host.invalid is unknown ("), line
    assert line.endswith("); check procore.api_base and procore.login_base"), line


async def test_tls_that_fails_ends_the_run_at_once_in_one_line(sim: Simulator, tmp_path: Path) -> None:
    plain = sim.procore_settings()["api_base"]  # an HTTP server, asked to speak TLS
    run = await syncer("sync", "--config", str(procore_at(tmp_path, plain.replace("http:", "https:"))))
    assert run.code == ExitCode.INCOMPLETE
    (line,) = run.err.strip().splitlines()
    assert line.startswith("syncer: token request: TLS with 127.0.0.1 failed ("), line


async def test_a_project_the_account_cannot_see_is_one_line_and_exit_2(
    sim: Simulator, tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path)
    run = await syncer("sync", "--config", str(config), "--project", "999", "--project", "999")
    assert run.code == ExitCode.USAGE
    company = sim.procore_settings()["company_id"]
    assert run.err.strip() == (
        f"syncer: project 999 of company {company} is not visible to this service account: check the ids "
        "(--project, sync.projects) and the account's access in each project's Directory"
    )
    assert run.out == ""


async def test_a_company_the_account_cannot_see_is_one_line_and_exit_2(
    sim: Simulator, tmp_path: Path
) -> None:
    company = sim.procore_settings()["company_id"] + 1
    run = await syncer("sync", "--config", str(write_config(sim, tmp_path, procore={"company_id": company})))
    assert run.code == ExitCode.USAGE
    (line,) = run.err.strip().splitlines()
    assert line.startswith(f"syncer: Procore does not let this service account see company {company} ("), line
    assert line.endswith("check procore.company_id, and that the account's app is installed in that company")


async def test_postgresql_without_its_extra_is_one_line_naming_the_extra(
    sim: Simulator, tmp_path: Path
) -> None:
    missing = tmp_path / "without-asyncpg" / "asyncpg"  # shadows the installed driver: as if absent
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'asyncpg'\", name='asyncpg')\n"
    )
    config = write_config(sim, tmp_path, database={"url": "postgresql://syncer@127.0.0.1/photos"})
    for command in ("sync", "status"):
        run = await syncer(command, "--config", str(config), env={"PYTHONPATH": str(missing.parent)})
        assert run.code == ExitCode.USAGE
        assert run.err.strip() == (
            "syncer: database.url is a PostgreSQL database, which needs the [postgres] extra (asyncpg, not "
            "installed): install syncer with `pip install '.[postgres]'`, or `pip install asyncpg` into its "
            "environment"
        )


async def test_an_unreachable_database_is_one_line_and_exit_1(sim: Simulator, tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"postgresql://syncer:db-pass-9@127.0.0.1:{port}/photos"
    config = write_config(sim, tmp_path, database={"url": url})
    for command in ("sync", "status"):
        run = await syncer(command, "--config", str(config))
        assert run.code == ExitCode.INCOMPLETE
        assert run.err.strip() == (
            f"syncer: database postgresql+asyncpg://syncer:***@127.0.0.1:{port}/photos: "
            f"ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', {port})"
        )


async def test_second_run_on_a_locked_mirror_exits_4(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path)
    busy = next(iter(sim.company.projects))
    with Locks(tmp_path / "mirror").projects([busy]):
        run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.LOCKED
    assert f"another syncer is already working on project {busy}" in run.err


async def test_a_locked_run_says_who_holds_the_lock_and_that_waiting_is_harmless(
    sim: Simulator, tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path)
    busy = next(iter(sim.company.projects))
    with Locks(tmp_path / "mirror").projects([busy]):
        run = await syncer("sync", "--config", str(config))
    assert run.code == ExitCode.LOCKED
    held = re.search(r"held by pid (\d+) on (\S+) since (\S+ \S+) (UTC|[+-]\d\d:\d\d)\. ", run.err)
    assert held is not None, run.err
    assert (int(held[1]), held[2]) == (os.getpid(), socket.gethostname())
    since = datetime.fromisoformat(f"{held[3]}{'+00:00' if held[4] == 'UTC' else held[4]}")
    assert abs(since - datetime.now(UTC)) < timedelta(minutes=5)
    assert "waiting is harmless" in run.err


async def test_db_upgrade_creates_the_schema(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path)
    run = await syncer("db", "upgrade", "--config", str(config))
    assert run.code == 0, run.err
    assert (tmp_path / "state" / "syncer.db").exists()


async def test_json_logs_are_one_object_per_line(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(url_ttl=0, photos=3, projects=1)  # failures produce warnings
    config = write_config(sim, tmp_path)
    run = await syncer("sync", "--config", str(config), "--log-format", "json")
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert lines
    assert all(json.loads(line)["level"] for line in lines)


async def test_log_lines_begin_with_the_time_of_day_and_its_zone(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(url_ttl=0, photos=3, projects=1)  # failures produce warnings
    config = write_config(sim, tmp_path)
    run = await syncer("sync", "--config", str(config), env={"TZ": "XYZ-2"})  # two hours east of UTC
    lines = run.err.splitlines()
    assert lines and all(re.match(r"\d\d:\d\d:\d\d \+02:00 [A-Z]+ ", line) for line in lines), lines[:3]


async def test_simulate_serves_a_company_until_stopped(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncer",
        "simulate",
        "--port",
        "0",
        "--photos",
        "30",
        "--seed",
        "4",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        banner = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
        api_base = banner.split("API ")[1].split(",")[0]
        section = yaml.safe_load(
            (await asyncio.wait_for(proc.stdout.readuntil(b"Ctrl-C"), 30))
            .decode()
            .split("points at it:\n")[1]
            .removesuffix("Ctrl-C")
        )
        assert section["procore"]["api_base"] == api_base
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({**section, "mirror": {"root": "m"}, "sync": {"lag": 0}}))
        run = await syncer("sync", "--config", str(config))
        assert run.code == ExitCode.OK, run.err
        assert "30 photos downloaded" in run.out
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0


async def test_the_simulator_counts_one_project_and_one_photo_in_the_singular() -> None:
    proc = await spawn("simulate", "--port", "0", "--photos", "1", "--projects", "1")
    assert proc.stdout is not None
    try:
        await asyncio.wait_for(proc.stdout.readline(), timeout=30)  # where it serves
        company = (await asyncio.wait_for(proc.stdout.readline(), timeout=30)).decode()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)
    assert company == "1 project, 1 photo (seed 1).\n"


async def test_status_lists_failed_photos_with_their_error_and_next_try(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(url_ttl=0, photos=3, projects=1)
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.INCOMPLETE
    document = json.loads((await syncer("status", "--config", str(config), "--json")).out)
    (project,) = document["projects"]
    assert project["failed"] == 3 and project["last_outcome"] == "incomplete"
    assert all(
        f["attempts"] == 1 and "HTTP 401" in f["error"] and f["next_retry_at"] for f in project["failures"]
    )
    table = (await syncer("status", "--config", str(config))).out
    assert table.count("failed: ") == 3


def _parsers(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                yield from _parsers(child, f"{name} {sub}")


def test_every_command_has_a_description_and_every_option_a_help_text() -> None:
    undocumented = [
        f"{name} {action.option_strings or action.dest}"
        for name, parser in _parsers(build_parser(), "syncer")
        for action in parser._actions
        if action.help is None and not isinstance(action, argparse._SubParsersAction)
    ]
    assert undocumented == []
    assert [name for name, parser in _parsers(build_parser(), "syncer") if not parser.description] == []


async def test_the_demo_ends_with_a_status_command_that_works_from_a_fresh_shell(tmp_path: Path) -> None:
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncer",
        "demo",
        "--dir",
        "demo",
        "--photos",
        "20",
        "--progress",
        "off",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(demo.communicate(), timeout=120)
    assert demo.returncode == ExitCode.OK, err.decode()
    hint = out.decode().splitlines()[-1]
    assert hint.startswith("See what is mirrored: "), hint
    command = hint.removeprefix("See what is mirrored: ")
    fresh = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no virtual environment on the path
    shell = await asyncio.create_subprocess_shell(
        command, cwd=tmp_path, env=fresh, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(shell.communicate(), timeout=60)
    assert shell.returncode == 0, (command, err.decode())
    assert "mirrored" in out.decode()


async def test_the_demo_builds_the_gallery_and_prints_where_to_open_it(tmp_path: Path) -> None:
    run = await syncer("demo", "--dir", str(tmp_path / "demo"), "--photos", "20", "--progress", "off")
    assert run.code == ExitCode.OK, run.err
    index = tmp_path / "demo" / "index.html"
    (gallery,) = [line for line in run.out.splitlines() if line.startswith("gallery: ")]
    assert gallery.endswith(f"; open {index.as_uri()}"), gallery
    assert index.is_file() and (tmp_path / "demo" / "index.csv").is_file()
    assert len(list((tmp_path / "demo" / ".gallery" / "thumbs").rglob("*.jpg"))) == 20
