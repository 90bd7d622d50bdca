"""Several workers on one PostgreSQL database and one mirror: project leases, download claims,
takeover after a worker dies, and real `syncer` processes splitting a sync between them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, text

from syncer.config import load_settings
from syncer.coordination.membership import LeaseLost, Membership
from syncer.coordination.team import Team
from syncer.errors import ExitCode
from syncer.mirror.files import MirrorFS
from syncer.procore.models import Photo
from syncer.report import LogProgress
from syncer.runner import open_syncer
from syncer.simulator import Simulator
from syncer.store import Downloaded, Failed, Store, photo_row
from syncer.store.models import PhotoRow
from syncer.store.shared import SharedState
from syncer.transfer import WRITING_ELSEWHERE
from tests.conftest import (
    assert_byte_exact,
    async_url,
    listed_row,
    mirror_photos,
    project_store,
    sync,
    write_config,
)
from tests.test_cli import spawn, syncer
from tests.test_crash import BIG
from tests.test_daemon import daemon, daemon_config, eventually, stop

PROJECT = 7


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Store]:
    async with project_store(pg_url, PROJECT, "Tower") as opened:
        yield opened


async def add_due_photos(store: Store, count: int) -> list[int]:
    """`count` listed photos that the mirror does not have yet."""
    ids = list(range(1000, 1000 + count))
    await store.save_photos([listed_row(i, PROJECT) for i in ids])
    return ids


async def worker(store: Store, name: str, ttl: float = 30.0) -> SharedState:
    state = SharedState(store, worker_id=name, ttl=ttl)
    await state.join("test-host", os.getpid())
    return state


async def drain(state: SharedState, batch: int) -> list[int]:
    """Claim until nothing is left for this worker; the ids it got."""
    got: list[int] = []
    while claims := await state.claim(PROJECT, batch, datetime.now(UTC)):
        got += [c.id for c in claims]
        await asyncio.sleep(0)
    return got


# -- leases --------------------------------------------------------------------------------------


async def test_a_project_lease_is_held_by_one_worker_at_a_time(store: Store) -> None:
    a, b = await worker(store, "a"), await worker(store, "b")
    assert await a.try_lease(PROJECT)
    assert not await b.try_lease(PROJECT)
    assert await b.lease_holder(PROJECT) == "a"
    await a.release_lease(PROJECT)
    assert await b.try_lease(PROJECT)


async def test_a_dead_workers_lease_is_taken_over_once_its_heartbeat_expires(store: Store) -> None:
    dead, alive = await worker(store, "dead", ttl=1.0), await worker(store, "alive")
    assert await dead.try_lease(PROJECT)
    assert not await alive.try_lease(PROJECT)
    await asyncio.sleep(1.2)  # no heartbeat from "dead"
    assert await alive.lease_holder(PROJECT) is None
    assert await alive.try_lease(PROJECT)
    assert not await dead.heartbeat(activity="", downloaded=0, bytes_=0, failed=0), "a dead worker stays dead"


async def test_a_stopping_worker_frees_its_lease_and_claims_at_once(store: Store) -> None:
    await add_due_photos(store, 10)
    leaving, staying = await worker(store, "leaving"), await worker(store, "staying")
    assert await leaving.try_lease(PROJECT)
    assert len(await leaving.claim(PROJECT, 4, datetime.now(UTC))) == 4
    await leaving.leave(downloaded=0, bytes_=0, failed=0)
    assert await staying.try_lease(PROJECT)
    assert len(await drain(staying, 100)) == 10


# -- claims --------------------------------------------------------------------------------------


async def test_concurrent_claims_never_hand_one_photo_to_two_workers(store: Store) -> None:
    ids = await add_due_photos(store, 400)
    workers = [await worker(store, f"w{i}") for i in range(4)]
    shares = await asyncio.gather(*(drain(w, 7) for w in workers))
    claimed = [i for share in shares for i in share]
    assert sorted(claimed) == ids, "every due photo claimed exactly once"
    assert all(shares), "each worker got a share"


async def test_a_dead_workers_claims_return_to_the_pool(store: Store) -> None:
    ids = await add_due_photos(store, 20)
    dead, alive = await worker(store, "dead", ttl=1.0), await worker(store, "alive")
    held = [c.id for c in await dead.claim(PROJECT, 8, datetime.now(UTC))]
    assert await alive.held_due(PROJECT) == 8
    assert sorted(await drain(alive, 100)) == sorted(set(ids) - set(held))
    await asyncio.sleep(1.2)
    assert await alive.held_due(PROJECT) == 12, "only the live worker's own claims still hold"
    assert sorted(await drain(alive, 100)) == held


async def test_a_recorded_result_ends_the_claim(store: Store) -> None:
    first, second = await add_due_photos(store, 2)
    w = await worker(store, "w")
    await w.claim(PROJECT, 2, datetime.now(UTC))
    now = datetime.now(UTC)
    key = (await store.stored_photos([first]))[first].file_key
    await store.record(
        downloaded=[Downloaded(first, "Tower/a.jpg", key, 10, "0" * 64, None, now)],
        failed=[Failed(second, "HTTP 500", now + timedelta(hours=1))],
    )
    assert await w.held_due(PROJECT) == 0
    assert await w.unclaimed_due(PROJECT, now) == 0, "the failed photo waits for its retry time"
    assert [c.id for c in await w.claim(PROJECT, 5, now + timedelta(hours=2))] == [second]


async def test_a_claim_hands_over_the_listed_signed_url(store: Store) -> None:
    now = datetime.now(UTC)
    signed = "https://storage.procore.com/api/v5/files/us-east-1/pro-core.com/companies/1/01J5?sig=abc"
    photo = Photo.from_api({"id": 5, "url": signed, "size": 10, "filename": "5.jpg"})
    await store.save_photos(
        [photo_row(photo, project_id=PROJECT, rel_path="Tower/5.jpg", now=now, fetch_url=signed)]
    )
    (claim,) = await (await worker(store, "w")).claim(PROJECT, 1, now)
    assert claim.photo is not None and claim.photo.url == signed
    assert claim.photo.file_key == photo.file_key


async def test_a_worker_tries_each_photo_once_per_run(make_sim: Any, settings_for: Any, pg_url: str) -> None:
    sim = await make_sim(url_ttl=0, photos=10, projects=1)  # every download fails
    settings = settings_for(sim, database={"url": pg_url}, sync={"retry_backoff": "10ms"})
    summary = await asyncio.wait_for(sync(settings), timeout=60)  # due again at once, yet it ends
    assert summary.exit_code == ExitCode.INCOMPLETE
    (result,) = summary.results
    assert sorted(pid for pid, _, _ in result.failures) == sorted(sim.expected_files())


async def test_a_project_listed_past_this_runs_window_is_not_listed_again(
    make_sim: Any, settings_for: Any, pg_url: str
) -> None:
    sim = await make_sim()
    assert (await sync(settings_for(sim, database={"url": pg_url}))).exit_code == ExitCode.OK
    listed = sim.stats.requests["images"]
    # A run whose window ends ten minutes ago finds both projects listed to a later moment.
    later = settings_for(sim, database={"url": pg_url}, sync={"lag": "10m"})
    summary = await sync(later)
    assert summary.exit_code == ExitCode.OK
    assert sim.stats.requests["images"] == listed
    assert all(r.helped for r in summary.results)


async def test_a_stopped_sync_hands_back_the_claims_it_never_worked_on(
    make_sim: Any, settings_for: Any, pg_url: str
) -> None:
    sim = await make_sim(photos=40, projects=1, photo_size=200_000, bandwidth=400_000)
    settings = settings_for(sim, database={"url": pg_url}, sync={"concurrency": 2})
    async with open_syncer(settings, progress=LogProgress()) as running:  # a daemon's life, say
        assert isinstance(running.coordinator, Team)  # PostgreSQL: one of several workers
        member = running.coordinator.member
        (project,), _ = await running.projects()
        await running.store.save_projects(settings.procore.company_id, [project])
        # 40 files at 0.5 s each, two at a time: a stop after 2.5 s leaves most of them unclaimed.
        deadline = asyncio.get_running_loop().time() + 2.5
        async with member.project(project.id) as mine:
            assert mine
            # (full: the whole project in one listing, not the first slice of a backfill)
            result = await running.engine.sync_project(project, full=True, deadline=deadline)
        assert result.stopped and 0 < result.downloaded < 40
        assert await member.shared.held_due(project.id) == 0, "no photo waits for this live worker"


async def test_no_signed_url_stays_in_the_database_when_a_run_ends(
    make_sim: Any, settings_for: Any, pg_url: str
) -> None:
    sim = await make_sim(photos=40, projects=1, photo_size=200_000, bandwidth=400_000)
    slow = {"concurrency": 2}

    async def signed_rows() -> list[int]:
        store = await Store.open(async_url(pg_url))
        try:
            async with store.engine.connect() as conn:
                rows = await conn.execute(select(PhotoRow.id, PhotoRow.fetch_url, PhotoRow.raw_json))
                return [i for i, url, record in rows if url is not None or "sig=" in record]
        finally:
            await store.close()

    stopped = await sync(settings_for(sim, database={"url": pg_url}, sync={**slow, "max_duration": "1s"}))
    assert stopped.results[0].stopped
    assert await signed_rows() == []
    assert (await sync(settings_for(sim, database={"url": pg_url}, sync=slow))).exit_code == ExitCode.OK
    assert await signed_rows() == []


# -- a worker's own view of its lease ---------------------------------------------------------------


async def test_a_worker_declared_dead_by_the_others_stops(store: Store, tmp_path: Path) -> None:
    member = Membership(store, ttl=3.0, mirror_root=tmp_path)
    await member.join()
    try:
        member.check()
        async with store.engine.begin() as conn:  # as if its heartbeats had not arrived in time
            await conn.execute(
                text("UPDATE workers SET expires_at = expires_at - interval '1 hour' WHERE id = :id"),
                {"id": member.worker_id},
            )
        await asyncio.sleep(1.5)  # its next heartbeat finds it expired
        with pytest.raises(LeaseLost, match=r"database\.lease_ttl"):
            member.check()
    finally:
        await member.leave()


async def joined(store: Store, root: Path) -> Membership:
    member = Membership(store, ttl=30.0, mirror_root=root)
    await member.join()
    return member


async def test_a_worker_writing_to_another_mirror_folder_is_reported(
    store: Store, tmp_path: Path, log_lines: pytest.LogCaptureFixture
) -> None:
    first = await joined(store, tmp_path / "share")
    second = await joined(store, tmp_path / "local-disk")
    try:
        assert f"shares the database with worker {first.worker_id}" in log_lines.text
        assert "but not the mirror folder" in log_lines.text
    finally:
        await second.leave()
        await first.leave()


async def test_workers_on_one_mirror_folder_raise_no_alarm(
    store: Store, tmp_path: Path, log_lines: pytest.LogCaptureFixture
) -> None:
    members = [await joined(store, tmp_path / "share") for _ in range(2)]
    for member in members:
        await member.leave()
    assert "not the mirror folder" not in log_lines.text
    assert list((tmp_path / "share" / ".syncer" / "workers").iterdir()) == [], "markers go when workers stop"


# -- real worker processes -----------------------------------------------------------------------

SHARED = {"photos": 90, "projects": 2, "photo_size": 150_000, "bandwidth": 1_000_000}


def shared_config(sim: Simulator, folder: Path, pg_url: str, **sections: dict[str, Any]) -> Path:
    """Three workers' settings. The 5 s lease returns a killed worker's share within the test, yet
    leaves a busy two-core machine time for every heartbeat."""
    return write_config(
        sim,
        folder,
        database={"url": pg_url, "lease_ttl": 5},
        procore={"workers_share": 0.33},
        sync={"concurrency": 3, "per_page": 10},
        **sections,
    )


async def claimant(store: Store, photo_id: int) -> int | None:
    """The process id of the worker downloading the photo, if any."""
    query = "SELECT w.pid FROM photos p JOIN workers w ON w.id = p.claimed_by WHERE p.id = :photo"
    async with store.engine.connect() as conn:
        pid: int | None = (await conn.execute(text(query), {"photo": photo_id})).scalar()
        return pid


async def start_worker(config: Path, *extra: str) -> asyncio.subprocess.Process:
    return await spawn("sync", "-v", "--config", str(config), *extra)


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=40)
    except TimeoutError:
        proc.send_signal(signal.SIGTERM)
        out, err = await proc.communicate()
        raise AssertionError(out.decode() + err.decode()) from None
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def test_three_workers_split_a_sync_and_fetch_every_photo_once(
    make_sim: Any, tmp_path: Path, pg_url: str
) -> None:
    sim = await make_sim(**SHARED, spike_limit=150, spike_window=2.0)
    config = shared_config(sim, tmp_path, pg_url)
    procs = [await start_worker(config) for _ in range(3)]
    runs = [await finish(p) for p in procs]
    assert all(code == ExitCode.OK for code, _ in runs), runs
    assert_byte_exact(sim, load_settings(config))
    assert sorted(sim.stats.downloads) == sorted(sim.expected_files()), "every photo fetched"
    assert set(sim.stats.downloads.values()) == {1}, "no photo fetched twice"
    assert sim.stats.rate_limited == 0, "three workers with a third of the budget each stay within it"
    status = json.loads((await syncer("status", "--config", str(config), "--json")).out)
    workers = status["workers"]
    assert len(workers) == 3 and all(w["state"] == "stopped" for w in workers)
    assert sum(w["downloaded"] for w in workers) == 90
    assert sum(1 for w in workers if w["downloaded"]) >= 2, "the downloads were shared"


async def test_when_a_worker_is_killed_the_others_finish_its_share(
    make_sim: Any, tmp_path: Path, pg_url: str
) -> None:
    sim = await make_sim(**{**SHARED, "projects": 1, "bandwidth": 300_000})
    config = shared_config(sim, tmp_path, pg_url)
    # --full: the project in one listing, whose lister holds claims while it lists (a first
    # backfill lists it in turns, and its lease moves between them)
    procs = [await start_worker(config, "--full") for _ in range(3)]
    check = await Store.open(load_settings(config).database_url)
    try:
        while sum(sim.stats.downloads.values()) < 15:
            await asyncio.sleep(0.01)
        async with check.engine.connect() as conn:  # kill the worker listing the project
            pid, worker_id, claimed = (
                await conn.execute(
                    text(
                        "SELECT w.pid, w.id, (SELECT count(*) FROM photos p WHERE p.claimed_by = w.id) "
                        "FROM project_leases l JOIN workers w ON w.id = l.worker_id"
                    )
                )
            ).one()
        victim = next(p for p in procs if p.pid == pid)
        os.kill(victim.pid, signal.SIGKILL)
        assert await victim.wait() == -signal.SIGKILL
        async with check.engine.connect() as conn:
            held = set(
                (
                    await conn.execute(text("SELECT id FROM photos WHERE claimed_by = :w"), {"w": worker_id})
                ).scalars()
            )
        assert claimed > 0, "the killed worker held downloads"
    finally:
        await check.close()
    survivors = [await finish(p) for p in procs if p is not victim]
    assert all(code == ExitCode.OK for code, _ in survivors), survivors
    assert_byte_exact(sim, load_settings(config))
    fetched_twice = {pid for pid, n in sim.stats.downloads.items() if n > 1}
    assert fetched_twice <= held, "only the killed worker's unfinished downloads were fetched again"


async def test_status_names_each_worker_with_what_it_did(make_sim: Any, tmp_path: Path, pg_url: str) -> None:
    sim = await make_sim()
    config = shared_config(sim, tmp_path, pg_url)
    assert (await syncer("sync", "--config", str(config))).code == ExitCode.OK
    table = (await syncer("status", "--config", str(config))).out
    assert "workers: 0 live, 1 stopped or dead in the last week" in table
    assert "(stopped, pid " in table and "60 downloaded (" in table


async def test_two_daemons_share_one_database_and_mirror(make_sim: Any, tmp_path: Path, pg_url: str) -> None:
    sim = await make_sim(**SHARED)
    mirror = {"root": str(tmp_path / "mirror")}
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()
    configs = [
        daemon_config(
            sim,
            folder,
            database={"url": pg_url, "lease_ttl": 5},
            procore={"workers_share": 0.5},
            sync={"concurrency": 3, "per_page": 10},
            mirror=mirror,
        )
        for folder in folders
    ]
    async with daemon(configs[0], folders[0]) as first, daemon(configs[1], folders[1]) as second:

        async def all_mirrored_by_both() -> bool:
            try:
                _, body = await first.get("/status")
            except aiohttp.ClientError:
                return False
            document = json.loads(body)
            live = [w for w in document["workers"] if w["state"] == "live"]
            return len(live) == 2 and sum(p["mirrored"] for p in document["projects"]) == 90

        await eventually(all_mirrored_by_both, what="the two daemons to mirror every photo")
        assert [(await stop(running))[0] for running in (first, second)] == [0, 0]
    assert_byte_exact(sim, load_settings(configs[0]))
    assert set(sim.stats.downloads.values()) == {1}, "no photo fetched twice"


async def test_a_killed_workers_partial_download_is_resumed_by_another(
    make_sim: Any, tmp_path: Path, pg_url: str
) -> None:
    sim = await make_sim(**BIG)
    config = shared_config(sim, tmp_path, pg_url)
    procs = [await start_worker(config) for _ in range(2)]
    states = tmp_path / "mirror" / ".syncer" / "tmp"
    check = await Store.open(load_settings(config).database_url)
    try:
        holder = None
        while holder is None:  # a download with a durable megabyte, and the worker doing it
            await asyncio.sleep(0.01)
            for state in states.glob("*.part.json") if states.is_dir() else []:
                if (holder := await claimant(check, int(state.name.split(".")[0]))) is not None:
                    break
    finally:
        await check.close()
    victim = next(p for p in procs if p.pid == holder)
    os.kill(victim.pid, signal.SIGKILL)
    await victim.wait()
    (survivor,) = [p for p in procs if p is not victim]
    code, output = await finish(survivor)
    assert code == ExitCode.OK, output
    assert sim.stats.resumed > 0, "the survivor resumed the dead worker's part with Range"
    assert_byte_exact(sim, load_settings(config))


async def test_a_daemon_declared_dead_rejoins_as_a_new_worker_and_goes_on(
    sim: Simulator, tmp_path: Path, pg_url: str
) -> None:
    config = daemon_config(sim, tmp_path, database={"url": pg_url, "lease_ttl": 3})
    async with daemon(config, tmp_path) as running:

        async def workers() -> list[dict[str, Any]]:
            try:
                _, body = await running.get("/status")
            except aiohttp.ClientError:
                return []
            found: list[dict[str, Any]] = json.loads(body).get("workers", [])
            return found

        async def live() -> int:
            return sum(w["state"] == "live" for w in await workers())

        await eventually(live, what="the daemon to join")
        async with project_store(pg_url, PROJECT, "unused") as store, store.engine.begin() as conn:
            await conn.execute(text("UPDATE workers SET expires_at = expires_at - interval '1 hour'"))
        added = sim.add_photo(next(iter(sim.company.projects)))

        async def rejoined_and_synced() -> bool:
            found = await workers()
            live = [w for w in found if w["state"] == "live"]
            return len(found) == 2 and len(live) == 1 and added.id in mirror_photos(tmp_path / "mirror")

        await eventually(rejoined_and_synced, what="a new worker that mirrors the new photo")
        assert (await stop(running))[0] == 0
    assert "was declared dead by the others" in running.log_text()


# -- one writer per photo --------------------------------------------------------------------------


async def test_only_one_process_at_a_time_may_write_a_photo(tmp_path: Path) -> None:
    ours, theirs = MirrorFS(tmp_path), MirrorFS(tmp_path)  # separate opens conflict like processes
    try:
        async with ours.writing("42") as first, theirs.writing("42") as second:
            assert first and not second
        async with theirs.writing("42") as again:
            assert again, "free once the writer let go"
        assert list(ours.writing_dir.iterdir()) == [], "no lock file is left behind"
    finally:
        ours.close()
        theirs.close()


async def test_a_photo_another_process_is_writing_is_left_for_a_later_run(
    make_sim: Any, settings_for: Any, pg_url: str
) -> None:
    sim = await make_sim(photos=10, projects=1)
    settings = settings_for(sim, database={"url": pg_url})
    busy = min(sim.expected_files())
    stalled = MirrorFS(settings.mirror.root)  # as a worker that lost its claim but still writes
    try:
        async with stalled.writing(str(busy)):
            summary = await sync(settings)
    finally:
        stalled.close()
    (result,) = summary.results
    assert [(pid, error) for pid, _, error in result.failures] == [(busy, WRITING_ELSEWHERE)]
    assert busy not in sim.stats.downloads
    assert (await sync(settings, retry_failed=True)).exit_code == ExitCode.OK
    assert_byte_exact(sim, settings)


async def test_move_strays_is_refused_while_a_worker_is_live_on_the_database(
    sim: Simulator, tmp_path: Path, pg_url: str, store: Store
) -> None:
    config = write_config(sim, tmp_path, database={"url": pg_url})
    (tmp_path / "mirror").mkdir()
    stray = tmp_path / "mirror" / "just-installed.jpg"  # what a live worker may not have recorded yet
    stray.write_bytes(b"photo")
    await worker(store, "live-one")
    run = await syncer("verify", "--config", str(config), "--move-strays")
    assert run.code == ExitCode.LOCKED
    assert run.err.startswith("syncer: --move-strays needs the mirror to itself, and 1 syncer worker is live")
    assert stray.read_bytes() == b"photo"
