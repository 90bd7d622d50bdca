"""Telling the operator: a command and/or a webhook, run in the background with a time limit.

Events are JSON: `{"event": "run_failed" | "auth_failed" | "mirror_missing" | "recovered", ...}`. A
hook that is slow, fails or hangs is logged and abandoned; it never blocks or stops syncing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aiohttp

from syncer.config import NotifySettings

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, settings: NotifySettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.failed = 0

    def send(self, event: dict[str, Any]) -> None:
        """Fire and forget: each hook runs in its own task."""
        body = json.dumps(event, default=str).encode()
        if self.settings.command:
            self._spawn(self._command(self.settings.command, body))
        if self.settings.webhook:
            self._spawn(self._webhook(self.settings.webhook, body))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _command(self, command: str, body: bytes) -> None:
        proc = await asyncio.create_subprocess_shell(
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(body), timeout=self.settings.timeout)
        except TimeoutError:
            self.failed += 1
            log.warning("notify.command did not finish within %.0f s and was stopped", self.settings.timeout)
            return
        finally:
            if proc.returncode is None:  # timed out, or the daemon is stopping
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.shield(proc.wait())
        if proc.returncode != 0:
            self.failed += 1
            log.warning(
                "notify.command exited %s: %s", proc.returncode, err.decode(errors="replace").strip()[:200]
            )
            return
        self.sent += 1

    async def _webhook(self, url: str, body: bytes) -> None:
        try:
            async with self.session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            ) as response:
                if response.status >= 300:
                    raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failed += 1
            log.warning("notify.webhook failed: %s", exc)
            return
        self.sent += 1

    async def close(self, grace: float = 2.0) -> None:
        """Give running hooks a moment, then abandon them."""
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
