"""Drift reports from the services' request logs: are the images users send still like the training images?

Every service appends one JSON line per scored image to ``<monitoring dir>/<service>/requests.jsonl`` (time, model,
verdict and the image's OOD features, never its pixels; see ``docs/monitoring.md``). :func:`read_request_logs`
reads such files into one table; :func:`drift_report` compares the logged features with the rows the model
version's :class:`cellops.ood.OODReference` keeps of its held-out training images:

- the OOD score of every logged image, recomputed with the reference (so that requests served by any version are
  judged by the one the report is about), its share above the threshold overall and per window of requests, and
  the drift of the scores from the calibration scores per window (two-sample Kolmogorov-Smirnov statistic, as
  the services' ``cellops_drift_statistic_window`` gauge);
- per feature, a two-sample Kolmogorov-Smirnov test of the logged values against the reference rows, the p-values
  corrected for the number of features (Benjamini-Hochberg), and the Wasserstein distance in units of the
  reference's spread; the share of drifted features says whether the requests as a whole drifted.

The verdict is drift when more requests are out of distribution than the threshold's false-alarm rate explains
(one-sided binomial test) or when at least half the features drifted. The report is one self-contained HTML file
(figures embedded as PNG: it opens offline), built with scipy and matplotlib, both in the lock file (Evidently
0.7.23 does not import with the lock's pandas 3.1).

Examples
--------
>>> import numpy as np, pandas as pd
>>> from cellops.ood import fit_reference
>>> rng = np.random.default_rng(0)
>>> ref = fit_reference("demo", rng.normal(size=(200, 2)), rng.normal(size=(100, 2)), ["a", "b"])
>>> times = pd.date_range("2026-01-01", periods=60, freq="min", tz="UTC")
>>> shifted = requests_table(times, rng.normal(size=(60, 2)) + [4.0, 0.0], ["a", "b"])
>>> report = drift_report(ref, shifted, window=20)
>>> report.ood_rate > 0.5, list(report.features.query("drifted")["feature"]), len(report.windows)
(True, ['a'], 3)
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cellops.ood import OODReference

#: The fields of one logged request, besides its ``features``.
LOG_FIELDS = ("time", "service", "registered_model", "model_version", "endpoint", "ood_score", "ood_threshold",
              "in_distribution", "ood_reason")
#: Prefix of the feature columns of :func:`read_request_logs`' table.
FEATURE_PREFIX = "feature."
#: Requests per window of the report (the services' drift window holds as many by default).
DEFAULT_WINDOW = 200
#: False discovery rate of the per-feature drift tests.
DEFAULT_ALPHA = 0.05
#: The share of drifted features from which the requests as a whole count as drifted (as Evidently's default).
DEFAULT_DRIFT_SHARE = 0.5


def log_files(paths: Sequence[str | Path]) -> list[Path]:
    """The request logs at ``paths``: files as given, folders searched for ``*.jsonl`` (in subfolders too).

    Parameters
    ----------
    paths : sequence of str or Path
        Log files or folders (a monitoring directory, or one service's folder).

    Returns
    -------
    list of Path
        The files, each once, in the order given (a folder's sorted).

    Raises
    ------
    ValueError
        For a path that does not exist, or when no log file is found.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise ValueError(f"{path}: no such request log or folder")
        found += sorted(p for p in path.rglob("*.jsonl") if p.is_file()) if path.is_dir() else [path]
    if not found:
        raise ValueError(f"no request log (*.jsonl) in {', '.join(map(str, paths)) or 'no path given'}")
    return list(dict.fromkeys(found))


def requests_table(times: Sequence, features: np.ndarray, feature_names: Sequence[str], **fields) -> pd.DataFrame:
    """A table in the form of :func:`read_request_logs` from feature rows (for tests and for logs made by hand).

    Parameters
    ----------
    times : sequence
        The requests' times (anything ``pd.to_datetime`` reads; naive times are taken as UTC).
    features : np.ndarray
        Their features (N, F).
    feature_names : sequence of str
        The F feature names.
    **fields
        Other columns (e.g. ``registered_model="cellops-unet"``), one value for all rows or one per row.

    Returns
    -------
    pandas.DataFrame
        One row per request.
    """
    features = np.atleast_2d(np.asarray(features, dtype=np.float64))
    table = pd.DataFrame({"time": _utc(pd.Series(list(times)))})
    for name in LOG_FIELDS[1:]:
        table[name] = fields.pop(name, None)
    for key, value in fields.items():
        table[key] = value
    for i, name in enumerate(feature_names):
        table[FEATURE_PREFIX + name] = features[:, i]
    return table


def _utc(values: pd.Series) -> pd.Series:
    times = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601") if values.dtype == object \
        else pd.to_datetime(values, utc=True, errors="coerce")
    return times


def read_request_logs(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Read request logs (JSON lines, one object per scored image) into one table, oldest request first.

    Parameters
    ----------
    paths : sequence of str or Path
        Log files or folders holding them (:func:`log_files`).

    Returns
    -------
    pandas.DataFrame
        The :data:`LOG_FIELDS` (``time`` as UTC datetimes), ``log`` (the file) and one ``feature.<name>`` column
        per feature logged (NaN where a request has none: not scored). ``attrs["skipped"]`` lists the lines that
        are not request records (``file:line: why``).

    Raises
    ------
    ValueError
        When no file is found or they hold no request.

    Examples
    --------
    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "requests.jsonl"
    >>> _ = log.write_text('{"time": "2026-01-01T00:00:00Z", "ood_score": 1.5, "features": {"a": 2.0}}\\n'
    ...                    'not json\\n')
    >>> table = read_request_logs([log])
    >>> table["feature.a"].tolist(), table.attrs["skipped"][0].endswith(":2: not a JSON object")
    ([2.0], True)
    """
    files = log_files(paths)
    records, skipped = [], []
    for path in files:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if not isinstance(record, dict) or "time" not in record:
                    skipped.append(f"{path}:{number}: not a JSON object" if not isinstance(record, dict)
                                   else f"{path}:{number}: no time")
                    continue
                row = {name: record.get(name) for name in LOG_FIELDS}
                row["log"] = str(path)
                features = record.get("features") or {}
                if isinstance(features, dict):
                    row.update({FEATURE_PREFIX + str(k): _number(v) for k, v in features.items()})
                records.append(row)
    if not records:
        raise ValueError(f"no logged request in {', '.join(map(str, files))}"
                         + (f" ({len(skipped)} lines are not request records)" if skipped else ""))
    table = pd.DataFrame.from_records(records)
    for name in ("service", "registered_model", "model_version", "endpoint", "ood_reason"):
        table[name] = table[name].map(lambda v: None if v is None else str(v)).astype(object)
    table["in_distribution"] = table["in_distribution"].map(lambda v: v if isinstance(v, bool) else None)
    table["time"] = _utc(table["time"].astype(object))
    table["ood_score"] = pd.to_numeric(table["ood_score"], errors="coerce")
    table["ood_threshold"] = pd.to_numeric(table["ood_threshold"], errors="coerce")
    table = table.sort_values("time", kind="stable", na_position="first").reset_index(drop=True)
    table.attrs["skipped"] = skipped
    return table


def _number(value: object) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def select_requests(logged: pd.DataFrame, registered_model: str | None = None,
                    model_version: str | None = None) -> pd.DataFrame:
    """The logged requests of one registered model (and version), with a clear error when there are none.

    Parameters
    ----------
    logged : pandas.DataFrame
        :func:`read_request_logs`.
    registered_model : str, optional
        Keep the requests served by this model (None: all).
    model_version : str, optional
        And by this version (None: any).

    Returns
    -------
    pandas.DataFrame
        The requests kept.

    Raises
    ------
    ValueError
        When none is left, naming the models and versions the logs hold.
    """
    keep = pd.Series(True, index=logged.index)
    if registered_model is not None:
        keep &= logged["registered_model"].astype(str) == str(registered_model)
    if model_version is not None:
        keep &= logged["model_version"].astype(str) == str(model_version)
    if not keep.any():
        seen = sorted({f"{m} v{v}" for m, v in zip(logged["registered_model"], logged["model_version"])})
        wanted = " ".join(filter(None, [registered_model or "any model",
                                        f"v{model_version}" if model_version is not None else ""]))
        raise ValueError(f"no logged request of {wanted}; the logs hold requests of {', '.join(seen) or 'no model'}")
    return logged[keep].reset_index(drop=True)


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (reject where adjusted <= the false discovery rate):
    ``scipy.stats.false_discovery_control``, which also takes an empty set.

    Examples
    --------
    >>> benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5])).round(3).tolist()
    [0.04, 0.053, 0.053, 0.5]
    """
    from scipy.stats import false_discovery_control

    p = np.asarray(p_values, dtype=np.float64)
    return false_discovery_control(p, method="bh") if len(p) else p


def feature_drift(reference_rows: np.ndarray, logged_rows: np.ndarray, feature_names: Sequence[str], *,
                  alpha: float = DEFAULT_ALPHA) -> pd.DataFrame:
    """Per feature: has its distribution in the logged requests moved from the reference's?

    Parameters
    ----------
    reference_rows : np.ndarray
        The reference's kept rows (M, F).
    logged_rows : np.ndarray
        The logged requests' features (N, F), finite.
    feature_names : sequence of str
        The F names.
    alpha : float
        False discovery rate over the F tests.

    Returns
    -------
    pandas.DataFrame
        One row per feature, most drifted first: ``feature``, ``ks_statistic``, ``p_value``, ``p_adjusted``
        (Benjamini-Hochberg), ``drifted`` (``p_adjusted <= alpha``), ``wasserstein`` (in units of the reference's
        standard deviation), ``reference_mean``, ``logged_mean``.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> table = feature_drift(rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + [0, 3], ["a", "b"])
    >>> table[["feature", "drifted"]].values.tolist()
    [['b', True], ['a', False]]
    """
    from scipy.stats import ks_2samp, wasserstein_distance

    reference_rows = np.asarray(reference_rows, dtype=np.float64)
    logged_rows = np.asarray(logged_rows, dtype=np.float64)
    rows = []
    for i, name in enumerate(feature_names):
        ref, new = reference_rows[:, i], logged_rows[:, i]
        test = ks_2samp(new, ref)
        spread = float(ref.std()) or max(1e-12, abs(float(ref.mean())) * 1e-3) or 1e-12
        rows.append({"feature": name, "ks_statistic": float(test.statistic), "p_value": float(test.pvalue),
                     "wasserstein": float(wasserstein_distance(new, ref)) / spread,
                     "reference_mean": float(ref.mean()), "logged_mean": float(new.mean())})
    table = pd.DataFrame(rows, columns=["feature", "ks_statistic", "p_value", "wasserstein", "reference_mean",
                                        "logged_mean"])
    table.insert(3, "p_adjusted", benjamini_hochberg(table["p_value"].to_numpy()))
    table.insert(4, "drifted", table["p_adjusted"] <= alpha)
    return table.sort_values(["p_adjusted", "ks_statistic"], ascending=[True, False],
                             kind="stable").reset_index(drop=True)


@dataclass
class DriftReport:
    """A drift report of logged requests against a model version's reference (:func:`drift_report`).

    Attributes
    ----------
    model : str
        The model version reported on (e.g. ``cellops-unet v3``).
    requests : int
        Requests in the logs read.
    scored : int
        Those scored (features logged); the rest were too small or uniform, or served without a reference.
    ood_rate : float
        Share of the scored requests above the threshold.
    threshold : float
        The reference's threshold.
    false_alarm_rate : float
        The share of in-distribution images the threshold flags (its calibration).
    windows : pandas.DataFrame
        Per window of consecutive scored requests: ``window``, ``start``, ``end``, ``requests``, ``ood_rate``,
        ``median_score``, ``score_drift`` (KS statistic of the scores against the calibration scores).
    features : pandas.DataFrame
        :func:`feature_drift` of every scored request.
    drifted_share : float
        Share of the features that drifted.
    dataset_drift : bool
        ``drifted_share >= drift_share``.
    ood_excess : bool
        More requests above the threshold than its false-alarm rate explains (one-sided binomial test at the
        report's ``alpha``).
    scores : pandas.DataFrame
        ``time``, ``ood_score``, ``in_distribution`` of each scored request (recomputed with the reference).
    html : str
        The report as one self-contained HTML page.
    notes : list of str
        What the reader should know (requests left out, lines skipped).
    """

    model: str
    requests: int
    scored: int
    ood_rate: float
    threshold: float
    false_alarm_rate: float
    windows: pd.DataFrame
    features: pd.DataFrame
    drifted_share: float
    dataset_drift: bool
    ood_excess: bool
    scores: pd.DataFrame
    html: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def drift(self) -> bool:
        """The report's verdict: the requests drifted as a whole (:attr:`dataset_drift`) or more of them are out of
        distribution than the threshold's false alarms explain (:attr:`ood_excess`)."""
        return bool(self.dataset_drift or self.ood_excess)

    def metrics(self) -> dict[str, float]:
        """The report's numbers, for run metadata and MLflow metrics.

        Returns
        -------
        dict of str to float
            ``requests``, ``scored``, ``ood_rate``, ``drifted_features``, ``drifted_share``, ``dataset_drift``,
            ``ood_excess`` and ``drift`` (0 or 1), ``max_window_ood_rate``, ``last_window_ood_rate``,
            ``last_window_score_drift``.
        """
        windows = self.windows
        return {"requests": float(self.requests), "scored": float(self.scored), "ood_rate": float(self.ood_rate),
                "drifted_features": float(self.features["drifted"].sum()), "drifted_share": float(self.drifted_share),
                "dataset_drift": float(self.dataset_drift), "ood_excess": float(self.ood_excess),
                "drift": float(self.drift),
                "max_window_ood_rate": float(windows["ood_rate"].max()) if len(windows) else 0.0,
                "last_window_ood_rate": float(windows["ood_rate"].iloc[-1]) if len(windows) else 0.0,
                "last_window_score_drift": float(windows["score_drift"].iloc[-1]) if len(windows) else 0.0}

    def write(self, path: str | Path) -> Path:
        """Write :attr:`html` to ``path`` (its folder is created).

        Returns
        -------
        Path
            ``path``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html, encoding="utf-8")
        return path


def _windows(scores: pd.DataFrame, reference: OODReference, size: int) -> pd.DataFrame:
    from scipy.stats import ks_2samp

    rows = []
    for number, start in enumerate(range(0, len(scores), size), start=1):
        part = scores.iloc[start:start + size]
        values = np.clip(part["ood_score"].to_numpy(), None, np.finfo(np.float64).max)
        # One-sided, as the services' drift gauge (cellops.ood.DriftWindow): only scores above the calibration's.
        drift = float(ks_2samp(values, reference.calibration_scores, alternative="less").statistic) \
            if len(reference.calibration_scores) else 0.0
        rows.append({"window": number, "start": part["time"].iloc[0], "end": part["time"].iloc[-1],
                     "requests": len(part), "ood_rate": float((~part["in_distribution"]).mean()),
                     "median_score": float(np.median(values)), "score_drift": drift})
    return pd.DataFrame(rows, columns=["window", "start", "end", "requests", "ood_rate", "median_score",
                                       "score_drift"])


def drift_report(reference: OODReference, logged: pd.DataFrame, *, window: int = DEFAULT_WINDOW,
                 alpha: float = DEFAULT_ALPHA, drift_share: float = DEFAULT_DRIFT_SHARE, model: str = "",
                 top: int = 4, notes: Sequence[str] = ()) -> DriftReport:
    """Compare logged requests with a model version's reference: OOD rate overall and per window, per-feature
    drift tests, and the HTML report.

    Parameters
    ----------
    reference : OODReference
        The model version's reference (its kept rows are the baseline).
    logged : pandas.DataFrame
        :func:`read_request_logs` (or :func:`select_requests` of it).
    window : int
        Scored requests per window.
    alpha : float
        False discovery rate of the per-feature tests.
    drift_share : float
        Share of drifted features from which the requests as a whole drifted.
    model : str
        The model version's name in the report (e.g. ``cellops-unet v3``).
    top : int
        Most drifted features whose distributions the report draws.
    notes : sequence of str
        Said in the report's summary (e.g. which logs were read).

    Returns
    -------
    DriftReport

    Raises
    ------
    ValueError
        When no logged request was scored with the reference's features, or the reference keeps no rows.
    """
    from scipy.stats import binomtest

    if window < 1:
        raise ValueError(f"a window holds at least one request; got {window}")
    names = list(reference.feature_names)
    if len(reference.reference_features) == 0:
        raise ValueError(f"the {reference.family} reference keeps no rows of its images to compare requests with")
    columns = [FEATURE_PREFIX + n for n in names]
    notes = list(notes)
    if logged.attrs.get("skipped"):
        notes.append(f"{len(logged.attrs['skipped'])} log lines were not request records and were skipped (first: "
                     f"{logged.attrs['skipped'][0]})")
    unscored = (f"none of the {len(logged)} logged requests was scored (no features logged: images too small or "
                "uniform, or a model version without a reference)")
    if not any(str(c).startswith(FEATURE_PREFIX) for c in logged.columns):
        raise ValueError(unscored)
    missing = [c for c in columns if c not in logged.columns]
    if missing:
        raise ValueError(f"the logged requests have none of the {reference.family} reference's features "
                         f"{', '.join(m[len(FEATURE_PREFIX):] for m in missing[:4])}"
                         f"{'...' if len(missing) > 4 else ''}: logs of another family's service?")
    rows = logged[columns].to_numpy(dtype=np.float64)
    scored = np.all(np.isfinite(rows), axis=1)
    if not scored.any():
        raise ValueError(unscored)
    if (~scored).any():
        notes.append(f"{int((~scored).sum())} of {len(logged)} requests were not scored (no features) and are left "
                     "out of the statistics")
    features = rows[scored]
    values = reference.scores(features)
    scores = pd.DataFrame({"time": logged.loc[scored, "time"].to_numpy(), "ood_score": values,
                           "in_distribution": values <= reference.threshold})
    windows = _windows(scores, reference, window)
    table = feature_drift(reference.reference_features, features, names, alpha=alpha)
    share = float(table["drifted"].mean())
    flagged = int((~scores["in_distribution"]).sum())
    excess = binomtest(flagged, len(scores), reference.false_alarm_rate, alternative="greater").pvalue <= alpha
    report = DriftReport(model=model or f"{reference.family} model", requests=len(logged), scored=int(scored.sum()),
                         ood_rate=flagged / len(scores), threshold=reference.threshold,
                         false_alarm_rate=reference.false_alarm_rate, windows=windows, features=table,
                         drifted_share=share, dataset_drift=share >= drift_share, ood_excess=bool(excess),
                         scores=scores, notes=notes)
    report.html = report_html(report, reference, features, alpha=alpha, top=top)
    return report


def _verdict_words(report: DriftReport) -> str:
    why = []
    if report.ood_excess:
        why.append(f"{report.ood_rate:.0%} of the requests are out of distribution, more than the "
                   f"{report.false_alarm_rate:.0%} false alarms expected")
    if report.dataset_drift:
        why.append(f"{report.drifted_share:.0%} of the features drifted")
    return f"DRIFT: {'; '.join(why)}" if why else "no drift: the requests look like the training images"


def _figure_html(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _table_html(table: pd.DataFrame) -> str:
    return table.to_html(index=False, border=0, classes="table", float_format=lambda v: f"{v:.4g}",
                         escape=True)


def report_html(report: DriftReport, reference: OODReference, features: np.ndarray, *, alpha: float = DEFAULT_ALPHA,
                top: int = 4) -> str:
    """The drift report as one self-contained HTML page (figures embedded): summary, OOD score over time with the
    threshold, OOD rate per window, the per-feature drift table and the distributions of the most drifted features
    against the reference.

    Parameters
    ----------
    report : DriftReport
        The numbers (:func:`drift_report`).
    reference : OODReference
        The model version's reference.
    features : np.ndarray
        The scored requests' features (N, F).
    alpha : float
        The tests' false discovery rate (stated in the page).
    top : int
        Most drifted features drawn.

    Returns
    -------
    str
        The HTML page.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = report.scores
    finite = np.clip(scores["ood_score"].to_numpy(), None, 1e6)
    figure, axis = plt.subplots(figsize=(9, 3.2))
    inside = scores["in_distribution"].to_numpy()
    axis.scatter(scores["time"][inside], finite[inside], s=8, color="tab:blue", label="in distribution")
    axis.scatter(scores["time"][~inside], finite[~inside], s=8, color="tab:red", label="out of distribution")
    axis.axhline(report.threshold, color="black", linestyle="--", linewidth=1,
                 label=f"threshold {report.threshold:.3g}")
    if finite.max() > 20 * max(report.threshold, 1e-9):
        axis.set_yscale("log")
    axis.set_xlabel("request time (UTC)")
    axis.set_ylabel("OOD score")
    axis.legend(loc="upper left", fontsize=8)
    figure.autofmt_xdate()
    score_plot = _figure_html(figure)

    windows = report.windows
    figure, axis = plt.subplots(figsize=(9, 3.0))
    axis.bar(windows["window"], windows["ood_rate"], color="tab:orange", label="OOD rate")
    axis.plot(windows["window"], windows["score_drift"], color="tab:purple", marker="o", label="score drift (KS)")
    axis.axhline(report.false_alarm_rate, color="black", linestyle="--", linewidth=1,
                 label=f"expected false alarms {report.false_alarm_rate:.0%}")
    axis.set_ylim(0, 1.05)
    axis.set_xlabel("window of requests")
    axis.set_ylabel("share")
    axis.legend(loc="upper left", fontsize=8)
    window_plot = _figure_html(figure)

    names = list(reference.feature_names)
    shown = list(report.features["feature"][:max(0, top)])
    distributions = ""
    if shown:
        figure, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 2.8), squeeze=False)
        for axis, name in zip(axes[0], shown):
            i = names.index(name)
            ref, new = reference.reference_features[:, i], features[:, i]
            bins = np.histogram_bin_edges(np.concatenate([ref, new]), bins=30)
            axis.hist(ref, bins=bins, density=True, alpha=0.55, color="tab:blue", label="reference")
            axis.hist(new, bins=bins, density=True, alpha=0.55, color="tab:red", label="requests")
            axis.set_title(name, fontsize=9)
            axis.tick_params(labelsize=7)
        axes[0][0].legend(fontsize=7)
        figure.tight_layout()
        distributions = _figure_html(figure)

    drifted = report.features[report.features["drifted"]]["feature"].tolist()
    summary = [
        ("model version", report.model),
        ("reference", f"{reference.family}: {reference.n_reference} training images, threshold "
                      f"{reference.threshold:.4g} ({reference.score_name} distance) calibrated on "
                      f"{reference.n_calibration} held-out images for {reference.false_alarm_rate:.0%} false alarms; "
                      f"{len(reference.reference_features)} of their rows kept as the drift baseline"),
        ("requests", f"{report.requests} logged, {report.scored} scored"),
        ("period", f"{scores['time'].min()} to {scores['time'].max()}"),
        ("OOD rate", f"{report.ood_rate:.1%} of the scored requests above the threshold "
                     f"(expected without drift: {report.false_alarm_rate:.0%})"),
        ("drifted features", f"{len(drifted)} of {len(names)} ({report.drifted_share:.0%}): "
                             f"{', '.join(drifted) or 'none'}"),
        ("verdict", _verdict_words(report)),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    window_table = windows.assign(start=windows["start"].astype(str), end=windows["end"].astype(str))
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;text-align:left;"
             "border-bottom:1px solid #ddd}.drift{color:#b00;font-weight:bold}img{max-width:100%}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report: {html.escape(report.model)}</title>
<style>{style}</style></head><body>
<h1>Drift report: {html.escape(report.model)}</h1>
<h2 id="summary">Summary</h2>
<table>{rows}</table>
{f"<ul>{notes}</ul>" if notes else ""}
<h2 id="scores">OOD score over time</h2>
<p>Each scored request's OOD score ({"distance to the nearest training image in the whitened feature space"
if reference.score_name == "nearest" else "Mahalanobis distance from the training images' mean"}), recomputed from
its logged features; above the dashed threshold it is out of distribution.</p>
{score_plot}
<h2 id="windows">OOD rate per window</h2>
<p>Windows of {int(windows['requests'].max()) if len(windows) else 0} consecutive scored requests: the share above
the threshold and the one-sided Kolmogorov-Smirnov distance of their scores above the calibration scores (0 not
higher, 1 all higher).</p>
{window_plot}
{_table_html(window_table)}
<h2 id="features">Per-feature drift</h2>
<p>Two-sample Kolmogorov-Smirnov test of each feature's logged values against the reference rows, p-values adjusted
for {len(names)} tests (Benjamini-Hochberg, false discovery rate {alpha:g}); Wasserstein distance in units of the
reference's standard deviation.</p>
{_table_html(report.features)}
<h2 id="distributions">Most drifted features</h2>
{distributions}
</body></html>
"""
