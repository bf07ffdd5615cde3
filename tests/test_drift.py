"""Drift reports from request logs (:mod:`cellops.drift`): hand-made logs in the services' format, drift found for
shifted requests and not for in-distribution ones, one self-contained HTML page, and clear errors for missing,
empty or foreign logs."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from cellops.drift import (FEATURE_PREFIX, benjamini_hochberg, drift_report, feature_drift, log_files,
                           read_request_logs, select_requests)
from cellops.ood import fit_reference, monitor_dir

NAMES = ("intensity_mean", "intensity_std", "log_noise", "foreground_fraction")
START = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)
    return fit_reference("unet", rng.normal(size=(300, len(NAMES))), rng.normal(size=(200, len(NAMES))), NAMES)


def _write_log(path: Path, features: np.ndarray, *, start: datetime = START, model: str = "cellops-unet",
               version: str = "3", reference=None) -> Path:
    """A request log as a service writes it: one JSON object per image (``None`` features: not scored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as log:
        for i, row in enumerate(features):
            verdict = reference.verdict(row).as_dict() if reference is not None and row is not None else \
                {"ood_score": None, "ood_threshold": None, "in_distribution": None, "ood_reason": "too small"}
            record = {"time": (start + timedelta(seconds=30 * i)).isoformat().replace("+00:00", "Z"),
                      "service": "cellops_unet", "registered_model": model, "model_version": version,
                      "endpoint": "segment", **verdict,
                      "features": {} if row is None else {n: float(v) for n, v in zip(NAMES, row)}}
            log.write(json.dumps(record) + "\n")
    return path


def test_in_distribution_requests_show_no_drift(reference, tmp_path):
    rows = np.random.default_rng(1).normal(size=(240, len(NAMES)))
    log = _write_log(tmp_path / "cellops_unet" / "requests.jsonl", rows, reference=reference)
    report = drift_report(reference, read_request_logs([tmp_path]), window=80, model="cellops-unet v3")
    assert report.requests == report.scored == 240
    assert report.ood_rate < 0.15 and not report.dataset_drift and not report.ood_excess and not report.drift
    assert not report.features["drifted"].any(), report.features
    assert list(report.windows["requests"]) == [80, 80, 80]
    assert (report.windows["score_drift"] < 0.3).all()
    assert report.metrics()["drifted_features"] == 0.0
    assert log_files([tmp_path]) == [log]


def test_shifted_requests_drift_and_the_report_shows_where(reference, tmp_path):
    rng = np.random.default_rng(2)
    before = rng.normal(size=(100, len(NAMES)))
    after = rng.normal(size=(100, len(NAMES))) + np.array([4.0, 0.0, 3.0, 0.0])  # a brighter, noisier microscope
    log = _write_log(tmp_path / "requests.jsonl", np.vstack([before, after]), reference=reference)
    report = drift_report(reference, read_request_logs([log]), window=50, model="cellops-unet v3")
    assert report.ood_rate > 0.4 and report.dataset_drift and report.drifted_share == 0.5
    assert report.ood_excess and report.drift
    assert set(report.features.query("drifted")["feature"]) == {"intensity_mean", "log_noise"}
    assert list(report.features["feature"][:2]) in (["intensity_mean", "log_noise"], ["log_noise", "intensity_mean"])
    assert report.features.set_index("feature").loc["intensity_mean", "wasserstein"] > 1.5
    rates = report.windows["ood_rate"].tolist()
    assert rates[0] < 0.2 and rates[1] < 0.2 and rates[2] > 0.9 and rates[3] > 0.9  # it started with window 3
    assert report.windows["start"].is_monotonic_increasing
    metrics = report.metrics()
    assert metrics["dataset_drift"] == 1.0 and metrics["last_window_ood_rate"] > 0.9 and metrics["requests"] == 200

    page = report.html
    for section in ("Summary", "OOD score over time", "OOD rate per window", "Per-feature drift",
                    "Most drifted features", "cellops-unet v3", "DRIFT"):
        assert section in page, section
    assert page.count("data:image/png;base64,") == 3
    assert "http://" not in page and "https://" not in page and "<script" not in page  # opens offline
    written = report.write(tmp_path / "out" / "report.html")
    assert written.read_text() == page


def test_scores_are_recomputed_with_the_reference_and_unscored_requests_are_left_out(reference, tmp_path):
    rows = list(np.random.default_rng(3).normal(size=(30, len(NAMES)))) + [None, None]
    log = _write_log(tmp_path / "requests.jsonl", rows)  # logged without verdicts: scores come from the features
    with open(log, "a") as handle:
        handle.write("not json\n\n[1, 2]\n")
    table = read_request_logs([log])
    assert len(table) == 32 and len(table.attrs["skipped"]) == 2 and table["time"].dt.tz is not None
    assert table[FEATURE_PREFIX + "log_noise"].isna().sum() == 2
    report = drift_report(reference, table, window=10)
    assert report.scored == 30 and report.requests == 32
    assert np.allclose(report.scores["ood_score"], reference.scores(np.array(rows[:30])))
    assert any("2 of 32 requests were not scored" in note for note in report.notes)
    assert any("not request records" in note for note in report.notes)


def test_requests_of_other_models_are_left_out_and_a_model_never_served_is_named(reference, tmp_path):
    rng = np.random.default_rng(4)
    _write_log(tmp_path / "a" / "requests.jsonl", rng.normal(size=(5, len(NAMES))))
    _write_log(tmp_path / "b" / "requests.jsonl", rng.normal(size=(3, len(NAMES))), model="cellops-other", version="1")
    table = read_request_logs([tmp_path])
    assert len(select_requests(table, "cellops-unet")) == 5 and len(select_requests(table, "cellops-unet", "3")) == 5
    with pytest.raises(ValueError, match=r"no logged request of cellops-unet v9; the logs hold requests of "
                                         r"cellops-other v1, cellops-unet v3"):
        select_requests(table, "cellops-unet", "9")


def test_missing_empty_or_unscored_logs_are_refused_naming_the_problem(reference, tmp_path):
    with pytest.raises(ValueError, match="no such request log or folder"):
        read_request_logs([tmp_path / "missing.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no request log \(\*.jsonl\) in"):
        read_request_logs([tmp_path / "empty"])
    (tmp_path / "empty" / "requests.jsonl").write_text("")
    with pytest.raises(ValueError, match="no logged request in"):
        read_request_logs([tmp_path / "empty"])
    unscored = _write_log(tmp_path / "unscored.jsonl", [None, None])
    with pytest.raises(ValueError, match="none of the 2 logged requests was scored"):
        drift_report(reference, read_request_logs([unscored]))
    foreign = read_request_logs([unscored]).assign(**{FEATURE_PREFIX + "top_probability": 0.9})
    other = fit_reference("classifier", np.random.default_rng(0).normal(size=(20, 1)),
                          np.random.default_rng(1).normal(size=(20, 1)), ["top_probability_x"])
    with pytest.raises(ValueError, match="another family's service"):
        drift_report(other, foreign)


def test_feature_tests_control_false_discoveries():
    rng = np.random.default_rng(5)
    names = [f"f{i}" for i in range(20)]
    table = feature_drift(rng.normal(size=(300, 20)), rng.normal(size=(300, 20)), names)
    assert table["drifted"].sum() <= 1
    assert np.allclose(benjamini_hochberg(np.array([0.001, 0.2, 0.03])), [0.003, 0.2, 0.045])


def test_the_logs_are_looked_for_where_the_services_write_them(monkeypatch, tmp_path):
    monkeypatch.delenv("CELLOPS_MONITOR_DIR", raising=False)
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    assert monitor_dir() == tmp_path / "bentoml" / "monitoring"
    monkeypatch.setenv("CELLOPS_MONITOR_DIR", str(tmp_path / "logs"))
    assert monitor_dir() == tmp_path / "logs"
