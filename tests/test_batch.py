"""The batch engine (cellops.batch): what is skipped, what is redone, what an interruption leaves, and the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cellops.batch import MANIFEST, SUMMARY, content_hash, input_names, list_inputs, run_batch


def _inputs(folder: Path, names: dict[str, str]) -> dict[str, Path]:
    for name, text in names.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return {path.relative_to(folder).as_posix(): path for path in list_inputs(folder, ["*.txt"])}


class Recorder:
    """A predictor writing ``<stem>.out``; it can fail on one input or be interrupted before one."""

    def __init__(self, fail_on: str | None = None, interrupt_on: str | None = None):
        self.seen: list[str] = []
        self.fail_on, self.interrupt_on = fail_on, interrupt_on

    def __call__(self, path: Path, out: Path, stem: str) -> dict:
        if path.name == self.interrupt_on:
            raise KeyboardInterrupt
        if path.name == self.fail_on:
            raise ValueError(f"{path}: unreadable")
        self.seen.append(path.name)
        (out / f"{stem}.out").write_text(path.read_text().upper())
        return {"outputs": [f"{stem}.out"], "length": len(path.read_text())}


def test_an_interrupted_batch_resumes_with_the_inputs_it_had_not_finished(tmp_path):
    inputs = _inputs(tmp_path / "in", {"a.txt": "a", "b.txt": "bb", "c.txt": "ccc"})
    with pytest.raises(KeyboardInterrupt):
        run_batch(list(inputs.values()), tmp_path / "out", Recorder(interrupt_on="b.txt"), "unet/1", progress=False)
    recorded = json.loads((tmp_path / "out" / MANIFEST).read_text())["inputs"]
    assert list(recorded) == ["a.txt"] and recorded["a.txt"]["sha256"] == content_hash(inputs["a.txt"])
    resumed = Recorder()
    result = run_batch(list(inputs.values()), tmp_path / "out", resumed, "unet/1", progress=False)
    assert resumed.seen == ["b.txt", "c.txt"]
    assert [(r["input"], r["status"], r["length"]) for r in result.rows] == [
        ("a.txt", "skipped", 1), ("b.txt", "done", 2), ("c.txt", "done", 3)]
    assert (tmp_path / "out" / "c.out").read_text() == "CCC"


def test_new_content_another_model_or_a_lost_output_is_predicted_again(tmp_path):
    inputs = _inputs(tmp_path / "in", {"a.txt": "a", "b.txt": "b", "c.txt": "c"})
    run_batch(list(inputs.values()), tmp_path / "out", Recorder(), "unet/1", progress=False)
    inputs["a.txt"].write_text("changed")
    (tmp_path / "out" / "b.out").unlink()
    again = Recorder()
    result = run_batch(list(inputs.values()), tmp_path / "out", again, "unet/1", progress=False)
    assert again.seen == ["a.txt", "b.txt"] and result.count("skipped") == 1
    newer = Recorder()
    run_batch(list(inputs.values()), tmp_path / "out", newer, "unet/2", progress=False)
    assert newer.seen == ["a.txt", "b.txt", "c.txt"]


def test_a_failing_input_is_reported_by_name_and_retried_while_the_others_are_kept(tmp_path):
    inputs = _inputs(tmp_path / "in", {"a.txt": "a", "bad.txt": "?", "c.txt": "c"})
    result = run_batch(list(inputs.values()), tmp_path / "out", Recorder(fail_on="bad.txt"), "m/1", progress=False)
    failed = [r for r in result.rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["problem"] == f"{inputs['bad.txt']}: unreadable" and result.count("done") == 2
    retry = Recorder()
    run_batch(list(inputs.values()), tmp_path / "out", retry, "m/1", progress=False)
    assert retry.seen == ["bad.txt"]


def test_the_input_version_names_the_batch_contents(tmp_path):
    inputs = _inputs(tmp_path / "in", {"a.txt": "a", "b.txt": "b"})
    first = run_batch(list(inputs.values()), tmp_path / "out", Recorder(), "m/1", progress=False).input_version
    assert run_batch(list(inputs.values()), tmp_path / "out", Recorder(), "m/1", progress=False).input_version == first
    inputs["b.txt"].write_text("other")
    assert run_batch(list(inputs.values()), tmp_path / "out", Recorder(), "m/1", progress=False).input_version != first


def test_inputs_are_found_in_subfolders_zarr_folders_count_once_and_bad_folders_are_named(tmp_path):
    (tmp_path / "A").mkdir(parents=True)
    (tmp_path / "A" / "x.tif").write_bytes(b"1")
    (tmp_path / "B" / "v.zarr" / "c").mkdir(parents=True)
    (tmp_path / "B" / "v.zarr" / "zarr.json").write_text("{}")
    (tmp_path / "B" / "v.zarr" / "c" / "0.tif").write_bytes(b"chunk")  # inside an array: not an input of its own
    (tmp_path / ".hidden.tif").write_bytes(b"1")
    found = list_inputs(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["A/x.tif", "B/v.zarr"]
    assert [(n.label, n.stem) for n in input_names(found).values()] == [("x.tif", "x"), ("v.zarr", "v")]
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        list_inputs(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no input in .* matches \*\.png"):
        list_inputs(tmp_path, ["*.png"])


def test_a_damaged_manifest_is_refused_with_what_to_do_and_left_as_it_is(tmp_path):
    inputs = _inputs(tmp_path / "in", {"a.txt": "a"})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="is not a batch manifest.*move it away"):
        run_batch(list(inputs.values()), tmp_path / "out", Recorder(), "m/1", progress=False)
    assert (tmp_path / "out" / MANIFEST).read_text() == "{not json"


def test_the_summary_has_one_row_per_file_with_status_problem_outputs_and_results(tmp_path):
    inputs = _inputs(tmp_path / "in", {"a.txt": "a", "bad.txt": "?", "c.txt": "ccc"})
    run_batch(list(inputs.values()), tmp_path / "out", Recorder(fail_on="bad.txt"), "m/1", progress=False)
    (tmp_path / "in" / "c.txt").write_text("changed")
    run_batch(list(inputs.values()), tmp_path / "out", Recorder(fail_on="bad.txt"), "m/1", progress=False)
    summary = pd.read_csv(tmp_path / "out" / SUMMARY, dtype=str, keep_default_na=False)
    assert list(summary.columns) == ["input", "file", "status", "problem", "outputs", "length", "sha256"]
    rows = summary.set_index("input")
    assert list(rows["status"]) == ["skipped", "failed", "done"]
    assert rows.loc["a.txt", "outputs"] == "a.out" and rows.loc["a.txt", "length"] == "1"  # kept from the first run
    assert rows.loc["bad.txt", "problem"] == f"{inputs['bad.txt']}: unreadable"
    assert rows.loc["bad.txt", "outputs"] == rows.loc["bad.txt", "length"] == ""
    assert rows.loc["c.txt", "length"] == "7" and rows.loc["c.txt", "sha256"] == content_hash(inputs["c.txt"])


def test_same_named_files_get_their_folders_and_a_key_per_file_redoes_only_the_files_it_changed(tmp_path):
    inputs = _inputs(tmp_path / "in", {"A/x.txt": "1", "B/x.txt": "2", "B/y.txt": "3"})
    groups = {path: path.parent.name for path in inputs.values()}
    result = run_batch(list(inputs.values()), tmp_path / "out", Recorder(), lambda path: f"m/{groups[path]}",
                       progress=False)
    assert [r["input"] for r in result.rows] == ["A/x.txt", "B/x.txt", "y.txt"]
    assert [(tmp_path / "out" / name).read_text() for name in ("A/x.out", "B/x.out", "y.out")] == ["1", "2", "3"]
    groups[inputs["B/y.txt"]] = "C"
    again = Recorder()
    run_batch(list(inputs.values()), tmp_path / "out", again, lambda path: f"m/{groups[path]}", progress=False)
    assert again.seen == ["y.txt"]


def test_a_file_given_twice_is_refused_and_an_unrecorded_batch_writes_only_its_outputs(tmp_path):
    inputs = _inputs(tmp_path / "in", {"a.txt": "a"})
    with pytest.raises(ValueError, match="given more than once"):
        run_batch([inputs["a.txt"], inputs["a.txt"]], tmp_path / "out", Recorder(), "m/1", progress=False)
    for _ in range(2):
        result = run_batch(list(inputs.values()), tmp_path / "plain", Recorder(), "m/1", record=False, progress=False)
        assert result.count("done") == 1 and result.input_version == ""
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["a.out"]
