"""Every benchmark script runs in its ``--smoke`` size (a tiny input, no trained model, no data, no GPU) and writes
one JSON through ``benchmarks/benchlib.py``: the machine, ``"smoke": true`` and summary rows that
``benchmarks/table.py`` prints. Scripts are found by glob, so a new benchmark is covered without listing it here."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cellops.telemetry import TELEMETRY_OFF

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
#: The shared module and the table printer: not benchmarks.
NOT_BENCHMARKS = {"benchlib.py", "table.py"}
SCRIPTS = sorted(path for path in BENCHMARKS.glob("*.py") if path.name not in NOT_BENCHMARKS)
#: Per script; a smoke run takes seconds (tens on a busy machine), so this only stops a hung one.
TIMEOUT_S = 240
#: Each benchmark runs in a subprocess of its own: handed out one by one.
pytestmark = pytest.mark.tests_alone


def _benchlib():
    spec = importlib.util.spec_from_file_location("benchlib_under_test", BENCHMARKS / "benchlib.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env() -> dict[str, str]:
    # One OpenMP/BLAS thread: the smoke runs share two cores with whatever else runs (the rest of the suite).
    return {**os.environ, **TELEMETRY_OFF, "OMP_NUM_THREADS": "1"}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    """``args`` from the repository root; on a timeout its whole process group is killed (torchrun's ranks,
    children), then the test fails with what it printed."""
    process = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(args)} ran past {TIMEOUT_S} s:\n{output[-4000:]}")
    return subprocess.CompletedProcess(args, process.returncode, output)


def test_benchmarks_are_found():
    assert len(SCRIPTS) >= 8, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_benchmark_smoke_writes_machine_and_summary(script, tmp_path):
    out = tmp_path / "x.json"
    result = _run([sys.executable, str(script), "--smoke", "--out", str(out)])
    assert result.returncode == 0, result.stdout[-4000:]
    document = json.loads(out.read_text())
    assert document["benchmark"] == script.stem and document["smoke"] is True
    machine = document["machine"]
    assert {"cpu_model", "isa_flags", "torch_threads", "versions"} <= set(machine), machine
    assert machine["cpu_model"] and isinstance(machine["isa_flags"], list) and machine["versions"].get("torch")
    summary = document["summary"]
    assert summary, "no summary rows"
    keys = set(_benchlib().row("c", "ours", 1.0, "peer", 1.0, "unit"))
    for r in summary:
        assert set(r) == keys, r
        assert r["comparison"] and r["ours"] and r["unit"]
    if script.stem in PEER_CHECKS:
        PEER_CHECKS[script.stem](document)


def _colonies(document: dict) -> None:
    assert document["colonies_cellops"] == document["colonies_skimage"]


def _unet_runtimes(document: dict) -> None:
    # Every timed contender's mask is compared with MONAI's, and the reported rows with the runtime they time.
    best, agreement = document["fastest_passing_runtime"], document["monai_agreement"]
    assert set(agreement) == {*document["checks"], "monai_folded"}, agreement
    assert set(document["monai_folded_agreement"]) == set(document["checks"])
    assert agreement[best] >= document["agreement_required"] <= document["monai_folded_agreement"][best]
    monai_rows = [r for r in document["summary"] if r["peer"].startswith("MONAI")]
    assert [r["ours"] for r in monai_rows] == [f"cellops {best}"] * 2
    assert monai_rows[0]["note"] == f"masks agree on {agreement[best]:.4%}"
    assert monai_rows[1]["note"] == f"masks agree on {document['monai_folded_agreement'][best]:.4%}"


def _classifier_runtimes(document: dict) -> None:
    for cam in document["cam"].values():
        assert 0 <= cam["mean_abs_difference"] <= cam["max_abs_difference"] <= 1e-4, cam


#: What each peer benchmark must have checked before it wrote its figures.
PEER_CHECKS = {"colonies": _colonies, "unet_runtimes": _unet_runtimes, "classifier_runtimes": _classifier_runtimes}


def test_colonies_stops_when_the_peer_counts_other_colonies(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("colonies_under_test", BENCHMARKS / "colonies.py")
    colonies = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(colonies)
    counted = colonies.skimage_colonies
    monkeypatch.setattr(colonies, "skimage_colonies", lambda image, params: counted(image, params)[1:])
    monkeypatch.setattr(sys, "argv", ["colonies.py", "--smoke", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match=r"colonies per image: cellops \[(\d+)\], scikit-image \[(\d+)\]"):
        colonies.main()
    assert not (tmp_path / "x.json").exists()


def test_table_prints_a_line_per_summary_row(tmp_path):
    benchlib = _benchlib()
    summary = [benchlib.row("alpha comparison", "ours-a", 10.0, "peer-a", 5.0, "images/s", target=3.0),
               benchlib.row("beta comparison", "ours-b", 2.0, "peer-b", 4.0, "s", higher_is_better=False,
                            note="a note")]
    benchlib.write_result("demo", {"figure": 1}, summary, tmp_path / "demo.json", smoke=True)
    result = _run([sys.executable, str(BENCHMARKS / "table.py"), str(tmp_path)])
    assert result.returncode == 0, result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("| demo (smoke) |")]
    assert len(lines) == len(summary), result.stdout
    assert "alpha comparison" in lines[0] and "2.0x" in lines[0] and "**no**" in lines[0]
    assert "beta comparison (a note)" in lines[1] and "2.0x" in lines[1]
    assert "machine: " in result.stdout


def test_active_learning_fraction_reached_counts_the_first_round_at_random_orders_final(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("active_learning_under_test", BENCHMARKS / "active_learning.py")
    active_learning = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, active_learning)  # its dataclasses look their module up there
    spec.loader.exec_module(active_learning)
    counts = [0, 4, 8, 12]
    assert active_learning.corrections_to_reach(counts, [0.5, 0.6, 0.7, 0.72], 0.7) == 8
    assert active_learning.fraction_reached(counts, [0.5, 0.55, 0.6, 0.7], [0.5, 0.6, 0.7, 0.72]) == 8 / 12
    assert active_learning.fraction_reached(counts, [0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.72]) is None
    runs = [{"random": {"curve": [0.5, 0.6, 0.7, 0.8]}, "uncertainty": {"curve": [0.5, 0.8, 0.8, 0.8]}},
            {"random": {"curve": [0.5, 0.6, 0.7, 0.6]}, "uncertainty": {"curve": [0.5, 0.6, 0.6, 0.6]}}]
    summary = active_learning.summarise("unet", "foreground IoU", counts, runs)
    assert summary["mean"]["random"][-1] == pytest.approx(0.7) and summary["corrections_needed"] == 4  # means: 0.7 at 4
    assert summary["fraction_reached_per_seed"] == [4 / 12, 4 / 12] and summary["met"] is True
