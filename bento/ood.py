"""What a model service does with the out-of-distribution verdict of each image it answers (:mod:`cellops.ood`):
the served model's reference (``ood/reference.json`` in the BentoML model, copied there by the deployment), the
policy (``flag`` or ``refuse``), a sliding window of recent verdicts, Prometheus metrics on BentoML's ``/metrics``
and an append-only JSON-lines log of every image's verdict and features (never its pixels, unless an operator names
a folder for them).

A service builds one :class:`OODMonitor` when it starts, turns each image it predicted into a verdict and its
features with :func:`cellops.ood.verdict_and_features`, and hands both to :meth:`OODMonitor.observe`; under the
``refuse`` policy :meth:`OODMonitor.enforce` then answers 422 naming the score and the threshold.

Environment (read when the service starts):

- ``CELLOPS_OOD_POLICY``: ``flag`` or ``refuse``, overriding the policy stored with the model (``ood_policy`` in
  its metadata; ``flag`` when none); any other value stops the service as it starts, naming it.
- ``CELLOPS_DRIFT_WINDOW``: how many recent scored images the drift metrics cover (default 200).
- ``CELLOPS_MONITOR_DIR``: where the request logs go, ``<dir>/<service>/requests.jsonl`` (default
  ``$BENTOML_HOME/monitoring``, ``BENTOML_HOME`` defaulting to ``~/bentoml``).
- ``CELLOPS_MONITOR_IMAGES``: a folder where every upload is also kept, named by its SHA-256 (unset: none kept).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from bentoml.exceptions import BentoMLException, UnprocessableEntity

from cellops.ood import (DEFAULT_POLICY, MONITOR_DIR_ENV, OOD_ARTIFACTS, POLICIES, REFERENCE_FILE, REQUEST_LOG,
                         DriftWindow, OODReference, OutOfDistribution, Verdict, enforce, monitor_dir)

logger = logging.getLogger("bentoml.cellops")

POLICY_ENV = "CELLOPS_OOD_POLICY"
WINDOW_ENV = "CELLOPS_DRIFT_WINDOW"
MONITOR_IMAGES_ENV = "CELLOPS_MONITOR_IMAGES"
#: Scored images in a service's drift window when ``CELLOPS_DRIFT_WINDOW`` is unset.
DEFAULT_WINDOW = 200
#: Buckets of the ``cellops_ood_score`` histogram (Mahalanobis distances; thresholds are a few units).
SCORE_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0, 20.0, 30.0, 50.0, 100.0, 1000.0)


class OutOfDistributionRefused(UnprocessableEntity):
    """422: an image the ``refuse`` policy turns away (the message is :func:`cellops.ood.enforce`'s)."""


def load_reference(bento_model, family: str, feature_names: tuple[str, ...]) -> tuple[OODReference | None, str]:
    """The OOD reference stored in a BentoML model, and why there is none.

    Parameters
    ----------
    bento_model : bentoml.Model
        The served model (its folder holds ``ood/reference.json`` when the version has a reference).
    family : str
        The service's model family (``unet``, ``classifier``, ``maskrcnn``).
    feature_names : tuple of str
        The features the service computes (``cellops.<family>.ood.FEATURE_NAMES``).

    Returns
    -------
    reference : OODReference or None
        None for a model deployed without a reference, or with one of other features (registered before the
        features changed): its verdicts are unknown, its predictions served as ever.
    problem : str
        Empty with a reference; else why there is none (logged, and reported by ``/metadata``).

    Raises
    ------
    bentoml.exceptions.BentoMLException
        For a reference file that cannot be read (the service stops as it starts, naming it).
    """
    path = Path(bento_model.path_of(f"{OOD_ARTIFACTS}/{REFERENCE_FILE}"))
    if not path.is_file():
        problem = f"{bento_model.tag} has no out-of-distribution reference ({OOD_ARTIFACTS}/{REFERENCE_FILE})"
    else:
        try:
            reference = OODReference.load(path)
        except ValueError as error:
            raise BentoMLException(f"{bento_model.tag}: {error}") from error
        if reference.family == family and tuple(reference.feature_names) == tuple(feature_names):
            return reference, ""
        problem = (f"the OOD reference of {bento_model.tag} describes {reference.family} features "
                   f"({', '.join(reference.feature_names)}); this {family} service computes "
                   f"({', '.join(feature_names)}): register the version again with its training pipeline")
    logger.warning("%s; every answer says in_distribution unknown", problem)
    return None, problem


def serving_policy(metadata: Mapping) -> tuple[str, str]:
    """The OOD policy a service applies and where it came from.

    Parameters
    ----------
    metadata : mapping
        The served model's metadata (``ood_policy``, as the deployment stored it).

    Returns
    -------
    policy : str
        One of :data:`cellops.ood.POLICIES`: ``CELLOPS_OOD_POLICY`` when set, else the stored ``ood_policy``, else
        ``flag``.
    source : str
        ``"environment"``, ``"model"`` or ``"default"``.

    Raises
    ------
    bentoml.exceptions.BentoMLException
        Naming the value and where it came from, for a policy that is not one of :data:`cellops.ood.POLICIES`.

    Examples
    --------
    >>> os.environ.pop(POLICY_ENV, None)
    >>> serving_policy({"ood_policy": "refuse"}), serving_policy({})
    (('refuse', 'model'), ('flag', 'default'))
    >>> os.environ[POLICY_ENV] = "block"
    >>> serving_policy({})
    Traceback (most recent call last):
    bentoml.exceptions.BentoMLException: CELLOPS_OOD_POLICY='block' is not an out-of-distribution policy; choose one of flag, refuse
    >>> del os.environ[POLICY_ENV]
    """
    if os.environ.get(POLICY_ENV, "").strip():
        policy, source = os.environ[POLICY_ENV].strip(), "environment"
        named = f"{POLICY_ENV}={os.environ[POLICY_ENV]!r}"
    elif metadata.get("ood_policy"):
        policy, source = str(metadata["ood_policy"]), "model"
        named = f"the model's stored ood_policy {policy!r}"
    else:
        return DEFAULT_POLICY, "default"
    if policy not in POLICIES:
        raise BentoMLException(f"{named} is not an out-of-distribution policy; choose one of {', '.join(POLICIES)}")
    return policy, source


def drift_window_size() -> int:
    """Scored images in a service's drift window: ``CELLOPS_DRIFT_WINDOW``, or :data:`DEFAULT_WINDOW`.

    Raises
    ------
    bentoml.exceptions.BentoMLException
        Naming the variable, for a value that is not a positive whole number.

    Examples
    --------
    >>> os.environ[WINDOW_ENV] = "50"
    >>> drift_window_size()
    50
    >>> del os.environ[WINDOW_ENV]
    >>> drift_window_size()
    200
    """
    value = os.environ.get(WINDOW_ENV, "").strip()
    if not value:
        return DEFAULT_WINDOW
    if not value.isdigit() or int(value) < 1:
        raise BentoMLException(f"{WINDOW_ENV}={os.environ[WINDOW_ENV]!r} is not a positive whole number of requests")
    return int(value)


def verdict_json(verdict: Verdict) -> dict:
    """The verdict as a JSON answer carries it (``Verdict.as_dict``; a score that is not finite, from features
    that were not, as null: JSON has no infinity).

    Examples
    --------
    >>> verdict_json(Verdict(float("inf"), 4.0, False, "features not finite: x"))["ood_score"] is None
    True
    """
    values = verdict.as_dict()
    for key in ("ood_score", "ood_threshold"):
        if values[key] is not None and not math.isfinite(values[key]):
            values[key] = None
    return values


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _verdict_label(verdict: Verdict) -> str:
    return {True: "in", False: "out", None: "unscored"}[verdict.in_distribution]


_METRICS: dict = {}
_METRICS_LOCK = threading.Lock()


def service_metrics() -> dict:
    """The process's OOD metrics (created once; ``prometheus_client`` imported only now, after BentoML has set
    ``PROMETHEUS_MULTIPROC_DIR`` for the worker, so that ``/metrics`` gathers them from every process).

    Returns
    -------
    dict
        ``requests`` (counter ``cellops_ood_requests_total{service,verdict}``), ``score`` (histogram
        ``cellops_ood_score{service}``), ``rate``, ``drift``, ``window`` and ``threshold`` (gauges
        ``cellops_ood_rate_window``, ``cellops_drift_statistic_window``, ``cellops_drift_window_size``,
        ``cellops_ood_threshold``, each by ``service``).
    """
    with _METRICS_LOCK:
        if not _METRICS:
            import prometheus_client

            def gauge(name: str, text: str):
                # One value per service: the last one set by a live worker (each worker keeps its own window).
                return prometheus_client.Gauge(name, text, ["service"], multiprocess_mode="livemostrecent")

            _METRICS.update(
                requests=prometheus_client.Counter("cellops_ood_requests", "Images answered, by OOD verdict (in: "
                                                   "in distribution, out: flagged or refused, unscored: no "
                                                   "reference, or too small or uniform to score)",
                                                   ["service", "verdict"]),
                score=prometheus_client.Histogram("cellops_ood_score", "OOD scores (Mahalanobis distance) of the "
                                                  "scored images", ["service"], buckets=SCORE_BUCKETS),
                rate=gauge("cellops_ood_rate_window", "Share of the drift window's images flagged out of "
                                                      "distribution"),
                drift=gauge("cellops_drift_statistic_window", "Kolmogorov-Smirnov distance between the drift "
                                                              "window's OOD scores and the calibration scores"),
                window=gauge("cellops_drift_window_size", "Scored images in the drift window"),
                threshold=gauge("cellops_ood_threshold", "The served model's OOD threshold (NaN: no reference)"))
        return _METRICS


class OODMonitor:
    """A service's out-of-distribution bookkeeping: reference, policy, drift window, metrics and request log.

    Parameters
    ----------
    bento_model : bentoml.Model
        The served model (its reference and metadata).
    service : str
        The service's name (``cellops-unet``): the metrics' ``service`` label and the log's folder.
    family : str
        The model family.
    feature_names : tuple of str
        The features the service computes (``cellops.<family>.ood.FEATURE_NAMES``).

    Raises
    ------
    bentoml.exceptions.BentoMLException
        For an unreadable reference, an unknown policy, a bad window size, or a log or image folder that cannot be
        created (the service stops as it starts, naming the problem).
    """

    def __init__(self, bento_model, service: str, family: str, feature_names: tuple[str, ...]) -> None:
        metadata = dict(bento_model.info.metadata)
        labels = dict(bento_model.info.labels)
        self.service, self.family, self.feature_names = service, family, tuple(feature_names)
        self.registered_model = str(metadata.get("registered_model") or labels.get("registered_model") or "unknown")
        self.model_version = str(metadata.get("model_version") or labels.get("model_version") or "unknown")
        self.reference, self.reference_problem = load_reference(bento_model, family, self.feature_names)
        self.policy, self.policy_source = serving_policy(metadata)
        self.capacity = drift_window_size()
        self.window = DriftWindow(self.reference, self.capacity) if self.reference is not None else None
        self.log_path = monitor_dir() / service / REQUEST_LOG
        images = os.environ.get(MONITOR_IMAGES_ENV, "").strip()
        self.images = Path(images).expanduser() if images else None
        for folder, variable in ((self.log_path.parent, MONITOR_DIR_ENV), (self.images, MONITOR_IMAGES_ENV)):
            if folder is None:
                continue
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise BentoMLException(f"{variable}: cannot create the folder {folder} ({error})") from error
        self.lock = threading.Lock()
        self._log_failed = False
        self.metrics = service_metrics()
        for label in ("in", "out", "unscored"):  # every series on /metrics from the start, at 0
            self.metrics["requests"].labels(service=service, verdict=label)
        self._set_gauges()
        logger.info("%s: OOD %s, policy %s (%s), drift window %d, request log %s", service,
                    "reference loaded" if self.reference is not None else "without a reference", self.policy,
                    self.policy_source, self.capacity, self.log_path)

    def describe(self) -> dict:
        """The OOD settings a service's ``/metadata`` reports (as ``ood``: the registry's summary of the reference,
        ``threshold``, ``false_alarm_rate``, ``score`` and the ``features`` it scores, and how it is served)."""
        reference = self.reference
        return {"reference": reference is not None, "reference_problem": self.reference_problem or None,
                "family": self.family, "policy": self.policy,
                "policy_source": self.policy_source, "drift_window": self.capacity,
                "score": reference.score_name if reference else None,
                "threshold": reference.threshold if reference else None,
                "false_alarm_rate": reference.false_alarm_rate if reference else None,
                "features": list(reference.scored_features or reference.feature_names) if reference else [],
                "logged_features": list(self.feature_names),
                "n_reference": reference.n_reference if reference else None,
                "n_calibration": reference.n_calibration if reference else None,
                "images_kept": self.images is not None}

    def observe(self, verdict: Verdict, features: np.ndarray | None, endpoint: str,
                upload_bytes: bytes | None = None) -> Verdict:
        """Count one answered image: its verdict into the drift window and the metrics, a line into the request
        log (and its upload into ``CELLOPS_MONITOR_IMAGES``' folder when set).

        Parameters
        ----------
        verdict : Verdict
            The image's verdict.
        features : np.ndarray or None
            The features it rests on (None: not scored).
        endpoint : str
            The route that answered (``segment``).
        upload_bytes : bytes, optional
            The file as uploaded (kept only when ``CELLOPS_MONITOR_IMAGES`` is set).

        Returns
        -------
        Verdict
            ``verdict``.
        """
        image = self._keep(upload_bytes) if upload_bytes is not None and self.images is not None else None
        line = self._line(verdict, features, endpoint, image)
        with self.lock:
            self.metrics["requests"].labels(service=self.service, verdict=_verdict_label(verdict)).inc()
            if verdict.ood_score is not None:
                self.metrics["score"].labels(service=self.service).observe(
                    min(float(verdict.ood_score), np.finfo(np.float64).max))
            if self.window is not None:
                self.window.add(verdict)
            self._set_gauges()
            self._append(line)
        return verdict

    def enforce(self, verdict: Verdict, name: str = "") -> Verdict:
        """Apply the policy: under ``refuse``, 422 for an out-of-distribution image.

        Parameters
        ----------
        verdict : Verdict
            The image's verdict.
        name : str
            Names the image first in the message (``images[2] (b.png)`` of a batch); empty for one image.

        Raises
        ------
        OutOfDistributionRefused
            With :func:`cellops.ood.enforce`'s message naming the score and the threshold.
        """
        try:
            return enforce(verdict, self.policy)
        except OutOfDistribution as error:
            raise OutOfDistributionRefused(f"{name}: {error}" if name else str(error)) from error

    def _set_gauges(self) -> None:
        window = self.window
        self.metrics["rate"].labels(service=self.service).set(window.ood_rate() if window else 0.0)
        self.metrics["drift"].labels(service=self.service).set(window.drift_statistic() if window else 0.0)
        self.metrics["window"].labels(service=self.service).set(window.size if window else 0)
        self.metrics["threshold"].labels(service=self.service).set(
            self.reference.threshold if self.reference is not None else float("nan"))

    def _line(self, verdict: Verdict, features: np.ndarray | None, endpoint: str, image: str | None) -> str:
        values = {} if features is None else {n: _finite(float(v)) for n, v in zip(self.feature_names, features)}
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "service": self.service,
                  "registered_model": self.registered_model, "model_version": self.model_version,
                  "endpoint": endpoint, "ood_score": _finite(verdict.ood_score),
                  "ood_threshold": _finite(verdict.threshold), "in_distribution": verdict.in_distribution,
                  "ood_reason": verdict.reason, "features": values}
        if image is not None:
            record["image"] = image
        return json.dumps(record, allow_nan=False) + "\n"

    def _append(self, line: str) -> None:
        # One write of the whole line to a file opened for appending: lines of several workers never interleave.
        try:
            descriptor = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(descriptor, line.encode())
            finally:
                os.close(descriptor)
        except OSError as error:  # monitoring must not fail the answer; say so once
            if not self._log_failed:
                self._log_failed = True
                logger.warning("%s: cannot write the request log %s (%s); answers go on unlogged", self.service,
                               self.log_path, error)

    def _keep(self, data: bytes) -> str | None:
        name = hashlib.sha256(data).hexdigest() + _extension(data)
        path = self.images / name
        try:
            if not path.exists():
                path.write_bytes(data)
        except OSError as error:
            logger.warning("%s: cannot keep the upload %s (%s)", self.service, path, error)
            return None
        return name


def _extension(data: bytes) -> str:
    """A file extension for uploaded bytes, from their first bytes.

    Examples
    --------
    >>> _extension(b"\\x89PNG\\r\\n"), _extension(b"II*\\x00"), _extension(b"\\xff\\xd8\\xff"), _extension(b"??")
    ('.png', '.tif', '.jpg', '.bin')
    """
    if data[:4] == b"\x89PNG":
        return ".png"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return ".tif"
    return ".jpg" if data[:3] == b"\xff\xd8\xff" else ".bin"
