"""Every model family meets one contract (docs/adding-a-family.md): the same modules, the same names for the same
roles, one serving record tagged with its family, a ``fit`` on the shared resumable checkpoint, and a mirror under
steps/."""

from __future__ import annotations

import ast
import importlib
import inspect
from dataclasses import is_dataclass
from pathlib import Path

import pytest

from cellops.config import ServingRecord
from cellops.families import FAMILIES, serving_type

ROOT = Path(__file__).resolve().parents[1]
#: The modules every family package has.
MODULES = ("specs", "data", "validation", "train", "predict", "runtime", "ood")
#: The class-name prefix of each family.
PREFIX = {"unet": "UNet", "classifier": "Classifier", "maskrcnn": "MaskRCNN"}
#: What every family's train.py offers.
TRAINING_API = ("train_one_epoch", "evaluate", "fit")
#: What every family's ood.py offers (cellops.ood): its features, a verdict from the served pass, the rows a
#: reference is fitted on.
OOD_API = ("FEATURE_NAMES", "image_features", "verdict_for", "reference_rows")


def test_every_family_is_listed_and_has_a_prefix():
    packages = {p.parent.name for p in (ROOT / "cellops").glob("*/train.py")}
    assert set(FAMILIES) == packages == set(PREFIX)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_family_package_has_every_module_of_the_contract(family):
    package = ROOT / "cellops" / family
    missing = [m for m in MODULES if not (package / f"{m}.py").is_file()]
    assert not missing, f"cellops/{family} lacks {missing}"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_family_names_its_public_api_and_every_name_exists(family):
    package = importlib.import_module(f"cellops.{family}")
    assert package.__doc__, f"cellops/{family}/__init__.py has no docstring"
    public = getattr(package, "__all__", None)
    assert public, f"cellops/{family}/__init__.py names no public API (__all__)"
    assert [name for name in public if not hasattr(package, name)] == []
    for role in (f"{PREFIX[family]}Serving", f"{PREFIX[family]}Training", *TRAINING_API):
        assert role in public, f"cellops.{family} does not export {role}"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_serving_record_is_the_family_s_and_round_trips(family):
    specs = importlib.import_module(f"cellops.{family}.specs")
    serving = getattr(specs, f"{PREFIX[family]}Serving")
    training = getattr(specs, f"{PREFIX[family]}Training")
    assert serving is serving_type(family)
    assert issubclass(serving, ServingRecord) and serving.family == family
    assert is_dataclass(serving) and is_dataclass(training)
    assert hasattr(training, "from_dict")


@pytest.mark.parametrize("family", FAMILIES)
def test_train_offers_the_loop_and_fit_resumes_on_the_shared_checkpoint(family):
    train = importlib.import_module(f"cellops.{family}.train")
    for name in TRAINING_API:
        assert callable(getattr(train, name, None)), f"cellops.{family}.train lacks {name}"
    assert "resume" in inspect.signature(train.fit).parameters
    imported = {node.module for node in ast.walk(ast.parse(Path(train.__file__).read_text()))
                if isinstance(node, ast.ImportFrom) and node.module}
    assert "cellops.checkpoints" in imported, f"cellops/{family}/train.py does not use the shared checkpoint"


@pytest.mark.parametrize("family", FAMILIES)
def test_steps_mirror_the_family(family):
    steps = ROOT / "steps" / family
    assert (steps / "__init__.py").is_file(), f"steps/{family}/ is missing"
    assert {p.stem for p in steps.glob("*.py")} - {"__init__"} <= set(MODULES) | {"register"}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_family_describes_images_for_ood_and_a_step_records_the_reference(family):
    ood = importlib.import_module(f"cellops.{family}.ood")
    assert [name for name in OOD_API if not hasattr(ood, name)] == []
    assert len(set(ood.FEATURE_NAMES)) == len(ood.FEATURE_NAMES)
    step = getattr(importlib.import_module(f"steps.{family}.ood"), f"record_{family}_ood")
    parameters = inspect.signature(step.entrypoint).parameters
    assert {"registration", "false_alarm_rate", "seed"} <= set(parameters)
    pipeline = (ROOT / "pipelines" / f"{family}.py").read_text()
    assert f"record_{family}_ood(" in pipeline, f"pipelines/{family}.py does not record the OOD reference"


def test_no_two_public_classes_share_a_name():
    owners: dict[str, set[str]] = {}
    for package in ("cellops", "models", "tracking", "steps", "bento"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    owners.setdefault(node.name, set()).add(str(path.relative_to(ROOT)))
    assert len(owners) > 50
    assert {name: where for name, where in owners.items() if len(where) > 1} == {}
