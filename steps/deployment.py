"""Steps that take the champion from the MLflow registry into the BentoML store and build a bento."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import bentoml
import mlflow
from mlflow import MlflowClient
from zenml import log_metadata, step
from zenml.logger import get_logger

from cellops.lineage import git_commit
from cellops.ood import OOD_ARTIFACTS, REFERENCE_FILE, OODReference, check_policy
from tracking import tags
from tracking.cards import CARD_ARTIFACTS, load_card, version_card
from tracking.registry import resolve_version
from tracking.runs import require_own_store

logger = get_logger(__name__)


@step(enable_cache=False)
def import_champion(
    registered_model_name: str,
    bento_model_name: str,
    alias: str,
    service_limits: dict,
    ood_policy: str,
) -> Annotated[str, "bento_model_tag"]:
    """Import ``models:/<name>@<alias>`` into the BentoML model store. Its metadata is the registry's record of
    the version (lineage, metrics and the inference settings they were measured with, which the service
    uses, and its out-of-distribution threshold) plus the service's own limits and what it does with an
    out-of-distribution image (``ood_policy``: ``flag`` or ``refuse``, :func:`cellops.ood.check_policy`)."""
    check_policy(ood_policy)
    mlflow.set_tracking_uri(require_own_store())
    record = resolve_version(MlflowClient(), registered_model_name, f"@{alias}")
    if not record[tags.INFERENCE_SETTINGS]:
        raise ValueError(f"{registered_model_name} v{record['model_version']} was registered without inference "
                         "settings; retrain it with the current pipeline before deploying")
    # BentoML metadata takes no None: a runtime check that was skipped has no time, so those keys are left out.
    metadata = without_none({**record, "alias": alias, "service_limits": service_limits, "ood_policy": ood_policy})
    bento_model = import_with_runtime(bento_model_name, registered_model_name, record, metadata)
    log_metadata(metadata={"bento_model": str(bento_model.tag), "model_version": record["model_version"],
                           "runtime": record[tags.RUNTIME], "ood_policy": ood_policy,
                           "ood_reference": record.get("ood") is not None})
    logger.info("imported %s v%s as %s, served with %s", registered_model_name, record["model_version"],
                bento_model.tag, record[tags.RUNTIME])
    return str(bento_model.tag)


def without_none(value):
    """``value`` with every None-valued key of its mappings left out, as BentoML's metadata requires.

    >>> without_none({"checks": [{"runtime": "torch-bf16", "seconds": None}], "a": 1})
    {'checks': [{'runtime': 'torch-bf16'}], 'a': 1}
    """
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


def import_with_runtime(bento_model_name: str, registered_model_name: str, record: dict,
                        metadata: dict) -> bentoml.Model:
    """A BentoML model laid out as ``bentoml.mlflow.import_model`` lays it out (the MLflow model in
    ``mlflow_model/``), plus every exported graph of the version in ``runtimes/`` (from the ``runtimes/`` artifacts
    of its run: the service times those the registry found accurate on its own CPU, :mod:`bento.runtime`), and its
    out-of-distribution
    reference in ``ood/`` (``bento_model.path_of("ood/reference.json")``, from the ``ood/`` artifacts of its run),
    and its model card in ``card/`` (:func:`copy_card`).
    A version registered without a reference is imported all the same, with a warning: its service answers
    ``in_distribution`` unknown, saying why (:func:`cellops.ood.no_reference_verdict`)."""
    import shutil
    import tempfile

    from mlflow.artifacts import download_artifacts

    version = record["model_version"]
    with bentoml.models.create(bento_model_name, module="bentoml.mlflow",
                               labels={"registered_model": registered_model_name, "model_version": version,
                                       "runtime": record[tags.RUNTIME]},
                               metadata=metadata) as bento_model, tempfile.TemporaryDirectory() as tmp:
        # The version the record describes, by number.
        local = download_artifacts(artifact_uri=f"models:/{registered_model_name}/{version}", dst_path=tmp)
        shutil.copytree(local, bento_model.path_of("mlflow_model"))
        if not (Path(bento_model.path_of("mlflow_model")) / "MLmodel").is_file():
            raise RuntimeError(f"{registered_model_name} v{version} has no MLmodel: not an MLflow model")
        graphs = version_graphs(registered_model_name, version, Path(tmp) / "graphs")
        if graphs is not None:
            shutil.copytree(graphs, bento_model.path_of("runtimes"))
        if record.get("ood") is None:
            logger.warning("%s v%s has no out-of-distribution reference (registered before references existed): "
                           "its service will answer in_distribution unknown; retrain it with its training pipeline "
                           "to get one", registered_model_name, version)
        else:
            run_id = MlflowClient().get_model_version(registered_model_name, version).run_id
            folder = download_artifacts(run_id=run_id, artifact_path=OOD_ARTIFACTS, dst_path=str(Path(tmp) / "ood"))
            shutil.copytree(folder, bento_model.path_of(OOD_ARTIFACTS))
            OODReference.load(bento_model.path_of(f"{OOD_ARTIFACTS}/{REFERENCE_FILE}"))  # fails here, not at serve time
        copy_card(registered_model_name, version, Path(bento_model.path_of(CARD_ARTIFACTS)))
    return bento_model


def version_graphs(registered_model_name: str, version: str, dst: Path) -> Path | None:
    """The version's exported runtime graphs downloaded into ``dst`` (None for a version registered without
    them: it is served with torch)."""
    from mlflow.exceptions import MlflowException

    from tracking.batch import version_graphs_cached

    run_id = MlflowClient().get_model_version(registered_model_name, version).run_id
    try:
        return version_graphs_cached(mlflow.get_tracking_uri(), run_id, dst)
    except (MlflowException, OSError) as error:
        raise RuntimeError(f"{registered_model_name} v{version}'s runtime graphs could not be read: {error}") from error


def copy_card(registered_model_name: str, version: str, folder: Path) -> None:
    """The version's model card into ``folder`` (the BentoML model's ``card/``, which its service answers at
    ``GET /card``): the card kept with the version (:func:`tracking.cards.load_card`), or, for a version registered
    before cards existed, one generated now from the registry (:func:`tracking.cards.version_card`)."""
    card = load_card(MlflowClient(), registered_model_name, version)
    if card is None:
        logger.warning("%s v%s has no model card kept with it (registered before cards existed): generating it from "
                       "the registry now", registered_model_name, version)
        card = version_card(MlflowClient(), registered_model_name, version)
    card.write(folder)


def write_build_info(build_ctx: str) -> dict:
    """Record the commit the bento is built from in ``bento/build_info.json`` (copied into every bento; the
    services report it in their metadata), and return it."""
    info = {"git_commit": git_commit(build_ctx), "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (Path(build_ctx) / "bento" / "build_info.json").write_text(json.dumps(info, indent=1))
    return info


@step(enable_cache=False)
def build_bento(bento_model_tag: str, bentofile: str, build_ctx: str) -> Annotated[str, "bento_tag"]:
    """Build the service's bento; fails if the bento does not embed the model just imported."""
    info = write_build_info(build_ctx)
    bento = bentoml.bentos.build_bentofile(bentofile, build_ctx=build_ctx, labels={"git_commit": info["git_commit"]})
    embedded = [str(model.tag) for model in bento.info.all_models]
    if bento_model_tag not in embedded:
        raise RuntimeError(f"bento {bento.tag} embeds {embedded}, not the champion {bento_model_tag}")
    log_metadata(metadata={"bento": str(bento.tag), "models": embedded})
    logger.info("built bento %s with %s; serve it with `bentoml serve %s`", bento.tag, embedded, bento.tag)
    return str(bento.tag)


@step(enable_cache=False)
def build_service_bento(bentofile: str, build_ctx: str) -> Annotated[str, "bento_tag"]:
    """Build the bento of a service without a registered model (the classical analyses)."""
    info = write_build_info(build_ctx)
    bento = bentoml.bentos.build_bentofile(bentofile, build_ctx=build_ctx, labels={"git_commit": info["git_commit"]})
    log_metadata(metadata={"bento": str(bento.tag)})
    logger.info("built bento %s; serve it with `bentoml serve %s`", bento.tag, bento.tag)
    return str(bento.tag)
