"""How counts read for a person, in one place: every module that prints or logs a count uses
`plural`, from the simulator's banner to the summaries, so `1 photo` never reads `1 photos`.
A leaf module (it imports nothing of ours), so that the lowest layers can use it too."""

from __future__ import annotations


def plural(count: int, word: str, words: str | None = None) -> str:
    """`1 photo`, `2 photos`, `1,200 photos`; `words` where the plural is not `word` + s."""
    return f"{count:,} {word if count == 1 else words or word + 's'}"
