"""Pieces the scenarios share: the simulator in its own process, timed child processes, medians."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Sim:
    api_base: str
    procore: dict[str, Any]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.api_base}/_sim/stats", timeout=30) as answer:  # noqa: S310 - loopback
            result: dict[str, Any] = json.load(answer)
            return result

    def first_request_after(self, since: float) -> float | None:
        """When the first API request at or after `since` (a Unix time) arrived, if one has."""
        url = f"{self.api_base}/_sim/stats?since={since!r}"
        with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 - loopback
            at: float | None = json.load(answer)["first_request_after"]
            return at

    def api_requests(self) -> int:
        """Answers Procore gave, API and storage host (everything but the object store and the bench's
        own reads)."""
        counts = self.stats()["requests"]
        return sum(n for route, n in counts.items() if route not in ("object", "sim_stats"))

    def listing_requests(self) -> int:
        """Answers of the API's listing and record routes (no token, no file, no object store)."""
        counts = self.stats()["requests"]
        return sum(counts.get(route, 0) for route in ("projects", "albums", "images", "image"))


@contextmanager
def simulator(**options: Any) -> Iterator[Sim]:
    """`syncer simulate` on a free port, in its own process, with `--option value` for each option."""
    args = [sys.executable, "-m", "syncer", "simulate", "--port", "0"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not None and value is not False:
            args += [flag, str(value)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)  # noqa: S603
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C"):
            break
    text = "".join(lines)
    section = yaml.safe_load(text.split("points at it:\n")[1].split("Ctrl-C")[0])
    try:
        yield Sim(api_base=section["procore"]["api_base"], procore=section["procore"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@dataclass
class Measured:
    started: float
    """When the process was started (Unix time), to compare with the simulator's clock."""
    wall: float
    cpu: float
    """User plus system seconds of the process."""
    peak_rss_mb: float
    code: int
    output: str


def measure(args: list[str], *, cwd: Path | None = None) -> Measured:
    """Run a command, returning its wall time, CPU time and peak RSS (from wait4)."""
    with tempfile.TemporaryFile() as out:
        started_at = time.time()
        started = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)  # noqa: S603
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read().decode(errors="replace")
    return Measured(
        started_at, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode, output
    )


def syncer_config(sim: Sim, folder: Path, **sync: Any) -> Path:
    config = {
        "procore": sim.procore,
        "database": {"url": "sqlite:///state/syncer.db"},
        "mirror": {"root": "mirror"},
        "sync": {"concurrency": 16, "per_page": 100, **sync},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_syncer(config: Path, *extra: str, under: Sequence[str] = ()) -> Measured:
    """One `syncer sync` run, optionally `under` a wrapping command (strace)."""
    result = measure(
        [*under, sys.executable, "-m", "syncer", "sync", "--config", str(config), "--progress", "off", *extra]
    )
    if result.code != 0:
        raise RuntimeError(f"syncer exited {result.code}:\n{result.output[-2000:]}")
    return result


SCRATCH: list[Path] = []


@contextmanager
def scratch() -> Iterator[Path]:
    """A new empty folder, removed only by `clean_up` when the bench ends: deleting thousands of
    files just before the next measured run makes the file system's inode allocation (ext4 without
    a journal skips recently freed inodes one by one) charge that run for the bench's own clean-up,
    which no real sync pays."""
    folder = Path(tempfile.mkdtemp(prefix="syncer-bench-"))
    SCRATCH.append(folder)
    yield folder


def clean_up() -> None:
    while SCRATCH:
        shutil.rmtree(SCRATCH.pop(), ignore_errors=True)


@dataclass
class Figure:
    name: str
    values: list[float]
    unit: str
    target: str | None = None
    passed: bool | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "runs": len(self.values),
            "target": self.target,
            "verdict": None if self.passed is None else ("PASS" if self.passed else "MISS"),
        }
