"""The names under which lineage, metrics and inference settings are stored on MLflow runs and model versions.

One module owns the names: writers call ``*_to_tags``, readers call ``*_from_tags``, nobody spells a prefix by
hand. The same keys appear in a bento's metadata and in ``cellops lineage`` output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

LINEAGE_PREFIX = "lineage."
METRIC_PREFIX = "metric."
FAMILY = "family"  # the model family (cellops.families) whose serving record the version carries
INFERENCE_SETTINGS = "inference_settings"  # JSON of the settings the metrics were measured with
MLFLOW_RUN_ID = "mlflow_run_id"
ZENML_RUN_ID = "zenml_run_id"
# Who writes a run: a later start marks a RUNNING run KILLED when this process is gone (see tracking.runs).
HOST = "process.host"
PID = "process.pid"
PROCESS_STARTED = "process.started"
CLOSED_BECAUSE = "closed_because"
RESUMED_FROM_EPOCH = "resumed_from_epoch"  # "None", or the last epoch of the checkpoint training resumed after
PROMOTION_METRIC = "promotion_metric"
#: Lineage key of the test set a model was scored on (hash of its files' contents and labels), for families whose
#: test set is not fixed by the data version alone.
TEST_SET = "test_set"
# What a classifier run or version is: the config's model name, its architecture, how it started.
MODEL_NAME = "model_name"
#: sha256 of a version's parameters and buffers: equal only for bit-identical weights (``cellops.distributed``).
WEIGHTS_SHA256 = "weights_sha256"
ARCHITECTURE = "architecture"
INIT = "init"  # configured: scratch, imagenet, source, coco, or a registered version models:/NAME@ALIAS|/VERSION
# What really happened: imagenet without a local weights file is scratch; a registered version is its NAME:VERSION.
INIT_USED = "init_used"
#: Lineage key (tag ``lineage.parent_model``, on the training run and on the version registered from it) of the
#: registered version a model started from, ``NAME:VERSION``: `cellops lineage` prints it as "parent model".
PARENT_MODEL = "parent_model"
IMAGENET_WEIGHTS = "imagenet_weights"
# Which runtime serves a version (cellops.runtimes): the fastest that kept its task metric, the measurements behind
# that choice, and the artifact folder of the version's run that holds the exported graphs.
RUNTIME = "runtime"
RUNTIME_CHECKS = "runtime_checks"
RUNTIME_ARTIFACTS = "runtimes"
# A version's out-of-distribution reference (cellops.ood): the reference itself is the ``ood/`` artifact folder of the
# version's run (cellops.ood.OOD_ARTIFACTS); these tags say, without downloading it, that the version has one, the
# distance threshold it flags above, the false-alarm rate that threshold was calibrated to, the score and the
# features it uses.
OOD_THRESHOLD = "cellops.ood.threshold"
OOD_FALSE_ALARM_RATE = "cellops.ood.false_alarm_rate"
OOD_SCORE = "cellops.ood.score"
OOD_FEATURES = "cellops.ood.features"


def lineage_to_tags(lineage: Mapping[str, object]) -> dict[str, str]:
    """``{"data_version": ..., "git_commit": ...}`` -> ``{"lineage.data_version": ..., ...}``.

    Parameters
    ----------
    lineage : Mapping of str to object
        Lineage keys and values.

    Returns
    -------
    dict of str to str
        The tags, values as text.

    Examples
    --------
    >>> lineage_to_tags({"git_commit": "abc"})
    {'lineage.git_commit': 'abc'}
    """
    return {f"{LINEAGE_PREFIX}{key}": str(value) for key, value in lineage.items()}


def lineage_from_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The inverse of :func:`lineage_to_tags` (other tags are ignored).

    Parameters
    ----------
    tags : Mapping of str to str
        A run's or version's tags.

    Returns
    -------
    dict of str to str
        The lineage, keys without the prefix.

    Examples
    --------
    >>> lineage_from_tags({"lineage.git_commit": "abc", "other": "x"})
    {'git_commit': 'abc'}
    """
    return {key.removeprefix(LINEAGE_PREFIX): value for key, value in tags.items() if key.startswith(LINEAGE_PREFIX)}


def metrics_to_tags(metrics: Mapping[str, float]) -> dict[str, str]:
    """Metrics as tags at full precision: the next run compares against this very number, and a rounded tag
    would let an equal retrain look better than the champion.

    Parameters
    ----------
    metrics : Mapping of str to float
        Metric names and values.

    Returns
    -------
    dict of str to str
        The tags, values as ``repr`` of the float.

    Examples
    --------
    >>> metrics_to_tags({"foreground_iou": 0.1 + 0.2})
    {'metric.foreground_iou': '0.30000000000000004'}
    """
    return {f"{METRIC_PREFIX}{key}": repr(float(value)) for key, value in metrics.items()}


def metrics_from_tags(tags: Mapping[str, str]) -> dict[str, float]:
    """The inverse of :func:`metrics_to_tags`.

    Parameters
    ----------
    tags : Mapping of str to str
        A run's or version's tags.

    Returns
    -------
    dict of str to float
        The metrics, keys without the prefix.

    Examples
    --------
    >>> metrics_from_tags({"metric.dice": "0.5", "x": "1"})
    {'dice': 0.5}
    """
    return {key.removeprefix(METRIC_PREFIX): float(value) for key, value in tags.items() if key.startswith(METRIC_PREFIX)}


def inference_to_tags(settings: Mapping[str, object]) -> dict[str, str]:
    """The serving record of a version (:class:`cellops.config.ServingRecord` ``as_dict``) and its family.

    Parameters
    ----------
    settings : Mapping of str to object
        The serving record, JSON-ready.

    Returns
    -------
    dict of str to str
        ``inference_settings`` (sorted JSON) and, where the record names it, ``family``.

    Examples
    --------
    >>> inference_to_tags({"family": "unet", "tile_size": 64})["family"]
    'unet'
    """
    return {INFERENCE_SETTINGS: json.dumps(dict(settings), sort_keys=True),
            **({FAMILY: str(settings["family"])} if "family" in settings else {})}


def inference_from_tags(tags: Mapping[str, str]) -> dict | None:
    """The inference settings stored with a model version, or None for a version registered without them.

    Parameters
    ----------
    tags : Mapping of str to str
        A version's tags.

    Returns
    -------
    dict or None
        The serving record.

    Examples
    --------
    >>> inference_from_tags(inference_to_tags({"family": "unet", "tile_size": 64})), inference_from_tags({})
    ({'family': 'unet', 'tile_size': 64}, None)
    """
    text = tags.get(INFERENCE_SETTINGS)
    return json.loads(text) if text else None


def runtime_to_tags(runtime: str, checks: list[Mapping[str, object]]) -> dict[str, str]:
    """The chosen runtime and every runtime's check (compact JSON: a model version tag holds 5,000 characters).

    Parameters
    ----------
    runtime : str
        The runtime chosen to serve the version.
    checks : list of Mapping of str to object
        Every runtime's check (:meth:`cellops.runtimes.RuntimeCheck.as_dict`).

    Returns
    -------
    dict of str to str
        ``runtime`` and ``runtime_checks``.

    Examples
    --------
    >>> runtime_to_tags("openvino", [{"runtime": "openvino", "passed": True}])
    {'runtime': 'openvino', 'runtime_checks': '[{"runtime":"openvino","passed":true}]'}
    """
    return {RUNTIME: runtime, RUNTIME_CHECKS: json.dumps(list(checks), separators=(",", ":"))}


def runtime_from_tags(tags: Mapping[str, str]) -> tuple[str, list[dict]]:
    """The runtime a version is served with (``torch`` for one registered before runtimes were measured) and the
    checks behind it.

    Parameters
    ----------
    tags : Mapping of str to str
        A version's tags.

    Returns
    -------
    runtime : str
        The runtime's name.
    checks : list of dict
        The runtime checks (empty when none were recorded).

    Examples
    --------
    >>> runtime_from_tags({})
    ('torch', [])
    """
    text = tags.get(RUNTIME_CHECKS)
    return tags.get(RUNTIME, "torch"), json.loads(text) if text else []


def ood_to_tags(threshold: float, false_alarm_rate: float, score: str, features: list[str] | tuple[str, ...]
                ) -> dict[str, str]:
    """An OOD reference's summary as version tags (the threshold at full precision, the features as compact JSON).

    Parameters
    ----------
    threshold : float
        The distance above which an image is out of distribution.
    false_alarm_rate : float
        The share of in-distribution images the threshold was calibrated to flag.
    score : str
        The score's name (:data:`cellops.ood.SCORES`).
    features : sequence of str
        The features it uses, in order.

    Returns
    -------
    dict of str to str
        :data:`OOD_THRESHOLD`, :data:`OOD_FALSE_ALARM_RATE`, :data:`OOD_SCORE` and :data:`OOD_FEATURES`.

    Examples
    --------
    >>> ood_to_tags(4.5, 0.05, "nearest", ["a", "b"])[OOD_FEATURES]
    '["a","b"]'
    """
    return {OOD_THRESHOLD: repr(float(threshold)), OOD_FALSE_ALARM_RATE: repr(float(false_alarm_rate)),
            OOD_SCORE: str(score), OOD_FEATURES: json.dumps(list(features), separators=(",", ":"))}


def ood_from_tags(tags: Mapping[str, str]) -> dict | None:
    """The OOD summary a version carries (:func:`ood_to_tags`), or None for a version registered without a reference.

    Parameters
    ----------
    tags : Mapping of str to str
        A version's tags.

    Returns
    -------
    dict or None
        ``threshold``, ``false_alarm_rate``, ``score`` and ``features``.

    Examples
    --------
    >>> ood_from_tags(ood_to_tags(4.5, 0.05, "nearest", ["a"]))
    {'threshold': 4.5, 'false_alarm_rate': 0.05, 'score': 'nearest', 'features': ['a']}
    >>> ood_from_tags({}) is None
    True
    """
    if OOD_THRESHOLD not in tags:
        return None
    features = tags.get(OOD_FEATURES)
    rate = tags.get(OOD_FALSE_ALARM_RATE)
    return {"threshold": float(tags[OOD_THRESHOLD]), "false_alarm_rate": float(rate) if rate else None,
            "score": tags.get(OOD_SCORE), "features": json.loads(features) if features else []}


def version_record(name: str, version: str, run_id: str | None, tags: Mapping[str, str],
                   aliases: list[str] | None = None) -> dict:
    """Everything known about one registered model version, in the shape a service's metadata and
    ``cellops lineage`` print: model, run ids, lineage, metrics and the settings they were measured with.

    Parameters
    ----------
    name : str
        The registered model's name.
    version : str
        The version number.
    run_id : str or None
        The MLflow run that produced it (by default the one its tags name).
    tags : Mapping of str to str
        The version's tags.
    aliases : list of str or None, optional
        The version's aliases.

    Returns
    -------
    dict
        ``registered_model``, ``model_version``, ``aliases``, run ids, the lineage keys (among them
        :data:`PARENT_MODEL` for a model started from a registered version), ``metrics``, ``promotion_metric``,
        ``inference_settings``, ``runtime``, ``runtime_checks`` and ``ood`` (:func:`ood_from_tags`: the
        out-of-distribution threshold and rate, None for a version without a reference).

    Examples
    --------
    >>> record = version_record("mito", "3", "r1", {"lineage.git_commit": "abc", "metric.dice": "0.5",
    ...                                               "lineage.parent_model": "mito:2"})
    >>> record["model_version"], record["git_commit"], record["metrics"], record["runtime"], record["parent_model"]
    ('3', 'abc', {'dice': 0.5}, 'torch', 'mito:2')
    """
    return {
        "registered_model": name,
        "model_version": str(version),
        "aliases": sorted(aliases or []),
        MLFLOW_RUN_ID: run_id or tags.get(MLFLOW_RUN_ID),
        ZENML_RUN_ID: tags.get(ZENML_RUN_ID),
        **lineage_from_tags(tags),
        "metrics": metrics_from_tags(tags),
        "promotion_metric": tags.get(PROMOTION_METRIC),
        INFERENCE_SETTINGS: inference_from_tags(tags),
        RUNTIME: runtime_from_tags(tags)[0],
        RUNTIME_CHECKS: runtime_from_tags(tags)[1],
        "ood": ood_from_tags(tags),
    }
