"""The mirror's file layer (`MirrorFS`) on its own, on a real folder: what it refuses, what it puts
in place and what it leaves behind. Fast enough to run for every mutant of `mirror/files.py`; the
fsync order is observed on a real `syncer` in `test_durability.py`."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from syncer.errors import LocalFault
from syncer.mirror.files import IOV_MAX, MirrorFS, UnsafePath, fsync_dir, fsync_file, sha256_of, write_all


@pytest.fixture
async def fs(tmp_path: Path) -> AsyncIterator[MirrorFS]:
    mirror = MirrorFS(tmp_path / "mirror")
    mirror.prepare()
    yield mirror
    mirror.close()


def temp_file(fs: MirrorFS, data: bytes, name: str = "1.part") -> Path:
    path = fs.tmp_path(name)
    path.write_bytes(data)
    return path


def test_partial_downloads_are_staged_under_the_state_folder(fs: MirrorFS, tmp_path: Path) -> None:
    """`.syncer/tmp/`, where a run finds the parts an earlier one left, and docs/guarantees.md says
    they are."""
    staging = tmp_path / "mirror" / ".syncer" / "tmp"
    assert staging.is_dir()
    assert fs.tmp_path("1.part") == staging / "1.part"


@pytest.mark.parametrize("rel", ["", "/etc/passwd", "a/../b", "./a", "a//b", "a/.", "..", ".syncer/db", "a/"])
def test_a_path_that_is_not_plainly_inside_the_mirror_is_refused(fs: MirrorFS, rel: str) -> None:
    with pytest.raises(UnsafePath, match=f"^refusing unsafe mirror path {re.escape(repr(rel))}$"):
        fs.path(rel)


def test_a_folder_that_links_out_of_the_mirror_is_refused(fs: MirrorFS, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (fs.root / "Project").symlink_to(outside)
    with pytest.raises(UnsafePath, match="leaves the mirror root through a link"):
        fs.path("Project/photo.jpg")


def test_a_folder_that_links_within_the_mirror_is_followed(fs: MirrorFS) -> None:
    (fs.root / "real").mkdir()
    (fs.root / "alias").symlink_to(fs.root / "real")
    assert fs.path("alias/photo.jpg") == fs.root / "alias" / "photo.jpg"


def test_a_folder_swapped_for_a_link_after_its_first_use_is_refused_when_it_is_created(
    fs: MirrorFS, tmp_path: Path
) -> None:
    """The check of a folder that did not exist yet is not remembered: once created, it is checked."""
    outside = tmp_path / "outside"
    outside.mkdir()
    fs.path("Later/photo.jpg")  # not there yet: nothing to resolve
    (fs.root / "Later").symlink_to(outside)
    with pytest.raises(UnsafePath):
        fs.path("Later/photo.jpg")


async def test_an_install_puts_the_photo_and_its_sidecar_in_place(fs: MirrorFS) -> None:
    tmp = temp_file(fs, b"jpeg bytes")
    await fs.install(
        "P/a.jpg", tmp=tmp, data=None, mtime=1_600_000_000.0, sidecars=[("P/a.jpg.json", b"{}\n")]
    )
    photo = fs.root / "P" / "a.jpg"
    assert photo.read_bytes() == b"jpeg bytes"
    assert (fs.root / "P" / "a.jpg.json").read_bytes() == b"{}\n"
    assert photo.stat().st_mtime == 1_600_000_000.0
    assert not tmp.exists()
    assert list(fs.tmp_dir.iterdir()) == [], "no temp file of the photo or its sidecar is left"


async def test_an_install_of_a_body_kept_in_memory_writes_it_first(fs: MirrorFS) -> None:
    tmp = fs.tmp_path("2.part")
    await fs.install(
        "P/Q/b.jpg", tmp=tmp, data=[b"in ", b"memory"], mtime=None, sidecars=[("P/Q/b.jpg.json", b"{}\n")]
    )
    assert (fs.root / "P" / "Q" / "b.jpg").read_bytes() == b"in memory"


async def test_an_install_that_replaces_a_photo_at_another_path_removes_the_old_copy(fs: MirrorFS) -> None:
    await fs.install(
        "P/old.jpg", tmp=temp_file(fs, b"v1"), data=None, mtime=None, sidecars=[("P/old.jpg.json", b"1")]
    )
    await fs.install(
        "Q/new.jpg",
        tmp=temp_file(fs, b"v2"),
        data=None,
        mtime=None,
        sidecars=[("Q/new.jpg.json", b"2")],
        replacing="P/old.jpg",
    )
    assert (fs.root / "Q" / "new.jpg").read_bytes() == b"v2"
    assert not (fs.root / "P" / "old.jpg").exists()
    assert not (fs.root / "P" / "old.jpg.json").exists()


async def test_an_install_that_replaces_a_photo_at_the_same_path_keeps_it(fs: MirrorFS) -> None:
    await fs.install(
        "P/a.jpg", tmp=temp_file(fs, b"v1"), data=None, mtime=None, sidecars=[("P/a.jpg.json", b"1")]
    )
    await fs.install(
        "P/a.jpg",
        tmp=temp_file(fs, b"v2"),
        data=None,
        mtime=None,
        sidecars=[("P/a.jpg.json", b"2")],
        replacing="P/a.jpg",
    )
    assert (fs.root / "P" / "a.jpg").read_bytes() == b"v2"
    assert (fs.root / "P" / "a.jpg.json").read_bytes() == b"2"


async def test_an_install_into_a_folder_that_links_out_of_the_mirror_is_refused(
    fs: MirrorFS, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (fs.root / "P").symlink_to(outside)
    with pytest.raises(UnsafePath):
        await fs.install(
            "P/a.jpg", tmp=temp_file(fs, b"x"), data=None, mtime=None, sidecars=[("P/a.jpg.json", b"1")]
        )
    assert list(outside.iterdir()) == []


def in_memory(
    fs: MirrorFS, rel: str, body: bytes = b"x", replacing: str | None = None
) -> asyncio.Future[None]:
    """The install of a photo whose body is still in memory, with an empty-object sidecar."""
    tmp = fs.tmp_path(rel.replace("/", "_") + ".part")
    return fs.install(
        rel, tmp=tmp, data=[body], mtime=None, sidecars=[(rel + ".json", b"{}")], replacing=replacing
    )


async def test_installs_that_finish_together_fail_or_land_each_on_its_own(fs: MirrorFS) -> None:
    """Installs queued while others are on a file thread go together in one batch; a photo whose
    folder cannot be made fails alone, and the others of its batch are in place."""
    (fs.root / "Blocked").write_bytes(b"a file where a folder should be")
    rels = [f"P/{n}.jpg" for n in range(6)] + ["Blocked/x.jpg"] + [f"Q/{n}.jpg" for n in range(6)]
    futures = [in_memory(fs, rel, rel.encode()) for rel in rels]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert [isinstance(o, OSError) for o in outcomes] == [False] * 6 + [True] + [False] * 6
    assert outcomes[:6] + outcomes[7:] == [None] * 12
    for rel in rels[:6] + rels[7:]:
        assert (fs.root / rel).read_bytes() == rel.encode()
        assert (fs.root / (rel + ".json")).read_bytes() == b"{}"


async def test_an_old_copy_that_cannot_be_removed_leaves_the_new_one_and_the_batch_installed(
    fs: MirrorFS,
) -> None:
    (fs.root / "Old" / "a.jpg").mkdir(parents=True)  # a folder where the old copy should be
    futures = [in_memory(fs, f"P/{n}.jpg") for n in range(3)]
    futures.append(in_memory(fs, "P/a.jpg", b"new", replacing="Old/a.jpg"))
    assert await asyncio.gather(*futures) == [None] * 4
    assert (fs.root / "P" / "a.jpg").read_bytes() == b"new"


async def test_a_caller_that_stops_waiting_does_not_hold_up_the_others(fs: MirrorFS) -> None:
    futures = [in_memory(fs, f"P/{n}.jpg") for n in range(8)]
    futures[4].cancel()
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert [o is None for o in outcomes] == [True] * 4 + [False] + [True] * 3
    assert (fs.root / "P" / "4.jpg").read_bytes() == b"x", "the install itself ran to its end"


async def test_an_install_remakes_a_folder_removed_since_it_was_checked(fs: MirrorFS) -> None:
    await fs.install(
        "P/a.jpg", tmp=fs.tmp_path("1.part"), data=[b"a"], mtime=None, sidecars=[("P/a.jpg.json", b"1")]
    )
    shutil.rmtree(fs.root / "P")
    await fs.install(
        "P/b.jpg", tmp=fs.tmp_path("2.part"), data=[b"b"], mtime=None, sidecars=[("P/b.jpg.json", b"2")]
    )
    assert (fs.root / "P" / "b.jpg").read_bytes() == b"b"
    assert (fs.root / "P" / "b.jpg.json").read_bytes() == b"2"


def test_a_body_in_many_small_pieces_is_written_whole_and_in_order(fs: MirrorFS) -> None:
    """More pieces than one writev takes (a server that sends a byte at a time)."""
    pieces = [bytes([n % 251]) for n in range(3 * IOV_MAX + 7)]
    fd = os.open(fs.tmp_path("many"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        write_all(fd, pieces)
    finally:
        os.close(fd)
    assert fs.tmp_path("many").read_bytes() == b"".join(pieces)


def test_only_regular_files_count_as_existing(fs: MirrorFS, tmp_path: Path) -> None:
    (fs.root / "P").mkdir()
    (fs.root / "P" / "file.jpg").write_bytes(b"x")
    (fs.root / "P" / "folder.jpg").mkdir()
    (tmp_path / "target.jpg").write_bytes(b"y")
    (fs.root / "P" / "link.jpg").symlink_to(tmp_path / "target.jpg")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.jpg").write_bytes(b"z")
    (fs.root / "Out").symlink_to(tmp_path / "outside")
    asked = ["P/missing.jpg", "../escape.jpg", "P/folder.jpg", "P/link.jpg", "Out/x.jpg", "P/file.jpg"]
    assert fs.existing(asked) == {"P/file.jpg"}, "nothing through a folder that links out of the mirror"


async def test_a_small_file_is_written_whole_and_leaves_no_temp_file(fs: MirrorFS) -> None:
    await fs.write_durably([("P/Q/a.jpg.json", b"first")])
    await fs.write_durably([("P/Q/a.jpg.json", b"second")])
    assert (fs.root / "P" / "Q" / "a.jpg.json").read_bytes() == b"second"
    assert list(fs.tmp_dir.iterdir()) == []


async def test_a_move_creates_the_new_folder_and_leaves_nothing_at_the_old_path(fs: MirrorFS) -> None:
    await fs.write_durably([("P/a.jpg", b"photo")])
    await fs.move("P/a.jpg", "Q/R/a.jpg")
    assert (fs.root / "Q" / "R" / "a.jpg").read_bytes() == b"photo"
    assert not (fs.root / "P" / "a.jpg").exists()


async def test_a_move_into_a_folder_that_exists_keeps_what_is_there(fs: MirrorFS) -> None:
    await fs.write_durably([("P/a.jpg", b"a")])
    await fs.write_durably([("Q/b.jpg", b"b")])
    await fs.move("P/a.jpg", "Q/a.jpg")
    assert sorted(p.name for p in (fs.root / "Q").iterdir()) == ["a.jpg", "b.jpg"]


async def test_a_remove_of_a_missing_file_is_not_an_error(fs: MirrorFS) -> None:
    await fs.write_durably([("P/a.jpg", b"photo")])
    await fs.remove("P/a.jpg")
    await fs.remove("P/a.jpg")
    assert not (fs.root / "P" / "a.jpg").exists()


def test_leftover_temp_files_go_after_an_hour_and_parts_after_a_week(tmp_path: Path) -> None:
    fs = MirrorFS(tmp_path / "mirror")
    fs.prepare()
    for name in ("a.tmp", "a.part"):
        fs.tmp_path(name).write_bytes(b"x")
    written, week = fs.tmp_path("a.part").stat().st_ctime, 7 * 86400
    left = []
    for age in (3599.5, 3600.5, week - 5, week + 5):
        fs.prepare(now=written + age)
        left.append(sorted(p.name for p in fs.tmp_dir.iterdir()))
    fs.close()
    assert left == [["a.part", "a.tmp"], ["a.part"], ["a.part"], []]


def test_a_mirror_root_that_cannot_be_made_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    fs = MirrorFS(tmp_path / "file" / "mirror")
    with pytest.raises(
        LocalFault, match=r"mirror\.root .*/file/mirror cannot be used: Not a directory: point "
    ):
        fs.prepare()
    fs.close()


def test_a_file_is_fsynced_only_through_no_link(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    fsync_file(tmp_path / "target")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        fsync_file(tmp_path / "link")


def test_a_folder_fsync_refuses_what_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    fsync_dir(tmp_path)
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "file")


def test_a_mirror_root_that_is_a_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "mirror").write_text("not a folder")
    fs = MirrorFS(tmp_path / "mirror")
    with pytest.raises(LocalFault, match=r"mirror\.root .* is not a folder"):
        fs.prepare()
    fs.close()


async def test_a_photo_being_written_cannot_be_claimed_twice(fs: MirrorFS) -> None:
    async with fs.writing("7") as first:
        async with fs.writing("7") as second:
            assert (first, second) == (True, False)
        async with fs.writing("8") as other:
            assert other
    async with fs.writing("7") as again:
        assert again, "let go when the first writer is done"
    assert list(fs.writing_dir.iterdir()) == []


def test_the_hash_of_an_open_file_is_read_from_its_start(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 7)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 100, os.SEEK_SET)
        assert sha256_of(fd) == hashlib.sha256(data).hexdigest()
    finally:
        os.close(fd)


async def test_a_lock_file_replaced_while_it_is_taken_is_taken_again(
    fs: MirrorFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its holder let go and removed it between our open and our `flock`, and a new one is in its
    place: the lock we got is on a file no one else will look at, so the claim takes the new one."""
    real_flock = fcntl.flock
    swapped: list[int] = []

    def flock_after_a_swap(fd: int, operation: int) -> None:
        if not swapped:
            path = fs.writing_dir / "7"
            path.unlink()
            path.touch()
            swapped.append(os.fstat(fd).st_ino)
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_swap)
    async with fs.writing("7") as claimed:
        assert claimed and swapped
        assert (fs.writing_dir / "7").stat().st_ino != swapped[0]
        with pytest.raises(BlockingIOError):  # the file at the path is the one held
            fd = os.open(fs.writing_dir / "7", os.O_RDWR)
            try:
                real_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)


def test_a_leftover_that_cannot_be_read_does_not_stop_the_clean_up(tmp_path: Path) -> None:
    fs = MirrorFS(tmp_path / "mirror")
    fs.prepare()
    (fs.tmp_dir / "a-dangling.tmp").symlink_to(tmp_path / "nowhere")
    stale = fs.tmp_path("b-stale.tmp")
    stale.write_bytes(b"x")
    time.sleep(0.05)
    fs.prepare(stale_after=0.01)
    fs.close()
    assert not stale.exists()


def test_a_file_about_to_be_installed_is_not_cleaned_up_for_its_photos_old_date(tmp_path: Path) -> None:
    """A download gets its photo's date as mtime before it is renamed into place; another process
    starting meanwhile must not take it for a leftover."""
    fs = MirrorFS(tmp_path / "mirror")
    fs.prepare()
    part = fs.tmp_path("562950208720780.part")
    part.write_bytes(b"x")
    months_ago = time.time() - 90 * 86400
    os.utime(part, (months_ago, months_ago))
    fs.prepare()
    fs.close()
    assert part.exists()
