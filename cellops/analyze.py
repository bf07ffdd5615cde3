"""Batch analyses of users' own image files: what ``cellops analyze`` runs.

Each analysis reads files one by one; a file that cannot be analysed (unreadable, a directory, too large,
wrong dimensionality or dtype, a colour image or too short a movie for calcium...) is reported with its name and
the problem, and the rest of the batch goes on. Outputs per input: a label TIFF (16-bit, opens in Fiji and
napari), CSV tables and PNG figures, named after the input (see :func:`input_names`); per batch: a summary table.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

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
from cellops.io import (ImageInputError, check_pixels, read_image_file, write_table,  # noqa: E402
                        write_tiff_stack)
from cellops.plots import save_png  # noqa: E402

NUCLEUS_FEATURES = ["aspect_ratio_ellipse", "aspect_ratio_rectangle", "area", "circularity", "solidity",
                    "eccentricity", "feret_max", "feret_min"]


@dataclass
class BatchReport:
    """What a batch produced: per-object table, the files written, and the files that failed (with why)."""

    table: pd.DataFrame
    written: list[Path] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


class InputName(NamedTuple):
    """How a batch names one input: ``label`` in the tables (``n0.tif``, or ``Control/n0.tif`` when another input
    is also called ``n0``) and ``stem``, the start of its output files' names (``n0``, or ``Control/n0``: a
    sub-folder of the output folder)."""

    label: str
    stem: str


def input_names(files: Sequence[Path]) -> dict[Path, InputName]:
    """Distinct table labels and output names for the files of one batch, stable whatever their order.

    A file keeps its own name (``n0.tif`` -> ``n0_nuclei.csv``) unless another file of the batch has the same
    stem (compared without case: some file systems ignore it). Files that share a stem get the folders that tell
    them apart, mirrored under the output folder (``Control/n0.tif``, ``Film/n0.tif`` -> ``Control/n0_nuclei.csv``,
    ``Film/n0_nuclei.csv``); two of them in one folder (``x.png``, ``x.tif``) keep their extension in the output
    name (``x.png_nuclei.csv``). A name still shared after that gets 8 hex digits of a hash of the file's path.
    The same path given twice is one file: give each path once (see :func:`distinct_files`).

    Examples
    --------
    >>> names = input_names([Path("a/Control/n0.tif"), Path("a/Film/n0.tif"), Path("a/Film/n1.tif")])
    >>> [(n.label, n.stem) for n in names.values()]
    [('Control/n0.tif', 'Control/n0'), ('Film/n0.tif', 'Film/n0'), ('n1.tif', 'n1')]
    """
    folders = {f: Path(os.path.abspath(f)).parent.parts[1:] for f in files}  # without the root: names are relative
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        by_stem[f.stem.casefold()].append(f)
    names: dict[Path, InputName] = {}
    for same in by_stem.values():
        distinct = {tuple(part.casefold() for part in folders[f]) for f in same}
        depth = 0
        while len({parts[max(0, len(parts) - depth):] if depth else () for parts in distinct}) < len(distinct):
            depth += 1
        for f in same:
            prefix = "/".join(folders[f][max(0, len(folders[f]) - depth):]) if depth else ""
            label = f"{prefix}/{f.name}" if prefix else f.name
            in_one_folder = sum(folders[g] == folders[f] for g in same) > 1
            names[f] = InputName(label, label if in_one_folder else label.removesuffix(f.suffix))
    stems = Counter(name.stem.casefold() for name in names.values())
    for f, name in names.items():
        if stems[name.stem.casefold()] > 1:  # e.g. x.tif and x.TIF in one folder of a case-sensitive file system
            digest = hashlib.sha1(os.path.abspath(f).encode()).hexdigest()[:8]
            names[f] = InputName(name.label, f"{name.stem}_{digest}")
    return {f: names[f] for f in files}


def distinct_files(files: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """``files`` without repeats (the same file given twice, or through a link, is analysed once), and each
    repeat with the path it repeats.

    >>> distinct_files([Path("a.tif"), Path("b.tif"), Path("./a.tif")])
    ([PosixPath('a.tif'), PosixPath('b.tif')], [(PosixPath('a.tif'), PosixPath('a.tif'))])
    """
    first: dict[str, Path] = {}
    repeats = []
    for f in files:
        key = os.path.realpath(f)
        if key in first:
            repeats.append((f, first[key]))
        else:
            first[key] = f
    return list(first.values()), repeats


def repeat_note(repeat: Path, first: Path) -> str:
    """What to tell about ``repeat``, a repeat of ``first`` (:func:`distinct_files`).

    >>> repeat_note(Path("a.tif"), Path("a.tif")), repeat_note(Path("link.tif"), Path("a.tif"))
    ('a.tif: given more than once', 'link.tif: the same file as a.tif')
    """
    return f"{repeat}: " + ("given more than once" if str(repeat) == str(first) else f"the same file as {first}")


def _default_names(files: Sequence[Path], names: Mapping[Path, InputName] | None) -> Mapping[Path, InputName]:
    """``names``, or each file's own name and stem (what the dataset reports use: one folder per group)."""
    return names if names is not None else {f: InputName(f.name, f.stem) for f in files}


def _labels_tiff(path: Path, labels: np.ndarray) -> Path:
    dtype = np.uint16 if labels.max() < 65536 else np.uint32
    return write_tiff_stack(path, labels.astype(dtype))


def _check_intensities(array: np.ndarray, path: Path, allowed_ndim: tuple[int, ...]) -> np.ndarray:
    """:func:`cellops.io.check_pixels` for the classical analyses (ndim, sides, dtype, NaN or infinity), except
    its rule that float images lie in [0, 1]: these analyses measure sizes and thresholds in each image and read
    floats as they are, so a 32-bit image in camera units (as Fiji saves them) is fine."""
    if array.dtype.kind != "f":
        return check_pixels(array, source=str(path), allowed_ndim=allowed_ndim)
    if not np.isfinite(array).all():
        raise ImageInputError(f"{path}: image contains NaN or infinite values")
    # Every other check, on a stand-in of the same shape and dtype whose values are all 0 (no copy is made).
    check_pixels(np.broadcast_to(np.zeros((), array.dtype), array.shape), source=str(path), allowed_ndim=allowed_ndim)
    return array


def _as_2d(image: np.ndarray, path: Path) -> np.ndarray:
    """One grey-level image (float64) for the colony and nucleus analyses: a grey image, or an RGB(A) one
    (channel-last) converted to grey, after the checks of :func:`_check_intensities` on every channel."""
    colour = image.ndim == 3 and image.shape[-1] in (3, 4)
    if image.ndim != 2 and not colour:
        raise ImageInputError(f"{path}: expected a 2-D grey-level or RGB image, got shape {image.shape}")
    _check_intensities(np.moveaxis(image, -1, 0) if colour else image, path, (3,) if colour else (2,))
    return to_gray_float(image)


def min_movie_frames(params: CalciumParams) -> int:
    """The fewest frames a calcium movie needs: the ``baseline_frames`` F0 and bleaching are measured on, and at
    least one frame after them for the response.

    >>> min_movie_frames(CalciumParams(baseline_frames=15))
    16
    """
    return max(2, params.baseline_frames + 1)


def _as_movie(movie: np.ndarray, path: Path, params: CalciumParams) -> np.ndarray:
    """A (frames, rows, columns) grey-level movie of at least :func:`min_movie_frames` frames, or an
    ``ImageInputError`` naming ``path`` and the problem (a single image, a colour image or movie, too few
    frames, or what :func:`_check_intensities` refuses)."""
    if movie.ndim in (3, 4) and movie.shape[-1] in (3, 4):
        what = "an RGB(A) image" if movie.ndim == 3 else "a colour movie"
        raise ImageInputError(f"{path}: {what} (shape {movie.shape}), not a grey-level time-lapse stack (frames, rows, "
                              "columns); save the movie as one grey-level channel")
    if movie.ndim != 3:
        raise ImageInputError(f"{path}: expected a time-lapse stack (frames, rows, columns), got shape {movie.shape}"
                              + (" (a single image)" if movie.ndim == 2 else ""))
    needed = min_movie_frames(params)
    if movie.shape[0] < needed:
        raise ImageInputError(f"{path}: {movie.shape[0]} frames; a movie needs at least {needed} "
                              f"({params.baseline_frames} baseline frames for F0, then the response)")
    return _check_intensities(movie, path, (3,))


def _run_batch(files: list[Path], analyse_one: Callable[[Path], tuple[pd.DataFrame, list[Path]]]) -> BatchReport:
    """Apply ``analyse_one`` (returning a table and the files it wrote) to every file; a file that cannot be
    used is recorded with its problem and the batch goes on, whatever went wrong with it (an unforeseen error
    is recorded with its type, so one odd file never costs the results of the others)."""
    report = BatchReport(table=pd.DataFrame())
    tables = []
    for path in files:
        try:
            table, written = analyse_one(path)
        except (ImageInputError, ValueError) as error:
            report.failures[str(path)] = str(error)
            continue
        except MemoryError:
            report.failures[str(path)] = f"{path}: not enough memory to analyse it"
            continue
        except Exception as error:  # noqa: BLE001 - see the docstring
            report.failures[str(path)] = f"{path}: analysis failed ({type(error).__name__}: {error})"
            continue
        report.written += written
        tables.append(table)
    report.table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return report


def analyze_colony_files(files: list[Path], out: Path, params: ColonyParams = ColonyParams(),
                         group: str | None = None, names: Mapping[Path, InputName] | None = None) -> BatchReport:
    """Colony table, label image and overlay (upright box red, rotated box green, hull white, contour blue).
    ``names``: each file's table label and output name (default: its own name; see :func:`input_names`)."""
    out.mkdir(parents=True, exist_ok=True)
    names = _default_names(files, names)

    def one(path: Path) -> tuple[pd.DataFrame, list[Path]]:
        image = _as_2d(read_image_file(path), path)
        result = measure_colonies(image, params)
        label, stem = names[path]
        table = result.table.assign(image=label, group=group or path.parent.name,
                                    colony_width_px=round(result.settings.colony_diameter_px, 2))
        write_table(table, out / f"{stem}_colonies.csv")
        return table, [
            _labels_tiff(out / f"{stem}_colonies.tif", result.labels),
            save_png(colony_overlay(image, result.contours), out / f"{stem}_overlay.png"),
            out / f"{stem}_colonies.csv",
        ]

    return _run_batch(files, one)


def analyze_nucleus_files(files: list[Path], out: Path, params: NucleusParams = NucleusParams(),
                          group: str | None = None, names: Mapping[Path, InputName] | None = None) -> BatchReport:
    """Nucleus labels and per-nucleus shape table for each file (``names`` as for colonies)."""
    out.mkdir(parents=True, exist_ok=True)
    names = _default_names(files, names)

    def one(path: Path) -> tuple[pd.DataFrame, list[Path]]:
        image = _as_2d(read_image_file(path), path)
        found = segment_nuclei_with_settings(image, params)
        labels = found.labels
        label, stem = names[path]
        # The diameter and threshold each image was segmented with (measured or given), for the record.
        table = nucleus_table(labels, image).assign(image=label, group=group or path.parent.name,
                                                    segmented_diameter_px=round(found.diameter_px, 2),
                                                    segmented_threshold=found.threshold)
        write_table(table, out / f"{stem}_nuclei.csv")
        return table, [_labels_tiff(out / f"{stem}_nuclei.tif", labels), out / f"{stem}_nuclei.csv"]

    return _run_batch(files, one)


def analyze_calcium_files(files: list[Path], out: Path, params: CalciumParams = CalciumParams(),
                          group: str | None = None, masks: dict[Path, Path] | None = None,
                          names: Mapping[Path, InputName] | None = None) -> BatchReport:
    """Cell labels, per-cell dF/F0 traces and response metrics for each time-lapse stack; group curves.

    Each movie must be a grey-level (frames, rows, columns) stack of at least :func:`min_movie_frames` frames.
    ``masks`` maps a movie to a label TIFF of its cells drawn elsewhere (Fiji, napari, Cellpose): those cells
    are measured, with their own ids, instead of segmenting the movie. ``names`` as for colonies."""
    out.mkdir(parents=True, exist_ok=True)
    names = _default_names(files, names)
    dff_by_group: dict[str, list[np.ndarray]] = {}

    def one(path: Path) -> tuple[pd.DataFrame, list[Path]]:
        movie = _as_movie(read_image_file(path), path, params)
        labels = None
        if masks and path in masks:
            drawn = read_image_file(masks[path])
            if drawn.dtype.kind not in "uif":
                raise ImageInputError(f"{masks[path]}: a label image holds whole numbers (cell ids), got {drawn.dtype}")
            labels = check_cell_masks(drawn, movie.shape, source=str(masks[path]))
        result = measure_calcium_movie(movie, params, labels)
        label, stem = names[path]
        traces = pd.DataFrame(result.dff.T, columns=[f"cell_{i}" for i in result.cell_ids])
        traces.insert(0, "time_s", np.arange(len(traces)) * params.frame_interval_s)
        write_table(traces, out / f"{stem}_dff.csv")
        dff_by_group.setdefault(group or path.parent.name, []).append(result.dff)
        curves = group_curves({Path(stem).name: result.dff}, params.frame_interval_s)
        return result.metrics.assign(movie=label, group=group or path.parent.name), [
            _labels_tiff(out / f"{stem}_cells.tif", result.labels),
            out / f"{stem}_dff.csv",
            plot_group_curves(curves, out / f"{stem}_dff.png"),
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
