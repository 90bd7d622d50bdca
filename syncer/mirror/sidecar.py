"""The JSON sidecar beside each photo: its Procore metadata, readable without the database.

Signed URLs are credentials for a while, so every URL in the sidecar has its query removed (the
record was scrubbed when it was parsed; this module only arranges it).
"""

from __future__ import annotations

import json
from typing import Any

from syncer.mirror.layout import SIDECAR_SUFFIX

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
