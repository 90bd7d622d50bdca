"""File locks that keep runs apart, under the mirror's `.syncer/` folder.

One lock per project: a cron `syncer sync` and the daemon never work on the same project at once,
and a second `syncer sync` stops at once (exit 4) instead of waiting. One lock for the daemon's
whole life: a second daemon on the same mirror refuses to start. `flock` locks vanish with their
process, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path

from syncer.errors import LockedError, local_fault
from syncer.mirror.files import STATE_DIR, state_folder, try_flock
from syncer.words import human_time

log = logging.getLogger(__name__)


def _try_lock(path: Path) -> int | None:
    """An open, exclusively locked descriptor for `path`, or None if another process holds it. The
    file says who holds it (`holder`): pid, host and since when. A lock this user may not open
    (another user's run made it) is one line naming it and its owner."""
    try:
        for folder in (path.parent.parent, path.parent):  # .syncer and .syncer/locks
            state_folder(folder)
        fd = try_flock(path)
    except OSError as exc:
        raise local_fault(exc, "the lock") or exc from None
    if fd is None:
        return None
    since = datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()} {since}\n".encode())
    return fd


def holder(path: Path) -> str:
    """Who holds the lock at `path`, as its holder wrote it: `pid 812 on nas1 since 2026-12-08
    10:31:02 +01:00` (in this machine's zone). A lock on a share may be held from another host."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            words = os.read(fd, 256).decode("utf-8", "replace").split()
        finally:
            os.close(fd)
        pid, host, since = words
        when = human_time(datetime.fromisoformat(since))
    except (OSError, ValueError):  # gone meanwhile, or written by an older syncer (a pid alone)
        return "a process that does not say which"
    return f"pid {pid} on {host} since {when}" if pid.isdigit() else "a process that does not say which"


@contextmanager
def _held(path: Path, busy: str) -> Iterator[None]:
    fd = _try_lock(path)
    if fd is None:
        raise LockedError(
            f"{busy}: held by {holder(path)}. Nothing was written here; waiting is harmless: run again "
            "once it is done"
        )
    try:
        yield
    finally:
        os.close(fd)


class Locks:
    def __init__(self, mirror_root: Path) -> None:
        self.folder = mirror_root / STATE_DIR / "locks"

    def _project_path(self, project_id: int) -> Path:
        return self.folder / f"project-{project_id}.lock"

    @contextmanager
    def daemon(self) -> Iterator[None]:
        with _held(
            self.folder / "daemon.lock", f"a syncer daemon is already running on this mirror ({self.folder})"
        ):
            yield

    @contextmanager
    def projects(self, project_ids: Sequence[int]) -> Iterator[None]:
        """All of the projects' locks, or LockedError naming the first one that is busy."""
        with ExitStack() as stack:
            for project_id in project_ids:
                stack.enter_context(
                    _held(
                        self._project_path(project_id),
                        f"another syncer is already working on project {project_id} in this mirror",
                    )
                )
            yield

    @asynccontextmanager
    async def waiting(self, name: str) -> AsyncIterator[None]:
        """The lock `name`, waited for without blocking the event loop: for work that must not run
        twice at once but may queue (gallery builds, refreshes of the saved Procore sign-in)."""
        path = self.folder / f"{name}.lock"
        if (fd := _try_lock(path)) is None:
            log.info("waiting for the %s lock, held by %s (waiting is harmless)", name, holder(path))
        while fd is None:  # another process holds it: there is no event to await
            await asyncio.sleep(0.1)
            fd = _try_lock(path)
        try:
            yield
        finally:
            os.close(fd)

    @contextmanager
    def try_project(self, project_id: int) -> Iterator[bool]:
        """The project's lock if it is free (yields True), else yields False without waiting."""
        fd = _try_lock(self._project_path(project_id))
        try:
            yield fd is not None
        finally:
            if fd is not None:
                os.close(fd)
