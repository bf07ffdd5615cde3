"""Load test of the served bentos over loopback HTTP: throughput, latency, errors, adaptive batch sizes and server
memory, with BentoML's adaptive batching as deployed ("batched") and switched off ("unbatched").

    python benchmarks/serve_load.py [--services unet classifier maskrcnn] [--modes batched unbatched]
                                    [--duration 60] [--clients 16] [--warmup 10] [--out PATH.json] [--smoke]
                                    [--source]

For each service and mode, ``bentoml serve <bento>:latest`` runs in its own process group on a free local port;
once ``/readyz`` answers 200, ``--clients`` concurrent clients (asyncio, one ``httpx.AsyncClient`` each) post the
same 256x256 PNG (seeded random pixels) to the service's endpoint back to back, ``--warmup`` seconds unmeasured
(the batching dispatcher trains its latency model on the first requests), then ``--duration`` seconds measured:

- throughput: requests answered with a 2xx per second of the measured phase; mean, p50 and p99 of their latencies;
  the runtime that served (``serving.runtime`` of the service's ``/metadata``);
- errors: any non-2xx answer or client exception (timeout, refused or broken connection), counted by kind;
- observed batch sizes: how many calls each forward pass merged, from the histograms
  ``bentoml_service_adaptive_batch_size`` (BentoML's batchable APIs: the classifier's model service) and
  ``cellops_adaptive_batch_size`` (the in-process batching of the U-Net service, :mod:`bento.batching`), both
  labelled ``runner_name`` = service, ``method_name`` = API, on the server's Prometheus ``/metrics``; their growth
  over the measured phase gives the number of batches, their mean size and their distribution. A service that
  records none ("no batchable API") is run in the batched mode only;
- CPU share: how much of the machine's CPU capacity the server, the clients (this process) and all other
  processes took over the measured phase; a large "other" share means that the figures are not representative;
- server memory: RSS of the ``bentoml serve`` process and all its descendants (every worker of every service),
  summed (pages shared between processes count once per process), when ready, after warm-up ("start") and at
  the end; growth = end / start - 1, so one-off allocations of the first requests are not taken for a leak.

The unbatched mode serves the same bento, with the same runtime, with batching switched off: ``CELLOPS_BATCHING=off``
for the in-process batching (:mod:`bento.batching`: each call runs alone, through the same thread and code), and
every BentoML API made non-batchable: BentoML calls it once per request, as it does for a legacy runner configured
with ``batching: {enabled: false}``. BentoML 1.4 takes the batching settings of its new-style services from the
``@bentoml.api`` decorator only: the ``services.<name>.batching`` keys its configuration accepts (``BENTOML_CONFIG``
file, ``BENTOML_CONFIG_OVERRIDES``) are read by legacy runners alone and change nothing here, and a
``max_batch_size`` must exceed 1. So that switch is a startup hook given to the server's processes
(:func:`unbatched_hook`). In that mode no batch may be recorded: if one is, the switch failed, the run says so and
the comparison is void.

Targets (printed as PASS/MISS lines): no errors; memory growth under 10 %; for the classifier and the U-Net (256x256
inputs), batched throughput at least twice the unbatched one with a mean batch above 1, and a batched p99 under 1 s.
The clients run on the same CPUs as the server and take their share of them. Results go to
outputs/benchmarks/serve_load.json (or --out), each server's log beside it (outputs/benchmarks/serve_load/<service>-
<mode>.log), with one summary row per service: batched against unbatched throughput (target 2x for the classifier
and the U-Net; no peer figure where the unbatched mode was not run).

``--source``: the U-Net, classifier and Mask R-CNN services of this checkout (``module:Class``, the source tree on
PYTHONPATH) are served instead of the built bentos, with the models of the BentoML store (``BENTOML_HOME``): the
working tree's serving code is measured without building a bento.

``--smoke``: no bento and no trained model: the classical service (``bento.classical.service:ClassicalAnalyses``,
which needs neither) is served from the source tree and loaded by 2 clients posting a generated 256x256 colony
image to ``/colonies``, 0.5 s of warm-up and 1.5 s measured, batched mode only (it has no batchable API, so the
unbatched mode is skipped as for any such service). It checks that serving, loading, reading the metrics, the
targets and the report run end to end, in about ten seconds; its figures are not worth reporting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from benchlib import OUT_DIR, ROOT, row, write_result
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bento.batching import BATCH_METRIC as CELLOPS_BATCH_METRIC
from bento.batching import BATCHING_ENV
from cellops.telemetry import TELEMETRY_OFF

#: The batch-size histograms read: BentoML's (its batchable APIs) and the cellops services' in-process batching's.
BATCH_METRICS = ("bentoml_service_adaptive_batch_size", CELLOPS_BATCH_METRIC)
MODES = ("batched", "unbatched")
#: As long as the longest traffic timeout of the services: a slow answer is measured, not cut short.
REQUEST_TIMEOUT_S = 600.0
READY_TIMEOUT_S = 300.0
MAX_MEMORY_GROWTH = 0.10
MIN_BATCHING_SPEEDUP = 2.0
MAX_P99_S = 1.0
#: Services whose batching and p99 targets apply (the others are measured against the universal targets only).
LATENCY_TARGET_SERVICES = ("unet", "classifier")


@dataclass(frozen=True)
class ServiceCase:
    """One service under load: its bento, the endpoint posted to and the multipart field that holds the image."""

    bento: str
    route: str
    form_field: str


SERVICES = {
    "unet": ServiceCase("cellops-unet:latest", "/segment_stats", "image"),
    "classifier": ServiceCase("cellops-classifier:latest", "/classify", "image"),
    "maskrcnn": ServiceCase("cellops-maskrcnn:latest", "/segment", "image"),
}
#: --source: the services of this checkout (ROOT on PYTHONPATH), with the models of the BentoML store: the code
#: measured is the working tree's, without building a bento.
SOURCE_SERVICES = {
    "unet": ServiceCase("bento.unet.service:UNetSegmenter", "/segment_stats", "image"),
    "classifier": ServiceCase("bento.classifier.service:Classifier", "/classify", "image"),
    "maskrcnn": ServiceCase("bento.maskrcnn.service:MaskRCNN", "/segment", "image"),
}
#: --smoke: the service that needs no bento and no model, served from the source tree (ROOT on PYTHONPATH).
SMOKE_SERVICES = {"classical": ServiceCase("bento.classical.service:ClassicalAnalyses", "/colonies", "image")}


def sample_png(side: int = 256, seed: int = 0, pixels: np.ndarray | None = None) -> bytes:
    """A ``side`` x ``side`` grey uint8 PNG of seeded random pixels (all three services' data are grey), or of
    ``pixels`` where given."""
    if pixels is None:
        pixels = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def smoke_png() -> bytes:
    """--smoke: a generated 256x256 colony image, which the classical service's /colonies can analyse."""
    from cellops.synthetic.colonies import generate_colony_image

    return sample_png(pixels=generate_colony_image((256, 256), seed=0, n_colonies=(1, 2)).image)


# --- the server -------------------------------------------------------------------------------------------------

#: Imported by every Python process of the server when its directory is on PYTHONPATH (``sitecustomize``): every
#: API the services declare is made non-batchable, so BentoML builds no batching dispatcher and calls the API once
#: per request, with that request's input.
UNBATCHED_SITECUSTOMIZE = '''\
"""Benchmark startup hook (benchmarks/serve_load.py): BentoML APIs served without adaptive batching."""
from _bentoml_sdk.method import APIMethod

_init = APIMethod.__init__


def _unbatchable(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.batchable = False


APIMethod.__init__ = _unbatchable
'''


def unbatched_hook(directory: Path) -> dict[str, str]:
    """Environment of a server that batches no request: writes a ``sitecustomize`` module into ``directory`` and
    puts it first on PYTHONPATH, so that the ``bentoml serve`` process and every worker it starts import it (no
    project or bento code is changed)."""
    directory.mkdir()
    (directory / "sitecustomize.py").write_text(UNBATCHED_SITECUSTOMIZE)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))}


def own_bentoml_home(directory: Path) -> dict[str, str]:
    """Environment of a server with a BentoML home of its own, ``directory``, holding the user's bento and model
    stores (symbolic links). BentoML keeps the Prometheus files of every server of a home in its
    ``prometheus_multiproc_dir`` and empties that folder when a server starts: without this, a server started
    meanwhile on the machine would wipe the batch-size histograms of the one under load (and the reverse)."""
    home = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))
    directory.mkdir()
    for store in ("bentos", "models"):
        (directory / store).symlink_to(home / store, target_is_directory=True)
    return {"BENTOML_HOME": str(directory)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServedBento:
    """``with ServedBento(bento, log, env) as server:`` a real ``bentoml serve`` on a free local port, ready
    (``/readyz`` 200) before the block runs, its whole process group killed afterwards; output to ``log``."""

    def __init__(self, bento: str, log: Path, extra_env: dict[str, str]) -> None:
        self.bento, self.log, self.extra_env = bento, log, extra_env

    def __enter__(self) -> ServedBento:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        bentoml_cli = Path(sys.executable).with_name("bentoml")
        env = {**TELEMETRY_OFF, **os.environ, **self.extra_env}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(bentoml_cli), "serve", self.bento, "--host", "127.0.0.1", "--port", str(port)], env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                tail = self.log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"bentoml serve {self.bento} did not get ready (log {self.log}):\n{tail}")
            time.sleep(1)
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def usage(self) -> tuple[int, float]:
        """RSS (bytes) and CPU time (seconds) of the server process and all its descendants, summed."""
        root = psutil.Process(self.process.pid)
        rss, cpu = 0, 0.0
        for process in (root, *root.children(recursive=True)):
            try:
                with process.oneshot():
                    rss += process.memory_info().rss
                    cpu += sum(process.cpu_times()[:2])  # user + system
            except psutil.NoSuchProcess:  # a worker that exited between the listing and the reading
                pass
        return rss, cpu

    def __exit__(self, *exc: object) -> None:
        """SIGTERM to the process group, SIGKILL to any of the server's processes still running 30 s later."""
        try:
            server = psutil.Process(self.process.pid)
            members = [server, *server.children(recursive=True)]
        except psutil.Error:
            members = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        # BentoML starts each worker in a process group of its own: the stragglers are killed one by one.
        for straggler in psutil.wait_procs(members, timeout=30)[1]:
            with contextlib.suppress(psutil.NoSuchProcess):
                straggler.kill()
        self.process.wait()


def served_runtime(base_url: str) -> str | None:
    """The runtime that runs the served network, as its ``/metadata`` says (None for a service without one)."""
    try:
        return httpx.post(f"{base_url}/metadata", json={}, timeout=30).json().get("serving", {}).get("runtime")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


# --- observed batch sizes ---------------------------------------------------------------------------------------

@dataclass
class BatchHistogram:
    """Prometheus histogram of the batch sizes of one API: calls, requests in them, cumulative calls per bucket."""

    count: float = 0.0
    total: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def minus(self, earlier: BatchHistogram) -> BatchHistogram:
        """What was recorded since ``earlier``."""
        return BatchHistogram(self.count - earlier.count, self.total - earlier.total,
                              {le: n - earlier.buckets.get(le, 0.0) for le, n in self.buckets.items()})

    def summary(self) -> dict:
        """Number of batches, their mean size, and how many fell in each size range ("3-4": of 3 or 4 requests)."""
        distribution: dict[str, int] = {}
        lower, below = 0.0, 0.0
        for le, cumulative in sorted(self.buckets.items()):
            if cumulative > below:
                distribution[f"{lower + 1:g}" if le == lower + 1 else f"{lower + 1:g}-{le:g}"] = int(cumulative - below)
            lower, below = le, cumulative
        if self.count > below:
            distribution[f">{lower:g}"] = int(self.count - below)
        return {"batches": int(self.count),
                "mean_batch_size": round(self.total / self.count, 2) if self.count else None,
                "distribution": distribution}


def batch_histograms(base_url: str) -> dict[str, BatchHistogram]:
    """The batch-size histogram of every batchable API that has been called, by ``service.api``, summed over the
    service's workers."""
    histograms: dict[str, BatchHistogram] = {}
    for family in text_string_to_metric_families(httpx.get(f"{base_url}/metrics", timeout=30).text):
        if family.name not in BATCH_METRICS:
            continue
        for sample in family.samples:
            histogram = histograms.setdefault(f"{sample.labels['runner_name']}.{sample.labels['method_name']}",
                                              BatchHistogram())
            if sample.name == f"{family.name}_count":
                histogram.count += sample.value
            elif sample.name == f"{family.name}_sum":
                histogram.total += sample.value
            elif sample.name == f"{family.name}_bucket" and sample.labels["le"] != "+Inf":
                le = float(sample.labels["le"])
                histogram.buckets[le] = histogram.buckets.get(le, 0.0) + sample.value
    return histograms


# --- the load ---------------------------------------------------------------------------------------------------

@dataclass
class Phase:
    """What the clients saw in one phase: latencies of the 2xx answers, errors by kind, wall time."""

    latencies: list[float]
    errors: Counter[str]
    seconds: float


async def drive(url: str, files: dict[str, tuple[str, bytes, str]], clients: int, seconds: float) -> Phase:
    """``clients`` clients, each with its own connection pool, posting ``files`` to ``url`` back to back until
    ``seconds`` have passed (requests in flight then are awaited and counted)."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    started = time.perf_counter()
    deadline = started + seconds

    async def client() -> None:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as http:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    response = await http.post(url, files=files)
                except httpx.HTTPError as error:
                    errors[type(error).__name__] += 1
                    continue
                if response.is_success:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors[f"HTTP {response.status_code}"] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return Phase(latencies, errors, time.perf_counter() - started)


def measure(name: str, case: ServiceCase, mode: str, args: argparse.Namespace, log: Path,
            source_tree: bool = False) -> dict:
    """Serve ``case`` in ``mode``, load it (warm-up, then measured phase) and return the figures. ``source_tree``
    (--smoke, --source): ``case.bento`` is a service of this checkout (``module:Class``), served with ROOT on
    PYTHONPATH (--source: with the models of the user's BentoML store)."""
    files = {case.form_field: ("image.png", smoke_png() if args.smoke else sample_png(), "image/png")}
    this_process = psutil.Process()
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch, "bentoml_home")
        if args.smoke:  # the classical service: no bento or model store to share, an empty home of its own
            home.mkdir()
            extra_env = {"BENTOML_HOME": str(home)}
        else:
            extra_env = own_bentoml_home(home)
        if mode == "unbatched":
            extra_env.update(unbatched_hook(Path(scratch, "hook")))
            extra_env[BATCHING_ENV] = "off"  # the in-process batching of the U-Net and classifier services
        if source_tree:
            extra_env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [extra_env.get("PYTHONPATH", os.environ.get("PYTHONPATH")), str(ROOT)]))
        with ServedBento(case.bento, log, extra_env) as server:
            url = f"{server.base_url}{case.route}"
            runtime = served_runtime(server.base_url)
            rss_ready, _ = server.usage()
            warmup = asyncio.run(drive(url, files, args.clients, args.warmup))
            histograms_before = batch_histograms(server.base_url)
            rss_start, server_cpu_start = server.usage()
            clients_cpu_start = sum(this_process.cpu_times()[:2])
            psutil.cpu_percent()  # starts the count of the machine's busy time
            phase = asyncio.run(drive(url, files, args.clients, args.duration))
            machine_busy = psutil.cpu_percent() / 100
            rss_end, server_cpu_end = server.usage()
            clients_cpu = sum(this_process.cpu_times()[:2]) - clients_cpu_start
            histograms = batch_histograms(server.base_url)
    observed = {api: histogram.minus(histograms_before.get(api, BatchHistogram()))
                for api, histogram in sorted(histograms.items())}
    batches, requests = sum(h.count for h in observed.values()), sum(h.total for h in observed.values())
    # Shares of the machine's CPU capacity over the measured phase; "other" is what the rest of the machine took.
    capacity = phase.seconds * (os.cpu_count() or 1)
    server_share, clients_share = (server_cpu_end - server_cpu_start) / capacity, clients_cpu / capacity
    latencies = np.asarray(phase.latencies)
    mib = 1024 ** 2
    return {
        "service": name, "mode": mode, "bento": case.bento, "endpoint": f"POST {case.route}",
        "clients": args.clients, "seconds": round(phase.seconds, 2), "requests_ok": len(latencies),
        "throughput_rps": round(len(latencies) / phase.seconds, 2), "runtime": runtime,
        "latency_mean_s": round(float(latencies.mean()), 4) if latencies.size else None,
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 4) if latencies.size else None,
        "latency_p99_s": round(float(np.percentile(latencies, 99)), 4) if latencies.size else None,
        "errors": sum(phase.errors.values()), "errors_by_kind": dict(phase.errors),
        "warmup_errors": sum(warmup.errors.values()),
        "batch_sizes": {api: histogram.summary() for api, histogram in observed.items()},
        "mean_batch_size": round(requests / batches, 2) if batches else None,
        "rss_ready_mib": round(rss_ready / mib, 1), "rss_start_mib": round(rss_start / mib, 1),
        "rss_end_mib": round(rss_end / mib, 1), "memory_growth_pct": round(100 * (rss_end / rss_start - 1), 2),
        "cpu_share": {"server": round(server_share, 3), "clients": round(clients_share, 3),
                      "other": round(max(0.0, machine_busy - server_share - clients_share), 3)},
        "server_log": str(log),
    }


# --- targets and report -----------------------------------------------------------------------------------------

def targets(results: list[dict]) -> list[tuple[bool, str]]:
    """(met, description) of every target that the results allow to judge or show missing."""
    checks: list[tuple[bool, str]] = []
    for r in results:
        run = f"{r['service']} {r['mode']}"
        checks.append((r["errors"] == 0, f"{run}: errors {r['errors']} (target 0)"))
        checks.append((r["memory_growth_pct"] < 100 * MAX_MEMORY_GROWTH,
                       f"{run}: memory growth {r['memory_growth_pct']:.1f} % (target < {100 * MAX_MEMORY_GROWTH:g} %)"))
    by_run = {(r["service"], r["mode"]): r for r in results}
    for service in LATENCY_TARGET_SERVICES:
        batched, unbatched = by_run.get((service, "batched")), by_run.get((service, "unbatched"))
        if batched is None:
            continue
        p99 = batched["latency_p99_s"]
        checks.append((p99 is not None and p99 < MAX_P99_S,
                       f"{service} batched: p99 {p99} s (target < {MAX_P99_S:g} s)"))
        mean = batched["mean_batch_size"]
        if mean is None:
            checks.append((False, f"{service}: no batchable API, batched vs unbatched not comparable"))
        elif unbatched is None:
            checks.append((False, f"{service}: unbatched mode not run, speedup unknown (mean batch {mean})"))
        elif unbatched["mean_batch_size"] is not None:
            checks.append((False, f"{service}: the unbatched run still batched (mean {unbatched['mean_batch_size']}), "
                                  "batched vs unbatched not comparable"))
        else:
            base = unbatched["throughput_rps"]
            speedup = batched["throughput_rps"] / base if base else float("inf")
            checks.append((speedup >= MIN_BATCHING_SPEEDUP and mean > 1,
                           f"{service}: batched throughput {speedup:.2f}x unbatched, mean batch {mean} "
                           f"(target >= {MIN_BATCHING_SPEEDUP:g}x with a mean batch > 1)"))
    return checks


def batch_line(result: dict) -> str:
    """The observed batch sizes of a run, in words."""
    observed = "; ".join(f"{api}: mean {b['mean_batch_size']} over {b['batches']} batches {b['distribution']}"
                         for api, b in result["batch_sizes"].items() if b["batches"])
    if result["mode"] == "unbatched":
        return f"still batched, the switch failed: {observed}" if observed else "none: batching off"
    return observed or "no batchable API"


def print_run(result: dict) -> None:
    share = result["cpu_share"]
    print(f"  {result['throughput_rps']:.2f} req/s, mean {result['latency_mean_s']} s, "
          f"p50 {result['latency_p50_s']} s, p99 {result['latency_p99_s']} s, "
          f"{result['errors']} errors {result['errors_by_kind'] or ''} (runtime {result['runtime']})\n"
          f"  batches: {batch_line(result)}\n"
          f"  server RSS {result['rss_start_mib']:.0f} -> {result['rss_end_mib']:.0f} MiB "
          f"({result['memory_growth_pct']:+.1f} %; {result['rss_ready_mib']:.0f} MiB when ready)\n"
          f"  CPU share: server {share['server']:.0%}, clients {share['clients']:.0%}, "
          f"other processes {share['other']:.0%}", flush=True)


def summary_rows(results: list[dict]) -> list[dict]:
    """One row per service: batched against unbatched throughput (no peer figure where unbatched was not run or
    still batched), the batching target for the services it applies to."""
    rows = []
    by_run = {(r["service"], r["mode"]): r for r in results}
    for service in dict.fromkeys(r["service"] for r in results):
        batched, unbatched = by_run.get((service, "batched")), by_run.get((service, "unbatched"))
        if batched is None:  # unbatched alone: nothing to compare it with, its figure is the row's
            rows.append(row(f"{service}: serving throughput", "unbatched", unbatched["throughput_rps"], "batched",
                            None, "req/s", note="batched mode not run"))
            continue
        if batched["mean_batch_size"] is None:
            note, peer = "no batchable API: unbatched mode not run", None
        elif unbatched is None:
            note, peer = f"unbatched mode not run; mean batch {batched['mean_batch_size']}", None
        elif unbatched["mean_batch_size"] is not None:
            note, peer = "the unbatched run still batched: not comparable", None
        else:
            note, peer = f"mean batch {batched['mean_batch_size']}", unbatched["throughput_rps"]
        note += (f"; batched mean latency {batched['latency_mean_s']} s, p99 {batched['latency_p99_s']} s, "
                 f"{batched['errors']} errors, {batched['clients']} clients, runtime {batched['runtime']}")
        rows.append(row(f"{service}: serving throughput", "batched", batched["throughput_rps"], "unbatched", peer,
                        "req/s", target=MIN_BATCHING_SPEEDUP if service in LATENCY_TARGET_SERVICES else None,
                        note=note))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", nargs="+", choices=list(SERVICES), default=list(SERVICES))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measured load per service and mode")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of unmeasured load before it")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default outputs/benchmarks/serve_load.json)")
    parser.add_argument("--smoke", action="store_true",
                        help="the classical service from the source tree, 2 clients, 0.5 s + 1.5 s: checks that "
                             "the script runs")
    parser.add_argument("--source", action="store_true",
                        help="serve the services of this checkout (module:Class) with the models of the BentoML "
                             "store, instead of the built bentos")
    args = parser.parse_args()
    services = SOURCE_SERVICES if args.source else SERVICES
    if args.smoke:
        services, args.services, args.modes = SMOKE_SERVICES, list(SMOKE_SERVICES), list(MODES)
        args.clients, args.warmup, args.duration = 2, 0.5, 1.5
    out = args.out if args.out is not None else OUT_DIR / "serve_load.json"

    results = []
    for name in args.services:
        for mode in [m for m in MODES if m in args.modes]:
            batched = next((r for r in results if r["service"] == name and r["mode"] == "batched"), None)
            if mode == "unbatched" and batched is not None and batched["mean_batch_size"] is None:
                print(f"{name}: no batchable API, unbatched mode skipped (it would serve the same)")
                continue
            log = out.with_suffix("") / f"{name}-{mode}.log"
            print(f"{name} {mode}: serving {services[name].bento}, {args.clients} clients, "
                  f"{args.warmup:g} s warm-up + {args.duration:g} s ...", flush=True)
            result = measure(name, services[name], mode, args, log, source_tree=args.smoke or args.source)
            results.append(result)
            print_run(result)

    checks = targets(results)
    report = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "clients": args.clients, "duration_s": args.duration, "warmup_s": args.warmup, "runs": results,
              "targets": [{"met": met, "target": text} for met, text in checks]}
    write_result("serve_load", report, summary_rows(results), out, smoke=args.smoke)
    print("targets:")
    for met, text in checks:
        print(f"  {'PASS' if met else 'MISS'}  {text}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
