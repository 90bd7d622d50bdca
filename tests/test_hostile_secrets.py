"""Secrets an upstream echoes back, through a real `syncer` process: the access token, the client
secret and signed URLs of any scheme and case reach no database row, `status` output or log line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from syncer.errors import ExitCode
from tests.conftest import write_config
from tests.test_cli import assert_no_traceback, syncer


async def test_an_error_page_that_echoes_secrets_is_stored_and_shown_without_them(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=6, projects=1)
    sim.config.echoing_files.update(sorted(sim.company.photos)[:2])
    config = str(write_config(sim, tmp_path))
    run = await syncer("sync", "--config", config)
    assert run.code == ExitCode.INCOMPLETE
    assert_no_traceback(run)
    status = await syncer("status", "--config", config)
    with sqlite3.connect(tmp_path / "state" / "syncer.db") as db:
        errors = [e for (e,) in db.execute("SELECT last_error FROM photos WHERE last_error IS NOT NULL")]
        runs = [e for (e,) in db.execute("SELECT errors FROM sync_runs WHERE errors IS NOT NULL")]
    assert len(errors) == 2 and all("HTTP 403" in e and "Bearer ***" in e for e in errors), errors
    texts = [run.out, run.err, status.out, status.err, json.dumps(errors), json.dumps(runs)]
    secrets = [sim.config.client_secret, *sim.tokens, "SIGSECRET", "AMZSECRET"]
    leaked = [s for s in secrets if any(s in text for text in texts)]
    assert not leaked, f"{len(leaked)} secrets leaked"
