"""The cellops team stack: shared MLflow and ZenML servers on real databases, started on this machine.

- PostgreSQL (Debian's ``postgresql``) holds MLflow's tracking and registry store, and the users of MLflow's
  basic-auth app;
- an MLflow tracking server (``mlflow server --app-name basic-auth``) with an artifact proxy to a folder;
- MariaDB (Debian's ``mariadb-server``) holds the ZenML server's store (ZenML supports MySQL/MariaDB and SQLite);
- a ZenML server (``zenml[server]``, uvicorn) with password login and an encrypted SQL secrets store;
- a ``cellops-team`` ZenML stack registered on that server: its MLflow experiment tracker and model registry point at
  the MLflow server (credentials in a ZenML secret), a local orchestrator and artifact store, the BentoML deployer.

Everything listens on 127.0.0.1 only. Passwords and keys are generated once into ``<dir>/secrets.env`` (mode 600;
``.team/`` is git-ignored). When run as root, the databases run as Debian's ``postgres`` and ``mysql`` users, each in a
folder of its own that only it can read.

    python scripts/team_stack.py up        # start everything (idempotent), register the stack, write client.env
    python scripts/team_stack.py status    # what runs where
    python scripts/team_stack.py down      # stop the servers and databases; data and passwords are kept

A shell that sources ``<dir>/client.env`` (``set -a; . .team/client.env; set +a``) runs pipelines on the team stack
(``zenml pipeline run ...``) and reads it (``cellops models``, ``mlflow`` clients); the local ``cellops`` stack and
its SQLite stores are untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cellops.telemetry import TELEMETRY_OFF

HOST = "127.0.0.1"
STACK_NAME = "cellops-team"
SECRET_NAME = "cellops-team-mlflow"
ADMIN = "admin"
#: Generated once, kept across restarts (the databases are initialised with them).
SECRET_KEYS = ("POSTGRES_SUPERUSER_PASSWORD", "MLFLOW_DB_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SECRET_KEY",
               "MARIADB_ZENML_PASSWORD", "ZENML_ADMIN_PASSWORD", "ZENML_JWT_SECRET_KEY", "ZENML_SECRETS_ENCRYPTION_KEY")


class TeamStackError(RuntimeError):
    """A service of the team stack could not be set up or started; the message says which and why."""


@dataclass(frozen=True)
class Ports:
    """Where each service listens on 127.0.0.1 (defaults chosen not to clash with system-wide servers or `make ui`)."""

    postgres: int = 5433
    mariadb: int = 3307
    mlflow: int = 5050
    zenml: int = 8238


@dataclass
class TeamStack:
    """The team stack's folder, ports and secrets."""

    root: Path
    ports: Ports = field(default_factory=Ports)
    #: The checkout whose pipelines run on the stack (their source root).
    project: Path = field(default_factory=Path.cwd)

    def __post_init__(self) -> None:
        self.root, self.project = self.root.resolve(), self.project.resolve()

    def create(self) -> None:
        """The folder: searchable (the database users reach their own folders through it), not listable."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)

    # ------------------------------------------------------------------ paths and secrets
    @property
    def postgres_dir(self) -> Path:
        return self.root / "postgres"

    @property
    def mariadb_dir(self) -> Path:
        return self.root / "mariadb"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.env"

    @property
    def client_env_file(self) -> Path:
        return self.root / "client.env"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{HOST}:{self.ports.mlflow}"

    @property
    def zenml_url(self) -> str:
        return f"http://{HOST}:{self.ports.zenml}"

    def secrets(self) -> dict[str, str]:
        """The stack's passwords and keys, generated into ``secrets.env`` (mode 600) the first time."""
        values = _read_env_file(self.secrets_file) if self.secrets_file.exists() else {}
        missing = [key for key in SECRET_KEYS if not values.get(key)]
        if missing:
            for key in missing:
                values[key] = secrets.token_hex(32) if key == "ZENML_SECRETS_ENCRYPTION_KEY" else secrets.token_urlsafe(24)
            self.create()
            _write_private(self.secrets_file, "".join(f"{k}={values[k]}\n" for k in SECRET_KEYS))
        return values

    def client_env(self) -> dict[str, str]:
        """What a client process needs to use the team stack (written to ``client.env`` by :meth:`up`)."""
        return _read_env_file(self.client_env_file)


# ---------------------------------------------------------------------- small helpers
def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, never world-readable even for an instant."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _db_user(name: str) -> pwd.struct_passwd | None:
    """The system user a database runs as: Debian's ``name`` user when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise TeamStackError(f"running as root, but there is no '{name}' system user to run the database as: "
                             f"install Debian's package (make team-deps)") from None


def _as_user(command: list[str], user: pwd.struct_passwd | None) -> list[str]:
    return ["runuser", "-u", user.pw_name, "--", *command] if user else command


def _own_folder(path: Path, user: pwd.struct_passwd | None) -> None:
    """A folder only ``user`` (or we) can enter, reachable by it through every parent."""
    path.mkdir(parents=True, exist_ok=True)
    if user is None:
        os.chmod(path, 0o700)
        return
    for parent in path.parents:
        if not os.stat(parent).st_mode & 0o001:
            raise TeamStackError(f"{parent} is not searchable by other users, so the '{user.pw_name}' database user "
                                 f"cannot reach {path}: give the team stack a folder under a searchable path "
                                 f"(--dir)")
    os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(path, 0o700)


def _binary(name: str, *candidates: str) -> str:
    for candidate in (*candidates, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return candidate
    raise TeamStackError(f"'{name}' not found: install the team stack's database servers with `make team-deps` "
                         f"(Debian's postgresql and mariadb-server)")


def _postgres_binary(name: str) -> str:
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return _binary(name, *(str(v) for v in reversed(versions)))


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((HOST, port)) == 0


def _log_tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _wait_until(ready, what: str, log: Path, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if process is not None and process.poll() is not None:
            raise TeamStackError(f"{what} exited with status {process.returncode} while starting; {log}:\n"
                                 f"{_log_tail(log)}")
        time.sleep(0.5)
    raise TeamStackError(f"{what} did not become ready within {timeout:.0f} s; {log}:\n{_log_tail(log)}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _refuse_foreign_listener(port: int, pid_file: Path, what: str) -> bool:
    """True when our own ``what`` already listens on ``port``; an error when something else does."""
    if not port_open(port):
        return False
    if pid_file.exists() and _alive(int(pid_file.read_text().split()[0])):
        return True
    raise TeamStackError(f"port {HOST}:{port} is taken by another program, not this team stack's {what}: stop it, "
                         f"or choose another port (--{what}-port)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _spawn(command: list[str], log: Path, pid_file: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a server in its own session (so `down` can stop it and its workers), logging to ``log``; it runs in the
    team folder, away from any ZenML repository of the working directory."""
    with open(log, "ab") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True, cwd=pid_file.parent)
    pid_file.write_text(f"{process.pid}\n")
    return process


def _stop_group(pid_file: Path, what: str, timeout: float = 30) -> None:
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().split()[0])
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink()
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    print(f"stopped {what}")


# ---------------------------------------------------------------------- PostgreSQL
def start_postgres(stack: TeamStack, values: dict[str, str]) -> None:
    """Initialise (once) and start PostgreSQL; create the ``mlflow`` role and its two databases."""
    import psycopg2

    user = _db_user("postgres")
    folder, data = stack.postgres_dir, stack.postgres_dir / "data"
    _own_folder(folder, user)
    log = folder / "postgres.log"
    if not (data / "PG_VERSION").exists():
        password_file = folder / "superuser.pw"
        _write_private(password_file, values["POSTGRES_SUPERUSER_PASSWORD"] + "\n")
        if user:
            os.chown(password_file, user.pw_uid, user.pw_gid)
        try:
            subprocess.run(_as_user([_postgres_binary("initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                                     "--auth=scram-sha-256", f"--pwfile={password_file}"], user),
                           check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as error:
            raise TeamStackError(f"initdb failed for {data}:\n{error.stdout}{error.stderr}") from None
        finally:
            password_file.unlink(missing_ok=True)
    if port_open(stack.ports.postgres) and not (data / "postmaster.pid").exists():
        raise TeamStackError(f"port {HOST}:{stack.ports.postgres} is taken by another program, not this team stack's "
                             f"postgres: stop it, or choose another port (--postgres-port)")
    if not port_open(stack.ports.postgres):
        options = f"-p {stack.ports.postgres} -c listen_addresses={HOST} -c unix_socket_directories={folder}"
        result = subprocess.run(_as_user([_postgres_binary("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                                          "-o", options, "start"], user), capture_output=True, text=True)
        if result.returncode != 0:
            raise TeamStackError(f"PostgreSQL did not start on {HOST}:{stack.ports.postgres}: {result.stderr.strip()}\n"
                                 f"{log}:\n{_log_tail(log)}")
    connection = psycopg2.connect(host=HOST, port=stack.ports.postgres, user="postgres", dbname="postgres",
                                  password=values["POSTGRES_SUPERUSER_PASSWORD"], connect_timeout=10)
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = 'mlflow'")
        if cursor.fetchone() is None:
            cursor.execute("CREATE ROLE mlflow LOGIN PASSWORD %s", (values["MLFLOW_DB_PASSWORD"],))
        for database in ("mlflow", "mlflow_auth"):
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {database} OWNER mlflow")
    connection.close()
    print(f"PostgreSQL on {HOST}:{stack.ports.postgres} ({folder})")


def stop_postgres(stack: TeamStack) -> None:
    data = stack.postgres_dir / "data"
    if (data / "postmaster.pid").exists():
        subprocess.run(_as_user([_postgres_binary("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                                _db_user("postgres")), capture_output=True, text=True)
        print("stopped PostgreSQL")


# ---------------------------------------------------------------------- MariaDB
def _mariadb_client(stack: TeamStack, sql: str) -> None:
    """Run ``sql`` as MariaDB's administrator over its unix socket (socket authentication: no password exists)."""
    admin = "root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    result = subprocess.run([_binary("mariadb", "/usr/bin/mariadb"), "--no-defaults",
                             f"--socket={stack.mariadb_dir / 'mariadb.sock'}", "-u", admin, "-e", sql],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise TeamStackError(f"MariaDB refused the setup statements: {result.stderr.strip()}")


def start_mariadb(stack: TeamStack, values: dict[str, str]) -> None:
    """Initialise (once) and start MariaDB; create the ``zenml`` database and user."""
    user = _db_user("mysql")
    folder, data = stack.mariadb_dir, stack.mariadb_dir / "data"
    _own_folder(folder, user)
    log, pid_file = folder / "mariadb.log", stack.root / "mariadb.pid"
    if not (data / "mysql").is_dir():
        command = [_binary("mariadb-install-db", "/usr/bin/mariadb-install-db"), "--no-defaults", f"--datadir={data}",
                   "--auth-root-authentication-method=socket", "--skip-test-db"]
        try:
            subprocess.run(command + ([f"--user={user.pw_name}"] if user else []), check=True, capture_output=True,
                           text=True)
        except subprocess.CalledProcessError as error:
            raise TeamStackError(f"mariadb-install-db failed for {data}:\n{error.stdout[-2000:]}{error.stderr}") from None
    if not _refuse_foreign_listener(stack.ports.mariadb, pid_file, "mariadb"):
        command = [_binary("mariadbd", "/usr/sbin/mariadbd"), "--no-defaults", f"--datadir={data}",
                   f"--socket={folder / 'mariadb.sock'}", f"--pid-file={folder / 'mariadb.pid'}",
                   f"--log-error={log}", f"--port={stack.ports.mariadb}", f"--bind-address={HOST}",
                   "--skip-name-resolve", "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci"]
        process = _spawn(command + ([f"--user={user.pw_name}"] if user else []), stack.root / "mariadb.out",
                         pid_file, os.environ.copy())
        _wait_until(lambda: port_open(stack.ports.mariadb), "MariaDB", log, 60, process)
    password = values["MARIADB_ZENML_PASSWORD"]
    _mariadb_client(stack, "CREATE DATABASE IF NOT EXISTS zenml CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci; "
                           f"CREATE USER IF NOT EXISTS 'zenml'@'{HOST}' IDENTIFIED BY '{password}'; "
                           f"GRANT ALL PRIVILEGES ON zenml.* TO 'zenml'@'{HOST}'; FLUSH PRIVILEGES;")
    print(f"MariaDB on {HOST}:{stack.ports.mariadb} ({folder})")


# ---------------------------------------------------------------------- servers
def start_mlflow(stack: TeamStack, values: dict[str, str]):
    """Start the MLflow tracking server (PostgreSQL backend, artifact proxy to ``<dir>/mlflow-artifacts``, basic
    auth); returns a function that waits until it answers."""
    pid_file, log = stack.root / "mlflow.pid", stack.root / "mlflow.log"
    if _refuse_foreign_listener(stack.ports.mlflow, pid_file, "mlflow"):
        return lambda: None
    database = f"postgresql://mlflow:{values['MLFLOW_DB_PASSWORD']}@{HOST}:{stack.ports.postgres}"
    auth_config = stack.root / "mlflow-auth.ini"
    _write_private(auth_config, "[mlflow]\ndefault_permission = READ\n"
                                f"database_uri = {database}/mlflow_auth\nadmin_username = {ADMIN}\n"
                                f"admin_password = {values['MLFLOW_ADMIN_PASSWORD']}\n"
                                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    artifacts = stack.root / "mlflow-artifacts"
    artifacts.mkdir(exist_ok=True)
    env = {**os.environ, **TELEMETRY_OFF, "MLFLOW_BACKEND_STORE_URI": f"{database}/mlflow",  # not on the command line
           "MLFLOW_AUTH_CONFIG_PATH": str(auth_config), "MLFLOW_FLASK_SERVER_SECRET_KEY": values["MLFLOW_FLASK_SECRET_KEY"]}
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth", "--host", HOST,
               "--port", str(stack.ports.mlflow), "--serve-artifacts", "--artifacts-destination", str(artifacts),
               "--workers", "1"]
    process = _spawn(command, log, pid_file, env)

    def wait() -> None:
        _wait_until(lambda: _http_ok(f"{stack.mlflow_uri}/health"), "the MLflow server", log, 180, process)
        print(f"MLflow server on {stack.mlflow_uri} (PostgreSQL store, artifacts in {artifacts})")
    return wait


def start_zenml(stack: TeamStack, values: dict[str, str]):
    """Start the ZenML server on MariaDB (password login for ``admin``, secrets encrypted in the database); returns a
    function that waits until it answers."""
    pid_file, log = stack.root / "zenml.pid", stack.root / "zenml.log"
    if _refuse_foreign_listener(stack.ports.zenml, pid_file, "zenml"):
        return lambda: None
    env = {**os.environ, **TELEMETRY_OFF,
           "ZENML_CONFIG_PATH": str(stack.root / "zenml-server"),
           "ZENML_LOCAL_STORES_PATH": str(stack.root / "zenml-server" / "local_stores"),
           "ZENML_STORE_URL": f"mysql://zenml:{values['MARIADB_ZENML_PASSWORD']}@{HOST}:{stack.ports.mariadb}/zenml",
           "ZENML_SERVER": "true",
           "ZENML_SERVER_DEPLOYMENT_TYPE": "other",
           "ZENML_SERVER_AUTH_SCHEME": "OAUTH2_PASSWORD_BEARER",
           "ZENML_SERVER_JWT_SECRET_KEY": values["ZENML_JWT_SECRET_KEY"],
           "ZENML_SERVER_AUTO_ACTIVATE": "true",
           "ZENML_DEFAULT_USER_NAME": ADMIN,
           "ZENML_DEFAULT_USER_PASSWORD": values["ZENML_ADMIN_PASSWORD"],
           # artifacts live in a local folder of this machine: let the dashboard show them
           "ZENML_SERVER_ALLOW_LOCAL_FILE_ACCESS": "true",
           "ZENML_SECRETS_STORE_TYPE": "sql",
           "ZENML_SECRETS_STORE_ENCRYPTION_KEY": values["ZENML_SECRETS_ENCRYPTION_KEY"]}
    for key in ("ZENML_STORE_USERNAME", "ZENML_STORE_PASSWORD", "ZENML_STORE_API_KEY", "ZENML_ACTIVE_STACK_ID",
                "ZENML_ACTIVE_PROJECT_ID"):
        env.pop(key, None)
    command = [sys.executable, "-m", "uvicorn", "zenml.zen_server.zen_server_api:app", "--host", HOST,
               "--port", str(stack.ports.zenml), "--no-server-header", "--log-level", "warning"]
    process = _spawn(command, log, pid_file, env)

    def wait() -> None:
        # The first start migrates an empty database to ZenML's schema, which takes a while.
        _wait_until(lambda: _http_ok(f"{stack.zenml_url}/health"), "the ZenML server", log, 300, process)
        print(f"ZenML server on {stack.zenml_url} (MariaDB store)")
    return wait


# ---------------------------------------------------------------------- the ZenML stack
def _client_env(stack: TeamStack, values: dict[str, str]) -> dict[str, str]:
    # A ZenML repository of its own: a client sanitises (rewrites) the active stack of the repository it finds
    # against the store it talks to, so a checkout's .zen would lose its local `cellops` stack. The code is still
    # found in the checkout, the source root.
    return {"ZENML_CONFIG_PATH": str(stack.root / "zenml-client"),
            "ZENML_REPOSITORY_PATH": str(stack.root / "zenml-repo"),
            "ZENML_CUSTOM_SOURCE_ROOT": str(stack.project),
            "ZENML_STORE_URL": stack.zenml_url, "ZENML_STORE_USERNAME": ADMIN,
            "ZENML_STORE_PASSWORD": values["ZENML_ADMIN_PASSWORD"],
            "MLFLOW_TRACKING_URI": stack.mlflow_uri, "MLFLOW_TRACKING_USERNAME": ADMIN,
            "MLFLOW_TRACKING_PASSWORD": values["MLFLOW_ADMIN_PASSWORD"]}


def register_stack(stack: TeamStack, values: dict[str, str]) -> None:
    """Register (or repair) ``cellops-team`` on the ZenML server, in a client process of its own, and write
    ``client.env``."""
    env = {**os.environ, **TELEMETRY_OFF, **_client_env(stack, values)}
    for key in ("ZENML_ACTIVE_STACK_ID", "ZENML_ACTIVE_PROJECT_ID"):
        env.pop(key, None)
    result = subprocess.run([sys.executable, __file__, "_register", "--dir", str(stack.root),
                             "--mlflow-port", str(stack.ports.mlflow)],
                            env=env, capture_output=True, text=True, cwd=stack.root)
    if result.returncode != 0:
        raise TeamStackError(f"registering the {STACK_NAME} stack failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    ids = json.loads(result.stdout.strip().splitlines()[-1])
    client = {**_client_env(stack, values), "ZENML_ACTIVE_STACK_ID": ids["stack"],
              "ZENML_ACTIVE_PROJECT_ID": ids["project"], **TELEMETRY_OFF}
    _write_private(stack.client_env_file, "# the cellops team stack: `set -a; . .team/client.env; set +a`\n"
                   + "".join(f"{key}={value}\n" for key, value in client.items()))
    print(f"stack {STACK_NAME!r} registered on {stack.zenml_url}; client settings in {stack.client_env_file}")


def _register_in_client(root: Path, mlflow_uri: str) -> None:
    """Runs inside a client process that talks to the team ZenML server (see :func:`register_stack`)."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    repository = Path(os.environ["ZENML_REPOSITORY_PATH"])
    if not (repository / ".zen").is_dir():
        repository.mkdir(parents=True, exist_ok=True)
        Client.initialize(root=repository)
    client = Client()
    username, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    try:
        client.get_secret(SECRET_NAME)
        client.update_secret(SECRET_NAME, add_or_update_values={"username": username, "password": password})
    except KeyError:
        client.create_secret(SECRET_NAME, values={"username": username, "password": password})
    # The same component names as the local `cellops` stack: pipeline configs name the tracker they log to.
    components = {
        StackComponentType.ARTIFACT_STORE: ("team_artifacts", "local", {"path": str(root / "zenml-artifacts")}),
        StackComponentType.ORCHESTRATOR: ("team_local", "local", {}),
        StackComponentType.EXPERIMENT_TRACKER: ("mlflow_tracker", "mlflow", {
            "tracking_uri": mlflow_uri, "tracking_username": f"{{{{{SECRET_NAME}.username}}}}",
            "tracking_password": f"{{{{{SECRET_NAME}.password}}}}"}),
        StackComponentType.MODEL_REGISTRY: ("mlflow_registry", "mlflow", {}),
        StackComponentType.MODEL_DEPLOYER: ("bentoml_deployer", "bentoml", {}),
    }
    for kind, (name, flavor, config) in components.items():
        try:
            existing = client.get_stack_component(kind, name)
            if any(existing.configuration.get(k) != v for k, v in config.items()):
                client.update_stack_component(name, kind, configuration=config)
        except KeyError:
            client.create_stack_component(name=name, flavor=flavor, component_type=kind, configuration=config)
    try:
        team = client.get_stack(STACK_NAME)
        team = client.update_stack(STACK_NAME, component_updates={k: [v[0]] for k, v in components.items()})
    except KeyError:
        team = client.create_stack(name=STACK_NAME, components={k: v[0] for k, v in components.items()})
    client.activate_stack(team.id)
    print(json.dumps({"stack": str(team.id), "project": str(client.active_project.id)}))


# ---------------------------------------------------------------------- commands
def up(stack: TeamStack) -> dict[str, str]:
    """Start every service (those already running are left alone), register the stack; returns the client env."""
    stack.create()
    values = stack.secrets()
    start_postgres(stack, values)
    start_mariadb(stack, values)
    waits = [start_mlflow(stack, values), start_zenml(stack, values)]  # both servers start (and migrate) at once
    for wait in waits:
        wait()
    register_stack(stack, values)
    return stack.client_env()


def down(stack: TeamStack) -> None:
    """Stop the servers, then the databases. Data, secrets and the registered stack are kept for the next `up`."""
    _stop_group(stack.root / "zenml.pid", "the ZenML server")
    _stop_group(stack.root / "mlflow.pid", "the MLflow server")
    _stop_group(stack.root / "mariadb.pid", "MariaDB", timeout=60)
    stop_postgres(stack)


def status(stack: TeamStack) -> dict[str, bool]:
    listening = {"postgres": port_open(stack.ports.postgres), "mariadb": port_open(stack.ports.mariadb),
                 "mlflow": _http_ok(f"{stack.mlflow_uri}/health"), "zenml": _http_ok(f"{stack.zenml_url}/health")}
    for name, up_ in listening.items():
        print(f"{name:9s} {'up' if up_ else 'down':5s} {HOST}:{getattr(stack.ports, name)}")
    return listening


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "_register"])
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("CELLOPS_TEAM_DIR", ".team")),
                        help="the team stack's folder: databases, logs, secrets (default .team)")
    defaults = Ports()
    for name in ("postgres", "mariadb", "mlflow", "zenml"):
        parser.add_argument(f"--{name}-port", type=int, default=getattr(defaults, name))
    args = parser.parse_args(argv)
    stack = TeamStack(args.dir, Ports(args.postgres_port, args.mariadb_port, args.mlflow_port, args.zenml_port))
    os.environ.update(TELEMETRY_OFF)
    try:
        if args.command == "_register":
            _register_in_client(stack.root, stack.mlflow_uri)
        elif args.command == "up":
            up(stack)
        elif args.command == "down":
            down(stack)
        else:
            return 0 if all(status(stack).values()) else 1
    except TeamStackError as error:
        print(f"team stack: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
