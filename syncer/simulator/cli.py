"""`syncer simulate` (the simulator alone, to try by hand) and `syncer demo` (a real sync from it)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import sys
from pathlib import Path

import yaml

from syncer.simulator.server import SimConfig, Simulator
from syncer.words import plural

DEMO_SEED = 7


async def serve(args: argparse.Namespace) -> int:
    sim = Simulator(
        SimConfig(
            seed=args.seed,
            photos=args.photos,
            projects=args.projects,
            photo_size=args.photo_size,
            error_rate=args.error_rate,
            cut_rate=args.cut_rate,
            spike_limit=args.spike_limit,
            spike_window=args.spike_window,
            hourly_limit=args.hourly_limit,
            hourly_window=args.hourly_window,
            count_file_requests=not args.free_file_requests,
            latency=args.latency,
            store_latency=args.store_latency,
            bandwidth=args.bandwidth,
            max_per_page=args.max_per_page,
            tied=args.tied,
            sub_second=not args.whole_seconds,
            range_end=args.range_end,
        )
    )
    await sim.start(api_port=args.port, store_port=args.store_port)
    config = {"procore": sim.procore_settings()}
    print(f"Procore simulator: API {sim.api_base}, storage {sim.storage_base}, object store {sim.store_base}")
    company = f"{plural(len(sim.company.projects), 'project')}, {plural(len(sim.company.photos), 'photo')}"
    print(f"{company} (seed {args.seed}).")
    print("A config section that points at it:\n")
    print(yaml.safe_dump(config, sort_keys=False))
    print("Ctrl-C stops it.", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()
    return 0


async def demo(args: argparse.Namespace) -> int:
    from syncer.config import load_settings
    from syncer.report import make_progress, render_summary
    from syncer.result import RunSummary
    from syncer.runner import run_sync

    folder = Path(args.dir).resolve()  # noqa: ASYNC240 - before anything runs
    state = folder / ".syncer"
    state.mkdir(parents=True, exist_ok=True)
    async with Simulator(SimConfig(seed=DEMO_SEED, photos=args.photos)) as sim:
        config_path = state / "demo-config.yaml"
        config_path.write_text(
            "# Written by `syncer demo`: points at the simulator it started (gone once the demo ends).\n"
            + yaml.safe_dump(
                {
                    "procore": sim.procore_settings(),
                    "database": {"url": "sqlite:///syncer.db"},
                    "mirror": {"root": "..", "xmp": "append"},  # photo tools see the metadata too
                    "gallery": {"enabled": True},
                },
                sort_keys=False,
            ),
            encoding="utf-8",
        )
        print(
            f"Simulated company: {plural(len(sim.company.projects), 'project')}, "
            f"{plural(len(sim.company.photos), 'photo')}; "
            f"syncing into {folder}",
            flush=True,
        )
        settings = load_settings(config_path)
        progress = make_progress(enabled=None if args.progress == "auto" else args.progress == "on")
        summary = RunSummary()
        try:
            await run_sync(settings, progress=progress, summary=summary)
        except asyncio.CancelledError:  # Ctrl-C: the demo's end is its summary (exit 130)
            if summary.interrupted is None:
                raise
    print(render_summary(summary))
    print(f"\nPhotos and their .json sidecars are in {folder}.")
    print(f"See what is mirrored: {_this_syncer()} status --config {_shown(config_path)}")
    return int(summary.exit_code)


def _this_syncer() -> str:
    """A command that runs this same syncer from a fresh shell: `make demo` installs it in a
    virtual environment whose `bin` is not on the PATH, so a bare `syncer` would not be found."""
    script = Path(sys.executable).parent / "syncer"
    if script.is_file():
        return _shown(script)
    return f"{_shown(Path(sys.executable))} -m syncer"


def _shown(path: Path) -> str:
    """`path` relative to the working folder when it is inside it, else absolute; quoted for a shell."""
    path = path.absolute()
    with contextlib.suppress(ValueError):
        path = path.relative_to(Path.cwd())
    return shlex.quote(str(path))
