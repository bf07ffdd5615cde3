"""U-Net volume inference: cellops in every CPU runtime against MONAI's ``sliding_window_inference``, in one run.

Both segment the same volume with the same network, tile, overlap and Gaussian blending (MONAI is handed
cellops' weight map through ``roi_weight_map``; it places its tiles itself), each at the batch size that is
fastest for it on this CPU (tried on two slices). MONAI runs the trained network as a user holds it (eager
fp32, NCHW); the row "MONAI, folded model" hands it cellops' BatchNorm-folded channels-last network too, so
the share of the speed-up that comes from the runtime shows. Every timed contender's thresholded mask is compared
with MONAI's (each cellops runtime and MONAI on the folded model) and stored; a row is reported only when the
runtime it times agrees with the MONAI it is set against on >= 99.9 % of voxels (the script stops otherwise).

Then every runtime of :mod:`cellops.runtimes` (torch fp32, bf16 autocast, ONNX Runtime and OpenVINO in fp32 and
int8 calibrated on training tiles) segments the test volume with the model's registered inference settings:
time, and foreground IoU against the ground truth next to torch fp32's (target: >= 1.8x with an IoU change
<= 0.002).

    python benchmarks/unet_runtimes.py [--model models:/cellops-unet@champion] [--slices 24] [--repeats 3]
    python benchmarks/unet_runtimes.py --smoke --out /tmp/x.json   (random network, tiny volume)

Needs the demo's champion and data (``make demo``); writes outputs/benchmarks/unet_runtimes.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import torch
from benchlib import host_choice, print_summary, row, runtime_rows, write_result

from cellops.inference import gaussian_weight_map, sliding_window_predict
from cellops.runtimes import RUNTIMES, best_time, check_runtime, choose_runtime, interleaved_best, load_runtime
from cellops.unet.predict import score
from cellops.unet.specs import UNetServing
from cellops.unet.runtime import export_unet

AGREEMENT = 0.999  # share of voxels whose thresholded prediction must agree between cellops and MONAI
IOU_TOLERANCE = 0.002


def monai_predict(model: torch.nn.Module, unit: np.ndarray, tile: int, overlap: int, batch: int) -> np.ndarray:
    """MONAI's sliding window over the slices of ``unit`` (Z, Y, X) as a batch of 2-D images, sigmoid blended with
    cellops' Gaussian weight map."""
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        out = sliding_window_inference(torch.from_numpy(unit)[:, None], (tile, tile), batch,
                                       lambda x: torch.sigmoid(model(x)), overlap=overlap / tile, mode="gaussian",
                                       roi_weight_map=gaussian_weight_map(tile))
    return out[:, 0].numpy()


def mask_agreement(probabilities: np.ndarray, reference: np.ndarray, threshold: float) -> float:
    """Share of voxels whose mask (probability >= ``threshold``) is the same in ``probabilities`` and ``reference``.

    >>> mask_agreement(np.array([0.2, 0.6, 0.5, 0.1]), np.array([0.3, 0.4, 0.8, 0.0]), 0.5)
    0.75
    """
    return float(((probabilities >= threshold) == (reference >= threshold)).mean())


def require_agreement(agreement: float, ours: str, theirs: str) -> None:
    """Stop the benchmark when ``ours`` and ``theirs`` (the two sides of a reported row) agree on fewer than
    ``AGREEMENT`` of the voxels: their times would not be of the same segmentation.

    >>> require_agreement(0.9995, "cellops torch", "MONAI")
    >>> require_agreement(0.99, "cellops openvino-int8", "MONAI")
    Traceback (most recent call last):
    SystemExit: cellops openvino-int8 and MONAI masks agree on 99.0000% of voxels (< 99.9%): the comparison is void
    """
    if not agreement >= AGREEMENT:  # NaN (an empty volume) fails too
        raise SystemExit(f"{ours} and {theirs} masks agree on {agreement:.4%} of voxels (< {AGREEMENT:.1%}): "
                         "the comparison is void")


def fastest_batch(run, candidates: list[int]) -> tuple[int, dict[int, float]]:
    """The batch size among ``candidates`` with the best time of ``run(batch)`` (each run twice)."""
    times = {batch: best_time(lambda b=batch: run(b), repeats=1, warmup=1) for batch in candidates}
    return min(times, key=times.get), {b: round(t, 4) for b, t in times.items()}


def load_inputs(args) -> tuple[torch.nn.Module, UNetServing, np.ndarray, np.ndarray, np.ndarray, str]:
    """The network, its inference settings, the test volume and mask and a training volume for calibration."""
    if args.smoke:
        from models.unet import UNet

        rng = np.random.default_rng(0)
        volume = (rng.random((2, 80, 96)) * 255).astype(np.uint8)
        settings = UNetServing(tile_size=32, tile_overlap=0.25, batch_size=4, threshold=0.5)
        return UNet(base_channels=4, depth=2).eval(), settings, volume, volume > 128, volume, "random (smoke)"
    from tracking import tags
    from tracking.cli import default_tracking_uri
    from tracking.registry import load_registered, resolve_registered

    uri = args.tracking_uri or default_tracking_uri()
    try:
        name, record = resolve_registered(uri, args.model)
    except LookupError as error:
        raise SystemExit(f"{error}: train the U-Net first (make train, or make demo)") from None
    stored = record[tags.INFERENCE_SETTINGS]
    settings = UNetServing.from_dict(stored if isinstance(stored, dict) else __import__("json").loads(stored))
    data = Path(args.data)
    try:
        test = tifffile.imread(data / "testing.tif")[: args.slices]
        mask = tifffile.imread(data / "testing_groundtruth.tif")[: args.slices]
        train = tifffile.imread(data / "training.tif")
    except OSError as error:
        raise SystemExit(f"{error}: run make data first") from None
    return load_registered(uri, name, record), settings, test, mask, train, f"{name} v{record['model_version']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/cellops-unet@champion")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or this checkout's store")
    parser.add_argument("--data", default="data/em", help="folder with testing.tif, testing_groundtruth.tif, training.tif")
    parser.add_argument("--slices", type=int, default=24, help="test slices used (the demo volume has 24)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (best counts)")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--smoke", action="store_true", help="random network on a tiny volume: checks the script runs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.repeats = 1
        # One runtime of each kind (both graphs are exported and probed anyway): the smoke run checks the script.
        args.runtimes = ["torch", "onnxruntime", "openvino-int8"]

    model, settings, test, mask, train, source = load_inputs(args)
    tile, overlap = settings.tile_size, settings.tile_overlap
    unit = np.ascontiguousarray(settings.normalization.apply(test), dtype=np.float32)
    workdir = Path(tempfile.mkdtemp(prefix="unet-runtimes-"))
    fast = export_unet(model, train, settings, workdir)  # folded + the fp32 and int8 ONNX graphs
    modules = {runtime: load_runtime(runtime, workdir, fast) for runtime in args.runtimes}

    # -- cellops against MONAI: batch size tuned for each on two slices, then the whole volume.
    candidates = [4] if args.smoke else [4, 8, 16, 32, 64]
    probe = unit[:2]
    ours_batch = {}
    for runtime, module in modules.items():
        ours_batch[runtime] = fastest_batch(
            lambda b, m=module: sliding_window_predict(m, probe, tile_size=tile, overlap=overlap, batch_size=b),
            candidates)[0]
    monai_batch, monai_batches = fastest_batch(lambda b: monai_predict(model, probe, tile, overlap, b), candidates)
    monai_folded_batch, _ = fastest_batch(lambda b: monai_predict(fast, probe, tile, overlap, b), candidates)

    runs = {runtime: (lambda m=module, b=ours_batch[runtime]: sliding_window_predict(
                m, unit, tile_size=tile, overlap=overlap, batch_size=b)) for runtime, module in modules.items()}
    runs["monai"] = lambda: monai_predict(model, unit, tile, overlap, monai_batch)
    runs["monai_folded"] = lambda: monai_predict(fast, unit, tile, overlap, monai_folded_batch)
    outputs = {name: run() for name, run in runs.items()}  # also the warm-up
    seconds = interleaved_best(runs, args.repeats)  # rounds in turn: a slow spell hits every contender alike
    # Every timed contender's mask against MONAI's (the trained model), and each cellops runtime's against MONAI's
    # on the folded model: what each row compares is checked on the runtime that row times.
    contenders = [name for name in runs if name != "monai"]
    agreement = {name: mask_agreement(outputs[name], outputs["monai"], settings.threshold) for name in contenders}
    max_difference = {name: float(np.abs(outputs[name] - outputs["monai"]).max()) for name in contenders}
    folded_agreement = {runtime: mask_agreement(outputs[runtime], outputs["monai_folded"], settings.threshold)
                        for runtime in modules}

    # -- every runtime against torch fp32 on the task: IoU of the registered settings' segmentation.
    ious = {runtime: score(module, test, mask, settings)[0].foreground_iou for runtime, module in modules.items()}
    checks = {runtime: check_runtime(runtime, seconds[runtime], seconds["torch"], ious[runtime], ious["torch"],
                                     IOU_TOLERANCE) for runtime in modules}
    best = choose_runtime(list(checks.values()))  # the fastest accurate runtime on this CPU, for this task
    require_agreement(agreement[best], f"cellops {best}", "MONAI (trained model)")
    require_agreement(folded_agreement[best], f"cellops {best}", "MONAI (folded model)")
    voxels = unit.size

    summary = [row("volume inference vs MONAI sliding_window_inference", f"cellops {best}", voxels / seconds[best],
                   "MONAI (trained model, eager fp32)", voxels / seconds["monai"], "voxels/s", target=1.5,
                   note=f"masks agree on {agreement[best]:.4%}"),
               row("volume inference vs MONAI, both on the folded model", f"cellops {best}", voxels / seconds[best],
                   "MONAI (folded channels-last model)", voxels / seconds["monai_folded"], "voxels/s",
                   note=f"masks agree on {folded_agreement[best]:.4%}")]
    summary += runtime_rows(checks, voxels, "voxels/s", f"{{runtime}} vs torch fp32 (IoU tolerance {IOU_TOLERANCE})",
                            lambda check: f"IoU change {check.change:+.4f}")
    result = {
        "model": source, "volume": list(unit.shape), "tile_size": tile, "overlap": overlap,
        "batch_sizes": {"cellops": ours_batch, "monai": monai_batch, "monai_folded": monai_folded_batch,
                        "monai_tried": monai_batches},
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        # Share of voxels whose mask agrees with MONAI's (trained model) / MONAI's on the folded model, per contender.
        "monai_agreement": agreement, "monai_folded_agreement": folded_agreement,
        "monai_max_abs_difference": max_difference, "agreement_required": AGREEMENT,
        "foreground_iou": {k: round(v, 6) for k, v in ious.items()},
        "checks": {k: c.as_dict() for k, c in checks.items()}, "fastest_passing_runtime": best,
    }
    if not args.smoke:  # what `cellops predict` and the service run this version on here
        result["host_choice"] = host_choice(args.tracking_uri, args.model)
    print_summary(summary)
    write_result("unet_runtimes", result, summary, args.out, smoke=args.smoke)


if __name__ == "__main__":
    main()
