"""What every family's registration step (``steps/<family>/register.py``) shares: register the run's models best
first and promote one only when it beats the champion (:func:`tracking.registry.register_and_maybe_promote`), let
ZenML's Model Control Plane follow the same decision, and log the comparison table of the run's models; and what
every family's OOD step (``steps/<family>/ood.py``) shares: keep a registered version's out-of-distribution
reference with it (:func:`record_reference`). Each registered version also keeps the run config that trained it
(:func:`record_training_run`, for ``cellops reproduce``) and its robustness sweep (:func:`record_sweep`)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from zenml import get_step_context, log_metadata
from zenml.enums import ModelStages
from zenml.logger import get_logger

from cellops.model_robustness import Perturbation, parse_perturbations, robustness_sweep
from cellops.ood import OODReference
from cellops.promotion import check_promotion_metrics, ranking_key
from tracking import tags
from tracking.registry import record_ood, register_and_maybe_promote
from tracking.reproduce import record_training_config, run_config_from_zenml
from tracking.robustness import record_robustness
from tracking.runs import current_zenml_model

logger = get_logger(__name__)


def follow_in_model_control_plane(decision: dict) -> None:
    """Record the MLflow version on the run's ZenML model version, and keep ZenML's ``production`` stage on the
    version that holds MLflow's champion alias."""
    zenml_model = current_zenml_model()
    if zenml_model is None:
        return
    log_metadata(metadata={"mlflow_registered_model": decision["registered_model"],
                           "mlflow_model_version": str(decision["version"]), "promoted": decision["promoted"]},
                 infer_model=True)
    if decision["promoted"]:
        zenml_model.set_stage(ModelStages.PRODUCTION, force=True)


def register_ranked(
    evaluations: list[dict],
    lineage: dict,
    test_set: str,
    rescore: Callable,
    *,
    registered_model_name: str,
    promotion_metric: str,
    tie_breakers: list[str],
    alias: str,
    min_improvement: float,
) -> dict:
    """Register every evaluated model of a comparison run, best first, each with its lineage, test-set
    fingerprint, scores and inference settings; ``alias`` moves only to one that beats the champion on the same
    test set (``rescore`` scores a champion measured on another). For the families that compare several models
    (classifier, Mask R-CNN); each ``evaluation`` holds name, architecture, init_used, model_uri, mlflow_run_id,
    scores, settings and weights_sha256."""
    ranked = [promotion_metric, *tie_breakers]
    check_promotion_metrics(ranked)
    zenml_run_id = str(get_step_context().pipeline_run.id)
    decisions = []
    for e in sorted(evaluations, key=lambda e: ranking_key([e["scores"][m] for m in ranked]), reverse=True):
        decision = register_and_maybe_promote(
            MlflowClient(), e["model_uri"], registered_model_name, e["scores"],
            {**tags.lineage_to_tags({**lineage, tags.TEST_SET: test_set}), **tags.inference_to_tags(e["settings"]),
             tags.MLFLOW_RUN_ID: e["mlflow_run_id"], tags.ZENML_RUN_ID: zenml_run_id, tags.MODEL_NAME: e["name"],
             tags.ARCHITECTURE: e["architecture"], tags.INIT_USED: e["init_used"],
             tags.WEIGHTS_SHA256: e["weights_sha256"]},
            promotion_metric=promotion_metric, tie_breakers=tie_breakers, alias=alias,
            min_improvement=min_improvement, rescore=rescore)
        decisions.append({**decision, "model_name": e["name"]})
        logger.info("%s -> %s v%s, promoted: %s", e["name"], registered_model_name, decision["version"],
                    decision["promoted"])
    promoted = [d for d in decisions if d["promoted"]]
    summary = {"versions": decisions, "promoted": promoted[-1] if promoted else None,
               "champion_version": decisions[-1]["champion_version"]}
    mlflow.set_tags({"champion_version": str(summary["champion_version"])})
    # The run's best model stands for the run in ZenML's Model Control Plane (production if it was promoted).
    follow_in_model_control_plane(decisions[0])
    log_metadata(metadata={"registration": json.loads(json.dumps(summary, default=str))})
    return summary


def log_comparison(evaluations: list[dict], score_columns: Sequence[str],
                   plots: Callable[[Path], None] | None = None) -> dict:
    """The comparison table of a run's models (name, architecture, init, ``score_columns``, costs) as CSV and
    markdown, plus whatever ``plots`` draws into the folder, logged as ``comparison/`` to this step's MLflow run and
    to the pipeline's parent run, where the side-by-side view of all models belongs. Returns the table's rows."""
    import pandas as pd

    table = pd.DataFrame([{"model": e["name"], "architecture": e["architecture"], "init": e["init_used"],
                           **{k: e["scores"][k] for k in score_columns}, **e["costs"]} for e in evaluations])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table.to_csv(folder / "comparison.csv", index=False, float_format="%.6g")
        (folder / "comparison.md").write_text(table.to_markdown(index=False, floatfmt=".4g") + "\n")
        if plots is not None:
            plots(folder)
        mlflow.log_artifacts(str(folder), artifact_path="comparison")
        run = mlflow.active_run()
        parent = run.data.tags.get("mlflow.parentRunId") if run is not None else None
        if parent:
            MlflowClient().log_artifacts(parent, str(folder), artifact_path="comparison")
    logger.info("comparison on the test split:\n%s", table.to_string(index=False))
    comparison = {"rows": json.loads(table.to_json(orient="records"))}
    log_metadata(metadata={"comparison": comparison})
    return comparison


def registered_versions(registration: dict) -> list[dict]:
    """The versions a registration step registered (its decision, or every decision of :func:`register_ranked`),
    best first; a model not registered (a duplicate of the champion) is left out.

    Examples
    --------
    >>> registered_versions({"registered_model": "m", "version": "3", "promoted": True})
    [{'registered_model': 'm', 'version': '3', 'promoted': True}]
    >>> registered_versions({"versions": [{"version": None}, {"registered_model": "m", "version": "5"}]})
    [{'registered_model': 'm', 'version': '5'}]
    """
    decisions = registration["versions"] if "versions" in registration else [registration]
    return [d for d in decisions if d.get("version") is not None]


def record_reference(name: str, version: str, reference: OODReference, *, label: str = "") -> dict:
    """Keep ``reference`` with the registered ``version`` (:func:`tracking.registry.record_ood`: artifact and
    tags) and log its threshold and row counts as metrics of this step's MLflow run (``ood_<label>_...`` when
    a run registers several models, ``ood_...`` otherwise).

    Parameters
    ----------
    name : str
        The registered model.
    version : str
        The version.
    reference : OODReference
        Its reference.
    label : str, optional
        The model's name in the run (several models registered by one run).

    Returns
    -------
    dict
        The summary the step returns and logs as metadata: version, threshold, false-alarm rate, score, row counts
        and the share of calibration images flagged.
    """
    import numpy as np

    record_ood(MlflowClient(), name, version, reference)
    flagged = float(np.mean(reference.calibration_scores > reference.threshold))
    summary = {"registered_model": name, "version": str(version), **({"model_name": label} if label else {}),
               "score": reference.score_name, "threshold": reference.threshold,
               "false_alarm_rate": reference.false_alarm_rate, "reference_rows": reference.n_reference,
               "calibration_rows": reference.n_calibration, "calibration_flagged": flagged,
               "features": list(reference.feature_names),
               "scored_features": list(reference.scored_features or reference.feature_names)}
    if mlflow.active_run() is not None:
        prefix = f"ood_{label}_" if label else "ood_"
        mlflow.log_metrics({f"{prefix}threshold": reference.threshold, f"{prefix}reference_rows": reference.n_reference,
                            f"{prefix}calibration_rows": reference.n_calibration,
                            f"{prefix}calibration_flagged": flagged})
    logger.info("%s v%s: OOD reference of %d training and %d held-out images, %s threshold %.3f (%.0f%% false "
                "alarms; %.1f%% of the held-out images above it)", name, version, reference.n_reference,
                reference.n_calibration, reference.score_name, reference.threshold, 100 * reference.false_alarm_rate,
                100 * flagged)
    return summary


def log_ood_references(summaries: list[dict]) -> dict:
    """The OOD step's output: the references :func:`record_reference` kept (best version first), logged as the
    step's metadata and, for the first, as the run's ZenML model version's (it stands for the run, as in
    :func:`register_ranked`)."""
    summary = {"versions": summaries}
    log_metadata(metadata={"ood": summary})
    if summaries and current_zenml_model() is not None:
        log_metadata(metadata={"ood": summaries[0]}, infer_model=True)
    return summary


def record_training_run(name: str, versions: Sequence[str]) -> dict | None:
    """Keep the pipeline and run config of this run (:func:`tracking.reproduce.run_config_from_zenml`) with each
    registered version (:func:`tracking.reproduce.record_training_config`), so that ``cellops reproduce`` re-runs
    it. The registration stands when that fails (a warning says why; the version can still be rebuilt from its
    ZenML run). Returns the pipeline and the tags set, or None."""
    import torch

    if not versions:
        return None
    try:
        pipeline, config = run_config_from_zenml(get_step_context().pipeline_run)
        for version in versions:
            # This process trained the model: torch's thread count now is the one training used.
            recorded = record_training_config(MlflowClient(), name, str(version), pipeline, config,
                                              threads=torch.get_num_threads())
    except (LookupError, ValueError, MlflowException) as error:
        logger.warning("%s v%s: the training configuration was not recorded (%s); `cellops reproduce` rebuilds it "
                       "from the ZenML run while the ZenML store has it", name, ", ".join(map(str, versions)), error)
        return None
    logger.info("%s v%s: training configuration recorded (%s)", name, ", ".join(map(str, versions)), pipeline)
    return {"pipeline": pipeline, "tags": recorded}


def record_sweep(name: str, version: str, score: Callable[[Perturbation, np.random.Generator], dict],
                 clean: dict, robustness: dict, *, label: str = "") -> list[dict]:
    """Run the robustness sweep ``robustness`` configures (``perturbations``: kind and strength of each,
    ``metrics``, ``seed``; :func:`cellops.model_robustness.robustness_sweep`) with ``score``, the family's score
    on its perturbed test data, against ``clean`` (the registered metrics), and keep it with the version
    (:func:`tracking.robustness.record_robustness`). Returns the rows (also logged as the step's metadata)."""
    perturbations = parse_perturbations(robustness.get("perturbations") or [])
    if not perturbations:
        return []
    rows = [row.as_dict() for row in robustness_sweep(score, perturbations, clean, list(robustness["metrics"]),
                                                     seed=int(robustness.get("seed", 0)))]
    record_robustness(MlflowClient(), name, str(version), rows)
    key = f"robustness_{label}" if label else "robustness"
    log_metadata(metadata={key: {"version": str(version), "rows": rows}})
    for row in rows:
        logger.info("%s v%s %s: %s %.4f (clean %.4f, %+.4f)", name, version, row["condition"], row["metric"],
                    row["value"], row["clean_value"], row["difference"])
    return rows


def record_ranked_extras(registration: dict, evaluations: list[dict],
                         score_of: Callable[[dict], Callable[[Perturbation, np.random.Generator], dict]],
                         robustness: dict) -> None:
    """For the families that register several models per run: keep the run config with every registered version
    and each one's robustness sweep (``score_of(evaluation)`` gives its score under a perturbation)."""
    versions = registered_versions(registration)
    if not versions:
        return
    name = versions[0]["registered_model"]
    record_training_run(name, [d["version"] for d in versions])
    by_name = {e["name"]: e for e in evaluations}
    for decision in versions:
        evaluation = by_name[decision["model_name"]]
        record_sweep(name, decision["version"], score_of(evaluation), evaluation["scores"], robustness,
                     label=evaluation["name"])
