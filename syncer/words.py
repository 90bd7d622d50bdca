"""How counts and moments read for a person, in one place: every module that prints or logs a
count uses `plural`, from the simulator's banner to the summaries, so `1 photo` never reads
`1 photos`; every time shown to a person says its zone (`human_time`). A leaf module (it imports
nothing of ours), so that the lowest layers can use it too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def plural(count: int, word: str, words: str | None = None) -> str:
    """`1 photo`, `2 photos`, `1,200 photos`; `words` where the plural is not `word` + s."""
    return f"{count:,} {word if count == 1 else words or word + 's'}"


def human_time(moment: datetime, spec: str = "%Y-%m-%d %H:%M:%S") -> str:
    """`moment` in this machine's local time, saying its zone: `2026-05-06 09:05:19 +02:00`, or
    `2026-05-06 07:05:19 UTC` where local time is UTC (a server's usual setting). The database and
    Procore keep UTC, and a time without its zone is read as UTC: a person reading the status or a
    summary can no longer take one for the other."""
    local = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone()
    offset = round((local.utcoffset() or timedelta()).total_seconds() / 60)
    if not offset:
        return f"{local:{spec}} UTC"
    hours, minutes = divmod(abs(offset), 60)
    return f"{local:{spec}} {'-' if offset < 0 else '+'}{hours:02d}:{minutes:02d}"
