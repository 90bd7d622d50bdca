"""`syncer export --csv`: an index of the archive a spreadsheet program opens as it is."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Any

import yaml

from syncer.errors import ExitCode
from syncer.export import COLUMNS, text_cell
from tests.conftest import write_config
from tests.test_cli import syncer


async def synced(make_sim: Any, tmp_path: Path, **sim: Any) -> tuple[Any, str]:
    simulator = await make_sim(**{"photos": 12, "projects": 2, **sim})
    config = str(write_config(simulator, tmp_path))
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    return simulator, config


def read_csv(raw: bytes) -> list[dict[str, str]]:
    assert raw.startswith(b"\xef\xbb\xbf"), "a byte-order mark, so spreadsheet programs read UTF-8"
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))


async def test_the_index_lists_every_mirrored_photo_with_what_a_person_searches_by(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, config = await synced(make_sim, tmp_path)
    target = tmp_path / "index.csv"
    run = await syncer("export", "--config", config, "--csv", str(target))
    assert run.code == ExitCode.OK, run.err
    assert run.out.strip() == f"12 photos listed in {target}"
    raw = target.read_bytes()
    assert raw.decode("utf-8-sig").splitlines()[0] == ",".join(COLUMNS)
    rows = read_csv(raw)
    assert sorted(int(r["procore_id"]) for r in rows) == sorted(sim.company.photos)
    for r in rows:
        photo = sim.company.photos[int(r["procore_id"])]
        mirrored = tmp_path / "mirror" / r["path"]
        assert r["sha256"] == hashlib.sha256(mirrored.read_bytes()).hexdigest()
        assert r["project"] == sim.company.projects[photo.project_id].name
        assert r["file_name"] == photo.filename and r["description"] == (photo.description or "")
        assert r["trades"] == "; ".join(t["name"] for t in photo.trades)
        assert r["location"] == (photo.location["node_name"] if photo.location else "")
        assert r["procore_link"] == f"https://app.procore.com/{photo.project_id}/project/photos"
        assert r["taken"].endswith("Z") or r["taken"] == ""


async def test_a_cell_that_would_run_as_a_formula_is_written_as_text(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=3, projects=1)
    planted = min(sim.company.photos)
    sim.edit_photo(
        planted, description='=HYPERLINK("http://attacker.example","open")', filename="@SUM(A1).jpg"
    )
    config = str(write_config(sim, tmp_path))
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    run = await syncer("export", "--config", config, "--csv", "-")
    (row,) = [r for r in read_csv(run.out.encode()) if r["procore_id"] == str(planted)]
    assert row["description"] == '\'=HYPERLINK("http://attacker.example","open")'
    assert row["file_name"] == "'@SUM(A1).jpg"


async def test_export_of_one_project_needs_no_procore_credentials(make_sim: Any, tmp_path: Path) -> None:
    sim, config = await synced(make_sim, tmp_path)
    document = yaml.safe_load(Path(config).read_text())
    document["procore"] |= {
        "client_id": "${SYNCER_TEST_UNSET_ID}",
        "client_secret": "${SYNCER_TEST_UNSET_SECRET}",
    }
    Path(config).write_text(yaml.safe_dump(document))
    one = min(sim.company.projects)
    run = await syncer("export", "--config", config, "--csv", "-", "--project", str(one))
    assert run.code == ExitCode.OK, run.err
    rows = read_csv(run.out.encode())
    assert rows and {r["project_id"] for r in rows} == {str(one)}


async def test_a_target_it_cannot_write_is_one_line_and_exit_2(make_sim: Any, tmp_path: Path) -> None:
    _, config = await synced(make_sim, tmp_path, photos=2, projects=1)
    run = await syncer("export", "--config", config, "--csv", str(tmp_path / "no-such-folder" / "x.csv"))
    assert run.code == ExitCode.USAGE
    assert run.err.startswith(
        f"syncer: --csv {tmp_path / 'no-such-folder' / 'x.csv'}: No such file or directory: "
    )
    assert not list(tmp_path.rglob("*.tmp"))


async def test_standard_output_gets_the_same_bytes_whatever_the_terminal_encoding(
    make_sim: Any, tmp_path: Path
) -> None:
    sim, config = await synced(make_sim, tmp_path, photos=2, projects=1)
    planted = min(sim.company.photos)
    sim.edit_photo(planted, description="Fa\u00e7ade \u2013 level 3")
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    target = tmp_path / "index.csv"
    assert (await syncer("export", "--config", config, "--csv", str(target))).code == ExitCode.OK
    run = await syncer("export", "--config", config, "--csv", "-", env={"PYTHONIOENCODING": "latin-1"})
    assert run.code == ExitCode.OK, run.err
    assert run.out.encode() == target.read_bytes()


def test_a_formula_behind_blanks_or_control_characters_is_still_text() -> None:
    assert text_cell("\x00=cmd|' /C calc'!A0") == "'\x00=cmd|' /C calc'!A0"
    assert text_cell("  +1") == "'  +1"
    assert text_cell("\tplain") == "'\tplain"
    assert text_cell("level -1 corridor") == "level -1 corridor"
