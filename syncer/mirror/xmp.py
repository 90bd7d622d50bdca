"""The XMP sidecar beside a photo, for photo tools (darktable, digiKam, Lightroom): the photo's
Procore metadata where those tools look for it, without touching the photo's own bytes (they stay
identical to Procore's and to the SHA-256 on record).

The XML is written here by hand: the maintained XMP libraries for Python (python-xmp-toolkit,
pyexiv2) wrap C libraries (Exempi, Exiv2) that do not install from the package registry on every
platform the syncer runs on, and the document is small and fixed in shape. Every value comes from
Procore and is untrusted: it is escaped, and characters XML 1.0 cannot hold are dropped, so the
file always parses. Its bytes depend only on the record, so `verify` can compare them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal
from xml.sax.saxutils import escape, quoteattr

XmpNaming = Literal["off", "append", "replace"]
"""`append`: IMG_1.jpg.xmp (darktable, digiKam); `replace`: IMG_1.xmp (Lightroom)."""

NAMESPACE = "urn:procore-photo-sync:xmp:1.0/"
"""The project's own namespace, for the Procore ids and link (a URN: it names, it is not fetched)."""

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xmp_path(rel: str, naming: XmpNaming) -> str:
    if naming == "append":
        return rel + ".xmp"
    folder, _, name = rel.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{folder}/{stem}.xmp" if folder else f"{stem}.xmp"


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    cleaned = _NOT_XML.sub("", value).strip()
    return cleaned or None


def _gps(value: Any, limit: float, positive: str, negative: str) -> str | None:
    """XMP's GPS coordinate form: degrees, decimal minutes and a direction ("47,36.372000N")."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not -limit <= value <= limit:
        return None
    degrees, minutes = divmod(abs(float(value)) * 60, 60)
    return f"{int(degrees)},{minutes:.6f}{positive if value >= 0 else negative}"


def _when(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat().replace("+00:00", "Z")
    except ValueError:
        return None


def _names(items: Any) -> list[str]:
    if not isinstance(items, list):
        return []
    return [name for item in items if isinstance(item, dict) and (name := _text(item.get("name")))]


def _location_parts(location: Any) -> list[str]:
    """A location's path from the top: "Building A > Level 3" is Building A, then Level 3."""
    if not isinstance(location, dict):
        return []
    path = _text(location.get("node_name")) or _text(location.get("name"))
    return [part.strip() for part in path.split(">") if part.strip()] if path else []


def _bag(tag: str, items: Iterable[str], kind: str = "Bag") -> str:
    values = list(dict.fromkeys(items))
    if not values:
        return ""
    lis = "".join(f"<rdf:li>{escape(v)}</rdf:li>" for v in values)
    return f"   <{tag}><rdf:{kind}>{lis}</rdf:{kind}></{tag}>\n"


def _simple(tag: str, value: str | None) -> str:
    return f"   <{tag}>{escape(value)}</{tag}>\n" if value else ""


def xmp_bytes(raw: dict[str, Any], *, project_id: int, project_name: str, link: str) -> bytes:
    """The XMP document for the photo record `raw` (Procore's image object, URLs scrubbed)."""
    description = _text(raw.get("description"))
    uploader = raw.get("uploader")
    creator = _text(uploader.get("name")) if isinstance(uploader, dict) else None
    album = _text(raw.get("image_category_name"))
    trades = _names(raw.get("trades"))
    place = _location_parts(raw.get("location"))
    keywords = [k for k in (album, *trades, *place) if k]
    hierarchy = [
        *([f"Album|{album}"] if album else []),
        *(f"Trade|{t}" for t in trades),
        *(["Location|" + "|".join(place)] if place else []),
    ]
    taken = _when(raw.get("taken_at")) or _when(raw.get("created_at"))
    lat, lon = _gps(raw.get("gps_lat"), 90, "N", "S"), _gps(raw.get("gps_long"), 180, "E", "W")
    own = [
        ("pps:PhotoId", str(raw["id"]) if isinstance(raw.get("id"), int) else None),
        ("pps:ProjectId", str(project_id)),
        ("pps:ProjectName", _text(project_name)),
        (
            "pps:AlbumId",
            str(raw["image_category_id"]) if isinstance(raw.get("image_category_id"), int) else None,
        ),
        ("pps:Link", link),
    ]
    body = (
        (
            f'   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(description)}</rdf:li>'
            "</rdf:Alt></dc:description>\n"
            if description
            else ""
        )
        + _bag("dc:creator", [creator] if creator else [], "Seq")
        + _bag("dc:subject", keywords)
        + _bag("lr:hierarchicalSubject", hierarchy)
        + _simple("exif:DateTimeOriginal", taken)
        + _simple("photoshop:DateCreated", taken)
        + (_simple("exif:GPSLatitude", lat) + _simple("exif:GPSLongitude", lon) if lat and lon else "")
        + (
            "   <xmp:Rating>5</xmp:Rating>\n   <xmp:Label>Starred</xmp:Label>\n"
            if raw.get("starred") is True
            else ""
        )
        + "".join(_simple(tag, value) for tag, value in own)
    )
    document = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        '    xmlns:exif="http://ns.adobe.com/exif/1.0/"\n'
        '    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"\n'
        '    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"\n'
        f"    xmlns:pps={quoteattr(NAMESPACE)}>\n"
        f"{body}"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>\n'
    )
    return document.encode("utf-8")
