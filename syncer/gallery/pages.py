"""The gallery's files, rendered from the archive's index: the root page, a page per project and
the data each project page shows.

Every string here came from Procore, so none of it is trusted. The root page is built here and
escapes each value (`html.escape`, quotes included). A project's photos go to a data file as JSON
inside a script (`GALLERY = {...};`): a JSON string cannot end early, and the page draws every value
with `textContent` or as an attribute, never as markup. Data comes by `<script src>` because
browsers refuse `fetch()` from `file://`, and the gallery must open from a USB copy of the mirror.

The photos of a project are rows of a fixed shape (see `FIELDS`), with album, uploader, location
and trade names given once in tables and referred to by number: at 100,000 photos the data file is
a third the size of one with named keys and repeated names, and the browser parses it in well under
a second.
"""

from __future__ import annotations

import html
import json
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from syncer.mirror.layout import UNFILED
from syncer.store import ArchivedPhoto
from syncer.words import plural

FIELDS = (
    "id",
    "album",
    "path",
    "name",
    "taken",
    "uploaded",
    "uploader",
    "location",
    "trades",
    "description",
    "flags",
    "size",
    "sha256",
    "thumb",
    "width",
    "height",
    "lat",
    "long",
    "deleted",
)
"""The order of a photo row in a data file; `gallery.js` reads them by these positions."""
STARRED, PRIVATE = 1, 2
"""Bits of a row's `flags`."""
DATA_VERSION = 2
"""2: the data names the album of photos without one (`unfiled`)."""


def thumb_place(sha256: str) -> tuple[str, str]:
    """A thumbnail's folder in `thumbs/` and its name, both from the original's content: a photo
    moved or renamed keeps its thumbnail, and two copies of one file share it."""
    return sha256[:2], f"{sha256}.jpg"


def thumb_path(sha256: str) -> str:
    """A thumbnail's path under the gallery folder (`gallery.js` builds the same)."""
    return "thumbs/" + "/".join(thumb_place(sha256))


def project_page_name(project_id: int) -> str:
    return f"project-{project_id}.html"


def data_file(project_id: int) -> str:
    """A project's data script, in the gallery's `data/` folder."""
    return f"project-{project_id}.js"


def project_data_name(project_id: int) -> str:
    return f"data/{data_file(project_id)}"


def _when(value: datetime | None) -> str | None:
    """UTC to the second ("2026-05-06T07:05:19Z"); `isoformat` is many times cheaper than `strftime`."""
    return value.isoformat()[:19] + "Z" if value else None


BIDI_CONTROLS = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))
"""Characters that make text display in another order than it is stored ("photo\u202egpj.exe")."""


def shown(text: str | None) -> str | None:
    """An upstream string as the page shows it: without bidirectional overrides."""
    return text.translate(BIDI_CONTROLS) if text else text


class _Table:
    """Names given once and referred to by their position."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._index: dict[str, int] = {}

    def ref(self, name: str | None) -> int | None:
        name = shown(name)
        if not name:
            return None
        index = self._index.get(name)
        if index is None:
            index = self._index[name] = len(self.names)
            self.names.append(name)
        return index


NO_TIME = datetime.min.replace(tzinfo=UTC)


def newest_first(photos: Iterable[ArchivedPhoto]) -> list[ArchivedPhoto]:
    """Taken (else uploaded) newest first, then by id: the same photos always in the same order,
    so a build of an unchanged project renders the same bytes."""
    return sorted(photos, key=lambda p: (p.taken_at or p.created_at or NO_TIME, p.id), reverse=True)


def project_data(
    project_id: int, project_name: str, link: str, photos: Sequence[ArchivedPhoto], thumbs: Container[str]
) -> bytes:
    """The script a project page loads: its `photos` in their order (`newest_first`), `thumbs`
    naming the originals (by SHA-256) that have a thumbnail."""
    albums, people, places, trades = _Table(), _Table(), _Table(), _Table()
    rows = []
    for p in photos:
        flags = (STARRED if p.starred else 0) | (PRIVATE if p.private else 0)
        rows.append(
            [
                p.id,
                albums.ref(p.album_name),
                p.local_path,
                shown(p.filename) or p.local_path.rsplit("/", 1)[-1],
                _when(p.taken_at),
                _when(p.created_at),
                people.ref(p.uploader_name),
                places.ref(p.location_name),
                [trades.ref(t) for t in p.trades],
                shown(p.description),
                flags,
                p.size,
                p.sha256,
                1 if p.sha256 in thumbs else 0,
                p.width,
                p.height,
                p.gps_lat,
                p.gps_long,
                _when(p.deleted_at),
            ]
        )
    document = {
        "version": DATA_VERSION,
        "fields": FIELDS,
        "project": {"id": project_id, "name": shown(project_name), "link": link},
        "albums": albums.names,
        "unfiled": UNFILED,  # the folder they are in: one name for them in the mirror and the gallery
        "people": people.names,
        "places": places.names,
        "trades": trades.names,
        "photos": rows,
    }
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return f"var GALLERY = {text};\n".encode()


PAGE_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="procore-photo-sync">
<title>{title}</title>
<link rel="stylesheet" href="{assets}gallery.css">
</head>
"""


def project_page(project_id: int, project_name: str) -> bytes:
    """A project's page: the controls, and the scripts that load its data and draw it."""
    name = html.escape(shown(project_name) or f"project {project_id}")
    body = f"""<body class="project">
<header>
  <nav><a href="../index.html">All projects</a></nav>
  <h1>{name}</h1>
  <p id="count" role="status">Loading photos…</p>
</header>
<form id="filters" role="search" autocomplete="off">
  <input id="search" type="search" placeholder="Search description, location, trade, uploader, file name"
    aria-label="Search">
  <label>Album <select id="album"><option value="">All albums</option></select></label>
  <label>Location <select id="location"><option value="">All locations</option></select></label>
  <label>From <input id="from" type="date"></label>
  <label>To <input id="to" type="date"></label>
  <label class="check"><input id="starred" type="checkbox"> Starred only</label>
  <label>Group by <select id="group">
    <option value="album">Album</option><option value="month">Month</option><option value="day">Day</option>
  </select></label>
  <button id="reset" type="reset">Clear</button>
</form>
<main id="grid" tabindex="-1"><div id="spacer"></div></main>
<noscript><p class="notice">This page needs JavaScript to show the photos. The files themselves are
in the mirror's folders beside <code>index.html</code>, and <code>index.csv</code> lists them.</p></noscript>
<script src="{project_data_name(project_id)}"></script>
<script src="gallery.js"></script>
</body>
</html>
"""
    return (PAGE_HEAD.format(title=f"{name} · photos", assets="") + body).encode()


@dataclass(frozen=True, slots=True)
class ProjectCard:
    """What the root page shows of a project."""

    id: int
    name: str
    photos: int
    bytes: int
    first: str | None
    """The day of the oldest photo (taken, else uploaded), as YYYY-MM-DD in UTC."""
    last: str | None
    albums: int
    cover: str | None
    """A recent photo's thumbnail, under the gallery folder."""


def card(project_id: int, photos: Sequence[ArchivedPhoto], thumbs: Container[str]) -> ProjectCard:
    """A project's card, from its photos in their order (`newest_first`): the newest photo with a
    thumbnail is its cover."""
    times = [t.date().isoformat() for p in photos if (t := p.taken_at or p.created_at)]
    cover = next((p.sha256 for p in photos if p.sha256 in thumbs), None)
    return ProjectCard(
        id=project_id,
        name=shown(photos[0].project_name) or f"project {project_id}",
        photos=len(photos),
        bytes=sum(p.size or 0 for p in photos),
        first=min(times, default=None),
        last=max(times, default=None),
        albums=len({p.album_name for p in photos} - {None}),
        cover=thumb_path(cover) if cover else None,
    )


def _span(first: str | None, last: str | None) -> str:
    if first is None or last is None:
        return "no dates"
    return first if first == last else f"{first} to {last}"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def index_page(cards: Sequence[ProjectCard], folder: str, has_csv: bool) -> bytes:
    """The mirror's front page: each project with its counts and dates, linking to its page."""
    total = sum(c.photos for c in cards)
    items = []
    for c in sorted(cards, key=lambda c: (c.name.casefold(), c.id)):
        href = html.escape(f"{folder}/{project_page_name(c.id)}")
        cover = (
            f'<img src="{html.escape(folder + "/" + quote(c.cover))}" alt="" loading="lazy">'
            if c.cover
            else '<span class="placeholder" aria-hidden="true"></span>'
        )
        items.append(
            f"""<li class="card"><a href="{href}">{cover}<span class="name">{html.escape(c.name)}</span></a>
  <span class="facts"><span class="photos">{plural(c.photos, "photo")}</span> · {plural(c.albums, "album")}
    · {_size(c.bytes)}</span>
  <span class="dates">{_span(c.first, c.last)}</span>
  <span class="pid">Procore project {c.id}</span></li>"""
        )
    csv_link = '<a href="index.csv">index.csv</a> lists every photo for a spreadsheet. ' if has_csv else ""
    body = f"""<body class="home">
<header>
  <h1>Photo archive</h1>
  <p id="count">{plural(len(cards), "project")}, {plural(total, "photo")}</p>
</header>
<main>
<ul id="projects">
{chr(10).join(items) or '<li class="empty">No photos in the mirror yet.</li>'}
</ul>
<p class="notice">{csv_link}The photos are plain files in the folders beside this page; each has a
<code>.json</code> file with its Procore metadata.</p>
</main>
</body>
</html>
"""
    return (PAGE_HEAD.format(title="Photo archive", assets=folder + "/") + body).encode()
