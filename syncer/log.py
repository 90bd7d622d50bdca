"""Logging setup, and the redactor every line passes through.

Secrets (the client secret, each access token as it is issued) are registered here and replaced
by `***` in every log line and every error the CLI prints; query strings of URLs of any scheme
(signatures) are cut, and so are bearer tokens and secret-named fields an upstream answer echoes
back, known or not. Every error of the syncer passes through it once, where it is made (so
what the database, `status` and notifications keep is scrubbed too). One process-wide redactor,
because a secret can surface anywhere.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from datetime import UTC, datetime

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


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return REDACT(super().format(record))


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
        return REDACT(json.dumps(entry, ensure_ascii=False))


def setup_logging(*, verbose: int = 0, fmt: str = "text") -> None:
    level = logging.DEBUG if verbose > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter()
        if fmt == "json"
        else _RedactingFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("syncer").setLevel(level)
