"""The sidecars beside each photo: its Procore metadata as JSON, readable without the database,
and as XMP for photo tools where asked.

Signed URLs are credentials for a while, so every URL in the sidecar has its query removed (the
record was scrubbed when it was parsed; this module only arranges it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from syncer.mirror.layout import SIDECAR_SUFFIX
from syncer.mirror.xmp import XmpNaming, xmp_bytes, xmp_path
from syncer.procore.models import Photo, photos_page

SCHEMA = 1


def sidecar_path(rel_path: str) -> str:
    return rel_path + SIDECAR_SUFFIX


def sidecar_bytes(
    *, raw: dict[str, Any], project_id: int, project_name: str, size: int | None, sha256: str | None
) -> bytes:
    document = {
        "schema": SCHEMA,
        "project": {"id": project_id, "name": project_name},
        "file": {"size": size, "sha256": sha256},
        "procore": raw,
    }
    # Compact: the C encoder is several times faster than the indented one (`jq .` pretty-prints).
    return (json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


@dataclass(frozen=True)
class Sidecars:
    """The metadata files that go with a photo wherever it goes (written, moved, trashed and
    removed with it, and checked by `verify`): the JSON sidecar always, and an XMP sidecar for
    photo tools when `mirror.xmp` asks for one."""

    xmp: XmpNaming = "off"
    web_base: str = "https://app.procore.com"

    def paths(self, rel: str) -> list[str]:
        return [sidecar_path(rel)] + ([xmp_path(rel, self.xmp)] if self.xmp != "off" else [])

    def documents(
        self,
        rel: str,
        photo: Photo,
        *,
        project_id: int,
        project_name: str,
        size: int | None,
        sha256: str | None,
    ) -> list[tuple[str, bytes]]:
        """Each sidecar's path and bytes for `photo` at `rel`: the JSON one first."""
        json_sidecar = sidecar_bytes(
            raw=photo.raw, project_id=project_id, project_name=project_name, size=size, sha256=sha256
        )
        documents = [(sidecar_path(rel), json_sidecar)]
        if self.xmp != "off":
            link = photos_page(self.web_base, project_id)
            xmp = xmp_bytes(photo, project_id=project_id, project_name=project_name, link=link)
            documents.append((xmp_path(rel, self.xmp), xmp))
        return documents
