"""Adopting a file the mirror already holds instead of downloading it again.

After a lost or new database (a move to PostgreSQL), a worker killed between installing a file and
recording it, or a stopped run, the mirror still has each photo at its layout path with a sidecar
that names the photo, its file identity, its size and its SHA-256. A listed photo whose file is
there, whose sidecar names the same photo and file, and whose bytes hash to the sidecar's SHA-256
is recorded as mirrored without a download. Nothing is trusted unhashed: a file that fails any
check is downloaded as usual.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from syncer.mirror.files import MirrorFS, UnsafePath, fsync_dir, fsync_file, sha256_of
from syncer.mirror.sidecar import sidecar_path
from syncer.procore.models import BadRecord, Photo


@dataclass(frozen=True)
class Adopted:
    size: int
    sha256: str


def _sidecar_facts(data: bytes) -> tuple[Photo, int, str] | None:
    """(the record, size, SHA-256) as a sidecar states them, if it states them all."""
    try:
        document: Any = json.loads(data)
        photo = Photo.from_api(document["procore"])
        size, sha256 = document["file"]["size"], document["file"]["sha256"]
    except (ValueError, TypeError, KeyError, BadRecord):
        return None
    if not isinstance(size, int) or not isinstance(sha256, str):
        return None
    return photo, size, sha256


def _same_file(fd: int, sidecar: bytes, photo: Photo) -> Adopted | None:
    """The file open at `fd`, if its sidecar names `photo` and its file (by key, or at a moved URL
    by size and `updated_at`) and its bytes hash as the sidecar says."""
    facts = _sidecar_facts(sidecar)
    if facts is None:
        return None
    recorded, size, sha256 = facts
    sizes_agree = size == os.fstat(fd).st_size and photo.size in (None, size)
    same_file = recorded.file_key == photo.file_key or photo.is_file_of(
        size=size, updated_at=recorded.updated_at
    )
    if recorded.id != photo.id or not same_file or not sizes_agree:
        return None
    return Adopted(size, sha256) if sha256_of(fd) == sha256 else None


def adopt(
    fs: MirrorFS, rel: str, photo: Photo, sidecars: Callable[[int, str], list[tuple[str, bytes]]]
) -> Adopted | None:
    """Check the file at `rel` against its JSON sidecar and `photo`; if it is that photo's file,
    bring its sidecars up to date (`sidecars(size, sha256)` is what they should say, the JSON one
    first) and return it.

    Durable before recorded, as an install is: the file, its sidecar and their folder are
    fsynced before this returns. Runs on a mirror thread: it reads and hashes the whole file."""
    try:
        path, side = fs.path(rel), fs.path(sidecar_path(rel))
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (OSError, UnsafePath):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        current = side.read_bytes()
        found = _same_file(fd, current, photo)
        if found is not None:
            os.fsync(fd)  # the process that wrote it may have died before its fsync
    except OSError:
        return None
    finally:
        os.close(fd)
    if found is None:
        return None
    documents = sidecars(found.size, found.sha256)
    stale = [(name, wanted) for name, wanted in documents if name != sidecar_path(rel) or wanted != current]
    if len(stale) < len(documents):  # the JSON sidecar already says it: make sure it is on disk
        fsync_file(side)
    if stale:  # the metadata changed since they were written, or a sidecar is new
        fs.write_with_folder(stale)
    else:
        fsync_dir(path.parent)
    return found
