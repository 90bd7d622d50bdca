r"""Logging setup, the redactor every line passes through, and the escaping that keeps what a
person reads text.

Secrets (the client secret, each access token as it is issued) are registered here and replaced
by `***` in every log line and every error the CLI prints; query strings of URLs of any scheme
(signatures) are cut, and so are bearer tokens and secret-named fields an upstream answer echoes
back, known or not. Every error of the syncer passes through it once, where it is made (so
what the database, `status` and notifications keep is scrubbed too). One process-wide redactor,
because a secret can surface anywhere.

Names and error pages from Procore reach the terminal and the logs, and a terminal obeys control
codes: a project named `Proj\x1b]0;TITLE\x07\x1b[2J` would set the window title and clear the
screen, a carriage return writes over the line, a bidirectional override makes `exe.txt` read as
`txt.exe`. So every line printed or logged is shown as text: `terminal_text` escapes those
characters as Python's repr does (`\x1b`, `\r`, `\u202e`), so a person still sees what Procore
holds, and `terminal_json` escapes them as JSON, whose readers get the exact value back. Only
what a person or a log reads is escaped; the mirror, the database, sidecars and the gallery keep
the names as their own rules say.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from syncer.words import human_time

_URL_QUERY = re.compile(r"([a-z][a-z0-9+.-]*://[^\s?#\"'<>]*)\?[^\s\"'<>]*", re.IGNORECASE)
_LONG_WORD = r"[A-Za-z0-9._~+/=-]{16,}"
"""What a bearer token or signature looks like: a long unbroken word (not "bearer token goes")."""
_SCHEME = re.compile(rf"\b((?:bearer|basic|token)\s+){_LONG_WORD}", re.IGNORECASE)
_NAMES = (
    "client_secret|access_token|refresh_token|id_token|token|api_key|password"
    "|x-amz-security-token|x-amz-signature|signature|sig"
)
_SECRET_FIELD = re.compile(
    # as a form or query field (`sig=...`), a header, or a quoted key of JSON or a repr
    # (`"sig": "..."`, with the backslashes JSON logging adds); a config key in our own messages
    # (`procore.client_secret:`) is none of these
    rf"""(\b(?:{_NAMES})=|\bx-amz-security-token:\s*|\\?["'](?:{_NAMES})\\?["']\s*:\s*\\?["']?)[^\s"'\\&,;}}/]+""",
    re.IGNORECASE,
)


class Redactor:
    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        if len(secret) >= 4:
            with self._lock:
                self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            text = text.replace(secret, "***")
        text = _URL_QUERY.sub(r"\1?…", text)
        text = _SCHEME.sub(r"\1***", text)
        return _SECRET_FIELD.sub(r"\1***", text)


REDACT = Redactor()

_NOT_TEXT = (
    r"\x00-\x09\x0b-\x1f\x7f-\x9f"  # C0 codes but the newline, DEL, C1 codes (CSI, NEL among them)
    r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidirectional marks, embeddings, overrides, isolates
    r"\u2028\u2029"  # line and paragraph separators: line breaks to some viewers
    r"\ud800-\udfff"  # undecodable bytes of a file name on disk: raw bytes (0x9b is CSI) or an error
)
"""What a terminal obeys or reorders instead of showing. A tab is among them: it moves the cursor
to a column the terminal picks, and no line of ours holds one."""
_IN_A_LINE = re.compile(f"[{_NOT_TEXT}\n]")
_BETWEEN_LINES = re.compile(f"[{_NOT_TEXT}]")


def terminal_text(text: str, *, lines: bool = False) -> str:
    r"""`text` as a terminal should show it: every character it would obey or reorder written as
    Python's repr writes it. One line, unless `lines`: then the newlines between lines stay (a
    name that holds one still splits its line; a renderer escapes each line first to keep it
    whole). Printable text of any script, backslashes included, is left as it is, so escaping
    twice changes nothing and each layer can escape what it shows; the price is that a name
    holding the four characters `\x1b` reads the same as one holding ESC (`--json` output tells
    them apart)."""
    return (_BETWEEN_LINES if lines else _IN_A_LINE).sub(lambda m: repr(m.group())[1:-1], text)


def terminal_lines(lines: Iterable[str]) -> str:
    """Lines a renderer built, as a person reads them: each one line, whatever a name in it holds."""
    return "\n".join(map(terminal_text, lines))


def terminal_json(text: str) -> str:
    r"""JSON text (from `json.dumps(..., ensure_ascii=False)`, which escapes only C0 codes) with
    the other characters `terminal_text` escapes written as `\uXXXX`: still the same value for
    whatever reads it, and harmless on a terminal or in a journal."""
    return _BETWEEN_LINES.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class _TextFormatter(logging.Formatter):
    """Each record is one line of text, redacted before it is escaped (the redactor's patterns
    read the raw text); only a traceback (`-v`) spans lines. It begins with the time of day,
    saying its zone."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return human_time(datetime.fromtimestamp(record.created, UTC), datefmt or "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return terminal_text(REDACT(super().formatMessage(record)))

    def formatException(self, ei: Any) -> str:
        return terminal_text(REDACT(super().formatException(ei)), lines=True)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return terminal_json(REDACT(json.dumps(entry, ensure_ascii=False)))


def _not_a_stop(record: logging.LogRecord) -> bool:
    """False for SQLAlchemy's pool reporting, at ERROR with a traceback, that a stop cancelled the
    rollback of a connection it was returning ("Exception during reset or similar"). A stop
    cancels tasks wherever they wait, a statement included; the connection is closed all the
    same, and closing rolls it back (`store.db.ReleasingConnection`). Under load a SIGTERM put
    that traceback after a clean summary."""
    cancelled = record.exc_info is not None and isinstance(record.exc_info[1], asyncio.CancelledError)
    return not (cancelled and record.name.startswith("sqlalchemy.pool"))


def setup_logging(*, verbose: int = 0, quiet: bool = False, fmt: str = "text") -> None:
    level = logging.DEBUG if verbose > 0 else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_not_a_stop)
    handler.setFormatter(
        _JsonFormatter()
        if fmt == "json"
        else _TextFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("syncer").setLevel(level)
