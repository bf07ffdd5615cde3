"""Figures of the classical analyses: group dF/F0 curves, features by group, SuperPlots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: pipelines and services have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def plot_group_curves(curves: pd.DataFrame, path: Path) -> Path:
    """Mean dF/F0 +- SEM per group over time, one line per group (the lab's figure).

    Parameters
    ----------
    curves : pandas.DataFrame
        :func:`cellops.classical.calcium.group_curves`: ``group``, ``time_s``, ``mean_dff``, ``sem_dff``,
        ``n_cells``.
    path : Path
        The PNG to write.

    Returns
    -------
    Path
        ``path``.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for group, frame in curves.groupby("group", sort=False):
        ax.plot(frame["time_s"], frame["mean_dff"], label=f"{group} (n={int(frame['n_cells'].max())})")
        ax.fill_between(frame["time_s"], frame["mean_dff"] - frame["sem_dff"], frame["mean_dff"] + frame["sem_dff"],
                        alpha=0.25)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("dF/F0")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _feature_axes(n_features: int) -> tuple[plt.Figure, np.ndarray]:
    """A figure with one panel per feature, four to a row (unused panels hidden); the axes in reading order."""
    n_cols = min(4, n_features)
    n_rows = -(-n_features // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 3.4 * n_rows), squeeze=False)
    for ax in axes.ravel()[n_features:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def plot_feature_by_group(table: pd.DataFrame, features: list[str], path: Path, group_column: str = "group") -> Path:
    """Box plot with points of each feature, one box per group.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per object.
    features : list of str
        The columns plotted, one panel each.
    path : Path
        The PNG to write.
    group_column : str
        The column naming each object's group.

    Returns
    -------
    Path
        ``path``.
    """
    groups = list(dict.fromkeys(table[group_column]))
    fig, axes = _feature_axes(len(features))
    rng = np.random.default_rng(0)
    for ax, feature in zip(axes, features):
        data = [table.loc[table[group_column] == g, feature].dropna().to_numpy() for g in groups]
        ax.boxplot(data, tick_labels=groups, showfliers=False)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, s=4, alpha=0.4)
        ax.set_title(feature.replace("_", " "))
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_superplot(table: pd.DataFrame, features: list[str], path: Path, group_column: str = "group",
                   replicate_column: str = "image") -> Path:
    """SuperPlots (Lord et al., J Cell Biol 2020): every object as a small point coloured by its replicate,
    each replicate's mean as a large point of the same colour, and the mean +- SD of the replicate means as
    a bar: the spread between replicates, what the tests are about, is in plain sight.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per object.
    features : list of str
        The columns plotted, one panel each.
    path : Path
        The PNG to write.
    group_column : str
        The column naming each object's group.
    replicate_column : str
        The column naming each object's replicate (an image, a movie).

    Returns
    -------
    Path
        ``path``.
    """
    groups = list(dict.fromkeys(table[group_column]))
    fig, axes = _feature_axes(len(features))
    rng = np.random.default_rng(0)
    colours = plt.get_cmap("tab10")
    for ax, feature in zip(axes, features):
        for x, group in enumerate(groups):
            rows = table[table[group_column] == group]
            replicates = list(dict.fromkeys(rows[replicate_column]))
            means = []
            for k, replicate in enumerate(replicates):
                values = rows.loc[rows[replicate_column] == replicate, feature].dropna().to_numpy()
                ax.scatter(x + rng.uniform(-0.25, 0.25, len(values)), values, s=3, alpha=0.3, color=colours(k % 10))
                if len(values):
                    means.append(values.mean())
                    ax.scatter(x + (k - (len(replicates) - 1) / 2) * 0.08, means[-1], s=40, color=colours(k % 10),
                               edgecolor="black", linewidth=0.6, zorder=3)
            if means:
                ax.errorbar(x, np.mean(means), yerr=np.std(means, ddof=1) if len(means) > 1 else 0, color="black",
                            capsize=6, marker="_", markersize=20, zorder=4)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(feature.replace("_", " "))
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"points: objects; large points: {replicate_column} means; bars: mean +- SD of those", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
