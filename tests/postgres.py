"""A throwaway PostgreSQL server for the tests: its data in a temporary folder, on loopback.

Started once per test session from the machine's PostgreSQL 15 binaries (Debian's `postgresql`
package; `.ci/run` installs it where missing). Each test gets a database of its own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

BINARIES = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    if not (BINARIES / "initdb").exists():
        pytest.skip("PostgreSQL 15 is not installed here (Debian package postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="syncer-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    subprocess.run(
        [
            *as_user,
            str(BINARIES / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    server = subprocess.Popen(
        [
            *as_user,
            str(BINARIES / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(folder),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    time.sleep(0.3)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


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
