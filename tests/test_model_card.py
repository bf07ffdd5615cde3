"""The model card builder (cellops.model_card): every value escaped, missing sections said, intervals rendered,
limits generated from the facts, and the built-in data told from a lab's own."""

from __future__ import annotations

import json

import pytest

from cellops.data_version import dvc_dir_md5, hash_folder
from cellops.model_card import (CardFacts, DataFacts, IntendedUse, ModelCard, build_card, builtin_data_origin,
                                known_limits, metric_rows)

RECORD = {
    "registered_model": "cellops-unet", "model_version": "4", "aliases": ["champion"], "family": "unet",
    "mlflow_run_id": "r1", "zenml_run_id": "z1", "data_version": "ab12.dir", "data_files": "4", "git_commit": "c0ffee",
    "corrections": "2 corrected images (aa, bb) pre-annotated by cellops-unet:3, corrected by ana; manifest 123",
    "corrections_use": "train", "corrections_store": "data/corrections/cellops-unet",
    "metrics": {"foreground_iou": 0.81, "foreground_iou_ci_low": 0.78, "foreground_iou_ci_high": 0.84, "dice": 0.9},
    "promotion_metric": "foreground_iou", "inference_settings": {"tile_size": 128, "threshold": 0.6},
    "runtime": "onnxruntime", "runtime_checks": [{"runtime": "onnxruntime", "speedup": 1.8, "change": -0.0001,
                                                  "passed": True}],
    "ood": {"threshold": 4.5, "false_alarm_rate": 0.05, "score": "nearest", "features": ["mean", "std"]},
}
USE = IntendedUse.from_block({"description": "Segments mitochondria.", "audience": "EM labs",
                              "limitations": "Synthetic by default."}, "configs/unet.yaml (its model: block)")
ROWS = [{"condition": "noise 0.1", "strength": 0.1, "metric": "foreground_iou", "value": 0.7, "clean_value": 0.81,
         "difference": -0.11}]


def full_facts(**changes) -> CardFacts:
    values = dict(record=RECORD, intended_use=USE, data=DataFacts("own", "checked"), robustness=ROWS,
                  reproduce=["cellops reproduce cellops-unet:4"], missing=[])
    return CardFacts(**{**values, **changes})


def test_a_full_card_has_every_section_with_its_facts():
    card = build_card(full_facts(), "generated 2026-12-02")
    for title in ("Intended use", "Data", "Test metrics", "Robustness", "Runtime checks",
                  "Out-of-distribution reference", "Known limits", "Lineage", "Reproduce"):
        assert f"## {title}" in card.markdown and f"<h2>{title}</h2>" in card.html
    md = card.markdown
    assert "| foreground_iou (promotion) | 0.81 | [0.78, 0.84] |" in md
    assert "| dice | 0.9 | no interval recorded |" in md
    assert "| noise 0.1 | foreground_iou | 0.7 | 0.81 | -0.11 |" in md
    assert "| onnxruntime | 1.8x | -0.0001 | accurate |" in md
    assert "| threshold | 4.5 |" in md and "| false-alarm rate | 5% |" in md
    assert "pre-annotated by cellops-unet:3, corrected by ana" in md
    assert "| DVC data version | ab12.dir |" in md and "| git commit | c0ffee |" in md
    assert "```bash\ncellops reproduce cellops-unet:4\n```" in md
    assert "From configs/unet.yaml (its model: block)." in md
    assert "Segments mitochondria." in card.html
    assert (card.name, card.version) == ("cellops-unet", "4")


def test_missing_sections_are_said_not_left_out():
    record = {"registered_model": "cellops-unet", "model_version": "1", "metrics": {}, "ood": None}
    card = build_card(CardFacts(record, missing=["no git commit recorded"]))
    md = card.markdown
    assert "## Intended use\n\nNot recorded" in md
    assert "## Robustness\n\nNot measured for this version." in md
    assert "## Out-of-distribution reference\n\nNone for this version" in md
    assert "No test metrics recorded." in md
    assert "It cannot be reproduced; missing:\n\n- no git commit recorded" in md
    limits = known_limits(CardFacts(record, missing=["no git commit recorded"]))
    assert "No out-of-distribution reference: images unlike its training images are not flagged." in limits
    assert "Cannot be reproduced: no git commit recorded." in limits


def test_limits_are_generated_from_the_facts():
    synthetic = known_limits(full_facts(data=DataFacts("synthetic", "generator")))
    assert synthetic[0].startswith("Trained and tested on synthetic images only")
    assert not any("synthetic images only" in limit for limit in known_limits(full_facts()))
    modified = known_limits(full_facts(record={**RECORD, "data_version": "ab12.dir+modified",
                                               "git_commit": "c0ffee-dirty"}))
    assert any("+modified" in limit for limit in modified) and any("-dirty" in limit for limit in modified)
    wide = {**RECORD, "metrics": {"foreground_iou": 0.5, "foreground_iou_ci_low": 0.2, "foreground_iou_ci_high": 0.7}}
    assert "Few test images: the 95 % interval of foreground_iou is 0.5 wide ([0.2, 0.7])." in known_limits(
        full_facts(record=wide))
    assert known_limits(full_facts()) == []


def test_every_value_is_escaped_in_both_renderings():
    hostile = "<script>alert(1)</script>"
    record = {**RECORD, "registered_model": f"m{hostile}", "git_commit": "a|b", "metrics": {hostile: 1.0},
              "inference_settings": {"x": hostile}}
    card = build_card(full_facts(record=record, reproduce=[f"echo {hostile}"], intended_use=IntendedUse(
        {"description": hostile}, hostile), robustness=[{**ROWS[0], "condition": hostile}], notes=[hostile]))
    assert "<script>" not in card.html and "&lt;script&gt;" in card.html
    assert "<script>" not in card.markdown.replace("```bash\necho <script>alert(1)</script>\n```", "")
    assert "| git commit | a\\|b |" in card.markdown
    assert "<link" not in card.html and "src=" not in card.html and "http" not in card.html  # self-contained


def test_metric_rows_mark_nan_intervals_and_skip_interval_keys():
    rows = metric_rows({"sensitivity": 1.0, "sensitivity_ci_low": float("nan"), "sensitivity_ci_high": float("nan")})
    assert rows == [("sensitivity", "1", "[n/a, n/a]")]


def test_write_and_read_back(tmp_path):
    card = build_card(full_facts())
    paths = card.write(tmp_path / "card")
    assert [p.name for p in paths] == ["model_card.md", "model_card.html"]
    assert ModelCard.read(tmp_path / "card", card.name, card.version) == card


@pytest.mark.parametrize("mine", [False, True])
def test_builtin_data_is_told_from_own_data_file_by_file(tmp_path, mine):
    params = {"em": {"shape": [4, 32, 32], "seed": 3, "voxel_nm": 8.0, "mitochondria_fraction": 0.1}}
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    from cellops.cli import generate_data

    generate_data(tmp_path / "params.yaml", tmp_path / "data")
    if mine:
        (tmp_path / "data" / "em" / "testing.tif").write_bytes(b"a lab's own volume")
    listing = hash_folder(tmp_path / "data")
    (tmp_path / "data.files.json").write_text(json.dumps([{"md5": m, "relpath": p} for p, m in listing.items()]))
    facts = builtin_data_origin(tmp_path, "unet", dvc_dir_md5(listing))
    assert facts.origin == ("own" if mine else "synthetic"), facts.origin_reason
    assert builtin_data_origin(tmp_path, "unet", "ff00.dir").origin == "unknown"
    assert builtin_data_origin(tmp_path, "unet", "ab.dir+modified").origin == "unknown"
