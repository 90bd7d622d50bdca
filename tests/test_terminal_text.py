"""What reaches a terminal or a log is text: a name or an error page from Procore that holds
escape sequences, bells, carriage returns, C1 codes or bidirectional overrides is shown escaped, as
Python's repr shows it, and never clears the screen, sets the window title, writes over a line or
reorders one. JSON output keeps the exact value, escaped as JSON."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from syncer.errors import ExitCode
from syncer.log import terminal_json, terminal_text
from syncer.simulator import Simulator
from tests.conftest import write_config
from tests.test_cli import Run, procore_at, syncer
from tests.test_daemon import daemon, daemon_config, eventually, stop
from tests.test_procore_client import serving

PROJECT = "Proj\x1b]0;TITLE\x07\x1b[2J\x9b31m\rOVER\u202eevil\n\u2066x\u2069\x7f\u061c"
PROJECT_SHOWN = r"Proj\x1b]0;TITLE\x07\x1b[2J\x9b31m\rOVER\u202eevil\n\u2066x\u2069\x7f\u061c"
ALBUM = "Album\x1b[31m\u202d\u061c"
FILE = "IMG\x1b[8m\u200f\u061c.jpg"
ERROR = "down\x1b]0;PWNED\x07\x1b[2J\x9b2J\u202etxt.exe"
ERROR_SHOWN = r"down\x1b]0;PWNED\x07\x1b[2J\x9b2J\u202etxt.exe"

NOT_TEXT = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
"""What a terminal obeys or reorders rather than shows: C0 codes but the newline between lines,
DEL, C1 codes, and the bidirectional marks, embeddings, overrides and isolates."""


def assert_text_only(run: Run) -> None:
    for stream in (run.out, run.err):
        found = sorted(set(NOT_TEXT.findall(stream)))
        assert not found, f"raw {found!r} reached the terminal:\n{stream}"


async def hostile_mirror(make_sim: Any, tmp_path: Path) -> tuple[Simulator, Path]:
    """A company whose one project, its albums and a photo's file name hold control codes, and
    whose photo with that name answers an error page that holds them too (so it fails)."""
    sim: Simulator = await make_sim(photos=3, projects=1)
    (project,) = sim.company.projects.values()
    project.name = PROJECT
    for album in sim.company.albums.values():
        album.name = ALBUM
    broken = min(sim.expected_files())
    sim.company.photos[broken].filename = FILE
    sim.config.broken_files.add(broken)
    sim.config.broken_file_text = ERROR
    sim.changed()
    return sim, write_config(sim, tmp_path, procore={"retry_attempts": 1})


async def test_a_sync_shows_procore_names_and_error_pages_escaped_on_their_own_lines(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, config = await hostile_mirror(make_sim, tmp_path)
    run = await syncer("sync", "-v", "--config", str(config))
    assert run.code == ExitCode.INCOMPLETE, run.err
    assert_text_only(run)
    (project_id,) = sim.company.projects
    assert any(line.startswith(f"{PROJECT_SHOWN} ({project_id}): ") for line in run.out.splitlines()), run.out
    (failed,) = [line for line in run.out.splitlines() if line.lstrip().startswith("failed:")]
    assert failed.endswith(f": HTTP 500: {ERROR_SHOWN}") and r"\u061c" in failed, failed
    (warning,) = [line for line in run.err.splitlines() if " WARNING photo " in line]
    assert warning.endswith(f": HTTP 500: {ERROR_SHOWN}"), warning


async def test_status_shows_procore_names_escaped_and_keeps_its_columns(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, config = await hostile_mirror(make_sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.INCOMPLETE
    run = await syncer("status", "--config", str(config))
    assert run.code == ExitCode.OK, run.err
    assert_text_only(run)
    (project_id,) = sim.company.projects
    _, _, header, row, failed = run.out.splitlines()
    assert row.startswith(f"{PROJECT_SHOWN} ({project_id}) ")
    assert row[header.index("photos") :].startswith("3 "), (header, row)
    assert failed.startswith(f"failed: {PROJECT_SHOWN}: photo "), failed
    assert failed.endswith(f": HTTP 500: {ERROR_SHOWN}"), failed


async def test_json_output_holds_the_exact_names_with_no_raw_control_character(
    make_sim: Any, tmp_path: Path
) -> None:
    _, config = await hostile_mirror(make_sim, tmp_path)
    run = await syncer("sync", "-v", "--config", str(config), "--log-format", "json")
    assert run.code == ExitCode.INCOMPLETE, run.err
    assert_text_only(run)
    (project,) = json.loads(run.out)["projects"]
    assert project["name"] == PROJECT
    assert [f["error"] for f in project["failures"]] == [f"HTTP 500: {ERROR}"]
    logged = [json.loads(line)["msg"] for line in run.err.splitlines()]
    assert any(msg.endswith(f": HTTP 500: {ERROR}") for msg in logged), logged
    status = await syncer("status", "--config", str(config), "--json")
    assert_text_only(status)
    assert json.loads(status.out)["projects"][0]["name"] == PROJECT


async def test_verify_shows_a_stray_file_name_escaped_on_one_line(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    (tmp_path / "mirror" / "stray\x1b]0;T\x07\n\u202etxt.exe").write_bytes(b"x")
    run = await syncer("verify", "--config", str(config))
    assert run.code == ExitCode.INCOMPLETE, run.err
    assert_text_only(run)
    assert r"unexpected: stray\x1b]0;T\x07\n\u202etxt.exe" in run.out.splitlines(), run.out


async def test_verify_shows_an_undecodable_file_name_escaped(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    (tmp_path / "mirror" / os.fsdecode(b"stray\xff.jpg")).write_bytes(b"x")
    run = await syncer("verify", "--config", str(config))
    assert run.code == ExitCode.INCOMPLETE, run.err
    assert r"unexpected: stray\udcff.jpg" in run.out.splitlines(), run.out


async def test_an_error_line_shows_procore_text_escaped_on_one_line(tmp_path: Path) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401, text=ERROR)

    async with serving(refuse) as base:
        run = await syncer("sync", "--config", str(procore_at(tmp_path, base)))
    assert run.code == ExitCode.AUTH, run.err
    assert_text_only(run)
    (line,) = run.err.splitlines()
    assert line.endswith(f"HTTP 401: {ERROR_SHOWN}"), line


async def test_the_daemon_logs_a_procore_name_escaped_on_one_line(make_sim: Any, tmp_path: Path) -> None:
    sim: Simulator = await make_sim(photos=3, projects=1)
    (project,) = sim.company.projects.values()
    project.name = PROJECT
    sim.changed()
    logged = f" INFO incremental sync of {PROJECT_SHOWN}: ok; "
    async with daemon(daemon_config(sim, tmp_path), tmp_path) as running:
        await eventually(lambda: logged in running.log_text(), what="a run logged")
        await stop(running)
    assert_text_only(Run(0, "", running.log.read_bytes().decode()))  # read_text would turn \r into \n


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[2J", r"\x1b[2J"),
        ("\x07", r"\x07"),
        ("\r", r"\r"),
        ("\t", r"\t"),
        ("\x00", r"\x00"),
        ("\x7f", r"\x7f"),
        ("\x85", r"\x85"),
        ("\x9b", r"\x9b"),
        ("\u202e", r"\u202e"),
        ("\u2066", r"\u2066"),
        ("\u200f", r"\u200f"),
        ("\u061c", r"\u061c"),
        ("\u2028", r"\u2028"),
        ("\udc80", r"\udc80"),  # an undecodable byte of a file name on disk
    ],
)
def test_a_control_character_is_shown_as_python_repr_shows_it(raw: str, shown: str) -> None:
    assert terminal_text(f"a{raw}b") == f"a{shown}b"


@pytest.mark.parametrize(
    "text",
    [
        "Harbor View Apartments – Phase 2",  # noqa: RUF001 - real names have dashes
        "Tomás Herrera, Hannah Müller, 東京タワー",
        "woman construction worker: 👷\u200d♀️",
        r"C:\photos\x1b is text already",
    ],
)
def test_text_of_any_script_is_shown_as_it_is(text: str) -> None:
    assert terminal_text(text) == text


def test_a_newline_is_escaped_in_one_line_and_kept_between_lines() -> None:
    assert terminal_text("one\ntwo") == r"one\ntwo"
    assert terminal_text("one\ntwo\r", lines=True) == "one\ntwo\\r"


def test_json_is_escaped_as_json_and_keeps_the_exact_value() -> None:
    text = json.dumps({"name": PROJECT + "\x85\u2028\udc80"}, ensure_ascii=False)
    escaped = terminal_json(text)
    assert not NOT_TEXT.search(escaped)
    assert json.loads(escaped) == json.loads(text)
