"""Viewable JPEG bytes of any size, made cheaply and deterministically.

A handful of construction-site scenes are drawn once per process with Pillow. Each photo's file is
one scene with COM (comment) segments inserted after the SOI marker: they carry the photo's id and
version plus seeded filler, so every file is distinct, any size above the scene's own is reachable,
and any byte range can be produced without building the whole file (a 500 MB photo streams).
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator
from functools import lru_cache

from PIL import Image, ImageDraw

SCENES = 12
SEGMENT_PAYLOAD = 65_533  # a COM segment's length field counts itself: 2 + 65533 = 0xFFFF
SEGMENT_OVERHEAD = 4  # FF FE and the two length bytes


@lru_cache(maxsize=2 * SCENES)
def scene(variant: int, *, small: bool = False) -> bytes:
    """A drawn site photo: sky, ground, a building under construction, a tower crane."""
    rng = random.Random(variant)
    width, height = (96, 72) if small else (640, 480)
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    horizon = int(height * rng.uniform(0.55, 0.7))
    sky_top = (rng.randint(60, 120), rng.randint(120, 170), rng.randint(200, 250))
    for y in range(horizon):
        t = y / horizon
        draw.line([(0, y), (width, y)], fill=tuple(int(c + (235 - c) * t) for c in sky_top))
    draw.rectangle([0, horizon, width, height], fill=(rng.randint(110, 150), rng.randint(95, 120), 80))
    for _ in range(rng.randint(2, 4)):  # buildings with a grid of windows
        bw, bh = int(width * rng.uniform(0.12, 0.25)), int(height * rng.uniform(0.2, 0.5))
        bx = rng.randint(0, width - bw)
        shade = rng.randint(120, 190)
        draw.rectangle([bx, horizon - bh, bx + bw, horizon], fill=(shade, shade - 10, shade - 25))
        step = max(3, width // 40)
        for wy in range(horizon - bh + step, horizon - step, step * 2):
            for wx in range(bx + step, bx + bw - step, step * 2):
                draw.rectangle([wx, wy, wx + step // 2 + 1, wy + step // 2 + 1], fill=(60, 70, 90))
    cx = rng.randint(width // 5, 4 * width // 5)  # a tower crane
    top = int(height * rng.uniform(0.08, 0.2))
    draw.line([(cx, horizon), (cx, top)], fill=(230, 180, 20), width=max(1, width // 120))
    draw.line(
        [(cx - width // 4, top), (cx + width // 5, top)],
        fill=(230, 180, 20),
        width=max(1, width // 160),
    )
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=82)
    return out.getvalue()


def minimum_size(variant: int, tag: bytes, *, small: bool) -> int:
    return len(scene(variant, small=small)) + SEGMENT_OVERHEAD + len(tag)


def _segment_sizes(filler: int) -> list[int]:
    """Payload sizes of the COM segments that carry `filler` bytes of tag plus padding."""
    sizes: list[int] = []
    remaining = filler
    while remaining > 0:
        payload = min(SEGMENT_PAYLOAD, remaining - SEGMENT_OVERHEAD)
        if 0 < remaining - SEGMENT_OVERHEAD - payload < SEGMENT_OVERHEAD:
            payload -= SEGMENT_OVERHEAD  # never leave a remainder too small for a segment
        sizes.append(payload)
        remaining -= payload + SEGMENT_OVERHEAD
    return sizes


class PhotoContent:
    """The bytes of one photo version, producible by range."""

    def __init__(self, variant: int, tag: bytes, size: int, *, small: bool) -> None:
        self.base = scene(variant, small=small)
        self.tag = tag
        self.size = max(size, minimum_size(variant, tag, small=small))
        self._segments = _segment_sizes(self.size - len(self.base))
        self._seed = int.from_bytes(hashlib.sha256(tag).digest()[:8], "big")

    def _segment(self, index: int) -> bytes:
        payload = self._segments[index]
        head = self.tag if index == 0 else b""
        filler = random.Random(self._seed + index).randbytes(payload - len(head))
        return b"\xff\xfe" + (payload + 2).to_bytes(2, "big") + head + filler

    def chunks(self, start: int = 0, end: int | None = None) -> list[tuple[int, int, int]]:
        """(part, lo, hi) slices covering bytes [start, end): part -1 is SOI, -2 the scene body."""
        end = self.size if end is None else end
        parts = [(-1, 2)] + [(i, n + SEGMENT_OVERHEAD) for i, n in enumerate(self._segments)]
        parts.append((-2, len(self.base) - 2))
        out, offset = [], 0
        for part, length in parts:
            lo, hi = max(start, offset), min(end, offset + length)
            if lo < hi:
                out.append((part, lo - offset, hi - offset))
            offset += length
        return out

    def read(self, part: int, lo: int, hi: int) -> bytes:
        if part == -1:
            return self.base[:2][lo:hi]
        if part == -2:
            return self.base[2:][lo:hi]
        return self._segment(part)[lo:hi]

    def iter_bytes(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        return (self.read(*c) for c in self.chunks(start, end))

    def all_bytes(self) -> bytes:
        return b"".join(self.read(*c) for c in self.chunks())
