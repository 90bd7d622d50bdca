"""This process as one of several workers sharing a PostgreSQL database and a mirror.

A worker joins with a fresh id, then renews its row every third of `database.lease_ttl`; the
renewal keeps its project leases and download claims alive too (see `store/shared.py`). If the
database cannot be reached for long enough, the others will soon treat this worker as dead and
take its work, so it stops itself first: `check()` fails once its last renewal is older than
three quarters of the lease time, and it is asked before every claim, page and download.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from syncer.errors import FatalError
from syncer.mirror.files import STATE_DIR, open_new, state_folder
from syncer.store import Downloaded, Failed, Store
from syncer.store.shared import FORGET_AFTER, SharedState

log = logging.getLogger(__name__)

SAFE_PART = 0.75
"""Share of the lease time after the last renewal during which this worker still trusts it holds
its leases; the rest is margin for clocks and a slow answer."""


class LeaseLost(FatalError):
    """The worker could not renew its lease in time; others may already do its work."""


def new_worker_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()[:20])
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Membership:
    def __init__(self, store: Store, *, ttl: float, mirror_root: Path) -> None:
        self.store = store
        self.ttl = ttl
        self.markers = mirror_root / STATE_DIR / "workers"
        """One file per worker that joined, written before it joins: a live worker whose file is
        not here writes to another folder, and the mirror would be split between them."""
        self.shared = SharedState(store, worker_id=new_worker_id(), ttl=ttl)
        self._valid_until = 0.0
        self._beat: asyncio.Task[None] | None = None
        self._rejoining = asyncio.Lock()
        self.lost = False
        self.doing: dict[int, str] = {}
        """What this worker does per project (listing, downloading), for `syncer status`."""
        self.downloaded = 0
        self.bytes = 0
        self.failed = 0

    @property
    def worker_id(self) -> str:
        return self.shared.worker_id

    async def join(self) -> None:
        started = time.monotonic()
        self._mark()
        try:
            await self.shared.join(socket.gethostname(), os.getpid())
        except BaseException:
            (self.markers / self.worker_id).unlink(missing_ok=True)
            raise
        self._valid_until = started + self.ttl * SAFE_PART
        self.lost = False
        self._beat = asyncio.create_task(self._heartbeats(), name="heartbeat")
        log.info("joined as worker %s (%d live)", self.worker_id, await self.shared.live_count())
        await self._check_shared_mirror()

    def _mark(self) -> None:
        for folder in (self.markers.parent, self.markers):
            state_folder(folder)
        now = time.time()
        for old in self.markers.iterdir():
            with contextlib.suppress(OSError):
                if now - old.lstat().st_mtime > FORGET_AFTER.total_seconds():
                    old.unlink()
        with os.fdopen(open_new(self.markers / self.worker_id), "w", encoding="utf-8") as marker:
            marker.write(f"{socket.gethostname()} {os.getpid()}\n")

    async def _check_shared_mirror(self) -> None:
        others = [(wid, host) for wid, host in await self.shared.live_members() if wid != self.worker_id]
        strangers = [f"{wid} on {host}" for wid, host in others if not (self.markers / wid).exists()]
        if strangers:
            log.error(
                "worker %s shares the database with %s %s, but not the mirror folder %s: every "
                "worker must use the same (shared) folder, or the mirror is split between them",
                self.worker_id,
                "worker" if len(strangers) == 1 else "workers",
                ", ".join(strangers),
                self.markers.parent.parent,
            )

    async def leave(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
            self._beat = None
        with contextlib.suppress(SQLAlchemyError, OSError):
            await self.shared.leave(downloaded=self.downloaded, bytes_=self.bytes, failed=self.failed)
        (self.markers / self.worker_id).unlink(missing_ok=True)

    async def rejoin(self) -> None:
        """Start over under a new id if this worker's lease was lost (the daemon goes on). Its
        project jobs may all find out at once; only the first starts over."""
        async with self._rejoining:
            if not self.lost:
                return
            await self.leave()
            self.shared = SharedState(self.store, worker_id=new_worker_id(), ttl=self.ttl)
            self.doing.clear()
            self.downloaded = self.bytes = self.failed = 0
            await self.join()

    def check(self) -> None:
        """Fail unless this worker surely still holds its leases and claims."""
        if self.lost or time.monotonic() > self._valid_until:
            self.lost = True
            raise LeaseLost(
                f"worker {self.worker_id} could not renew its lease within {self.ttl:g} s "
                "(database.lease_ttl); it stopped so that the other workers can take over its work"
            )

    def count(self, result: object) -> None:
        """Add one download result to this worker's totals, which `syncer status` shows."""
        if isinstance(result, Downloaded):
            self.downloaded += 1
            self.bytes += result.size
        elif isinstance(result, Failed):
            self.failed += 1

    def activity(self) -> str:
        return "; ".join(f"{what} project {pid}" for pid, what in sorted(self.doing.items())) or "idle"

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            sent = time.monotonic()
            try:
                alive = await self.shared.heartbeat(
                    activity=self.activity(),
                    downloaded=self.downloaded,
                    bytes_=self.bytes,
                    failed=self.failed,
                )
            except (SQLAlchemyError, OSError) as exc:
                log.warning("could not renew this worker's lease (trying again): %s", exc)
                continue
            if not alive:
                self.lost = True
                log.error("worker %s was declared dead by the others; it stops its work", self.worker_id)
                return
            self._valid_until = sent + self.ttl * SAFE_PART

    @asynccontextmanager
    async def project(self, project_id: int) -> AsyncIterator[bool]:
        """The project's lease if it is free (yields True), else yields False without waiting."""
        self.check()
        if not await self.shared.try_lease(project_id):
            yield False
            return
        try:
            yield True
        finally:
            self.doing.pop(project_id, None)
            with contextlib.suppress(SQLAlchemyError, OSError):
                await self.shared.release_lease(project_id)


@asynccontextmanager
async def membership(store: Store, *, ttl: float, mirror_root: Path) -> AsyncIterator[Membership]:
    member = Membership(store, ttl=ttl, mirror_root=mirror_root)
    await member.join()
    try:
        yield member
    finally:
        await member.leave()
