"""Photo record to a safe relative path in the mirror.

Upstream names are untrusted. Field values are cleaned before they are placed in the template, so
no value can add a folder level; then every path component is checked again, so the template's own
text cannot produce `..`, a hidden name, a reserved device name or a component over the file
system's 255-byte limit either. The photo id must appear in the file name, which makes every path
unique without depending on listing order.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from syncer.procore.models import Photo

DEFAULT_LAYOUT = "{project}/{album}/{taken:%Y-%m}/{id}_{filename}"
UNFILED = "Unfiled"
"""The album of photos without one: their folder's name, and their group's in the gallery."""
SIDECAR_SUFFIX = ".json"
MAX_COMPONENT_BYTES = 255
# The sidecar adds its suffix to the photo's name, so photo names leave room for it.
MAX_NAME_BYTES = MAX_COMPONENT_BYTES - len(SIDECAR_SUFFIX)
MAX_EXT_CHARS = 10

TEXT_FIELDS = frozenset({"project", "album", "stem", "uploader", "location"})
ID_FIELDS = frozenset({"id", "project_id", "album_id"})
TIME_FIELDS = frozenset({"taken", "created", "updated"})
FIELDS = TEXT_FIELDS | ID_FIELDS | TIME_FIELDS | {"filename", "ext"}

# Separators, characters Windows forbids, control characters, and the bidirectional overrides that
# can make a name display as something else ("photo\u202egpj.exe").
_UNSAFE_CHARS = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]')
_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in "123456789¹²³"] + [f"LPT{i}" for i in "123456789¹²³"]
)


class LayoutError(ValueError):
    pass


def clean_value(text: str) -> str:
    """One upstream string, made safe to stand inside a single path component."""
    text = unicodedata.normalize("NFC", text)
    text = _UNSAFE_CHARS.sub("_", text)
    return " ".join(text.split())


def clean_component(name: str) -> str:
    """A whole component: no empty, dot-led, dot- or space-ended, or reserved names."""
    name = name.rstrip(". ")
    if not name:
        return "_"
    if name.startswith("."):
        name = "_" + name
    if name.split(".", 1)[0].upper().rstrip(" ") in _RESERVED:
        name = "_" + name
    return name


def truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


def split_filename(filename: str | None) -> tuple[str, str]:
    """(stem, ext) of an upstream file name; an implausible extension stays in the stem."""
    name = clean_value(filename or "")
    stem, dot, ext = name.rpartition(".")
    if dot and stem and 0 < len(ext) <= MAX_EXT_CHARS and ext.isalnum():
        return stem, "." + ext
    return name or "photo", ""


@dataclass(frozen=True)
class _Slot:
    literal: str
    field: str | None
    spec: str


def _check_field(field: str, spec: str | None, conversion: str | None) -> None:
    if field not in FIELDS:
        raise LayoutError(f"unknown field {{{field}}}; known fields: {', '.join(sorted(FIELDS))}")
    if conversion:
        raise LayoutError(f"conversions like !{conversion} are not supported")
    if spec and field not in TIME_FIELDS:
        raise LayoutError(f"{{{field}}} takes no format; only dates do ({{taken:%Y}})")


def _check_components(components: list[list[_Slot]]) -> None:
    if any(not comp for comp in components):
        raise LayoutError("the layout has an empty folder level ('//' or a trailing '/')")
    for comp in components:
        if len("".join(s.literal for s in comp).encode("utf-8")) > 64:
            raise LayoutError("a folder or file name in the layout has over 64 bytes of fixed text")
    if not any(slot.field == "id" for slot in components[-1]):
        raise LayoutError("the file name part (after the last '/') must contain {id}")


class Layout:
    """A parsed layout template; `render` gives the relative POSIX path of a photo."""

    def __init__(self, template: str) -> None:
        self.template = template
        self._components = self._parse(template)

    @staticmethod
    def _parse(template: str) -> list[list[_Slot]]:
        if not template.strip():
            raise LayoutError("the layout is empty")
        if template.startswith("/"):
            raise LayoutError("the layout must be relative (it starts with '/')")
        components: list[list[_Slot]] = [[]]
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise LayoutError(f"cannot parse the layout: {exc}") from None
        for literal, field, spec, conversion in parsed:
            for i, piece in enumerate(literal.split("/")):
                if i:
                    components.append([])
                if piece:
                    components[-1].append(_Slot(piece, None, ""))
            if field is not None:
                _check_field(field, spec, conversion)
                components[-1].append(_Slot("", field, spec or ""))
        _check_components(components)
        return components

    def render(self, photo: Photo, *, project_name: str, project_id: int) -> str:
        values = self._values(photo, project_name, project_id)
        return "/".join(
            self._render_component(comp, values, last=i == len(self._components) - 1)
            for i, comp in enumerate(self._components)
        )

    @staticmethod
    def _values(photo: Photo, project_name: str, project_id: int) -> dict[str, Any]:
        stem, ext = split_filename(photo.filename)
        return {
            "project": clean_value(project_name) or f"project-{project_id}",
            "project_id": project_id,
            "album": clean_value(photo.album_name or "") or UNFILED,
            "album_id": photo.album_id if photo.album_id is not None else "none",
            "id": photo.id,
            "stem": stem,
            "ext": ext,
            "uploader": clean_value(photo.uploader_name or "") or "unknown",
            "location": clean_value(photo.location_name or "") or "no-location",
            "taken": photo.when,
            "created": photo.created_at,
            "updated": photo.updated_at,
        }

    def _render_component(self, comp: list[_Slot], values: dict[str, Any], *, last: bool) -> str:
        limit = MAX_NAME_BYTES if last else MAX_COMPONENT_BYTES
        texts = dict(values)
        while True:
            name = clean_component("".join(self._slot_text(s, texts) for s in comp))
            excess = len(name.encode("utf-8")) - limit
            if excess <= 0:
                return name
            used = {s.field for s in comp} | ({"stem"} if any(s.field == "filename" for s in comp) else set())
            candidates = [f for f in used if f in TEXT_FIELDS and texts[f]]
            if not candidates:
                # Only literal text is left to cut; ids are never cut, so a clipped literal is safe.
                return clean_component(truncate_utf8(name, limit))
            longest = max(candidates, key=lambda f: len(str(texts[f]).encode("utf-8")))
            current = str(texts[longest])
            keep = max(0, len(current.encode("utf-8")) - excess)
            texts[longest] = truncate_utf8(current, keep).rstrip() if keep else ""

    @staticmethod
    def _slot_text(slot: _Slot, values: dict[str, Any]) -> str:
        if slot.field is None:
            return clean_value(slot.literal)
        if slot.field == "filename":
            return f"{values['stem']}{values['ext']}"
        value = values[slot.field]
        if slot.field in TIME_FIELDS:
            if not isinstance(value, datetime):
                return "undated"
            return clean_value(value.strftime(slot.spec or "%Y-%m-%d"))
        return str(value)
