"""The MLflow model registry: register a version with its metrics and lineage, and move the champion alias only
when the new version is better on the same test data.

Scores measured on different data versions are not comparable: when the champion was scored on another data
version (or never recorded the promotion metric), it is re-scored on the candidate's test data before deciding,
as ZenML's e2e template does, and both of its numbers are returned for the run's record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from cellops.families import record_family
from cellops.ood import OOD_ARTIFACTS, REFERENCE_FILE, OODReference
from cellops.promotion import check_promotion_metrics, should_promote
from tracking import tags as names

T = TypeVar("T")


def _identifies_data(version: str | None) -> bool:
    """Whether a recorded data version names one content: ``<md5>+modified``, ``untracked`` or ``unknown`` do not
    (two runs on differently edited data share them), so scores recorded under them are never compared."""
    return bool(version) and version.endswith(".dir") and "+" not in version


def _duplicates(champion: ModelVersion, tags: dict[str, str], scores: tuple[float, ...],
                champion_scores: tuple[float, ...] | None) -> bool:
    """Whether a candidate is the champion again: the same scores on the same test data, and the same model
    name, inference settings, data version and weights (bit for bit: a retrain with other training settings that
    ties on every score is another model, and is registered)."""
    same = [names.MODEL_NAME, names.ARCHITECTURE, names.INFERENCE_SETTINGS, f"{names.LINEAGE_PREFIX}data_version",
            f"{names.LINEAGE_PREFIX}{names.TEST_SET}", names.WEIGHTS_SHA256]
    return scores == champion_scores and all(champion.tags.get(key) == tags.get(key) for key in same)


def champion_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or None when there is no such model or alias yet.

    Parameters
    ----------
    client : MlflowClient
        The registry's client.
    name : str
        The registered model.
    alias : str
        The alias (e.g. ``champion``).

    Returns
    -------
    ModelVersion or None
        The version holding it.
    """
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def register_and_maybe_promote(
    client: MlflowClient,
    model_uri: str,
    registered_model_name: str,
    metrics: dict[str, float],
    tags: dict[str, str],
    *,
    promotion_metric: str,
    alias: str,
    min_improvement: float,
    rescore: Callable[[ModelVersion], dict[str, float]] | None = None,
    tie_breakers: Sequence[str] = (),
) -> dict:
    """Register ``model_uri`` as a new version (tagged with its metrics and ``tags``, which carry its lineage and
    inference settings) and move ``alias`` to it if it beats the champion by more than ``min_improvement``.

    A model that started from a registered version carries its parent (:data:`tracking.tags.PARENT_MODEL`,
    :func:`run_parent_tags`) from its training run to the new version, where ``cellops lineage`` shows it.

    Two cases are decided deliberately: a candidate that is the champion again (same model name, settings, data
    and weights, exactly the same scores) is not registered (``registered: False``); one trained on data no version
    names (``+modified``, ``untracked``) is registered for inspection but never promoted. ``reason`` says why.

    The champion's score is its recorded tag when it was measured on the candidate's data version; otherwise
    ``rescore(champion)`` measures it on the candidate's test data (without ``rescore`` that is an error rather
    than a comparison of incomparable numbers). ``tie_breakers`` are metrics compared in order when the
    promotion metric is exactly equal (see :func:`cellops.promotion.should_promote`).

    Parameters
    ----------
    client : MlflowClient
        The registry's client.
    model_uri : str
        The logged model to register (e.g. ``runs:/<run id>/model``).
    registered_model_name : str
        The registered model.
    metrics : dict of str to float
        The candidate's test metrics; they include ``promotion_metric`` and ``tie_breakers``.
    tags : dict of str to str
        Lineage, inference settings and the rest, set on the new version.
    promotion_metric : str
        The metric compared (higher is better).
    alias : str
        The alias moved to a better version.
    min_improvement : float
        How much the candidate must beat the champion by.
    rescore : callable or None, optional
        ``rescore(champion)``: the champion's metrics on the candidate's test data.
    tie_breakers : sequence of str, optional
        Metrics compared in order on an exact tie.

    Returns
    -------
    dict
        The decision: ``version`` (None when not registered), ``registered``, ``promoted``, ``reason``,
        ``champion_version`` and the scores compared (``candidate_score``, ``champion_score_before``,
        ``champion_recorded_score``, ``champion_rescored_score``).

    Raises
    ------
    KeyError
        When a ranked metric is not among ``metrics``.
    ValueError
        When the champion must be re-scored and ``rescore`` is None.
    """
    ranked = [promotion_metric, *tie_breakers]
    check_promotion_metrics(ranked)
    absent = [m for m in ranked if m not in metrics]
    if absent:
        raise KeyError(f"promotion metric {', '.join(map(repr, absent))} is not among the metrics {sorted(metrics)}")
    champion = champion_version(client, registered_model_name, alias)
    recorded = rescored = None
    champion_scores: tuple[float, ...] | None = None
    if champion is not None:
        champion_metrics = names.metrics_from_tags(champion.tags)
        recorded = champion_metrics.get(promotion_metric)
        candidate_lineage, champion_lineage = names.lineage_from_tags(tags), names.lineage_from_tags(champion.tags)
        candidate_data = candidate_lineage.get("data_version")
        champion_data = champion_lineage.get("data_version")
        # A family that names its test set (files and labels) must share it too: one data version can be split
        # differently (another seed or fraction, another folder outside DVC).
        other_test_set = (names.TEST_SET in candidate_lineage
                          and champion_lineage.get(names.TEST_SET) != candidate_lineage[names.TEST_SET])
        if (any(m not in champion_metrics for m in ranked) or champion_data != candidate_data
                or not _identifies_data(candidate_data) or other_test_set):
            if rescore is None:
                raise ValueError(
                    f"{registered_model_name} v{champion.version} ({alias}) has no {promotion_metric} measured on data "
                    f"version {candidate_data} (it has {recorded} on {champion_data}) and no way to re-score it was given")
            champion_metrics = rescore(champion)
            rescored = float(champion_metrics[promotion_metric])
        champion_scores = tuple(float(champion_metrics[m]) for m in ranked)
    champion_score = rescored if rescored is not None else recorded
    candidate = float(metrics[promotion_metric])
    candidate_scores = tuple(float(metrics[m]) for m in ranked)
    candidate_data = names.lineage_from_tags(tags).get("data_version")
    decision = {
        "registered_model": registered_model_name,
        "promotion_metric": promotion_metric,
        "tie_breakers": list(tie_breakers),
        "candidate_score": candidate,
        "champion_version_before": str(champion.version) if champion is not None else None,
        "champion_score_before": champion_score,
        "champion_recorded_score": recorded,
        "champion_rescored_score": rescored,
    }
    if champion is not None and _duplicates(champion, tags, candidate_scores, champion_scores):
        # The same model (name, settings, data) scoring exactly what the champion scores adds nothing: a new
        # version would only be a second copy of the champion.
        return {**decision, "version": None, "registered": False, "promoted": False,
                "champion_version": str(champion.version),
                "reason": f"ties {alias} v{champion.version} on {', '.join(ranked)} with the same model, settings "
                          "and data: a duplicate, not registered"}
    version = mlflow.register_model(model_uri, registered_model_name).version
    all_tags = {**names.metrics_to_tags(metrics), **run_parent_tags(client, tags), **tags,
                names.PROMOTION_METRIC: promotion_metric}
    for key, value in all_tags.items():
        client.set_model_version_tag(registered_model_name, version, key, value)
    if not _identifies_data(candidate_data):
        # Trained on data that no version names (edited after `dvc add`, untracked): kept for inspection,
        # never served.
        promoted, reason = False, f"data version {candidate_data!r} does not name one content: never promoted"
    else:
        promoted = should_promote(candidate_scores, champion_scores, min_improvement=min_improvement)
        reason = "beats the champion" if promoted else "does not beat the champion"
    if promoted:
        client.set_registered_model_alias(registered_model_name, alias, version)
    return {
        **decision,
        "version": str(version),
        "registered": True,
        "reason": reason,
        "promoted": promoted,
        "champion_version": str(version) if promoted else (str(champion.version) if champion is not None else None),
    }


def run_parent_tags(client: MlflowClient, tags: dict[str, str]) -> dict[str, str]:
    """The parent model (``lineage.parent_model``) recorded on the training run that ``tags`` name
    (``mlflow_run_id``), for its registered version; empty when ``tags`` carry it already, name no run, or the
    run started from no registered version.

    Parameters
    ----------
    client : MlflowClient
        The registry's client.
    tags : dict of str to str
        The tags a version is registered with.

    Returns
    -------
    dict of str to str
        ``{"lineage.parent_model": "NAME:VERSION"}`` or ``{}``.
    """
    key = f"{names.LINEAGE_PREFIX}{names.PARENT_MODEL}"
    run_id = tags.get(names.MLFLOW_RUN_ID)
    if key in tags or not run_id:
        return {}
    try:
        parent = client.get_run(run_id).data.tags.get(key)
    except MlflowException:  # a version registered from a run of another store
        return {}
    return {key: parent} if parent else {}


def describe_versions(client: MlflowClient, name: str) -> list[dict]:
    """Every version of ``name`` as :func:`tracking.tags.version_record`, newest first.

    Parameters
    ----------
    client : MlflowClient
        The registry's client.
    name : str
        The registered model.

    Returns
    -------
    list of dict
        One record per version.
    """
    versions = client.search_model_versions(f"name='{name}'")
    records = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        full = client.get_model_version(name, v.version)  # search results omit aliases in some stores
        records.append(names.version_record(name, full.version, full.run_id, full.tags, list(full.aliases or [])))
    return records


def _registered_model(client: MlflowClient, name: str):
    """The registered model ``name``, or a ``LookupError`` naming it and the models this store holds."""
    try:
        return client.get_registered_model(name)
    except MlflowException as error:
        known = sorted(m.name for m in client.search_registered_models())
        raise LookupError(f"no registered model {name!r} in this store; registered models: "
                          f"{', '.join(known) or 'none'}") from error


def resolve_version(client: MlflowClient, name: str, ref: str | int | None) -> dict:
    """One version by number, by ``@alias``, ``latest`` (the newest), or the champion when ``ref`` is None.

    Raises a ``LookupError`` naming what was asked for and what exists: the registered models when ``name`` is
    not one, its versions when the version is missing, its aliases when the alias is.

    Parameters
    ----------
    client : MlflowClient
        The registry's client.
    name : str
        The registered model.
    ref : str, int or None
        A version number (MLflow gives them as int or str), ``@alias``, ``latest``, or None for ``@champion``.

    Returns
    -------
    dict
        The version's :func:`tracking.tags.version_record`.

    Raises
    ------
    LookupError
        Naming what was asked for and what exists.
    """
    model = _registered_model(client, name)
    numbers = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    ref = None if ref is None else str(ref)
    if ref == "latest":
        if not numbers:
            raise LookupError(f"{name} has no versions")
        ref = str(numbers[-1])
    if ref is None or ref.startswith("@"):
        alias = (ref or "@champion")[1:]
        version = champion_version(client, name, alias)
        if version is None:
            aliases = ", ".join(f"{a} (v{v})" for a, v in sorted((model.aliases or {}).items()))
            raise LookupError(f"{name} has no version with alias {alias!r}; "
                              + (f"its aliases: {aliases}" if aliases else "it has no aliases"))
    else:
        try:
            version = client.get_model_version(name, ref)
        except MlflowException as error:
            raise LookupError(f"{name} has no version {ref}; its versions: "
                              f"{', '.join(map(str, numbers)) or 'none'}") from error
    return names.version_record(name, version.version, version.run_id, version.tags, list(version.aliases or []))


def record_runtimes(client: MlflowClient, name: str, version: str, runtime: str, checks: list[dict],
                    files: Sequence[str]) -> None:
    """Keep the exported graphs (``files``) and the checks beside the torch model: in the ``runtimes/`` artifact
    folder of the version's run, and as tags of the version (the chosen runtime and every check).

    Parameters
    ----------
    client : MlflowClient
        The registry's client.
    name : str
        The registered model.
    version : str
        The version.
    runtime : str
        The runtime chosen to serve it.
    checks : list of dict
        Every runtime's check (:meth:`cellops.runtimes.RuntimeCheck.as_dict`).
    files : sequence of str
        The exported graphs (:func:`cellops.runtimes.runtime_files`).
    """
    import json
    import shutil

    def write(folder: Path) -> None:
        for file in files:
            shutil.copy(file, folder)
        (folder / "checks.json").write_text(json.dumps({"runtime": runtime, "checks": checks}, indent=1))

    keep_with_version(client, name, version, names.RUNTIME_ARTIFACTS, write,
                      names.runtime_to_tags(runtime, checks), what="exported graphs")


def keep_with_version(client: MlflowClient, name: str, version: str, artifact_path: str,
                      write: Callable[[Path], None], tags: Mapping[str, str], *, what: str) -> None:
    """Keep files and tags with a registered version: what ``write`` puts in a folder goes to ``artifact_path`` in
    the artifacts of the version's run, then ``tags`` are set on the version.

    Parameters
    ----------
    client : MlflowClient
        The registry's client.
    name : str
        The registered model.
    version : str
        The version.
    artifact_path : str
        The artifact folder of the run.
    write : callable
        Writes the files into the folder it is given.
    tags : mapping of str to str
        The version's tags.
    what : str
        What is kept, for the error message.

    Raises
    ------
    ValueError
        For a version registered from no run (nowhere to keep the files).
    """
    import tempfile

    model_version = client.get_model_version(name, str(version))
    if not model_version.run_id:
        raise ValueError(f"{name} v{version} was registered from no MLflow run: there is no run to keep its "
                         f"{what} in")
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        client.log_artifacts(model_version.run_id, tmp, artifact_path)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def read_kept(tracking: str | MlflowClient, name: str, version: str, tag: str, artifact_path: str,
              read: Callable[[Path], T], *, what: str) -> T | None:
    """The inverse of :func:`keep_with_version`: ``read(path)`` of the file or folder ``artifact_path`` in the
    artifacts of the version's run, or None for a version without the ``tag`` that says it was kept.

    Parameters
    ----------
    tracking : str or MlflowClient
        The MLflow store's tracking URI, or a client of it.
    name : str
        The registered model.
    version : str
        The version.
    tag : str
        The version tag set when the files were kept.
    artifact_path : str
        The file or folder, relative to the run's artifact root.
    read : callable
        Reads the downloaded path (it is removed afterwards).
    what : str
        What is read, for the error message.

    Returns
    -------
    object or None
        What ``read`` returned.

    Raises
    ------
    LookupError
        When the version is tagged but its run's artifacts do not hold ``artifact_path``.
    """
    import tempfile

    client = tracking if isinstance(tracking, MlflowClient) else MlflowClient(tracking)
    model_version = client.get_model_version(name, str(version))
    if tag not in (model_version.tags or {}):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(model_version.run_id, artifact_path, tmp)
        except (MlflowException, OSError) as error:
            raise LookupError(f"{name} v{version} is tagged with {what}, but its run {model_version.run_id} holds "
                              f"no {artifact_path}: {error}") from error
        return read(Path(path))


def record_ood(client: MlflowClient, name: str, version: str, reference: OODReference) -> dict[str, str]:
    """Keep a version's out-of-distribution reference with it: ``ood/reference.json`` in the artifacts of the
    version's run (:data:`cellops.ood.OOD_ARTIFACTS`, :data:`cellops.ood.REFERENCE_FILE`), and its threshold,
    false-alarm rate, score and the features the score uses as version tags (:func:`tracking.tags.ood_to_tags`),
    by :func:`keep_with_version`. The deployment copies the folder into the BentoML model;
    :func:`load_ood_reference` reads it back.

    Parameters
    ----------
    client : MlflowClient
        The registry's client.
    name : str
        The registered model.
    version : str
        The version.
    reference : OODReference
        Its reference (:func:`cellops.ood.fit_reference`).

    Returns
    -------
    dict of str to str
        The tags set on the version.

    Raises
    ------
    ValueError
        For a version registered from no run (nowhere to keep the artifact).
    """
    tags = names.ood_to_tags(reference.threshold, reference.false_alarm_rate, reference.score_name,
                             reference.scored_features or reference.feature_names)
    keep_with_version(client, name, version, OOD_ARTIFACTS, lambda folder: reference.save(folder / REFERENCE_FILE),
                      tags, what="out-of-distribution reference")
    return tags


def load_ood_reference(tracking: str | MlflowClient, name: str, version: str) -> OODReference | None:
    """The out-of-distribution reference :func:`record_ood` kept with a version, or None for a version registered
    without one (before references existed: its predictions get :func:`cellops.ood.no_reference_verdict`).

    Parameters
    ----------
    tracking : str or MlflowClient
        The MLflow store's tracking URI, or a client of it.
    name : str
        The registered model.
    version : str
        The version.

    Returns
    -------
    OODReference or None
        The reference.

    Raises
    ------
    LookupError
        When the version is tagged with a reference that its run's artifacts do not hold.
    """
    return read_kept(tracking, name, version, names.OOD_THRESHOLD, f"{OOD_ARTIFACTS}/{REFERENCE_FILE}",
                     OODReference.load, what="an out-of-distribution reference")

def parse_model_uri(uri: str) -> tuple[str, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, ref for :func:`resolve_version`).

    Parameters
    ----------
    uri : str
        A registry URI.

    Returns
    -------
    name : str
        The registered model.
    ref : str or None
        ``@ALIAS``, a version, ``latest``, or None (the URI names the model only).

    Examples
    --------
    >>> parse_model_uri("models:/cellops-classifier@champion"), parse_model_uri("models:/cellops-classifier/3")
    (('cellops-classifier', '@champion'), ('cellops-classifier', '3'))
    """
    if not uri.startswith("models:/"):
        raise LookupError(f"{uri}: give a registry URI, models:/NAME@ALIAS, models:/NAME/VERSION or "
                          "models:/NAME/latest")
    path = uri.removeprefix("models:/")
    if "@" in path:
        name, alias = path.split("@", 1)
        return name, f"@{alias}"
    if "/" in path:
        name, version = path.split("/", 1)
        return name, version
    return path, None


def check_store_exists(tracking_uri: str) -> None:
    """Raise a ``LookupError`` when ``tracking_uri`` is a local store that does not exist (MLflow would create an
    empty one and answer that nothing is registered); a server is not checked.

    Parameters
    ----------
    tracking_uri : str
        An MLflow tracking URI.
    """
    from tracking.runs import local_store_path

    store = local_store_path(tracking_uri)
    if store is not None and not store.exists():
        raise LookupError(f"no MLflow store at {store}: run `make setup` and a training pipeline in this checkout, "
                          "or give --tracking-uri (or MLFLOW_TRACKING_URI)")


def resolve_registered(tracking_uri: str, model_uri: str) -> tuple[str, dict]:
    """The registered model's name and :func:`resolve_version` record.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store.
    model_uri : str
        ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/NAME/latest``.

    Returns
    -------
    name : str
        The registered model.
    record : dict
        The version's :func:`tracking.tags.version_record`.

    Raises
    ------
    LookupError
        Naming what exists, when there is no such store, model, version or alias.
    """
    check_store_exists(tracking_uri)
    name, ref = parse_model_uri(model_uri)
    return name, resolve_version(MlflowClient(tracking_uri), name, ref)


def load_registered(tracking_uri: str, name: str, record: dict):
    """That version's PyTorch model, on the CPU, in eval mode.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store.
    name : str
        The registered model.
    record : dict
        The version's record (:func:`resolve_registered`).

    Returns
    -------
    torch.nn.Module
        The model.
    """
    import mlflow.pytorch

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pytorch.load_model(f"models:/{name}/{record['model_version']}", map_location="cpu").eval()


@dataclass(frozen=True)
class InitWeights:
    """A registered version's weights, to start a training from (``init: models:/NAME@ALIAS``).

    Attributes
    ----------
    parent : str
        The version, ``NAME:VERSION`` (the run's and the new version's :data:`tracking.tags.PARENT_MODEL`).
    state_dict : dict
        Its weights, on the CPU.
    architecture : str or None
        Its ``architecture`` tag (classifier and Mask R-CNN versions), None when it has none.
    settings : dict
        Its serving record (:func:`tracking.tags.inference_from_tags`).
    """

    parent: str
    state_dict: dict
    architecture: str | None
    settings: dict


def load_init_weights(tracking_uri: str, reference: str, family: str) -> InitWeights:
    """The weights of the registered version ``reference`` names, for a training of ``family`` to start from.

    The architecture is the caller's to check against its config (``cellops.<family>.specs``) before loading.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store (in a step: ``mlflow.get_tracking_uri()``).
    reference : str
        ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/NAME/latest``.
    family : str
        The family being trained: a version of another family is refused.

    Returns
    -------
    InitWeights
        The parent ``NAME:VERSION``, its weights, architecture tag and serving record.

    Raises
    ------
    LookupError
        No such store, model, version or alias (naming what exists); a version of another family, or registered
        without a family's serving record.
    """
    name, record = resolve_registered(tracking_uri, reference)
    parent = f"{name}:{record['model_version']}"
    settings = record[names.INFERENCE_SETTINGS] or {}
    registered_family = record_family(settings)
    if registered_family != family:
        raise LookupError(f"init {reference}: {parent} is a {registered_family} model, not a {family}")
    version = MlflowClient(tracking_uri).get_model_version(name, record["model_version"])
    model = load_registered(tracking_uri, name, record)
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    return InitWeights(parent=parent, state_dict=state, architecture=version.tags.get(names.ARCHITECTURE),
                       settings=settings)
