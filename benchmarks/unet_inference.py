"""Sliding-window U-Net inference throughput: cellops' path against a naive peer, in the same run.

cellops: BatchNorm folded into the convolutions, channels-last layout, tiles from all slices batched, the
blending weights and their normaliser computed once. Naive peer: the same model, tile size, overlap and
Gaussian blending, one tile per forward pass, the weight map rebuilt and the normaliser accumulated per tile
(the straightforward implementation). Both outputs are checked equal before any figure is reported.

    python benchmarks/unet_inference.py [--slices 8] [--config configs/unet.yaml] [--repeats 3] [--smoke] [--out PATH]

The default volume is 8 slices of 768x1024 (8/165 of a Lucchi volume; --slices 165 for all of it). The figures and
the summary row (cellops against naive, voxels/s) go to outputs/benchmarks/unet_inference.json (or --out).
``--smoke``: one 64x96 slice, tiles of 32, a tiny U-Net (4 base channels, depth 2), one repeat, one thread: checks
that the script runs (a few seconds), measures nothing worth reporting.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from benchlib import row, write_result

from cellops.inference import gaussian_weight_map, prepare_for_inference, sliding_window_predict
from cellops.tiling import tile_starts
from cellops.unet.specs import UNetServing
from cellops.unet.train import build_model
from cellops.unet.specs import Architecture


@torch.inference_mode()
def naive_sliding_window(model: torch.nn.Module, volume: np.ndarray, tile_size: int, overlap: int) -> np.ndarray:
    """The peer: slice by slice, tile by tile, batch of one, weights and normaliser per tile, numpy sums."""
    model.eval()
    out = np.zeros(volume.shape, np.float32)
    for z in range(volume.shape[0]):
        total = np.zeros(volume.shape[1:], np.float32)
        norm = np.zeros(volume.shape[1:], np.float32)
        for y in tile_starts(volume.shape[1], tile_size, overlap):
            for x in tile_starts(volume.shape[2], tile_size, overlap):
                tile = torch.from_numpy(volume[z, y : y + tile_size, x : x + tile_size].copy())[None, None]
                weights = gaussian_weight_map(tile_size).numpy()
                prob = torch.sigmoid(model(tile))[0, 0].numpy()
                total[y : y + tile_size, x : x + tile_size] += prob * weights
                norm[y : y + tile_size, x : x + tile_size] += weights
        out[z] = total / norm
    return out


def _interleaved_best(fns: dict, repeats: int) -> dict[str, tuple[float, np.ndarray]]:
    """Best wall time of each function over ``repeats`` rounds, alternating them so drift hits both alike."""
    best: dict[str, tuple[float, np.ndarray]] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            result = fn()
            elapsed = time.perf_counter() - start
            if name not in best or elapsed < best[name][0]:
                best[name] = (elapsed, result)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/unet.yaml"))
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tile-size", type=int, help="override the config's inference tile size")
    parser.add_argument("--batch-size", type=int, help="override the config's inference batch size")
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON (default outputs/benchmarks/unet_inference.json)")
    parser.add_argument("--smoke", action="store_true", help="a tiny volume and network: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:  # one thread: a smoke run is a check, often beside other work on the same cores
        args.slices, args.height, args.width, args.repeats, args.tile_size = 1, 64, 96, 1, 32
        torch.set_num_threads(1)

    config = yaml.safe_load(args.config.read_text())
    architecture = config["parameters"]["architecture"]
    if args.smoke:
        architecture = {**architecture, "base_channels": 4, "depth": 2}
    # The settings evaluation and serving use (the config's one `inference` block, stored with each model).
    settings = UNetServing.from_dict(config["parameters"]["inference"])
    tile = args.tile_size or settings.tile_size
    batch = args.batch_size or settings.batch_size
    overlap = settings.tile_overlap * tile // settings.tile_size  # pixels: the config's share of the tile
    model = build_model(Architecture.from_dict(architecture), seed=0).eval()
    volume = np.random.default_rng(0).random((args.slices, args.height, args.width), dtype=np.float32)
    voxels = volume.size

    fast = prepare_for_inference(model)
    runs = {
        "cellops": lambda: sliding_window_predict(fast, volume, tile_size=tile, overlap=overlap, batch_size=batch),
        "naive": lambda: naive_sliding_window(model, volume, tile, overlap),
    }
    # Warm-up on one slice each: thread pools and allocator caches start warm for both.
    sliding_window_predict(fast, volume[:1], tile_size=tile, overlap=overlap, batch_size=batch)
    naive_sliding_window(model, volume[:1], tile, overlap)
    best = _interleaved_best(runs, args.repeats)
    (t_fast, out_fast), (t_naive, out_naive) = best["cellops"], best["naive"]
    max_diff = float(np.abs(out_fast - out_naive).max())
    if max_diff > 1e-4:
        raise SystemExit(f"outputs differ by {max_diff}: the comparison is void")

    result = {
        "volume": list(volume.shape),
        "fraction_of_lucchi_volume": round(voxels / (165 * 768 * 1024), 4),
        "architecture": architecture,
        "tile_size": tile,
        "overlap": overlap,
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cellops_seconds": round(t_fast, 3),
        "naive_seconds": round(t_naive, 3),
        "cellops_voxels_per_s": round(voxels / t_fast),
        "naive_voxels_per_s": round(voxels / t_naive),
        "speedup": round(t_naive / t_fast, 2),
        "max_abs_difference": max_diff,
    }
    summary = [row("sliding-window U-Net inference", "cellops", result["cellops_voxels_per_s"], "naive",
                   result["naive_voxels_per_s"], "voxels/s",
                   note=f"{args.slices}x{args.height}x{args.width}, tile {tile}, {torch.get_num_threads()} threads")]
    out = write_result("unet_inference", result, summary, args.out, smoke=args.smoke)
    print(f"volume {volume.shape} ({result['fraction_of_lucchi_volume']:.1%} of a Lucchi volume), tile {tile}, "
          f"overlap {overlap}, {torch.get_num_threads()} threads")
    print(f"  cellops: {result['cellops_voxels_per_s']:>12,} voxels/s  ({t_fast:.2f} s, batch {batch})")
    print(f"  naive:   {result['naive_voxels_per_s']:>12,} voxels/s  ({t_naive:.2f} s, batch 1)")
    print(f"  speedup: {result['speedup']}x   (max |difference| {max_diff:.1e}); written to {out}")


if __name__ == "__main__":
    main()
