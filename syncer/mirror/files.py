"""Durable, contained file operations on the mirror.

The order is the invariant: a file is written under `.syncer/tmp/`, verified, fsynced, renamed
into place, and its folder fsynced, all before the database hears of it. Every final path is
checked to stay inside the root even if someone planted a symlink in the mirror.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import grp
import hashlib
import itertools
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from syncer.errors import LocalFault, MirrorMissing, NotTheOwner, local_fault, user_name
from syncer.mirror.sidecar import Sidecars

T = TypeVar("T")
log = logging.getLogger(__name__)
INSTALL_THREADS = 2
"""Batches of installs in flight at once: enough to keep a disk's queue busy, few enough that the
file threads and the event loop seldom queue for the GIL."""
STATE_DIR = ".syncer"
TRASH_DIR = ".trash"


class UnsafePath(ValueError):
    pass


def open_new(path: Path, flags: int = os.O_WRONLY, mode: int = 0o644) -> int:
    """A descriptor for a new, empty file at `path`, whatever was there: a link planted in its
    place is removed, never followed, so nothing is written outside the mirror. Usually nothing is
    there, so the name is only cleared when the first try finds it taken (one syscall per photo)."""
    flags |= os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        path.unlink()
        return os.open(path, flags, mode)


IOV_MAX = 1024
"""The most buffers one `writev` takes (POSIX guarantees at least 16; Linux allows 1024)."""


def write_all(fd: int, pieces: Sequence[bytes]) -> None:
    """Write `pieces` in order at the descriptor's position: one `writev` for up to IOV_MAX of
    them, and no copy into one buffer first."""
    for start in range(0, len(pieces), IOV_MAX):
        group = [memoryview(p) for p in pieces[start : start + IOV_MAX]]
        while group:
            written = os.writev(fd, group)
            while group and written >= len(group[0]):
                written -= len(group.pop(0))
            if group:
                group[0] = group[0][written:]


def check_owner(root: Path) -> None:
    """Refuse (`NotTheOwner`) a command that would write in a mirror another user owns, root
    included: what it made there (a lock, a folder, a page) would be its own, and the owner's
    next run, a service's, could not use it. Called before anything is opened, the database
    included. A root not made yet is this user's to make."""
    try:
        owner = root.stat().st_uid
    except OSError:
        return
    if owner != os.geteuid():
        name = user_name(owner)
        sudo = name if not name.startswith("uid ") else f"'#{owner}'"
        raise NotTheOwner(
            f"mirror.root {root} belongs to {name}, and this is {user_name(os.geteuid())}: run syncer as "
            f"its owner (sudo -u {sudo} syncer ...), so that what it writes there stays usable by the "
            "owner's runs; nothing was done"
        )


class Sharing:
    """The group that may read the mirror (`mirror.group`): every file and folder the syncer
    makes there gets it, with a mode that lets that group read and no one else in (0640, 0750),
    whatever the umask. Set on the new file's descriptor before it is renamed into place, so it is
    never seen otherwise, and never by a walk afterwards.

    Where the filesystem takes groups and modes from its mount options (an SMB/CIFS share), or the
    user may not give that group (not a member; the systemd units' sandbox forbids it), the change
    fails or does nothing. The file is kept all the same: the run is not failed for it, and what
    could not be done is said once per process, not once per photo."""

    FILE = 0o640
    FOLDER = 0o750

    def __init__(self, gid: int, name: str) -> None:
        self.gid = gid
        self.name = name
        self._said: set[str] = set()
        self._lock = threading.Lock()

    def apply(self, fd: int, path: Path, *, folder: bool = False) -> None:
        """Give the open file or folder `fd` (at `path`, for messages) the group and the mode."""
        found = os.fstat(fd)
        wanted = self.FOLDER if folder else self.FILE
        problems: dict[str, str | None] = {}
        if found.st_gid != self.gid:
            problems["group"] = _refused(os.fchown, fd, -1, self.gid)
        if stat.S_IMODE(found.st_mode) & 0o777 != wanted:
            keep = found.st_mode & stat.S_ISGID if folder else 0  # a setgid folder passes its group on
            problems["mode"] = _refused(os.fchmod, fd, wanted | keep)
        if None in problems.values():  # a share's mount options may have the last word, silently
            now = os.fstat(fd)
            done = {"group": now.st_gid == self.gid, "mode": stat.S_IMODE(now.st_mode) & 0o777 == wanted}
            for what, problem in problems.items():
                if problem is None and not done[what]:
                    problems[what] = "the filesystem kept its own"
        for what, problem in problems.items():
            if problem is not None:
                self._say_once(what, problem, path, wanted)

    def _say_once(self, what: str, problem: str, path: Path, wanted: int) -> None:
        with self._lock:
            if what in self._said:
                return
            self._said.add(what)
        if what == "group":
            change = f"the group {self.name}"
            hint = (
                f"is {user_name(os.geteuid())} a member of {self.name}? On an SMB/CIFS share the group "
                "comes from the mount's gid= option"
            )
        else:
            change = f"mode {wanted:04o}"
            hint = "on an SMB/CIFS share modes come from the mount's file_mode= and dir_mode= options"
        log.warning(
            "mirror.group: %s could not be given %s (%s): %s. Said once; the mirror is written all "
            "the same (see docs/sharing.md)",
            path,
            change,
            problem,
            hint,
        )


@functools.cache
def sharing_of(group: str | None) -> Sharing | None:
    """The `Sharing` of `mirror.group` (None: files keep what the umask and folders give them).
    One per group for the whole process, so that the sync and the gallery it builds, or a daemon's
    runs, say what could not be done once between them."""
    if group is None:
        return None
    gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    return Sharing(gid, group)


def _refused(change: Any, *args: int) -> str | None:
    """Why `change(*args)` failed, or None if it did not."""
    try:
        change(*args)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def fill(
    fd: int, path: Path, data: Sequence[bytes], mtime: float | None = None, sharing: Sharing | None = None
) -> None:
    """Make the new file open at `fd` (`path`, for messages) what it must be before it is renamed
    into place, and close it: `data` written, modification time `mtime`, the mirror's group with
    `sharing`, fsynced. The one way every file the mirror shows is written, the gallery's too. Plain
    descriptor calls: each is a system call that hands the GIL to the event loop and back, so
    there are as few as the durability order allows."""
    try:
        write_all(fd, data)
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
        if sharing is not None:
            sharing.apply(fd, path)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(
    path: Path,
    data: Sequence[bytes],
    mtime: float | None = None,
    mode: int = 0o644,
    sharing: Sharing | None = None,
) -> None:
    """A new file at `path` (see `fill`)."""
    fill(open_new(path, mode=mode), path, data, mtime, sharing)


def replace_file(path: Path, data: bytes, *, sync_folder: bool = True, mode: int = 0o644) -> None:
    """Put `data` at `path`, anywhere (an export the user named): a new file beside it, fsynced,
    renamed over it, then the folder fsynced, so a crash leaves the old file or the new, never half.
    A caller replacing many files in one folder passes `sync_folder=False` and fsyncs it once; a
    secret is written with `mode=0o600`, readable by its owner alone from its first byte."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    _write_synced(tmp, [data], mode=mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_folder:
        fsync_dir(path.parent)


def state_folder(path: Path) -> None:
    """Create a folder of the syncer's own state if missing, and refuse it if it is a link (or not a
    folder at all): staging files, locks and clean-up there would land outside the mirror. Callers
    check a folder's parent first (`.syncer` before `.syncer/tmp`); the mirror root may be a link."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir()
    if not stat.S_ISDIR(path.lstat().st_mode):
        raise LocalFault(
            f"{path} is a link or not a folder; the syncer keeps its state only in a real folder "
            "inside the mirror: remove it and run again"
        )


def unusable_root(root: Path, exc: OSError) -> LocalFault:
    """One line for a mirror root the syncer cannot make its state folder in."""
    not_folder = root.exists() and not root.is_dir()
    reason = "is not a folder" if not_folder else f"cannot be used: {exc.strerror}"
    return LocalFault(
        f"mirror.root {root} {reason}: point mirror.root at a folder the user running syncer can "
        "write, or let it write there"
    )


MARKER = f"{STATE_DIR}/mirror-id"
"""The file that holds the mirror's id (`syncer.mirror.identity`)."""
ID_CHARS = 64


def read_marker(root: Path) -> str | None:
    """The id at `root`, or None where there is none (no root, no state folder, no file). A link,
    a FIFO or a folder at its name, or a file that is no id, is refused rather than taken."""
    path = root / MARKER
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # `.syncer` or the root is a file
        return None
    except OSError as exc:
        raise local_fault(exc, "the mirror's id") or MirrorMissing(
            f"{path} cannot be read ({exc.strerror}): it should hold the mirror's id"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MirrorMissing(f"{path} is not a file: it should hold the mirror's id; remove it")
        text = os.read(fd, ID_CHARS + 2).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not text or len(text) > ID_CHARS or not text.isalnum():
        raise MirrorMissing(f"{path} does not hold a mirror id: remove it, then run syncer sync --new-mirror")
    return text


READ_CHUNK = 1 << 20


def sha256_of(fd: int) -> str:
    """The SHA-256 of an open file, read from its start."""
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, READ_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def try_flock(path: Path) -> int | None:
    """An open descriptor holding an exclusive `flock` on `path` (created if missing), or None if
    another process holds it. `flock` locks go with their process, so a killed holder frees it."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        path.unlink()  # a link planted at the lock's name: removed, never followed
        fd = os.open(path, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _lock_removable(path: Path) -> int | None:
    """`try_flock` for a lock file its holder removes when it lets go: a lock taken on a file that
    was removed (or replaced) meanwhile is not the lock at `path`, so check, and try again."""
    while (fd := try_flock(path)) is not None:
        try:
            current = path.stat().st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)
    return None


def _settle(
    batch: list[tuple[Install, asyncio.Future[None]]], errors: Sequence[BaseException | None]
) -> None:
    """Give each install's caller its outcome (a caller that stopped waiting gets none)."""
    for (_, future), error in zip(batch, errors, strict=True):
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


@dataclass(frozen=True, slots=True)
class Install:
    """One photo to put in place (see `MirrorFS.install`)."""

    rel: str
    tmp: Path
    data: list[bytes] | None
    mtime: float | None
    sidecars: list[tuple[str, bytes]]
    replacing: str | None


class MirrorFS:
    def __init__(
        self,
        root: Path,
        *,
        threads: int = 8,
        sidecars: Sidecars | None = None,
        sharing: Sharing | None = None,
    ) -> None:
        self.root = root.resolve()
        self.sidecars = sidecars or Sidecars()
        """Which metadata files go with each photo (moved and removed with it)."""
        self.sharing = sharing
        """The group every file and folder made here is given (`mirror.group`), if any."""
        self.tmp_dir = self.root / STATE_DIR / "tmp"
        self.writing_dir = self.root / STATE_DIR / "locks" / "writing"
        """Locks of the photos being written, when several processes share the mirror."""
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mirror-io")
        self._verified: set[Path] = set()
        self._writing_ready = False
        self._waiting: list[tuple[Install, asyncio.Future[None]]] = []
        self._batches = 0
        self._names = itertools.count()
        self._prefix = secrets.token_hex(8)
        self.identity: str | None = None
        """The mirror's id, once `identity.ensure_mirror` found or made it: checked again before
        each project run, so a share that goes away under a long-running daemon is noticed."""

    def prepare(self, *, stale_after: float = 3600.0, now: float | None = None) -> None:
        """Create the state folder and drop temp files an interrupted run left behind.

        Another process may be syncing another project into this mirror right now, so only files
        untouched for `stale_after` seconds go; partial downloads (`.part`) stay a week for resuming."""
        try:
            self.check_state()
        except OSError as exc:
            raise unusable_root(self.root, exc) from None
        if self.sharing is not None:  # the way in for the group: index.html is at the root
            self._share_folder(self.root)
        now = time.time() if now is None else now
        for leftover in self.tmp_dir.iterdir():
            limit = 7 * 86400 if ".part" in leftover.name else stale_after
            with contextlib.suppress(OSError):
                # ctime, not mtime: a file about to be installed already has its photo's date as
                # its mtime (months ago), while another process may be renaming it into place now
                if now - leftover.lstat().st_ctime > limit:
                    leftover.unlink()

    def check_state(self) -> None:
        """Check the state folders again and forget which folders were found inside the root:
        once per project run, so a daemon that runs for months sees a link planted meanwhile."""
        self.check_identity()
        self._verified.clear()
        self._writing_ready = False
        for folder in (self.root / STATE_DIR, self.tmp_dir):
            state_folder(folder)

    def check_identity(self) -> None:
        """Refuse (`MirrorMissing`) if the root no longer holds the mirror's id: nothing is written
        to a mount point whose disk went away."""
        if self.identity is not None and read_marker(self.root) != self.identity:
            raise MirrorMissing(
                f"mirror.root {self.root} no longer holds this mirror ({MARKER} is gone or changed): "
                "is the disk or network share still mounted? Nothing more was written there"
            )

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    def run(self, func: Any, *args: Any) -> asyncio.Future[Any]:
        """Run blocking file work on the mirror's own threads, not the loop's default pool. The
        future is the thread's: cancelling its waiter does not stop the work."""
        return asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    def path(self, rel: str) -> Path:
        """The absolute path of a relative mirror path, refusing anything that leaves the root."""
        parts = rel.split("/")  # an empty or absolute path has an empty part
        if any(p in ("", ".", "..") for p in parts) or parts[0] == STATE_DIR:
            raise UnsafePath(f"refusing unsafe mirror path {rel!r}")
        target = self.root.joinpath(*parts)
        if target.parent not in self._verified:  # resolving costs a stat per level: once per folder
            parent = target.parent.resolve()
            if parent != self.root and self.root not in parent.parents:
                raise UnsafePath(f"mirror path {rel!r} leaves the mirror root through a link")
            if target.parent.is_dir():
                self._verified.add(target.parent)
        return target

    def existing(self, rels: Sequence[str]) -> set[str]:
        """Which of these mirror paths hold a regular file, no link followed (on a mirror thread)."""
        found = set()
        for rel in rels:
            try:  # most are new photos in folders not made yet: one lstat says so, before any check
                if stat.S_ISREG(os.lstat(self.root / rel).st_mode) and self.path(rel):
                    found.add(rel)
            except (OSError, UnsafePath):
                continue
        return found

    def tmp_path(self, name: str) -> Path:
        return self.tmp_dir / name

    def _folder_for(self, rel: str) -> Path:
        """The path of `rel`, its folder created if missing (and checked again once it exists,
        since a folder made now could be a link planted meanwhile). No folder is made once the
        mirror's id is gone from the root: a share that dropped mid-run leaves its mount point
        empty, and a folder made there would be the start of a second, wrong mirror."""
        target = self.path(rel)
        if target.parent not in self._verified:
            self.check_identity()
            self._make_folder(target.parent)
            target = self.path(rel)
        return target

    def _make_folder(self, folder: Path) -> None:
        """Make `folder` and the folders above it that are missing, each given the mirror's group."""
        if self.sharing is None:
            folder.mkdir(parents=True, exist_ok=True)
            return
        missing = list(itertools.takewhile(lambda place: not place.is_dir(), (folder, *folder.parents)))
        for place in reversed(missing):
            try:
                place.mkdir()
            except FileExistsError:  # made meanwhile by another thread or process, which shares it
                continue
            self._share_folder(place, os.O_NOFOLLOW)  # a link swapped in meanwhile is not followed

    def _share_folder(self, folder: Path, flags: int = 0) -> None:
        assert self.sharing is not None
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | flags)
        try:
            self.sharing.apply(fd, folder, folder=True)
        finally:
            os.close(fd)

    def _stamp(self, tmp: Path, mtime: float | None) -> None:
        """A file downloaded in place (the fetcher fsynced it): its date, and with `sharing` its group."""
        if self.sharing is None:
            if mtime is not None:
                os.utime(tmp, (mtime, mtime))
            return
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            self.sharing.apply(fd, tmp)
        finally:
            os.close(fd)

    def _replace(self, tmp: Path, rel: str) -> Path:
        """Rename `tmp` to `rel`, making its folder if it is missing (or was removed meanwhile)."""
        target = self._folder_for(rel)
        try:
            os.replace(tmp, target)
        except FileNotFoundError:
            if not tmp.exists():
                raise
            self._verified.discard(target.parent)
            os.replace(tmp, self._folder_for(rel))
        return target

    def _tmp_name(self) -> Path:
        """A staging name no other process or thread uses: this mirror object's random prefix
        (processes on several hosts, or in containers, may share a process id) and a counter."""
        return self.tmp_dir / f"{self._prefix}-{next(self._names)}.tmp"

    def _write_atomic(self, rel: str, data: bytes) -> Path:
        tmp = self._tmp_name()
        _write_synced(tmp, [data], sharing=self.sharing)
        return self._replace(tmp, rel)

    def write_with_folder(self, documents: Sequence[tuple[str, bytes]]) -> None:
        """Write small files (a photo's sidecars) atomically and durably, each folder fsynced once
        after all of them (on a mirror thread)."""
        folders = [self._write_atomic(rel, data).parent for rel, data in documents]
        for folder in dict.fromkeys(folders):
            fsync_dir(folder)

    async def write_durably(self, documents: Sequence[tuple[str, bytes]]) -> None:
        """Write small files atomically and make them durable, folders included: one file-thread
        trip for all of them."""
        await self.run(self.write_with_folder, documents)

    def _install_batch(self, batch: list[Install]) -> list[Exception | None]:
        """Install each photo of `batch` in the durability order, sharing what can be shared: each
        file and sidecar is written, fsynced and renamed into place, then every folder touched is
        fsynced once, and only then are old copies removed. One trip to a file thread for the lot;
        a photo that fails fails alone (its error is in its place in the answer)."""
        errors: list[Exception | None] = []
        folders: list[Path | None] = []
        for item in batch:
            try:
                if item.data is not None:
                    _write_synced(item.tmp, item.data, item.mtime, sharing=self.sharing)
                else:
                    self._stamp(item.tmp, item.mtime)
                folder = self._replace(item.tmp, item.rel).parent
                for sidecar in item.sidecars:
                    self._write_atomic(*sidecar)
                errors.append(None)
                folders.append(folder)
            except Exception as exc:  # the photo's own failure, handed to its caller
                errors.append(exc)
                folders.append(None)
        for folder in dict.fromkeys(f for f in folders if f is not None):
            try:
                fsync_dir(folder)
            except OSError as exc:  # none of the photos in it is durable
                errors = [exc if f == folder else e for f, e in zip(folders, errors, strict=True)]
        for item, error in zip(batch, errors, strict=True):
            if error is None and item.replacing is not None and item.replacing != item.rel:
                try:
                    kept = {item.rel, *(path for path, _ in item.sidecars)}  # IMG_1.jpg, IMG_1.png: one .xmp
                    for old in (item.replacing, *self.sidecars.paths(item.replacing)):
                        if old not in kept:
                            self._remove(old)
                except (OSError, UnsafePath) as exc:  # the new copy is in place: it stands
                    log.warning("the old copy of %s at %s stays: %s", item.rel, item.replacing, exc)
        return errors

    def install(
        self,
        rel: str,
        *,
        tmp: Path,
        data: list[bytes] | None,
        mtime: float | None,
        sidecars: list[tuple[str, bytes]],
        replacing: str | None = None,
    ) -> asyncio.Future[None]:
        """Put a verified photo and its sidecar in place, durably: write the temp file if it is
        still in memory, fsync, rename, write the sidecar, fsync the folder, then remove the copy at
        `replacing` (the photo's old path). Only once the future is done may the database record
        the photo. Installs that arrive while others are on a file thread go together in the next
        batch (`_install_batch`), so a busy run pays one thread hop and one folder fsync for many
        photos, not for each."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((Install(rel, tmp, data, mtime, sidecars, replacing), future))
        if self._batches < INSTALL_THREADS:
            self._next_batch()
        return future

    def _next_batch(self) -> None:
        batch, self._waiting = self._waiting, []
        self._batches += 1
        try:
            done = self.run(self._install_batch, [item for item, _ in batch])
        except RuntimeError as exc:  # the file threads are shut down
            self._batches -= 1
            _settle(batch, [exc] * len(batch))
            return

        def settle(outcome: asyncio.Future[list[Exception | None]]) -> None:
            self._batches -= 1
            try:
                crashed = outcome.exception()
                _settle(batch, [crashed] * len(batch) if crashed else outcome.result())
            finally:
                if self._waiting:
                    self._next_batch()

        done.add_done_callback(settle)

    def _move(self, old: str, new: str) -> None:
        source = self.path(old)
        target = self._replace(source, new)
        fsync_dir(target.parent)
        fsync_dir(source.parent)

    def _make_writing_dir(self) -> None:
        if not self._writing_ready:
            for folder in (self.writing_dir.parent, self.writing_dir):
                state_folder(folder)
            self._writing_ready = True

    def _unlock(self, path: Path, fd: int) -> None:
        path.unlink(missing_ok=True)  # while still held, so no one can lock the old file
        os.close(fd)

    @asynccontextmanager
    async def writing(self, name: str) -> AsyncIterator[bool]:
        """Whether this process alone is writing `name` (a photo, from download to install).

        Yields False at once if another process is: with several workers, one that lost its claim
        while stalled could still be at it, and two writers would tear the file."""
        path = self.writing_dir / name
        await self.run(self._make_writing_dir)
        fd: int | None = await self.run(_lock_removable, path)
        try:
            yield fd is not None
        finally:
            if fd is not None:
                await self.run(self._unlock, path, fd)

    async def move(self, old: str, new: str) -> None:
        await self.run(self._move, old, new)

    def _remove(self, rel: str) -> None:
        self.path(rel).unlink(missing_ok=True)

    async def remove(self, rel: str) -> None:
        await self.run(self._remove, rel)
