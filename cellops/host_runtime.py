"""The runtime a model version runs on *this* CPU: the registry says which runtimes keep the model's accuracy, this
host says which of those is fastest here.

Accuracy does not depend on the CPU within a runtime check's tolerance, speed does: a runtime that wins on an
AVX2 laptop (OpenVINO int8) may lose on a server with AMX (where bf16 pays), and the other way round. So a
registered version carries each runtime's accuracy verdict (:class:`cellops.runtimes.RuntimeCheck`, measured on
its test data at registration) and its exported graphs, and whatever runs it (a service's first start,
``cellops predict``, batch inference, a benchmark) times the runtimes that kept the accuracy on its own CPU
(:func:`time_on_host`), picks the fastest (:func:`choose_on_host`) and caches that choice per model version and
per host (:func:`host_identity`: CPU model, ISA flags, threads and library versions), so it is timed once per
machine. An operator's override (``CELLOPS_RUNTIME``) skips the timing and is reported as such.

bf16 runtimes are candidates only where the CPU computes bf16 in hardware (:func:`cellops.runtimes.native_bf16`):
elsewhere oneDNN emulates it, several times slower than fp32.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from torch import nn

from cellops.runtimes import (BASELINE, BF16_RUNTIMES, RUNTIME_FILES, RUNTIME_PRECISION, RUNTIMES, cpu_flags,
                              cpu_info, int8_kernels, interleaved_best, native_bf16, pin_fp32_precision)

#: Environment variable with which an operator forces a runtime (``torch`` always works).
RUNTIME_ENV = "CELLOPS_RUNTIME"
#: Environment variable naming the folder of cached choices (default ``~/.cache/cellops/runtime-choices``).
CACHE_ENV = "CELLOPS_RUNTIME_CACHE"
#: Least speed-up over torch fp32 worth another runtime on this host (a tie is not worth one).
MIN_SPEEDUP = 1.05


def default_cache_dir() -> Path:
    """Where host choices are cached: ``$CELLOPS_RUNTIME_CACHE``, else ``$XDG_CACHE_HOME/cellops/runtime-choices``
    (``~/.cache`` by default).

    Returns
    -------
    Path
        The folder (not created).
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cellops" / "runtime-choices"


def host_identity(info: Mapping | None = None) -> dict:
    """What a speed ranking depends on: CPU model, its ISA flags, the usable cores, the kernels oneDNN picks and the
    versions of torch, ONNX Runtime and OpenVINO (not a process's thread setting: every process of a host that
    runs the model shares one choice).

    Parameters
    ----------
    info : Mapping or None, optional
        :func:`cellops.runtimes.cpu_info` (measured when None).

    Returns
    -------
    dict
        The identity, with ``key``: a short hash of everything else (the cache key).

    Examples
    --------
    >>> a = host_identity({"cpu_model": "X", "isa_flags": ["avx2"], "usable_cpus": 2,
    ...                    "torch_cpu_capability": "AVX2", "versions": {"torch": "2"}})
    >>> b = host_identity({**a, "isa_flags": ["avx2", "avx512_bf16"]})
    >>> a["key"] != b["key"], len(a["key"])
    (True, 12)
    """
    info = cpu_info() if info is None else info
    versions = info.get("versions") or {}
    identity = {"cpu_model": info.get("cpu_model"), "isa_flags": list(info.get("isa_flags") or []),
                "usable_cpus": info.get("usable_cpus"), "onednn": info.get("torch_cpu_capability"),
                "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or None,  # a cap set to measure an older CPU
                "versions": {name: versions.get(name) for name in ("torch", "onnxruntime", "openvino")}}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return {**identity, "key": digest}


def registry_verdicts(checks: Sequence[Mapping]) -> dict[str, dict]:
    """Each runtime's accuracy verdict from a version's stored checks (:meth:`cellops.runtimes.RuntimeCheck.as_dict`).

    A check carries ``accurate`` (the metric stayed within its tolerance, timed or not); a check stored before that
    field existed counts as accurate only where it passed.

    Parameters
    ----------
    checks : sequence of Mapping
        The version's runtime checks.

    Returns
    -------
    dict of str to dict
        Per runtime: ``accurate``, the metric ``change`` and ``tolerance``, the registering host's ``speedup`` and
        the ``note``.

    Examples
    --------
    >>> verdicts = registry_verdicts([{"runtime": "torch", "passed": True},
    ...                               {"runtime": "openvino-bf16", "passed": False, "accurate": True, "change": 0.001},
    ...                               {"runtime": "onnxruntime-int8", "passed": False, "change": -0.2}])
    >>> {name: v["accurate"] for name, v in verdicts.items()}
    {'torch': True, 'openvino-bf16': True, 'onnxruntime-int8': False}
    """
    verdicts = {}
    for check in checks:
        runtime = str(check.get("runtime"))
        accurate = check.get("accurate")
        verdicts[runtime] = {"accurate": bool(check.get("passed")) if accurate is None else bool(accurate),
                             "change": check.get("change"), "tolerance": check.get("tolerance"),
                             "speedup": check.get("speedup"), "note": check.get("note") or "",
                             **({"int8_kernels": check["int8_kernels"]} if check.get("int8_kernels") else {})}
    verdicts.setdefault(BASELINE, {"accurate": True, "change": 0.0, "tolerance": None, "speedup": 1.0, "note": ""})
    return verdicts


def host_candidates(verdicts: Mapping[str, Mapping], folder: str | Path | None,
                    flags: set[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The runtimes worth timing here: torch fp32, and each runtime the registry found accurate whose graph is in
    ``folder`` (the torch runtimes need none), bf16 ones only with native bf16, int8 ones only where the CPU has the
    int8 kernels their accuracy was checked with (:func:`cellops.runtimes.int8_kernels`; a verdict that does not
    say is trusted); the others with the reason.

    Parameters
    ----------
    verdicts : Mapping of str to Mapping
        :func:`registry_verdicts`.
    folder : str or Path or None
        The exported graphs (None: none travelled with the model).
    flags : set of str or None, optional
        CPU flags (this CPU's by default).

    Returns
    -------
    candidates : list of str
        In :data:`cellops.runtimes.RUNTIMES` order, torch first.
    skipped : dict of str to str
        The other runtimes of ``verdicts``, with why.

    Examples
    --------
    >>> verdicts = {"torch": {"accurate": True}, "torch-bf16": {"accurate": True},
    ...             "onnxruntime-int8": {"accurate": False, "note": "metric changed by -0.2"}}
    >>> host_candidates(verdicts, None, {"avx2"})  # doctest: +NORMALIZE_WHITESPACE
    (['torch'], {'torch-bf16': 'no AVX512-BF16/AMX on this CPU: bf16 would be emulated',
                 'onnxruntime-int8': 'inaccurate at registration: metric changed by -0.2'})
    """
    flags = cpu_flags() if flags is None else flags
    candidates, skipped = [], {}
    for runtime in RUNTIMES:
        verdict = verdicts.get(runtime)
        if runtime == BASELINE:
            candidates.append(runtime)
        elif verdict is None:
            continue
        elif not verdict.get("accurate"):
            skipped[runtime] = f"inaccurate at registration: {verdict.get('note') or 'no accuracy measured'}"
        elif runtime in BF16_RUNTIMES and not native_bf16(flags):
            skipped[runtime] = "no AVX512-BF16/AMX on this CPU: bf16 would be emulated"
        elif verdict.get("int8_kernels") and verdict["int8_kernels"] != int8_kernels(flags):
            skipped[runtime] = (f"its accuracy was checked with {verdict['int8_kernels']} int8 kernels, this CPU has "
                                f"{int8_kernels(flags)}: int8 rounds differently there")
        elif runtime in RUNTIME_FILES and (folder is None or not (Path(folder) / RUNTIME_FILES[runtime]).is_file()):
            skipped[runtime] = f"its graph {RUNTIME_FILES[runtime]} did not travel with the model"
        else:
            candidates.append(runtime)
    return candidates, skipped


@dataclass(frozen=True)
class HostChoice:
    """The runtime chosen for one model version on one host, and why.

    Attributes
    ----------
    runtime : str
        The runtime that runs the model here.
    reason : str
        ``fastest here``, ``override`` (``CELLOPS_RUNTIME``), ``no faster runtime`` or ``fixed`` (not timed: the
        caller asked for the registry's choice).
    model : str
        The model version (``NAME:VERSION`` and its run).
    host : dict
        :func:`host_identity`.
    seconds : dict of str to float
        Best time of the timing input per runtime timed here.
    speedups : dict of str to float
        Torch fp32's time over each runtime's, here.
    skipped : dict of str to str
        Runtimes not timed here, with why (registry verdict, CPU, missing graph, failure to load).
    verdicts : dict of str to dict
        :func:`registry_verdicts`.
    registry_runtime : str
        The runtime the registering host chose (for comparison).
    measured_at : str
        When it was timed (UTC, ISO 8601).
    cached : bool
        Whether this answer came from the cache.
    """

    runtime: str
    reason: str
    model: str
    host: dict
    seconds: dict = field(default_factory=dict)
    speedups: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    verdicts: dict = field(default_factory=dict)
    registry_runtime: str = BASELINE
    measured_at: str = ""
    cached: bool = False

    @property
    def precision(self) -> str:
        """The precision the chosen runtime computes in."""
        return RUNTIME_PRECISION.get(self.runtime, "unknown")

    def as_dict(self) -> dict:
        """Every field and the precision (what ``/metadata`` and batch manifests report).

        Examples
        --------
        >>> HostChoice("openvino-int8", "fastest here", "m:1", {}).as_dict()["precision"]
        'int8'
        """
        return {**asdict(self), "precision": self.precision}

    def summary(self) -> str:
        """One line for logs and command outputs.

        Examples
        --------
        >>> HostChoice("openvino", "fastest here", "m:1", {"cpu_model": "X"}, speedups={"openvino": 1.7}).summary()
        'm:1 runs on openvino (fp32; fastest here: 1.7x torch fp32 on X)'
        """
        speed = f": {self.speedups[self.runtime]}x torch fp32" if self.runtime in self.speedups else ""
        where = f" on {self.host.get('cpu_model')}" if self.host.get("cpu_model") else ""
        cached = ", cached" if self.cached else ""
        return f"{self.model} runs on {self.runtime} ({self.precision}; {self.reason}{speed}{where}{cached})"


def unit_of_work(settings: Mapping, seed: int = 0) -> Callable[[nn.Module], object]:
    """One served forward pass of a U-Net or a classifier, from its stored serving settings: a batch of
    ``batch_size`` random float32 tiles (``tile_size``, one channel) or images (``size``, ``channels``),
    channels-last, as the services feed their networks (Mask R-CNN's unit is a whole tile through its heads:
    :func:`cellops.maskrcnn.predict.timing_unit`).

    Parameters
    ----------
    settings : Mapping
        The version's serving settings (``inference_settings``).
    seed : int, optional
        Seed of the random input.

    Returns
    -------
    callable
        ``run(module)``.

    Raises
    ------
    ValueError
        For settings of neither family.

    Examples
    --------
    >>> run = unit_of_work({"tile_size": 16, "batch_size": 2})
    >>> tuple(run(nn.Identity()).shape)
    (2, 1, 16, 16)
    """
    import numpy as np
    import torch

    batch = int(settings.get("batch_size", 8))
    if "tile_size" in settings and "categories" not in settings:
        side, channels = int(settings["tile_size"]), 1
    elif "size" in settings:
        side, channels = int(settings["size"]), int(settings.get("channels", 1))
    else:
        raise ValueError("no unit of work for these serving settings: pass one")
    x = torch.from_numpy(np.random.default_rng(seed).random((batch, channels, side, side), dtype=np.float32))
    x = x.contiguous(memory_format=torch.channels_last)

    def run(module: nn.Module):
        with torch.inference_mode():
            return module(x)

    return run


def time_on_host(module_for: Callable[[str], nn.Module], run: Callable[[nn.Module], object],
                 candidates: Sequence[str], repeats: int = 3,
                 min_seconds: float = 0.2) -> tuple[dict[str, float], dict[str, str]]:
    """Best time of ``run(module)`` for each candidate runtime, interleaved (one turn of each per round), after one
    untimed call each; a runtime that fails to load or run is left out with the error. A turn repeats ``run`` as
    often as torch fp32 needs to fill ``min_seconds`` (the same count for every runtime), so that a unit of work of
    a few milliseconds is not timed at the clock's and the scheduler's noise.

    Parameters
    ----------
    module_for : callable
        ``module_for(runtime)``: the model in that runtime.
    run : callable
        ``run(module)``: one representative unit of work (a served batch, an image).
    candidates : sequence of str
        The runtimes to time (:func:`host_candidates`; torch first).
    repeats : int, optional
        Timed rounds.
    min_seconds : float, optional
        Least duration of a turn of torch fp32.

    Returns
    -------
    seconds : dict of str to float
        Best time per call of ``run``, per runtime.
    failed : dict of str to str
        Runtimes that failed, with the error.

    Examples
    --------
    >>> seconds, failed = time_on_host(lambda r: nn.Identity(), lambda m: m(1), ["torch", "openvino"], repeats=1)
    >>> sorted(seconds), failed
    (['openvino', 'torch'], {})
    """
    import math
    import time

    pin_fp32_precision()
    modules, failed, calls = {}, {}, 1
    for runtime in candidates:
        try:
            module = module_for(runtime)
            run(module)  # warm-up: graph compilation, first-call allocations
            if not modules:  # the first candidate, torch fp32: how many calls fill min_seconds
                start = time.perf_counter()
                run(module)
                calls = max(1, math.ceil(min_seconds / max(time.perf_counter() - start, 1e-6)))
            modules[runtime] = module
        except Exception as error:  # noqa: BLE001 - one runtime failing here must not stop the others
            failed[runtime] = f"failed here: {type(error).__name__}: {error}"[:300]

    def turn(module: nn.Module) -> None:
        for _ in range(calls):
            run(module)

    seconds = interleaved_best({name: (lambda m=module: turn(m)) for name, module in modules.items()}, repeats)
    return {name: round(value / calls, 6) for name, value in seconds.items()}, failed


def choose_on_host(seconds: Mapping[str, float], min_speedup: float = MIN_SPEEDUP) -> tuple[str, dict[str, float]]:
    """The fastest runtime timed here, if it beats torch fp32 by ``min_speedup``; torch otherwise.

    Parameters
    ----------
    seconds : Mapping of str to float
        Best time per runtime (torch among them).
    min_speedup : float, optional
        Least speed-up over torch fp32 worth another runtime.

    Returns
    -------
    runtime : str
        The choice.
    speedups : dict of str to float
        Torch fp32's time over each runtime's.

    Examples
    --------
    >>> choose_on_host({"torch": 1.0, "openvino": 0.5, "openvino-int8": 0.98})
    ('openvino', {'torch': 1.0, 'openvino': 2.0, 'openvino-int8': 1.02})
    """
    base = seconds.get(BASELINE)
    if not base:
        return BASELINE, {}
    speedups = {name: round(base / value, 2) for name, value in seconds.items() if value}
    fast = [name for name, value in seconds.items() if name != BASELINE and speedups.get(name, 0) >= min_speedup]
    return (min(fast, key=lambda name: seconds[name]) if fast else BASELINE), speedups


def model_key(name: str, version: str | int, run_id: str | None) -> str:
    """The cache name of a registered version: its run distinguishes two stores' ``NAME:1``.

    Examples
    --------
    >>> model_key("cellops-unet", 3, "0123456789abcdef")
    'cellops-unet:3 (run 0123456789ab)'
    """
    return f"{name}:{version}" + (f" (run {run_id[:12]})" if run_id else "")


def file_name(model: str) -> str:
    """:func:`model_key` as a file or folder name.

    Examples
    --------
    >>> file_name("cellops-unet:3 (run 0123456789ab)")
    'cellops-unet_3__run_0123456789ab_'
    """
    return "".join(char if char.isalnum() or char in "-_." else "_" for char in model)


def _cache_file(cache_dir: str | Path | None, model: str, host_key: str) -> Path:
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{file_name(model)}--{host_key}.json"


def _overridden(override: str | None, model: str, host: dict, verdicts: dict, registry_runtime: str,
                now: str) -> HostChoice | None:
    """The choice ``override`` (default ``CELLOPS_RUNTIME``) forces, untimed; None without one."""
    override = (override if override is not None else os.environ.get(RUNTIME_ENV, "")).strip() or None
    if override is None:
        return None
    if override not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV}={override!r} is not a runtime; choose one of {list(RUNTIMES)}")
    return HostChoice(override, "override", model, host, verdicts=verdicts, registry_runtime=registry_runtime,
                      measured_at=now)


def resolve_host_runtime(model: str, checks: Sequence[Mapping], folder: str | Path | None,
                         module_for: Callable[[str], nn.Module], run: Callable[[nn.Module], object], *,
                         registry_runtime: str = BASELINE, override: str | None = None,
                         cache_dir: str | Path | None = None, repeats: int = 3,
                         info: Mapping | None = None) -> HostChoice:
    """The runtime ``model`` runs on here: the override if one is given (``override`` or ``CELLOPS_RUNTIME``),
    else the cached choice for this host, else the fastest of :func:`host_candidates` timed now
    (:func:`time_on_host`) and cached. Processes that start together (a service's workers) time it once: the cache
    file is written under a lock the others wait on.

    Parameters
    ----------
    model : str
        :func:`model_key` of the version.
    checks : sequence of Mapping
        The version's stored runtime checks (:func:`registry_verdicts`).
    folder : str or Path or None
        Its exported graphs.
    module_for, run : callable
        As :func:`time_on_host`.
    registry_runtime : str, optional
        The runtime the registering host chose (reported beside this host's).
    override : str or None, optional
        A runtime to use without timing (default: ``CELLOPS_RUNTIME``).
    cache_dir : str or Path or None, optional
        Where choices are cached (:func:`default_cache_dir`).
    repeats : int, optional
        Timed rounds.
    info : Mapping or None, optional
        :func:`cellops.runtimes.cpu_info` (measured when None).

    Returns
    -------
    HostChoice
        The choice and its evidence.

    Raises
    ------
    ValueError
        For an override that names no runtime.
    """
    verdicts = registry_verdicts(checks)
    host = host_identity(info)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    forced = _overridden(override, model, host, verdicts, registry_runtime, now)
    if forced is not None:
        return forced
    path = _cache_file(cache_dir, model, host["key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first process times, the others then read its answer
        cached = _read_cached(path, verdicts)
        if cached is not None:
            return cached
        candidates, skipped = host_candidates(verdicts, folder)
        seconds, failed = time_on_host(module_for, run, candidates, repeats)
        runtime, speedups = choose_on_host(seconds)
        choice = HostChoice(runtime, "fastest here" if runtime != BASELINE else "no faster runtime", model, host,
                            seconds, speedups, {**skipped, **failed}, verdicts, registry_runtime, now)
        _write_atomic(path, json.dumps(choice.as_dict(), indent=1))
    return choice


def read_host_choice(model: str, checks: Sequence[Mapping], *, registry_runtime: str = BASELINE,
                     cache_dir: str | Path | None = None, wait_seconds: float = 0.0,
                     info: Mapping | None = None) -> HostChoice:
    """The choice another process on this host made for ``model`` (a service's entry process, which has no network
    to time, reports what its model process chose): the override if set, the cached choice (waiting up to
    ``wait_seconds`` for it to appear), else the registering machine's choice, marked ``not timed here yet``.

    Parameters
    ----------
    model : str
        :func:`model_key` of the version.
    checks : sequence of Mapping
        The version's stored runtime checks.
    registry_runtime : str, optional
        The registering machine's choice.
    cache_dir : str or Path or None, optional
        Where choices are cached.
    wait_seconds : float, optional
        How long to wait for the choice to be cached.
    info : Mapping or None, optional
        :func:`cellops.runtimes.cpu_info` (measured when None).

    Returns
    -------
    HostChoice
        What is known of the choice.
    """
    import time

    verdicts = registry_verdicts(checks)
    host = host_identity(info)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    forced = _overridden(None, model, host, verdicts, registry_runtime, now)
    if forced is not None:
        return forced
    path = _cache_file(cache_dir, model, host["key"])
    deadline = time.monotonic() + wait_seconds
    while True:
        cached = _read_cached(path, verdicts)
        if cached is not None or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return cached or HostChoice(registry_runtime, "not timed here yet", model, host, verdicts=verdicts,
                                registry_runtime=registry_runtime, measured_at=now)


def _read_cached(path: Path, verdicts: Mapping) -> HostChoice | None:
    """The cached choice at ``path`` if it is readable and was made from the same verdicts."""
    try:
        stored = json.loads(path.read_text())
        stored.pop("precision", None)
        choice = HostChoice(**{**stored, "cached": True})
    except (OSError, ValueError, TypeError):
        return None  # absent or unreadable (a half-written file cannot be: writes are atomic): time again
    return choice if choice.verdicts == json.loads(json.dumps(dict(verdicts))) else None


def _write_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)
