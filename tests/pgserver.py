"""Start a throwaway PostgreSQL server on loopback, its data in a temporary folder.

Standard library only, so `.ci/run` can start the server with the system Python before the
project is installed (`python3 tests/pgserver.py` prints the URL, serves until SIGTERM), and the
test fixture in `tests/postgres.py` can start one itself when CI did not.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BINARIES = Path("/usr/lib/postgresql/15/bin")


def available() -> bool:
    return (BINARIES / "initdb").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    folder: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        # The server may still be writing its last files; it removes this one when it is done.
        deadline = time.monotonic() + 30
        while (self.folder / "data" / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.folder, ignore_errors=True)


def start() -> Server:
    """A running server that trusts local connections as `postgres`; fsync off (test data)."""
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
    process = subprocess.Popen(
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
    ready = [str(BINARIES / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    deadline = time.monotonic() + 30
    while subprocess.run(ready, check=False).returncode != 0:
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeError("the PostgreSQL test server did not start")
        time.sleep(0.1)
    return Server(f"postgresql://postgres@127.0.0.1:{port}", folder, process)


def main() -> None:
    server = start()
    print(server.url, flush=True)
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _frame: stopping.append(number))
    while not stopping and server.process.poll() is None:
        time.sleep(0.2)
    server.stop()


if __name__ == "__main__":
    main()
