"""Small helpers for the words around numbers in printed answers."""

from __future__ import annotations


def plural(n: int, noun: str) -> str:
    """``noun`` for one, ``noun``s for any other count."""
    return noun if n == 1 else f"{noun}s"


def count_of(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless n is 1 ("1 request", "16 requests")."""
    return f"{n} {plural(n, noun)}"
