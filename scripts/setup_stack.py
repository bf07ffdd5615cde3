"""Set up the local cellops stack, idempotently (run by `make setup`).

ZenML repository in the project root; an MLflow experiment tracker and model registry on one project-local
MLflow store (SQLite + local artifact folder); the BentoML model deployer; a stack named `cellops`, set
active. Running it again changes nothing, or repairs a component whose configuration drifted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cellops.telemetry import disable_telemetry  # noqa: E402
from tracking.runs import PROJECT_STORE, project_tracking_uri  # noqa: E402

disable_telemetry()

from zenml.client import Client  # noqa: E402
from zenml.enums import StackComponentType  # noqa: E402

EXPERIMENTS = ("cellops-unet", "cellops-colonies", "cellops-nuclei", "cellops-calcium", "cellops-batch-inference")


def mlflow_uris(root: Path, mlflow_dir: str) -> tuple[str, str]:
    """Tracking URI (SQLite) and artifact location of the project's MLflow store."""
    store = (root / mlflow_dir).resolve()
    store.mkdir(parents=True, exist_ok=True)
    return project_tracking_uri(root, mlflow_dir), (store / "artifacts").as_uri()


def _upsert_component(client: Client, kind: StackComponentType, name: str, flavor: str, config: dict) -> None:
    try:
        existing = client.get_stack_component(kind, name)
    except KeyError:
        client.create_stack_component(name=name, flavor=flavor, component_type=kind, configuration=config)
        print(f"registered {kind.value} {name!r} ({flavor})")
        return
    if existing.flavor_name != flavor:
        raise SystemExit(f"a {kind.value} named {name!r} exists with flavor {existing.flavor_name}, expected {flavor}")
    if any(existing.configuration.get(k) != v for k, v in config.items()):
        client.update_stack_component(name, kind, configuration=config)
        print(f"updated {kind.value} {name!r}")


def setup_stack(root: Path, *, stack_name: str = "cellops", mlflow_dir: str = PROJECT_STORE) -> str:
    """Create or repair the stack; returns the MLflow tracking URI it uses."""
    root = root.resolve()
    if not (root / ".zen").is_dir():
        Client.initialize(root=root)
    client = Client()
    tracking_uri, artifact_location = mlflow_uris(root, mlflow_dir)
    _upsert_component(client, StackComponentType.EXPERIMENT_TRACKER, "mlflow_tracker", "mlflow",
                      {"tracking_uri": tracking_uri})
    _upsert_component(client, StackComponentType.MODEL_REGISTRY, "mlflow_registry", "mlflow", {})
    _upsert_component(client, StackComponentType.MODEL_DEPLOYER, "bentoml_deployer", "bentoml", {})
    components = {
        StackComponentType.ORCHESTRATOR: "default",
        StackComponentType.ARTIFACT_STORE: "default",
        StackComponentType.EXPERIMENT_TRACKER: "mlflow_tracker",
        StackComponentType.MODEL_REGISTRY: "mlflow_registry",
        StackComponentType.MODEL_DEPLOYER: "bentoml_deployer",
    }
    try:
        client.get_stack(stack_name)
        client.update_stack(stack_name, component_updates={k: [v] for k, v in components.items()})
    except KeyError:
        client.create_stack(name=stack_name, components=components)
        print(f"registered stack {stack_name!r}")
    client.activate_stack(stack_name)

    # Experiments are created here with an explicit artifact folder; otherwise MLflow would put artifacts
    # under whatever directory a run happened to start in.
    import mlflow

    mlflow_client = mlflow.MlflowClient(tracking_uri)
    for name in EXPERIMENTS:
        if mlflow_client.get_experiment_by_name(name) is None:
            mlflow_client.create_experiment(name, artifact_location=f"{artifact_location}/{name}")
    print(f"stack {stack_name!r} active; MLflow store {tracking_uri}")
    return tracking_uri


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path.cwd())
    parser.add_argument("--stack", default="cellops")
    parser.add_argument("--mlflow-dir", default=PROJECT_STORE)
    args = parser.parse_args()
    setup_stack(args.root, stack_name=args.stack, mlflow_dir=args.mlflow_dir)
