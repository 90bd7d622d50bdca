"""`syncer verify` finds what does not match; `--fix` and one sync make it match again."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from syncer.config import Settings
from syncer.errors import ExitCode
from syncer.simulator import Simulator
from syncer.verify import verify
from tests.conftest import assert_byte_exact, db_rows, sync, write_config
from tests.test_cli import Run, assert_no_traceback, syncer
from tests.test_config import without_credentials


def a_photo_path(settings: Settings, n: int = 0) -> Any:
    (path,) = db_rows(settings, f"SELECT local_path FROM photos ORDER BY id LIMIT 1 OFFSET {n}")[0]
    return settings.mirror.root / path


async def test_a_freshly_synced_mirror_matches(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim)
    await sync(settings)
    report = await verify(settings)
    assert report.matches
    assert report.checked == len(sim.company.photos)


async def test_a_changed_file_is_found_and_fixed_by_the_next_sync(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim)
    await sync(settings)
    path = a_photo_path(settings)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # bit rot: same size, other content
    path.write_bytes(bytes(data))
    report = await verify(settings)
    assert not report.matches and len(report.changed) == 1 and "SHA-256" in report.changed[0]
    report = await verify(settings, fix=True)
    assert report.queued == 1
    await sync(settings)
    assert_byte_exact(sim, settings)
    assert (await verify(settings)).matches


async def test_a_missing_file_is_found_and_fixed_by_the_next_sync(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim)
    await sync(settings)
    a_photo_path(settings, 3).unlink()
    report = await verify(settings, fix=True)
    assert len(report.missing) == 1 and report.queued == 1
    summary = await sync(settings)
    assert sum(r.downloaded for r in summary.results) == 1
    assert (await verify(settings)).matches


async def test_a_truncated_file_is_reported_with_its_size(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim)
    await sync(settings)
    path = a_photo_path(settings, 5)
    path.write_bytes(path.read_bytes()[:100])
    report = await verify(settings)
    assert report.changed and "size 100, expected" in report.changed[0]


async def test_a_broken_sidecar_is_rewritten_from_the_database(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim)
    await sync(settings)
    sidecar = a_photo_path(settings, 2).with_name(a_photo_path(settings, 2).name + ".json")
    original = sidecar.read_bytes()
    sidecar.write_text("{ torn")
    report = await verify(settings, fix=True)
    assert report.bad_sidecars and report.sidecars_fixed == 1
    assert sidecar.read_bytes() == original
    assert (await verify(settings)).matches


async def test_a_sidecar_that_no_longer_holds_the_record_is_bad(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim)
    await sync(settings)
    sidecar = a_photo_path(settings, 3).with_name(a_photo_path(settings, 3).name + ".json")
    original = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({"schema": 1, "procore": {"id": original["procore"]["id"]}}))
    report = await verify(settings)
    assert not report.matches and report.bad_sidecars == [str(sidecar.relative_to(settings.mirror.root))]
    assert (await verify(settings, fix=True)).sidecars_fixed == 1
    assert json.loads(sidecar.read_text()) == original


async def test_unexpected_files_are_reported_and_left_alone(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim)
    await sync(settings)
    stray = settings.mirror.root / "notes.txt"
    stray.write_text("mine")
    report = await verify(settings, fix=True)
    assert report.unexpected == ["notes.txt"] and not report.matches
    assert stray.read_text() == "mine"


async def test_verify_cli_exit_codes(sim: Simulator, tmp_path: Any) -> None:
    config = write_config(sim, tmp_path)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    assert (await syncer("verify", "--config", str(config))).code == ExitCode.OK
    (tmp_path / "mirror" / "stray.bin").write_bytes(b"x")
    run = await syncer("verify", "--config", str(config))
    assert run.code == ExitCode.INCOMPLETE
    assert "unexpected: stray.bin" in run.out


async def test_retry_failed_retries_now_instead_of_waiting(make_sim: Any, settings_for: Any) -> None:
    sim = await make_sim(url_ttl=0, photos=6, projects=1)
    settings = settings_for(sim)
    assert (await sync(settings)).exit_code == ExitCode.INCOMPLETE
    sim.config.url_ttl = 600
    waiting = await sync(settings)
    assert sum(r.downloaded for r in waiting.results) == 0, "failed photos wait for their retry time"
    forced = await sync(settings, retry_failed=True)
    assert forced.exit_code == ExitCode.OK
    assert_byte_exact(sim, settings)


async def synced_mirror(make_sim: Any, tmp_path: Path) -> tuple[str, Path]:
    """The config and root of a small mirror a real `syncer sync` has just made."""
    config = str(write_config(await make_sim(photos=4, projects=1), tmp_path))
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    return config, tmp_path / "mirror"


def photos_in(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.jpg") if p.relative_to(root).parts[0] not in (".syncer", ".trash"))


def sidecar_of(photo: Path) -> Path:
    return photo.with_name(photo.name + ".json")


def rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


async def verify_cli(config: str, *options: str) -> Run:
    run = await syncer("verify", "--config", config, *options)
    assert_no_traceback(run)
    return run


async def test_verify_needs_no_procore_credentials(
    make_sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = await synced_mirror(make_sim, tmp_path)
    without_credentials(Path(config), monkeypatch)
    run = await verify_cli(config)
    assert run.code == ExitCode.OK, run.err
    assert run.out.startswith("the mirror matches the database: 4 files")


async def test_a_deleted_sidecar_is_reported_missing_not_bad(make_sim: Any, tmp_path: Path) -> None:
    config, root = await synced_mirror(make_sim, tmp_path)
    gone, torn = (sidecar_of(p) for p in photos_in(root)[:2])
    gone.unlink()
    torn.write_text("{ torn")
    run = await verify_cli(config)
    assert run.code == ExitCode.INCOMPLETE
    assert f"missing sidecar: {rel(gone, root)}" in run.out.splitlines()
    assert f"bad sidecar: {rel(torn, root)}" in run.out.splitlines()
    assert "1 missing sidecar, 1 bad sidecar, 0 unexpected" in run.out


async def test_fix_says_what_it_fixed_and_what_the_next_sync_still_has_to_do(
    make_sim: Any, tmp_path: Path
) -> None:
    config, root = await synced_mirror(make_sim, tmp_path)
    photo, other = photos_in(root)[:2]
    photo.unlink()
    sidecar_of(other).unlink()
    run = await verify_cli(config, "--fix")
    assert run.code == ExitCode.INCOMPLETE
    assert f"missing sidecar (written): {rel(sidecar_of(other), root)}" in run.out.splitlines()
    assert run.out.splitlines()[-2:] == [
        "fixed: 1 sidecar written from the database",
        "1 photo queued: the next `syncer sync` downloads it again",
    ]
    assert "--fix" not in run.out, "what --fix did is not offered again"


async def test_fix_that_mends_everything_exits_0(make_sim: Any, tmp_path: Path) -> None:
    config, root = await synced_mirror(make_sim, tmp_path)
    sidecar = sidecar_of(photos_in(root)[0])
    original = sidecar.read_bytes()
    sidecar.write_text("{ torn")
    run = await verify_cli(config, "--fix")
    assert run.code == ExitCode.OK, run.out
    assert run.out.splitlines()[-1] == "the mirror matches the database now"
    assert sidecar.read_bytes() == original
    assert (await verify_cli(config)).code == ExitCode.OK


async def test_fix_is_offered_only_for_what_it_fixes(make_sim: Any, tmp_path: Path) -> None:
    config, root = await synced_mirror(make_sim, tmp_path)
    (root / "notes.txt").write_text("mine")
    run = await verify_cli(config)
    assert "--fix" not in run.out
    photos_in(root)[0].unlink()
    sidecar_of(photos_in(root)[0]).unlink()
    run = await verify_cli(config)
    assert (
        "run again with --fix to queue 1 missing or changed photo for the next `syncer sync` "
        "and write 1 sidecar from the database"
    ) in run.out.splitlines()


async def test_an_unexpected_file_is_explained_and_moving_it_aside_is_offered(
    make_sim: Any, tmp_path: Path
) -> None:
    config, root = await synced_mirror(make_sim, tmp_path)
    (root / "notes.txt").write_text("mine")
    run = await verify_cli(config)
    assert run.code == ExitCode.INCOMPLETE
    assert run.out.splitlines()[-1] == (
        "1 unexpected file: the database knows nothing of it; move it out of the mirror, or run again "
        f"with --move-strays to move it to {root}/.trash/strays/<date>/ under the same paths"
    )
    assert (root / "notes.txt").read_text() == "mine", (
        "an unexpected file is only listed without --move-strays"
    )


async def test_move_strays_moves_unexpected_files_to_the_trash_under_their_paths_and_exits_0(
    make_sim: Any, tmp_path: Path
) -> None:
    config, root = await synced_mirror(make_sim, tmp_path)
    (root / "notes.txt").write_text("mine")
    (root / "old" / "site").mkdir(parents=True)
    (root / "old" / "site" / "plan.pdf").write_bytes(b"%PDF")
    run = await verify_cli(config, "--move-strays")
    assert run.code == ExitCode.OK, run.out
    (folder,) = (root / ".trash" / "strays").iterdir()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", folder.name)
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "old" / "site" / "plan.pdf").read_bytes() == b"%PDF"
    assert not (root / "notes.txt").exists() and not (root / "old" / "site" / "plan.pdf").exists()
    assert "unexpected (moved aside): old/site/plan.pdf" in run.out.splitlines()
    assert run.out.splitlines()[-2:] == [
        f"moved: 2 unexpected files to {folder}/ under the same paths",
        "the mirror matches the database now",
    ]
    assert (await verify_cli(config)).code == ExitCode.OK, "moved strays are not counted again"


async def test_move_strays_never_replaces_a_stray_moved_before(make_sim: Any, tmp_path: Path) -> None:
    config, root = await synced_mirror(make_sim, tmp_path)
    (root / "notes.txt").write_text("first")
    assert (await verify_cli(config, "--move-strays")).code == ExitCode.OK
    (root / "notes.txt").write_text("second")
    assert (await verify_cli(config, "--move-strays")).code == ExitCode.OK
    kept = sorted((p.parent.name, p.read_text()) for p in (root / ".trash" / "strays").glob("*/notes.txt"))
    assert [text for _, text in kept] == ["first", "second"]
    assert kept[1][0] == kept[0][0] + "-2"


async def test_move_strays_does_not_follow_a_linked_trash_out_of_the_mirror(
    make_sim: Any, tmp_path: Path
) -> None:
    config, root = await synced_mirror(make_sim, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / ".trash").symlink_to(outside, target_is_directory=True)
    (root / "notes.txt").write_text("mine")
    run = await verify_cli(config, "--move-strays")
    assert run.code == ExitCode.INCOMPLETE
    assert list(outside.iterdir()) == [], "nothing was written outside the mirror"
    assert (root / "notes.txt").read_text() == "mine"
    assert re.search(
        r"^unexpected \(not moved: .*leaves the mirror root through a link\): notes.txt$", run.out, re.M
    )
    assert run.out.splitlines()[-1] == (
        "1 unexpected file could not be moved (see why above): move it out of the mirror yourself"
    )


async def test_move_strays_moves_a_planted_link_itself_not_what_it_points_to(
    make_sim: Any, tmp_path: Path
) -> None:
    config, root = await synced_mirror(make_sim, tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("not the mirror's")
    (root / "link.txt").symlink_to(outside)
    run = await verify_cli(config, "--move-strays")
    assert run.code == ExitCode.OK, run.out
    (moved,) = (root / ".trash" / "strays").glob("*/link.txt")
    assert moved.is_symlink() and moved.readlink() == outside
    assert outside.read_text() == "not the mirror's"


async def test_the_state_folder_and_the_trash_are_not_strays(make_sim: Any, tmp_path: Path) -> None:
    config, root = await synced_mirror(make_sim, tmp_path)
    trashed = root / ".trash" / "2026-01-02" / "Old Project" / "1_a.jpg"
    trashed.parent.mkdir(parents=True)
    trashed.write_bytes(b"a deleted photo")
    (root / ".syncer" / "notes").write_text("state")
    run = await verify_cli(config, "--move-strays")
    assert run.code == ExitCode.OK, run.out
    assert run.out.splitlines() == [
        line for line in run.out.splitlines() if line.startswith("the mirror matches")
    ]
    assert trashed.read_bytes() == b"a deleted photo" and (root / ".syncer" / "notes").exists()


async def test_move_strays_with_project_is_a_usage_error(make_sim: Any, tmp_path: Path) -> None:
    config, root = await synced_mirror(make_sim, tmp_path)
    (root / "notes.txt").write_text("mine")
    run = await verify_cli(config, "--move-strays", "--project", "1")
    assert run.code == ExitCode.USAGE
    assert (
        run.err == "syncer: --move-strays looks at the whole mirror; it cannot be combined with --project\n"
    )
    assert (root / "notes.txt").exists()


async def test_move_strays_never_moves_the_syncers_own_config_or_database(
    make_sim: Any, tmp_path: Path
) -> None:
    config = str(write_config(await make_sim(photos=4, projects=1), tmp_path, mirror={"root": "."}))
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    run = await verify_cli(config, "--move-strays")
    assert run.code == ExitCode.OK, run.out
    assert "unexpected" not in run.out.replace(" 0 unexpected", ""), run.out
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "state" / "syncer.db").is_file()
    assert (await syncer("status", "--config", config)).code == ExitCode.OK
