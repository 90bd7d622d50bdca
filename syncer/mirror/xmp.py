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

from syncer.procore.models import Photo

XmpNaming = Literal["off", "append", "replace"]
"""`append`: IMG_1.jpg.xmp (darktable, digiKam); `replace`: IMG_1.xmp (Lightroom)."""

NAMESPACE = "urn:procore-photo-sync:xmp:1.0/"
"""The project's own namespace, for the Procore ids and link (a URN: it names, it is not fetched)."""

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xmp_path(rel: str, naming: XmpNaming) -> str:
    """Where the XMP of the photo at `rel` goes. `replace` swaps the extension, except for a
    photo whose own extension is `.xmp`: its XMP would be the photo itself, so it is appended."""
    folder, _, name = rel.rpartition("/")
    stem, dot, extension = name.rpartition(".")
    if naming == "append" or not dot or not stem or extension.lower() == "xmp":
        return rel + ".xmp"
    return f"{folder}/{stem}.xmp" if folder else f"{stem}.xmp"


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    cleaned = _NOT_XML.sub("", value).strip()
    return cleaned or None


def _gps(value: float | None, limit: float, positive: str, negative: str) -> str | None:
    """XMP's GPS coordinate form: degrees, decimal minutes and a direction ("47,36.372000N")."""
    if value is None or not -limit <= value <= limit:
        return None
    degrees, minutes = divmod(abs(value) * 60, 60)
    return f"{int(degrees)},{minutes:.6f}{positive if value >= 0 else negative}"


def _when(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _location_parts(name: str | None) -> list[str]:
    """A location's path from the top: "Building A > Level 3" is Building A, then Level 3."""
    path = _text(name)
    return [part.strip() for part in path.split(">") if part.strip()] if path else []


def _escape(text: str) -> str:
    """Text as XML character data; a carriage return as a reference, which XML parsers would
    otherwise read as a line feed."""
    return escape(text, {"\r": "&#13;"})


def _bag(tag: str, items: Iterable[str], kind: str = "Bag") -> str:
    values = list(dict.fromkeys(items))
    if not values:
        return ""
    lis = "".join(f"<rdf:li>{_escape(v)}</rdf:li>" for v in values)
    return f"   <{tag}><rdf:{kind}>{lis}</rdf:{kind}></{tag}>\n"


def _simple(tag: str, value: str | None) -> str:
    return f"   <{tag}>{_escape(value)}</{tag}>\n" if value else ""


def xmp_bytes(photo: Photo, *, project_id: int, project_name: str, link: str) -> bytes:
    """The XMP document for `photo`, from its parsed fields (the same the database and the CSV
    index hold: ids as numbers, times in UTC)."""
    description = _text(photo.description)
    creator = _text(photo.uploader_name)
    album = _text(photo.album_name)
    trades = [t for name in photo.trades if (t := _text(name))]
    place = _location_parts(photo.location_name)
    keywords = [k for k in (album, *trades, *place) if k]
    hierarchy = [
        *([f"Album|{album}"] if album else []),
        *(f"Trade|{t}" for t in trades),
        *(["Location|" + "|".join(place)] if place else []),
    ]
    taken = _when(photo.when)
    lat, lon = _gps(photo.gps_lat, 90, "N", "S"), _gps(photo.gps_long, 180, "E", "W")
    own = [
        ("pps:PhotoId", str(photo.id)),
        ("pps:ProjectId", str(project_id)),
        ("pps:ProjectName", _text(project_name)),
        ("pps:AlbumId", str(photo.album_id) if photo.album_id is not None else None),
        ("pps:Link", link),
    ]
    body = (
        (
            f'   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{_escape(description)}</rdf:li>'
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
            if photo.starred is True
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
