"""The benchmark suite's smallest case runs end to end (for correctness, not timing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.harness import measure

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)  # every scenario in turn: about 60 s idle, over 120 s on a busy machine
def test_the_smoke_bench_runs_every_scenario_and_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    result = measure(
        [sys.executable, "-m", "bench.run", "--scale", "smoke", "--no-install", "--out", str(out)], cwd=ROOT
    )
    assert result.code == 0, result.output[-3000:]
    document = json.loads(out.read_text())
    names = " | ".join(f["name"] for f in document["figures"])
    for scenario in ("transfer", "many-small", "no-op", "memory", "budget"):
        assert scenario in names
    assert "start-up to the first request" in names
    assert all(f["median"] >= 0 and f["runs"] >= 1 for f in document["figures"])
    assert document["machine"]["cpus"]
