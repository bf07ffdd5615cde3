"""Shared fixtures. Every test that touches ZenML, MLflow or BentoML gets its own temporary state."""

from __future__ import annotations

import os
import tempfile

# Before anything imports ZenML or BentoML: never touch the user's global state, never phone home.
_STATE = tempfile.mkdtemp(prefix="cellops-tests-")
os.environ["ZENML_CONFIG_PATH"] = os.path.join(_STATE, "zenml")
os.environ["BENTOML_HOME"] = os.path.join(_STATE, "bentoml")
from cellops.telemetry import TELEMETRY_OFF  # noqa: E402

os.environ.update(TELEMETRY_OFF)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one BLAS/OpenMP thread each (and in the pipelines they start), not two spinning
    # against each other.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

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


#: The modules that read the session's shared U-Net training (``unet_trained``). Under pytest-xdist (``make test``)
#: they run on one worker, so the U-Net is trained once; every other module runs whole on one worker, so its
#: module fixtures (a training, a server) run once.
SHARED_TRAINING_MODULES = frozenset({"tests/unet/test_e2e_unet.py", "tests/test_ui_browser.py", "tests/test_e2e_batch.py"})
#: Modules whose tests share nothing (one subprocess each): scheduled test by test.
INDEPENDENT_MODULES = frozenset({"tests/test_benchmark_smoke.py"})
#: The longest work units (minutes each: trainings, servers), handed out first so that none starts last and leaves
#: the other worker idle; every other module follows in collection order. The shared-training modules keep their
#: order: the browser tests look at the shared training's run before the U-Net e2e tests start other runs.
LONGEST_FIRST = ("tests/test_e2e_batch.py", "tests/test_ui_browser.py", "tests/unet/test_e2e_unet.py",
                 "tests/test_team_stack.py", "tests/classifier/test_e2e_classifier.py",
                 "tests/maskrcnn/test_e2e_maskrcnn.py", "tests/test_default_data.py", "tests/test_e2e_classical.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Schedule whole modules, the shared-training ones as one unit (xdist's ``loadgroup`` would do this with
    markers, but with pytest 9.2 it no longer renames the tests it groups)."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the collection's order (longest first, see below)

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            if module in INDEPENDENT_MODULES:
                return nodeid
            return "unet_trained" if module in SHARED_TRAINING_MODULES else module

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Put the longest modules first (``LONGEST_FIRST``; a stable sort keeps each module's own order), and refuse a
    module that reads the shared training without being listed in ``SHARED_TRAINING_MODULES`` (two workers would
    each train it)."""
    def module(item) -> str:
        return item.nodeid.split("::")[0]

    unlisted = {module(item) for item in items if "unet_trained" in getattr(item, "fixturenames", ())}
    unlisted -= SHARED_TRAINING_MODULES
    if unlisted:
        raise pytest.UsageError(f"{sorted(unlisted)} use the unet_trained fixture: add them to "
                                "SHARED_TRAINING_MODULES in tests/conftest.py")
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(module(item), len(rank)))


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """A fresh copy of the project with tiny data and its own git, DVC, ZenML, MLflow and BentoML state:
    what a user has after cloning, `make setup` and `make data`."""
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
