"""Faster CPU runtimes for a trained network, each checked against torch fp32 before it may serve.

A network is exported once to ONNX (the legacy TorchScript exporter: a fixed, traced graph, in a fraction of a
second) and can then run in

* ``torch``: eager fp32 with BatchNorm folded and channels-last (the baseline every other runtime is measured
  against, see :func:`cellops.inference.prepare_for_inference`);
* ``torch-bf16``: the same under ``torch.autocast(bfloat16)``; it pays only where the CPU has AVX512-BF16 or AMX
  (:func:`native_bf16`), elsewhere oneDNN emulates bf16 and it is slower;
* ``onnxruntime`` / ``openvino``: the ONNX graph in ONNX Runtime's or OpenVINO's CPU plugin, fp32;
* ``openvino-bf16``: the same graph with OpenVINO's inference precision set to bf16; measured, like ``torch-bf16``,
  only where the CPU has AVX512-BF16 or AMX;
* ``onnxruntime-int8`` / ``openvino-int8``: the graph quantised to int8 (QDQ, per-channel weights) by ONNX
  Runtime's static post-training quantisation, calibrated on training images; OpenVINO reads the same QDQ graph
  and runs it with its low-precision kernels.

Every runtime is wrapped as a ``torch.nn.Module`` that takes and returns float32 tensors, so the code that takes a
model (sliding-window tiling, class-activation maps, Mask R-CNN's heads) takes any runtime unchanged. Which runtime
serves is decided by measurement (:class:`RuntimeCheck`, :func:`choose_runtime`): the fastest whose task metric
stays within its tolerance of torch fp32's.

Every runtime states its precision (:data:`RUNTIME_PRECISION`) and sets it explicitly, never through a library
default that depends on the CPU: OpenVINO's CPU plugin computes an fp32 graph in bf16 by default on CPUs with
native bf16, so every OpenVINO runtime is compiled with its ``INFERENCE_PRECISION_HINT``
(:data:`OPENVINO_PRECISION`); ONNX Runtime's bf16 fast-math switch is set off; torch's fp32 convolutions and
matrix products are pinned to IEEE fp32 (:func:`pin_fp32_precision`).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

BASELINE = "torch"
#: Every runtime, in the order they are tried.
RUNTIMES = ("torch", "torch-bf16", "onnxruntime", "openvino", "openvino-bf16", "onnxruntime-int8", "openvino-int8")
#: The precision each runtime computes in (int8: quantised weights and activations, fp32 elsewhere).
RUNTIME_PRECISION = {"torch": "fp32", "torch-bf16": "bf16", "onnxruntime": "fp32", "openvino": "fp32",
                     "openvino-bf16": "bf16", "onnxruntime-int8": "int8", "openvino-int8": "int8"}
#: Runtimes that compute in bf16: measured only where the CPU has it in hardware (:func:`default_skips`).
BF16_RUNTIMES = tuple(name for name, precision in RUNTIME_PRECISION.items() if precision == "bf16")
#: OpenVINO's ``INFERENCE_PRECISION_HINT`` for each OpenVINO runtime, always passed at compile: left out, the CPU
#: plugin picks bf16 on CPUs with AVX512-BF16/AMX and f32 elsewhere. int8 graphs keep their quantised operations;
#: the hint sets the precision of every other one.
OPENVINO_PRECISION = {"openvino": "f32", "openvino-bf16": "bf16", "openvino-int8": "f32"}
#: The file each exported runtime reads, relative to the export folder.
RUNTIME_FILES = {"onnxruntime": "model.onnx", "openvino": "model.onnx", "openvino-bf16": "model.onnx",
                 "onnxruntime-int8": "model.int8.onnx", "openvino-int8": "model.int8.onnx"}
INPUT_NAME = "input"
#: CPU flags that decide which kernels can run (``/proc/cpuinfo`` names).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` is not readable).

    Returns
    -------
    set of str
        The ``flags`` of ``/proc/cpuinfo`` (e.g. ``avx2``).
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX), the only case where bf16 autocast pays.

    Parameters
    ----------
    flags : set of str or None, optional
        CPU flags; by default this CPU's (:func:`cpu_flags`).

    Returns
    -------
    bool
        True with ``avx512_bf16`` or ``amx_bf16``.

    Examples
    --------
    >>> native_bf16({"avx2", "fma"}), native_bf16({"avx512f", "avx512_bf16"})
    (False, True)

    ``ONEDNN_MAX_CPU_ISA`` below ``AVX512_CORE_BF16`` (e.g. ``AVX2``, to measure what an AVX2 CPU would do) caps it:

    >>> import os; os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    >>> native_bf16({"avx512f", "avx512_bf16"})
    False
    >>> del os.environ["ONEDNN_MAX_CPU_ISA"]
    """
    flags = cpu_flags() if flags is None else flags
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if limit and limit not in ("ALL", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10_1_512",
                               "AVX10_1_512_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512",
                               "AVX10_2_512_AMX_2", "DEFAULT"):
        return False  # oneDNN told to stay below bf16 instructions: bf16 would be emulated
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def int8_kernels(flags: set[str] | None = None) -> str:
    """Which int8 kernels this CPU runs: ``vnni`` (AVX512-VNNI, AVX-VNNI or AMX: int8 products accumulated in int32)
    or ``no-vnni`` (AVX2's ``vpmaddubsw``, which saturates pairs of products in int16). The two can round an int8
    graph differently enough to move a metric (a classifier's accuracy by 0.8 point here), so an int8 runtime's
    accuracy verdict holds only on CPUs of the kind it was checked on (:mod:`cellops.host_runtime`).
    ``ONEDNN_MAX_CPU_ISA`` at ``AVX2`` or below, or at ``AVX512_CORE`` (no VNNI), caps it.

    Parameters
    ----------
    flags : set of str or None, optional
        CPU flags; by default this CPU's.

    Returns
    -------
    str
        ``vnni`` or ``no-vnni``.

    Examples
    --------
    >>> int8_kernels({"avx2", "avx512_vnni"}), int8_kernels({"avx2", "fma"})
    ('vnni', 'no-vnni')
    """
    flags = cpu_flags() if flags is None else flags
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if limit in ("SSE41", "AVX", "AVX2", "AVX512_CORE"):
        return "no-vnni"
    return "vnni" if {"avx512_vnni", "avx_vnni", "amx_int8"} & flags else "no-vnni"


def cpu_info() -> dict:
    """What ran a measurement: CPU model, the ISA flags that matter, cores and threads, the kernels torch's oneDNN
    and OpenVINO's CPU plugin pick, and the library versions.

    Returns
    -------
    dict
        ``cpu_model``, ``isa_flags``, ``logical_cpus``, ``usable_cpus``, torch's threads, capability and fp32
        precision, ``native_bf16``, ``python``, ``versions`` and OpenVINO's device and capabilities.
    """
    flags = cpu_flags()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu_model": model,
        "isa_flags": [flag for flag in ISA_FLAGS if flag in flags],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_available": torch.backends.mkldnn.is_available(),
        "native_bf16": native_bf16(flags),
        "torch_fp32_precision": pin_fp32_precision(),
        "python": platform.python_version(),
        "versions": library_versions(),
    }
    try:
        import openvino as ov

        core = ov.Core()
        info["openvino_device"] = core.get_property("CPU", "FULL_DEVICE_NAME")
        info["openvino_capabilities"] = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception as error:  # noqa: BLE001 - reported, not fatal: the torch runtimes still run
        info["openvino_device"] = f"unavailable: {error}"
    return info


def library_versions(names: Sequence[str] = ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "openvino",
                                             "monai", "grad-cam", "pycocotools", "faster-coco-eval",
                                             "scikit-image", "opencv-python-headless")) -> dict[str, str]:
    """Installed versions of ``names`` (``None`` where one is not installed).

    Parameters
    ----------
    names : sequence of str, optional
        Distribution names.

    Returns
    -------
    dict of str to str
        Each name's version, None where it is not installed.

    Examples
    --------
    >>> library_versions(["numpy", "no-such-distribution"])["no-such-distribution"] is None
    True
    """
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *,
                dynamic_axes: dict[int, str] | None = None, output_names: Sequence[str] = ("output",)) -> Path:
    """Trace ``model`` (eval mode) on ``example`` into an ONNX file; ``dynamic_axes`` maps input/output axes to
    names that may vary (batch by default).

    Parameters
    ----------
    model : nn.Module
        The model (put in eval mode).
    example : torch.Tensor
        An input to trace with.
    path : str or Path
        The ONNX file to write (its folder is created).
    dynamic_axes : dict of int to str or None, optional
        Input axes whose size may vary, with their names; by default the batch axis.
    output_names : sequence of str, optional
        Names of the graph's outputs.

    Returns
    -------
    Path
        The file written.

    Examples
    --------
    >>> import tempfile
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()).eval()
    >>> path = export_onnx(net, torch.rand(2, 1, 8, 8), Path(tempfile.mkdtemp()) / "net.onnx")
    >>> path.stat().st_size > 0
    True
    """
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = dynamic_axes or {0: "batch"}
    # Outputs share the batch with the input, not necessarily its other dynamic sizes (an FPN level is smaller).
    dynamic = {INPUT_NAME: axes, **{name: {axis: label if label == "batch" else f"{name}_{label}"
                                           for axis, label in axes.items()} for name in output_names}}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=17,
                          input_names=[INPUT_NAME], output_names=list(output_names), dynamic_axes=dynamic)
    return path


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over float32 input batches."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}


def quantize_int8(onnx_path: str | Path, calibration: Iterable[np.ndarray], out_path: str | Path) -> Path:
    """Static post-training int8 quantisation of an fp32 ONNX graph (QDQ format, per-channel int8 weights, uint8
    activations whose ranges come from the ``calibration`` batches: training images, never the test set).

    Parameters
    ----------
    onnx_path : str or Path
        The fp32 graph.
    calibration : iterable of np.ndarray
        Input batches whose activation ranges set the quantisation.
    out_path : str or Path
        The int8 graph to write.

    Returns
    -------
    Path
        The file written.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    prepared = out_path.with_suffix(".prep.onnx")
    quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(str(prepared), str(out_path), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        prepared.unlink(missing_ok=True)
    return out_path


class OnnxRuntimeModule(nn.Module):
    """An ONNX graph in ONNX Runtime's CPU provider, called like the module it was exported from (one float32
    tensor in; one tensor, or a tuple where the graph has several outputs, out).

    Parameters
    ----------
    path : str or Path
        The ONNX file.
    threads : int or None, optional
        Intra-op threads; by default torch's.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # fp32 stays fp32: the bf16 fast-math GEMM (off by default, ARM only today) is pinned off, not left to a default.
        options.add_session_config_entry("mlas.enable_gemm_fastmath_arm64_bfloat16", "0")
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor):
        """Run the graph on ``x``.

        Parameters
        ----------
        x : torch.Tensor
            The input batch (sent as float32).

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            The output, or the outputs where the graph has several.
        """
        outputs = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)})
        tensors = tuple(torch.from_numpy(output) for output in outputs)
        return tensors[0] if len(tensors) == 1 else tensors


class OpenVinoModule(nn.Module):
    """An ONNX graph compiled by OpenVINO for its CPU plugin (latency hint: one request at a time, all threads), in
    the stated ``precision`` (``"f32"`` or ``"bf16"``, OpenVINO's ``INFERENCE_PRECISION_HINT``; never the plugin's
    default, which is bf16 on CPUs with native bf16 and f32 elsewhere).

    With ``static_shapes`` the graph is compiled once per input shape, with that shape fixed: OpenVINO's CPU kernels
    for static shapes are faster than its dynamic-shape path (int8 U-Net tiles: 5.1 M against 4.0 M voxels/s on 2
    cores). The last ``max_shapes`` shapes stay compiled; sliding-window inference uses two (full and last batch).
    Only graphs :func:`probe_static_shapes` found safe get it: OpenVINO 2026.4 crashes the process compiling some
    int8 graphs (DenseNet121's) with static shapes.

    Parameters
    ----------
    path : str or Path
        The ONNX file.
    threads : int or None, optional
        Inference threads; by default torch's.
    max_shapes : int, optional
        Input shapes kept compiled with ``static_shapes``.
    static_shapes : bool, optional
        Compile once per input shape, that shape fixed.
    precision : str, optional
        ``"f32"`` or ``"bf16"``.
    """

    def __init__(self, path: str | Path, threads: int | None = None, max_shapes: int = 8,
                 static_shapes: bool = False, precision: str = "f32") -> None:
        super().__init__()
        import openvino as ov

        if precision not in ("f32", "bf16"):
            raise ValueError(f"OpenVINO precision must be 'f32' or 'bf16', got {precision!r}")
        self.core = ov.Core()
        self.path = str(path)
        self.graph = self.core.read_model(self.path)  # parsed once; reshaped copies are compiled
        self.precision = precision
        # ACCURACY mode would also forbid lower precisions, but silently slows fp32 too; the hint alone is exact.
        # Dynamic quantisation of activations (group size 32 by default on this plugin) is off: a graph's int8 is
        # its own QDQ nodes, never the plugin's choice.
        self.config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
                       "INFERENCE_PRECISION_HINT": precision, "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}
        self.max_shapes, self.static_shapes = max_shapes, static_shapes
        self._compiled: dict[tuple[int, ...] | None, tuple] = {}

    def _request(self, shape: tuple[int, ...]):
        if not self.static_shapes:
            if None not in self._compiled:
                compiled = self.core.compile_model(self.graph, "CPU", self.config)
                self._compiled[None] = (compiled, compiled.create_infer_request())
            return self._compiled[None]
        if shape not in self._compiled:
            if len(self._compiled) >= self.max_shapes:
                self._compiled.pop(next(iter(self._compiled)))  # the oldest
            graph = self.graph.clone()
            graph.reshape({graph.inputs[0].any_name: list(shape)})
            compiled = self.core.compile_model(graph, "CPU", self.config)
            self._compiled[shape] = (compiled, compiled.create_infer_request())
        return self._compiled[shape]

    def forward(self, x: torch.Tensor):
        """Run the compiled graph on ``x``.

        Parameters
        ----------
        x : torch.Tensor
            The input batch (sent as float32).

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            The output, or the outputs where the graph has several.
        """
        data = np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)
        rows = len(data)
        if self.static_shapes and rows & (rows - 1):
            # Batches padded to a power of two: a served batch of any size 1-64 then needs at most 7 compiled shapes,
            # within the ones kept, where each new size would compile anew (80-225 ms). Rows are independent.
            padding = np.zeros(((1 << (rows - 1).bit_length()) - rows, *data.shape[1:]), np.float32)
            data = np.concatenate([data, padding])
        compiled, request = self._request(tuple(data.shape))
        # The request reads the batch where it lies (synchronous call) and answers arrays of its own: no copy either way.
        result = request.infer({0: data}, share_inputs=True)
        tensors = tuple(torch.from_numpy(result[output][:rows]) for output in compiled.outputs)
        return tensors[0] if len(tensors) == 1 else tensors


class Bf16Module(nn.Module):
    """``module`` under CPU bf16 autocast, answering float32.

    Parameters
    ----------
    module : nn.Module
        The fp32 model.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor):
        """Run ``module`` on ``x`` under bf16 autocast.

        Parameters
        ----------
        x : torch.Tensor
            The input batch.

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            The output(s), as float32.
        """
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.module(x)
        return out.float() if isinstance(out, torch.Tensor) else tuple(o.float() for o in out)


def export_runtime_files(model: nn.Module, example: torch.Tensor, calibration: Sequence[np.ndarray],
                         folder: str | Path, *, dynamic_axes: dict[int, str] | None = None,
                         output_names: Sequence[str] = ("output",)) -> dict[str, Path]:
    """Write the fp32 and int8 ONNX graphs of ``model`` (already folded for inference) into ``folder``; returns
    {file name: path}.

    Parameters
    ----------
    model : nn.Module
        The model, folded for inference.
    example : torch.Tensor
        An input to trace with (its shape is also the one OpenVINO's static compilation is probed with).
    calibration : sequence of np.ndarray
        Input batches for int8 calibration (training data).
    folder : str or Path
        Where the graphs are written.
    dynamic_axes : dict of int to str or None, optional
        Input axes whose size may vary; by default the batch axis.
    output_names : sequence of str, optional
        Names of the graph's outputs.

    Returns
    -------
    dict of str to Path
        The fp32 and int8 graphs by file name.
    """
    folder = Path(folder)
    fp32 = export_onnx(model, example, folder / RUNTIME_FILES["onnxruntime"], dynamic_axes=dynamic_axes,
                       output_names=output_names)
    int8 = quantize_int8(fp32, calibration, folder / RUNTIME_FILES["onnxruntime-int8"])
    probe_static_shapes(folder, tuple(example.shape))
    return {fp32.name: fp32, int8.name: int8}


#: Which OpenVINO graphs compile safely with static shapes (written by :func:`probe_static_shapes`).
OPENVINO_SHAPES = "openvino_static_shapes.json"
_PROBE = ("import sys, openvino as ov; core = ov.Core(); graph = core.read_model(sys.argv[1]); "
          "graph.reshape({graph.inputs[0].any_name: [int(v) for v in sys.argv[2].split(',')]}); "
          "core.compile_model(graph, 'CPU')")


def probe_static_shapes(folder: str | Path, shape: tuple[int, ...]) -> dict[str, bool]:
    """Compile each ONNX graph in ``folder`` with OpenVINO, its input fixed to ``shape``, each in a child process
    (a crash there costs nothing), and record in ``openvino_static_shapes.json`` which ones did; the others run on
    OpenVINO's dynamic-shape path.

    Parameters
    ----------
    folder : str or Path
        The folder of the exported graphs.
    shape : tuple of int
        The input shape compiled.

    Returns
    -------
    dict of str to bool
        Each graph's file name and whether it compiled.
    """
    import json
    import subprocess
    import sys

    folder = Path(folder)
    safe = {}
    for name in sorted(set(RUNTIME_FILES.values())):
        if (folder / name).is_file():
            child = subprocess.run([sys.executable, "-c", _PROBE, str(folder / name), ",".join(map(str, shape))],
                                   capture_output=True, timeout=600)
            safe[name] = child.returncode == 0
    (folder / OPENVINO_SHAPES).write_text(json.dumps(safe, indent=1))
    return safe


def runtime_files(folder: str | Path) -> list[Path]:
    """The exported graphs in ``folder`` and what was learnt about them (what a registry or a bento has to carry for
    the exported runtimes).

    Parameters
    ----------
    folder : str or Path
        The folder of the exported graphs.

    Returns
    -------
    list of Path
        The files there, sorted.

    Examples
    --------
    >>> import tempfile
    >>> runtime_files(tempfile.mkdtemp())
    []
    """
    names = {*RUNTIME_FILES.values(), OPENVINO_SHAPES}
    return sorted(path for name in names if (path := Path(folder) / name).is_file())


def load_runtime(runtime: str, folder: str | Path | None, model: nn.Module, threads: int | None = None) -> nn.Module:
    """The module that runs ``runtime``: ``model`` itself (``torch``), under bf16 autocast, or the exported graph
    in ``folder`` in ONNX Runtime or OpenVINO.

    Parameters
    ----------
    runtime : str
        One of :data:`RUNTIMES`.
    folder : str or Path or None
        The folder of the exported graphs (not needed for ``torch`` and ``torch-bf16``).
    model : nn.Module
        The torch model, folded for inference.
    threads : int or None, optional
        Threads of ONNX Runtime or OpenVINO; by default torch's.

    Returns
    -------
    nn.Module
        A module called like ``model``.

    Raises
    ------
    ValueError
        For an unknown runtime, or no folder where one is needed.
    FileNotFoundError
        When the runtime's graph is not in ``folder``.

    Examples
    --------
    >>> layer = nn.Linear(2, 1)
    >>> load_runtime("torch", None, layer) is layer, type(load_runtime("torch-bf16", None, layer)).__name__
    (True, 'Bf16Module')
    """
    if runtime == "torch":
        return model
    if runtime == "torch-bf16":
        return Bf16Module(model)
    if runtime not in RUNTIME_FILES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {list(RUNTIMES)}")
    if folder is None:
        raise ValueError(f"runtime {runtime!r} needs the folder of its exported graph")
    path = Path(folder) / RUNTIME_FILES[runtime]
    if not path.is_file():
        raise FileNotFoundError(f"runtime {runtime!r} needs {path}, which does not exist")
    if runtime.startswith("openvino"):
        import json

        probed = Path(folder) / OPENVINO_SHAPES
        static = json.loads(probed.read_text()).get(path.name, False) if probed.is_file() else False
        return OpenVinoModule(path, threads, static_shapes=static, precision=OPENVINO_PRECISION[runtime])
    return OnnxRuntimeModule(path, threads)


def best_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Best wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed ones.

    Parameters
    ----------
    fn : callable
        What to time.
    repeats : int, optional
        Timed calls.
    warmup : int, optional
        Untimed calls first.

    Returns
    -------
    float
        The shortest time, in seconds.

    Examples
    --------
    >>> best_time(lambda: None, repeats=2) >= 0.0
    True
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@dataclass(frozen=True)
class RuntimeCheck:
    """One runtime measured against torch fp32 on the same inputs: its time, its task metric and whether the
    metric stayed within ``tolerance`` of torch's (``change`` = metric - baseline metric; ``passed`` needs
    ``|change| <= tolerance`` and a ``seconds`` figure: a runtime must preserve the model's outputs, so a metric
    that moves either way beyond the tolerance fails).

    Attributes
    ----------
    runtime : str
        One of :data:`RUNTIMES`.
    seconds : float or None
        Best time of the task (None: not measured).
    speedup : float or None
        Torch fp32's time over this one.
    metric : float or None
        The task metric with this runtime.
    change : float or None
        ``metric`` minus torch fp32's.
    tolerance : float
        Largest ``|change|`` accepted.
    passed : bool
        Whether the metric stayed within ``tolerance`` and a time was measured.
    note : str, optional
        Why it failed or was skipped.
    accurate : bool or None, optional
        Whether the metric stayed within ``tolerance``, timed or not: the verdict a serving host relies on
        (:mod:`cellops.host_runtime`), since accuracy does not depend on the CPU and speed does. None where no
        metric was measured.
    """

    runtime: str
    seconds: float | None
    speedup: float | None
    metric: float | None
    change: float | None
    tolerance: float
    passed: bool
    note: str = ""
    accurate: bool | None = None

    @property
    def precision(self) -> str:
        """The precision the runtime computes in (:data:`RUNTIME_PRECISION`)."""
        return RUNTIME_PRECISION.get(self.runtime, "unknown")

    def as_dict(self) -> dict:
        """The fields and the precision, as logged and stored.

        Returns
        -------
        dict
            Every field, plus ``precision``.

        Examples
        --------
        >>> RuntimeCheck("onnxruntime-int8", 1.0, 2.0, 0.9, 0.0, 0.01, True).as_dict()["precision"]
        'int8'
        """
        return {**asdict(self), "precision": self.precision}


def check_runtime(runtime: str, seconds: float | None, baseline_seconds: float, metric: float | None,
                  baseline_metric: float, tolerance: float, note: str = "") -> RuntimeCheck:
    """Compare a runtime's time and metric with the baseline's.

    Parameters
    ----------
    runtime : str
        The runtime's name.
    seconds : float or None
        Its best time (None: not measured).
    baseline_seconds : float
        Torch fp32's best time.
    metric : float or None
        Its task metric (None: not measured).
    baseline_metric : float
        Torch fp32's metric.
    tolerance : float
        Largest metric change accepted, either way.
    note : str, optional
        Why it was not measured.

    Returns
    -------
    RuntimeCheck
        The comparison.

    Examples
    --------
    >>> check_runtime("openvino", 1.0, 2.0, 0.899, 0.9, 0.002).passed
    True
    >>> check_runtime("openvino-int8", 0.5, 2.0, 0.85, 0.9, 0.002).note
    'metric changed by -0.05 (tolerance 0.002)'
    """
    if metric is None:
        return RuntimeCheck(runtime, seconds, None, metric, None, tolerance, False, note or "not measured")
    change = metric - baseline_metric
    accurate = abs(change) <= tolerance + 1e-12
    if not accurate:
        note = f"metric changed by {change:+.4g} (tolerance {tolerance:g})" + (f"; {note}" if note else "")
    if seconds is None:  # accuracy measured, speed not (e.g. bf16 emulated here): a serving host may still time it
        return RuntimeCheck(runtime, None, None, round(metric, 6), round(change, 6), tolerance, False,
                            note or "not timed", accurate)
    return RuntimeCheck(runtime, round(seconds, 4), round(baseline_seconds / seconds, 2), round(metric, 6),
                        round(change, 6), tolerance, accurate, note, accurate)


def choose_runtime(checks: Sequence[RuntimeCheck], min_speedup: float = 1.05) -> str:
    """The fastest runtime that passed its accuracy check and is at least ``min_speedup`` times faster than torch
    fp32 (a tie is not worth a second runtime); ``torch`` where none is.

    Parameters
    ----------
    checks : sequence of RuntimeCheck
        The measured runtimes.
    min_speedup : float, optional
        Least speed-up over torch fp32 worth a runtime.

    Returns
    -------
    str
        The chosen runtime's name.

    Examples
    --------
    >>> a = RuntimeCheck("openvino", 1.0, 2.0, 0.9, 0.0, 0.002, True)
    >>> b = RuntimeCheck("openvino-int8", 0.5, 4.0, 0.7, -0.2, 0.002, False)
    >>> choose_runtime([a, b])
    'openvino'
    """
    passed = [c for c in checks if c.passed and c.runtime != BASELINE and (c.speedup or 0) >= min_speedup]
    return min(passed, key=lambda c: c.seconds).runtime if passed else BASELINE


def interleaved_best(runs: dict[str, Callable[[], object]], repeats: int = 3) -> dict[str, float]:
    """Best wall time of each of ``runs`` over ``repeats`` rounds, one call of each per round in turn, so that a
    slow spell of the machine (another process, frequency scaling) hits every contender alike.

    Parameters
    ----------
    runs : dict of str to callable
        What to time, by name.
    repeats : int, optional
        Rounds.

    Returns
    -------
    dict of str to float
        Each run's shortest time, in seconds.

    Examples
    --------
    >>> sorted(interleaved_best({"a": lambda: None, "b": lambda: None}, repeats=2))
    ['a', 'b']
    """
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def measure_runtimes(module_for: Callable[[str], nn.Module], evaluate: Callable[[nn.Module], float],
                     runtimes: Sequence[str], tolerance: float, *, repeats: int = 2,
                     skip: dict[str, str] | None = None,
                     untimed: dict[str, str] | None = None) -> list[RuntimeCheck]:
    """Measure torch fp32 and each of ``runtimes`` on the task: ``evaluate(module)`` once for its metric (also the
    warm-up), then timed in ``repeats`` interleaved rounds (:func:`interleaved_best`). ``skip`` maps runtimes not to
    run to the reason, which is recorded; a runtime that fails to load or run is recorded as failed, not raised.

    Parameters
    ----------
    module_for : callable
        ``module_for(runtime)``: the module running ``runtime`` (:func:`load_runtime`).
    evaluate : callable
        ``evaluate(module)``: the task metric of a module.
    runtimes : sequence of str
        The runtimes to compare with torch fp32.
    tolerance : float
        Largest metric change accepted, either way.
    repeats : int, optional
        Timed rounds.
    skip : dict of str to str or None, optional
        Runtimes not to run, with the reason.
    untimed : dict of str to str or None, optional
        Runtimes whose accuracy is measured but not their time, with the reason (bf16 where this CPU emulates it:
        its verdict serves the hosts that have bf16, :mod:`cellops.host_runtime`).

    Returns
    -------
    list of RuntimeCheck
        Torch fp32 first, then each of ``runtimes``.

    Examples
    --------
    >>> checks = measure_runtimes(lambda runtime: nn.Identity(), lambda module: 0.5, ["torch-bf16"], 0.01,
    ...                           repeats=1, skip={"torch-bf16": "not here"})
    >>> [(c.runtime, c.passed, c.note) for c in checks]
    [('torch', True, ''), ('torch-bf16', False, 'not here')]
    >>> checks = measure_runtimes(lambda runtime: nn.Identity(), lambda module: 0.5, ["torch-bf16"], 0.01,
    ...                           repeats=1, untimed={"torch-bf16": "emulated here"})
    >>> [(c.runtime, c.passed, c.accurate, c.note) for c in checks]
    [('torch', True, True, ''), ('torch-bf16', False, True, 'emulated here')]
    """
    skip = skip or {}
    pin_fp32_precision()
    modules = {BASELINE: module_for(BASELINE)}
    metrics = {BASELINE: evaluate(modules[BASELINE])}
    failed: dict[str, str] = dict(skip)
    for runtime in runtimes:
        if runtime == BASELINE or runtime in failed:
            continue
        try:
            modules[runtime] = module_for(runtime)
            metrics[runtime] = evaluate(modules[runtime])
        except Exception as error:  # noqa: BLE001 - one runtime failing must not stop the others
            modules.pop(runtime, None)
            failed[runtime] = f"failed: {type(error).__name__}: {error}"[:300]
    untimed = {name: reason for name, reason in (untimed or {}).items() if name in modules}
    seconds = interleaved_best({name: (lambda m=module: evaluate(m)) for name, module in modules.items()
                                if name not in untimed}, repeats)
    base = seconds[BASELINE]
    checks = [check_runtime(BASELINE, base, base, metrics[BASELINE], metrics[BASELINE], tolerance)]
    for runtime in runtimes:
        if runtime == BASELINE:
            continue
        if runtime in failed:
            checks.append(check_runtime(runtime, None, base, None, metrics[BASELINE], tolerance, failed[runtime]))
        elif runtime in untimed:
            checks.append(check_runtime(runtime, None, base, metrics[runtime], metrics[BASELINE], tolerance,
                                        untimed[runtime]))
        else:
            checks.append(check_runtime(runtime, seconds[runtime], base, metrics[runtime], metrics[BASELINE],
                                        tolerance))
    return checks


def default_skips(runtimes: Sequence[str], flags: set[str] | None = None) -> dict[str, str]:
    """Runtimes not worth timing on this CPU, with the reason (bf16 without AVX512-BF16 or AMX): their accuracy is
    still measured (``measure_runtimes(untimed=...)``), for the serving hosts that have bf16.

    Parameters
    ----------
    runtimes : sequence of str
        The runtimes asked for.
    flags : set of str or None, optional
        CPU flags; by default this CPU's.

    Returns
    -------
    dict of str to str
        The bf16 runtimes among ``runtimes`` with the reason, on a CPU without native bf16; else empty.

    Examples
    --------
    >>> default_skips(["torch-bf16", "openvino-bf16", "openvino"], {"avx2"})  # doctest: +NORMALIZE_WHITESPACE
    {'torch-bf16': 'no AVX512-BF16/AMX on this CPU: bf16 is emulated, slower than fp32',
     'openvino-bf16': 'no AVX512-BF16/AMX on this CPU: bf16 is emulated, slower than fp32'}
    """
    if native_bf16(flags):
        return {}
    return {runtime: "no AVX512-BF16/AMX on this CPU: bf16 is emulated, slower than fp32"
            for runtime in runtimes if runtime in BF16_RUNTIMES}


def pin_fp32_precision() -> dict[str, str]:
    """Pin torch's fp32 convolutions and matrix products to IEEE fp32 (oneDNN may otherwise run them in bf16 or
    tf32 where a build, an environment variable such as ``ONEDNN_DEFAULT_FPMATH_MODE`` or a CPU allows it) and
    return the settings in force, for the record.

    Returns
    -------
    dict of str to str
        ``float32_matmul_precision`` and, where this torch has them, oneDNN's fp32 precision settings.

    Examples
    --------
    >>> pin_fp32_precision()["float32_matmul_precision"]
    'highest'
    """
    torch.set_float32_matmul_precision("highest")
    pinned = {"float32_matmul_precision": torch.get_float32_matmul_precision()}
    mkldnn = torch.backends.mkldnn
    for name, backend in (("mkldnn", mkldnn), ("mkldnn_conv", getattr(mkldnn, "conv", None)),
                          ("mkldnn_matmul", getattr(mkldnn, "matmul", None))):
        if backend is not None and hasattr(backend, "fp32_precision"):
            backend.fp32_precision = "ieee"
            pinned[name] = backend.fp32_precision
    return pinned
