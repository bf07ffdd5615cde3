"""MLflow run helpers for the steps: the stack's store (and that it belongs to this checkout), the active run,
logging a pipeline's whole config and PNG artifacts."""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
from zenml.client import Client

from cellops.plots import save_png
from tracking import tags

logger = logging.getLogger(__name__)


def stack_tracking_uri() -> str:
    """The MLflow tracking URI of the active stack's experiment tracker, so every step uses one store.

    Returns
    -------
    str
        The tracking URI.

    Raises
    ------
    RuntimeError
        When the active stack has no MLflow experiment tracker.
    """
    tracker = Client().active_stack.experiment_tracker
    if tracker is None or not hasattr(tracker, "get_tracking_uri"):
        raise RuntimeError(
            "the active ZenML stack has no MLflow experiment tracker: run `make setup` to register the "
            "'cellops' stack and activate it"
        )
    return tracker.get_tracking_uri()


#: Folder of a checkout's own MLflow store (SQLite database + artifacts), as `make setup` creates it.
PROJECT_STORE = "mlruns"


def project_tracking_uri(root: str | Path, store: str = PROJECT_STORE) -> str:
    """The tracking URI of the MLflow store that belongs to the checkout at ``root``.

    Parameters
    ----------
    root : str or Path
        The checkout.
    store : str, optional
        The store's folder under ``root``.

    Returns
    -------
    str
        A ``sqlite:///`` URI with an absolute path.

    Examples
    --------
    >>> project_tracking_uri("/lab/cellops")
    'sqlite:////lab/cellops/mlruns/mlflow.db'
    """
    return f"sqlite:///{Path(root).resolve() / store / 'mlflow.db'}"


def local_store_path(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` or ``file:`` tracking URI; None for a server (``http(s)://``, databases).

    Parameters
    ----------
    tracking_uri : str
        An MLflow tracking URI.

    Returns
    -------
    Path or None
        The store's file or folder.

    Examples
    --------
    >>> local_store_path("sqlite:////lab/mlruns/mlflow.db").as_posix(), local_store_path("http://mlflow:5000")
    ('/lab/mlruns/mlflow.db', None)
    """
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        return Path(tracking_uri.removeprefix("sqlite:///"))
    if parsed.scheme in ("", "file"):
        return Path(parsed.path)
    return None


def check_store_belongs_to(tracking_uri: str, project_root: str | Path) -> None:
    """Raise when ``tracking_uri`` is a local store outside ``project_root`` (a server is always fine).

    A copied or moved checkout would otherwise log into the original's MLflow store: the URI written by
    ``make setup`` is absolute.

    Parameters
    ----------
    tracking_uri : str
        An MLflow tracking URI.
    project_root : str or Path
        The checkout.

    Raises
    ------
    RuntimeError
        When the store is local and outside ``project_root``.

    Examples
    --------
    >>> check_store_belongs_to("sqlite:////lab/a/mlruns/mlflow.db", "/lab/a")
    >>> check_store_belongs_to("sqlite:////lab/a/mlruns/mlflow.db", "/lab/b")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    RuntimeError: this checkout (/lab/b) would log into the MLflow store of another one ...
    """
    root = Path(project_root).resolve()
    store = local_store_path(tracking_uri)
    if store is not None and not store.resolve().is_relative_to(root):
        raise RuntimeError(
            f"this checkout ({root}) would log into the MLflow store of another one ({store}): run `make setup` "
            "here to point the stack at this checkout's own store"
        )


def require_own_store() -> str:
    """The active stack's tracking URI, after :func:`check_store_belongs_to` the ZenML repository's root.

    Returns
    -------
    str
        The tracking URI.
    """
    uri = stack_tracking_uri()
    check_store_belongs_to(uri, Client().root or Path.cwd())
    return uri


def current_zenml_model():
    """The ZenML Model of the running step's pipeline (its config's ``model:`` block), or None without one.

    Returns
    -------
    zenml.Model or None
        The pipeline's model.
    """
    from zenml import get_step_context

    context = get_step_context()
    return context.model if context.model_version is not None else None


def active_run_id() -> str:
    """The MLflow run ZenML opened for this step (steps need ``experiment_tracker`` set in the config).

    Returns
    -------
    str
        The run's id.

    Raises
    ------
    RuntimeError
        When no MLflow run is active.
    """
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError(
            "no active MLflow run: set `experiment_tracker: mlflow_tracker` for this step in the pipeline config"
        )
    return run.info.run_id


def log_png(array: np.ndarray, artifact_path: str, name: str) -> None:
    """Log an image as a PNG artifact of the active run.

    Parameters
    ----------
    array : np.ndarray
        The image (as :func:`cellops.plots.save_png` takes it).
    artifact_path : str
        The artifact folder.
    name : str
        The file name.
    """
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(save_png(array, Path(tmp) / name)), artifact_path=artifact_path)


def _flatten(prefix: str, value: object, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = str(value)[:6000]  # MLflow's limit on a parameter value


def log_run_config() -> dict[str, str]:
    """Log every step parameter of the running pipeline as MLflow params (``<step>.<name>``).

    Returns
    -------
    dict of str to str
        The parameters logged, nested keys joined by dots.
    """
    from zenml import get_step_context

    snapshot = get_step_context().pipeline_run.snapshot
    params: dict[str, str] = {}
    for name, step_config in (snapshot.step_configurations if snapshot else {}).items():
        _flatten(name, dict(step_config.config.parameters), params)
    items = list(params.items())
    for first in range(0, len(items), 100):  # MLflow takes at most 100 params per call
        mlflow.log_params(dict(items[first : first + 100]))
    return params


def process_tags() -> dict[str, str]:
    """Tags that let a later start tell whether the process writing a run is still alive (host, PID and the
    process's start time, so a reused PID is not mistaken for it).

    Returns
    -------
    dict of str to str
        ``process.host``, ``process.pid`` and ``process.started``.
    """
    import os
    import socket

    import psutil

    return {tags.HOST: socket.gethostname(), tags.PID: str(os.getpid()),
            tags.PROCESS_STARTED: f"{psutil.Process().create_time():.3f}"}


def _process_alive(run_tags: dict[str, str]) -> bool:
    import socket

    import psutil

    if run_tags.get(tags.HOST) != socket.gethostname():
        return True  # another machine's run: not ours to judge
    try:
        process = psutil.Process(int(run_tags[tags.PID]))
        return f"{process.create_time():.3f}" == run_tags.get(tags.PROCESS_STARTED)
    except (psutil.NoSuchProcess, KeyError, ValueError):
        return False


def close_abandoned_runs() -> list[str]:
    """Mark ``KILLED`` the MLflow runs still ``RUNNING`` whose process is gone (killed with SIGKILL, the machine
    lost power...), and their ZenML pipeline runs and steps ``failed``; return the MLflow run ids closed.

    Called when training starts, so a killed attempt never stays "running" beside its rerun.

    Returns
    -------
    list of str
        The MLflow run ids closed (nested runs' parents included).
    """
    from zenml.enums import ExecutionStatus
    from zenml.models import PipelineRunUpdate, StepRunUpdate

    client = mlflow.MlflowClient()
    closed = []
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return closed
    for run in client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=1000):
        if tags.PID not in run.data.tags or _process_alive(run.data.tags):
            continue
        client.set_tag(run.info.run_id, tags.CLOSED_BECAUSE, "its process was gone when the next training started")
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
        parent = run.data.tags.get("mlflow.parentRunId")  # one pipeline training several models nests their runs
        if parent and client.get_run(parent).info.status == "RUNNING":
            client.set_tag(parent, tags.CLOSED_BECAUSE, "a nested run's process was gone")
            client.set_terminated(parent, status="KILLED")
            closed.append(parent)
        zenml_run = run.data.tags.get(tags.ZENML_RUN_ID)
        if zenml_run:
            try:
                store = Client().zen_store
                pipeline_run = Client().get_pipeline_run(zenml_run)
                for step in pipeline_run.steps.values():
                    if step.status == ExecutionStatus.RUNNING:
                        store.update_run_step(step.id, StepRunUpdate(status=ExecutionStatus.FAILED))
                if pipeline_run.status == ExecutionStatus.RUNNING:
                    store.update_run(pipeline_run.id, PipelineRunUpdate(
                        status=ExecutionStatus.FAILED, status_reason="its process was killed"))
            except Exception as error:  # noqa: BLE001 - the MLflow side is closed either way; say why not ZenML's
                logger.warning("could not mark ZenML run %s failed: %s", zenml_run, error)
    if closed:
        logger.warning("closed %d abandoned run(s) whose process was gone: %s", len(closed), ", ".join(closed))
    return closed


@contextmanager
def closed_on_interrupt():
    """Within the block, SIGTERM (what ``kill``, schedulers and container runtimes send) interrupts like Ctrl-C;
    either ends the active MLflow run ``KILLED``, naming the signal, before the interruption goes on up (so ZenML
    records the step as failed and nothing after it, registration included, runs)."""
    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupt) if in_main_thread else None
    try:
        yield
    except KeyboardInterrupt as stop:
        if mlflow.active_run() is not None:
            mlflow.set_tag(tags.CLOSED_BECAUSE, f"interrupted by {stop.args[0] if stop.args else 'SIGINT'}")
            mlflow.end_run(status="KILLED")
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def log_dataset(name: str, features: np.ndarray, lineage: dict, source: str, context: str,
                targets: np.ndarray | None = None) -> None:
    """Record the data a run used as an MLflow dataset input (the runs table's Dataset column): ``name``, the DVC
    data version as its digest and in its tags with the git commit (and the git revision the data came from, when
    the config named a ``data_rev``), and the folder it came from.

    Parameters
    ----------
    name : str
        The dataset's name.
    features : np.ndarray
        The data (or a sample of it) whose schema MLflow records.
    lineage : dict
        The run's lineage: ``data_version``, ``git_commit`` and optionally ``data_rev``, ``data_rev_commit``.
    source : str
        The folder the data came from.
    context : str
        Its role in the run (e.g. ``training``).
    targets : np.ndarray or None, optional
        The labels, when there are any.
    """
    import mlflow.data

    version = str(lineage.get("data_version", "unknown"))
    revision = {"dvc.rev": str(lineage["data_rev"]), "dvc.rev_commit": str(lineage.get("data_rev_commit", ""))} \
        if lineage.get("data_rev") else {}
    dataset = mlflow.data.from_numpy(features, targets=targets, name=name, digest=version.split(".")[0][:32],
                                     source=f"{source}@{lineage['data_rev']}" if revision else source)
    mlflow.log_input(dataset, context=context, tags={"dvc.data_version": version,
                                                      "git_commit": str(lineage.get("git_commit", "unknown")),
                                                      **revision})


@contextmanager
def system_metrics(run_id: str | None = None, sampling_interval: float = 10.0):
    """Log CPU, memory, disk and network use (and GPU where one is there) to the MLflow run while the block runs:
    ``system/...`` metrics, sampled by MLflow's own monitor (psutil). ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
    overrides the interval in seconds.

    Parameters
    ----------
    run_id : str or None, optional
        The run; by default the active one.
    sampling_interval : float, optional
        Seconds between samples.

    Yields
    ------
    SystemMetricsMonitor
        MLflow's monitor, stopped when the block ends.
    """
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    run_id = run_id or active_run_id()
    monitor = SystemMetricsMonitor(run_id, sampling_interval=sampling_interval)
    monitor.start()
    try:
        yield monitor
    finally:
        monitor.finish()



class TrainingRun:
    """What a training step does with its MLflow run inside :func:`training_run`: log each epoch, record whether
    training resumed from a checkpoint."""

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Log one epoch's metrics at step ``epoch`` (an ``on_epoch_end`` callback of every family's ``fit``).

        Parameters
        ----------
        epoch : int
            The epoch, MLflow's step.
        metrics : dict of str to float
            Its figures.
        """
        mlflow.log_metrics(metrics, step=epoch)

    def record_resume(self, resumed_from_epoch: int | None) -> None:
        """Tag the run with the last epoch of the checkpoint training resumed after (``None``: it started afresh).

        Parameters
        ----------
        resumed_from_epoch : int or None
            The history's ``resumed_from_epoch``.
        """
        mlflow.set_tag(tags.RESUMED_FROM_EPOCH, str(resumed_from_epoch))
        if resumed_from_epoch is not None:
            logger.info("training resumed after epoch %d", resumed_from_epoch)


@contextmanager
def training_run(lineage: dict, extra_tags: dict[str, object] | None = None):
    """The one preamble and guard of every training step's MLflow run.

    Before the block: the pipeline's resolved config is logged, runs abandoned by dead processes are closed, and
    the run is tagged with the data lineage, the ZenML run id, this process and ``extra_tags``. During it: SIGTERM
    ends the run ``KILLED`` (:func:`closed_on_interrupt`) and system metrics are sampled (:func:`system_metrics`).

    Parameters
    ----------
    lineage : dict
        The data lineage of the run (:mod:`cellops.lineage`).
    extra_tags : dict, optional
        More tags (model name, architecture, initialisation...).

    Yields
    ------
    TrainingRun
        Logs epochs and the resume tag.
    """
    from zenml import get_step_context

    log_run_config()
    close_abandoned_runs()
    mlflow.set_tags({**tags.lineage_to_tags(lineage), tags.ZENML_RUN_ID: str(get_step_context().pipeline_run.id),
                     **process_tags(), **{k: str(v) for k, v in (extra_tags or {}).items()}})
    with closed_on_interrupt(), system_metrics():
        yield TrainingRun()

#: The packages a logged PyTorch model needs to load (pickle format), pinned to requirements.lock.
MODEL_REQUIREMENTS = ("torch", "torchvision", "numpy", "cloudpickle")
LOCK_FILE = Path(__file__).resolve().parents[1] / "requirements.lock"


def model_requirements(lock_file: Path = LOCK_FILE) -> list[str] | None:
    """``["torch==2.14.1", ...]`` from the lock file: exact, and MLflow need not infer them (which imports the
    model in a subprocess, seconds per model); None (MLflow infers) when the lock file is not there.

    Parameters
    ----------
    lock_file : Path, optional
        The pinned requirements.

    Returns
    -------
    list of str or None
        ``name==version`` of each of :data:`MODEL_REQUIREMENTS` the lock file pins.

    Examples
    --------
    >>> [r.split("==")[0] for r in model_requirements()]
    ['torch', 'torchvision', 'numpy', 'cloudpickle']
    """
    if not lock_file.is_file():
        return None
    pins = {}
    for line in lock_file.read_text().splitlines():
        name, _, version = line.strip().partition("==")
        if version:
            pins[name.lower()] = version.split(";")[0].strip()
    return [f"{name}=={pins[name]}" for name in MODEL_REQUIREMENTS if name in pins] or None


def log_pytorch_model(model, input_example: np.ndarray, code_paths: list[str], output_of=None):
    """Log ``model`` to the active run in MLflow's pickle format with its bundled source (``code_paths``), a
    signature and an input example, and requirements pinned to the lock file; returns MLflow's ModelInfo.

    The signature is inferred from ``input_example`` and the model's output on it (``output_of(model, tensor)``
    turns that output into arrays; by default the output tensor itself). A model whose output is not a tensor
    (Mask R-CNN's list of dicts) passes ``output_of`` returning None: its signature then describes the input only,
    and no example is stored.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model (moved to the CPU, eval mode).
    input_example : np.ndarray
        An input batch.
    code_paths : list of str
        Source folders bundled with the model (its architecture's modules).
    output_of : callable or None, optional
        ``output_of(model, output)``: the output as arrays, or None for an output that is not a tensor.

    Returns
    -------
    mlflow.models.model.ModelInfo
        What MLflow logged (its ``model_uri`` is what the registry registers).
    """
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    model = model.cpu().eval()
    with torch.no_grad():
        output = model(torch.from_numpy(input_example))
    output = output_of(model, output) if output_of is not None else output.numpy()
    signature = infer_signature(input_example, output)
    # MLflow checks an input example through the pyfunc flavour, which serves tensor outputs only (and its check
    # cannot be turned off from mlflow.pytorch, whose extra arguments go to torch.save): a list output logs the
    # signature alone.
    example = input_example if output is not None else None
    # Pickle + bundled source loads anywhere the architecture's module ships, without the export constraints of
    # MLflow 3's default pt2 format.
    return mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", code_paths=code_paths,
                                    signature=signature, input_example=example,
                                    pip_requirements=model_requirements())


def epoch_logger(tracking_uri: str, run_id: str):
    """``on_epoch_end(epoch, metrics)`` that logs to run ``run_id`` of ``tracking_uri``: what rank 0 of a distributed
    training (another process) uses to log to the launching step's run, live.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store.
    run_id : str
        The run logged to.

    Returns
    -------
    EpochCallback
        ``log(epoch, metrics)``.
    """
    client = mlflow.MlflowClient(tracking_uri)

    def log(epoch: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            client.log_metric(run_id, key, value, step=epoch)
    return log
