"""What every benchmark shares: the machine it ran on, one JSON per benchmark, and the summary rows that
``benchmarks/table.py`` (``make bench``) prints side by side.

A benchmark script imports it as ``from benchlib import ...`` (its own folder is first on ``sys.path``) and ends
with :func:`write_result`. Each summary row compares one thing of ours against one peer, measured in the same run
on the same inputs: what was compared, both figures with their unit, the ratio, the issue's target and whether it
was met.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the project's packages, when a benchmark runs from its own folder
    sys.path.insert(0, str(ROOT))

from cellops.telemetry import disable_telemetry  # noqa: E402 - after the project's folder is on the path

disable_telemetry()

OUT_DIR = Path("outputs/benchmarks")


def machine_info() -> dict:
    """CPU model, ISA flags, cores and threads, the kernels that run (oneDNN, OpenVINO's device), library versions."""
    from cellops.runtimes import cpu_info

    return cpu_info()


def row(comparison: str, ours: str, ours_value: float, peer: str, peer_value: float | None, unit: str, *,
        higher_is_better: bool = True, target: float | None = None, note: str = "") -> dict:
    """One summary row: ``ours`` against ``peer`` on ``comparison``; ``ratio`` is how many times better ours is
    (ours/peer for throughputs, peer/ours for times); ``met`` says whether it reached ``target``."""
    ratio = None
    if peer_value and ours_value:
        ratio = round(ours_value / peer_value if higher_is_better else peer_value / ours_value, 2)
    return {"comparison": comparison, "ours": ours, "ours_value": _round(ours_value), "peer": peer,
            "peer_value": _round(peer_value), "unit": unit, "ratio": ratio, "target": target,
            "met": None if target is None or ratio is None else ratio >= target, "note": note}


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def write_result(name: str, result: dict, summary: list[dict], out: Path | None = None, *,
                 smoke: bool = False) -> Path:
    """Write ``result`` with the machine, the summary rows and when, as ``outputs/benchmarks/<name>.json`` (or
    ``out``); returns the path."""
    path = Path(out) if out is not None else OUT_DIR / f"{name}.json"
    document = {"benchmark": name, "smoke": smoke, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": machine_info(), "summary": summary, **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str))
    print(f"-> {path}")
    return path


def runtime_rows(checks: dict, work: float, unit: str, comparison: str, describe_change) -> list[dict]:
    """One row per runtime's check (:class:`cellops.runtimes.RuntimeCheck`, torch fp32 itself left out) against
    torch fp32, target 1.8x: ``work`` (voxels, images) per second of each, ``comparison`` formatted with
    ``{runtime}``, and a note from ``describe_change(check)`` marking a failed check and emulated bf16."""
    from cellops.runtimes import BASELINE, native_bf16

    base = checks[BASELINE].seconds
    rows = []
    for runtime, check in checks.items():
        if runtime == BASELINE:
            continue
        note = describe_change(check) + ("" if check.passed else " (fails the check)")
        if runtime == "torch-bf16" and not native_bf16():
            note += "; no AVX512-BF16/AMX: emulated"
        rows.append(row(comparison.format(runtime=runtime), runtime, work / check.seconds, "torch fp32", work / base,
                        unit, target=1.8, note=note))
    return rows


def host_choice(tracking_uri: str | None, model_uri: str) -> dict:
    """The runtime the registered ``model_uri`` runs on on this CPU, as ``cellops predict`` and its service run it
    (:func:`tracking.batch.version_on_host`: cached, else timed now; ``CELLOPS_RUNTIME`` overrides)."""
    from tracking.batch import resolve_batch_model, version_on_host
    from tracking.cli import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    _, choice = version_on_host(uri, resolve_batch_model(uri, model_uri))
    print(choice.summary())
    return choice.as_dict()


def print_summary(summary: list[dict]) -> None:
    """The summary rows, one line each, as the run ends."""
    for r in summary:
        print(f"{r['comparison']:60s} {r['ours']}: {figure(r['ours_value'], r['unit'])}  {r['peer']}: "
              f"{figure(r['peer_value'], r['unit'])}  {r['ratio']}x  {r['note']}")


def figure(value, unit: str) -> str:
    """A measured value with its unit, four significant digits, thousands grouped ('-' where there is none).

    >>> figure(5548473.2, "voxels/s"), figure(0.0271, "s"), figure(None, "s")
    ('5,548,473 voxels/s', '0.0271 s', '-')
    """
    if value is None:
        return "-"
    if not isinstance(value, (int, float)):
        return f"{value} {unit}"
    return f"{value:,.0f} {unit}" if abs(value) >= 1e4 else f"{value:,.4g} {unit}"
