import numpy as np
import pytest

from cellops.classical.calcium import (
    CalciumParams,
    measure_calcium_movie,
    bleach_curve,
    delta_f_over_f0,
    group_curves,
    response_metrics,
)
from cellops.io import ImageInputError
from cellops.metrics import match_instances
from cellops.synthetic.calcium import generate_calcium_movie


@pytest.fixture(scope="module")
def movies():
    return [generate_calcium_movie(g, (192, 192), seed=300 + i, n_cells=14) for i, g in
            enumerate(["Control", "Coating", "Film"])]


def test_recovered_traces_correlate_with_ground_truth(movies):
    correlations = []
    for movie in movies:
        result = measure_calcium_movie(movie.movie)
        match = match_instances(movie.labels, result.labels)
        assert match.f1 >= 0.9
        correlations += [np.corrcoef(result.dff[p - 1], movie.traces[t - 1])[0, 1] for t, p, _ in match.pairs]
    assert np.median(correlations) > 0.98


def test_dff_against_hand_computed_values():
    traces = np.array([[100.0, 100.0, 150.0, 200.0], [50.0, 50.0, 50.0, 100.0]])
    dff = delta_f_over_f0(traces, CalciumParams(baseline_frames=2, bleach_correction="none"))
    assert dff.tolist() == [[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 1.0]]
    pct = delta_f_over_f0(traces, CalciumParams(f0_method="percentile", f0_percentile=0, bleach_correction="none"))
    assert pct[0].tolist() == [0.0, 0.0, 0.5, 1.0]


def test_bleach_correction_removes_an_exponential_decay():
    t = np.arange(60)
    traces = np.vstack([100 * np.exp(-0.01 * t), 80 * np.exp(-0.01 * t)])
    np.testing.assert_allclose(bleach_curve(traces, 20), np.exp(-0.01 * t), rtol=1e-6)
    dff = delta_f_over_f0(traces, CalciumParams(baseline_frames=20))
    np.testing.assert_allclose(dff, 0, atol=1e-9)


def test_response_metrics_and_group_curves():
    dff = np.array([[0, 0, 0.2, 1.0, 0.5], [0, 0, 0.1, 0.1, 0.1]])
    metrics = response_metrics(dff, CalciumParams(baseline_frames=2, frame_interval_s=2.0, responder_threshold=0.3))
    assert metrics["peak_dff"].tolist() == [1.0, 0.1]
    assert metrics["time_to_peak_s"].tolist() == [4.0, 2.0]
    assert metrics["responder"].tolist() == [True, False]
    assert metrics["auc_dff_s"][0] == pytest.approx(2.0 * (0.6 + 0.75))
    curves = group_curves({"A": dff}).query("frame == 3")
    assert curves["mean_dff"].item() == pytest.approx(0.55)
    assert curves["sem_dff"].item() == pytest.approx(np.std([1.0, 0.1], ddof=1) / np.sqrt(2))


def test_a_single_image_is_not_a_movie():
    with pytest.raises(ImageInputError, match="time-lapse stack"):
        measure_calcium_movie(np.zeros((32, 32), np.uint16))
