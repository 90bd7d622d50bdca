"""How a syncer process shares a mirror with others: chosen once, at setup, by the database.

- `solo.py` (SQLite): one process per project at a time, kept apart by file locks under
  `.syncer/locks/`; a run's downloads go straight from its listing into its transfer pool.
- `team.py` (PostgreSQL): any number of worker processes; one lists a project under a lease in
  the database, and every worker claims its photos from the database in batches.

Both are a `Coordinator`, and the runner and the daemon each call one method of it (`sync` for a
one-shot run, `turn` for a daemon's turn), as httpx's client calls its transport's one method.
The engine sees only its `Work` part: the guard each transfer asks, and where a run's downloads
come from.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from syncer.engine import Engine, Work
from syncer.procore.models import Project
from syncer.result import ProjectResult, Turns


class Coordinator(Work, Protocol):
    shares_mirror: bool
    """Other processes write into this mirror's state folder at any moment (partial downloads)."""

    def hold(self, project_ids: Sequence[int]) -> AbstractContextManager[None]:
        """Keep other processes off these projects for a one-shot run, or raise `LockedError`."""

    async def sync(
        self,
        engine: Engine,
        projects: list[Project],
        turns: Turns,
        *,
        full: bool,
        force: bool,
        deadline: float | None,
    ) -> None:
        """A one-shot run over the projects, in their order; their results go to `turns` as they
        are made, so that an interrupted run still has them."""

    async def turn(
        self, engine: Engine, project: Project, *, full: bool, deadline: float | None
    ) -> ProjectResult | None:
        """A daemon's turn of one project: sync it if no other process lists it now (never
        waiting); else download a share of it where this mode has one (`helped` is set), or None."""

    def serving(self) -> AbstractContextManager[None]:
        """Held for a daemon's whole life: refuses a second daemon where only one may run."""
