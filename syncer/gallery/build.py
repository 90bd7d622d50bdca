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
import hashlib
import json
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter

import syncer
from syncer.config import Settings
from syncer.errors import LocalFault, local_fault
from syncer.export import render_csv
from syncer.gallery import pages
from syncer.gallery.folder import Folder
from syncer.locks import Locks
from syncer.mirror.files import Sharing, check_owner, sharing_of
from syncer.mirror.identity import ensure_mirror
from syncer.procore.models import photos_page
from syncer.report import human_seconds
from syncer.store import ArchiveDigest, ArchivedPhoto, Store
from syncer.words import plural

T = TypeVar("T")
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
    pages: int = 0
    """Project pages this build wrote (the page, its data or both changed)."""
    seconds: float = 0.0

    @property
    def index(self) -> Path:
        return self.root / INDEX_PAGE


@dataclass(frozen=True)
class Built:
    """What the last build made of one project."""

    digest: str
    """`Store.archive_digests`' digest of the archive its page shows ("" when only its card is known)."""
    card: pages.ProjectCard
    files: dict[str, str] = field(default_factory=dict)
    """The SHA-256 of each file written for it (its data and page), to notice one damaged or lost."""


@dataclass
class GalleryState:
    """What the last build made, in `.gallery/state.json`: for each project the digest of the
    archive its page shows, its card on the root page and its files' hashes; the originals that
    cannot be decoded; the digest of everything `index.csv` shows and of the file itself. A state
    written by another version of the syncer or for another `procore.web_base` is not used:
    everything is rendered again."""

    made_by: str
    web_base: str
    projects: dict[int, Built] = field(default_factory=dict)
    undecodable: list[str] = field(default_factory=list)
    csv: str | None = None
    csv_file: str | None = None

    @classmethod
    def load(cls, raw: bytes | None, made_by: str, web_base: str) -> GalleryState:
        """The saved state, read strictly (it is ours, but anyone can edit it), or a fresh one."""
        try:
            state = SAVED_STATE.validate_json(raw or b"")
        except ValueError:  # pydantic's ValidationError is one
            return cls(made_by, web_base)
        return state if (state.made_by, state.web_base) == (made_by, web_base) else cls(made_by, web_base)

    def digest(self, project_id: int) -> str | None:
        built = self.projects.get(project_id)
        return built.digest if built else None

    def encode(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True).encode()


SAVED_STATE = TypeAdapter(GalleryState)


def _sha(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


class Gallery:
    """The gallery of one mirror."""

    def __init__(
        self, root: Path, *, web_base: str, threads: int | None = None, sharing: Sharing | None = None
    ) -> None:
        self.root = root
        self.web_base = web_base
        self.threads = threads or os.cpu_count() or 2
        self.sharing = sharing

    async def build(self, store: Store, project_ids: Sequence[int] | None = None) -> GalleryReport:
        """Bring the gallery up to date with the database, for `project_ids` or every project.

        Every build renders the root page and the CSV index from all projects; `project_ids`
        limits whose thumbnails and pages are made. Only a build of every project removes the
        pages of projects that left the mirror."""
        started = time.monotonic()
        report = GalleryReport(self.root)
        async with Locks(self.root).waiting("gallery"):
            try:
                with Build(self.root, self.web_base, self.threads, self.sharing) as build:
                    await build.run(store, project_ids, report)
            except OSError as exc:
                raise local_fault(exc, "the gallery") or LocalFault(f"the gallery: {exc}") from None
        report.seconds = time.monotonic() - started
        return report


class Build:
    """One build: the gallery's folders held open (`Folder`), the threads that decode and write."""

    def __init__(self, root: Path, web_base: str, threads: int, sharing: Sharing | None) -> None:
        self.root_path = root
        self.web_base = web_base
        self.threads = threads
        self.sharing = sharing

    def __enter__(self) -> Build:
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gallery")
        self.root = Folder.open(self.root_path, self.sharing)
        self.opened = [self.root]
        self.gallery = self._open(self.root, GALLERY_DIR)
        self.data = self._open(self.gallery, "data")
        self.thumbs = self._open(self.gallery, "thumbs")
        self._thumb_folders: dict[str, Folder] = {}
        self._thumb_lock = threading.Lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for folder in self.opened:
            folder.close()

    def _open(self, parent: Folder, name: str) -> Folder:
        folder = parent.sub(name)
        self.opened.append(folder)
        return folder

    def _in_pool(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """On the build's threads, like every long step: the daemon's event loop keeps serving."""
        return asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    async def run(self, store: Store, project_ids: Sequence[int] | None, report: GalleryReport) -> None:
        archive = await store.archive_digests()
        made_by = f"{pages.DATA_VERSION}:{syncer.__version__}"
        state = GalleryState.load(await self._in_pool(self.gallery.read, STATE_FILE), made_by, self.web_base)
        existing = await self._in_pool(self._thumbnails_on_disk)
        undecodable = set(state.undecodable)
        selected = [pid for pid in (project_ids or archive) if pid in archive]
        missing = {pid: archive[pid].hashes - existing - undecodable for pid in selected}
        intact = await self._in_pool(self._intact, state, selected)
        stale = [
            pid
            for pid in selected
            if missing[pid] or pid not in intact or state.digest(pid) != archive[pid].digest
        ]
        # A project shown on the root page needs a card even when this build does not render it.
        uncarded = [pid for pid in archive if pid not in state.projects and pid not in stale]
        uncarded = await self._in_pool(self._with_pages, uncarded)

        csv_of = await self._in_pool(self._csv_of, state, archive)
        if csv_of is not None:  # the CSV is written again: one read of every row serves both
            photos = await store.archived()
        else:
            photos = await store.archived([*stale, *uncarded]) if stale or uncarded else []
        by_project: dict[int, list[ArchivedPhoto]] = defaultdict(list)
        for photo in photos:
            by_project[photo.project_id].append(photo)
        todo = {p.sha256: p.local_path for pid in stale for p in by_project[pid] if p.sha256 in missing[pid]}
        made, failed = await self._make_thumbnails(todo)
        report.thumbnails = len(made)
        referenced = set().union(*(a.hashes for a in archive.values()))
        report.removed += await self._in_pool(self._remove_thumbnails, (existing | made) - referenced)
        existing = (existing | made) & referenced
        state.undecodable = sorted((undecodable | failed) & referenced)

        for pid in stale:
            if by_project[pid]:  # else its last photo left the mirror since the digests were read
                built = self._in_pool(self._project, pid, by_project[pid], existing, archive[pid].digest)
                written, state.projects[pid] = await built
                report.written += written
                report.pages += written > 0
        for pid in uncarded:
            if by_project[pid]:
                state.projects[pid] = Built(
                    "", pages.card(pid, pages.newest_first(by_project[pid]), existing)
                )
        for pid in selected:
            report.photos += archive[pid].photos
            report.placeholders += len(archive[pid].hashes - existing)
        report.projects = len(selected)
        if project_ids is None:
            report.removed += await self._in_pool(self._remove_pages, set(archive))
        state.projects = {pid: entry for pid, entry in state.projects.items() if pid in archive}
        report.written += await self._write_root(state, photos if csv_of is not None else None, csv_of)
        # Last: a build stopped before this point leaves the old state, and the next one redoes the work.
        await self._in_pool(self._write_changed, self.gallery, [(STATE_FILE, state.encode())])

    def _csv_of(self, state: GalleryState, archive: dict[int, ArchiveDigest]) -> str | None:
        """The digest of what `index.csv` shows when the file must be written again (what it shows
        changed, or the file is not the one the last build wrote); None when it stands."""
        digests = sorted((pid, a.digest) for pid, a in archive.items())
        csv_of = hashlib.sha256(json.dumps([self.web_base, digests]).encode()).hexdigest()
        if (
            state.csv == csv_of
            and state.csv_file is not None
            and _sha(self.root.read(INDEX_CSV)) == state.csv_file
        ):
            return None
        return csv_of

    async def _write_root(
        self, state: GalleryState, everything: list[ArchivedPhoto] | None, csv_of: str | None
    ) -> int:
        """The root page, the script and style, and `index.csv` from `everything` when it is given;
        how many files were written."""
        assets = [(name, files("syncer.gallery").joinpath("assets", name).read_bytes()) for name in ASSETS]
        written = await self._in_pool(self._write_changed, self.gallery, assets)
        cards = [built.card for built in state.projects.values()]
        root_files = [(INDEX_PAGE, pages.index_page(cards, GALLERY_DIR, has_csv=True))]
        if everything is not None:
            csv = (await self._in_pool(render_csv, everything, self.web_base)).encode("utf-8")
            root_files.append((INDEX_CSV, csv))
            state.csv, state.csv_file = csv_of, _sha(csv)
        return written + await self._in_pool(self._write_changed, self.root, root_files)

    def _intact(self, state: GalleryState, project_ids: list[int]) -> set[int]:
        """The projects whose data and page are on disk as the last build wrote them."""
        intact = set()
        for pid in project_ids:
            built = state.projects.get(pid)
            if built is None or not built.files:
                continue
            data, page = pages.data_file(pid), pages.project_page_name(pid)
            if {data: _sha(self.data.read(data)), page: _sha(self.gallery.read(page))} == built.files:
                intact.add(pid)
        return intact

    def _with_pages(self, project_ids: list[int]) -> list[int]:
        return [pid for pid in project_ids if self.gallery.read(pages.project_page_name(pid)) is not None]

    def _project(
        self, project_id: int, photos: list[ArchivedPhoto], thumbs: set[str], digest: str
    ) -> tuple[int, Built]:
        """Render a project's data and page, write those that changed; how many, and what was built."""
        ordered = pages.newest_first(photos)
        name = ordered[0].project_name
        data = pages.project_data(project_id, name, photos_page(self.web_base, project_id), ordered, thumbs)
        page = pages.project_page(project_id, name)
        data_file, page_file = pages.data_file(project_id), pages.project_page_name(project_id)
        written = self._write_changed(self.data, [(data_file, data)]) + self._write_changed(
            self.gallery, [(page_file, page)]
        )
        built = Built(
            digest,
            pages.card(project_id, ordered, thumbs),
            {data_file: hashlib.sha256(data).hexdigest(), page_file: hashlib.sha256(page).hexdigest()},
        )
        return written, built

    async def _make_thumbnails(self, todo: dict[str, str]) -> tuple[set[str], set[str]]:
        """Make the thumbnails of `todo` (SHA-256 → mirror path) on the build's threads (Pillow
        decodes without the GIL); return the SHA-256s made and those that could not be decoded. A
        file that cannot be read just now is neither: the next build tries it again."""
        made: set[str] = set()
        failed: set[str] = set()
        if not todo:
            return made, failed
        last = time.monotonic()
        pending = [self._in_pool(self._make_one, sha, path) for sha, path in todo.items()]
        try:
            for done in asyncio.as_completed(pending):
                sha, outcome = await done
                if outcome is not None:
                    (made if outcome else failed).add(sha)
                if time.monotonic() - last >= PROGRESS_EVERY:
                    last = time.monotonic()
                    count = f"{len(made) + len(failed):,}"
                    log.info("gallery: %s of %s made", count, plural(len(todo), "thumbnail"))
        finally:
            for future in pending:
                future.cancel()
            with self._thumb_lock:
                for folder in self._thumb_folders.values():  # what was renamed in survives a crash from here
                    folder.sync()
        return made, failed

    def _make_one(self, sha: str, path: str) -> tuple[str, bool | None]:
        """Make one thumbnail: (its SHA-256, True if made, False if undecodable, None if unreadable)."""
        from syncer.gallery.thumbs import (  # Pillow: paid for only by a build that decodes
            Unreadable,
            thumbnail,
        )

        try:
            data = thumbnail(self.root_path / path)
        except Unreadable:
            return sha, None
        if data is None:
            return sha, False
        folder_name, name = pages.thumb_place(sha)
        self._thumb_folder(folder_name).replace(name, data, sync=False)
        return sha, True

    def _thumb_folder(self, name: str) -> Folder:
        with self._thumb_lock:
            folder = self._thumb_folders.get(name)
            if folder is None:
                folder = self._thumb_folders[name] = self._open(self.thumbs, name)
            return folder

    def _thumbnails_on_disk(self) -> set[str]:
        """The SHA-256s of the originals that have a thumbnail (each is named by its own)."""
        found: set[str] = set()
        for name in self.thumbs.folders():
            sub = self._thumb_folder(name)
            found.update(f[:-4] for f in sub.files() if f.endswith(".jpg"))
        return found

    def _remove_thumbnails(self, keys: Iterable[str]) -> int:
        removed = 0
        for key in keys:
            folder_name, name = pages.thumb_place(key)
            removed += self._thumb_folder(folder_name).remove(name)
        return removed

    def _remove_pages(self, kept: set[int]) -> int:
        removed = 0
        for folder, suffix in ((self.gallery, ".html"), (self.data, ".js")):
            for name in list(folder.files()):
                ident = name.removeprefix("project-").removesuffix(suffix)
                if (
                    name.startswith("project-")
                    and name.endswith(suffix)
                    and ident.isdigit()
                    and int(ident) not in kept
                ):
                    removed += folder.remove(name)
        return removed

    @staticmethod
    def _write_changed(folder: Folder, documents: list[tuple[str, bytes]]) -> int:
        """Replace each document in `folder` whose bytes differ; how many."""
        written = 0
        for name, data in documents:
            if folder.read(name) != data:
                folder.replace(name, data)
                written += 1
        return written


def gallery_of(settings: Settings) -> Gallery:
    return Gallery(
        settings.mirror.root, web_base=settings.procore.web_base, sharing=sharing_of(settings.mirror.group)
    )


async def build_gallery(settings: Settings, project_ids: Sequence[int] | None = None) -> GalleryReport:
    """`syncer gallery`: bring the gallery up to date from the database alone (no credentials)."""
    check_owner(settings.mirror.root)
    store = await Store.open(settings.database_url, create=False)
    try:
        await ensure_mirror(store, settings.mirror.root, create=False)  # never into an empty mount point
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
