"""The robustness sweep of a registered version (:mod:`cellops.model_robustness`) kept with it: the rows as
``robustness/robustness.json`` in the artifacts of the version's run and a one-line summary as the version's
``cellops.robustness`` tag (:func:`tracking.registry.keep_with_version`). The register steps record it right after
registration; the model card reads it back with :func:`load_robustness`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mlflow import MlflowClient

from tracking.registry import keep_with_version, read_kept

#: The artifact folder of the version's run that holds the sweep.
ROBUSTNESS_ARTIFACTS = "robustness"
#: The file in it: ``{"rows": [...]}``.
ROBUSTNESS_FILE = "robustness.json"
#: The version tag that says the version has a sweep: compact JSON, per metric the worst condition and its value.
ROBUSTNESS_TAG = "cellops.robustness"


def summarise_rows(rows: Sequence[dict]) -> dict[str, dict]:
    """Per metric, the condition that scores lowest, its value and the clean value (the tag's content).

    Parameters
    ----------
    rows : sequence of dict
        The sweep's rows (``condition``, ``metric``, ``value``, ``clean_value``).

    Returns
    -------
    dict of str to dict
        ``{metric: {"worst": condition, "value": ..., "clean_value": ...}}``.

    Examples
    --------
    >>> summarise_rows([{"condition": "noise", "metric": "iou", "value": 0.5, "clean_value": 0.8},
    ...                 {"condition": "blur", "metric": "iou", "value": 0.7, "clean_value": 0.8}])
    {'iou': {'worst': 'noise', 'value': 0.5, 'clean_value': 0.8}}
    """
    summary: dict[str, dict] = {}
    for row in rows:
        best = summary.get(row["metric"])
        if best is None or float(row["value"]) < best["value"]:
            summary[row["metric"]] = {"worst": row["condition"], "value": float(row["value"]),
                                      "clean_value": float(row["clean_value"])}
    return summary


def record_robustness(client: MlflowClient, name: str, version: str, rows: Sequence[dict]) -> dict[str, str]:
    """Keep a version's robustness sweep with it: ``robustness/robustness.json`` in its run's artifacts and the
    :data:`ROBUSTNESS_TAG` summary tag (:func:`summarise_rows`).

    Parameters
    ----------
    client : MlflowClient
        The registry's client.
    name : str
        The registered model.
    version : str
        The version.
    rows : sequence of dict
        The sweep's rows (:meth:`cellops.model_robustness.RobustnessRow.as_dict`).

    Returns
    -------
    dict of str to str
        The tags set on the version.

    Raises
    ------
    ValueError
        For a version registered from no run (nowhere to keep the artifact).
    """
    rows = [dict(row) for row in rows]
    tags = {ROBUSTNESS_TAG: json.dumps(summarise_rows(rows), sort_keys=True, separators=(",", ":"))}

    def write(folder: Path) -> None:
        (folder / ROBUSTNESS_FILE).write_text(json.dumps({"rows": rows}, indent=1))

    keep_with_version(client, name, version, ROBUSTNESS_ARTIFACTS, write, tags, what="robustness sweep")
    return tags


def load_robustness(tracking: str | MlflowClient, name: str, version: str) -> list[dict] | None:
    """The robustness sweep :func:`record_robustness` kept with a version, or None for a version registered
    without one.

    Parameters
    ----------
    tracking : str or MlflowClient
        The MLflow store's tracking URI, or a client of it.
    name : str
        The registered model.
    version : str
        The version.

    Returns
    -------
    list of dict or None
        One row per condition and metric: ``condition``, ``strength``, ``metric``, ``value``, ``clean_value``,
        ``difference`` (value minus clean value).

    Raises
    ------
    LookupError
        When the version is tagged with a sweep that its run's artifacts do not hold.
    """
    return read_kept(tracking, name, version, ROBUSTNESS_TAG, f"{ROBUSTNESS_ARTIFACTS}/{ROBUSTNESS_FILE}",
                     lambda path: list(json.loads(path.read_text())["rows"]), what="a robustness sweep")
