"""The scoring functions against outputs whose accuracy is known by construction."""

import json

import numpy as np
import pandas as pd

from cellops.coco import labels_to_coco
from cellops.io import write_tiff_stack
from cellops.scoring import score_calcium, score_colonies, score_nuclei


def test_colony_scores_of_a_perfect_and_a_grown_result(tmp_path):
    truth = np.zeros((40, 40), np.int32)
    truth[5:15, 5:15] = 1
    truth[20:30, 20:35] = 2
    (tmp_path / "annotations.json").write_text(json.dumps(labels_to_coco({"a.png": truth})))
    found = truth.copy()
    found[5:16, 5:15] = np.where(found[5:16, 5:15] == 0, 1, found[5:16, 5:15])  # colony 1 one row larger
    write_tiff_stack(tmp_path / "a_colonies.tif", found.astype(np.uint16))
    scores = score_colonies([tmp_path / "a.png"], tmp_path, tmp_path / "annotations.json")
    assert scores["detection_f1"] == 1.0
    assert abs(scores["median_relative_area_error"] - np.median([0.1, 0.0])) < 1e-12


def test_nucleus_scores_skip_files_without_ground_truth(tmp_path):
    truth = np.zeros((30, 30), np.int32)
    truth[2:8, 2:14] = 1
    (tmp_path / "G").mkdir()
    write_tiff_stack(tmp_path / "G" / "n_labels.tif", truth.astype(np.uint16))
    (tmp_path / "out" / "G").mkdir(parents=True)
    write_tiff_stack(tmp_path / "out" / "G" / "n_nuclei.tif", truth.astype(np.uint16))
    table = pd.DataFrame({"image": ["n.tif"], "group": ["G"], "label": [1], "aspect_ratio_ellipse": [2.2]})
    ellipses = pd.DataFrame({"image": ["G/n.tif"], "label": [1], "aspect_ratio": [2.0]})
    files = {"G": [tmp_path / "G" / "n.tif", tmp_path / "G" / "unlabelled.tif"]}
    scores = score_nuclei(files, tmp_path / "out", table, ellipses)
    assert scores["nucleus_f1"] == 1.0
    assert abs(scores["median_relative_aspect_ratio_error"] - 0.1) < 1e-12


def test_calcium_correlation_of_a_scaled_trace_is_one(tmp_path):
    labels = np.zeros((20, 20), np.int32)
    labels[2:8, 2:8] = 1
    write_tiff_stack(tmp_path / "m_labels.tif", labels.astype(np.uint16))
    write_tiff_stack(tmp_path / "m_cells.tif", labels.astype(np.uint16))
    true = np.sin(np.linspace(0, 3, 30))
    pd.DataFrame({"cell_1": true}).to_csv(tmp_path / "m_traces.csv", index_label="frame")
    pd.DataFrame({"time_s": np.arange(30), "cell_1": 2 * true + 1}).to_csv(tmp_path / "m_dff.csv", index=False)
    assert abs(score_calcium([tmp_path / "m.tif"], tmp_path)["median_trace_correlation"] - 1.0) < 1e-12
    assert score_calcium([tmp_path / "other.tif"], tmp_path) == {}
