"""Thumbnails, made locally from the mirror's files.

A 12-megapixel JPEG is decoded at an eighth of its size (Pillow's `draft`, the JPEG decoder's own
scaling), which is most of why a thumbnail costs milliseconds rather than a full decode. The EXIF
orientation is applied, so a phone's portrait photo stands up. Anything Pillow cannot read (HEIC,
video, a damaged or truncated file, an image of more pixels than Pillow decodes safely) gets no
thumbnail: the page shows a placeholder, and the gallery remembers the file so it does not try
again each build.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

SIZE = 320
"""Longest side of a thumbnail, in pixels: sharp at the page's 160-pixel tiles on a double-density screen."""
QUALITY = 80


class Unreadable(Exception):
    """The file could not be opened as a regular file (missing for now, a link, a FIFO, no
    permission): not a judgement on its contents, so the next build tries again."""


def thumbnail(source: Path) -> bytes | None:
    """The JPEG thumbnail of the image at `source`, or None if it cannot be decoded; `Unreadable`
    if it cannot be opened. A link is not followed and a FIFO is not waited on."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise Unreadable(str(exc)) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unreadable(f"{source} is not a regular file")
        try:
            return _shrunk(fh)
        except Exception:  # whatever a hostile file makes a decoder raise, it gets a placeholder
            return None


def _shrunk(fh: BinaryIO) -> bytes:
    with warnings.catch_warnings():
        # A file can claim any size: past Pillow's limit (about 89 megapixels) it is not decoded.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(fh) as image:
            image.draft("RGB", (SIZE, SIZE))
            image.load()
            upright = ImageOps.exif_transpose(image)
            upright.thumbnail((SIZE, SIZE), Image.Resampling.LANCZOS, reducing_gap=2.0)
            if upright.mode != "RGB":
                upright = _flatten(upright)
            out = io.BytesIO()
            upright.save(out, "JPEG", quality=QUALITY, optimize=True)
            return out.getvalue()


def _flatten(image: Image.Image) -> Image.Image:
    """An RGB image on white, whatever the mode (transparency, palettes, 16-bit greys, CMYK)."""
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background
