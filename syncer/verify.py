"""`syncer verify`: does the mirror hold exactly what the database says, byte for byte?

Every recorded file is re-hashed against its SHA-256; sidecars are checked to parse. `--fix`
rewrites broken or missing sidecars from the database at once and queues bad photos for the next
sync to download. Unexpected files are reported and never touched: they may be the user's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from syncer.config import Settings
from syncer.locks import Locks
from syncer.mirror.files import STATE_DIR, TRASH_DIR, MirrorFS, UnsafePath, sha256_of
from syncer.mirror.sidecar import sidecar_bytes, sidecar_path
from syncer.report import human_bytes, human_seconds
from syncer.store import MirroredFile, Store

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    bad_sidecars: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    queued: int = 0
    sidecars_fixed: int = 0
    seconds: float = 0.0
    scanned_for_unexpected: bool = True

    @property
    def matches(self) -> bool:
        return not (self.missing or self.changed or self.bad_sidecars or self.unexpected)


def _check(path: Path, size: int | None, sha256: str | None) -> str | None:
    """None when the file is what the database says; else what is wrong with it."""
    try:
        found = path.lstat()
        if stat.S_ISLNK(found.st_mode):
            return "a link, not a file"
        if not stat.S_ISREG(found.st_mode):
            return "not a regular file"
        if size is not None and found.st_size != size:
            return f"size {found.st_size}, expected {size}"
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            actual_sha = sha256_of(fd)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return "missing"
    if sha256 is not None and actual_sha != sha256:
        return "content differs (SHA-256)"
    return None


def _sidecar_ok(path: Path, item: MirroredFile) -> bool:
    """Whether the sidecar parses and says what the database says: the same photo and project, its
    file's size and SHA-256, and (unless a change is pending) the whole record, not a stub."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        same = (
            document["procore"]["id"] == item.id
            and document["project"]["id"] == item.project_id
            and document["file"] == {"size": item.size, "sha256": item.sha256}
        )
        return bool(same and (not item.current or document["procore"] == json.loads(item.raw_json)))
    except (OSError, ValueError, TypeError, KeyError):
        return False


def _walk(root: Path) -> list[str]:
    """Every file in the mirror proper (not its state folder or trash), as mirror paths."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        if Path(folder) == root:
            dirs[:] = [d for d in dirs if d not in (STATE_DIR, TRASH_DIR)]
        found.extend((Path(folder) / name).relative_to(root).as_posix() for name in files)
    return found


async def verify(
    settings: Settings, *, project_ids: Sequence[int] | None = None, fix: bool = False
) -> VerifyReport:
    report = VerifyReport(scanned_for_unexpected=project_ids is None)
    loop = asyncio.get_running_loop()
    started = loop.time()
    store = await Store.open(settings.database_url)
    fs = MirrorFS(settings.mirror.root, threads=4)
    try:
        projects = project_ids if project_ids is not None else [p.id for p in await store.status()]
        with Locks(settings.mirror.root).projects(projects):  # no sync may write while this reads
            files = await store.mirrored_files(project_ids)
            bad_ids: list[int] = []
            limit = asyncio.Semaphore(4)

            async def check(item: MirroredFile) -> None:
                async with limit:
                    try:
                        path, sidecar = fs.path(item.local_path), fs.path(sidecar_path(item.local_path))
                    except UnsafePath as exc:  # a folder on the way is a link out of the mirror
                        problem, sidecar_good = str(exc), False
                    else:
                        problem = await fs.run(_check, path, item.size, item.sha256)
                        sidecar_good = await fs.run(_sidecar_ok, sidecar, item)
                report.checked += 1
                report.bytes += item.size or 0
                if problem == "missing":
                    report.missing.append(item.local_path)
                elif problem:
                    report.changed.append(f"{item.local_path}: {problem}")
                if problem:
                    bad_ids.append(item.id)
                elif not sidecar_good:
                    report.bad_sidecars.append(sidecar_path(item.local_path))
                    if fix:
                        await _rewrite_sidecar(fs, item)
                        report.sidecars_fixed += 1
                if report.checked % 1000 == 0:
                    log.info("verified %d of %d files", report.checked, len(files))

            await asyncio.gather(*(check(item) for item in files))
            if report.scanned_for_unexpected:
                known = {p for item in files for p in (item.local_path, sidecar_path(item.local_path))}
                report.unexpected = sorted(set(await fs.run(_walk, fs.root)) - known)
            if fix and bad_ids:
                await store.requeue(bad_ids)
                report.queued = len(bad_ids)
    finally:
        fs.close()
        await store.close()
    report.seconds = loop.time() - started
    return report


async def _rewrite_sidecar(fs: MirrorFS, item: MirroredFile) -> None:
    document = sidecar_bytes(
        raw=json.loads(item.raw_json),
        project_id=item.project_id,
        project_name=item.project_name,
        size=item.size,
        sha256=item.sha256,
    )
    await fs.write_durably(sidecar_path(item.local_path), document)


def render_verify(report: VerifyReport) -> str:
    lines = [f"missing: {p}" for p in report.missing]
    lines += [f"changed: {p}" for p in report.changed]
    lines += [
        f"bad sidecar{' (rewritten)' if report.sidecars_fixed else ''}: {p}" for p in report.bad_sidecars
    ]
    lines += [f"unexpected: {p}" for p in report.unexpected[:200]]
    if len(report.unexpected) > 200:
        lines.append(f"... and {len(report.unexpected) - 200} more unexpected files")
    verdict = "the mirror matches the database" if report.matches else "the mirror does NOT match"
    lines.append(
        f"{verdict}: {report.checked} files ({human_bytes(report.bytes)}) verified in "
        f"{human_seconds(report.seconds)}; {len(report.missing)} missing, {len(report.changed)} changed, "
        f"{len(report.bad_sidecars)} bad sidecars, {len(report.unexpected)} unexpected"
        + ("" if report.scanned_for_unexpected else " (not scanned with --project)")
    )
    if report.queued:
        lines.append(f"{report.queued} photos queued: the next `syncer sync` downloads them again")
    elif report.missing or report.changed:
        lines.append("run again with --fix to queue them for download")
    return "\n".join(lines)
