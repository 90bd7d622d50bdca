"""`syncer export --csv`: an index of the archive, one row per photo in the mirror, for a person
with a spreadsheet rather than for the syncer.

Everything in a cell came from Procore, so none of it is trusted: a description that starts like a
formula (`=`, `+`, `-`, `@`, or a tab or carriage return before one) would run as one when the
file is opened in a spreadsheet program, so such a cell is written with a leading apostrophe, the
usual way to say "text". The file is UTF-8 with a byte-order mark, which spreadsheet programs need
to read it as UTF-8, and CRLF line ends.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from syncer.config import Settings
from syncer.errors import ConfigError
from syncer.mirror.files import replace_file
from syncer.procore.models import photos_page
from syncer.store import ArchivedPhoto, Store

COLUMNS = (
    "project",
    "project_id",
    "album",
    "path",
    "procore_id",
    "file_name",
    "taken",
    "uploaded",
    "uploader",
    "location",
    "trades",
    "description",
    "starred",
    "private",
    "size",
    "sha256",
    "deleted_in_procore",
    "procore_link",
)
FORMULA_START = ("=", "+", "-", "@")
INVISIBLE = "".join(map(chr, range(33)))
"""What a spreadsheet may skip before it looks for a formula: blanks and control characters."""


def text_cell(value: str | None) -> str:
    """An upstream string as a spreadsheet shows it, never as a formula it would run."""
    if not value:
        return ""
    led = value.startswith(("\t", "\r")) or value.lstrip(INVISIBLE).startswith(FORMULA_START)
    return "'" + value if led else value


def _when(value: datetime | None) -> str:
    return value.isoformat().replace("+00:00", "Z") if value else ""


def _flag(value: bool | None) -> str:
    return "" if value is None else "yes" if value else "no"


def row(photo: ArchivedPhoto, web_base: str) -> list[str]:
    """A photo's cells; the location is its full path where Procore gives one ("Building A > Level 3")."""
    return [
        text_cell(photo.project_name),
        str(photo.project_id),
        text_cell(photo.album_name),
        text_cell(photo.local_path),
        str(photo.id),
        text_cell(photo.filename),
        _when(photo.taken_at),
        _when(photo.created_at),
        text_cell(photo.uploader_name),
        text_cell(photo.location_name),
        text_cell("; ".join(photo.trades)),
        text_cell(photo.description),
        _flag(photo.starred),
        _flag(photo.private),
        "" if photo.size is None else str(photo.size),
        photo.sha256 or "",
        _when(photo.deleted_at),
        photos_page(web_base, photo.project_id),
    ]


def render_csv(photos: Sequence[ArchivedPhoto], web_base: str) -> str:
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    writer.writerows(row(photo, web_base) for photo in photos)
    return out.getvalue()


async def export_csv(settings: Settings, target: str, *, project_ids: Sequence[int] | None = None) -> int:
    """Write the index to `target` (a path, replaced atomically; `-` for standard output) and
    return how many photos it lists."""
    store = await Store.open(settings.database_url, create=False)
    try:
        photos = await store.archived(project_ids)
    finally:
        await store.close()
    data = render_csv(photos, settings.procore.web_base).encode("utf-8")
    if target == "-":  # the bytes as they are: not re-encoded or re-ended by the terminal's settings
        sys.stdout.flush()
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except BrokenPipeError:  # `| head`: the reader has what it wanted; nothing more to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return len(photos)
    try:
        replace_file(Path(target), data)
    except OSError as exc:
        raise ConfigError(
            f"--csv {target}: {exc.strerror or exc}: give the path of a file in a folder that exists "
            "and that the user running syncer can write"
        ) from None
    return len(photos)
