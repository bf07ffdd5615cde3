"""The `cellops` command: data generation and analyses of users' own images.

    cellops generate-data [--params params.yaml] [--out data] [--force]
    cellops configs [--check]
    cellops check-data [--data data] [--manifest data.files.json] [--dvc-file data.dvc] [--update]
    cellops analyze colonies|nuclei|calcium INPUT... --out DIR [--group NAME] [--config FILE] [--masks LABELS.tif...]
    cellops report colonies|nuclei|calcium [--config configs/<kind>.yaml] [--out reports/<kind>]
    cellops models [FAMILY]                       (registered versions, metrics, data versions, champion)
    cellops lineage MODEL[:VERSION|@ALIAS] [--json]  (a version's lineage from the registry, no server)
    cellops predict classifier|maskrcnn IMAGE... --out DIR [--model models:/NAME@ALIAS]

Batch commands (analyze, predict) share one exit code contract (:func:`batch_exit_code`): 0 every file was
analysed; 1 some files failed (each named on stderr with its problem, the others analysed and summarised); 2 the
command could not run at all (bad arguments, config or model, or not one input file could be used).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from cellops.telemetry import disable_telemetry


def generate_data(params_file: Path, out: Path, *, force: bool = False) -> None:
    """Write the built-in default datasets described in ``params_file`` under ``out``.

    Each dataset is generated whole before any of its files is written, and no file whose contents differ is replaced
    unless ``force``: a lab's own images in ``out`` are never overwritten silently.
    """
    from cellops.synthetic.calcium import write_calcium_dataset
    from cellops.synthetic.colonies import write_colony_dataset
    from cellops.synthetic.em import write_lucchi_dataset
    from cellops.synthetic.endothelial import write_endothelial_dataset
    from cellops.synthetic.nuclei import write_nuclei_dataset

    params = yaml.safe_load(params_file.read_text())
    writers = {
        "em": lambda p: write_lucchi_dataset(out / "em", tuple(p["shape"]), seed=int(p["seed"]),
                                             voxel_nm=float(p["voxel_nm"]),
                                             mitochondria_fraction=float(p["mitochondria_fraction"]), overwrite=force),
        "colonies": lambda p: write_colony_dataset(out / "colonies", n_images=int(p["n_images"]),
                                                   shape=tuple(p["shape"]), seed=int(p["seed"]), overwrite=force),
        "nuclei": lambda p: write_nuclei_dataset(out / "nuclei", images_per_group=int(p["images_per_group"]),
                                                 shape=tuple(p["shape"]), seed=int(p["seed"]), overwrite=force),
        "calcium": lambda p: write_calcium_dataset(out / "calcium", movies_per_group=int(p["movies_per_group"]),
                                                   shape=tuple(p["shape"]), n_frames=int(p["n_frames"]),
                                                   seed=int(p["seed"]), overwrite=force),
        "endothelial": lambda p: write_endothelial_dataset(out / "endothelial",
                                                           images_per_class=int(p["images_per_class"]),
                                                           size=int(p["size"]), seed=int(p["seed"]), overwrite=force),
    }
    for name, writer in writers.items():
        if name in params:
            written = {Path(p).resolve() for p in writer(params[name]).values()}
            print(f"{name}: wrote {len(written)} files under {out / name}")
            if force:  # a replaced dataset keeps no file of the old one (DVC's cache still has them)
                for stale in sorted(p for p in (out / name).rglob("*") if p.is_file() and p.resolve() not in written):
                    stale.unlink()
                    print(f"{name}: removed {stale}, which the generator no longer writes")


def check_data(data: Path, manifest: Path, dvc_file: Path, *, update: bool = False) -> int:
    """Compare the files under ``data`` with the committed listing ``manifest`` (the version ``dvc_file`` records).

    Returns 0 when they match; otherwise prints which files differ and what to do, and returns 1. With
    ``update``, the manifest is rewritten from ``data`` instead, after checking that ``dvc_file`` (just written by
    ``dvc add``) records the same version, so the two committed files can never disagree.
    """
    from cellops import data_version as dv

    actual = dv.hash_folder(data)
    recorded = dv.dvc_file_md5(dvc_file)
    if update:
        version = dv.dvc_dir_md5(actual)
        if version != recorded:
            print(f"cellops check-data: {dvc_file} records {recorded} but {data}/ is {version}; "
                  f"run `dvc add {data}` first", file=sys.stderr)
            return 1
        dv.write_manifest(manifest, actual)
        print(f"{manifest}: {len(actual)} files, version {recorded}; commit it with {dvc_file}")
        return 0
    expected = dv.read_manifest(manifest)
    if dv.dvc_dir_md5(expected) != recorded:
        print(f"cellops check-data: {manifest} does not list the version {dvc_file} records ({recorded}); "
              f"restore both from git (`git checkout {manifest} {dvc_file}`)", file=sys.stderr)
        return 1
    difference = dv.compare_listings(expected, actual)
    if not difference:
        print(f"{data}/: all {len(actual)} files match version {recorded}")
        return 0
    print(f"cellops check-data: {data}/ is not the committed default data (version {recorded} of {dvc_file}):\n"
          f"{difference.describe(data)}\n"
          "- If you changed params.yaml or a generator on purpose: `make data-accept`, then commit "
          f"{dvc_file} and {manifest}.\n"
          "- If not: restore them (`git checkout params.yaml cellops/synthetic`), then rewrite the data with "
          "`cellops generate-data --force` and run `make data` again.\n"
          "- If data/ holds your own images: `dvc add data`, then `cellops check-data --update` and commit "
          f"{dvc_file} and {manifest} (`make data` is for the built-in data only).\n"
          "- If neither changed, this CPU or a package version gives other bytes: please report it with the output "
          "of `.venv/bin/python -c 'import numpy, threadpoolctl; numpy.show_runtime(); "
          "print(threadpoolctl.threadpool_info())'`.", file=sys.stderr)
    return 1


def render_configs(root: Path, *, check: bool = False) -> int:
    """Write every derived config (``configs/unet_full.yaml`` ...) from its override; with ``check``, only say
    which are out of date (exit 1)."""
    from cellops.config import derived_configs, render_text

    stale = []
    for override, target in derived_configs(root).items():
        text = render_text(override, root)
        if target.is_file() and target.read_text() == text:
            continue
        stale.append(target)
        if not check:
            target.write_text(text)
            print(f"wrote {target}")
    if check and stale:
        print(f"out of date: {', '.join(map(str, stale))}; run `make configs`", file=sys.stderr)
        return 1
    return 0


KINDS = ("calcium", "colonies", "nuclei")

#: Exit codes of the batch commands (``analyze``, ``predict``).
EXIT_ALL_DONE, EXIT_SOME_FAILED, EXIT_NOT_RUN = 0, 1, 2

BATCH_EXIT_CODES = ("exit codes: 0 every file analysed; 1 some files failed (each is named on stderr with its "
                    "problem, the rest are analysed and summarised); 2 nothing could be done (bad arguments, config "
                    "or model, or no input file could be used)")


def batch_exit_code(n_files: int, n_failed: int) -> int:
    """The exit code of a batch of ``n_files`` of which ``n_failed`` failed: 0 none, 1 some, 2 all (or no file).

    >>> batch_exit_code(3, 0), batch_exit_code(3, 1), batch_exit_code(3, 3)
    (0, 1, 2)
    """
    if n_files == 0 or n_failed >= n_files:
        return EXIT_NOT_RUN
    return EXIT_SOME_FAILED if n_failed else EXIT_ALL_DONE


def _pipeline_parameters(config: Path) -> dict:
    """The ``parameters`` block of a pipeline config (what the pipeline, this CLI and the DVC stages share)."""
    return (yaml.safe_load(config.read_text()) or {}).get("parameters") or {}


def _analysis_params(kind: str, config: Path | None):
    """Parameters of ``kind``: from a pipeline config (its ``parameters.analysis``) or a plain mapping of parameter
    names to values; the defaults when no file is given."""
    from cellops.analyze import ANALYSES
    from cellops.config import from_mapping

    if config is None:
        return ANALYSES[kind].params()
    try:
        values = yaml.safe_load(config.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{config}: not a readable YAML file ({error})") from error
    if isinstance(values, dict) and "parameters" in values:  # a pipeline config
        parameters = values["parameters"] or {}
        values = (parameters.get("analysis") if isinstance(parameters, dict) else parameters) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{config}: expected a mapping of parameter names to values, got {type(values).__name__}")
    return from_mapping(ANALYSES[kind].params, values)


def analyze(kind: str, inputs: list[Path], out: Path, group: str | None, config: Path | None,
            masks: list[Path] | None = None) -> int:
    """Run one analysis over ``inputs``; returns :func:`batch_exit_code` (0 all analysed, 1 some failed, 2 none
    could be). ``masks`` (calcium only): one label TIFF per movie, in the same order, measured instead of
    segmenting.

    Every file that cannot be analysed is named on stderr with its problem, one line each, and the others are
    analysed and summarised (``<kind>_all.csv``). Outputs are named after their input; inputs that share a name
    get the folders that tell them apart (:func:`cellops.analyze.input_names`). A file given twice is analysed
    once. Raises ``ValueError`` for what stops the whole command (bad config, masks or output folder).
    """
    from cellops import analyze as batch
    from cellops.io import write_table

    params = _analysis_params(kind, config)
    baseline = getattr(params, "baseline_frames", 1)
    if isinstance(baseline, bool) or not isinstance(baseline, int) or baseline < 1:
        raise ValueError(f"{config}: baseline_frames must be a whole number of frames (1 or more), got {baseline!r}")
    extra = {}
    if masks:
        if kind != "calcium":
            raise ValueError(f"--masks is for calcium movies (cells drawn elsewhere), not {kind}")
        if len(masks) != len(inputs):
            raise ValueError(f"--masks needs one label image per movie: {len(inputs)} movies, {len(masks)} masks")
        missing = [str(m) for m in masks if not m.is_file()]
        if missing:
            raise ValueError(f"mask files not found: {missing}")
        pairs = {}
        for movie, mask in zip(inputs, masks):
            if pairs.setdefault(movie, mask) != mask:
                raise ValueError(f"{movie} is given twice, with the masks {pairs[movie]} and {mask}")
        extra["masks"] = pairs
    inputs, repeats = batch.distinct_files(inputs)
    for repeat, first in repeats:
        print(f"cellops analyze: {batch.repeat_note(repeat, first)}; analysed once", file=sys.stderr)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {out}: cannot create the output folder ({error.strerror})") from error
    report = batch.ANALYSES[kind].run(inputs, out, params, group, names=batch.input_names(inputs), **extra)
    if len(report.table.columns):  # some file was analysed (perhaps with no object in it)
        write_table(report.table, out / f"{kind}_all.csv")
        if kind == "nuclei" and report.table["group"].nunique() > 1:
            batch.nuclei_group_report(report.table, out)
    done = len(inputs) - len(report.failures)
    print(f"{kind}: {done} of {len(inputs)} files analysed" + (f", {len(report.table)} objects; results in {out}"
                                                                  if done else ""))
    for name, problem in report.failures.items():
        print(f"  failed: {problem if problem.startswith(name) else f'{name}: {problem}'}", file=sys.stderr)
    code = batch_exit_code(len(inputs), len(report.failures))
    if code == EXIT_SOME_FAILED:
        print(f"cellops analyze {kind}: some files failed ({len(report.failures)} of {len(inputs)}); the others "
              "were analysed", file=sys.stderr)
    elif code == EXIT_NOT_RUN:
        print(f"cellops analyze {kind}: no file could be analysed", file=sys.stderr)
    return code


def report(kind: str, config: Path, out: Path) -> int:
    """Whole-dataset report of ``kind`` as the pipeline config's ``parameters`` describe it (data folder, analysis
    parameters, report options); writes tables, figures and ``metrics.json`` under ``out`` (the DVC stages)."""
    from cellops.reports import run_report

    parameters = _pipeline_parameters(config)
    missing = [key for key in ("data_dir", "analysis", "report") if key not in parameters]
    if missing:
        raise ValueError(f"{config}: `parameters` lacks {missing}")
    result = run_report(kind, parameters["data_dir"], out, parameters["analysis"], parameters["report"])
    metrics = result.write(out)
    print(f"{kind}: {json.dumps(result.accuracy)}; written to {metrics}")
    return 0


#: Commands that read the model registry; they live with the MLflow/ZenML helpers (tracking/), not in this
#: library, and are loaded only when asked for.
REGISTRY_COMMANDS = ("models", "lineage", "predict", "export-run")


def main(argv: list[str] | None = None) -> int:
    disable_telemetry()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in REGISTRY_COMMANDS:
        import importlib

        return importlib.import_module("tracking.cli").main(argv)
    parser = argparse.ArgumentParser(prog="cellops", description="cellops: MLOps for cell imaging")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in REGISTRY_COMMANDS:
        commands.add_parser(name, help=f"see `cellops {name} --help`")
    gen = commands.add_parser("generate-data", help="write the deterministic built-in datasets")
    gen.add_argument("--params", type=Path, default=Path("params.yaml"))
    gen.add_argument("--out", type=Path, default=Path("data"))
    gen.add_argument("--force", action="store_true", help="overwrite files that differ (your own data!)")
    cfg = commands.add_parser("configs", help="write the configs derived from overrides (configs/overrides/)")
    cfg.add_argument("--root", type=Path, default=Path("."))
    cfg.add_argument("--check", action="store_true", help="only check that they are up to date")
    chk = commands.add_parser("check-data", help="compare data/ with the committed default data, file by file")
    chk.add_argument("--data", type=Path, default=Path("data"))
    chk.add_argument("--manifest", type=Path, default=Path("data.files.json"))
    chk.add_argument("--dvc-file", type=Path, default=Path("data.dvc"))
    chk.add_argument("--update", action="store_true", help="rewrite the manifest from data/ (after `dvc add`)")
    ana = commands.add_parser("analyze", help="analyse your own PNG/TIFF images", epilog=BATCH_EXIT_CODES)
    ana.add_argument("kind", choices=KINDS)
    ana.add_argument("inputs", type=Path, nargs="+",
                     help="image files, not folders (calcium: grey-level time-lapse TIFF stacks (frames, rows, "
                          "columns) longer than the config's baseline_frames); outputs are named after each file, "
                          "inside sub-folders named like their folders when two files share a name")
    ana.add_argument("--out", type=Path, required=True, help="folder for label TIFFs, CSV tables and PNG plots")
    ana.add_argument("--group", help="culture group of these files (default: each file's folder name)")
    ana.add_argument("--config", type=Path, help="YAML with the analysis parameters (e.g. configs/nuclei.yaml)")
    ana.add_argument("--masks", type=Path, nargs="+", metavar="LABELS.tif",
                     help="calcium: cell masks drawn elsewhere (Fiji, napari, Cellpose), one label TIFF per movie")
    rep = commands.add_parser("report", help="whole-dataset report with accuracy, as in the pipeline config")
    rep.add_argument("kind", choices=KINDS)
    rep.add_argument("--config", type=Path, help="pipeline config (default configs/<kind>.yaml)")
    rep.add_argument("--out", type=Path, help="output folder (default reports/<kind>)")
    args = parser.parse_args(argv)
    if args.command == "report":
        config = args.config or Path(f"configs/{args.kind}.yaml")
        if not config.is_file():
            parser.error(f"{config}: no such config file")
        try:
            return report(args.kind, config, args.out or Path(f"reports/{args.kind}"))
        except (FileNotFoundError, ValueError) as error:
            print(f"cellops report: {error}", file=sys.stderr)
            return 2
    if args.command == "analyze":
        if args.config is not None and not args.config.is_file():
            parser.error(f"{args.config}: no such config file")
        try:
            return analyze(args.kind, args.inputs, args.out, args.group, args.config, args.masks)
        except ValueError as error:  # a bad config, bad masks or an unusable output folder
            print(f"cellops analyze: {error}", file=sys.stderr)
            return 2
    if args.command == "configs":
        return render_configs(args.root, check=args.check)
    if args.command == "check-data":
        for path in (args.data, args.dvc_file) + (() if args.update else (args.manifest,)):
            if not path.exists():
                parser.error(f"{path}: not found")
        return check_data(args.data, args.manifest, args.dvc_file, update=args.update)
    if args.command == "generate-data":
        if not args.params.is_file():
            parser.error(f"{args.params}: no such parameter file")
        try:
            generate_data(args.params, args.out, force=args.force)
        except FileExistsError as error:
            print(f"cellops generate-data: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
