"""`syncer status`: what the database says the mirror holds, per project."""

from __future__ import annotations

from typing import Any

from syncer.config import Settings
from syncer.report import human_bytes
from syncer.store import Store


async def status_document(settings: Settings, store: Store | None = None) -> dict[str, Any]:
    """The status of every project, from `store` or from the configured database."""
    if store is None:
        store = await Store.open(settings.database_url)
        try:
            return await status_document(settings, store)
        finally:
            await store.close()
    projects = await store.status()
    return {
        "mirror": str(settings.mirror.root),
        "projects": [
            {
                "id": p.id,
                "name": p.name,
                "known": p.known,
                "mirrored": p.mirrored,
                "pending": p.pending,
                "failed": p.failed,
                "bytes": p.bytes,
                "checkpoint": p.checkpoint.isoformat() if p.checkpoint else None,
                "last_run_at": p.last_run_at.isoformat() if p.last_run_at else None,
                "last_outcome": p.last_outcome,
                "failures": p.failures,
            }
            for p in projects
        ],
    }


def render_status(document: dict[str, Any]) -> str:
    rows = [("project", "photos", "mirrored", "pending", "failed", "size", "checkpoint", "last run")]
    for p in document["projects"]:
        last = f"{(p['last_run_at'] or '')[:19]} {p['last_outcome'] or ''}".strip() or "never"
        rows.append(
            (
                f"{p['name'][:40]} ({p['id']})",
                str(p["known"]),
                str(p["mirrored"]),
                str(p["pending"]),
                str(p["failed"]),
                human_bytes(p["bytes"]),
                (p["checkpoint"] or "none")[:19],
                last,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"mirror: {document['mirror']}", ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append("(no projects yet: run `syncer sync`)")
    for p in document["projects"]:
        for f in p["failures"][:20]:
            lines.append(
                f"failed: {p['name']}: photo {f['id']} -> {f['path']} ({f['attempts']} attempts, "
                f"next try {(f['next_retry_at'] or 'next run')[:19]}): {f['error']}"
            )
    return "\n".join(lines)
