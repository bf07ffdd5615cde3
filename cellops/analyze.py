"""Batch analyses of users' own image files: what ``cellops analyze`` runs.

Each analysis reads files one by one; a file that cannot be analysed (unreadable, wrong dimensionality,
empty...) is reported with its name and the problem, and the rest of the batch goes on. Outputs per input:
a label TIFF (16-bit, opens in Fiji and napari), CSV tables and PNG figures; per batch: a summary table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cellops.classical.calcium import (CalciumParams, check_cell_masks, group_curves,  # noqa: E402
                                      measure_calcium_movie)
from cellops.classical.colonies import ColonyParams, colony_overlay, measure_colonies  # noqa: E402
from cellops.classical.common import to_gray_float  # noqa: E402
from cellops.classical.nuclei import NucleusParams, nucleus_table, segment_nuclei_with_settings  # noqa: E402
from cellops.classical.stats import compare_groups, compare_replicates, summarise_groups  # noqa: E402
from cellops.io import ImageInputError, read_image_file, write_table, write_tiff_stack  # noqa: E402
from cellops.plots import save_png  # noqa: E402

NUCLEUS_FEATURES = ["aspect_ratio_ellipse", "aspect_ratio_rectangle", "area", "circularity", "solidity",
                    "eccentricity", "feret_max", "feret_min"]


@dataclass
class BatchReport:
    """What a batch produced: per-object table, the files written, and the files that failed (with why)."""

    table: pd.DataFrame
    written: list[Path] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def _labels_tiff(path: Path, labels: np.ndarray) -> Path:
    dtype = np.uint16 if labels.max() < 65536 else np.uint32
    return write_tiff_stack(path, labels.astype(dtype))


def _as_2d(image: np.ndarray, path: Path) -> np.ndarray:
    try:
        return to_gray_float(image)
    except ImageInputError as error:
        raise ImageInputError(f"{path}: {error}") from error


def _run_batch(files: list[Path], analyse_one: Callable[[Path], tuple[pd.DataFrame, list[Path]]]) -> BatchReport:
    """Apply ``analyse_one`` (returning a table and the files it wrote) to every file; a file that cannot be
    used is recorded with its problem and the batch goes on."""
    report = BatchReport(table=pd.DataFrame())
    tables = []
    for path in files:
        try:
            table, written = analyse_one(path)
        except (ImageInputError, ValueError) as error:
            report.failures[str(path)] = str(error)
            continue
        report.written += written
        tables.append(table)
    report.table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return report


def analyze_colony_files(files: list[Path], out: Path, params: ColonyParams = ColonyParams(),
                         group: str | None = None) -> BatchReport:
    """Colony table, label image and overlay (upright box red, rotated box green, hull white, contour blue)."""
    out.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> tuple[pd.DataFrame, list[Path]]:
        image = _as_2d(read_image_file(path), path)
        result = measure_colonies(image, params)
        table = result.table.assign(image=path.name, group=group or path.parent.name,
                                    colony_width_px=round(result.settings.colony_diameter_px, 2))
        write_table(table, out / f"{path.stem}_colonies.csv")
        return table, [
            _labels_tiff(out / f"{path.stem}_colonies.tif", result.labels),
            save_png(colony_overlay(image, result.contours), out / f"{path.stem}_overlay.png"),
            out / f"{path.stem}_colonies.csv",
        ]

    return _run_batch(files, one)


def analyze_nucleus_files(files: list[Path], out: Path, params: NucleusParams = NucleusParams(),
                   group: str | None = None) -> BatchReport:
    """Nucleus labels and per-nucleus shape table for each file."""
    out.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> tuple[pd.DataFrame, list[Path]]:
        image = _as_2d(read_image_file(path), path)
        found = segment_nuclei_with_settings(image, params)
        labels = found.labels
        # The diameter and threshold each image was segmented with (measured or given), for the record.
        table = nucleus_table(labels, image).assign(image=path.name, group=group or path.parent.name,
                                                    segmented_diameter_px=round(found.diameter_px, 2),
                                                    segmented_threshold=found.threshold)
        write_table(table, out / f"{path.stem}_nuclei.csv")
        return table, [_labels_tiff(out / f"{path.stem}_nuclei.tif", labels), out / f"{path.stem}_nuclei.csv"]

    return _run_batch(files, one)


def analyze_calcium_files(files: list[Path], out: Path, params: CalciumParams = CalciumParams(),
                          group: str | None = None, masks: dict[Path, Path] | None = None) -> BatchReport:
    """Cell labels, per-cell dF/F0 traces and response metrics for each time-lapse stack; group curves.

    ``masks`` maps a movie to a label TIFF of its cells drawn elsewhere (Fiji, napari, Cellpose): those cells
    are measured, with their own ids, instead of segmenting the movie."""
    out.mkdir(parents=True, exist_ok=True)
    dff_by_group: dict[str, list[np.ndarray]] = {}

    def one(path: Path) -> tuple[pd.DataFrame, list[Path]]:
        movie = read_image_file(path)
        if movie.ndim != 3:
            raise ImageInputError(f"{path}: expected a time-lapse stack (frames, rows, columns), got shape {movie.shape}")
        labels = None
        if masks and path in masks:
            labels = check_cell_masks(read_image_file(masks[path]), movie.shape, source=str(masks[path]))
        result = measure_calcium_movie(movie, params, labels)
        traces = pd.DataFrame(result.dff.T, columns=[f"cell_{i}" for i in result.cell_ids])
        traces.insert(0, "time_s", np.arange(len(traces)) * params.frame_interval_s)
        write_table(traces, out / f"{path.stem}_dff.csv")
        dff_by_group.setdefault(group or path.parent.name, []).append(result.dff)
        curves = group_curves({path.stem: result.dff}, params.frame_interval_s)
        return result.metrics.assign(movie=path.name, group=group or path.parent.name), [
            _labels_tiff(out / f"{path.stem}_cells.tif", result.labels),
            out / f"{path.stem}_dff.csv",
            plot_group_curves(curves, out / f"{path.stem}_dff.png"),
        ]

    report = _run_batch(files, one)
    if dff_by_group and len({d.shape[1] for ds in dff_by_group.values() for d in ds}) == 1:
        curves = group_curves({g: np.vstack(ds) for g, ds in dff_by_group.items()}, params.frame_interval_s)
        write_table(curves, out / "calcium_group_curves.csv")
        report.written += [out / "calcium_group_curves.csv", plot_group_curves(curves, out / "calcium_group_curves.png")]
    return report


def plot_group_curves(curves: pd.DataFrame, path: Path) -> Path:
    """Mean dF/F0 +- SEM per group over time, one line per group (the lab's figure)."""
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
    """Box plot with points of each feature, one box per group."""
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
    a bar: the spread between replicates, what the tests are about, is in plain sight."""
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


def group_statistics(table: pd.DataFrame, features: list[str], replicate_column: str) -> pd.DataFrame:
    """Replicate-level tests (the inference) followed by object-level tests (the description)."""
    replicate = compare_replicates(table, features, replicate_column=replicate_column)
    return pd.concat([replicate, compare_groups(table, features)], ignore_index=True)


def nuclei_group_report(table: pd.DataFrame, out: Path, features: list[str] = NUCLEUS_FEATURES,
                        replicate_column: str = "image") -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Summary table, statistics table (both also written as CSV), SuperPlots and box plots of nuclear shape by
    group; tests on replicate means (``replicate_column``: image by default) come first.

    Returns
    -------
    (summary, statistics, SuperPlot path)
    """
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise_groups(table, features)
    statistics = group_statistics(table, features, replicate_column)
    write_table(summary, out / "nuclei_summary.csv")
    write_table(statistics, out / "nuclei_statistics.csv")
    plot_feature_by_group(table, features, out / "nuclei_by_group.png")
    return summary, statistics, plot_superplot(table, features, out / "nuclei_superplot.png",
                                               replicate_column=replicate_column)


@dataclass(frozen=True)
class Analysis:
    """One classical analysis: its parameter class and the function that runs it over a batch of files."""

    params: type
    run: Callable[..., BatchReport]


#: The classical analyses by name: the CLI, the reports and the pipelines all dispatch through this table.
ANALYSES: dict[str, Analysis] = {
    "colonies": Analysis(ColonyParams, analyze_colony_files),
    "nuclei": Analysis(NucleusParams, analyze_nucleus_files),
    "calcium": Analysis(CalciumParams, analyze_calcium_files),
}
