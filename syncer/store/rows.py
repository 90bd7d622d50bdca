"""What goes in and out of the photos table: the row of a listed photo, what the engine reads of
a stored one, and the results the recorder writes. The store owns this shape; no other module
lists the columns of a photo."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from syncer.procore.models import Photo
from syncer.store.models import PhotoRow

INSERT_ONLY = ("id", "first_seen_at", "attempts")
"""Columns of `photo_row` written when a photo is first listed and never by a later listing."""


@dataclass(frozen=True, slots=True)
class StoredPhoto:
    id: int
    project_id: int
    file_key: str
    rel_path: str
    updated_at: datetime | None
    local_path: str | None
    local_file_key: str | None
    local_size: int | None
    sha256: str | None
    sidecar_of: datetime | None
    deleted_at: datetime | None
    trashed_path: str | None


STORED_COLUMNS = tuple(getattr(PhotoRow, f.name) for f in fields(StoredPhoto))
"""What the engine reads of a stored photo: `StoredPhoto`'s fields, in its order."""


def photo_row(
    photo: Photo, *, project_id: int, rel_path: str, now: datetime, fetch_url: str | None = None
) -> dict[str, Any]:
    """The database row of a listed photo: its metadata columns (the local-file columns are the
    recorder's). `fetch_url` hands the signed URL to another worker (several workers only)."""
    return {
        "id": photo.id,
        "project_id": project_id,
        "album_id": photo.album_id,
        "album_name": photo.album_name,
        "filename": photo.filename,
        "description": photo.description,
        "size": photo.size,
        "taken_at": photo.taken_at,
        "created_at": photo.created_at,
        "updated_at": photo.updated_at,
        "private": photo.private,
        "starred": photo.starred,
        "width": photo.width,
        "height": photo.height,
        "gps_lat": photo.gps_lat,
        "gps_long": photo.gps_long,
        "location_name": photo.location_name,
        "uploader_name": photo.uploader_name,
        "trades": "\n".join(photo.trades),
        "raw_json": json.dumps(photo.raw, ensure_ascii=False, separators=(",", ":")),
        "file_key": photo.file_key,
        "rel_path": rel_path,
        "first_seen_at": now,
        "fetch_url": fetch_url,
        "attempts": 0,
    }


@dataclass(frozen=True, slots=True)
class DueDownload:
    id: int
    rel_path: str
    size: int | None
    attempts: int


@dataclass(frozen=True, slots=True)
class Downloaded:
    id: int
    local_path: str
    file_key: str
    size: int
    sha256: str
    sidecar_of: datetime | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Relocated:
    """The file stayed; its path or sidecar changed."""

    id: int
    local_path: str
    sidecar_of: datetime | None


@dataclass(frozen=True, slots=True)
class Failed:
    id: int
    error: str
    next_retry_at: datetime


@dataclass(frozen=True, slots=True)
class Vanished:
    """Deleted in Procore after it was listed: no longer due, marked deleted."""

    id: int
    at: datetime


@dataclass(frozen=True, slots=True)
class MirroredFile:
    id: int
    project_id: int
    project_name: str
    local_path: str
    size: int | None
    sha256: str | None
    raw_json: str
    current: bool | None
    """The file and its sidecar are of the record in `raw_json` (nothing is pending for them)."""


@dataclass(frozen=True, slots=True)
class ArchivedPhoto:
    """A photo whose file is in the mirror, with what a person searches an archive by."""

    id: int
    project_id: int
    project_name: str
    album_name: str | None
    local_path: str
    filename: str | None
    taken_at: datetime | None
    created_at: datetime | None
    uploader_name: str | None
    location_name: str | None
    description: str | None
    starred: bool | None
    private: bool | None
    size: int | None
    sha256: str | None
    deleted_at: datetime | None
    """When a full run found it gone from Procore (its file kept: `mirror.on_delete: keep`)."""
    width: int | None
    height: int | None
    gps_lat: float | None
    gps_long: float | None
    trades: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ArchiveDigest:
    """What identifies a project's archive index without reading it (`Store.archive_digests`)."""

    photos: int
    digest: str
    hashes: frozenset[str]
    """The SHA-256 of each of its files."""
