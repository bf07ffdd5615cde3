"""`cellops models` and `cellops lineage`: the registry as a lab reads it, without a server or a dashboard.

ZenML's open-source dashboard has no Models page, so this lists every registered model family, its versions,
their metrics, data versions and which one holds `champion` (with ZenML's stage for the same version).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlflow import MlflowClient

from tracking.registry import describe_versions, resolve_version
from tracking.runs import project_tracking_uri


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else this checkout's own store (what `make setup` configures)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or project_tracking_uri(Path.cwd())


def _zenml_stages(model_name: str) -> dict[str, str]:
    """MLflow version -> ZenML stage of the ZenML model version that registered it ({} without ZenML)."""
    try:
        from zenml.client import Client

        stages = {}
        for version in Client().list_model_versions(model=model_name, size=1000):
            mlflow_version = version.run_metadata.get("mlflow_model_version")
            if mlflow_version is not None:
                stages[str(mlflow_version)] = str(version.stage or "-")
        return stages
    except Exception:  # no ZenML store here, or no such model: the MLflow registry alone still answers
        return {}


def list_models(tracking_uri: str, family: str | None = None) -> str:
    """A table of every version of every ``cellops-*`` registered model (or of ``family``)."""
    client = MlflowClient(tracking_uri)
    names = sorted(m.name for m in client.search_registered_models() if m.name.startswith("cellops-"))
    if family:
        names = [n for n in names if n in (family, f"cellops-{family}")]
    if not names:
        return f"no registered cellops models in {tracking_uri}" + (f" named {family}" if family else "")
    lines = []
    for name in names:
        stages = _zenml_stages(name)
        lines.append(f"{name}")
        lines.append(f"  {'version':>7}  {'aliases':<10} {'zenml stage':<11} {'metric':<16} {'value':>8}  "
                     f"{'data version':<38} git commit")
        for record in describe_versions(client, name):
            metric = record["promotion_metric"] or "-"
            value = record["metrics"].get(metric)
            lines.append(
                f"  {record['model_version']:>7}  {','.join(record['aliases']) or '-':<10} "
                f"{stages.get(record['model_version'], '-'):<11} {metric:<16} "
                f"{'-' if value is None else f'{value:.4f}':>8}  {record.get('data_version', '-'):<38} "
                f"{record.get('git_commit', '-')[:12]}")
    return "\n".join(lines)


def lineage(tracking_uri: str, reference: str) -> dict:
    """``MODEL``, ``MODEL:VERSION`` or ``MODEL@ALIAS`` -> the version's full record (champion by default)."""
    if "@" in reference:
        name, ref = reference.split("@", 1)
        ref = f"@{ref}"
    elif ":" in reference:
        name, ref = reference.split(":", 1)
    else:
        name, ref = reference, None
    return resolve_version(MlflowClient(tracking_uri), name, ref)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="cellops")
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="registered model versions, metrics, data versions, champions")
    models.add_argument("family", nargs="?", help="e.g. unet or cellops-unet (default: all)")
    models.add_argument("--tracking-uri", default=None)
    lin = commands.add_parser("lineage", help="the lineage of one model version, from the registry")
    lin.add_argument("reference", help="MODEL, MODEL:VERSION or MODEL@ALIAS (e.g. cellops-unet@champion)")
    lin.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri()
    try:
        if args.command == "models":
            print(list_models(uri, args.family))
        else:
            print(json.dumps(lineage(uri, args.reference), indent=2, sort_keys=True))
    except LookupError as error:
        print(f"cellops {args.command}: {error}")
        return 1
    return 0
