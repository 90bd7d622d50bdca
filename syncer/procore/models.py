"""Procore records parsed from untrusted JSON.

Every field of the API is optional and may have the wrong type. A record without a usable `id`
is an error (the listing cannot be proven complete without it); any other odd field becomes
`None` and the raw object is kept, minus signed-URL query strings, for the database and sidecar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from syncer.errors import SyncerError


class BadRecord(SyncerError):
    """A JSON value that is not the shape Procore documents."""


INT_LIMIT = 1 << 63
"""Integers the databases hold (64-bit signed): a larger id or size is not a value Procore uses."""


def as_int(value: Any) -> int | None:
    """An integer, or a string of ASCII digits, that a 64-bit column holds; else None. (`"²"` is a
    digit to `str.isdigit` but not to `int`.)"""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if -INT_LIMIT <= value < INT_LIMIT else None


def _str(value: Any) -> str | None:
    return _encodable(value) if isinstance(value, str) else None


def trade_names(items: Any) -> tuple[str, ...]:
    """The names in a record's `trades` list, each made one line (the store keeps them a line each)."""
    if not isinstance(items, list):
        return ()
    names = (_str(item.get("name")) for item in items if isinstance(item, dict))
    return tuple(" ".join(name.split()) for name in names if name and name.strip())


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, int | float | str) else None
    except (ValueError, OverflowError):
        return None
    return number if number is not None and math.isfinite(number) else None


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 instant as aware UTC; anything else is `None`."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 at +01:00 is before year 1 in UTC
        return None


def strip_query(url: str) -> str:
    """A URL without its query and fragment: signed URLs are short-lived credentials."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _encodable(text: str) -> str:
    """`text` with any lone surrogate (JSON allows `\\ud800`; UTF-8 does not) replaced by `?`: one
    such character must not stop the database, a sidecar or an index from holding the record."""
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def scrub_urls(value: Any) -> Any:
    """A copy of a JSON value with the query string removed from every URL-looking string. (Exact
    type tests: this runs over every field of every listed record.)"""
    kind = type(value)
    if kind is str:
        if not value.isascii():
            value = _encodable(value)
        return strip_query(value) if value.startswith(("http://", "https://")) else value
    if kind is dict:
        return {_encodable(k) if type(k) is str else str(k): scrub_urls(v) for k, v in value.items()}
    if kind is list:
        return [scrub_urls(v) for v in value]
    return value


@lru_cache(maxsize=1024)
def _file_key(url: str | None, filename: str | None, size: int | None) -> str:
    """`Photo.file_key`, remembered: the planner, the store and the transfer each ask for it."""
    try:
        path = urlsplit(url).path if url else ""
    except ValueError:  # unparsable: its download fails with that reason; the key stays stable
        path = url or ""
    head, _, last = path.rpartition("/")
    if filename and unquote(last) == filename:
        path = head
    return f"{path}#{size if size is not None else '?'}"


def photos_page(web_base: str, project_id: int) -> str:
    """The project's Photos tool in Procore's web app (`procore.web_base`, no trailing slash).
    Procore documents no web address for one photo, so links back to Procore go to the project's
    photos, and the photo's id says which."""
    return f"{web_base}/{project_id}/project/photos"


def require_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRecord(f"{what}: expected a JSON array, got {type(value).__name__}")
    return value


def require_id(obj: Any, what: str) -> int:
    if not isinstance(obj, dict):
        raise BadRecord(f"{what}: expected a JSON object, got {type(obj).__name__}")
    ident = as_int(obj.get("id"))
    if ident is None or ident <= 0:
        raise BadRecord(f"{what}: missing or invalid id {obj.get('id')!r:.40}")
    return ident


@dataclass(frozen=True, slots=True)
class Project:
    id: int
    name: str
    active: bool

    @classmethod
    def from_api(cls, obj: Any) -> Project:
        ident = require_id(obj, "project")
        name = _str(obj.get("display_name")) or _str(obj.get("name")) or f"project-{ident}"
        return cls(id=ident, name=name, active=_bool(obj.get("active")) is not False)


@dataclass(frozen=True, slots=True)
class Company:
    id: int
    name: str

    @classmethod
    def from_api(cls, obj: Any) -> Company:
        ident = require_id(obj, "company")
        return cls(id=ident, name=_str(obj.get("name")) or f"company-{ident}")


def person(obj: Any) -> str:
    """Who a `/me` answer says signed in, for messages: "Pat Jones (pat@example.com)"."""
    record = obj if isinstance(obj, dict) else {}
    name, login = _str(record.get("name")), _str(record.get("login"))
    if name and login:
        return f"{name} ({login})"
    return name or login or "an unnamed Procore user"


@dataclass(frozen=True, slots=True)
class Album:
    id: int
    name: str
    private: bool

    @classmethod
    def from_api(cls, obj: Any) -> Album:
        ident = require_id(obj, "album")
        return cls(
            id=ident,
            name=_str(obj.get("name")) or f"album-{ident}",
            private=bool(_bool(obj.get("private"))),
        )


@dataclass(frozen=True, slots=True)
class Photo:
    """One image record. `url` is the signed download URL: never logged, never in a sidecar or
    `raw_json`; with several workers it goes to the claiming worker through `photos.fetch_url`,
    which holds it only during the run that listed it."""

    id: int
    url: str | None
    size: int | None
    filename: str | None
    description: str | None
    taken_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None
    album_id: int | None
    album_name: str | None
    private: bool | None
    starred: bool | None
    width: int | None
    height: int | None
    gps_lat: float | None
    gps_long: float | None
    location_name: str | None
    uploader_name: str | None
    trades: tuple[str, ...]
    """The names of the photo's trades, each on one line."""
    raw: dict[str, Any]
    """The record as received, with signed-URL query strings removed."""

    @classmethod
    def from_api(cls, obj: Any) -> Photo:
        ident = require_id(obj, "image")
        location = obj.get("location") if isinstance(obj.get("location"), dict) else {}
        uploader = obj.get("uploader") if isinstance(obj.get("uploader"), dict) else {}
        size = as_int(obj.get("size"))
        return cls(
            id=ident,
            url=_str(obj.get("url")),
            size=size if size is not None and size >= 0 else None,
            filename=_str(obj.get("filename")),
            description=_str(obj.get("description")),
            taken_at=parse_time(obj.get("taken_at")),
            created_at=parse_time(obj.get("created_at")),
            updated_at=parse_time(obj.get("updated_at")),
            album_id=as_int(obj.get("image_category_id")),
            album_name=_str(obj.get("image_category_name")),
            private=_bool(obj.get("private")),
            starred=_bool(obj.get("starred")),
            width=as_int(obj.get("width")),
            height=as_int(obj.get("height")),
            gps_lat=_float(obj.get("gps_lat")),
            gps_long=_float(obj.get("gps_long")),
            location_name=_str(location.get("node_name")) or _str(location.get("name")),
            uploader_name=_str(uploader.get("name")),
            trades=trade_names(obj.get("trades")),
            raw=scrub_urls(obj),
        )

    @property
    def file_key(self) -> str:
        """What identifies the bytes: the URL path plus the size. A change means a new file.

        A last path segment that is just the photo's file name is left out: renaming a photo in
        Procore changes that segment but not the bytes, and must not cost a download."""
        return _file_key(self.url, self.filename, self.size)

    def is_file_of(self, *, size: int | None, updated_at: datetime | None) -> bool:
        """Whether this record names a file known by its `size` and the `updated_at` it was listed
        with, whatever its URL: Procore has moved file URLs (S3 to its storage host, `v4` to `v5`)
        without touching the photos, while new bytes move `updated_at`."""
        return (
            self.size is not None
            and self.size == size
            and self.updated_at is not None
            and self.updated_at == updated_at
        )

    @property
    def when(self) -> datetime | None:
        """The time a person would file the photo under: taken, else uploaded."""
        return self.taken_at or self.created_at
