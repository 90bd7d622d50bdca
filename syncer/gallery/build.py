"""Building the gallery: what changed since the last build, and nothing else.

The gallery lives in the mirror: `index.html` and `index.csv` at its root, the rest in `.gallery/`
(pages, data files, thumbnails, the script and style), a hidden folder that no layout can produce,
so it never meets a photo. A build reads the archive's index from the database, then

- makes the thumbnails that are missing (named by the original's SHA-256, so only new or replaced
  files need one, and a moved photo keeps its own) and removes those no photo in the mirror needs;
- renders each project's data and page and writes only those whose bytes differ;
- renders the root page and the CSV index the same way.

With nothing changed, a build reads, renders and compares, and writes nothing. Every file is
replaced atomically (written beside, fsynced, renamed), so a page never shows half a build, and a
planted link at a folder's name is refused, not followed. One build at a time per mirror: a second
waits for the first (it then finds little left to do).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path

from pydantic import TypeAdapter

import syncer
from syncer.config import Settings
from syncer.errors import LocalFault, local_fault
from syncer.export import render_csv
from syncer.gallery import pages
from syncer.mirror.files import STATE_DIR, fsync_dir, replace_file, state_folder, try_flock
from syncer.procore.models import photos_page
from syncer.report import human_seconds, plural
from syncer.store import ArchivedPhoto, Store

log = logging.getLogger(__name__)
GALLERY_DIR = ".gallery"
INDEX_PAGE = "index.html"
INDEX_CSV = "index.csv"
OWN_ROOT_FILES = (INDEX_PAGE, INDEX_CSV)
"""The gallery's files at the mirror's root (beside `.gallery/`): not strays for `verify`."""
STATE_FILE = "state.json"
ASSETS = ("gallery.js", "gallery.css")
PROGRESS_EVERY = 10.0
"""Seconds between progress lines while thumbnails are made."""


@dataclass
class GalleryReport:
    root: Path
    projects: int = 0
    photos: int = 0
    thumbnails: int = 0
    """Thumbnails made by this build."""
    placeholders: int = 0
    """Photos shown with a placeholder: files that cannot be decoded (HEIC, video, damaged)."""
    removed: int = 0
    """Thumbnails and pages this build removed (their photos or projects left the mirror)."""
    written: int = 0
    """Pages, data files and indexes this build wrote (0 when nothing changed)."""
    seconds: float = 0.0

    @property
    def index(self) -> Path:
        return self.root / INDEX_PAGE


@dataclass(frozen=True)
class Built:
    """What the last build made of one project."""

    digest: str
    """`Store.archive_digests`' digest of the archive its page shows."""
    card: pages.ProjectCard


SAVED_STATE = TypeAdapter(dict[int, Built])
"""Reads the saved projects strictly: a state file is ours, but anyone can edit it."""


@dataclass
class GalleryState:
    """What the last build made, in `.gallery/state.json`: for each project the digest of the
    archive its page shows and its card on the root page; the originals that cannot be decoded;
    the digest of everything `index.csv` shows. A state written by another version of the syncer
    or for another `procore.web_base` is not used: everything is rendered again."""

    made_by: str
    web_base: str
    projects: dict[int, Built] = field(default_factory=dict)
    undecodable: list[str] = field(default_factory=list)
    csv: str | None = None

    @classmethod
    def load(cls, path: Path, made_by: str, web_base: str) -> GalleryState:
        fresh = cls(made_by, web_base)
        try:
            saved = json.loads(_current(path) or b"{}")
            state = cls(
                made_by=saved["made_by"],
                web_base=saved["web_base"],
                projects=SAVED_STATE.validate_python(saved["projects"]),
                undecodable=[sha for sha in saved["undecodable"] if isinstance(sha, str)],
                csv=saved["csv"] if isinstance(saved["csv"], str) else None,
            )
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
        ):  # pydantic's ValidationError is a ValueError
            return fresh
        if (state.made_by, state.web_base) != (made_by, web_base):
            return fresh
        return state

    def digest(self, project_id: int) -> str | None:
        built = self.projects.get(project_id)
        return built.digest if built else None

    def encode(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True).encode()


class Gallery:
    """The gallery of one mirror."""

    def __init__(self, root: Path, *, web_base: str, threads: int | None = None) -> None:
        self.root = root
        self.folder = root / GALLERY_DIR
        self.web_base = web_base
        self.threads = threads or os.cpu_count() or 2

    async def build(self, store: Store, project_ids: Sequence[int] | None = None) -> GalleryReport:
        """Bring the gallery up to date with the database, for `project_ids` or every project.

        Every build renders the root page and the CSV index from all projects; `project_ids`
        limits whose thumbnails and pages are made. Only a build of every project removes the
        pages of projects that left the mirror."""
        started = time.monotonic()
        report = GalleryReport(self.root)
        async with self._lock():
            try:
                await asyncio.to_thread(self._prepare)
                with ThreadPoolExecutor(self.threads, thread_name_prefix="gallery") as pool:
                    await self._build(store, project_ids, report, pool)
            except OSError as exc:
                raise local_fault(exc, "the gallery") or LocalFault(f"the gallery: {exc}") from None
        report.seconds = time.monotonic() - started
        return report

    @contextlib.asynccontextmanager
    async def _lock(self) -> AsyncIterator[None]:
        path = self.root / STATE_DIR / "locks" / "gallery.lock"
        for folder in (path.parent.parent, path.parent):
            state_folder(folder)
        while (fd := try_flock(path)) is None:  # noqa: ASYNC110 - another process holds it: no event to await
            await asyncio.sleep(0.2)
        try:
            yield
        finally:
            os.close(fd)

    def _prepare(self) -> None:
        for folder in (self.folder, self.folder / "thumbs", self.folder / "data"):
            state_folder(folder)

    async def _build(
        self, store: Store, project_ids: Sequence[int] | None, report: GalleryReport, pool: ThreadPoolExecutor
    ) -> None:
        loop = asyncio.get_running_loop()
        archive = await store.archive_digests()
        state = await loop.run_in_executor(pool, self._load_state)
        existing = await loop.run_in_executor(pool, self._thumbnails_on_disk)
        undecodable = set(state.undecodable)
        selected = [pid for pid in (project_ids or archive) if pid in archive]
        missing = {pid: archive[pid].hashes - existing - undecodable for pid in selected}
        pages_there = await loop.run_in_executor(pool, self._projects_with_pages, set(selected))
        stale = [
            pid
            for pid in selected
            if missing[pid] or pid not in pages_there or state.digest(pid) != archive[pid].digest
        ]

        photos = await store.archived(stale) if stale else []
        by_project: dict[int, list[ArchivedPhoto]] = defaultdict(list)
        for photo in photos:
            by_project[photo.project_id].append(photo)
        todo = {p.sha256: p.local_path for p in photos if p.sha256 in missing[p.project_id]}
        made, failed = await self._make_thumbnails(todo, pool)
        existing |= made
        undecodable |= failed
        report.thumbnails = len(made)

        referenced = set().union(*(a.hashes for a in archive.values()))
        report.removed += await loop.run_in_executor(pool, self._remove_thumbnails, existing - referenced)
        existing &= referenced
        undecodable &= referenced

        for pid in stale:
            if by_project[pid]:  # else its last photo left the mirror since the digests were read
                # On the pool, like every long step: the daemon's event loop keeps serving meanwhile.
                written, card = await loop.run_in_executor(
                    pool, self._project, pid, by_project[pid], existing
                )
                report.written += written
                state.projects[pid] = Built(archive[pid].digest, card)
        for pid in selected:
            report.photos += archive[pid].photos
            report.placeholders += len(archive[pid].hashes - existing)
        report.projects = len(selected)
        if project_ids is None:
            report.removed += await loop.run_in_executor(pool, self._remove_pages, set(archive))
            state.projects = {pid: entry for pid, entry in state.projects.items() if pid in archive}

        cards = [built.card for pid, built in state.projects.items() if pid in archive]
        root_files = [
            (f"../{INDEX_PAGE}", pages.index_page(cards, GALLERY_DIR, has_csv=True)),
            *((name, files("syncer.gallery").joinpath("assets", name).read_bytes()) for name in ASSETS),
        ]
        digests = sorted((pid, a.digest) for pid, a in archive.items())
        csv_of = hashlib.sha256(json.dumps([self.web_base, digests]).encode()).hexdigest()
        if state.csv != csv_of or not (self.root / INDEX_CSV).is_file():
            everything = await store.archived()
            csv = await loop.run_in_executor(pool, render_csv, everything, self.web_base)
            root_files.append((f"../{INDEX_CSV}", csv.encode("utf-8")))
            state.csv = csv_of
        report.written += await loop.run_in_executor(pool, self._write_changed, root_files)
        state.undecodable = sorted(undecodable)
        # Last: a build stopped before this point leaves the old state, and the next one redoes the work.
        await loop.run_in_executor(pool, self._write_changed, [(STATE_FILE, state.encode())])

    def _project(
        self, project_id: int, photos: list[ArchivedPhoto], thumbs: set[str]
    ) -> tuple[int, pages.ProjectCard]:
        """Render a project's data and page, write those that changed; how many, and its card."""
        ordered = pages.newest_first(photos)
        name = ordered[0].project_name
        data = pages.project_data(project_id, name, photos_page(self.web_base, project_id), ordered, thumbs)
        page = pages.project_page(project_id, name)
        documents = [(pages.project_data_name(project_id), data), (pages.project_page_name(project_id), page)]
        return self._write_changed(documents), pages.card(project_id, ordered, thumbs)

    async def _make_thumbnails(
        self, todo: dict[str, str], pool: ThreadPoolExecutor
    ) -> tuple[set[str], set[str]]:
        """Make the thumbnails of `todo` (SHA-256 → mirror path) on the pool's threads (Pillow
        decodes without the GIL); return the SHA-256s made and those that could not be decoded."""
        made: set[str] = set()
        failed: set[str] = set()
        if not todo:
            return made, failed
        loop = asyncio.get_running_loop()
        folders: set[str] = set()
        last = time.monotonic()
        pending = {loop.run_in_executor(pool, self._make_one, sha, path): sha for sha, path in todo.items()}
        try:
            for done in asyncio.as_completed(pending):
                sha, ok = await done
                (made if ok else failed).add(sha)
                if ok:
                    folders.add(pages.thumb_path(sha).rsplit("/", 1)[0])
                if time.monotonic() - last >= PROGRESS_EVERY:
                    last = time.monotonic()
                    log.info(
                        "gallery: %s of %s thumbnails made", f"{len(made) + len(failed):,}", f"{len(todo):,}"
                    )
        finally:
            for future in pending:
                future.cancel()
            for folder in folders:  # what was renamed into them survives a crash from here on
                with contextlib.suppress(OSError):
                    fsync_dir(self.folder / folder)
        return made, failed

    def _make_one(self, sha: str, path: str) -> tuple[str, bool]:
        from syncer.gallery.thumbs import thumbnail  # Pillow: paid for only by a build that decodes

        data = thumbnail(self.root / path)
        if data is None:
            return sha, False
        target = self.folder / pages.thumb_path(sha)
        state_folder(target.parent)
        replace_file(target, data, sync_folder=False)
        return sha, True

    def _thumbnails_on_disk(self) -> set[str]:
        """The SHA-256s of the originals that have a thumbnail (each is named by its own)."""
        found: set[str] = set()
        thumbs = self.folder / "thumbs"
        for sub in os.scandir(thumbs):
            if sub.is_dir(follow_symlinks=False):
                found.update(e.name[:-4] for e in os.scandir(sub.path) if e.name.endswith(".jpg"))
        return found

    def _load_state(self) -> GalleryState:
        made_by = f"{pages.DATA_VERSION}:{syncer.__version__}"
        return GalleryState.load(self.folder / STATE_FILE, made_by, self.web_base)

    def _remove_thumbnails(self, keys: Iterable[str]) -> int:
        removed = 0
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / pages.thumb_path(key)).unlink()
                removed += 1
        return removed

    def _remove_pages(self, kept: set[int]) -> int:
        removed = 0
        for path in [*self.folder.glob("project-*.html"), *self.folder.glob("data/project-*.js")]:
            ident = path.name.removeprefix("project-").split(".", 1)[0]
            if ident.isdigit() and int(ident) not in kept:
                path.unlink()
                removed += 1
        return removed

    def _projects_with_pages(self, candidates: set[int]) -> list[int]:
        return [pid for pid in candidates if (self.folder / pages.project_page_name(pid)).is_file()]

    def _write_changed(self, documents: list[tuple[str, bytes]]) -> int:
        """Replace each document (a path under the gallery folder) whose bytes differ; how many."""
        written = 0
        for name, data in documents:
            path = self.folder / name
            if _current(path) == data:
                continue
            try:
                replace_file(path, data)
            except IsADirectoryError:
                raise LocalFault(
                    f"{path.resolve()} is a folder, where the gallery keeps its {path.name}: move it away "
                    "(or change mirror.layout so no project folder takes that name) and run again"
                ) from None
            written += 1
        return written


def _current(path: Path) -> bytes | None:
    """A file's bytes, or None if it is missing, a link or not a file (a planted link is replaced)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.EISDIR, errno.ENOTDIR):
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    finally:
        os.close(fd)


def gallery_of(settings: Settings) -> Gallery:
    return Gallery(settings.mirror.root, web_base=settings.procore.web_base)


async def build_gallery(settings: Settings, project_ids: Sequence[int] | None = None) -> GalleryReport:
    """`syncer gallery`: bring the gallery up to date from the database alone (no credentials)."""
    store = await Store.open(settings.database_url)
    try:
        return await gallery_of(settings).build(store, project_ids)
    finally:
        await store.close()


def render_report(report: GalleryReport) -> str:
    placeholders = f" ({report.placeholders:,} shown with a placeholder)" if report.placeholders else ""
    changed = (
        f"{plural(report.thumbnails, 'thumbnail')} made, {report.removed:,} removed, "
        f"{plural(report.written, 'file')} written"
        if report.thumbnails or report.removed or report.written
        else "nothing changed"
    )
    return (
        f"gallery: {plural(report.projects, 'project')}, {plural(report.photos, 'photo')}{placeholders}; "
        f"{changed} in {human_seconds(report.seconds)}\nopen {report.index.absolute().as_uri()}"
    )
