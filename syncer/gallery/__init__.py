"""The offline gallery: a static, self-contained view of the mirror that opens from `file://`
(a laptop, a USB copy) with no server and no network. `build` decides what changed, `pages`
renders, `thumbs` decodes, and `assets/` holds the page's script and style."""

from syncer.gallery.build import (
    GALLERY_DIR,
    OWN_ROOT_FILES,
    Gallery,
    GalleryReport,
    build_gallery,
    gallery_of,
    render_report,
)

__all__ = [
    "GALLERY_DIR",
    "OWN_ROOT_FILES",
    "Gallery",
    "GalleryReport",
    "build_gallery",
    "gallery_of",
    "render_report",
]
