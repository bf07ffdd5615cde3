"""Shared fixtures. Every test that touches ZenML, MLflow or BentoML gets its own temporary state."""

from __future__ import annotations

import os
import tempfile

# Before anything imports ZenML or BentoML: never touch the user's global state, never phone home.
_STATE = tempfile.mkdtemp(prefix="cellops-tests-")
os.environ["ZENML_CONFIG_PATH"] = os.path.join(_STATE, "zenml")
os.environ["BENTOML_HOME"] = os.path.join(_STATE, "bentoml")
os.environ["CELLOPS_RUNTIME_CACHE"] = os.path.join(_STATE, "runtime-choices")  # runtimes timed on this host
from cellops.telemetry import TELEMETRY_OFF  # noqa: E402

os.environ.update(TELEMETRY_OFF)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one BLAS/OpenMP thread each (and in the pipelines they start), not two spinning
    # against each other.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import ast  # noqa: E402
import functools  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from helpers import run_command  # noqa: E402

from cellops.synthetic.em import EMVolume, generate_em_volume  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPIED = ["cellops", "models", "steps", "pipelines", "tracking", "bento", "configs", "scripts", "tests/configs", "params.yaml",
          "requirements.lock", ".dvcignore", ".gitignore"]
#: Tiny versions of every built-in dataset, for the end-to-end tests.
TINY_PARAMS = {
    "em": {"shape": [10, 128, 128], "seed": 7, "voxel_nm": 8.0, "mitochondria_fraction": 0.1},
    "colonies": {"n_images": 6, "shape": [384, 384], "seed": 7},  # 6: Mask R-CNN needs train, val and test images
    "nuclei": {"images_per_group": 2, "shape": [256, 256], "seed": 7},
    "calcium": {"movies_per_group": 1, "shape": [128, 128], "n_frames": 40, "seed": 7},
    "endothelial": {"images_per_class": 24, "size": 64, "seed": 7},
}


#: The xdist group of the modules that read the session's shared U-Net training (``unet_trained``): one worker runs
#: them all, so the U-Net is trained once.
SHARED_TRAINING = "unet_trained"


def _markers(path: Path) -> dict[str, list]:
    """The markers a test module declares in ``pytestmark`` ({name: its literal arguments}), read from its source:
    xdist's controller schedules node ids and never imports the modules."""
    found: dict[str, list] = {}
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return found
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            for call in ast.walk(node.value):
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
                    found[call.func.attr] = [_literal(a) for a in call.args]
                elif isinstance(call, ast.Attribute) and isinstance(call.value, ast.Attribute) \
                        and getattr(call.value, "attr", None) == "mark":
                    found.setdefault(call.attr, [])
    return found


def _literal(node: ast.AST) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:  # an expression (skipif's condition): not a scheduling argument
        return None


@functools.cache
def scheduling_scope(module: str) -> str:
    """The unit a test module is handed out in: its ``xdist_group`` (``pytest.mark.xdist_group("name")``), each test
    alone where the module is marked ``pytest.mark.tests_alone`` (they share nothing), else the whole module."""
    markers = _markers(ROOT / module)
    if "xdist_group" in markers:
        return str(markers["xdist_group"][0])
    return "" if "tests_alone" in markers else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Schedule whole modules, or whole groups of modules (markers on the modules, :func:`scheduling_scope`); xdist's
    own ``loadgroup`` does this too, but with pytest 9.2 it renames the tests it groups."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the collection's order (longest first, see below)

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scheduling_scope(nodeid.split("::")[0]) or nodeid

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Hand out the longest units first (the ``pytest.mark.minutes(n)`` of their modules together; a stable sort keeps
    the collection order otherwise, inside a group too), so that none starts last and leaves the other worker idle;
    and refuse a module that reads the shared training outside its group (two workers would each train it)."""
    def module(item) -> str:
        return item.nodeid.split("::")[0]

    minutes: dict[str, float] = {}  # per unit handed out: the minutes of its modules together
    for path in {module(item): item for item in items}.values():
        marker = path.get_closest_marker("minutes")
        scope = scheduling_scope(module(path)) or module(path)
        minutes[scope] = minutes.get(scope, 0.0) + (float(marker.args[0]) if marker else 0.0)
    strays = {module(item) for item in items if SHARED_TRAINING in getattr(item, "fixturenames", ())
              and scheduling_scope(module(item)) != SHARED_TRAINING}
    if strays:
        raise pytest.UsageError(f"{sorted(strays)} use the {SHARED_TRAINING} fixture: mark them "
                                f"pytest.mark.xdist_group({SHARED_TRAINING!r})")
    items.sort(key=lambda item: -minutes.get(scheduling_scope(module(item)) or module(item), 0.0))


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """A fresh copy of the project with tiny data and its own git, DVC, ZenML, MLflow and BentoML state:
    what a user has after cloning, `make setup` and `make data`."""
    return build_project(tmp_path_factory)


def build_project(tmp_path_factory) -> tuple[Path, dict]:
    """A new tiny project (see :func:`project`), for a module whose runs must not touch the session's one."""
    root = tmp_path_factory.mktemp("project")
    state = tmp_path_factory.mktemp("state")
    for name in COPIED:
        source, target = ROOT / name, root / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "build_info.json"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    env = {
        **os.environ,
        **TELEMETRY_OFF,
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",  # tiny trainings last seconds: sample every second
        "ZENML_CONFIG_PATH": str(state / "zenml"),
        "BENTOML_HOME": str(state / "bentoml"),
        "PYTHONPATH": str(root),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "t@t",
    }
    for command in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        [str(BIN / "cellops"), "generate-data", "--params", "params.yaml", "--out", "data"],
        ["dvc", "add", "-q", "data"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "fixture"],
        [str(BIN / "python"), "scripts/setup_stack.py", "--root", str(root)],
    ):
        run_command(command, root, env)
    return root, env


@pytest.fixture(scope="session")
def unet_trained(project):
    """The project after one U-Net training pipeline run (tiny config): its runs, champion and artifacts are what
    the U-Net e2e tests and the browser tests look at."""
    root, env = project
    result = run_command(["zenml", "pipeline", "run", "pipelines.unet.training_pipeline", "-c",
                          "tests/configs/unet_tiny.yaml"], root, env)
    return root, env, result


@pytest.fixture(scope="session")
def small_volume() -> EMVolume:
    """A small synthetic EM volume, drawn once per session."""
    return generate_em_volume((6, 96, 96), seed=3)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say, at the end of every run, which tests this machine could not run and why (the team stack without
    PostgreSQL/MariaDB, the browser tests without Chromium): a skip must never pass for a pass."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: dict[str, list[str]] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reasons.setdefault(reason.removeprefix("Skipped: "), []).append(report.nodeid.split("::")[0])
    terminalreporter.section("not run on this machine", sep="=", yellow=True, bold=True)
    for reason, where in sorted(reasons.items()):
        terminalreporter.line(f"{len(where)} skipped in {', '.join(sorted(set(where)))}: {reason}")
