"""How a syncer process shares a mirror with others: chosen once, at setup, by the database.

- `solo.py` (SQLite): one process per project at a time, kept apart by file locks under
  `.syncer/locks/`; a run's downloads go straight from its listing into its transfer pool.
- `team.py` (PostgreSQL): any number of worker processes; one lists a project under a lease in
  the database, and every worker claims its photos from the database in batches.

Both are a `Coordinator`; the engine, the transfers, the runner and the daemon only ever talk to
that protocol, as httpx's client talks to whichever transport it was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Protocol

from syncer.engine import Engine, Work
from syncer.procore.models import Project
from syncer.result import ProjectResult


class Coordinator(Work, Protocol):
    shares_mirror: bool
    """Other processes write into this mirror's state folder at any moment (partial downloads)."""

    def hold(self, project_ids: Sequence[int]) -> AbstractContextManager[None]:
        """Keep other processes off these projects for a one-shot run, or raise `LockedError`."""

    async def sync(
        self, engine: Engine, projects: list[Project], *, full: bool, force: bool, deadline: float | None
    ) -> list[ProjectResult]:
        """A one-shot run over the projects, in their order."""

    def take(self, project_id: int) -> AbstractAsyncContextManager[bool]:
        """The right to list the project now, if no one else has it (yields True); never waits."""

    async def help(self, engine: Engine, project: Project, *, deadline: float | None) -> ProjectResult | None:
        """While another process lists the project: download a share of it, or None if this mode
        has no share to give."""

    def serving(self) -> AbstractContextManager[None]:
        """Held for a daemon's whole life: refuses a second daemon where only one may run."""
