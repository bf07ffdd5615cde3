"""The team stack on real servers (`make team-stack`): PostgreSQL behind an MLflow tracking server with basic auth,
MariaDB behind a ZenML server, and the `cellops-team` stack on them. The U-Net training pipeline runs against it
and its run, model and champion are found in both servers and in the databases underneath; then it is torn down."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from mlflow import MlflowClient

from helpers import free_port, run_command
from tracking import tags

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.minutes(6),
    pytest.mark.skipif(not (Path("/usr/sbin/mariadbd").exists() and list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))),
                       reason="Debian's postgresql and mariadb-server are not installed (make team-deps)"),
]

WHERE_RUNS = """
import json
from zenml.client import Client
client = Client()
run = client.get_pipeline("training_pipeline").last_run
print(json.dumps({"stack": client.active_stack_model.name, "run": run.name, "id": run.id.hex,
                  "status": str(run.status), "run_stack": run.stack.name,
                  "steps": sorted(run.steps)}))
"""


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def team(project):
    root, env = project
    # Under /tmp, not pytest's 0700 temp folder: the database users must reach their own folders through it.
    folder = Path(tempfile.mkdtemp(prefix="cellops-team-", dir="/tmp"))
    ports = {name: free_port() for name in ("postgres", "mariadb", "mlflow", "zenml")}
    command = [sys.executable, "scripts/team_stack.py", "--dir", str(folder)]
    for name, port in ports.items():
        command += [f"--{name}-port", str(port)]
    local_repo = (root / ".zen" / "config.yaml").read_text()
    try:
        run_command([*command[:2], "up", *command[2:]], root, env, timeout=600)
        client_env = {**env, **_env_file(folder / "client.env")}
        run = run_command(["zenml", "pipeline", "run", "pipelines.unet.training_pipeline", "-c",
                           "tests/configs/unet_tiny.yaml"], root, client_env)
        # The checkout's own ZenML repository still has its local stack active (the team client has its own).
        assert (root / ".zen" / "config.yaml").read_text() == local_repo
        yield folder, ports, client_env, run
    finally:
        run_command([*command[:2], "down", *command[2:]], root, env, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_unet_pipeline_runs_on_the_team_stack_and_both_servers_and_databases_hold_its_run(team, project, monkeypatch):
    folder, ports, client_env, _ = team
    root, _ = project
    secrets = _env_file(folder / "secrets.env")

    # ZenML server (MariaDB): the run, on the cellops-team stack, completed with every step.
    seen = json.loads(run_command([sys.executable, "-c", WHERE_RUNS], root, client_env).stdout.strip().splitlines()[-1])
    assert seen["stack"] == seen["run_stack"] == "cellops-team"
    assert seen["status"] == "completed"
    assert {"train_unet", "evaluate_unet", "register_unet"} <= set(seen["steps"])
    import pymysql

    with pymysql.connect(host="127.0.0.1", port=ports["mariadb"], user="zenml", database="zenml",
                         password=secrets["MARIADB_ZENML_PASSWORD"]) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pipeline_run WHERE id = %s", (seen["id"],))
        assert cursor.fetchone() == (seen["run"],)

    # MLflow server (PostgreSQL): the training run with its scores, the registered model and its champion alias.
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, client_env[key])
    mlflow_uri = client_env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("cellops-unet")
    zenml_run_id = str(uuid.UUID(seen["id"]))
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.{tags.ZENML_RUN_ID} = '{zenml_run_id}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same run in both servers
    assert 0 < runs[0].data.metrics["test_foreground_iou"] <= 1
    champion = client.get_model_version_by_alias("cellops-unet", "champion")
    assert champion.run_id == runs[0].info.run_id
    assert champion.source  # its artifacts went through the server's proxy into the team folder
    assert any((folder / "mlflow-artifacts").rglob("MLmodel"))
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=ports["postgres"], user="mlflow", dbname="mlflow",
                                  password=secrets["MLFLOW_DB_PASSWORD"])
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT status FROM runs WHERE run_uuid = %s", (runs[0].info.run_id,))
        assert cursor.fetchone() == ("FINISHED",)
        cursor.execute("SELECT alias FROM registered_model_aliases WHERE name = 'cellops-unet'")
        assert ("champion",) in cursor.fetchall()
    connection.close()


def test_the_team_servers_refuse_anonymous_clients_listen_on_loopback_only_and_keep_secrets_private(team):
    folder, ports, client_env, _ = team
    assert httpx.get(f"{client_env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1").status_code == 401
    assert httpx.get(f"{client_env['ZENML_STORE_URL']}/api/v1/runs").status_code == 401
    token = httpx.post(f"{client_env['ZENML_STORE_URL']}/api/v1/login",
                       data={"username": "admin", "password": "wrong"}).status_code
    assert token == 401
    listening = {c.laddr.port: c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    for name, port in ports.items():
        assert listening.get(port) == "127.0.0.1", f"{name} listens on {listening.get(port)}:{port}"
    for private in ("secrets.env", "client.env", "mlflow-auth.ini"):
        assert stat.S_IMODE(os.stat(folder / private).st_mode) == 0o600, private
    if os.geteuid() == 0:  # the databases run as their own users, not root
        owners = {p.info["name"]: p.info["username"] for p in psutil.process_iter(["name", "username"])
                  if p.info["name"] in ("postgres", "mariadbd")}
        assert owners.get("postgres") == "postgres" and owners.get("mariadbd") == "mysql", owners
