"""What the log handler lets through: every warning and error a person should see, and not the
traceback SQLAlchemy's pool writes when a stop cancels a connection's rollback."""

from __future__ import annotations

import asyncio
import logging

import pytest

from syncer.log import setup_logging


def _log_with(name: str, error: BaseException) -> None:
    try:
        raise error
    except BaseException:
        logging.getLogger(name).error("Exception during reset or similar", exc_info=True)


def test_a_stop_cancelling_a_pooled_connections_rollback_prints_no_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging()
    _log_with("sqlalchemy.pool.impl.AsyncAdaptedQueuePool", asyncio.CancelledError())
    assert capsys.readouterr().err == ""


def test_any_other_failure_of_the_pool_is_still_shown(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging()
    _log_with("sqlalchemy.pool.impl.AsyncAdaptedQueuePool", OSError("disk I/O error"))
    assert "Exception during reset or similar" in capsys.readouterr().err
