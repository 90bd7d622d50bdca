"""The database: SQLAlchemy models, engine setup, and the few batched queries a run needs."""

from syncer.store.rows import (
    ArchiveDigest,
    ArchivedPhoto,
    Downloaded,
    DueDownload,
    Failed,
    MirroredFile,
    Relocated,
    StoredPhoto,
    Vanished,
    photo_row,
)
from syncer.store.runs import ProjectStatus
from syncer.store.store import Store

__all__ = [
    "ArchiveDigest",
    "ArchivedPhoto",
    "Downloaded",
    "DueDownload",
    "Failed",
    "MirroredFile",
    "ProjectStatus",
    "Relocated",
    "Store",
    "StoredPhoto",
    "Vanished",
    "photo_row",
]
