"""`syncer status`: what the database says the mirror holds, per project, and, with PostgreSQL,
which workers share the work, what each holds and how far it got."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from syncer.config import Settings
from syncer.log import terminal_lines, terminal_text
from syncer.report import human_bytes
from syncer.store import Store
from syncer.store.shared import WorkerInfo, team_status
from syncer.words import human_time, plural


async def status_document(
    settings: Settings, store: Store | None = None, *, failures_limit: int | None = 1000
) -> dict[str, Any]:
    """The status of every project, from `store` or from the configured database; at most
    `failures_limit` failed photos in all, or every one (None, for `syncer status`)."""
    if store is None:
        store = await Store.open(settings.database_url, create=False)
        try:
            return await status_document(settings, store, failures_limit=failures_limit)
        finally:
            await store.close()
    projects = await store.status(failures_limit=failures_limit)
    team = await team_status(store) if store.engine.dialect.name == "postgresql" else None
    document: dict[str, Any] = {
        "mirror": str(settings.mirror.root),
        "projects": [
            {
                "id": p.id,
                "name": p.name,
                "active": p.active,
                "known": p.known,
                "mirrored": p.mirrored,
                "pending": p.pending,
                "failed": p.failed,
                "bytes": p.bytes,
                "last_change_at": p.last_change_at.isoformat() if p.last_change_at else None,
                "checkpoint": p.checkpoint.isoformat() if p.checkpoint else None,
                "last_run_at": p.last_run_at.isoformat() if p.last_run_at else None,
                "last_outcome": p.last_outcome,
                "failures": p.failures,
            }
            for p in projects
        ],
    }
    if team is not None:
        for entry in document["projects"]:
            entry["listed_by"] = team.leases.get(entry["id"])
            entry["downloading"] = team.in_flight.get(entry["id"], 0)
        document["workers"] = [_worker(w) for w in team.workers]
    return document


def _worker(w: WorkerInfo) -> dict[str, Any]:
    return {
        "id": w.id,
        "host": w.host,
        "pid": w.pid,
        "state": "live" if w.live else "stopped" if w.stopped_at else "dead",
        "started_at": w.started_at.isoformat(),
        "heartbeat_at": w.heartbeat_at.isoformat(),
        "lease_expires_at": w.expires_at.isoformat(),
        "activity": w.activity if w.live else None,
        "projects": w.projects,
        "downloaded": w.downloaded,
        "bytes": w.bytes,
        "failed": w.failed,
    }


def render_status(document: dict[str, Any]) -> str:
    rows = [("project", "photos", "mirrored", "pending", "failed", "size", "checkpoint", "last run")]
    for p in document["projects"]:
        last = f"{_when(p['last_run_at'], '')} {p['last_outcome'] or ''}".strip() or "never"
        rows.append(
            (
                # escaped before the columns are measured
                f"{terminal_text(p['name'][:40])} ({p['id']}{'' if p['active'] else ', closed'})",
                str(p["known"]),
                str(p["mirrored"]),
                str(p["pending"]),
                str(p["failed"]),
                human_bytes(p["bytes"]),
                _when(p["checkpoint"], "none"),
                last,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"mirror: {document['mirror']}", ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append("(no projects yet: run `syncer sync`)")
    lines += _worker_lines(document)
    for p in document["projects"]:
        lines += _failure_lines(p)
    return terminal_lines(lines)


def _when(iso: str | None, otherwise: str) -> str:
    """A time of the document as a person reads it: local, saying its zone (`human_time`)."""
    return human_time(datetime.fromisoformat(iso)) if iso else otherwise


FAILURES_SHOWN = 20
"""Failed photos listed per project in the table; the rest are counted, and `--json` lists them."""


def _failure_lines(project: dict[str, Any]) -> list[str]:
    """The project's first failed photos, then how many more there are and where to see them."""
    listed = project["failures"]
    lines = [
        f"failed: {project['name']}: photo {f['id']} -> {f['path']} ({plural(f['attempts'], 'attempt')}, "
        f"next try {_when(f['next_retry_at'], 'next run')}): {f['error']}"
        for f in listed[:FAILURES_SHOWN]
    ]
    more = project["failed"] - len(lines)
    if more > 0:
        # the store may cut `failures` short: never promise more than the document holds
        held = "all" if len(listed) >= project["failed"] else f"{len(listed)} of the {project['failed']}"
        lines.append(
            f"... and {plural(more, 'more failed photo')} in {project['name']} "
            f"(`syncer status --json` lists {held})"
        )
    return lines


def _worker_lines(document: dict[str, Any]) -> list[str]:
    """The workers sharing the database (PostgreSQL only), then who lists which project now."""
    if "workers" not in document:
        return []
    workers = document["workers"]
    live = [w for w in workers if w["state"] == "live"]
    lines = ["", f"workers: {len(live)} live, {len(workers) - len(live)} stopped or dead in the last week"]
    for w in workers:
        doing = f"; {w['activity']}" if w["activity"] else ""
        lines.append(
            f"  {w['id']} ({w['state']}, pid {w['pid']} on {w['host']}, last heartbeat "
            f"{_when(w['heartbeat_at'], 'never')}): {w['downloaded']} downloaded "
            f"({human_bytes(w['bytes'])}), {w['failed']} failed{doing}"
        )
    for p in document["projects"]:
        if p["listed_by"] or p["downloading"]:
            lines.append(
                f"  {p['name']} ({p['id']}): listed by {p['listed_by'] or 'nobody now'}, "
                f"{plural(p['downloading'], 'download')} in flight"
            )
    return lines
