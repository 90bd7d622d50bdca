"""Write `mutation/report.md` from the last `mutmut run`: per module, how many mutants the
fast tests killed, and every survivor with its diff and, from `mutation/triage.yaml`, why it
may stay (equivalent or harmless). A survivor without a reason is marked as one to look at.

mutmut maps each function to the tests that call it, but only for calls made on the test's own
thread: code that runs in a file thread (writing, hashing, fsync) shows as "no tests", and a test
added since the run is in no map. So every mutant mutmut did not kill is run again here against
its module's tests in `RECHECK`, the way mutmut runs any mutant (the mutated copy in `mutants/`,
chosen by `MUTANT_UNDER_TEST`, which a `syncer` child inherits too).

Run by `make mutate` after `mutmut run`; reads mutmut's own `results` and `show` output. With
module paths (`syncer/listing.py`) or mutant name prefixes as arguments, only those mutants are run
again.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
HANG = 240
"""Seconds after which a module's tests count as hung by a mutant (they take about 40 s at most):
a mutant that spins inside the event loop is not stopped by pytest-timeout's signal."""
RECHECKED = Path("mutants/rechecked.json")
"""Each recheck's outcome, so a run limited to some modules keeps the others' (`make mutate`
starts from an empty `mutants/`)."""
MUTMUT = [sys.executable, "-m", "mutmut"]
LINE = re.compile(r"^\s*(?P<name>\S+__mutmut_\d+): (?P<status>.+)$")
FETCH = ["tests/test_fetch.py", "tests/test_tls.py"]
FILES = ["tests/test_files.py", "tests/test_durability.py", "tests/test_fetch.py"]
CLIENT = [
    "tests/test_auth.py",
    "tests/test_pacing.py",
    "tests/test_fetch.py",
    "tests/test_procore_client.py",
    "tests/test_tls.py",
]
RECHECK = {
    "syncer/listing.py": ["tests/test_listing_proof.py"],
    "syncer/plan.py": ["tests/test_plan.py"],
    "syncer/reconcile.py": ["tests/test_reconcile.py", "tests/test_deletions.py"],
    "syncer/mirror/fetch.py": FETCH,
    "syncer/mirror/files.py": FILES,
    "syncer/procore/http.py": CLIENT,
    "syncer/procore/auth.py": CLIENT,
    "syncer/procore/pacing.py": CLIENT,
}
"""The fast tests of each module, against which a mutant mutmut did not kill is run again."""


def mutmut(*args: str) -> str:
    return subprocess.run([*MUTMUT, *args], check=True, capture_output=True, text=True).stdout


def commit() -> str:
    """The commit whose code was mutated (the checkout `mutmut run` copied into `mutants/`)."""
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def module_of(name: str) -> str:
    """`syncer.listing.xǁListerǁ_prove__mutmut_3` -> `syncer/listing.py`."""
    dotted = name.split(".x", maxsplit=1)[0]
    return dotted.replace(".", "/") + ".py"


def diff_of(name: str) -> list[str]:
    return [
        line
        for line in mutmut("show", name).splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def run_tests(tests: list[str], mutant: str) -> subprocess.CompletedProcess[str] | None:
    """Run `tests` in `mutants/` with `mutant` active ("" runs the code as written); None if
    they took more than `HANG` seconds."""
    env = {**os.environ, "MUTANT_UNDER_TEST": mutant}
    # A mutant that makes a test hang is caught by pytest-timeout; no test here takes 10 s.
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--timeout=30", *tests]
    try:
        return subprocess.run(
            command, cwd="mutants", env=env, capture_output=True, text=True, check=False, timeout=HANG
        )
    except subprocess.TimeoutExpired:
        return None


def recheck(name: str) -> str:
    """Run one mutant against its module's tests in `RECHECK`: killed, or survived."""
    done = run_tests(RECHECK[module_of(name)], name)
    if done is None:
        return "timeout"
    return {0: "survived", 1: "killed (recheck)"}.get(done.returncode, f"error {done.returncode}")


def baseline_passes(modules: set[str]) -> bool:
    """Whether each module's tests pass with no mutant: a test that fails anyway would count every
    mutant as killed."""
    for tests in {tuple(RECHECK[module]) for module in modules}:
        done = run_tests(list(tests), "")
        if done is None or done.returncode != 0:
            print(f"the tests {' '.join(tests)} fail without a mutant:", file=sys.stderr)
            print(done.stdout[-3000:] if done else f"they took more than {HANG} s", file=sys.stderr)
            return False
    return True


def main() -> int:
    entries: list[dict[str, Any]] = yaml.safe_load((HERE / "triage.yaml").read_text()) or []
    triage = {name: entry["reason"] for entry in entries for name in entry["mutants"]}
    lines = mutmut("results", "--all", "true").splitlines()
    statuses = {m["name"]: m["status"] for m in map(LINE.match, lines) if m}
    ran = [status for status in statuses.values() if status != "not checked"]
    first = Counter("killed" if status == "killed" else "not killed" for status in ran)
    only = tuple(sys.argv[1:])  # modules or mutant names to run again (the others' last rechecks are kept)
    kept = json.loads(RECHECKED.read_text()) if RECHECKED.exists() else {}
    left = [name for name, status in statuses.items() if status in ("survived", "no tests", "timeout")]
    named = [name for name in left if not only or name.startswith(only) or module_of(name).startswith(only)]
    again = [name for name in left if name in named or name not in kept]
    if not baseline_passes({module_of(name) for name in again}):
        return 1
    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, outcome in zip(again, pool.map(recheck, again), strict=True):
            kept[name] = outcome
            RECHECKED.write_text(json.dumps(kept, indent=1), encoding="utf-8")  # an interrupted run keeps it
    statuses.update({name: kept[name] for name in left})
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for name, status in sorted(statuses.items()):
        killed = status.startswith("killed") or status == "timeout"  # a hang is caught too
        counts[module_of(name)]["killed" if killed else status] += 1
        if not killed and status != "not checked":
            survivors[module_of(name)].append(name)
    out = [
        "# Mutation testing: the critical path",
        "",
        "Written by `make mutate`: mutmut over the modules in `[tool.mutmut]` of `pyproject.toml`,",
        "against the fast in-process tests listed there; then each mutant it did not kill, against",
        "its module's tests (`RECHECK` in `mutation/report.py`). Each survivor is explained",
        "(from `mutation/triage.yaml`) or marked **to look at**.",
        "",
        f"Measured at commit {commit()}. mutmut alone, of the mutants it ran: {first['killed']} killed, "
        f"{first['not killed']} not.",
        "",
        "| module | mutants | killed | survived | not run yet | other |",
        "|---|---|---|---|---|---|",
    ]
    for module, c in sorted(counts.items()):
        total, killed, survived, unrun = sum(c.values()), c["killed"], c["survived"], c["not checked"]
        other = total - killed - survived - unrun
        out.append(f"| `{module}` | {total} | {killed} | {survived} | {unrun} | {other} |")
    unexplained = 0
    for module, names in sorted(survivors.items()):
        out += ["", f"## `{module}`", ""]
        for name in names:
            reason = triage.get(name)
            unexplained += reason is None
            out.append(f"- `{name}` ({statuses[name]}): {reason or '**to look at**'}")
            out += ["  ```diff", *(f"  {line}" for line in diff_of(name)), "  ```"]
    (HERE / "report.md").write_text("\n".join(out) + "\n", encoding="utf-8")
    print(f"{sum(len(n) for n in survivors.values())} survivors, {unexplained} without a reason")
    return 0


if __name__ == "__main__":
    sys.exit(main())
