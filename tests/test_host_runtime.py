"""The runtime chosen on the host that runs a model (cellops.host_runtime): timed there among the runtimes the
registry found accurate, cached per model version and host, overridable."""

from __future__ import annotations

import threading
import time

import pytest
from torch import nn

from cellops.host_runtime import (HostChoice, choose_on_host, host_candidates, host_identity, registry_verdicts,
                                  resolve_host_runtime)

INFO = {"cpu_model": "Test CPU", "isa_flags": ["avx2", "avx512_bf16"], "usable_cpus": 2, "torch_threads": 2,
        "torch_cpu_capability": "AVX512", "versions": {"torch": "2.14.1"}}
CHECKS = [{"runtime": "torch", "passed": True, "accurate": True},
          {"runtime": "onnxruntime", "passed": True, "accurate": True},
          {"runtime": "openvino", "passed": True, "accurate": True},
          {"runtime": "openvino-int8", "passed": False, "accurate": False, "note": "metric changed by -0.3"}]


class Sleeper(nn.Module):
    """A network that takes ``seconds`` per call: the runtimes' speeds, made certain."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


SPEEDS = {"torch": 0.004, "onnxruntime": 0.003, "openvino": 0.001}


@pytest.fixture
def graphs(tmp_path):
    folder = tmp_path / "graphs"
    folder.mkdir()
    for name in ("model.onnx", "model.int8.onnx"):
        (folder / name).write_bytes(b"graph")
    return folder


def resolve(graphs, cache, loads, *, info=INFO, checks=CHECKS, override=None, speeds=SPEEDS):
    def module_for(runtime):
        loads.append(runtime)
        if runtime not in speeds:
            raise RuntimeError(f"{runtime} has no plugin here")
        return Sleeper(speeds[runtime])

    return resolve_host_runtime("m:1 (run abc)", checks, graphs, module_for, lambda m: m(1), override=override,
                                cache_dir=cache, repeats=2, info=info, registry_runtime="onnxruntime")


def test_the_fastest_accurate_runtime_is_chosen_here_and_cached_per_host(graphs, tmp_path):
    loads = []
    choice = resolve(graphs, tmp_path / "cache", loads)
    assert choice.runtime == "openvino" and choice.reason == "fastest here" and not choice.cached
    assert set(choice.seconds) == {"torch", "onnxruntime", "openvino"} and choice.speedups["openvino"] > 2
    assert "inaccurate at registration" in choice.skipped["openvino-int8"] and choice.registry_runtime == "onnxruntime"
    # Again on the same host: read back, nothing loaded or timed.
    loads.clear()
    again = resolve(graphs, tmp_path / "cache", loads)
    assert again.cached and again.runtime == "openvino" and again.seconds == choice.seconds and loads == []
    # Another CPU (other ISA flags): timed anew.
    other = resolve(graphs, tmp_path / "cache", loads, info={**INFO, "isa_flags": ["avx2"]})
    assert not other.cached and loads and host_identity(INFO)["key"] != other.host["key"]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2


def test_new_verdicts_are_timed_anew_and_a_runtime_failing_here_is_left_out_with_its_error(graphs, tmp_path):
    loads = []
    resolve(graphs, tmp_path / "cache", loads)
    loads.clear()
    checks = [*CHECKS[:3], {"runtime": "onnxruntime-int8", "passed": True, "accurate": True}]
    choice = resolve(graphs, tmp_path / "cache", loads, checks=checks)
    assert not choice.cached and "onnxruntime-int8" in loads
    assert choice.skipped["onnxruntime-int8"].startswith("failed here: RuntimeError: onnxruntime-int8 has no plugin")
    assert choice.runtime == "openvino"


def test_torch_stays_when_nothing_is_faster_enough(graphs, tmp_path):
    choice = resolve(graphs, tmp_path / "cache", [], speeds={"torch": 0.002, "onnxruntime": 0.002, "openvino": 0.002})
    assert choice.runtime == "torch" and choice.reason == "no faster runtime"
    assert choose_on_host({"torch": 1.0, "openvino": 0.97})[0] == "torch"  # 3 % is no reason for another runtime


def test_the_operator_override_is_used_untimed_and_a_wrong_name_is_refused(graphs, tmp_path, monkeypatch):
    loads = []
    choice = resolve(graphs, tmp_path / "cache", loads, override="onnxruntime")
    assert choice.runtime == "onnxruntime" and choice.reason == "override" and loads == [] and not choice.seconds
    monkeypatch.setenv("CELLOPS_RUNTIME", "torch")
    assert resolve(graphs, tmp_path / "cache", loads).reason == "override" and loads == []
    with pytest.raises(ValueError, match="CELLOPS_RUNTIME='tensorrt' is not a runtime; choose one of"):
        resolve(graphs, tmp_path / "cache", loads, override="tensorrt")


def test_candidates_need_an_accurate_verdict_a_shipped_graph_and_native_bf16(graphs):
    verdicts = registry_verdicts([*CHECKS, {"runtime": "openvino-bf16", "passed": False, "accurate": True,
                                            "note": "not timed"},
                                  {"runtime": "onnxruntime-int8", "passed": True}])  # stored before `accurate`
    (graphs / "model.int8.onnx").unlink()
    candidates, skipped = host_candidates(verdicts, graphs, {"avx2"})
    assert candidates == ["torch", "onnxruntime", "openvino"]
    assert "emulated" in skipped["openvino-bf16"] and "did not travel" in skipped["onnxruntime-int8"]
    candidates, _ = host_candidates(verdicts, graphs, {"avx512_bf16"})
    assert "openvino-bf16" in candidates
    assert host_candidates(verdicts, None, {"avx2"})[0] == ["torch"]  # no graphs shipped: torch only


def test_processes_starting_together_time_it_once(graphs, tmp_path):
    loads, choices = [], []
    threads = [threading.Thread(target=lambda: choices.append(resolve(graphs, tmp_path / "cache", loads)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads.count("torch") == 1 and sum(c.cached for c in choices) == 2
    assert len({c.runtime for c in choices}) == 1
    assert isinstance(choices[0], HostChoice) and "runs on" in choices[0].summary()


def test_an_int8_verdict_holds_only_on_cpus_with_the_int8_kernels_it_was_checked_with(graphs):
    # Measured here: an int8 classifier graph kept its accuracy with VNNI kernels and lost 0.8 point with oneDNN
    # capped at AVX2 (int16-saturating products): its verdict does not travel to the other kind of CPU.
    verdicts = registry_verdicts([{"runtime": "torch", "passed": True},
                                  {"runtime": "openvino-int8", "passed": True, "accurate": True,
                                   "int8_kernels": "vnni"},
                                  {"runtime": "onnxruntime-int8", "passed": True, "accurate": True}])  # older: no say
    candidates, skipped = host_candidates(verdicts, graphs, {"avx2", "fma"})
    assert candidates == ["torch", "onnxruntime-int8"]
    assert "checked with vnni int8 kernels, this CPU has no-vnni" in skipped["openvino-int8"]
    assert host_candidates(verdicts, graphs, {"avx2", "avx512_vnni"})[0] == ["torch", "onnxruntime-int8",
                                                                              "openvino-int8"]
