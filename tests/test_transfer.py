"""The transfer path's own rules, tested directly on its parts."""

from __future__ import annotations

import asyncio

import pytest

from syncer.transfer import uninterrupted


async def test_an_install_under_way_finishes_and_is_noted_when_the_run_is_stopped() -> None:
    done: list[str] = []

    async def install() -> str:
        await asyncio.sleep(0.05)
        done.append("installed")
        return "photo 7"

    task = asyncio.create_task(uninterrupted(install(), lambda photo: done.append(f"noted {photo}")))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done == ["installed", "noted photo 7"], "installed and noted before the stop came through"


async def test_a_stop_still_comes_through_when_the_install_under_way_fails() -> None:
    async def install() -> None:
        await asyncio.sleep(0.05)
        raise OSError(28, "No space left on device")

    task = asyncio.create_task(uninterrupted(install()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # not the OSError: the stop is what ends the task
        await asyncio.wait_for(task, timeout=5)
