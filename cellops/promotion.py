"""The rule that decides whether a newly trained model replaces the current champion."""

from __future__ import annotations


def should_promote(candidate: float, champion: float | None, *, min_improvement: float = 0.0) -> bool:
    """True when ``candidate`` beats ``champion`` by more than ``min_improvement`` (higher is better).

    A first model (no champion) is always promoted; a tie never is, so re-running the same training does
    not churn the alias. Non-finite scores are never promoted.

    Examples
    --------
    >>> should_promote(0.80, None)
    True
    >>> should_promote(0.80, 0.85)
    False
    >>> should_promote(0.85, 0.85)
    False
    """
    if candidate != candidate or candidate in (float("inf"), float("-inf")):
        return False
    if champion is None:
        return True
    return candidate > champion + min_improvement
