"""`GET /rest/v1.0/images` parameters as types, and their exact wire form.

Procore is a Rails app: arrays go as `key[]=v`, ranges as `A...B`. The query string is built here
rather than by the HTTP library so the wire form is pinned by tests, not by a library's quoting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from typing import Literal
from urllib.parse import quote

SortKey = Literal[
    "created_at",
    "-created_at",
    "taken_at",
    "-taken_at",
    "deleted_at",
    "-deleted_at",
    "exposure_date",
    "-exposure_date",
    "most_recent",
    "-most_recent",
]
SerializerView = Literal["normal", "android", "mobile", "mobile_feed", "prostore_file", "ids_only"]
Projection = Literal["360", "regular"]

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_BOUND_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2}))?$")


def format_instant(value: datetime | date) -> str:
    """One end of a range: `YYYY-MM-DD`, or a second-precision instant in UTC (`...Z`)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime in a Procore range; give it a time zone")
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value.isoformat()


@dataclass(frozen=True)
class Range:
    """A range `start...end` for `log_date`, `created_at` or `updated_at`. Whether Procore counts
    the end as inside is unknown; the listing does not depend on it (see `syncer.listing`)."""

    start: datetime | date
    end: datetime | date

    def wire(self) -> str:
        return f"{format_instant(self.start)}...{format_instant(self.end)}"


def parse_range(text: str, *, dates_only: bool = False) -> str:
    """Validate a range written in config (`A...B` or a single bound) and return it unchanged."""
    parts = text.split("...")
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"expected 'START...END' or a single value, got {text!r}")
    pattern = _DATE_RE if dates_only else _BOUND_RE
    for part in parts:
        if not pattern.match(part):
            shape = "YYYY-MM-DD" if dates_only else "YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ"
            raise ValueError(f"{part!r} is not {shape}")
    return text


@dataclass(frozen=True)
class ImageFilters:
    """The `filters[...]` of the images endpoint; `None` leaves a filter out.

    Ranges accept a `Range` or an already-validated wire string, so they can come from a config
    file. `updated_at` is the engine's: it carries the sync window.
    """

    daily_log_segment_id: list[int] | None = None
    log_date: Range | str | None = None
    private: bool | None = None
    starred: bool | None = None
    location_id: list[int] | None = None
    include_sublocations: bool | None = None
    trade_ids: list[int] | None = None
    projection: Projection | None = None
    query: str | None = None
    created_at: Range | str | None = None
    updated_at: Range | str | None = None
    uploader_id: list[int] | None = None
    id: list[int] | None = None


@dataclass(frozen=True)
class ImageQuery:
    """Everything `GET /rest/v1.0/images` accepts."""

    project_id: int
    image_category_id: int | None = None
    filters: ImageFilters = field(default_factory=ImageFilters)
    sort: SortKey | None = None
    serializer_view: SerializerView | None = None

    def params(self, *, page: int | None = None, per_page: int | None = None) -> list[tuple[str, str]]:
        """The query as ordered `(key, value)` pairs, arrays expanded."""
        pairs: list[tuple[str, str]] = [("project_id", str(self.project_id))]
        if self.image_category_id is not None:
            pairs.append(("image_category_id", str(self.image_category_id)))
        if page is not None:
            pairs.append(("page", str(page)))
        if per_page is not None:
            pairs.append(("per_page", str(per_page)))
        for f in fields(self.filters):
            value = getattr(self.filters, f.name)
            if value is None:
                continue
            key = f"filters[{f.name}]"
            if isinstance(value, list):
                pairs.extend((f"{key}[]", str(v)) for v in value)
            elif isinstance(value, bool):
                pairs.append((key, "true" if value else "false"))
            elif isinstance(value, Range):
                pairs.append((key, value.wire()))
            else:
                pairs.append((key, str(value)))
        if self.sort is not None:
            pairs.append(("sort", self.sort))
        if self.serializer_view is not None:
            pairs.append(("serializer_view", self.serializer_view))
        return pairs


def encode_query(pairs: list[tuple[str, str]]) -> str:
    """Percent-encode pairs, keeping `[]` readable as Rails clients do; `+` and spaces are escaped."""
    return "&".join(f"{quote(k, safe='[]')}={quote(v, safe='[]:.')}" for k, v in pairs)
