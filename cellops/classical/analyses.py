"""The classical analyses (colonies, nuclei, calcium) of image files: what ``cellops analyze`` and the dataset
reports (:mod:`cellops.reports`) run.

Each file is analysed on its own (:func:`analyze_colony_file`, :func:`analyze_nucleus_file`,
:func:`analyze_calcium_file`): a file that cannot be analysed (unreadable, a directory, too large, wrong
dimensionality or dtype, a colour image or too short a movie for calcium...) is reported with its name and the
problem, and the rest of the batch goes on (the batch engine, :func:`cellops.batch.run_batch`). Files are opened by
:func:`cellops.microscopy.open_image` (OME-TIFF, ImageJ, OME-Zarr, ND2, CZI, LIF, PNG...): one channel and scene,
chosen by :class:`FileReading`, and the file's pixel size, which converts the sizes the settings give in µm and adds a
µm column beside every size in pixels. Outputs per file: a label image as OME-TIFF (16-bit, with the input's pixel
size, so Fiji and napari overlay it at the right scale), CSV tables and PNG figures, named after the file
(:func:`cellops.batch.input_names`); per batch: the table of every object and the group figures and statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cellops.batch import BatchResult, InputName, content_hash, run_batch, settings_key
from cellops.classical.calcium import CalciumParams, check_cell_masks, group_curves, measure_calcium_movie
from cellops.classical.colonies import ColonyParams, colony_overlay, measure_colonies
from cellops.classical.common import to_gray_float
from cellops.classical.nuclei import NucleusParams, nucleus_table, segment_nuclei_with_settings
from cellops.classical.plots import plot_feature_by_group, plot_group_curves, plot_superplot
from cellops.classical.stats import group_statistics, summarise_groups
from cellops.config import from_mapping
from cellops.io import FileReading, ImageInputError, check_pixels, write_table
from cellops.microscopy import MicroscopeImage, open_image, write_ome_tiff
from cellops.plots import save_png
from cellops.units import with_physical_sizes

#: The shape features of nuclei that the group report compares.
NUCLEUS_FEATURES = ["aspect_ratio_ellipse", "aspect_ratio_rectangle", "area", "circularity", "solidity",
                    "eccentricity", "feret_max", "feret_min"]


@dataclass
class FileAnalysis:
    """What the analysis of one file gave: its table (one row per object), the files written, and for calcium the
    cells' dF/F0 traces (cells, frames)."""

    table: pd.DataFrame
    written: list[Path]
    dff: np.ndarray | None = None


@dataclass
class BatchReport:
    """What a batch produced: per-object table, the files written, and the files that failed (with why)."""

    table: pd.DataFrame
    written: list[Path] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def analysis_settings(kind: str, values: Mapping | None) -> tuple[object, FileReading]:
    """The parameters of analysis ``kind`` and the :class:`FileReading` from a config's ``analysis`` mapping (its
    ``channel`` and ``scene`` keys choose what is read; every other key is a parameter of ``ANALYSES[kind].params``).

    Examples
    --------
    >>> params, reading = analysis_settings("nuclei", {"channel": "DAPI", "threshold": "otsu"})
    >>> params.threshold, reading.channel
    ('otsu', 'DAPI')
    """
    values = dict(values or {})
    reading = FileReading(channel=values.pop("channel", None), scene=values.pop("scene", None))
    return from_mapping(ANALYSES[kind].params, values), reading


def _labels_tiff(path: Path, labels: np.ndarray, opened: MicroscopeImage, pixel_size_um: float | None) -> Path:
    """A label image as OME-TIFF with the input's pixel size (16-bit while labels fit)."""
    dtype = np.uint16 if labels.max() < 65536 else np.uint32
    axes = "YX" if labels.ndim == 2 else "ZYX"
    sizes = {axis: size for axis, size in opened.pixel_size_um.items() if axis in axes}
    if pixel_size_um is not None:
        sizes.setdefault("Y", pixel_size_um)
        sizes.setdefault("X", pixel_size_um)
    return write_ome_tiff(path, labels.astype(dtype), axes=axes, pixel_size_um=sizes or None, overwrite=True)


def _plane(opened: MicroscopeImage, path: Path, purpose: str) -> np.ndarray:
    """The one 2-D image (grey, or RGB samples) of ``opened``; a stack is refused naming its axes."""
    if opened.axes not in ("YX", "YXS"):
        raise ImageInputError(f"{path}: {purpose} reads one 2-D image, this file has axes {opened.axes} (shape "
                              f"{opened.data.shape}); save or choose a single plane")
    return opened.data


def _pixel_size(opened: MicroscopeImage, fallback: float | None) -> float | None:
    """The file's own in-plane pixel size, else the config's."""
    own = opened.yx_pixel_size_um
    return own if own is not None else fallback




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


def as_grey_image(image: np.ndarray, path: Path) -> np.ndarray:
    """One grey-level image (float64) for the colony and nucleus analyses.

    Parameters
    ----------
    image : numpy.ndarray
        A grey image, or an RGB(A) one (channel-last), converted to grey.
    path : Path
        Where it was read from, for the messages.

    Returns
    -------
    numpy.ndarray
        (rows, columns) float64.

    Raises
    ------
    ImageInputError
        Naming ``path``: another shape, an unsupported dtype, NaN or infinite values (any channel).
    """
    colour = image.ndim == 3 and image.shape[-1] in (3, 4)
    if image.ndim != 2 and not colour:
        raise ImageInputError(f"{path}: expected a 2-D grey-level or RGB image, got shape {image.shape}")
    _check_intensities(np.moveaxis(image, -1, 0) if colour else image, path, (3,) if colour else (2,))
    return to_gray_float(image)


def min_movie_frames(params: CalciumParams) -> int:
    """The fewest frames a calcium movie needs: the ``baseline_frames`` F0 and bleaching are measured on, and at
    least one frame after them for the response.

    Parameters
    ----------
    params : CalciumParams
        The analysis settings.

    Returns
    -------
    int
        At least 2.

    Examples
    --------
    >>> min_movie_frames(CalciumParams(baseline_frames=15))
    16
    """
    return max(2, params.baseline_frames + 1)


def as_movie(movie: np.ndarray, path: Path, params: CalciumParams) -> np.ndarray:
    """A (frames, rows, columns) grey-level movie of at least :func:`min_movie_frames` frames.

    Parameters
    ----------
    movie : numpy.ndarray
        What was read from ``path``.
    path : Path
        Where it was read from, for the messages.
    params : CalciumParams
        The analysis settings (the baseline's length).

    Returns
    -------
    numpy.ndarray
        ``movie``, checked.

    Raises
    ------
    ImageInputError
        Naming ``path`` and the problem: a single image, a colour image or movie, too few frames, an unsupported
        dtype, NaN or infinite values.
    """
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


def analyze_colony_file(path: Path, out: Path, name: InputName, group: str,
                        params: ColonyParams = ColonyParams(), *, reading: FileReading = FileReading()) -> FileAnalysis:
    """Colony table, label image and overlay (upright box red, rotated box green, hull white, contour blue) of one
    image: ``<stem>_colonies.csv``, ``<stem>_colonies.tif`` and ``<stem>_overlay.png`` under ``out``.

    Parameters
    ----------
    path : Path
        The image (grey or RGB).
    out : Path
        The output folder.
    name : InputName
        The image's label in the table and its output stem.
    group : str
        Its culture group, in the table.
    params : ColonyParams
        The analysis settings (sizes in µm are converted with the file's pixel size).
    reading : FileReading
        The channel and scene to read.

    Returns
    -------
    FileAnalysis
        One row per colony, sizes in pixels and in µm (when the pixel size is known).
    """
    opened = reading.open(path, "the colony analysis")
    image = as_grey_image(_plane(opened, path, "the colony analysis"), path)
    pixel_size = _pixel_size(opened, params.pixel_size_um)
    result = measure_colonies(image, params.at_pixel_size(pixel_size))
    table = result.table.assign(image=name.label, group=group,
                                colony_width_px=round(result.settings.colony_diameter_px, 2))
    table = with_physical_sizes(table, pixel_size)
    overlay = colony_overlay(image, result.contours)
    return FileAnalysis(table, [write_table(table, out / f"{name.stem}_colonies.csv"),
                                _labels_tiff(out / f"{name.stem}_colonies.tif", result.labels, opened, pixel_size),
                                save_png(overlay, out / f"{name.stem}_overlay.png"),
                                write_ome_tiff(out / f"{name.stem}_overlay.ome.tif", overlay, axes="YXS",
                                               pixel_size_um=pixel_size, overwrite=True)])


def analyze_nucleus_file(path: Path, out: Path, name: InputName, group: str,
                         params: NucleusParams = NucleusParams(), *, reading: FileReading = FileReading()) -> FileAnalysis:
    """Nucleus labels and per-nucleus shape table of one image: ``<stem>_nuclei.csv`` and ``<stem>_nuclei.tif``
    under ``out``.

    Parameters
    ----------
    path : Path
        The image (grey or RGB).
    out : Path
        The output folder.
    name : InputName
        The image's label in the table and its output stem.
    group : str
        Its culture group, in the table.
    params : NucleusParams
        The analysis settings (a diameter in µm is converted with the file's pixel size).
    reading : FileReading
        The channel and scene to read.

    Returns
    -------
    FileAnalysis
        One row per nucleus, sizes in pixels and in µm (when the pixel size is known), with the diameter and
        threshold the image was segmented with (measured or given).
    """
    opened = reading.open(path, "the nucleus analysis")
    image = as_grey_image(_plane(opened, path, "the nucleus analysis"), path)
    pixel_size = _pixel_size(opened, params.pixel_size_um)
    found = segment_nuclei_with_settings(image, params.at_pixel_size(pixel_size))
    table = nucleus_table(found.labels, image).assign(image=name.label, group=group,
                                                      segmented_diameter_px=round(found.diameter_px, 2),
                                                      segmented_threshold=found.threshold)
    table = with_physical_sizes(table, pixel_size)
    return FileAnalysis(table, [write_table(table, out / f"{name.stem}_nuclei.csv"),
                                _labels_tiff(out / f"{name.stem}_nuclei.tif", found.labels, opened, pixel_size)])


def analyze_calcium_file(path: Path, out: Path, name: InputName, group: str, params: CalciumParams = CalciumParams(),
                         *, mask: Path | None = None, reading: FileReading = FileReading()) -> FileAnalysis:
    """Cell labels, per-cell dF/F0 traces, response metrics and dF/F0 plot of one time-lapse stack:
    ``<stem>_cells.tif``, ``<stem>_dff.csv``, ``<stem>_responses.csv`` and ``<stem>_dff.png`` under ``out``.

    Parameters
    ----------
    path : Path
        A grey-level (frames, rows, columns) stack of at least :func:`min_movie_frames` frames.
    out : Path
        The output folder.
    name : InputName
        The movie's label in the table and its output stem.
    group : str
        Its culture group, in the table.
    params : CalciumParams
        The analysis settings.
    mask : Path, optional
        A label TIFF of its cells drawn elsewhere (Fiji, napari, Cellpose): those cells are measured, with their
        own ids, instead of segmenting the movie.
    reading : FileReading
        The channel and scene to read.

    Returns
    -------
    FileAnalysis
        One row per cell (its area in pixels and µm² when the pixel size is known), and the cells' dF/F0 traces.
        The movie's own time step, when its metadata states one, replaces ``frame_interval_s``.
    """
    opened = reading.open(path, "the calcium analysis")
    pixel_size = _pixel_size(opened, params.pixel_size_um)
    params = params.at_pixel_size(pixel_size)
    if opened.time_step_s is not None and opened.time_step_s > 0:
        params = replace(params, frame_interval_s=float(opened.time_step_s))
    if "T" in opened.axes and "Z" in opened.axes:
        raise ImageInputError(f"{path}: the calcium analysis reads a time-lapse of one plane (frames, rows, columns); "
                              f"this file has axes {opened.axes} (shape {opened.data.shape})")
    # A stack without metadata reads as Z; the calcium analysis takes its one stack axis as time.
    movie = as_movie(opened.data, path, params)
    labels = None
    if mask is not None:
        drawn = open_image(mask).data
        if drawn.dtype.kind not in "uif":
            raise ImageInputError(f"{mask}: a label image holds whole numbers (cell ids), got {drawn.dtype}")
        labels = check_cell_masks(drawn, movie.shape, source=str(mask))
    result = measure_calcium_movie(movie, params, labels)
    traces = pd.DataFrame(result.dff.T, columns=[f"cell_{i}" for i in result.cell_ids])
    traces.insert(0, "time_s", np.arange(len(traces)) * params.frame_interval_s)
    areas = np.bincount(result.labels.ravel())
    table = result.metrics.assign(area=areas[result.cell_ids].astype(float), movie=name.label, group=group,
                                  frame_interval_s=params.frame_interval_s)
    table = with_physical_sizes(table, pixel_size)
    curves = group_curves({Path(name.stem).name: result.dff}, params.frame_interval_s)
    return FileAnalysis(table, [_labels_tiff(out / f"{name.stem}_cells.tif", result.labels, opened, pixel_size),
                                write_table(traces, out / f"{name.stem}_dff.csv"),
                                write_table(table, out / f"{name.stem}_responses.csv"),
                                plot_group_curves(curves, out / f"{name.stem}_dff.png")], result.dff)


def write_group_curves(dff_by_group: Mapping[str, Sequence[np.ndarray]], out: Path,
                       frame_interval_s: float) -> list[Path]:
    """Mean dF/F0 +- SEM per group over time (``calcium_group_curves.csv`` and ``.png`` under ``out``), when
    every movie has as many frames; nothing otherwise.

    Parameters
    ----------
    dff_by_group : mapping of str to sequence of numpy.ndarray
        Each group's movies' dF/F0 traces (cells, frames).
    out : Path
        The output folder.
    frame_interval_s : float
        Seconds between frames.

    Returns
    -------
    list of Path
        The files written.
    """
    if not dff_by_group or len({d.shape[1] for ds in dff_by_group.values() for d in ds}) != 1:
        return []
    curves = group_curves({g: np.vstack(ds) for g, ds in dff_by_group.items()}, frame_interval_s)
    return [write_table(curves, out / "calcium_group_curves.csv"),
            plot_group_curves(curves, out / "calcium_group_curves.png")]


def nuclei_group_report(table: pd.DataFrame, out: Path, features: list[str] = NUCLEUS_FEATURES,
                        replicate_column: str = "image") -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Summary table, statistics table (both also written as CSV), SuperPlots and box plots of nuclear shape by
    group; tests on replicate means come first.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per nucleus, with ``group``, ``replicate_column`` and the ``features``.
    out : Path
        Where ``nuclei_summary.csv``, ``nuclei_statistics.csv``, ``nuclei_by_group.png`` and
        ``nuclei_superplot.png`` go.
    features : list of str
        The shape features compared.
    replicate_column : str
        The column naming each nucleus's replicate (the image by default).

    Returns
    -------
    summary : pandas.DataFrame
        Per group and feature.
    statistics : pandas.DataFrame
        :func:`cellops.classical.stats.group_statistics`.
    superplot : Path
        The SuperPlot figure.
    """
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise_groups(table, features)
    statistics = group_statistics(table, features, replicate_column)
    write_table(summary, out / "nuclei_summary.csv")
    write_table(statistics, out / "nuclei_statistics.csv")
    plot_feature_by_group(table, features, out / "nuclei_by_group.png")
    return summary, statistics, plot_superplot(table, features, out / "nuclei_superplot.png",
                                               replicate_column=replicate_column)


def _analyze_in_memory(files: list[Path], out: Path, names: Mapping[Path, InputName] | None,
                       one: Callable[[Path, InputName], FileAnalysis]) -> tuple[BatchReport, dict[Path, FileAnalysis]]:
    """Every file through ``one`` (on the batch engine, nothing recorded), the tables kept in memory."""
    out.mkdir(parents=True, exist_ok=True)
    names = names if names is not None else {f: InputName(f.name, f.stem) for f in files}
    analysed: dict[Path, FileAnalysis] = {}

    def process(path: Path, out_dir: Path, stem: str) -> dict:
        analysed[path] = one(path, names[path])
        return {"outputs": []}

    result = run_batch(files, out, process, "", names=names, record=False, progress=False)
    tables = [analysed[f].table for f in files if f in analysed]
    report = BatchReport(pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(),
                         [p for f in files if f in analysed for p in analysed[f].written], result.failures)
    return report, analysed


def analyze_colony_files(files: list[Path], out: Path, params: ColonyParams = ColonyParams(),
                         group: str | None = None, names: Mapping[Path, InputName] | None = None, *,
                         reading: FileReading = FileReading()) -> BatchReport:
    """:func:`analyze_colony_file` of every file, the tables in memory (the dataset reports).

    Parameters
    ----------
    files : list of Path
        The images, each once.
    out : Path
        The output folder.
    params : ColonyParams
        The analysis settings.
    group : str, optional
        The files' culture group (default: each file's folder name).
    names : mapping of Path to InputName, optional
        Each file's table label and output name (default: its own name and stem).
    reading : FileReading
        The channel and scene to read.

    Returns
    -------
    BatchReport
        One row per colony; the files that failed, with why.
    """
    return _analyze_in_memory(files, out, names, lambda path, name: analyze_colony_file(
        path, out, name, group or path.parent.name, params, reading=reading))[0]


def analyze_nucleus_files(files: list[Path], out: Path, params: NucleusParams = NucleusParams(),
                          group: str | None = None, names: Mapping[Path, InputName] | None = None, *,
                          reading: FileReading = FileReading()) -> BatchReport:
    """:func:`analyze_nucleus_file` of every file, the tables in memory (the dataset reports).

    Parameters
    ----------
    files : list of Path
        The images, each once.
    out : Path
        The output folder.
    params : NucleusParams
        The analysis settings.
    group : str, optional
        The files' culture group (default: each file's folder name).
    names : mapping of Path to InputName, optional
        Each file's table label and output name (default: its own name and stem).
    reading : FileReading
        The channel and scene to read.

    Returns
    -------
    BatchReport
        One row per nucleus; the files that failed, with why.
    """
    return _analyze_in_memory(files, out, names, lambda path, name: analyze_nucleus_file(
        path, out, name, group or path.parent.name, params, reading=reading))[0]


def analyze_calcium_files(files: list[Path], out: Path, params: CalciumParams = CalciumParams(),
                          group: str | None = None, masks: Mapping[Path, Path] | None = None,
                          names: Mapping[Path, InputName] | None = None, *,
                          reading: FileReading = FileReading()) -> BatchReport:
    """:func:`analyze_calcium_file` of every movie, the tables in memory (the dataset reports), and the group
    curves (:func:`write_group_curves`).

    Parameters
    ----------
    files : list of Path
        The movies, each once.
    out : Path
        The output folder.
    params : CalciumParams
        The analysis settings.
    group : str, optional
        The movies' culture group (default: each movie's folder name).
    masks : mapping of Path to Path, optional
        Movie -> a label TIFF of its cells drawn elsewhere.
    names : mapping of Path to InputName, optional
        Each movie's table label and output name (default: its own name and stem).
    reading : FileReading
        The channel and scene to read.

    Returns
    -------
    BatchReport
        One row per cell; the movies that failed, with why.
    """
    groups = {path: group or path.parent.name for path in files}
    report, analysed = _analyze_in_memory(files, out, names, lambda path, name: analyze_calcium_file(
        path, out, name, groups[path], params, mask=(masks or {}).get(path), reading=reading))
    dff_by_group: dict[str, list[np.ndarray]] = {}
    for path in files:
        if path in analysed:
            dff_by_group.setdefault(groups[path], []).append(analysed[path].dff)
    report.written += write_group_curves(dff_by_group, out, params.frame_interval_s)
    return report


@dataclass(frozen=True)
class Analysis:
    """One classical analysis: its parameter class, the analysis of one file, the suffix of the per-file table that
    file writes (``<stem><table_suffix>``), the column naming each object's file, and the analysis of a list of
    files in memory (the dataset reports)."""

    params: type
    analyze_file: Callable[..., FileAnalysis]
    table_suffix: str
    file_column: str
    run: Callable[..., BatchReport]


#: The classical analyses by name: the CLI, the reports and the pipelines all dispatch through this table.
ANALYSES: dict[str, Analysis] = {
    "colonies": Analysis(ColonyParams, analyze_colony_file, "_colonies.csv", "image", analyze_colony_files),
    "nuclei": Analysis(NucleusParams, analyze_nucleus_file, "_nuclei.csv", "image", analyze_nucleus_files),
    "calcium": Analysis(CalciumParams, analyze_calcium_file, "_responses.csv", "movie", analyze_calcium_files),
}


def _read_file_table(path: Path, file_column: str) -> pd.DataFrame:
    """A per-file table as written, its names kept as text (a group called ``001`` stays ``001``)."""
    return pd.read_csv(path, dtype={file_column: str, "group": str})


def analyze_batch(kind: str, files: list[Path], out: Path, params: object, *, names: Mapping[Path, InputName],
                  group: str | None = None, masks: Mapping[Path, Path] | None = None,
                  progress: bool | None = None,
                  reading: FileReading = FileReading()) -> tuple[BatchResult, pd.DataFrame]:
    """The analysis ``kind`` of every file on the batch engine, resumable: a file analysed before with the same
    content, settings, group (and mask) is skipped. Then the batch's outputs, from every file's own table: the
    table of every object (``<kind>_all.csv``), for nuclei of several groups the group report
    (:func:`nuclei_group_report`), for calcium the group curves (:func:`write_group_curves`).

    Parameters
    ----------
    kind : str
        ``colonies``, ``nuclei`` or ``calcium`` (:data:`ANALYSES`).
    files : list of Path
        The files, each once.
    out : Path
        The output folder.
    params : object
        The analysis settings (``ANALYSES[kind].params``).
    names : mapping of Path to InputName
        Each file's label and output stem (:func:`cellops.batch.input_names`).
    group : str, optional
        The files' culture group (default: each file's folder name).
    masks : mapping of Path to Path, optional
        Calcium: movie -> a label TIFF of its cells drawn elsewhere.
    progress : bool or None
        Progress bar over the files (None: only on a terminal).
    reading : FileReading
        The channel and scene to read from each file (part of the settings a resumed batch compares).

    Returns
    -------
    result : cellops.batch.BatchResult
        One row per file (results: its number of ``objects`` and its ``group``).
    table : pandas.DataFrame
        Every object of the files analysed (no column when none was).
    """
    analysis = ANALYSES[kind]
    masks = masks or {}
    groups = {path: group or path.parent.name for path in files}

    def key(path: Path) -> str:
        settings = {**asdict(params), "group": groups[path], **({"reading": asdict(reading)} if reading != FileReading()
                                                                  else {})}
        if path in masks:
            settings["mask"] = content_hash(masks[path])
        return settings_key(kind, settings)

    def process(path: Path, out_dir: Path, stem: str) -> dict:
        extra = {"mask": masks[path]} if path in masks else {}
        analysed = analysis.analyze_file(path, out_dir, names[path], groups[path], params, reading=reading, **extra)
        return {"outputs": [p.relative_to(out_dir).as_posix() for p in analysed.written],
                "objects": len(analysed.table), "group": groups[path]}

    result = run_batch(files, out, process, key, names=names, progress=progress)
    kept = [(path, row) for path, row in zip(files, result.rows) if row["status"] != "failed"]
    tables = [_read_file_table(out / f"{names[path].stem}{analysis.table_suffix}", analysis.file_column)
              for path, _ in kept]
    table = pd.concat([t for t in tables if len(t)] or tables, ignore_index=True) if tables else pd.DataFrame()
    if tables:
        write_table(table, out / f"{kind}_all.csv")
    if kind == "nuclei" and len(table) and table["group"].nunique() > 1:
        nuclei_group_report(table, out)
    if kind == "calcium":
        dff_by_group: dict[str, list[np.ndarray]] = {}
        for path, row in kept:
            dff = pd.read_csv(out / f"{names[path].stem}_dff.csv").drop(columns="time_s").to_numpy().T
            dff_by_group.setdefault(row["group"], []).append(dff)
        write_group_curves(dff_by_group, out, params.frame_interval_s)
    return result, table
