"""`syncer verify`: does the mirror hold exactly what the database says, byte for byte?

Every recorded file is re-hashed against its SHA-256; sidecars are checked to be there and to say
what the database says. `--fix` writes missing or bad sidecars from the database at once and queues
bad photos for the next sync to download. Unexpected files (strays: the database knows nothing of
them) may be the user's, so they are only reported, unless `--move-strays` asks to move them to
`.trash/strays/<date>/` under their own paths, where nothing counts them any more.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import make_url

from syncer.config import Settings
from syncer.errors import LockedError, MirrorMissing
from syncer.gallery import GALLERY_DIR
from syncer.gallery import OWN_ROOT_FILES as GALLERY_ROOT_FILES
from syncer.locks import Locks
from syncer.log import terminal_lines
from syncer.mirror.files import STATE_DIR, TRASH_DIR, MirrorFS, UnsafePath, check_owner, sha256_of, sharing_of
from syncer.mirror.identity import ensure_mirror
from syncer.mirror.sidecar import Sidecars
from syncer.procore.models import Photo
from syncer.report import human_bytes, human_seconds
from syncer.store import MirroredFile, Store
from syncer.store.shared import team_status
from syncer.words import plural

log = logging.getLogger(__name__)
CHECKERS = 4
"""Files hashed at once: enough to keep a disk busy. A task for each file held a million tasks at a
million photos before the first was hashed."""
STRAYS_DIR = f"{TRASH_DIR}/strays"
"""Where `--move-strays` puts unexpected files: in the trash, beside its dated folders of deleted
photos, so whoever empties the trash finds them too."""
SHOWN = 200
"""Unexpected files listed one by one; the rest are counted."""


@dataclass
class VerifyReport:
    root: Path
    checked: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    missing_sidecars: list[str] = field(default_factory=list)
    bad_sidecars: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    queued: int = 0
    sidecars_fixed: int = 0
    strays_folder: Path | None = None
    """Where this run moved unexpected files (`--move-strays`), if it moved any."""
    strays_moved: list[str] = field(default_factory=list)
    strays_not_moved: dict[str, str] = field(default_factory=dict)
    """Unexpected files `--move-strays` could not move, with why."""
    seconds: float = 0.0
    scanned_for_unexpected: bool = True

    @property
    def found_nothing(self) -> bool:
        """Whether the mirror matched before this run changed anything."""
        sidecars = self.missing_sidecars or self.bad_sidecars
        return not (self.missing or self.changed or sidecars or self.unexpected)

    @property
    def sidecars_left(self) -> int:
        return len(self.missing_sidecars) + len(self.bad_sidecars) - self.sidecars_fixed

    @property
    def strays_left(self) -> int:
        return len(self.unexpected) - len(self.strays_moved)

    @property
    def matches(self) -> bool:
        """Whether the mirror matches now, once what this run fixed is fixed (a queued photo is
        not: the next sync downloads it)."""
        return not (self.missing or self.changed or self.sidecars_left or self.strays_left)


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


def _read_sidecar(path: Path) -> bytes | str:
    """A sidecar's bytes, or why there are none: "missing" when nothing is there, "bad" for a link
    or other non-file (never read through) or one that cannot be read."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return "bad"
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as file:
            return file.read()
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "bad"


def _sidecar_problem(path: Path, item: MirroredFile) -> str | None:
    """None when the JSON sidecar is a file that parses and says what the database says: the same
    photo and project, its file's size and SHA-256, and (unless a change is pending) the whole
    record, not a stub; else why not (see `_read_sidecar`), or "bad"."""
    held = _read_sidecar(path)
    if isinstance(held, str):
        return held
    try:
        document = json.loads(held)
        same = (
            document["procore"]["id"] == item.id
            and document["project"]["id"] == item.project_id
            and document["file"] == {"size": item.size, "sha256": item.sha256}
        )
        good = same and (not item.current or document["procore"] == json.loads(item.raw_json))
    except (ValueError, TypeError, KeyError):
        return "bad"
    return None if good else "bad"


SYNCER_ROOT_NAMES = frozenset({STATE_DIR, TRASH_DIR, GALLERY_DIR, *GALLERY_ROOT_FILES})
"""What the syncer keeps at the mirror's root besides photos: its state, the trash, the gallery."""


def _walk(root: Path, own: frozenset[Path] = frozenset()) -> list[str]:
    """Every file in the mirror proper, as mirror paths: not the state folder, the trash or the
    gallery (nor a file or link at their names), not the syncer's `own` files (its config or
    SQLite database kept inside the mirror), and no link to a folder followed."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        if Path(folder) == root:
            dirs[:] = [d for d in dirs if d not in SYNCER_ROOT_NAMES]
        found.extend(
            (Path(folder) / name).relative_to(root).as_posix()
            for name in files
            if (Path(folder) != root or name not in SYNCER_ROOT_NAMES) and Path(folder) / name not in own
        )
    return found


def _own_files(settings: Settings, config_path: Path | None) -> frozenset[Path]:
    """The files the syncer itself keeps, wherever they are: its config and a SQLite database with
    its journals. A mirror root that holds them must never see them as strays."""
    own = {_real(config_path)} if config_path is not None else set()
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        database = _real(Path(url.database))
        own |= {database.with_name(database.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")}
    return frozenset(own)


def _real(path: Path) -> Path:
    """`path` as the walk of the (resolved) mirror root names it: its folder resolved, not itself."""
    return path.absolute().parent.resolve() / path.name


def _new_strays_folder(root: Path, day: str) -> str:
    """A folder under `.trash/strays/` that no earlier move used, so no earlier stray is ever
    replaced: the date, else the date and -2, -3, ..."""
    folder, n = f"{STRAYS_DIR}/{day}", 1
    while os.path.lexists(root / folder):
        n += 1
        folder = f"{STRAYS_DIR}/{day}-{n}"
    return folder


async def _move_strays(fs: MirrorFS, report: VerifyReport) -> None:
    """Move each unexpected file to a new folder under `.trash/strays/`, keeping its mirror path,
    with the mirror's own durable move: a link on either side that leads out of the mirror is
    refused, never followed, and that file stays where it is."""
    if not report.unexpected:
        return
    folder = await fs.run(_new_strays_folder, fs.root, datetime.now(UTC).strftime("%Y-%m-%d"))
    for rel in report.unexpected:
        try:
            await fs.move(rel, f"{folder}/{rel}")
        except UnsafePath as exc:
            report.strays_not_moved[rel] = str(exc)
        except OSError as exc:
            report.strays_not_moved[rel] = exc.strerror or str(exc)
        else:
            report.strays_moved.append(rel)
    if report.strays_moved:
        report.strays_folder = fs.root / folder


def _paths(fs: MirrorFS, files: Sequence[MirroredFile]) -> set[str]:
    return {p for item in files for p in (item.local_path, *fs.sidecars.paths(item.local_path))}


async def _unexpected(
    store: Store, fs: MirrorFS, files: Sequence[MirroredFile], own: frozenset[Path]
) -> list[str]:
    """The files in the mirror the database does not know, as sorted mirror paths. The database
    is asked again once the walk has found any: a photo installed and recorded while this verify
    ran (by a worker sharing a PostgreSQL database, which takes no project lock, or by a sync of a
    project new since this began) is no stray, and must not be moved aside as one."""
    found = set(await fs.run(_walk, fs.root, own)) - _paths(fs, files)
    if found:
        found -= _paths(fs, await store.mirrored_files())
    return sorted(found)


def _documents(fs: MirrorFS, item: MirroredFile) -> list[tuple[str, bytes]]:
    """What the photo's sidecars should hold, from the record in the database."""
    return fs.sidecars.documents(
        item.local_path,
        Photo.from_api(json.loads(item.raw_json)),
        project_id=item.project_id,
        project_name=item.project_name,
        size=item.size,
        sha256=item.sha256,
    )


def _xmp_problem(path: Path, wanted: bytes, item: MirroredFile) -> str | None:
    """None when the XMP sidecar is a file holding what the record gives (its bytes depend only on
    the record; with a change pending, any file will do until the next sync rewrites it)."""
    held = _read_sidecar(path)
    if isinstance(held, str):
        return held
    return None if held == wanted or not item.current else "bad"


def _sidecar_problems(
    sidecars: list[tuple[str, Path, bytes]], item: MirroredFile
) -> list[tuple[str, str, bytes]]:
    """(mirror path, problem, what it should hold) of each of the photo's sidecars that is not
    right, the JSON one first (on a mirror thread: one hop for all of them)."""
    (json_rel, json_path, json_wanted), *others = sidecars
    found = [(json_rel, _sidecar_problem(json_path, item), json_wanted)]
    found += [(rel, _xmp_problem(path, wanted, item), wanted) for rel, path, wanted in others]
    return [(rel, problem, wanted) for rel, problem, wanted in found if problem is not None]


async def _inspect(fs: MirrorFS, item: MirroredFile) -> tuple[str | None, list[tuple[str, str, bytes]]]:
    """What is wrong with a recorded photo's file, else with its sidecars (see `_sidecar_problems`):
    a bad photo's sidecars are written with it by the next sync."""
    try:
        path = fs.path(item.local_path)
        sidecars = [(rel, fs.path(rel), wanted) for rel, wanted in _documents(fs, item)]
    except UnsafePath as exc:  # a folder on the way is a link out of the mirror
        return str(exc), []
    problem = await fs.run(_check, path, item.size, item.sha256)
    return problem, [] if problem else await fs.run(_sidecar_problems, sidecars, item)


async def verify(
    settings: Settings,
    *,
    project_ids: Sequence[int] | None = None,
    fix: bool = False,
    move_strays: bool = False,
    config_path: Path | None = None,
) -> VerifyReport:
    """Check the mirror against the database. `fix` writes missing or bad sidecars and queues bad
    photos; `move_strays` moves unexpected files aside (they are only looked for in the whole
    mirror, without `project_ids`); `config_path` is never one of them."""
    report = VerifyReport(root=settings.mirror.root, scanned_for_unexpected=project_ids is None)
    loop = asyncio.get_running_loop()
    started = loop.time()
    if not await asyncio.to_thread(settings.mirror.root.is_dir):  # first: the likelier mistake
        raise MirrorMissing(
            f"mirror.root {settings.mirror.root} does not exist or is not a folder: nothing to verify "
            "(is a disk or network share not mounted?)"
        )
    check_owner(settings.mirror.root)  # it takes the projects' locks, and --fix writes
    store = await Store.open(settings.database_url, create=False)
    fs = MirrorFS(
        settings.mirror.root,
        threads=4,
        sidecars=Sidecars(settings.mirror.xmp, settings.procore.web_base),
        sharing=sharing_of(settings.mirror.group),
    )
    try:
        await ensure_mirror(store, settings.mirror.root, create=False)
        if move_strays:
            await _alone(store)
        projects = project_ids if project_ids is not None else [p.id for p in await store.status()]
        with Locks(settings.mirror.root).projects(projects):  # no sync may write while this reads
            files = await store.mirrored_files(project_ids)
            bad_ids: list[int] = []

            async def check(item: MirroredFile) -> None:
                problem, sidecar_problems = await _inspect(fs, item)
                report.checked += 1
                report.bytes += item.size or 0
                if problem == "missing":
                    report.missing.append(item.local_path)
                elif problem:
                    report.changed.append(f"{item.local_path}: {problem}")
                if problem:
                    bad_ids.append(item.id)  # the next sync writes the sidecar with the photo
                for rel, sidecar_problem, _ in sidecar_problems:
                    found = report.missing_sidecars if sidecar_problem == "missing" else report.bad_sidecars
                    found.append(rel)
                if fix and sidecar_problems:
                    await fs.write_durably([(rel, wanted) for rel, _, wanted in sidecar_problems])
                    report.sidecars_fixed += len(sidecar_problems)
                if report.checked % 1000 == 0:
                    log.info("verified %s of %s", f"{report.checked:,}", plural(len(files), "file"))

            await _each(files, check)
            if report.scanned_for_unexpected:
                report.unexpected = await _unexpected(store, fs, files, _own_files(settings, config_path))
                if move_strays:
                    await _move_strays(fs, report)
            if fix and bad_ids:
                await store.requeue(bad_ids)
                report.queued = len(bad_ids)
    finally:
        fs.close()
        await store.close()
    report.seconds = loop.time() - started
    return report


async def _each(files: Sequence[MirroredFile], check: Callable[[MirroredFile], Awaitable[None]]) -> None:
    """`check` every file, `CHECKERS` at a time: a bounded pool, not a task per file. The first
    failure cancels the rest."""
    queue = iter(files)  # shared: each file goes to the one worker that takes it next

    async def worker() -> None:
        for item in queue:
            await check(item)

    async with asyncio.TaskGroup() as workers:
        for _ in range(CHECKERS):
            workers.create_task(worker())


async def _alone(store: Store) -> None:
    """Refuse to move strays while a worker sharing this PostgreSQL database is live: it takes no
    project lock, and records what it installed up to seconds later, so a photo it has just put in
    place would look like a stray. (With SQLite, the project locks keep syncs out.)"""
    if store.engine.dialect.name != "postgresql":
        return
    live = [w for w in (await team_status(store)).workers if w.live]
    if live:
        raise LockedError(
            f"--move-strays needs the mirror to itself, and {plural(len(live), 'syncer worker')} "
            f"{'is' if len(live) == 1 else 'are'} live on this database (`syncer status` lists "
            f"{'it' if len(live) == 1 else 'them'}): run it when they have stopped"
        )


def render_verify(report: VerifyReport) -> str:
    fixed = report.sidecars_fixed > 0
    lines = [f"missing: {p}" for p in report.missing]
    lines += [f"changed: {p}" for p in report.changed]
    lines += [f"missing sidecar{' (written)' if fixed else ''}: {p}" for p in report.missing_sidecars]
    lines += [f"bad sidecar{' (rewritten)' if fixed else ''}: {p}" for p in report.bad_sidecars]
    moved = set(report.strays_moved)
    for p in report.unexpected[:SHOWN]:
        if p in moved:
            lines.append(f"unexpected (moved aside): {p}")
        elif p in report.strays_not_moved:
            lines.append(f"unexpected (not moved: {report.strays_not_moved[p]}): {p}")
        else:
            lines.append(f"unexpected: {p}")
    if len(report.unexpected) > SHOWN:
        lines.append(f"... and {plural(len(report.unexpected) - SHOWN, 'more unexpected file')}")
    if report.found_nothing:
        verdict = "the mirror matches the database"
    elif fixed or moved:
        verdict = "the mirror did NOT match"
    else:
        verdict = "the mirror does NOT match"
    lines.append(
        f"{verdict}: {plural(report.checked, 'file')} ({human_bytes(report.bytes)}) verified in "
        f"{human_seconds(report.seconds)}; {len(report.missing)} missing, {len(report.changed)} changed, "
        f"{plural(len(report.missing_sidecars), 'missing sidecar')}, "
        f"{plural(len(report.bad_sidecars), 'bad sidecar')}, {len(report.unexpected)} unexpected"
        + ("" if report.scanned_for_unexpected else " (not scanned with --project)")
    )
    if report.found_nothing:
        return terminal_lines(lines)
    lines += _done_lines(report) + _to_do_lines(report)
    if report.matches:
        lines.append("the mirror matches the database now")
    return terminal_lines(lines)


def _done_lines(report: VerifyReport) -> list[str]:
    """What this run changed: sidecars written, strays moved."""
    lines = []
    if report.sidecars_fixed:
        lines.append(f"fixed: {plural(report.sidecars_fixed, 'sidecar')} written from the database")
    if report.strays_folder is not None:
        lines.append(
            f"moved: {plural(len(report.strays_moved), 'unexpected file')} to {report.strays_folder}/ "
            "under the same paths"
        )
    return lines


def _to_do_lines(report: VerifyReport) -> list[str]:
    """What is still wrong and what to do about it; `--fix` is offered only for what it fixes."""
    lines = []
    if report.queued:
        lines.append(
            f"{plural(report.queued, 'photo')} queued: "
            f"the next `syncer sync` downloads {_them(report.queued)} again"
        )
    fixable = []
    if (photos := len(report.missing) + len(report.changed)) and not report.queued:
        fixable.append(f"queue {plural(photos, 'missing or changed photo')} for the next `syncer sync`")
    if report.sidecars_left:
        fixable.append(f"write {plural(report.sidecars_left, 'sidecar')} from the database")
    if fixable:
        lines.append(f"run again with --fix to {' and '.join(fixable)}")
    if stuck := len(report.strays_not_moved):
        lines.append(
            f"{plural(stuck, 'unexpected file')} could not be moved (see why above): "
            f"move {_them(stuck)} out of the mirror yourself"
        )
    elif left := report.strays_left:
        lines.append(
            f"{plural(left, 'unexpected file')}: the database knows nothing of {_them(left)}; move "
            f"{_them(left)} out of the mirror, or run again with --move-strays to move {_them(left)} to "
            f"{report.root / STRAYS_DIR}/<date>/ under the same paths"
        )
    return lines


def _them(count: int) -> str:
    return "it" if count == 1 else "them"
