"""The CPU runtimes (cellops.runtimes) and each family's export: same outputs as torch, clear errors, honest checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from cellops.runtimes import (OPENVINO_PRECISION, RUNTIME_FILES, RUNTIME_PRECISION, RUNTIMES, RuntimeCheck,
                              check_runtime, choose_runtime, cpu_info, default_skips, export_runtime_files,
                              load_runtime, measure_runtimes, native_bf16, pin_fp32_precision, runtime_files)

#: The exported runtimes this CPU computes natively (bf16 only where the CPU has it).
EXPORTED = tuple(r for r in RUNTIME_FILES if RUNTIME_PRECISION[r] != "bf16" or native_bf16())
TOLERANCE = {"fp32": 1e-4, "bf16": 0.1, "int8": 0.1}  # rounding; bf16's 8-bit mantissa; the int8 quantisation step


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    net[1].running_mean.uniform_(-0.5, 0.5)  # BatchNorm that does something, so folding matters
    net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def exported(small_net, tmp_path_factory):
    folder = tmp_path_factory.mktemp("graphs")
    rng = np.random.default_rng(0)
    calibration = [rng.random((4, 1, 16, 16), dtype=np.float32) for _ in range(4)]
    export_runtime_files(small_net, torch.zeros(2, 1, 16, 16), calibration, folder)
    return folder


def test_every_exported_runtime_computes_what_torch_computes(small_net, exported):
    x = torch.from_numpy(np.random.default_rng(1).random((5, 1, 16, 16), dtype=np.float32))  # another batch size
    with torch.no_grad():
        expected = small_net(x)
    for runtime in EXPORTED:
        out = load_runtime(runtime, exported, small_net)(x)
        assert out.shape == expected.shape and out.dtype == torch.float32
        # fp32 graphs agree to rounding, on every CPU (OpenVINO's precision is pinned, see the test below); int8 to
        # the quantisation step of activations in [0, 1]-ish ranges.
        assert float((out - expected).abs().max()) < TOLERANCE[RUNTIME_PRECISION[runtime]], runtime
    assert load_runtime("torch", None, small_net) is small_net
    bf16 = load_runtime("torch-bf16", None, small_net)(x)
    assert bf16.dtype == torch.float32 and float((bf16 - expected).abs().max()) < 0.1
    assert [p.name for p in runtime_files(exported)] == ["model.int8.onnx", "model.onnx", "openvino_static_shapes.json"]
    assert json.loads((exported / "openvino_static_shapes.json").read_text()) == {"model.int8.onnx": True, "model.onnx": True}


def test_every_runtime_states_its_precision_and_openvino_compiles_with_it(small_net, exported):
    # A runtime left to OpenVINO's default would compute fp32 graphs in bf16 on CPUs with AVX512-BF16/AMX: each
    # OpenVINO runtime must pass its precision at compile, and the compiled model must report it, on any CPU.
    assert set(RUNTIME_PRECISION) == set(RUNTIMES)
    assert set(OPENVINO_PRECISION) == {r for r in RUNTIMES if r.startswith("openvino")}
    x = torch.rand(2, 1, 16, 16)
    for runtime in OPENVINO_PRECISION:
        module = load_runtime(runtime, exported, small_net)
        assert module.config["INFERENCE_PRECISION_HINT"] == OPENVINO_PRECISION[runtime], runtime
        if RUNTIME_PRECISION[runtime] == "bf16" and not native_bf16():
            continue  # not compiled where the CPU has no bf16 (default_skips): the stated hint is what counts there
        module(x)
        for compiled, _ in module._compiled.values():
            assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == OPENVINO_PRECISION[runtime], runtime
            assert compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == 0, runtime
    assert pin_fp32_precision()["float32_matmul_precision"] == "highest"
    assert {c.runtime: c.as_dict()["precision"] for c in [check_runtime("openvino-bf16", None, 1.0, None, 0.9, 0.01)]
            } == {"openvino-bf16": "bf16"}


def test_unknown_runtimes_and_missing_graphs_are_named(small_net, tmp_path):
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        load_runtime("tensorrt", tmp_path, small_net)
    with pytest.raises(FileNotFoundError, match="model.int8.onnx"):
        load_runtime("openvino-int8", tmp_path, small_net)
    with pytest.raises(ValueError, match="needs the folder"):
        load_runtime("onnxruntime", None, small_net)


def test_the_chosen_runtime_is_the_fastest_that_kept_its_metric():
    checks = [check_runtime("torch", 2.0, 2.0, 0.90, 0.90, 0.002),
              check_runtime("onnxruntime", 1.0, 2.0, 0.899, 0.90, 0.002),     # 2x, within tolerance
              check_runtime("openvino-int8", 0.5, 2.0, 0.85, 0.90, 0.002),    # 4x, but lost 0.05
              check_runtime("openvino", 1.96, 2.0, 0.90, 0.90, 0.002),        # a tie with torch: not worth it
              check_runtime("torch-bf16", None, 2.0, None, 0.90, 0.002, "no AVX512-BF16")]
    assert [c.passed for c in checks] == [True, True, False, True, False]
    assert "changed by -0.05" in checks[2].note and checks[4].note == "no AVX512-BF16"
    assert not check_runtime("onnxruntime-int8", 1.0, 2.0, 0.905, 0.90, 0.002).passed  # better is a change too
    assert choose_runtime(checks) == "onnxruntime"
    assert choose_runtime(checks[:1] + checks[2:]) == "torch"  # nothing both faster and as accurate
    json.dumps([c.as_dict() for c in checks])  # what the registry stores


def test_a_runtime_that_fails_is_recorded_not_raised(small_net):
    def module_for(runtime):
        if runtime == "openvino":
            raise RuntimeError("no CPU plugin")
        return small_net

    x = torch.rand(2, 1, 8, 8)
    checks = measure_runtimes(module_for, lambda m: float(m(x).mean()),
                              ["onnxruntime", "openvino", "torch-bf16", "openvino-bf16"], 0.01, repeats=1,
                              skip={"openvino-bf16": "not installed"}, untimed={"torch-bf16": "emulated"})
    by = {c.runtime: c for c in checks}
    assert list(by) == ["torch", "onnxruntime", "openvino", "torch-bf16", "openvino-bf16"]
    assert by["torch"].passed and by["onnxruntime"].passed and by["onnxruntime"].change == 0
    assert not by["openvino"].passed and "no CPU plugin" in by["openvino"].note and by["openvino"].accurate is None
    # Untimed: not chosen here, but its accuracy verdict is kept for the hosts that compute bf16 natively.
    assert not by["torch-bf16"].passed and by["torch-bf16"].note == "emulated" and by["torch-bf16"].seconds is None
    assert by["torch-bf16"].accurate is True and by["torch-bf16"].change == 0
    assert by["openvino-bf16"].accurate is None and by["openvino-bf16"].note == "not installed"
    assert isinstance(checks[0], RuntimeCheck)


def test_bf16_is_measured_only_where_the_cpu_computes_it():
    assert native_bf16({"avx512f", "amx_bf16"}) and not native_bf16({"avx2", "fma"})
    assert set(default_skips(RUNTIMES, {"avx2"})) == {"torch-bf16", "openvino-bf16"}
    assert default_skips(RUNTIMES, {"avx512_bf16"}) == {}


def test_machine_info_names_the_cpu_kernels_and_versions():
    info = cpu_info()
    assert info["cpu_model"] and info["torch_threads"] >= 1 and isinstance(info["isa_flags"], list)
    assert info["torch_cpu_capability"] in ("DEFAULT", "AVX2", "AVX512", "AVX512_BF16")
    assert info["versions"]["onnxruntime"] and info["versions"]["openvino"] and info["versions"]["torch"]
    assert "FP32" in info["openvino_capabilities"] and info["openvino_device"]


def test_unet_runtimes_segment_like_torch(tmp_path):
    from cellops.unet.predict import load_for_inference, segment
    from cellops.unet.specs import UNetServing
    from cellops.unet.runtime import export_unet
    from models.unet import UNet

    rng = np.random.default_rng(0)
    volume = (rng.random((2, 48, 40)) * 255).astype(np.uint8)
    settings = UNetServing(tile_size=32, tile_overlap=0.25, batch_size=4, threshold=0.5)
    model = UNet(base_channels=4, depth=2).eval()
    fast = export_unet(model, volume, settings, tmp_path)
    tiles = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        logits = fast(tiles)
        for runtime in ("onnxruntime", "openvino"):
            assert float((load_runtime(runtime, tmp_path, fast)(tiles) - logits).abs().max()) < 1e-4, runtime
    masks = {r: segment(load_runtime(r, tmp_path, fast), volume, settings) for r in ("torch", "onnxruntime")}
    assert np.array_equal(masks["torch"], masks["onnxruntime"])
    assert np.array_equal(segment(load_for_inference(model), volume, settings), masks["torch"])


def test_classifier_runtimes_give_the_same_probabilities_and_maps(tmp_path):
    from cellops.classifier.predict import explain
    from cellops.classifier.runtime import export_classifier, runtime_classifier
    from models.classifier import build_classifier

    images = np.random.default_rng(0).random((6, 1, 48, 48), dtype=np.float32)
    fast = export_classifier(build_classifier("efficientcellnet", num_classes=2, in_channels=1).eval(), images, tmp_path,
                             batch_size=3)
    reference = explain(fast, images, 4)
    other_class = explain(fast, images, 4, decide=lambda p: 1 - p.argmax(axis=1))[1]
    for runtime in ("onnxruntime", "openvino"):
        module = runtime_classifier(runtime, tmp_path, fast)
        probabilities, maps = explain(module, images, 4)
        assert np.abs(probabilities - reference[0]).max() < 1e-4 and np.abs(maps - reference[1]).max() < 1e-4
        # Another class than the most probable one: its map, from the graph's maps of every class.
        assert np.abs(explain(module, images, 4, decide=lambda p: 1 - p.argmax(axis=1))[1] - other_class).max() < 1e-4
    with pytest.raises(FileNotFoundError):
        runtime_classifier("onnxruntime", tmp_path / "missing", fast)


def test_a_classifier_graph_of_the_trunk_alone_still_explains(tmp_path):
    """Graphs registered before the CAM path was exported hold the trunk alone; the rest then runs in torch."""
    from cellops.classifier.predict import explain
    from cellops.classifier.runtime import _Trunk, runtime_classifier
    from cellops.inference import prepare_for_inference
    from cellops.runtimes import export_onnx
    from models.classifier import build_classifier

    images = np.random.default_rng(1).random((5, 1, 48, 48), dtype=np.float32)
    fast = prepare_for_inference(build_classifier("efficientcellnet", num_classes=2, in_channels=1).eval())
    export_onnx(_Trunk(fast), torch.from_numpy(images[:2]), tmp_path / "model.onnx")
    probabilities, maps = explain(runtime_classifier("onnxruntime", tmp_path, fast), images, 2)
    reference = explain(fast, images, 2)
    assert np.abs(probabilities - reference[0]).max() < 1e-4 and np.abs(maps - reference[1]).max() < 1e-4


def test_maskrcnn_backbone_runtime_detects_what_torch_detects(tmp_path):
    from cellops.maskrcnn.runtime import export_maskrcnn, with_runtime
    from cellops.config import from_mapping
    from models.maskrcnn import MaskRCNNSettings, build_maskrcnn

    settings = from_mapping(MaskRCNNSettings, {"backbone": "resnet18", "fpn_channels": 16, "representation_size": 32,
                                           "mask_head_layers": 1, "min_size": 96, "max_size": 96,
                                           "anchor_sizes": [16, 32, 64, 128, 256], "score_threshold": 0.0,
                                           "detections_per_image": 10})
    model = build_maskrcnn(settings, 2).eval()
    images = [torch.rand(3, 96, 80), torch.rand(3, 96, 96)]
    names = export_maskrcnn(model, images, tmp_path)
    assert names == ["0", "1", "2", "3", "pool"]
    image = torch.rand(3, 64, 112)  # another size than the export's: the graph's sizes are dynamic
    with torch.no_grad():
        expected = model([image])[0]
        served = with_runtime(model, "onnxruntime", tmp_path)([image])[0]
    assert torch.equal(expected["labels"], served["labels"])
    assert torch.allclose(expected["scores"], served["scores"], atol=1e-4)
    assert torch.allclose(expected["boxes"], served["boxes"], atol=1e-2)
    assert with_runtime(model, "torch", tmp_path) is model and model.backbone.__class__.__name__ != "RuntimeBackbone"


def test_the_service_times_the_accurate_runtimes_on_its_cpu_unless_the_operator_overrides_it(
        small_net, exported, monkeypatch, tmp_path):
    import shutil

    import bentoml
    from bentoml.exceptions import BentoMLException

    from bento import runtime as served
    from bento.runtime import RUNTIME_ENV, load_serving_runtime, serving_runtime
    from cellops.host_runtime import CACHE_ENV

    settings = {"family": "unet", "tile_size": 16, "tile_overlap": 4, "batch_size": 2, "threshold": 0.5}
    checks = [{"runtime": "torch", "passed": True, "accurate": True},
              {"runtime": "onnxruntime", "passed": True, "accurate": True, "speedup": 1.3},
              {"runtime": "onnxruntime-int8", "passed": False, "accurate": False, "note": "metric changed by -0.2"}]
    with bentoml.models.create("cellops-runtime-test", metadata={
            "runtime": "onnxruntime", "runtime_checks": checks, "inference_settings": settings,
            "registered_model": "cellops-runtime-test", "model_version": "1", "mlflow_run_id": "r" * 32}) as created:
        shutil.copytree(exported, created.path_of("runtimes"), ignore=shutil.ignore_patterns("*.int8.onnx"))
    model = bentoml.models.get(created.tag)

    def load(runtime, folder):
        return load_runtime(runtime, folder, small_net)

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "choices"))
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    # An entry process (no network) before the model process has timed anything: the registry's choice, so marked.
    monkeypatch.setattr(served, "WAIT_FOR_CHOICE_S", 0.0)
    early = serving_runtime(model)
    assert early["reason"] == "not timed here yet" and early["runtime"] == "onnxruntime"
    # The model process times torch and the accurate runtime whose graph travelled; the inaccurate one is no candidate.
    loaded = load_serving_runtime(model, load)
    serving = serving_runtime(model)  # then read back by any process of this host
    assert set(serving["host_timings"]["seconds"]) == {"torch", "onnxruntime"} and not serving["overridden"]
    assert serving["host_timings"]["cached"] and serving["reason"] in ("fastest here", "no faster runtime")
    assert "inaccurate at registration" in serving["host_timings"]["skipped"]["onnxruntime-int8"]
    assert serving["runtime"] in ("torch", "onnxruntime") and serving["chosen_by_registry"] == "onnxruntime"
    assert serving["registry_verdicts"]["onnxruntime-int8"]["accurate"] is False and serving["cpu"]
    assert serving["versions"]["onnxruntime"] and isinstance(serving["isa"], list) and serving["host"]["key"]
    assert len(list((tmp_path / "choices").glob("*.json"))) == 1
    assert (loaded is small_net) == (serving["runtime"] == "torch")
    monkeypatch.setenv(RUNTIME_ENV, "torch")
    assert serving_runtime(model)["overridden"] and load_serving_runtime(model, load) is small_net
    monkeypatch.setenv(RUNTIME_ENV, "tensorrt")
    with pytest.raises(BentoMLException, match="CELLOPS_RUNTIME='tensorrt' is not a runtime"):
        serving_runtime(model)
    monkeypatch.setenv(RUNTIME_ENV, "openvino-int8")  # its graph was not shipped: refused, with the way out
    with pytest.raises(BentoMLException, match="cannot load the 'openvino-int8' runtime.*CELLOPS_RUNTIME=torch"):
        load_serving_runtime(model, load)


def test_a_graph_openvino_cannot_compile_with_static_shapes_runs_dynamic(small_net, exported, tmp_path):
    import shutil

    from cellops.runtimes import OPENVINO_SHAPES, OpenVinoModule, probe_static_shapes

    shutil.copy(exported / "model.onnx", tmp_path / "model.onnx")
    (tmp_path / "model.int8.onnx").write_bytes(b"not a graph")  # what a crashing compile looks like to the probe
    assert probe_static_shapes(tmp_path, (2, 1, 16, 16)) == {"model.int8.onnx": False, "model.onnx": True}
    assert json.loads((tmp_path / OPENVINO_SHAPES).read_text())["model.onnx"] is True
    module = load_runtime("openvino", tmp_path, small_net)
    assert isinstance(module, OpenVinoModule) and module.static_shapes
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert float((module(x) - small_net(x)).abs().max()) < 1e-4
    (tmp_path / OPENVINO_SHAPES).write_text(json.dumps({"model.onnx": False}))
    assert not load_runtime("openvino", tmp_path, small_net).static_shapes


def test_openvino_with_static_shapes_pads_batches_to_powers_of_two(small_net, exported):
    # A served batch of any size compiles at most one shape per power of two (each new shape costs a compile).
    from cellops.runtimes import OpenVinoModule

    module = OpenVinoModule(exported / "model.onnx", static_shapes=True)
    x = torch.from_numpy(np.random.default_rng(2).random((5, 1, 16, 16), dtype=np.float32))
    with torch.no_grad():
        expected = small_net(x)
    for rows in (5, 3, 7, 8, 6):
        out = module(x[:rows] if rows <= 5 else torch.cat([x, x])[:rows])
        assert out.shape[0] == rows
    assert float((module(x) - expected).abs().max()) < 1e-4
    assert sorted(shape[0] for shape in module._compiled) == [4, 8]
