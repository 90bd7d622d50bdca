"""Notifications reach a webhook as JSON; a broken or slow receiver costs nothing but a log line."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from syncer.config import NotifySettings
from syncer.notify import Notifier


async def receiver(status: int = 200, delay: float = 0.0) -> tuple[web.AppRunner, str, list[Any]]:
    received: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        await asyncio.sleep(delay)
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/hook", received


async def test_webhook_receives_the_event_as_json() -> None:
    runner, url, received = await receiver()
    async with aiohttp.ClientSession() as session:
        notifier = Notifier(NotifySettings(webhook=url), session)
        notifier.send({"event": "auth_failed", "error": "HTTP 401"})
        await notifier.close(grace=5)
    await runner.cleanup()
    assert received == [{"event": "auth_failed", "error": "HTTP 401"}]
    assert notifier.sent == 1


async def test_a_failing_webhook_is_counted_not_raised() -> None:
    runner, url, _ = await receiver(status=500)
    async with aiohttp.ClientSession() as session:
        notifier = Notifier(NotifySettings(webhook=url), session)
        notifier.send({"event": "run_failed"})
        await notifier.close(grace=5)
    await runner.cleanup()
    assert (notifier.sent, notifier.failed) == (0, 1)


async def test_a_slow_webhook_is_abandoned_after_its_timeout() -> None:
    runner, url, _ = await receiver(delay=2)
    async with aiohttp.ClientSession() as session:
        notifier = Notifier(NotifySettings(webhook=url, timeout=0.3), session)
        loop = asyncio.get_running_loop()
        started = loop.time()
        notifier.send({"event": "run_failed"})  # returns at once: sending happens in the background
        assert loop.time() - started < 0.1
        await notifier.close(grace=5)
        assert loop.time() - started < 3
    await runner.cleanup()
    assert notifier.failed == 1
