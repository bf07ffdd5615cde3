"""What a model service does with out-of-distribution verdicts (:mod:`bento.ood`): the reference read from the BentoML
model (none: every verdict unknown, never a crash), the policy (stored, overridden by the environment, an unknown one
stopping the service), the 422 of the refuse policy, the Prometheus metrics after a burst of shifted images (in this
process and as BentoML's multi-process /metrics gathers them), the request log's lines, no image kept unless an
operator names a folder, and the verdict the services compute being the family's own ``verdict_for``. The served
answers themselves are checked end to end in tests/{unet,classifier,maskrcnn}/test_e2e_*.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from bentoml.exceptions import BentoMLException

from bento.ood import (MONITOR_DIR_ENV, MONITOR_IMAGES_ENV, POLICY_ENV, REQUEST_LOG, WINDOW_ENV, OODMonitor,
                       OutOfDistributionRefused, verdict_json)
from cellops.ood import OOD_ARTIFACTS, Verdict, fit_reference, no_reference_verdict, verdict_and_features

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("a", "b", "c")
LOG_KEYS = {"time", "service", "registered_model", "model_version", "endpoint", "ood_score", "ood_threshold",
            "in_distribution", "ood_reason", "features"}


@pytest.fixture(autouse=True)
def _monitor_env(monkeypatch, tmp_path):
    for variable in (POLICY_ENV, WINDOW_ENV, MONITOR_IMAGES_ENV):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(MONITOR_DIR_ENV, str(tmp_path / "monitoring"))


def demo_reference(family: str = "demo", names=NAMES, seed: int = 0):
    rng = np.random.default_rng(seed)
    return fit_reference(family, rng.normal(size=(200, len(names))), rng.normal(size=(100, len(names))), names)


def bento_model(folder: Path, reference=None, **metadata) -> SimpleNamespace:
    """A stand-in for a served BentoML model: its folder (holding ``ood/reference.json`` when given) and metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    if reference is not None:
        (folder / OOD_ARTIFACTS).mkdir()
        reference.save(folder / OOD_ARTIFACTS)
    info = SimpleNamespace(metadata={"registered_model": "cellops-demo", "model_version": "7", **metadata},
                           labels={})
    return SimpleNamespace(tag="cellops-demo:abc", info=info, path_of=lambda path: str(folder / path))


def monitor(tmp_path: Path, service: str, reference=None, **metadata) -> OODMonitor:
    return OODMonitor(bento_model(tmp_path / service, reference, **metadata), service, "demo", NAMES)


def log_lines(service: str, tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "monitoring" / service / REQUEST_LOG).read_text().splitlines()]


def sample(name: str, **labels) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


def test_the_policy_is_the_stored_one_unless_the_environment_overrides_it(tmp_path, monkeypatch):
    assert monitor(tmp_path, "policy-default").policy == "flag"
    stored = monitor(tmp_path, "policy-stored", ood_policy="refuse")
    assert (stored.policy, stored.policy_source) == ("refuse", "model")
    monkeypatch.setenv(POLICY_ENV, "flag")
    overridden = monitor(tmp_path, "policy-env", ood_policy="refuse")
    assert (overridden.policy, overridden.policy_source) == ("flag", "environment")
    assert overridden.describe()["policy"] == "flag"


@pytest.mark.parametrize("variable, value, message", [
    (POLICY_ENV, "block", "CELLOPS_OOD_POLICY='block' is not an out-of-distribution policy; choose one of flag, "
                          "refuse"),
    (WINDOW_ENV, "0", "CELLOPS_DRIFT_WINDOW='0' is not a positive whole number"),
    (WINDOW_ENV, "ten", "CELLOPS_DRIFT_WINDOW='ten' is not a positive whole number"),
])
def test_a_bad_setting_stops_the_service_as_it_starts_naming_it(tmp_path, monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(BentoMLException, match=message):
        monitor(tmp_path, "bad-setting", demo_reference())


def test_an_unknown_stored_policy_stops_the_service_naming_it(tmp_path):
    with pytest.raises(BentoMLException, match="the model's stored ood_policy 'strict' is not an out-of-distribution"):
        monitor(tmp_path, "bad-stored", ood_policy="strict")


def test_a_reference_of_other_features_is_set_aside_and_an_unreadable_one_stops_the_service(tmp_path):
    stale = monitor(tmp_path, "other-features", demo_reference(names=("x", "y")))
    assert stale.reference is None and stale.window is None
    assert "describes demo features (x, y); this demo service computes (a, b, c)" in \
        stale.describe()["reference_problem"]
    folder = tmp_path / "corrupt"
    (folder / OOD_ARTIFACTS).mkdir(parents=True)
    (folder / OOD_ARTIFACTS / "reference.json").write_text("{not json")
    with pytest.raises(BentoMLException, match="cannot read the OOD reference"):
        OODMonitor(bento_model(folder), "corrupt", "demo", NAMES)


def test_a_model_without_a_reference_answers_unknown_and_is_counted_unscored(tmp_path):
    service = "no-reference"
    watched = monitor(tmp_path, service)
    assert watched.reference is None and watched.window is None
    assert watched.describe()["reference"] is False and watched.describe()["threshold"] is None
    assert "has no out-of-distribution reference" in watched.describe()["reference_problem"]
    verdict, features = verdict_and_features(watched.reference, np.ones((64, 64)), lambda: pytest.fail("scored"))
    assert verdict == no_reference_verdict() and features is None
    watched.observe(verdict, features, "segment", b"\x89PNG...")
    watched.enforce(verdict)  # nothing to refuse
    assert sample("cellops_ood_requests_total", service=service, verdict="unscored") == 1
    assert sample("cellops_drift_window_size", service=service) == 0
    [line] = log_lines(service, tmp_path)
    assert line["in_distribution"] is None and line["ood_score"] is None and line["features"] == {}
    assert "no out-of-distribution reference" in line["ood_reason"]
    assert verdict_json(verdict)["in_distribution"] is None and verdict.headers()["X-In-Distribution"] == "unknown"


def test_a_burst_of_shifted_images_shows_in_the_metrics_and_the_log(tmp_path, monkeypatch):
    monkeypatch.setenv(WINDOW_ENV, "20")
    service = "burst"
    reference = demo_reference()
    watched = monitor(tmp_path, service, reference)
    rng = np.random.default_rng(1)
    for _ in range(5):
        features = rng.normal(size=3)
        watched.observe(reference.verdict(features), features, "segment")
    for _ in range(30):  # shifted far from the reference: all flagged, the window (20) all shifted
        features = rng.normal(size=3) + 8.0
        verdict = watched.observe(reference.verdict(features), features, "segment")
        assert verdict.in_distribution is False
    inside = sample("cellops_ood_requests_total", service=service, verdict="in")
    assert inside + sample("cellops_ood_requests_total", service=service, verdict="out") == 35
    assert sample("cellops_ood_requests_total", service=service, verdict="out") >= 30
    assert sample("cellops_ood_score_count", service=service) == 35
    assert sample("cellops_ood_rate_window", service=service) == 1.0
    assert sample("cellops_drift_statistic_window", service=service) > 0.9
    assert sample("cellops_drift_window_size", service=service) == 20
    assert sample("cellops_ood_threshold", service=service) == pytest.approx(reference.threshold)

    lines = log_lines(service, tmp_path)
    assert len(lines) == 35 and all(set(line) == LOG_KEYS for line in lines)
    last = lines[-1]
    assert (last["service"], last["registered_model"], last["model_version"], last["endpoint"]) == \
        (service, "cellops-demo", "7", "segment")
    assert last["time"].endswith("+00:00") and last["in_distribution"] is False
    assert last["ood_threshold"] == pytest.approx(reference.threshold) and last["ood_score"] > last["ood_threshold"]
    assert set(last["features"]) == set(NAMES) and all(isinstance(v, float) for v in last["features"].values())
    # Never pixels: the monitoring folder holds the log and nothing else.
    assert [p.name for p in (tmp_path / "monitoring").rglob("*") if p.is_file()] == [REQUEST_LOG]


def test_uploads_are_kept_only_in_the_folder_an_operator_names(tmp_path, monkeypatch):
    reference = demo_reference()
    upload = b"\x89PNG\r\n\x1a\n some image bytes"
    plain = monitor(tmp_path, "no-images", reference)
    plain.observe(reference.verdict(np.zeros(3)), np.zeros(3), "segment", upload)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".json"] == [REQUEST_LOG]
    monkeypatch.setenv(MONITOR_IMAGES_ENV, str(tmp_path / "kept"))
    keeping = monitor(tmp_path, "images", reference)
    keeping.observe(reference.verdict(np.zeros(3)), np.zeros(3), "segment", upload)
    name = hashlib.sha256(upload).hexdigest() + ".png"
    assert [p.name for p in (tmp_path / "kept").iterdir()] == [name]
    assert (tmp_path / "kept" / name).read_bytes() == upload
    assert log_lines("images", tmp_path)[0]["image"] == name


def test_refuse_answers_422_naming_the_score_and_threshold_and_passes_the_rest(tmp_path):
    reference = demo_reference()
    refusing = monitor(tmp_path, "refusing", reference, ood_policy="refuse")
    shifted = reference.verdict(np.full(3, 9.0))
    with pytest.raises(OutOfDistributionRefused) as refused:
        refusing.enforce(shifted, "images[1] (b.png)")
    assert refused.value.error_code == 422
    assert str(refused.value).startswith(f"images[1] (b.png): the image is out of distribution: its OOD score "
                                         f"{shifted.ood_score:.3f} is above the threshold {reference.threshold:.3f}")
    for verdict in (reference.verdict(np.zeros(3)), Verdict(None, reference.threshold, None, "too small")):
        assert refusing.enforce(verdict) is verdict
    assert monitor(tmp_path, "flagging", reference).enforce(shifted) is shifted


def test_a_score_that_is_not_finite_is_null_in_json_answers_and_logs(tmp_path):
    reference = demo_reference()
    watched = monitor(tmp_path, "not-finite", reference)
    features = np.array([np.nan, 0.0, 0.0])
    verdict = reference.verdict(features)
    assert verdict.in_distribution is False and verdict_json(verdict)["ood_score"] is None
    watched.observe(verdict, features, "classify")
    [line] = log_lines("not-finite", tmp_path)
    assert line["ood_score"] is None and line["features"]["a"] is None and line["in_distribution"] is False


#: Builds a monitor in a process where BentoML's PROMETHEUS_MULTIPROC_DIR is set (as in a worker), observes a burst of
#: shifted images and prints /metrics as BentoML's server gathers it from every process.
_MULTIPROCESS = """
import numpy as np
from bento.ood import OODMonitor
from bentoml._internal.server.metrics.prometheus import PrometheusClient
from test_ood_serving import NAMES, bento_model, demo_reference
from pathlib import Path
import sys

reference = demo_reference()
watched = OODMonitor(bento_model(Path(sys.argv[1]), reference), "cellops-demo", "demo", NAMES)
for _ in range(12):
    features = np.full(3, 9.0)
    watched.observe(reference.verdict(features), features, "segment")
print(PrometheusClient(multiproc=True).generate_latest().decode())
"""


def test_bentoml_metrics_endpoint_gathers_the_ood_metrics_across_processes(tmp_path):
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent), str(ROOT / "tests")])}
    text = subprocess.run([sys.executable, "-c", _MULTIPROCESS, str(tmp_path / "model")], env=env, check=True,
                          capture_output=True, text=True, timeout=120).stdout
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    service = (("service", "cellops-demo"),)
    assert samples[("cellops_ood_requests_total", (*service, ("verdict", "out")))] == 12
    assert samples[("cellops_ood_requests_total", (*service, ("verdict", "in")))] == 0
    assert samples[("cellops_ood_score_count", service)] == 12
    # One value per service (not one per process id): the gauges of the worker's window.
    assert samples[("cellops_ood_rate_window", service)] == 1.0
    assert samples[("cellops_drift_statistic_window", service)] == 1.0
    assert samples[("cellops_drift_window_size", service)] == 12


def _reference_of(family: str, names, rows: list[np.ndarray]):
    rows = np.array(rows)
    return fit_reference(family, rows[: len(rows) // 2], rows[len(rows) // 2:], names)


def test_the_services_verdict_is_the_familys_verdict_for(tmp_path):
    """The services compute features once, for the verdict and the log (:func:`cellops.ood.verdict_and_features`):
    the verdict is the one the family's ``verdict_for`` gives, scored, unscored (too small) or without reference."""
    from cellops.classifier import ood as classifier_ood
    from cellops.maskrcnn import ood as maskrcnn_ood
    from cellops.maskrcnn.predict import Instance
    from cellops.unet import ood as unet_ood
    from cellops.unet.specs import UNetServing

    rng = np.random.default_rng(0)
    settings = UNetServing(tile_size=32, tile_overlap=8, batch_size=4, threshold=0.5)
    images = [rng.integers(0, 255, (64, 64)).astype(np.uint8) for _ in range(60)]
    probabilities = [rng.random((64, 64)) for _ in range(60)]
    rows = [unet_ood.image_features(settings.normalization.apply(i), p, 0.5) for i, p in zip(images, probabilities)]
    reference = _reference_of("unet", unet_ood.FEATURE_NAMES, rows)
    for image, p in [(images[0], probabilities[0]), (images[1][:20], probabilities[1][:20])]:
        unit = settings.normalization.apply(image)
        verdict, features = verdict_and_features(reference, unit, lambda: unet_ood.image_features(unit, p, 0.5))
        assert verdict == unet_ood.verdict_for(reference, image, p, settings)
    assert verdict.in_distribution is None and "too small" in verdict.reason and features is None

    inputs = [rng.random((3, 48, 48)) for _ in range(60)]
    softmax = [np.array([q, 1 - q]) for q in rng.random(60)]
    reference = _reference_of("classifier", classifier_ood.FEATURE_NAMES,
                              [classifier_ood.image_features(x, p) for x, p in zip(inputs, softmax)])
    verdict, features = verdict_and_features(reference, classifier_ood.grey_input(inputs[0]),
                                             lambda: classifier_ood.image_features(inputs[0], softmax[0]))
    assert verdict == classifier_ood.verdict_for(reference, inputs[0], softmax[0]) and features is not None

    pictures = [rng.random((64, 64, 3)).astype(np.float32) for _ in range(60)]
    found = [[Instance(0, 0, np.ones((5, 10), bool), 1, float(s))] for s in rng.random(60)]
    reference = _reference_of("maskrcnn", maskrcnn_ood.FEATURE_NAMES,
                              [maskrcnn_ood.image_features(p, i) for p, i in zip(pictures, found)])
    verdict, _ = verdict_and_features(reference, maskrcnn_ood.grey_picture(pictures[0]),
                                      lambda: maskrcnn_ood.image_features(pictures[0], found[0]))
    assert verdict == maskrcnn_ood.verdict_for(reference, pictures[0], found[0])
    assert verdict_and_features(None, pictures[0], lambda: None)[0] == maskrcnn_ood.verdict_for(None, pictures[0], [])
