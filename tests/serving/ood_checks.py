"""What the end-to-end serving tests check of the out-of-distribution verdicts (tests/{unet,classifier,maskrcnn}/
test_e2e_*.py import it as ``serving.ood_checks``): the verdict in a JSON answer and in an image answer's headers,
images that are surely out of distribution, the OOD metrics on ``/metrics`` and the request log's lines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

#: The keys of a JSON answer's ``ood`` (``cellops.ood.Verdict.as_dict``).
VERDICT_KEYS = {"ood_score", "ood_threshold", "in_distribution", "ood_reason"}
#: The keys of a request log line (bento/ood.py; ``image`` only when uploads are kept).
LOG_KEYS = {"time", "service", "registered_model", "model_version", "endpoint", "ood_score", "ood_threshold",
            "in_distribution", "ood_reason", "features"}


def json_verdict(ood: dict, *, scored: bool = True) -> dict:
    """Check a JSON answer's ``ood`` and return it: the four keys; scored (a finite score and threshold, a
    boolean verdict that is ``score <= threshold``) or, with ``scored=False``, unknown with its reason."""
    assert set(ood) == VERDICT_KEYS, ood
    if scored:
        assert isinstance(ood["in_distribution"], bool), ood
        assert math.isfinite(ood["ood_score"]) and math.isfinite(ood["ood_threshold"]), ood
        if abs(ood["ood_score"] - ood["ood_threshold"]) > 1e-5:  # both rounded to 6 decimals in answers
            assert ood["in_distribution"] == (ood["ood_score"] <= ood["ood_threshold"]), ood
    else:
        assert ood["in_distribution"] is None and ood["ood_score"] is None and ood["ood_reason"], ood
    return ood


def header_verdict(headers) -> dict:
    """An image answer's verdict headers as a JSON answer's ``ood`` would hold them (scored)."""
    flag = headers["x-in-distribution"]
    assert flag in ("true", "false"), dict(headers)
    return json_verdict({"ood_score": float(headers["x-ood-score"]), "ood_threshold": float(headers["x-ood-threshold"]),
                         "in_distribution": flag == "true", "ood_reason": "from headers"})


def refused_score(message: str, threshold: float) -> float:
    """The score a 422 of the refuse policy names (:func:`cellops.ood.enforce`'s message), checked to name the
    threshold too."""
    import re

    found = re.search(r"the image is out of distribution: its OOD score (\S+) is above the threshold (\S+) of the "
                      r"images this model was trained on", message)
    assert found, message
    assert abs(float(found.group(2)) - threshold) <= 6e-4, message
    return float(found.group(1))


def checkerboard(side: int, square: int = 8, *, seed: int = 0, noise: float = 40.0, channels: int = 0) -> np.ndarray:
    """A uint8 checkerboard of ``square``-pixel squares with Gaussian noise: nothing like a microscope image (sharp
    edges on a regular grid, two intensity levels), surely out of distribution for every family. ``channels`` > 0
    gives an (H, W, channels) picture."""
    rng = np.random.default_rng(seed)
    ys, xs = np.indices((side, side))
    board = np.where(((ys // square) + (xs // square)) % 2 == 0, 40.0, 215.0) + rng.normal(0, noise, (side, side))
    board = np.clip(board, 0, 255).astype(np.uint8)
    return np.repeat(board[..., None], channels, axis=-1) if channels else board


def metrics(base: str) -> dict[tuple[str, tuple], float]:
    """``GET /metrics`` as (name, sorted labels) -> value."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{base}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def ood_metrics(base: str, service: str) -> dict[str, float]:
    """The OOD metrics of ``service`` on its ``/metrics``: ``in``, ``out``, ``unscored`` (counts), ``scored`` (the
    score histogram's count), ``rate``, ``drift``, ``window``."""
    samples = metrics(base)
    label = (("service", service),)
    count = {verdict: samples.get(("cellops_ood_requests_total", (("service", service), ("verdict", verdict))), 0.0)
             for verdict in ("in", "out", "unscored")}
    return {**count, "scored": samples.get(("cellops_ood_score_count", label), 0.0),
            "rate": samples[("cellops_ood_rate_window", label)],
            "drift": samples[("cellops_drift_statistic_window", label)],
            "window": samples[("cellops_drift_window_size", label)]}


def request_log(monitor_dir: Path, service: str) -> list[dict]:
    """The request log's lines of ``service`` under ``monitor_dir`` (``CELLOPS_MONITOR_DIR``), each checked: the
    pinned keys, the service, and features present exactly when the image was scored. The folder holds the log
    only (no image is kept unless ``CELLOPS_MONITOR_IMAGES`` is set)."""
    folder = monitor_dir / service
    assert [p.name for p in folder.iterdir()] == ["requests.jsonl"], list(folder.iterdir())
    lines = [json.loads(line) for line in (folder / "requests.jsonl").read_text().splitlines()]
    for line in lines:
        assert set(line) == LOG_KEYS and line["service"] == service, line
        assert bool(line["features"]) == (line["in_distribution"] is not None), line
    return lines
