"""`syncer verify` finds what does not match; `--fix` and one sync make it match again."""

from __future__ import annotations

import json
from typing import Any

from syncer.config import Settings
from syncer.errors import ExitCode
from syncer.simulator import Simulator
from syncer.verify import verify
from tests.conftest import assert_byte_exact, db_rows, sync


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
    from tests.conftest import write_config
    from tests.test_cli import syncer

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
