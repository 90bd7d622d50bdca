"""Deciding what a listed photo means for the mirror, apart from doing it.

The rule that tells a replaced file from an edit: the file's key is the path of its download URL
(without a last segment that is only the file name) plus its `size` (`Photo.file_key`). Procore
puts a file's storage key in that path, so new bytes give a new path or size; a metadata edit
(name, description, album, star, trades) changes neither, and then the bytes are never fetched
again: the sidecar is rewritten and, if the layout path changed, the file is renamed.

A URL is not an identity, though: Procore has moved its file URLs (S3 to its storage host, `v4` to
`v5`) without touching the photos. A new key with the same size and the same `updated_at` as the
file the mirror holds is that file at a new address: the new key is recorded and the sidecar
rewritten, and nothing is downloaded. New bytes move `updated_at`, so a new key with a moved
`updated_at` is fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from syncer.procore.models import Photo
from syncer.store import StoredPhoto


class Change(StrEnum):
    NEW = "new"
    """Never mirrored: download."""
    REPLACED = "replaced"
    """The file changed upstream: download and swap in."""
    MOVED = "moved"
    """Same file, new layout path: rename it and rewrite the sidecar."""
    RESTORED = "restored"
    """Back in Procore after `on_delete: trash` moved its file away: move it back."""
    METADATA = "metadata"
    """Same file and path, new metadata: rewrite the sidecar."""
    UNCHANGED = "unchanged"
    STALE = "stale"
    """An older copy of a record already stored (a repeat from a shifted page): ignore."""


@dataclass(frozen=True, slots=True)
class Decision:
    photo: Photo
    rel_path: str
    change: Change
    stored: StoredPhoto | None

    @property
    def download(self) -> bool:
        return self.change in (Change.NEW, Change.REPLACED)

    @property
    def relocate(self) -> bool:
        return self.change in (Change.MOVED, Change.RESTORED, Change.METADATA)

    @property
    def url_moved(self) -> bool:
        """The mirror keeps its file, which Procore now serves from another URL."""
        return (
            not self.download
            and self.change is not Change.STALE
            and self.stored is not None
            and self.stored.local_file_key != self.photo.file_key
        )


def _at_new_url(photo: Photo, stored: StoredPhoto) -> bool:
    """Whether `photo` names the file the mirror holds at a new URL: the mirror held the file
    Procore last listed, and the size and `updated_at` are what they were then."""
    return (
        stored.local_file_key is not None
        and stored.local_file_key == stored.file_key
        and photo.is_file_of(size=stored.local_size, updated_at=stored.updated_at)
    )


def decide(photo: Photo, stored: StoredPhoto | None, rel_path: str) -> Decision:
    if stored is None:
        return Decision(photo, rel_path, Change.NEW, None)
    if (
        stored.deleted_at is None
        and stored.updated_at is not None
        and photo.updated_at is not None
        and photo.updated_at < stored.updated_at
    ):
        return Decision(photo, rel_path, Change.STALE, stored)
    same_file = stored.local_file_key == photo.file_key or _at_new_url(photo, stored)
    if not same_file or (stored.local_path is None and stored.trashed_path is None):
        change = Change.NEW if stored.local_file_key is None else Change.REPLACED
    elif stored.local_path is None:
        change = Change.RESTORED
    elif stored.local_path != rel_path:
        change = Change.MOVED
    elif stored.sidecar_of != photo.updated_at or stored.local_file_key != photo.file_key:
        change = Change.METADATA  # the sidecar keeps the record, its URL included
    else:
        change = Change.UNCHANGED
    return Decision(photo, rel_path, change, stored)
