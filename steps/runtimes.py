"""What every family's runtime step (``steps/<family>/runtime.py``) shares: export the model a training run
registered to the faster CPU runtimes (:mod:`cellops.runtimes`), check each on the run's test data against torch
fp32, and keep the graphs and the verdict beside the torch model in the registry (same version: ``runtimes/``
artifacts of its run, ``runtime`` and ``runtime_checks`` tags). The deployment puts the chosen runtime in the
bento; ``/metadata`` says which runs.

The measuring is in ``cellops.<family>.runtime``, the recording in :func:`tracking.registry.record_runtimes`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import mlflow
from mlflow import MlflowClient
from zenml import log_metadata
from zenml.logger import get_logger

from cellops.runtimes import RuntimeCheck, choose_runtime, cpu_info, int8_kernels, runtime_files
from tracking.registry import record_runtimes

logger = get_logger(__name__)


def measure_and_record(registered_model_name: str, version: str | None,
                        measure: Callable[[str], list[RuntimeCheck]]) -> dict:
    """Run ``measure(folder)`` for a registered ``version`` and record its checks, the graphs and the choice."""
    if version is None:
        logger.info("no version was registered (a duplicate of the champion): no runtime to measure")
        return {"version": None, "runtime": None, "checks": []}
    with tempfile.TemporaryDirectory() as folder:
        checks = measure(folder)
        runtime = choose_runtime(checks)
        # An int8 verdict holds on CPUs with the int8 kernels it was checked with (cellops.runtimes.int8_kernels).
        rows = [{**check.as_dict(), **({"int8_kernels": int8_kernels()} if check.precision == "int8" else {})}
                for check in checks]
        record_runtimes(MlflowClient(), registered_model_name, version, runtime, rows,
                        [str(path) for path in runtime_files(folder)])
    machine = cpu_info()
    mlflow.log_metrics({f"runtime_speedup_{c.runtime.replace('-', '_')}": c.speedup for c in checks if c.speedup})
    mlflow.set_tags({"serving_runtime": runtime, "runtime_cpu": machine["cpu_model"],
                     "runtime_isa": " ".join(machine["isa_flags"])})
    summary = {"version": version, "runtime": runtime, "checks": rows,
               "cpu": {k: machine[k] for k in ("cpu_model", "isa_flags", "torch_threads", "torch_cpu_capability")}}
    log_metadata(metadata={"runtime": summary})
    logger.info("%s v%s will be served with %s: %s", registered_model_name, version, runtime,
                "; ".join(f"{c.runtime} {c.speedup}x {'ok' if c.passed else c.note}" for c in checks))
    return summary


def run_best(registration: dict) -> tuple[str, str | None]:
    """The registered model and the version of the run's best model (registrations are best first; None where it
    was not registered)."""
    best = (registration.get("versions") or [{}])[0]
    return best.get("registered_model", ""), best.get("version")


