"""Peak memory and throughput of slab-by-slab U-Net inference on volumes 1x, 4x and 16x the Lucchi size.

    python benchmarks/large_volume.py [--scales 1 4 16] [--slab 8] [--config configs/unet.yaml] [--work DIR]
                                      [--smoke] [--out PATH]

Each volume (165x768x1024 voxels at 1x; 4x and 16x grow Z) is written to disk as an uncompressed TIFF by tiling
the built-in EM stack, slab by slab, then segmented in a fresh process by ``cellops.unet.streaming`` (the U-Net of
the config, its inference settings). The peak RSS of that process and its voxels per second are reported, with
in-memory inference of the 1x volume (``segment`` on the whole array) as the throughput reference. Targets
(issue 13): RSS flat within 20 % from 1x to 16x, throughput within 10 % of in-memory inference. Writes
outputs/benchmarks/large_volume.json (or --out), with the summary rows: the largest scale streamed against the 1x
volume in memory (voxels/s, peak RSS) and against the 1x volume streamed (peak RSS). 16x needs about 4.2 GB of disk
(volume and mask).

``--smoke``: no data: scale 1 only, of an 8x64x96 volume tiled from a generated EM stack, a tiny U-Net (4 base
channels, depth 2) with tiles of 32, slabs of 4 slices, one thread per child: checks that the script runs.

Peak RSS is the child's VmHWM (Linux), not ``ru_maxrss``: Linux carries the parent's high-water mark into a child
across fork/exec, and the parent has just touched every page of the volume it wrote, so ``ru_maxrss`` reported
the volume's size (2,050 MB at 16x) whatever the child itself used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import yaml
from benchlib import row, write_result

LUCCHI = (165, 768, 1024)
SMOKE_SHAPE = (8, 64, 96)

CHILD = """
import json, resource, sys, time
import numpy as np, tifffile, torch, yaml
from cellops.unet.predict import load_for_inference, segment
from cellops.unet.specs import Architecture, UNetServing
from cellops.unet.streaming import segment_volume_file
from cellops.unet.train import build_model
config = yaml.safe_load(open(sys.argv[1]))
model = load_for_inference(build_model(Architecture.from_dict(config["parameters"]["architecture"]), seed=0))
settings = UNetServing.from_dict(config["parameters"]["inference"])
start = time.perf_counter()
if sys.argv[4] == "memory":
    volume = tifffile.imread(sys.argv[2])
    mask = segment(model, volume, settings)
else:
    segment_volume_file(model, sys.argv[2], sys.argv[3], settings, slab=int(sys.argv[5]))
seconds = time.perf_counter() - start
try:  # this process's own high-water mark: ru_maxrss also counts the parent's, inherited through fork/exec
    peak_kb = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
except OSError:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_kb / 1024}))
"""


def write_volume(source: np.ndarray, shape: tuple[int, int, int], path: Path, slab: int = 16) -> None:
    """A (Z, Y, X) uint8 TIFF of ``shape`` tiled from ``source``, written slab by slab (never whole in memory)."""
    out = tifffile.memmap(path, shape=shape, dtype=np.uint8, photometric="minisblack")
    ys, xs = -(-shape[1] // source.shape[1]), -(-shape[2] // source.shape[2])
    for start in range(0, shape[0], slab):
        stop = min(shape[0], start + slab)
        block = np.take(source, np.arange(start, stop) % source.shape[0], axis=0)
        out[start:stop] = np.tile(block, (1, ys, xs))[:, :shape[1], :shape[2]]
    out.flush()
    del out


def run(config: Path, volume: Path, mask: Path, mode: str, slab: int, env: dict | None = None) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(config), str(volume), str(mask), mode, str(slab)],
                            capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--slab", type=int, default=8)
    parser.add_argument("--config", type=Path, default=Path("configs/unet.yaml"))
    parser.add_argument("--work", type=Path, default=None, help="folder for the volumes (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON (default outputs/benchmarks/large_volume.json)")
    parser.add_argument("--smoke", action="store_true",
                        help="scale 1 of a tiny generated volume, a tiny U-Net: checks that the script runs")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    base, env = LUCCHI, None
    if args.smoke:
        from cellops.synthetic.em import generate_em_volume

        base, args.scales, args.slab = SMOKE_SHAPE, [1], 4
        source = generate_em_volume(SMOKE_SHAPE, seed=0).image
        parameters = config["parameters"]
        config["parameters"] = {**parameters, "architecture": {**parameters["architecture"], "base_channels": 4,
                                                                "depth": 2},
                                "inference": {**parameters["inference"], "tile_size": 32, "tile_overlap": 8}}
        # One thread per child: a smoke run is a check, often beside other work on the same cores.
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
    else:
        source = tifffile.imread(Path(config["steps"]["load_em_dataset"]["parameters"]["data_dir"]) / "training.tif")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        config_file = args.config
        if args.smoke:
            config_file = Path(tmp) / "smoke_config.yaml"
            config_file.write_text(yaml.safe_dump(config))
        for scale in sorted(args.scales):
            shape = (base[0] * scale, *base[1:])
            volume, mask = Path(tmp) / f"volume_{scale}x.tif", Path(tmp) / f"mask_{scale}x.tif"
            write_volume(source, shape, volume)
            voxels = int(np.prod(shape))
            streamed = run(config_file, volume, mask, "stream", args.slab, env)
            measured = {"scale": scale, "shape": list(shape), "voxels": voxels,
                        "stream_peak_rss_mb": round(streamed["peak_rss_mb"], 1),
                        "stream_voxels_per_s": round(voxels / streamed["seconds"])}
            if scale == 1:  # the in-memory reference (a 16x volume would not fit in memory as float32)
                in_memory = run(config_file, volume, mask, "memory", args.slab, env)
                measured.update(memory_peak_rss_mb=round(in_memory["peak_rss_mb"], 1),
                                memory_voxels_per_s=round(voxels / in_memory["seconds"]))
            rows.append(measured)
            print(json.dumps(measured))
            volume.unlink()
            mask.unlink()
    first, last = rows[0], rows[-1]
    result = {
        "cpu": platform.processor() or platform.machine(), "threads": os.cpu_count(), "slab": args.slab,
        "rows": rows,
        "rss_growth": round(last["stream_peak_rss_mb"] / first["stream_peak_rss_mb"] - 1, 3),
    }
    if "memory_voxels_per_s" in first:
        result["stream_vs_memory_throughput"] = round(first["stream_voxels_per_s"] / first["memory_voxels_per_s"], 3)
    summary = []
    streamed_at = f"streamed {last['scale']}x"
    if "memory_voxels_per_s" in first:
        summary += [
            row("U-Net inference throughput, slab by slab vs whole volume", streamed_at, last["stream_voxels_per_s"],
                "in memory 1x", first["memory_voxels_per_s"], "voxels/s", target=0.9,
                note="target: within 10 % of in-memory inference"),
            row("U-Net inference peak RSS", streamed_at, last["stream_peak_rss_mb"], "in memory 1x",
                first["memory_peak_rss_mb"], "MB", higher_is_better=False, note=f"slabs of {args.slab} slices"),
        ]
    if last is not first:  # issue 13: RSS flat within 20 % from 1x to 16x (1x / Nx >= 1 / 1.2)
        summary.append(row("streamed peak RSS, flat with volume size", streamed_at, last["stream_peak_rss_mb"],
                           f"streamed {first['scale']}x", first["stream_peak_rss_mb"], "MB", higher_is_better=False,
                           target=round(1 / 1.2, 3), note="target: at most 20 % growth"))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    write_result("large_volume", result, summary, args.out, smoke=args.smoke)


if __name__ == "__main__":
    main()
