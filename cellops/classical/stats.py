"""Group comparisons of per-object measurements (nuclei, cells) with scipy.stats.

Objects of one image (or well, or culture) are not independent samples: testing thousands of nuclei from a
dozen images as if they were gives absurd p-values (pseudoreplication; Lord et al., J Cell Biol 2020). The
experimental unit is the replicate, so :func:`compare_replicates` tests the replicate means: a one-way ANOVA
across groups and pairwise Welch t-tests with Holm's correction, with Hedges' g as effect size. The
object-level tests (:func:`compare_groups`: Kruskal-Wallis, pairwise Mann-Whitney U with Holm's correction,
epsilon squared and rank-biserial r) describe the distributions and are labelled ``level: object``.
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
                                       "effect_size", "effect_measure", "n"]).assign(level="object")


def replicate_means(table: pd.DataFrame, features: list[str], group_column: str = "group",
                    replicate_column: str = "image") -> pd.DataFrame:
    """Mean of each feature per replicate (one row per group and replicate, with ``n_objects``).

    >>> t = pd.DataFrame({"group": ["a", "a", "a"], "image": ["i1", "i1", "i2"], "x": [1.0, 3.0, 5.0]})
    >>> replicate_means(t, ["x"]).to_dict("records")
    [{'group': 'a', 'image': 'i1', 'x': 2.0, 'n_objects': 2}, {'group': 'a', 'image': 'i2', 'x': 5.0, 'n_objects': 1}]
    """
    missing = [c for c in (group_column, replicate_column) if c not in table]
    if missing:
        raise ValueError(f"the table has no column {missing}: name the replicate column (image, well, culture...)")
    grouped = table.groupby([group_column, replicate_column], sort=False)
    means = grouped[features].mean().reset_index()
    return means.assign(n_objects=grouped.size().to_numpy())


def compare_replicates(table: pd.DataFrame, features: list[str], group_column: str = "group",
                       replicate_column: str = "image") -> pd.DataFrame:
    """Tests on replicate means: one-way ANOVA across groups, pairwise Welch t-tests (Holm-corrected).

    Same columns as :func:`compare_groups`, ``n`` counting replicates and ``level`` ``"replicate"``. A group
    with fewer than two replicates cannot be tested (its rows are left out).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = pd.DataFrame({"group": np.repeat(["a", "b"], 300), "image": np.repeat(np.arange(6), 100),
    ...                   "x": rng.normal(0, 1, 600) + np.repeat(rng.normal(0, 1, 6), 100)})
    >>> r = compare_replicates(t, ["x"])
    >>> r["test"].tolist(), r["n"].tolist(), bool(r["p_value"].iloc[0] > 0.001)
    (['one-way ANOVA', 'Welch t-test'], [6, 6], True)
    """
    means = replicate_means(table, features, group_column, replicate_column)
    groups = list(dict.fromkeys(means[group_column]))
    rows = []
    for feature in features:
        samples = {g: means.loc[means[group_column] == g, feature].dropna().to_numpy(float) for g in groups}
        present = [g for g in groups if len(samples[g]) >= 2]
        n_total = sum(len(samples[g]) for g in present)
        if len(present) >= 2:
            f, p = stats.f_oneway(*(samples[g] for g in present))
            pooled = np.concatenate([samples[g] for g in present])
            ss_between = sum(len(samples[g]) * (samples[g].mean() - pooled.mean()) ** 2 for g in present)
            ss_total = float(np.var(pooled) * n_total)
            rows.append({"feature": feature, "comparison": "all groups", "test": "one-way ANOVA", "statistic": f,
                         "p_value": p, "p_holm": np.nan, "effect_size": ss_between / ss_total if ss_total else np.nan,
                         "effect_measure": "eta squared", "n": n_total})
        pair_rows = []
        for a, b in combinations(present, 2):
            t_stat, p = stats.ttest_ind(samples[a], samples[b], equal_var=False)
            pair_rows.append({"feature": feature, "comparison": f"{a} vs {b}", "test": "Welch t-test",
                              "statistic": t_stat, "p_value": p, "effect_size": _hedges_g(samples[a], samples[b]),
                              "effect_measure": "Hedges' g", "n": len(samples[a]) + len(samples[b])})
        for row, adjusted in zip(pair_rows, holm_correction([r["p_value"] for r in pair_rows])):
            rows.append({**row, "p_holm": adjusted})
    return pd.DataFrame(rows, columns=["feature", "comparison", "test", "statistic", "p_value", "p_holm",
                                       "effect_size", "effect_measure", "n"]).assign(level="replicate")


def _hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    """Standardised mean difference (a - b) with the small-sample correction."""
    n_a, n_b = len(a), len(b)
    pooled = np.sqrt(((n_a - 1) * a.var(ddof=1) + (n_b - 1) * b.var(ddof=1)) / (n_a + n_b - 2))
    if pooled == 0:
        return float("nan")
    return float((a.mean() - b.mean()) / pooled * (1 - 3 / (4 * (n_a + n_b) - 9)))


def group_statistics(table: pd.DataFrame, features: list[str], replicate_column: str) -> pd.DataFrame:
    """Replicate-level tests (the inference, :func:`compare_replicates`) followed by object-level tests (the
    description, :func:`compare_groups`).

    Parameters
    ----------
    table : pandas.DataFrame
        One row per object, with a ``group`` column, ``replicate_column`` and the ``features``.
    features : list of str
        The columns compared.
    replicate_column : str
        The column naming each object's replicate (an image, a movie).

    Returns
    -------
    pandas.DataFrame
        The rows of both, ``level`` ``replicate`` first, then ``object``.
    """
    replicate = compare_replicates(table, features, replicate_column=replicate_column)
    return pd.concat([replicate, compare_groups(table, features)], ignore_index=True)
