"""SQLAlchemy models, engine setup and the few batched queries the engine needs."""

from syncer.store.store import (
    Downloaded,
    DueDownload,
    Failed,
    MirroredFile,
    ProjectStatus,
    Relocated,
    Store,
    StoredPhoto,
    Vanished,
)

__all__ = [
    "Downloaded",
    "DueDownload",
    "Failed",
    "MirroredFile",
    "ProjectStatus",
    "Relocated",
    "Store",
    "StoredPhoto",
    "Vanished",
]
