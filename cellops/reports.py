"""Whole-dataset reports of the classical analyses: analyse every file of a dataset folder, compare groups,
score against the shipped ground truth. The ZenML steps and ``cellops report`` (the DVC stages) both call
these, so a pipeline run and ``dvc repro`` produce the same figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cellops.classical.analyses import (BatchReport, FileReading, analysis_settings, analyze_calcium_files, analyze_colony_files,
                                        analyze_nucleus_files, nuclei_group_report)
from cellops.classical.calcium import CalciumParams
from cellops.io import round_significant, write_table
from cellops.classical.colonies import ColonyParams
from cellops.classical.nuclei import NucleusParams
from cellops.classical.plots import plot_superplot
from cellops.classical.stats import group_statistics
from cellops.scoring import score_calcium, score_colonies, score_nuclei


@dataclass
class DatasetReport:
    """Tables by name, accuracy and summary figures (the first is the headline figure)."""

    tables: dict[str, pd.DataFrame]
    accuracy: dict[str, float]
    figures: list[Path] = field(default_factory=list)

    def write(self, out_dir: Path) -> Path:
        """Write ``metrics.json`` and one CSV per table under ``out_dir``; returns the metrics file.

        Floats are written to a fixed number of significant digits (:func:`cellops.io.write_table`): DVC hashes
        these files, and the last bits of a float differ between CPUs, so full precision would make the same
        analysis a "changed" output on another machine.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, table in self.tables.items():
            write_table(table, out_dir / f"{name}.csv")
        metrics = out_dir / "metrics.json"
        rounded = {k: round_significant(v) if isinstance(v, float) else v for k, v in self.accuracy.items()}
        metrics.write_text(json.dumps(rounded, indent=2, sort_keys=True))
        return metrics


def dataset_files(folder: Path, pattern: str, ground_truth_suffix: str | None = None) -> list[Path]:
    """Image files of a dataset folder; files ending in ``ground_truth_suffix`` (e.g. ``_labels.tif``) are the
    ground truth of others and are left out."""
    files = sorted(p for p in folder.glob(pattern) if not (ground_truth_suffix and p.name.endswith(ground_truth_suffix)))
    if not files:
        raise FileNotFoundError(f"{folder}: no files match {pattern!r}; run `make data` or add your images")
    return files


def _groups(data_dir: Path, groups: list[str] | None) -> list[str]:
    return groups or sorted(p.name for p in data_dir.iterdir() if p.is_dir())


def _raise_failures(kind: str, report: BatchReport) -> None:
    if report.failures:
        raise ValueError(f"{kind} analysis failed on {len(report.failures)} files: {report.failures}")


def colony_report(data_dir: Path, out_dir: Path, params: ColonyParams, *, reading: FileReading = FileReading(),
                  pattern: str, annotations: str,
                  iou_threshold: float) -> DatasetReport:
    """Colonies of ``data_dir/<pattern>``; scored against ``data_dir/annotations`` (COCO) if present."""
    files = dataset_files(data_dir, pattern)
    report = analyze_colony_files(files, out_dir, params, group="colonies", reading=reading)
    _raise_failures("colony", report)
    accuracy: dict = {"n_images": len(files), "n_colonies": len(report.table)}
    if (data_dir / annotations).is_file():
        accuracy.update(score_colonies(files, out_dir, data_dir / annotations, iou_threshold=iou_threshold))
    return DatasetReport({"colonies": report.table}, accuracy, sorted(out_dir.glob("*_overlay.png")))


def nuclei_report(data_dir: Path, out_dir: Path, params: NucleusParams, *, reading: FileReading = FileReading(),
                  pattern: str, groups: list[str] | None,
                  features: list[str], ground_truth_suffix: str, iou_threshold: float,
                  replicate: str = "image") -> DatasetReport:
    """Nuclei of ``data_dir/<group>/<pattern>``, group statistics, and scores against the ``ground_truth_suffix``
    label images and ``ellipses.csv`` where present."""
    files_by_group = {g: dataset_files(data_dir / g, pattern, ground_truth_suffix) for g in _groups(data_dir, groups)}
    tables = []
    for group, files in files_by_group.items():
        report = analyze_nucleus_files(files, out_dir / group, params, group, reading=reading)
        _raise_failures("nucleus", report)
        tables.append(report.table)
    table = pd.concat(tables, ignore_index=True)
    summary, statistics, plot = nuclei_group_report(table, out_dir, features, replicate)
    ellipses_file = data_dir / "ellipses.csv"
    ellipses = pd.read_csv(ellipses_file) if ellipses_file.is_file() else None
    accuracy: dict = {"n_nuclei": len(table), **{f"n_{g}": int((table["group"] == g).sum()) for g in files_by_group},
                      **score_nuclei(files_by_group, out_dir, table, ellipses, ground_truth_suffix=ground_truth_suffix,
                                     iou_threshold=iou_threshold)}
    across = statistics[(statistics["feature"] == "aspect_ratio_ellipse") & (statistics["comparison"] == "all groups")]
    for level, name in (("replicate", "aspect_ratio_replicate_anova_p"), ("object", "aspect_ratio_object_kruskal_p")):
        chosen = across[across["level"] == level]
        if len(chosen):
            accuracy[name] = float(chosen["p_value"].iloc[0])
    return DatasetReport({"nuclei": table, "group_statistics": statistics, "group_summary": summary}, accuracy, [plot])


def calcium_report(data_dir: Path, out_dir: Path, params: CalciumParams, *, reading: FileReading = FileReading(),
                   pattern: str, groups: list[str] | None,
                   ground_truth_suffix: str, iou_threshold: float, replicate: str = "movie",
                   features: list[str] | None = None) -> DatasetReport:
    """Responses of the movies in ``data_dir/<group>/<pattern>``, group curves, and trace correlation against
    the ``ground_truth_suffix`` label images and ``*_traces.csv`` where present."""
    files = [f for g in _groups(data_dir, groups) for f in dataset_files(data_dir / g, pattern, ground_truth_suffix)]
    report = analyze_calcium_files(files, out_dir, params, reading=reading)
    _raise_failures("calcium", report)
    curves = pd.read_csv(out_dir / "calcium_group_curves.csv")
    accuracy: dict = {"n_cells": len(report.table),
                      "responder_fraction": float(report.table["responder"].mean()) if len(report.table) else 0.0,
                      **score_calcium(files, out_dir, ground_truth_suffix=ground_truth_suffix,
                                      iou_threshold=iou_threshold)}
    features = features or ["peak_dff", "auc_dff_s", "time_to_peak_s"]
    statistics = group_statistics(report.table, features, replicate)
    superplot = plot_superplot(report.table, features, out_dir / "calcium_superplot.png", replicate_column=replicate)
    across = statistics[(statistics["feature"] == "peak_dff") & (statistics["comparison"] == "all groups")
                        & (statistics["level"] == "replicate")]
    if len(across):
        accuracy["peak_dff_replicate_anova_p"] = float(across["p_value"].iloc[0])
    return DatasetReport({"cell_responses": report.table, "group_curves": curves, "response_statistics": statistics},
                         accuracy, [out_dir / "calcium_group_curves.png", superplot])


#: Report function of each analysis; the keyword arguments are the ``report`` block of its pipeline config.
REPORTS = {"colonies": colony_report, "nuclei": nuclei_report, "calcium": calcium_report}


def run_report(kind: str, data_dir: str | Path, out_dir: str | Path, analysis: dict, report: dict) -> DatasetReport:
    """The whole-dataset report of ``kind`` as a pipeline config's ``parameters`` describe it: ``analysis`` are
    the analysis parameters, ``report`` the report options. The pipeline step and ``cellops report`` (the DVC
    stages) both call this."""
    if kind not in REPORTS:
        raise ValueError(f"unknown analysis {kind!r}; expected one of {sorted(REPORTS)}")
    params, reading = analysis_settings(kind, analysis)
    return REPORTS[kind](Path(data_dir), Path(out_dir), params, reading=reading, **report)
