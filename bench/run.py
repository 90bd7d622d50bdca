"""Run the benchmark scenarios and print a table; write bench/results/latest.json.

    python -m bench.run [--scale full|quick|smoke] [--only NAME ...] [--out PATH]

Every figure is a ratio or a count measured in the same run, so it holds on a noisy machine; each
is the median of the scale's repeats, with the spread. Targets print PASS or MISS and are never
adjusted to the result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import company, gallery
from bench.harness import (
    Figure,
    Measured,
    Sim,
    clean_up,
    measure,
    run_syncer,
    scratch,
    simulator,
    syncer_config,
)

SCALES: dict[str, dict[str, Any]] = {
    "full": {
        "repeat": 3,
        "transfer": [800, 2000],
        "small": 20_000,
        "noop": 10_000,
        "first_sync": 100_000,
        "big": 500_000_000,
        "budget_window": 10.0,
        "budget_windows": 3,
        "thumbnails": 100,
        "gallery": 100_000,
        "company": {
            "projects": 1000,
            "reconcile_photos": 100_000,
            "caps": (1000, 2000),
            "speed": 20,
            "seconds": 600,
        },
        "database": (1_000_000, 1_000, 5_000),
        "backfill": 20_000,
    },
    "quick": {
        "repeat": 3,
        "transfer": [300],
        "small": 3000,
        "noop": 10_000,
        "first_sync": 10_000,
        "big": 100_000_000,
        "budget_window": 2.5,
        "budget_windows": 3,
        "thumbnails": 24,
        "gallery": 20_000,
        "company": {
            "projects": 300,
            "reconcile_photos": 20_000,
            "caps": (1000, 2000),
            "speed": 20,
            "seconds": 120,
        },
        "database": (100_000, 100, 2_000),
        "backfill": 3_000,
    },
    "smoke": {
        "repeat": 1,
        "transfer": [20],
        "small": 40,
        "noop": 300,
        "first_sync": 300,
        "big": 3_000_000,
        "budget_window": 1.0,
        "budget_windows": 2,
        "thumbnails": 4,
        "gallery": 500,
        "company": {"projects": 10, "reconcile_photos": 500, "caps": (1000,), "speed": 60, "seconds": 4},
        "database": (2_000, 10, 200),
        "backfill": 600,
    },
}
GENEROUS = {"spike_limit": 10**9, "hourly_limit": 10**9}


def ensure_aria2c(*, install: bool) -> str | None:
    found = shutil.which("aria2c")
    if found or not install:
        return found
    print("aria2c is missing: installing Debian's aria2 package for the transfer comparison", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "aria2"], check=False, capture_output=True)  # noqa: S607
    if not shutil.which("aria2c"):
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)  # noqa: S607
        subprocess.run(["apt-get", "install", "-y", "-qq", "aria2"], check=False, capture_output=True)  # noqa: S607
    return shutil.which("aria2c")


def store_urls(sim: Sim) -> list[tuple[int, str]]:
    """(id, presigned object-store URL) of every photo: the first hop resolved once, for the
    download tools that know nothing of Procore."""
    form = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": sim.procore["client_id"],
            "client_secret": sim.procore["client_secret"],
        }
    )
    with urllib.request.urlopen(f"{sim.api_base}/oauth/token", data=form.encode(), timeout=30) as r:  # noqa: S310
        token = json.load(r)["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Procore-Company-Id": str(sim.procore["company_id"])}

    def get(url: str) -> Any:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:  # noqa: S310
            return json.load(r)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    urls = []
    for project in get(f"{sim.api_base}/rest/v1.0/projects?company_id={sim.procore['company_id']}"):
        page = 1
        while items := get(
            f"{sim.api_base}/rest/v1.0/images?project_id={project['id']}&per_page=100&page={page}"
        ):
            for item in items:
                try:
                    opener.open(urllib.request.Request(item["url"], headers=headers), timeout=30)  # noqa: S310
                except urllib.error.HTTPError as redirect:
                    urls.append((item["id"], redirect.headers["Location"]))
            page += 1
    return urls


def sequential_download(urls: list[tuple[int, str]], folder: Path) -> None:
    for photo_id, url in urls:
        with urllib.request.urlopen(url, timeout=60) as answer:  # noqa: S310 - loopback
            (folder / f"{photo_id}.jpg").write_bytes(answer.read())


def aria2c_download(aria2c: str, urls: list[tuple[int, str]], folder: Path) -> Measured:
    """aria2c -j16 over the presigned URLs (the first hop already resolved), like the syncer's
    concurrency 16."""
    listing = folder / "urls.txt"
    listing.write_text("".join(f"{url}\n  out={pid}.jpg\n" for pid, url in urls))
    options = ["-q", "-j", "16", "-x", "1", "--allow-overwrite=true", "--auto-file-renaming=false"]
    tool = measure([aria2c, *options, "-i", str(listing), "-d", str(folder / "out")])
    if tool.code != 0:
        raise RuntimeError(f"aria2c failed: {tool.output[-500:]}")
    return tool


def futex_calls(sim: Sim, photos: int) -> float | None:
    """futex calls per photo of one syncer run, counted by `strace -f -c` (None without strace):
    each is a thread waiting for or handing over the GIL or a lock."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    with scratch() as folder:
        counts = folder / "strace.txt"
        run_syncer(
            syncer_config(sim, folder), under=[strace, "-f", "-c", "-e", "trace=futex", "-o", str(counts)]
        )
        for line in counts.read_text().splitlines():
            fields = line.split()
            if fields and fields[-1] == "futex":
                return int(fields[3]) / photos
    return 0.0


def transfer(scale: dict[str, Any], aria2c: str | None) -> list[Figure]:
    """256 KB photos behind 20 ms of object-store latency, concurrency 16: the syncer's whole
    run (start-up, listing, two requests a photo) against aria2c fetching the same bytes from
    presigned URLs, CPU and wall, side by side in each repeat."""
    figures: list[Figure] = []
    repeat, largest = scale["repeat"], max(scale["transfer"])
    for n in scale["transfer"]:
        cpu_ratio, wall_ratio, ours_ms, theirs_ms, vs_seq = [], [], [], [], []
        with simulator(photos=n, projects=1, photo_size=256_000, store_latency=0.02, **GENEROUS) as sim:
            urls = store_urls(sim)
            for _ in range(repeat):
                with scratch() as folder:
                    ours = run_syncer(syncer_config(sim, folder))
                ours_ms.append(ours.cpu * 1000 / n)
                if aria2c:
                    with scratch() as folder:
                        theirs = aria2c_download(aria2c, urls, folder)
                    theirs_ms.append(theirs.cpu * 1000 / n)
                    cpu_ratio.append(ours.cpu / theirs.cpu)
                    wall_ratio.append(ours.wall / theirs.wall)
                if n == largest:
                    with scratch() as folder:
                        started = time.perf_counter()
                        sequential_download(urls, folder)
                        vs_seq.append((time.perf_counter() - started) / ours.wall)
            futex = futex_calls(sim, n)
        name = f"transfer {n} x 256 KB"
        if aria2c:
            headline = Figure(f"{name}: syncer CPU per photo / aria2c's", cpu_ratio, "x", "<= 2x")
            headline.passed = headline.median <= 2
            limit = 1.1 if n >= 2000 else 1.2
            wall = Figure(
                f"{name}: full run, syncer time / aria2c -j16 time",
                wall_ratio,
                "x",
                f"<= {limit}x, max < 1.4x",
            )
            wall.passed = wall.median <= limit and max(wall_ratio) < 1.4
            figures += [headline, wall, Figure(f"{name}: aria2c CPU per photo", theirs_ms, "ms")]
        figures.append(Figure(f"{name}: syncer CPU per photo", ours_ms, "ms"))
        if vs_seq:
            seq = Figure(f"{name}: sequential time / syncer time", vs_seq, "x", ">= 5x")
            seq.passed = seq.median >= 5
            figures.append(seq)
        if futex is not None:
            calls = Figure(f"{name}: futex calls per photo (strace -c, 1 run)", [futex], "calls", "<= 5")
            calls.passed = futex <= 5
            figures.append(calls)
    return figures


def many_small(scale: dict[str, Any], _aria2c: str | None) -> list[Figure]:
    n, repeat = scale["small"], scale["repeat"]
    rates, cpu = [], []
    with simulator(photos=n, projects=1, photo_size=8_000, **GENEROUS) as sim:
        for _ in range(repeat):
            with scratch() as folder:
                result = run_syncer(syncer_config(sim, folder))
            rates.append(n / result.wall)
            cpu.append(result.cpu * 1000 / n)
    per_photo = Figure(f"many-small {n} x 8 KB: syncer CPU per photo", cpu, "ms", "<= 1.0 ms")
    per_photo.passed = per_photo.median <= 1.0
    return [Figure(f"many-small {n} x 8 KB: photos per second", rates, "photos/s"), per_photo]


def noop(scale: dict[str, Any], _aria2c: str | None) -> list[Figure]:
    """A run that finds nothing new: its wall time, its API requests, and how long the process
    takes from its start to its first request (imports and set-up)."""
    n, repeat, projects = scale["noop"], scale["repeat"], 2
    walls, requests, startups = [], [], []
    with simulator(photos=n, projects=projects, photo_size=2_000, **GENEROUS) as sim, scratch() as folder:
        config = syncer_config(sim, folder, overlap="5m")
        run_syncer(config)
        for _ in range(repeat):
            before = sim.api_requests()
            run = run_syncer(config)
            walls.append(run.wall)
            requests.append((sim.api_requests() - before) / projects)
            first = sim.first_request_after(run.started)
            if first is not None:
                startups.append(first - run.started)
    wall = Figure(f"no-op incremental run over {n} photos: wall time", walls, "s", "<= 0.5 s")
    wall.passed = wall.median <= 0.5
    reqs = Figure(
        f"no-op incremental run over {n} photos: API requests per project", requests, "requests", "<= 3"
    )
    reqs.passed = reqs.median <= 3
    start = Figure("no-op: start-up to the first request", startups, "s", "<= 0.25 s")
    start.passed = start.median <= 0.25
    return [start, wall, reqs]


def memory(scale: dict[str, Any], _aria2c: str | None) -> list[Figure]:
    """Peak RSS of a first sync of many photos (one run) and of one big photo."""
    n, size, repeat = scale["first_sync"], scale["big"], scale["repeat"]
    with simulator(photos=n, projects=2, photo_size=2_000, **GENEROUS) as sim, scratch() as folder:
        first = run_syncer(syncer_config(sim, folder))
    rss = Figure(f"memory: first sync of {n} photos, peak RSS (1 run)", [first.peak_rss_mb], "MB", "< 200 MB")
    rss.passed = rss.median < 200
    peaks = []
    with simulator(photos=1, projects=1, photo_size=size, **GENEROUS) as sim:
        for _ in range(repeat):
            with scratch() as folder:
                peaks.append(run_syncer(syncer_config(sim, folder)).peak_rss_mb)
    big = Figure(f"memory: one {size // 1_000_000} MB photo, peak RSS", peaks, "MB", "< 200 MB")
    big.passed = big.median < 200
    return [rss, big]


def budget(scale: dict[str, Any], _aria2c: str | None) -> list[Figure]:
    """How much of a rate limit the pacer turns into photos: photos per minute, from the first
    request to the end of the run (start-up is the no-op scenario's figure), over the limit's
    ceiling; and the share of answers that were 429."""
    window, repeat, limit = scale["budget_window"], scale["repeat"], 25
    photos = limit * scale["budget_windows"]
    ceiling = limit / window * 60  # counted requests per minute; each photo costs one (its file URL)
    shares, throttled = [], []
    with simulator(
        photos=photos,
        projects=1,
        photo_size=2_000,
        spike_limit=limit,
        spike_window=window,
        hourly_limit=10**9,
    ) as sim:
        for _ in range(repeat):
            before_429, before_all = sim.stats()["rate_limited"], sim.api_requests()
            with scratch() as folder:
                result = run_syncer(syncer_config(sim, folder))
            first = sim.first_request_after(result.started) or result.started
            paced = result.started + result.wall - first
            shares.append((photos / paced * 60) / ceiling)
            answers = sim.api_requests() - before_all
            throttled.append(100 * (sim.stats()["rate_limited"] - before_429) / max(1, answers))
    use = Figure(
        f"budget {limit} per {window:g} s: photos per minute from the first request / the limit's ceiling",
        shares,
        "x",
        ">= 0.95",
    )
    use.passed = use.median >= 0.95
    rate = Figure(f"budget {limit} per {window:g} s: answers that were 429", throttled, "%", "< 0.5%")
    rate.passed = rate.median < 0.5
    return [use, rate]


def newest_first(root: Path, share: float) -> tuple[float, float]:
    """(seconds until the newest `share` of a mirror's photos were all installed, seconds until
    all were), from the first install: each photo's `updated_at` from its sidecar, and when it was
    installed from its file's inode change time (the mirror sets the modification time to the
    photo's own)."""
    installed: list[tuple[str, float]] = []
    for sidecar in root.rglob("*.json"):
        if sidecar.relative_to(root).parts[0] in (".syncer", ".trash"):
            continue
        updated = json.loads(sidecar.read_text(encoding="utf-8"))["procore"]["updated_at"]
        installed.append((updated, sidecar.with_name(sidecar.name.removesuffix(".json")).stat().st_ctime))
    installed.sort(reverse=True)  # ISO times in UTC sort as text
    start = min(at for _, at in installed)
    newest = installed[: max(1, round(share * len(installed)))]
    return max(at for _, at in newest) - start, max(at for _, at in installed) - start


def backfill(scale: dict[str, Any], _aria2c: str | None) -> list[Figure]:
    """A first backfill paced by the rate limit with file requests counted (as Procore's may be):
    how soon the newest tenth of the company's photos are all in the mirror, against the whole."""
    n, repeat = scale["backfill"], scale["repeat"]
    shares = []
    with simulator(
        photos=n, projects=20, photo_size=2_000, spike_limit=200, spike_window=1.0, hourly_limit=10**9
    ) as sim:
        for _ in range(repeat):
            with scratch() as folder:
                run_syncer(syncer_config(sim, folder))
                newest, whole = newest_first(folder / "mirror", 0.10)
            shares.append(newest / whole)
    figure = Figure(
        f"backfill {n} photos in 20 projects: time until the newest 10% are mirrored / the whole",
        shares,
        "x",
        "<= 0.15",
    )
    figure.passed = figure.median <= 0.15
    return [figure]


SCENARIOS: dict[str, Callable[[dict[str, Any], str | None], list[Figure]]] = {
    "transfer": transfer,
    "many-small": many_small,
    "no-op": noop,
    "memory": memory,
    "budget": budget,
    "backfill": backfill,
    "thumbnails": gallery.thumbnails,
    "gallery-rebuild": gallery.rebuild,
    "company": company.company,
}


def machine() -> dict[str, Any]:
    model = ""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor()
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def render(figures: list[Figure]) -> str:
    rows = [("figure", "median", "spread", "target", "verdict")]
    for f in figures:
        d = f.as_dict()
        rows.append(
            (
                f.name,
                f"{d['median']:.3g} {f.unit}",
                f"{d['min']:.3g}..{d['max']:.3g} (n={d['runs']})",
                f.target or "",
                d["verdict"] or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latest.json")
    parser.add_argument("--no-install", action="store_true", help="do not install aria2c when it is missing")
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    aria2c = ensure_aria2c(install=not args.no_install)
    if aria2c is None:
        print("aria2c is not available: the transfer comparison with it is skipped", flush=True)
    figures: list[Figure] = []
    started = time.perf_counter()
    try:
        for name in args.only or list(SCENARIOS):
            print(f"running {name} ...", flush=True)
            figures += SCENARIOS[name](scale, aria2c)
    finally:
        clean_up()
    table = render(figures)
    print(table)
    document = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "scale": args.scale,
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
        "figures": [f.as_dict() for f in figures],
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written to {args.out} in {document['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
