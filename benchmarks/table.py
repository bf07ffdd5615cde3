"""Print the summary rows of every benchmark JSON side by side (``make bench`` ends with it).

    python benchmarks/table.py [outputs/benchmarks]

One table: benchmark, what was compared, ours and the peer with their figures, how many times better ours is,
the target and whether it was met; the machine each ran on is printed once per distinct machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchlib import figure


def table(folder: Path) -> str:
    """The summary of every ``*.json`` in ``folder`` as a markdown table (plus a line per machine)."""
    lines = ["| benchmark | comparison | ours | peer | x better | target | met |", "|---|---|---|---|---|---|---|"]
    machines: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            lines.append(f"| {path.stem} | unreadable: {error} | | | | | |")
            continue
        if not isinstance(document, dict):
            continue
        name = document.get("benchmark", path.stem) + (" (smoke)" if document.get("smoke") else "")
        machine = document.get("machine") or {}
        key = (f"{machine.get('cpu_model', '?')}, {machine.get('torch_threads', '?')} torch threads, "
               f"ISA {' '.join(machine.get('isa_flags', [])) or '?'}, oneDNN {machine.get('torch_cpu_capability', '?')}")
        machines.setdefault(key, []).append(name)
        summary = document.get("summary")
        if not summary:
            lines.append(f"| {name} | (no summary rows: an older run; rerun it) | | | | | |")
            continue
        for r in summary:
            met = {True: "yes", False: "**no**", None: "-"}[r.get("met")]
            target = f">= {r['target']}x" if r.get("target") is not None else "-"
            ratio = f"{r['ratio']}x" if r.get("ratio") is not None else "-"
            comparison = r["comparison"] + (f" ({r['note']})" if r.get("note") else "")
            lines.append(f"| {name} | {comparison} | {r['ours']}: {figure(r.get('ours_value'), r['unit'])} | "
                         f"{r['peer']}: {figure(r.get('peer_value'), r['unit'])} | {ratio} | {target} | {met} |")
    for key, names in machines.items():
        lines.append(f"\nmachine: {key} ({', '.join(names)})")
    return "\n".join(lines)


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("outputs/benchmarks")
    if not folder.is_dir():
        raise SystemExit(f"{folder} does not exist: run the benchmarks first (make bench)")
    print(table(folder))


if __name__ == "__main__":
    main()
