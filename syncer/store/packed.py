"""How a photo's Procore record is kept in `photos.raw_json`: deflated against a preset dictionary.

The record is most of a photo's row, and most of the record is the same from one photo to the
next: its keys, in Procore's order, and values such as `"private":false`. Deflate alone halves a
record of about 1 KB, since one record has too little to learn from; primed with a dictionary of
typical records it finds those repeats in the dictionary and keeps about a fifth. Nothing is
dropped: the record comes back exactly as stored, so sidecars, `verify` and the workers' claims
read what Procore sent.

The first byte names the dictionary a value was packed with. A value packed once must unpack for
ever, so a dictionary is never changed: a better one is added under the next number.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

_TEMPLATES: list[dict[str, Any]] = [
    {
        "id": 562950208716653,
        "url": "https://storage.procore.com/api/v5/files/us-east-1/pro-core.com/companies/4821/01HZX4",
        "thumbnail_url": "https://storage.procore.com/api/v5/files/us-east-1/pro-core.com/companies/4821/0",
        "size": 3145728,
        "filename": "IMG_0001.JPG",
        "description": "",
        "taken_at": "2025-06-18T01:49:27Z",
        "created_at": "2025-06-18T23:05:04Z",
        "updated_at": "2025-07-07T11:56:03Z",
        "location": {
            "id": 562950208719395,
            "name": "Building A > Level 1",
            "node_name": "Building A > Level 1",
            "parent_id": 562950208719320,
        },
        "image_category_id": 562950208719717,
        "image_category_name": "Site Progress",
        "image_category_private": False,
        "permanently_deleted": False,
        "private": False,
        "starred": False,
        "projection": "regular",
        "width": 4032,
        "height": 3024,
        "origin_id": None,
        "daily_log_header_id": None,
        "daily_log_segment_id": None,
        "log_date": None,
        "gps_lat": None,
        "gps_long": None,
        "uploader": {"id": 562950208718891, "login": "jordan@builder.example", "name": "Jordan Smith"},
        "links": {},
        "trades": [{"id": 562950208719091, "name": "Concrete", "active": True}],
        "comments_count": 0,
    },
    {
        "id": 562950208716981,
        "url": "https://procore-us-east-1.s3.amazonaws.com/companies/4821/projects/562950208719695/images/",
        "thumbnail_url": "https://storage.procore.com/api/v4/files/us-east-1/pro-core.com/companies/4821/",
        "size": 2097152,
        "filename": "photo.jpeg",
        "description": "Rebar placement at grid C-4, east half",
        "taken_at": None,
        "created_at": "2024-11-02T14:20:31Z",
        "updated_at": "2024-11-03T08:02:45Z",
        "location": None,
        "image_category_id": None,
        "image_category_name": None,
        "image_category_private": True,
        "permanently_deleted": False,
        "private": True,
        "starred": True,
        "projection": "360",
        "width": 1920,
        "height": 1080,
        "origin_id": 562950208716000,
        "daily_log_header_id": 562950208717000,
        "daily_log_segment_id": 562950208717001,
        "log_date": "2024-11-02",
        "gps_lat": 37.774929,
        "gps_long": -122.419416,
        "uploader": {"id": 562950208718892, "login": "maria@builder.example", "name": "Maria Garcia"},
        "links": {},
        "trades": [],
        "comments_count": 2,
    },
]
"""Two typical records, whose keys and common values make the dictionary (the second with the
fields the first leaves empty, and URLs of Procore's older shapes)."""

DICTIONARIES = {1: "".join(json.dumps(t, separators=(",", ":")) for t in reversed(_TEMPLATES)).encode()}
"""Deflate's preset dictionaries by the number in a packed value's first byte. Frozen (see above)."""
CURRENT = 1


def pack(record: str) -> bytes:
    """The record (JSON text) as stored: its dictionary's number, then raw deflate."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARIES[CURRENT])
    return bytes([CURRENT]) + packer.compress(record.encode("utf-8", "surrogatepass")) + packer.flush()


def unpack(stored: bytes) -> str:
    """The record `pack` was given."""
    unpacker = zlib.decompressobj(-15, DICTIONARIES[stored[0]])
    return (unpacker.decompress(stored[1:]) + unpacker.flush()).decode("utf-8", "surrogatepass")
