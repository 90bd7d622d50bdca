"""Thumbnails from real image files: large photos decoded small, upright, flattened; anything that
cannot be decoded safely is a placeholder (None), never an error."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from syncer.gallery.thumbs import SIZE, Unreadable, thumbnail


def decoded(data: bytes | None) -> Image.Image:
    assert data is not None, "expected a thumbnail"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def twelve_megapixels(path: Path, **save: object) -> Path:
    """A 4000 x 3000 JPEG with detail in it (a gradient under noise), like a phone's photo."""
    noise = Image.effect_noise((4000, 3000), 30).convert("RGB")
    gradient = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    Image.blend(noise, gradient, 0.8).save(path, "JPEG", quality=90, **save)  # about 3 MB
    return path


def test_a_12_megapixel_jpeg_is_decoded_at_a_reduced_scale(tmp_path: Path) -> None:
    source = twelve_megapixels(tmp_path / "IMG_0001.JPG")
    started = time.process_time()
    with Image.open(source) as full:
        full.load()
    decode = time.process_time() - started
    started = time.process_time()
    image = decoded(thumbnail(source))
    took = time.process_time() - started
    assert image.format == "JPEG" and image.size == (SIZE, SIZE * 3 // 4)
    assert took < 0.6 * decode, f"a thumbnail took {took:.3f} s of CPU, a plain decode {decode:.3f} s"


def test_the_exif_orientation_stands_a_portrait_photo_up(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise: the camera was held upright
    source = twelve_megapixels(tmp_path / "portrait.jpg", exif=exif.tobytes())
    width, height = decoded(thumbnail(source)).size
    assert height == SIZE and width < height


def test_a_transparent_png_is_flattened_on_white(tmp_path: Path) -> None:
    source = tmp_path / "plan.png"
    Image.new("RGBA", (800, 600), (255, 0, 0, 0)).save(source)
    image = decoded(thumbnail(source))
    assert image.mode == "RGB" and image.getpixel((10, 10)) == (255, 255, 255)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels, with almost no data behind it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def grey_png(width: int, height: int) -> bytes:
    """A whole, valid black PNG of `width` x `height` grey pixels: small on disk, huge decoded."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # a filter byte, then the pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_an_image_claiming_a_huge_size_is_a_placeholder_without_decoding(tmp_path: Path) -> None:
    source = tmp_path / "bomb.png"
    source.write_bytes(png_claiming(30_000, 30_000))
    started = time.monotonic()
    assert thumbnail(source) is None
    assert time.monotonic() - started < 1


def test_an_image_just_past_the_safe_size_is_a_placeholder(tmp_path: Path) -> None:
    source = tmp_path / "large.png"
    source.write_bytes(grey_png(10_000, 10_000))  # 100 megapixels: Pillow would decode it, with a warning
    assert thumbnail(source) is None


def test_a_truncated_jpeg_is_a_placeholder(tmp_path: Path) -> None:
    source = twelve_megapixels(tmp_path / "cut.jpg")
    source.write_bytes(source.read_bytes()[:20_000])
    assert thumbnail(source) is None


def test_a_file_that_is_not_an_image_is_a_placeholder(tmp_path: Path) -> None:
    source = tmp_path / "clip.mov"
    source.write_bytes(b"\x00\x00\x00\x14ftypqt  " + os.urandom(10_000))
    assert thumbnail(source) is None


def test_a_link_is_not_followed(tmp_path: Path) -> None:
    target = twelve_megapixels(tmp_path / "elsewhere.jpg")
    link = tmp_path / "photo.jpg"
    link.symlink_to(target)
    with pytest.raises(Unreadable):
        thumbnail(link)


def test_a_fifo_is_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(Unreadable):
        thumbnail(fifo)  # a blocking open would never return
