"""Group comparisons of per-object measurements (nuclei, cells) with scipy.stats.

For each feature: n, median and IQR per group; a Kruskal-Wallis test across all groups with its effect size
(epsilon squared); pairwise two-sided Mann-Whitney U tests with Holm's correction for the number of pairs,
each with the rank-biserial correlation as effect size (positive when the first group is larger).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats


def holm_correction(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1).

    Examples
    --------
    >>> holm_correction([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (len(p) - rank) * p[index])
        adjusted[index] = min(1.0, running)
    return adjusted


def summarise_groups(table: pd.DataFrame, features: list[str], group_column: str = "group") -> pd.DataFrame:
    """n, mean, SD, median and quartiles of each feature in each group (long format)."""
    rows = []
    for feature in features:
        for group, values in table.groupby(group_column, sort=False)[feature]:
            v = values.dropna().to_numpy(float)
            rows.append({
                "feature": feature, "group": group, "n": len(v), "mean": v.mean() if len(v) else np.nan,
                "sd": v.std(ddof=1) if len(v) > 1 else np.nan, "median": np.median(v) if len(v) else np.nan,
                "q1": np.percentile(v, 25) if len(v) else np.nan, "q3": np.percentile(v, 75) if len(v) else np.nan,
            })
    return pd.DataFrame(rows)


def compare_groups(table: pd.DataFrame, features: list[str], group_column: str = "group") -> pd.DataFrame:
    """Kruskal-Wallis and Holm-corrected pairwise Mann-Whitney tests for each feature.

    Returns
    -------
    One row per (feature, comparison): ``comparison`` is ``"all groups"`` for Kruskal-Wallis or ``"A vs B"``;
    columns ``test``, ``statistic``, ``p_value``, ``p_holm`` (pairwise only), ``effect_size``,
    ``effect_measure``, ``n``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = pd.DataFrame({"group": ["a"] * 30 + ["b"] * 30, "x": np.r_[rng.normal(0, 1, 30), rng.normal(3, 1, 30)]})
    >>> r = compare_groups(t, ["x"])
    >>> r["comparison"].tolist(), bool(r["p_value"].iloc[0] < 1e-6), round(float(r["effect_size"].iloc[1]), 2)
    (['all groups', 'a vs b'], True, -1.0)
    """
    groups = list(dict.fromkeys(table[group_column]))
    rows = []
    for feature in features:
        samples = {g: table.loc[table[group_column] == g, feature].dropna().to_numpy(float) for g in groups}
        present = [g for g in groups if len(samples[g])]
        n_total = sum(len(samples[g]) for g in present)
        if len(present) >= 2:
            h, p = stats.kruskal(*(samples[g] for g in present))
            rows.append({"feature": feature, "comparison": "all groups", "test": "Kruskal-Wallis", "statistic": h,
                         "p_value": p, "p_holm": np.nan, "effect_size": h / (n_total - 1) if n_total > 1 else np.nan,
                         "effect_measure": "epsilon squared", "n": n_total})
        pairs = list(combinations(present, 2))
        pair_rows = []
        for a, b in pairs:
            u, p = stats.mannwhitneyu(samples[a], samples[b], alternative="two-sided")
            n_a, n_b = len(samples[a]), len(samples[b])
            pair_rows.append({"feature": feature, "comparison": f"{a} vs {b}", "test": "Mann-Whitney U",
                              "statistic": u, "p_value": p, "effect_size": 2 * u / (n_a * n_b) - 1,
                              "effect_measure": "rank-biserial r", "n": n_a + n_b})
        for row, adjusted in zip(pair_rows, holm_correction([r["p_value"] for r in pair_rows])):
            rows.append({**row, "p_holm": adjusted})
    return pd.DataFrame(rows, columns=["feature", "comparison", "test", "statistic", "p_value", "p_holm",
                                       "effect_size", "effect_measure", "n"])
