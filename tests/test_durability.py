"""The durability order, observed from outside: the system calls a real `syncer` makes."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

import pytest

from syncer.simulator import Simulator
from tests.conftest import in_mirror, lose_database, write_config

CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)\) += (-?\d+)")
UNFINISHED = re.compile(r"^(\d+)\s+(\w+)\((.*) <unfinished \.\.\.>$")
RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>")


def traced_calls(trace: Path) -> list[tuple[str, list[str]]]:
    """(call, paths) of each traced call that succeeded, in the order the calls completed; paths
    are the quoted arguments, or what `-y` shows behind a descriptor."""
    calls: list[tuple[str, list[str]]] = []
    pending: dict[str, tuple[str, str]] = {}
    for line in trace.read_text(encoding="utf-8", errors="replace").splitlines():
        if m := UNFINISHED.match(line):
            pending[m[1]] = (m[2], m[3])
            continue
        if m := RESUMED.match(line):
            name, args = pending.pop(m[1], (m[2], ""))
            ok = line.rstrip().endswith("= 0")
        elif m := CALL.match(line):
            name, args, ok = m[2], m[3], m[4] == "0"
        else:
            continue
        if ok:
            paths = re.findall(r'"((?:[^"\\]|\\.)*)"', args) or re.findall(r"<([^<>]*)>", args)
            calls.append((name, [unescape(p) for p in paths]))
    return calls


def unescape(text: str) -> str:
    """A path as strace prints it (octal escapes for bytes beyond ASCII) back to the path."""
    return text.encode("latin-1").decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")


async def traced_sync(config: Path, trace: Path) -> list[tuple[str, list[str]]]:
    """Run `syncer sync` under strace (fsyncs and renames only); its calls, as `traced_calls`."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed here (.ci/run installs Debian's strace)")
    proc = await asyncio.create_subprocess_exec(
        *(strace, "-f", "-y", "-qq", "-s", "4096", "-e", "signal=none"),
        *("-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-o", str(trace)),
        *(sys.executable, "-m", "syncer", "sync", "--config", str(config)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(proc.wait(), timeout=120) == 0
    return traced_calls(trace)


def mirrored_photos(root: Path) -> list[Path]:
    """The photo files of the mirror (each beside its sidecar), as resolved paths."""
    root = root.resolve()
    return [p.with_name(p.name.removesuffix(".json")) for p in root.rglob("*.json") if in_mirror(p, root)]


async def test_each_photo_is_fsynced_before_its_rename_and_its_folder_after(
    sim: Simulator, tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path, sync={"concurrency": 4})
    calls = await traced_sync(config, tmp_path / "sync.trace")
    photos = mirrored_photos(tmp_path / "mirror")
    assert len(photos) == len(sim.company.photos)
    synced = {i for i, (name, _) in enumerate(calls) if name in ("fsync", "fdatasync")}
    for photo in photos:
        renamed = [
            i
            for i, (name, paths) in enumerate(calls)
            if name.startswith("rename") and paths[-1:] == [str(photo)]
        ]
        assert len(renamed) == 1, f"{photo} was renamed into place once"
        at = renamed[0]
        temp = calls[at][1][0]
        assert "/.syncer/tmp/" in temp
        assert any(i < at and calls[i][1] == [temp] for i in synced), (
            f"{photo}: not fsynced before its rename"
        )
        folder = str(photo.parent)
        assert any(i > at and calls[i][1] == [folder] for i in synced), f"{photo}: folder not fsynced after"


async def test_an_adopted_photo_is_fsynced_with_its_folder_before_it_is_recorded(
    sim: Simulator, tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path)
    await traced_sync(config, tmp_path / "first.trace")
    lose_database(tmp_path)  # the next run adopts every file
    calls = await traced_sync(config, tmp_path / "adopt.trace")
    synced = {paths[0] for name, paths in calls if name in ("fsync", "fdatasync") and paths}
    for photo in mirrored_photos(tmp_path / "mirror"):
        assert str(photo) in synced, f"{photo}: recorded without an fsync"
        assert str(photo.parent) in synced, f"{photo}: its folder was not fsynced"
