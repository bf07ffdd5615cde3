"""The commands of `cellops` that need no model registry: data generation and analyses of users' own images.

    cellops generate-data [--params params.yaml] [--out data] [--force]
    cellops configs [--check]
    cellops check-data [--data data] [--manifest data.files.json] [--dvc-file data.dvc] [--update]
    cellops analyze colonies|nuclei|calcium INPUT... --out DIR [--group NAME] [--config FILE] [--masks LABELS.tif...]
    cellops report colonies|nuclei|calcium [--config configs/<kind>.yaml] [--out reports/<kind>]

Each is a plain function returning an exit code; :func:`add_commands` and :func:`run_command` give them to the
`cellops` application, which :mod:`tracking.cli` assembles with the registry commands (models, lineage, predict).

Batch commands (analyze, predict) run on the batch engine (:mod:`cellops.batch`) and share its exit code contract
(:func:`cellops.batch.batch_exit_code`): 0 every file was done; 1 some files failed (each named on stderr with its
problem, the others done and summarised); 2 the command could not run at all (bad arguments, config or model, or not
one input file could be used).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from cellops.batch import (BATCH_EXIT_CODES, EXIT_NOT_RUN, EXIT_SOME_FAILED, SUMMARY, BatchResult, batch_exit_code,
                           distinct_files, input_names, repeat_note)


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

#: The commands of this module (:func:`add_commands`, :func:`run_command`).
COMMANDS = ("generate-data", "configs", "check-data", "analyze", "report")


def _pipeline_parameters(config: Path) -> dict:
    """The ``parameters`` block of a pipeline config (what the pipeline, this CLI and the DVC stages share)."""
    return (yaml.safe_load(config.read_text()) or {}).get("parameters") or {}


def _analysis_params(kind: str, config: Path | None):
    """Parameters of ``kind`` and the :class:`~cellops.classical.analyses.FileReading` (channel, scene): from a
    pipeline config (its ``parameters.analysis``) or a plain mapping of parameter names to values; the defaults when
    no file is given."""
    from cellops.classical.analyses import analysis_settings

    if config is None:
        return analysis_settings(kind, {})
    try:
        values = yaml.safe_load(config.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{config}: not a readable YAML file ({error})") from error
    if isinstance(values, dict) and "parameters" in values:  # a pipeline config
        parameters = values["parameters"] or {}
        values = (parameters.get("analysis") if isinstance(parameters, dict) else parameters) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{config}: expected a mapping of parameter names to values, got {type(values).__name__}")
    return analysis_settings(kind, values)


def distinct_inputs(command: str, files: list[Path], verb: str) -> list[Path]:
    """``files`` without repeats (:func:`cellops.batch.distinct_files`), each repeat named on stderr.

    Parameters
    ----------
    command : str
        The command, at the start of each line (``cellops analyze``).
    files : list of Path
        The files as given.
    verb : str
        What is done to a file (``analysed``), for the lines.

    Returns
    -------
    list of Path
        Each file once, in order.
    """
    files, repeats = distinct_files(files)
    for repeat, first in repeats:
        print(f"{command}: {repeat_note(repeat, first)}; {verb} once", file=sys.stderr)
    return files


def output_folder(out: Path) -> Path:
    """``out``, created if missing; a ``ValueError`` saying why when it cannot be a batch's output folder.

    Parameters
    ----------
    out : Path
        The ``--out`` of a batch command.

    Returns
    -------
    Path
        ``out``.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {out}: cannot create the output folder ({error.strerror})") from error
    return out


def finish_batch(command: str, result: BatchResult, verb: str) -> int:
    """Name every failed file on stderr with its problem, close with a line when some or all failed, and return
    the exit code (:func:`cellops.batch.batch_exit_code`).

    Parameters
    ----------
    command : str
        The command, at the start of the closing line (``cellops analyze nuclei``).
    result : cellops.batch.BatchResult
        What the batch did.
    verb : str
        What was done to a file (``analysed``, ``predicted``).

    Returns
    -------
    int
        0 every file done (or skipped: done before), 1 some failed, 2 all failed (or no file).
    """
    for problem in result.failures.values():
        print(f"  failed: {problem}", file=sys.stderr)
    n_files, n_failed = len(result.rows), result.count("failed")
    code = batch_exit_code(n_files, n_failed)
    if code == EXIT_SOME_FAILED:
        print(f"{command}: some files failed ({n_failed} of {n_files}); the others were {verb}", file=sys.stderr)
    elif code == EXIT_NOT_RUN:
        print(f"{command}: no file could be {verb}", file=sys.stderr)
    return code


def done_line(result: BatchResult, verb: str) -> str:
    """``3 of 4 files analysed`` (and how many of them were kept from a previous run), for a batch's report.

    Parameters
    ----------
    result : cellops.batch.BatchResult
        What the batch did.
    verb : str
        What was done to a file.

    Returns
    -------
    str
        The line, without the command.

    Examples
    --------
    >>> done_line(BatchResult([{"status": "done"}, {"status": "skipped"}, {"status": "failed"}]), "analysed")
    '2 of 3 files analysed (1 unchanged since the last run: kept)'
    """
    done, skipped = len(result.rows) - result.count("failed"), result.count("skipped")
    return (f"{done} of {len(result.rows)} files {verb}"
            + (f" ({skipped} unchanged since the last run: kept)" if skipped else ""))


def analyze(kind: str, inputs: list[Path], out: Path, group: str | None, config: Path | None,
            masks: list[Path] | None = None, channel: str | None = None, scene: str | None = None) -> int:
    """Run one analysis over ``inputs`` on the batch engine (:mod:`cellops.batch`); returns its exit code.

    Every file that cannot be analysed is named on stderr with its problem, one line each, and the others are
    analysed and summarised (``<kind>_all.csv``, and ``batch_summary.csv``: one row per file). Outputs are named
    after their input; inputs that share a name get the folders that tell them apart
    (:func:`cellops.batch.input_names`). A file given twice is analysed once; a file analysed before into ``out``
    with the same content and settings is kept, not analysed again.

    Parameters
    ----------
    kind : str
        ``colonies``, ``nuclei`` or ``calcium``.
    inputs : list of Path
        The image files (calcium: time-lapse stacks).
    out : Path
        The output folder.
    group : str or None
        The files' culture group (None: each file's folder name).
    config : Path or None
        A YAML file of the analysis parameters (None: the defaults).
    masks : list of Path, optional
        Calcium: one label TIFF per movie, in the same order, measured instead of segmenting.
    channel, scene : str, optional
        The channel and scene (name or index) to read from each file; they replace the config's.

    Returns
    -------
    int
        :func:`cellops.batch.batch_exit_code`: 0 all analysed, 1 some failed, 2 none could be.

    Raises
    ------
    ValueError
        For what stops the whole command: a bad config, bad masks or an unusable output folder.
    """
    from cellops.classical.analyses import analyze_batch

    params, reading = _analysis_params(kind, config)
    if channel is not None or scene is not None:
        reading = replace(reading, **{k: v for k, v in (("channel", channel), ("scene", scene)) if v is not None})
    baseline = getattr(params, "baseline_frames", 1)
    if isinstance(baseline, bool) or not isinstance(baseline, int) or baseline < 1:
        raise ValueError(f"{config}: baseline_frames must be a whole number of frames (1 or more), got {baseline!r}")
    pairs: dict[Path, Path] = {}
    if masks:
        if kind != "calcium":
            raise ValueError(f"--masks is for calcium movies (cells drawn elsewhere), not {kind}")
        if len(masks) != len(inputs):
            raise ValueError(f"--masks needs one label image per movie: {len(inputs)} movies, {len(masks)} masks")
        missing = [str(m) for m in masks if not m.is_file()]
        if missing:
            raise ValueError(f"mask files not found: {missing}")
        for movie, mask in zip(inputs, masks):
            if pairs.setdefault(movie, mask) != mask:
                raise ValueError(f"{movie} is given twice, with the masks {pairs[movie]} and {mask}")
    files = distinct_inputs("cellops analyze", inputs, "analysed")
    output_folder(out)
    result, table = analyze_batch(kind, files, out, params, names=input_names(files), group=group, masks=pairs,
                                  reading=reading)
    failed = result.count("failed") == len(result.rows)
    print(f"{kind}: {done_line(result, 'analysed')}"
          + ("" if failed else f", {len(table)} objects; results in {out} (each file: {out / SUMMARY})"))
    return finish_batch(f"cellops analyze {kind}", result, "analysed")


def report(kind: str, config: Path, out: Path) -> int:
    """Whole-dataset report of ``kind`` as the pipeline config's ``parameters`` describe it (data folder, analysis
    parameters, report options); writes tables, figures and ``metrics.json`` under ``out`` (the DVC stages).

    Parameters
    ----------
    kind : str
        ``colonies``, ``nuclei`` or ``calcium``.
    config : Path
        The pipeline config.
    out : Path
        The report folder.

    Returns
    -------
    int
        0.
    """
    from cellops.reports import run_report

    parameters = _pipeline_parameters(config)
    missing = [key for key in ("data_dir", "analysis", "report") if key not in parameters]
    if missing:
        raise ValueError(f"{config}: `parameters` lacks {missing}")
    result = run_report(kind, parameters["data_dir"], out, parameters["analysis"], parameters["report"])
    metrics = result.write(out)
    print(f"{kind}: {json.dumps(result.accuracy)}; written to {metrics}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add this module's commands (:data:`COMMANDS`) to the ``cellops`` parser's sub-commands.

    Parameters
    ----------
    commands : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers`` returned.
    """
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
    ana.add_argument("--out", type=Path, required=True,
                     help=f"folder for label TIFFs, CSV tables and PNG plots, and {SUMMARY} (one row per file); "
                          "a file analysed there before with the same content and settings is kept")
    ana.add_argument("--group", help="culture group of these files (default: each file's folder name)")
    ana.add_argument("--config", type=Path, help="YAML with the analysis parameters (e.g. configs/nuclei.yaml)")
    ana.add_argument("--channel", metavar="NAME|INDEX",
                     help="the channel to analyse in multi-channel files (a name from the file's metadata, or an index)")
    ana.add_argument("--scene", metavar="NAME|INDEX", help="the scene (series) to analyse in multi-scene files")
    ana.add_argument("--masks", type=Path, nargs="+", metavar="LABELS.tif",
                     help="calcium: cell masks drawn elsewhere (Fiji, napari, Cellpose), one label TIFF per movie")
    rep = commands.add_parser("report", help="whole-dataset report with accuracy, as in the pipeline config")
    rep.add_argument("kind", choices=KINDS)
    rep.add_argument("--config", type=Path, help="pipeline config (default configs/<kind>.yaml)")
    rep.add_argument("--out", type=Path, help="output folder (default reports/<kind>)")


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the command of ``args``, one of :data:`COMMANDS`; returns its exit code.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed arguments.
    parser : argparse.ArgumentParser
        Their parser (``parser.error`` for bad arguments: exit code 2).

    Returns
    -------
    int
        The exit code.
    """
    if args.command == "report":
        config = args.config or Path(f"configs/{args.kind}.yaml")
        if not config.is_file():
            parser.error(f"{config}: no such config file")
        try:
            return report(args.kind, config, args.out or Path(f"reports/{args.kind}"))
        except (FileNotFoundError, ValueError) as error:
            print(f"cellops report: {error}", file=sys.stderr)
            return EXIT_NOT_RUN
    if args.command == "analyze":
        if args.config is not None and not args.config.is_file():
            parser.error(f"{args.config}: no such config file")
        try:
            return analyze(args.kind, args.inputs, args.out, args.group, args.config, args.masks, args.channel,
                           args.scene)
        except ValueError as error:  # a bad config, bad masks or an unusable output folder
            print(f"cellops analyze: {error}", file=sys.stderr)
            return EXIT_NOT_RUN
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
    raise ValueError(f"not a command of cellops.cli: {args.command}")
