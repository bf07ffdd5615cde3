"""The rule that decides whether a newly trained model replaces the current champion."""

from __future__ import annotations

import math
from collections.abc import Sequence


def should_promote(candidate: float | Sequence[float], champion: float | Sequence[float] | None, *,
                   min_improvement: float = 0.0) -> bool:
    """True when ``candidate`` beats ``champion`` by more than ``min_improvement`` (higher is better).

    Scores may be tuples ``(main metric, tie-breaker, ...)``: the main metric must improve by more than
    ``min_improvement``; when it is exactly equal, the tie-breakers decide in order (higher is better). A first
    model (no champion) is always promoted; a full tie never is, so re-running the same training does not churn
    the alias. A non-finite main score is never promoted.

    Examples
    --------
    >>> should_promote(0.80, None)
    True
    >>> should_promote(0.80, 0.85)
    False
    >>> should_promote(0.85, 0.85)
    False
    >>> should_promote((0.95, 0.97), (0.95, 0.93)), should_promote((0.95, 0.99), (0.96, 0.90))
    (True, False)
    >>> should_promote(0.1, float("nan")), should_promote(float("nan"), None)
    (True, False)
    """
    candidate = tuple(candidate) if isinstance(candidate, Sequence) else (candidate,)
    if not math.isfinite(candidate[0]):
        return False
    if champion is None:
        return True
    champion = tuple(champion) if isinstance(champion, Sequence) else (champion,)
    if len(champion) != len(candidate):
        raise ValueError(f"cannot compare scores {candidate} and {champion}: different numbers of metrics")
    # A champion's undefined score (NaN: e.g. precision when it never said "positive") is beaten by any number.
    candidate, champion = ranking_key(candidate), ranking_key(champion)
    if candidate[0] > champion[0] + min_improvement:
        return True
    if candidate[0] != champion[0]:
        return False
    return candidate[1:] > champion[1:]


def ranking_key(scores: Sequence[float]) -> tuple[float, ...]:
    """Scores as a sort key where an undefined (NaN) score ranks below every number.

    >>> sorted([(0.9,), (float("nan"),), (0.5,)], key=ranking_key, reverse=True)
    [(0.9,), (0.5,), (nan,)]
    """
    return tuple(float("-inf") if value != value else float(value) for value in scores)


#: Scores where lower is better; promotion compares higher-is-better scores only.
LOWER_IS_BETTER = frozenset({"loss"})


def check_promotion_metrics(metrics: Sequence[str]) -> None:
    """Refuse a lower-is-better score as a promotion metric or tie-breaker (it would promote the worst model)."""
    wrong = [m for m in metrics if m in LOWER_IS_BETTER or m.endswith("_loss")]
    if wrong:
        raise ValueError(f"{wrong}: lower is better for these scores; promote on a higher-is-better one "
                         "(accuracy, sensitivity, specificity, f1, roc_auc...)")
