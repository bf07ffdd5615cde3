"""``cellops reproduce``: re-run a registered version's training where it was trained (its git commit, its DVC
data version, its recorded run configuration) and compare the metrics with the registered ones.

    cellops reproduce MODEL:VERSION [--tolerance METRIC=ABS ...] [--keep] [--json]

What a version needs (:func:`missing_for_reproduction`): a clean git commit, a data version that names one
content, and its training configuration, recorded at registration (:func:`record_training_config`: the pipeline's
import path as the ``lineage.pipeline`` tag and the run config as ``reproduce/run_config.yaml`` in the artifacts of
the version's run), or, for versions registered before that, the ZenML run its ``zenml_run_id`` names.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import yaml

from cellops.reproduction import Tolerances

#: The sub-commands this module adds to ``cellops``.
COMMANDS = ("reproduce",)

#: Lineage keys (``lineage.<key>`` tags of a version, keys of its :func:`tracking.tags.version_record`) of the
#: training configuration: the pipeline's import path and where its run config is kept.
PIPELINE = "pipeline"
RUN_CONFIG = "run_config"
#: Lineage key of the number of threads torch trained with: another count sums in another order, and the same CPU
#: gives other figures (the re-run is started with as many, through ``OMP_NUM_THREADS``).
THREADS = "torch_threads"
#: The artifact folder of the version's run that holds the run config, and the file.
RUN_CONFIG_ARTIFACTS = "reproduce"
RUN_CONFIG_FILE = "run_config.yaml"


def missing_for_reproduction(record: dict) -> list[str]:
    """What lineage a version lacks to be reproduced, from its record alone; empty when it has it all.

    Checked here: a git commit that names committed code (not ``unknown``, not ``-dirty``), a data version that
    names one content (``<md5>.dir``, not ``+modified``, ``untracked`` or ``unknown``), and a training
    configuration (recorded at registration, or a ZenML run to rebuild it from). ``cellops reproduce`` checks in
    addition that the repository has the commit and the ZenML store the run.

    Parameters
    ----------
    record : dict
        The version's :func:`tracking.tags.version_record`.

    Returns
    -------
    list of str
        One sentence per missing piece.

    Examples
    --------
    >>> missing_for_reproduction({"git_commit": "abc", "data_version": "d41d8.dir", "pipeline": "p",
    ...                           "run_config": "reproduce/run_config.yaml"})
    []
    >>> missing_for_reproduction({"git_commit": "abc-dirty", "data_version": "d41d8.dir+modified"})[0]
    'git commit abc-dirty: trained on uncommitted changes, the code it ran is in no commit'
    """
    missing = []
    commit = str(record.get("git_commit") or "")
    if not commit or commit == "unknown":
        missing.append("no git commit recorded: the code it was trained with is unknown")
    elif commit.endswith("-dirty"):
        missing.append(f"git commit {commit}: trained on uncommitted changes, the code it ran is in no commit")
    data = str(record.get("data_version") or "")
    if not data or data == "unknown":
        missing.append("no data version recorded: the data it was trained on is unknown")
    elif data == "untracked":
        missing.append("data version untracked: it was trained on data DVC does not track")
    elif "+" in data or not data.endswith(".dir"):
        missing.append(f"data version {data}: the data differed from the version data.dvc records, no version "
                       "names what it was trained on")
    if not (record.get(PIPELINE) and record.get(RUN_CONFIG)) and not record.get("zenml_run_id"):
        missing.append("no training configuration recorded (no pipeline and run config with the version, no ZenML "
                       "run to rebuild them from)")
    return missing


def reproduce_commands(record: dict) -> list[str]:
    """The shell commands that reproduce a version: ``cellops reproduce NAME:VERSION``, then the manual
    equivalent (a worktree at its commit sharing this checkout's DVC cache, its data version, its run config
    from the registry, the pipeline run), run from the checkout's root.

    Parameters
    ----------
    record : dict
        The version's :func:`tracking.tags.version_record`.

    Returns
    -------
    list of str
        The commands, in order; only the first when the version lacks lineage (:func:`missing_for_reproduction`:
        the command says what is missing).

    Examples
    --------
    >>> record = {"registered_model": "cellops-unet", "model_version": "3", "git_commit": "abc123",
    ...           "data_version": "d41d8.dir", "pipeline": "pipelines.unet.training_pipeline",
    ...           "run_config": "reproduce/run_config.yaml", "mlflow_run_id": "r1"}
    >>> commands = reproduce_commands(record)
    >>> commands[0], commands[-1]
    ('cellops reproduce cellops-unet:3', 'zenml pipeline run pipelines.unet.training_pipeline -c run_config.yaml')
    """
    name, version = record["registered_model"], record["model_version"]
    commands = [f"cellops reproduce {shlex.quote(f'{name}:{version}')}"]
    if missing_for_reproduction(record):
        return commands
    folder = shlex.quote(f"/tmp/reproduce-{name}-v{version}")
    commit = shlex.quote(str(record["git_commit"]))
    commands += [f"git worktree add --detach {folder} {commit}",
                 f'cd {folder} && dvc cache dir --local "$OLDPWD/.dvc/cache" && dvc checkout data.dvc  '
                 f'# data.dvc records {record["data_version"]}']
    threads = f"OMP_NUM_THREADS={int(record[THREADS])} " if record.get(THREADS) else ""
    if record.get(PIPELINE) and record.get(RUN_CONFIG):
        commands += [f"mlflow artifacts download --run-id {shlex.quote(str(record['mlflow_run_id']))} "
                     f"--artifact-path {shlex.quote(str(record[RUN_CONFIG]))} --dst-path .",
                     f"{threads}zenml pipeline run {record[PIPELINE]} -c {RUN_CONFIG_FILE}"]
    else:
        commands.append(f"# rebuild the run config of ZenML run {record.get('zenml_run_id')} "
                        f"(`cellops reproduce` does), then zenml pipeline run PIPELINE -c {RUN_CONFIG_FILE}")
    return commands



def _plain(value: object) -> object:
    """``value`` as plain JSON types (what a YAML run config holds)."""
    return json.loads(json.dumps(value, default=str))


def run_config_from_zenml(pipeline_run) -> tuple[str, dict]:
    """The pipeline and the run config that start ``pipeline_run`` again: ``zenml pipeline run PIPELINE -c
    CONFIG`` with them re-runs it with the same pipeline parameters, step parameters, settings, experiment
    trackers and model.

    Step parameters are written in full, those the pipeline also passes in code among them: ZenML accepts a
    configured parameter equal to the one passed in code (only a different value conflicts).

    Parameters
    ----------
    pipeline_run : zenml.models.PipelineRunResponse
        The run (``get_step_context().pipeline_run`` inside a step, ``Client().get_pipeline_run(id)`` after it).

    Returns
    -------
    pipeline : str
        The pipeline's import path (``pipelines.unet.training_pipeline``).
    config : dict
        The run config.

    Raises
    ------
    LookupError
        When the run has no snapshot or pipeline spec to rebuild it from.
    """
    snapshot = pipeline_run.snapshot
    spec = snapshot.pipeline_spec if snapshot is not None else None
    if spec is None or spec.source is None:
        raise LookupError(f"ZenML run {pipeline_run.id} has no snapshot with its pipeline's source: its configuration "
                          "cannot be rebuilt")
    pipeline = f"{spec.source.module}.{spec.source.attribute}"
    settings_of = lambda settings: {key: value.model_dump(exclude_unset=True, mode="json")  # noqa: E731
                                    for key, value in (settings or {}).items()}
    configuration = snapshot.pipeline_configuration
    pipeline_settings = settings_of(configuration.settings)
    config: dict = {"run_name": f"{configuration.name}-reproduce-{{date}}-{{time}}"}
    if configuration.enable_cache is not None:
        config["enable_cache"] = configuration.enable_cache
    tags = [getattr(tag, "name", tag) for tag in configuration.tags or []]
    if tags:
        config["tags"] = list(dict.fromkeys(map(str, tags)))
    if pipeline_settings:
        config["settings"] = pipeline_settings
    if configuration.model is not None:
        config["model"] = configuration.model.model_dump(
            mode="json", exclude_none=True, exclude={"save_models_to_registry", "suppress_class_validation_warnings"})
    if configuration.parameters:
        config["parameters"] = _plain(configuration.parameters)
    steps = {}
    for name, step in snapshot.step_configurations.items():
        step_config = step.config
        entry: dict = {}
        if step_config.experiment_tracker:
            entry["experiment_tracker"] = step_config.experiment_tracker
        own = {k: v for k, v in settings_of(step_config.settings).items() if pipeline_settings.get(k) != v}
        if own:
            entry["settings"] = own
        if step_config.parameters:
            entry["parameters"] = _plain(step_config.parameters)
        if entry:
            steps[name] = entry
    if steps:
        config["steps"] = steps
    return pipeline, config


def record_training_config(client, name: str, version: str, pipeline: str, config: dict,
                           threads: int | None = None) -> dict[str, str]:
    """Keep the run config of the training that registered ``version`` with it: ``reproduce/run_config.yaml`` in
    its run's artifacts, and the pipeline and that path as its ``lineage.pipeline`` and ``lineage.run_config``
    tags (:func:`tracking.registry.keep_with_version`).

    Parameters
    ----------
    client : MlflowClient
        The registry's client.
    name : str
        The registered model.
    version : str
        The version.
    pipeline : str
        The pipeline's import path.
    config : dict
        Its run config (:func:`run_config_from_zenml`).
    threads : int, optional
        The number of threads torch trained with (:data:`THREADS`).

    Returns
    -------
    dict of str to str
        The tags set on the version.
    """
    from tracking.registry import keep_with_version
    from tracking.tags import lineage_to_tags

    tags = lineage_to_tags({PIPELINE: pipeline, RUN_CONFIG: f"{RUN_CONFIG_ARTIFACTS}/{RUN_CONFIG_FILE}",
                            **({THREADS: int(threads)} if threads else {})})
    keep_with_version(client, name, version, RUN_CONFIG_ARTIFACTS,
                      lambda folder: (folder / RUN_CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False)),
                      tags, what="training configuration")
    return tags


def load_training_config(client, record: dict) -> tuple[str, dict, str]:
    """The pipeline and run config that trained a version: the ones kept with it at registration, else rebuilt
    from the ZenML run its ``zenml_run_id`` names (in the ZenML store this environment uses).

    Returns
    -------
    pipeline : str
        The import path.
    config : dict
        The run config.
    source : str
        Where they came from, for the report.

    Raises
    ------
    LookupError
        When neither is there.
    """
    name, version = record["registered_model"], record["model_version"]
    if record.get(PIPELINE) and record.get(RUN_CONFIG):
        from tracking.registry import read_kept
        from tracking.tags import LINEAGE_PREFIX

        config = read_kept(client, name, version, LINEAGE_PREFIX + RUN_CONFIG, str(record[RUN_CONFIG]),
                           lambda path: yaml.safe_load(path.read_text()), what="a run config")
        return str(record[PIPELINE]), config, f"recorded ({record[RUN_CONFIG]})"
    run_id = record.get("zenml_run_id")
    if not run_id:
        raise LookupError(f"{name} v{version}: no recorded training configuration and no ZenML run to rebuild it from")
    from zenml.client import Client

    try:
        run = Client().get_pipeline_run(run_id)
    except Exception as error:  # noqa: BLE001 - KeyError, a store that cannot be reached...
        raise LookupError(f"{name} v{version}: no recorded training configuration, and the ZenML store does not have "
                          f"its run {run_id} to rebuild it from ({type(error).__name__}: {error})") from error
    pipeline, config = run_config_from_zenml(run)
    return pipeline, config, f"rebuilt from ZenML run {run_id}"


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=check)


def _dvc(cwd: Path, env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("dvc")), *args], cwd=cwd, env=dict(env),
                          capture_output=True, text=True)


def _fail(what: str, result: subprocess.CompletedProcess) -> RuntimeError:
    tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
    return RuntimeError(f"{what} failed (exit {result.returncode}):\n{tail}")


class NotReproducible(LookupError):
    """The version lacks what a reproduction needs; the message names what."""


def check_reproducible(record: dict, root: Path) -> list[str]:
    """:func:`missing_for_reproduction` plus what the repository at ``root`` must have: the commit, with a
    ``data.dvc`` that records the version's data version (unless it was trained on a ``data_rev``)."""
    missing = missing_for_reproduction(record)
    commit = str(record.get("git_commit") or "")
    if not commit or commit == "unknown" or commit.endswith("-dirty"):
        return missing
    if _git(root, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode != 0:
        return [*missing, f"git commit {commit}: this repository ({root}) does not have it (fetch it first)"]
    shown = _git(root, "show", f"{commit}:data.dvc", check=False)
    if shown.returncode != 0:
        return [*missing, f"git commit {commit} has no data.dvc: its data version cannot be brought back"]
    outs = (yaml.safe_load(shown.stdout) or {}).get("outs") or [{}]
    recorded = str(outs[0].get("md5", ""))
    if not record.get("data_rev") and not missing and recorded != record.get("data_version"):
        missing.append(f"data version differs: it was trained on {record.get('data_version')}, data.dvc at commit "
                       f"{commit} records {recorded}")
    return missing


def _environment(state: Path, worktree: Path) -> dict[str, str]:
    """The re-run's environment: its own ZenML config and BentoML home, the worktree's code, no MLflow URI of the
    user's (the worktree's own store is used), telemetry off."""
    from cellops.telemetry import TELEMETRY_OFF

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "ZENML_STORE", "ZENML_SERVER"))}
    env.update(TELEMETRY_OFF)
    env.update({"ZENML_CONFIG_PATH": str(state / "zenml"), "BENTOML_HOME": str(state / "bentoml"),
                "PYTHONPATH": str(worktree), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"})
    return env


def _bring_data(root: Path, worktree: Path, env: Mapping[str, str], record: dict) -> None:
    """Check out the DVC data of the worktree's commit from this checkout's cache (:func:`check_reproducible`
    checked that its data.dvc records the version's data version)."""
    from cellops.data_version import dvc_file_output

    cache = _dvc(root, env, "cache", "dir")
    if cache.returncode != 0:
        raise _fail("dvc cache dir", cache)
    shared = Path(cache.stdout.strip().splitlines()[-1]).resolve()
    link = worktree / ".dvc" / "cache"
    if not link.exists():
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(shared, target_is_directory=True)
    recorded = str(dvc_file_output(worktree / "data.dvc").get("md5", ""))  # checked: check_reproducible
    # Only the data: the stages' outputs of dvc.yaml (reports/) need not be in the cache.
    checkout = _dvc(worktree, env, "checkout", "data.dvc")
    if checkout.returncode != 0:
        raise _fail(f"dvc checkout of data version {recorded} from the cache {shared} (run `dvc pull` in {root})",
                    checkout)


def _reproduced_metrics(worktree: Path, name: str, original_tags: Mapping[str, str]) -> tuple[str, dict[str, float]]:
    """The re-run's registered version of ``name`` in the worktree's own store (the one with the original's model
    name, for families that register several models per run) and its metrics."""
    from mlflow import MlflowClient

    from tracking.runs import project_tracking_uri
    from tracking.tags import MODEL_NAME, metrics_from_tags

    client = MlflowClient(project_tracking_uri(worktree))
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version), reverse=True)
    wanted = original_tags.get(MODEL_NAME)
    matching = [v for v in versions if wanted is None or v.tags.get(MODEL_NAME) == wanted]
    if not matching:
        raise RuntimeError(f"the re-run registered no version of {name}"
                           + (f" with model name {wanted!r}" if wanted else ""))
    return str(matching[0].version), metrics_from_tags(matching[0].tags)


def reproduce(tracking_uri: str, reference: str, tolerances: Tolerances, *, keep: bool = False,
              root: Path | None = None, log=print) -> dict:
    """Re-run a version's training in a temporary worktree at its commit, on its data version, with its recorded
    run config and its own MLflow store and ZenML config (the user's registry is not touched), and compare.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store holding the version.
    reference : str
        ``NAME:VERSION`` (or ``NAME@ALIAS``).
    tolerances : Tolerances
        Per metric.
    keep : bool, optional
        Keep the worktree and the re-run's stores (their path is in the result).
    root : Path, optional
        The repository (default: the one holding the working directory).
    log : callable, optional
        Progress lines.

    Returns
    -------
    dict
        :meth:`cellops.reproduction.Reproduction.as_dict`, plus ``commit``, ``data_version``, ``pipeline``,
        ``config_source``, ``threads`` (torch's, as recorded; None: this machine's default),
        ``reproduced_version`` (in the re-run's store), ``seconds`` and ``worktree`` (kept, or
        None).

    Raises
    ------
    NotReproducible
        Missing lineage (the message names it) or a data version that differs.
    LookupError
        No such model or version.
    RuntimeError
        A step of the re-run failed (the message ends with its output).
    """
    import time

    from mlflow import MlflowClient

    from cellops.reproduction import compare_metrics
    from tracking.registry import check_store_exists, parse_model_uri, resolve_version
    from tracking.review import model_uri

    check_store_exists(tracking_uri)
    client = MlflowClient(tracking_uri)
    name, ref = parse_model_uri(model_uri(reference))
    record = resolve_version(client, name, ref)
    version = record["model_version"]
    top = _git(root or Path.cwd(), "rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0:
        raise NotReproducible(f"{root or Path.cwd()} is not in a git repository: run `cellops reproduce` in the "
                              "checkout that trained the model")
    root = Path(top.stdout.strip())
    missing = check_reproducible(record, root)
    if missing:
        raise NotReproducible(f"{name} v{version} cannot be reproduced: " + "; ".join(missing))
    pipeline, config, source = load_training_config(client, record)
    original_tags = client.get_model_version(name, version).tags
    state = Path(tempfile.mkdtemp(prefix=f"cellops-reproduce-{name}-v{version}-"))
    worktree = state / "worktree"
    started = time.monotonic()
    added = False
    try:
        result = _git(root, "worktree", "add", "--detach", str(worktree), str(record["git_commit"]), check=False)
        if result.returncode != 0:
            raise _fail(f"git worktree add at {record['git_commit']}", result)
        added = True
        env = _environment(state, worktree)
        if record.get(THREADS):
            env["OMP_NUM_THREADS"] = str(int(record[THREADS]))
        log(f"{name} v{version}: worktree at {record['git_commit'][:12]} in {worktree}")
        _bring_data(root, worktree, env, record)
        log(f"data version {record['data_version']} checked out from the shared DVC cache")
        config_file = state / RUN_CONFIG_FILE
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        for what, command in (
                ("stack setup", [sys.executable, "scripts/setup_stack.py", "--root", str(worktree)]),
                (f"zenml pipeline run {pipeline}",
                 [str(Path(sys.executable).with_name("zenml")), "pipeline", "run", pipeline, "-c", str(config_file)])):
            log(f"{what} (configuration {source}) ...")
            run = subprocess.run(command, cwd=worktree, env=env, capture_output=True, text=True)
            if run.returncode != 0:
                raise _fail(what, run)
        new_version, reproduced = _reproduced_metrics(worktree, name, original_tags)
        comparison = compare_metrics(f"{name}:{version}", record["metrics"], reproduced, tolerances)
        return {**comparison.as_dict(), "table": comparison.table(), "commit": record["git_commit"],
                "data_version": record["data_version"], "pipeline": pipeline, "config_source": source,
                "threads": int(record[THREADS]) if record.get(THREADS) else None,
                "reproduced_version": new_version, "seconds": round(time.monotonic() - started, 1),
                "worktree": str(worktree) if keep else None}
    finally:
        if not keep:
            if added:
                _git(root, "worktree", "remove", "--force", str(worktree), check=False)
            shutil.rmtree(state, ignore_errors=True)
            _git(root, "worktree", "prune", check=False)


def load_tolerances(root: Path, overrides: list[str]) -> Tolerances:
    """The tolerances of ``configs/reproduce.yaml`` under ``root`` (none there: 0 for every metric), with
    ``--tolerance METRIC=ABS`` (or ``default=ABS``) on top."""
    path = root / "configs" / "reproduce.yaml"
    config = (yaml.safe_load(path.read_text()) or {}).get("tolerance", {}) if path.is_file() else {}
    parsed = {}
    for item in overrides:
        metric, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            parsed[metric.strip()] = float(value)
        except ValueError as error:
            raise ValueError(f"--tolerance {item!r}: expected METRIC=ABSOLUTE (e.g. foreground_iou=0.001)") from error
    return Tolerances.from_dict(config, parsed)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add :data:`COMMANDS` to the ``cellops`` parser's sub-commands."""
    parser = commands.add_parser(
        "reproduce", help="re-run a registered version's training at its commit and data version; compare metrics",
        description="Check out the version's git commit in a temporary worktree, bring back its DVC data version, "
                    "re-run its recorded training configuration against a temporary MLflow store and ZenML config, "
                    "and compare each registered metric with the re-run's (tolerances: configs/reproduce.yaml). "
                    "Exit 0: reproduced; 1: differs; 2: cannot be reproduced (what is missing is named).")
    parser.add_argument("reference", metavar="MODEL:VERSION", help="e.g. cellops-unet:3 (or MODEL@ALIAS)")
    parser.add_argument("--tolerance", action="append", default=[], metavar="METRIC=ABS",
                        help="an absolute tolerance over configs/reproduce.yaml's (repeatable; default=ABS for all)")
    parser.add_argument("--keep", action="store_true", help="keep the worktree and the re-run's stores")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: MLFLOW_TRACKING_URI, else this checkout's project store")


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser, tracking_uri: str) -> int:
    """Run one of :data:`COMMANDS`; returns the exit code: 0 reproduced, 1 differs, 2 not reproducible (or no
    such version, bad arguments), 3 the re-run failed."""
    from cellops.reproduction import REPRODUCED

    try:
        tolerances = load_tolerances(Path.cwd(), args.tolerance)
    except ValueError as error:
        parser.error(str(error))
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    try:
        result = reproduce(tracking_uri, args.reference, tolerances, keep=args.keep, log=log)
    except LookupError as error:
        print(f"cellops reproduce: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"cellops reproduce: {error}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(result["table"])
        print(f"commit {result['commit']}, data {result['data_version']}, {result['pipeline']} with the "
              f"configuration {result['config_source']}, "
              f"{result['threads'] or 'the default number of'} torch threads; {result['seconds']} s"
              + (f"; worktree kept at {result['worktree']}" if result["worktree"] else ""))
    return 0 if result["verdict"] == REPRODUCED else 1
