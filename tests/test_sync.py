"""End-to-end syncs against the simulator over loopback HTTP, into real files and SQLite."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from syncer.errors import ExitCode
from syncer.plan import Change
from syncer.simulator import Simulator
from tests.conftest import assert_byte_exact, db_rows, mirror_photos, readable, sync


async def test_full_sync_mirrors_every_photo_byte_exact(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim)
    summary = await sync(settings)
    assert summary.exit_code == ExitCode.OK
    assert_byte_exact(sim, settings)
    assert sum(r.downloaded for r in summary.results) == len(sim.company.photos)


async def test_second_run_downloads_nothing_and_costs_one_request_per_project(
    sim: Simulator, settings_for: Any, database_url: str
) -> None:
    settings = settings_for(sim, database={"url": database_url})
    await sync(settings)
    downloads_before, albums_before = sum(sim.stats.downloads.values()), sim.stats.requests["albums"]
    summary = await sync(settings)
    assert summary.exit_code == ExitCode.OK
    assert sum(sim.stats.downloads.values()) == downloads_before
    for result in summary.results:
        assert result.downloaded == 0
        assert result.requests == 1, f"{result.requests} requests for an unchanged project"
    assert sim.stats.requests["albums"] == albums_before, "each record names its album"


async def test_incremental_run_fetches_photos_added_since(
    make_sim: Any, settings_for: Any, times: dict[str, Any]
) -> None:
    sim = await make_sim(**times)
    settings = settings_for(sim)
    await sync(settings)
    newest = max(sim.company.photos.values(), key=lambda p: p.id)
    added = sim.add_photo(newest.project_id)
    summary = await sync(settings)
    assert sum(r.changes[Change.NEW] for r in summary.results) == 1
    assert sum(r.downloaded for r in summary.results) == 1
    assert mirror_photos(settings.mirror.root)[added.id] == added.content.all_bytes()


async def test_the_token_never_reaches_the_object_store(sim: Simulator, settings_for: Any) -> None:
    await sync(settings_for(sim))
    assert sim.stats.requests["object"] >= len(sim.company.photos)
    assert sim.stats.store_authorization_headers == []


async def test_sync_survives_injected_errors_and_cut_bodies(make_sim: Any, settings_for: Any) -> None:
    sim = await make_sim(error_rate=0.1, cut_rate=0.1, broken_json_rate=0.05, retry_after=0.1)
    # About a third of attempts fail here (a 5xx on the hop or the store, or a cut body): with the
    # default 8 tries, one of 60 photos failing them all is about a 1 % chance; 20 make it nil.
    settings = settings_for(sim, procore={"retry_attempts": 20})
    summary = await sync(settings)
    assert summary.exit_code == ExitCode.OK, [r.failures for r in summary.results]
    assert_byte_exact(sim, settings)


async def test_urls_that_expire_before_download_are_signed_again(make_sim: Any, settings_for: Any) -> None:
    # One worker, slow files: URLs listed with the page are dead by the time their turn comes.
    sim = await make_sim(url_ttl=1, photos=12, projects=1, store_latency=0.3)
    settings = settings_for(sim, sync={"concurrency": 1, "per_page": 100})
    summary = await sync(settings)
    assert summary.exit_code == ExitCode.OK
    assert sim.stats.requests["image"] > 0, "expired photos were fetched again for a fresh URL"
    assert_byte_exact(sim, settings)


async def test_failed_photos_stay_due_without_holding_the_checkpoint(
    make_sim: Any, settings_for: Any
) -> None:
    sim = await make_sim(url_ttl=0, photos=10)
    settings = settings_for(sim)
    await sync(settings)
    rows = db_rows(settings, "SELECT attempts, last_error, next_retry_at FROM photos")
    assert all(attempts == 1 and error and retry for attempts, error, retry in rows)
    assert all(cp for (cp,) in db_rows(settings, "SELECT checkpoint FROM projects"))


async def test_token_is_renewed_before_it_expires(make_sim: Any, settings_for: Any) -> None:
    sim = await make_sim(token_ttl=1.0, store_latency=0.05)
    settings = settings_for(sim, sync={"concurrency": 2})
    summary = await sync(settings)
    assert summary.exit_code == ExitCode.OK
    assert sim.stats.tokens_issued > 1
    assert sim.stats.unauthorized == 0, "each token was replaced before it expired, not after a 401"
    assert sim.stats.token_life_left > 0.25, "a token is replaced well before its end (at half its life)"


async def test_secrets_reach_no_log_line_database_row_or_sidecar(
    sim: Simulator, settings_for: Any, log_lines: Any
) -> None:
    settings = settings_for(sim)
    await sync(settings)
    secrets = [sim.config.client_secret, *sim.tokens]
    texts = [record.getMessage() for record in log_lines.records]
    texts += [json.dumps(row, default=readable) for row in db_rows(settings, "SELECT * FROM photos")]
    texts += [json.dumps(row, default=str) for row in db_rows(settings, "SELECT * FROM sync_runs")]
    texts += [p.read_text() for p in settings.mirror.root.rglob("*.json")]
    database = settings.database.url.removeprefix("sqlite:///")
    texts.append(Path(database).read_bytes().decode("latin-1"))
    for secret in secrets:
        assert not any(secret in text for text in texts)
    assert not any("sig=" in text or "X-Amz-Signature" in text for text in texts[:-1])


async def test_metadata_edit_rewrites_the_sidecar_without_downloading(
    sim: Simulator, settings_for: Any
) -> None:
    settings = settings_for(sim)
    await sync(settings)
    photo = next(iter(sim.company.photos.values()))
    sim.edit_photo(photo.id, description="Poured and cured", starred=True)
    downloads = sum(sim.stats.downloads.values())
    summary = await sync(settings)
    assert sum(r.changes[Change.METADATA] for r in summary.results) == 1
    assert sum(sim.stats.downloads.values()) == downloads
    sidecars = [p for p in settings.mirror.root.rglob(f"{photo.id}_*.json")]
    assert json.loads(sidecars[0].read_text())["procore"]["description"] == "Poured and cured"


async def test_album_move_renames_the_file_without_downloading(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim)
    await sync(settings)
    photo = next(p for p in sim.company.photos.values() if p.album_id is not None)
    other = next(
        a for a in sim.company.albums.values() if a.project_id == photo.project_id and a.id != photo.album_id
    )
    sim.edit_photo(photo.id, album_id=other.id)
    downloads = sum(sim.stats.downloads.values())
    summary = await sync(settings)
    assert sum(r.changes[Change.MOVED] for r in summary.results) == 1
    assert sum(sim.stats.downloads.values()) == downloads
    moved = list(settings.mirror.root.rglob(f"{photo.id}_*"))
    assert {p.parent.parent.name for p in moved} == {other.name}
    assert_byte_exact(sim, settings)
    (sidecar,) = [p for p in moved if p.suffix == ".json"]
    document = json.loads(sidecar.read_text())
    assert document["procore"]["image_category_id"] == other.id, "the whole new record, not a stub"
    assert document["procore"]["filename"] == photo.filename
    assert document["file"]["sha256"] and document["file"]["size"] == len(photo.content.all_bytes())


async def test_replaced_file_is_downloaded_again(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim)
    await sync(settings)
    photo = next(iter(sim.company.photos.values()))
    sim.replace_photo(photo.id)
    summary = await sync(settings)
    assert sum(r.changes[Change.REPLACED] for r in summary.results) == 1
    assert_byte_exact(sim, settings)


async def test_a_file_replaced_by_one_of_the_same_size_is_downloaded_again(
    sim: Simulator, settings_for: Any
) -> None:
    settings = settings_for(sim)
    await sync(settings)
    photo = next(iter(sim.company.photos.values()))
    sim.replace_photo(photo.id, size=photo.requested_size)  # new bytes, same length
    summary = await sync(settings)
    assert sum(r.changes[Change.REPLACED] for r in summary.results) == 1
    assert_byte_exact(sim, settings)


async def test_dry_run_writes_nothing(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim)
    summary = await sync(settings, dry_run=True)
    assert sum(r.changes[Change.NEW] for r in summary.results) == len(sim.company.photos)
    assert mirror_photos(settings.mirror.root) == {}
    assert not settings.mirror.root.exists()
    assert not Path(settings.database_url.split("///", 1)[1]).exists(), "no database is made"
    assert sum(sim.stats.downloads.values()) == 0


async def test_project_selection_syncs_only_the_named_project(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim)
    first = next(iter(sim.company.projects))
    summary = await sync(settings, project_ids=[first, 999])
    assert [r.project.id for r in summary.results] == [first]
    assert summary.errors == ["project 999 is not visible to this service account"]
    assert summary.exit_code == ExitCode.INCOMPLETE
    assert {sim.company.photos[i].project_id for i in mirror_photos(settings.mirror.root)} == {first}


async def test_list_filters_from_the_config_reach_procore(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim, sync={"filters": {"starred": True}})
    await sync(settings)
    starred = {p.id for p in sim.company.photos.values() if p.starred}
    assert starred and set(mirror_photos(settings.mirror.root)) == starred


HOSTILE_NAMES = [
    "../../escape.jpg",
    "/etc/passwd",
    "..\\..\\win.jpg",
    "new\nline.jpg",
    "CON",
    "nul.jpg",
    ".hidden.jpg",
    "trailing. ",
    "é" * 300 + ".jpg",
    "tab\there.jpg",
    "\u202egnp.exe",
    "",
    "a/b/c.jpg",
]


async def test_hostile_upstream_names_stay_inside_the_mirror(
    sim: Simulator, settings_for: Any, tmp_path: Any
) -> None:
    project = next(iter(sim.company.projects.values()))
    project.name = "../../../outside"
    for album in sim.company.albums.values():
        album.name = ".." if album.project_id == project.id else "CON"
    for photo, name in zip(sim.company.photos.values(), HOSTILE_NAMES * 10, strict=False):
        photo.filename = name
    sim.changed()
    settings = settings_for(sim)
    summary = await sync(settings)
    assert summary.exit_code == ExitCode.OK
    assert_byte_exact(sim, settings)
    root = settings.mirror.root.resolve()
    written = [
        p for p in tmp_path.rglob("*") if p.is_file() and "state" not in p.parts and p.name != "config.yaml"
    ]
    assert written and all(root in p.resolve().parents for p in written)
    assert not any(
        part.startswith(".") for p in written for part in p.relative_to(root).parts[:-1] if part != ".syncer"
    )


async def test_photo_files_carry_the_time_they_were_taken(sim: Simulator, settings_for: Any) -> None:
    settings = settings_for(sim)
    await sync(settings)
    for photo in list(sim.company.photos.values())[:10]:
        path = next(p for p in settings.mirror.root.rglob(f"{photo.id}_*") if not p.name.endswith(".json"))
        expected = (photo.taken_at or photo.created_at).timestamp()
        assert path.stat().st_mtime == expected


async def test_a_renamed_photo_is_renamed_on_disk_not_downloaded_again(
    sim: Simulator, settings_for: Any
) -> None:
    settings = settings_for(sim)
    await sync(settings)
    photo = next(iter(sim.company.photos.values()))
    sim.edit_photo(photo.id, filename="Level 3 slab pour.jpg")
    downloads = sum(sim.stats.downloads.values())
    summary = await sync(settings)
    assert sum(r.changes[Change.MOVED] for r in summary.results) == 1
    assert sum(sim.stats.downloads.values()) == downloads
    assert [p.name for p in settings.mirror.root.rglob(f"{photo.id}_*.jpg")] == [
        f"{photo.id}_Level 3 slab pour.jpg"
    ]
    assert_byte_exact(sim, settings)


async def test_a_body_longer_than_the_listed_size_is_never_installed(
    make_sim: Any, settings_for: Any
) -> None:
    sim = await make_sim(photos=6, projects=1)
    padded = min(sim.expected_files())
    sim.config.padded_files.add(padded)
    settings = settings_for(sim, procore={"retry_attempts": 2})
    summary = await sync(settings)
    assert summary.exit_code == ExitCode.INCOMPLETE
    ((failed, _, error),) = summary.results[0].failures
    assert failed == padded and "more than the 6000 bytes the listing says" in error, error
    assert padded not in mirror_photos(settings.mirror.root), "no file of the wrong length in the mirror"


async def test_bodies_without_a_content_length_are_checked_against_the_listed_size(
    make_sim: Any, settings_for: Any
) -> None:
    sim = await make_sim(chunked_bodies=True)
    settings = settings_for(sim)
    assert (await sync(settings)).exit_code == ExitCode.OK
    assert_byte_exact(sim, settings)


async def test_the_hourly_window_is_paced_when_it_runs_out_first(make_sim: Any, settings_for: Any) -> None:
    sim = await make_sim(hourly_limit=40, hourly_window=3.0, spike_limit=10**6, error_rate=0.0)
    settings = settings_for(sim)
    started = time.monotonic()
    assert (await sync(settings)).exit_code == ExitCode.OK
    took = time.monotonic() - started
    assert sim.stats.rate_limited == 0, "paced by the window that runs out first: no 429"
    assert took >= 3.0, f"about 70 requests at 40 a window take at least one window, not {took:.1f} s"
    assert_byte_exact(sim, settings)


async def test_a_chain_of_redirects_is_followed_by_hand_and_capped(make_sim: Any, settings_for: Any) -> None:
    sim = await make_sim(photos=8, projects=1, redirect_hops=5)  # four hops on Procore, then S3
    settings = settings_for(sim)
    assert (await sync(settings)).exit_code == ExitCode.OK
    assert_byte_exact(sim, settings)
    assert sim.stats.store_authorization_headers == [], "the token stayed on Procore's hops"
    sim.config.redirect_hops = 7
    photo = next(iter(sim.company.photos.values()))
    sim.replace_photo(photo.id)
    summary = await sync(settings, retry_failed=False)
    ((failed, _, error),) = summary.results[0].failures
    assert failed == photo.id and "more than 5 redirects" in error, error
