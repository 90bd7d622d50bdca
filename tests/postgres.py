"""A throwaway PostgreSQL server for the tests: its data in a temporary folder, on loopback.

`.ci/run` starts one for the whole run and names it in `SYNCER_TEST_POSTGRES`; elsewhere (a
developer's `make test`) it is started once per test session from the machine's PostgreSQL 15
binaries (Debian's `postgresql` package). Each test gets a database of its own.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from tests import pgserver

ENV = "SYNCER_TEST_POSTGRES"
"""A server URL given by `.ci/run`; without it the fixture starts a server of its own."""


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    if url := os.environ.get(ENV):
        yield url
        return
    if not pgserver.available():
        pytest.skip("PostgreSQL 15 is not installed here (Debian package postgresql)")
    server = pgserver.start()
    try:
        yield server.url
    finally:
        server.stop()


async def _create_database(server: str, name: str) -> None:
    for _ in range(50):
        try:
            conn = await asyncpg.connect(f"{server}/postgres")
            break
        except (OSError, asyncpg.CannotConnectNowError):
            await asyncio.sleep(0.1)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def new_database(server: str) -> str:
    """A fresh, empty database on `server`, as a `postgresql://` URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_database(server, name))
    return f"{server}/{name}"
