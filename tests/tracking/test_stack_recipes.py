"""The remote stack recipes (stacks/*.yaml, for `zenml stack import`) and the pipeline configs that run on them: not
run here (no cluster, no Docker daemon), so everything that can be checked without one is: each component's
configuration validates against its ZenML flavor, every secret it references is documented, the files they name
exist, and the configs' settings validate against ZenML's settings classes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
import zenml
from zenml.config import DockerSettings, ResourceSettings
from zenml.enums import StackComponentType
from zenml.stack.flavor_registry import FlavorRegistry

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "stacks").glob("*.yaml"))
#: Pipeline configs meant for a remote stack, and the recipe they run on.
REMOTE_CONFIGS = {"configs/unet_k8s.yaml": "stacks/cellops-k8s.yaml"}
SECRET_REFERENCE = re.compile(r"\{\{\s*([\w-]+)\.(\w+)\s*\}\}")


def _flavors() -> dict[tuple[str, str], type]:
    registry = FlavorRegistry()
    return {(str(flavor().type.value), str(flavor().name)): flavor
            for flavor in [*registry.builtin_flavors, *registry.integration_flavors]}


def test_there_is_a_kubernetes_recipe_with_a_gpu_step_operator_and_an_s3_artifact_store():
    assert RECIPES
    kinds = {(kind, component["flavor"]) for recipe in RECIPES
             for kind, component in yaml.safe_load(recipe.read_text())["components"].items()}
    assert {("orchestrator", "kubernetes"), ("step_operator", "kubernetes"), ("artifact_store", "s3")} <= kinds


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_component_of_a_recipe_validates_against_its_flavor(recipe):
    text = recipe.read_text()
    data = yaml.safe_load(text)
    assert data["zenml_version"] == zenml.__version__, "`zenml stack import` refuses another version's export"
    assert re.fullmatch(r"[\w-]+", data["stack_name"])
    flavors = _flavors()
    for kind, component in data["components"].items():
        StackComponentType(kind)
        assert component["type"] == kind
        flavor = flavors.get((kind, component["flavor"]))
        assert flavor is not None, f"{recipe.name}: no {kind} flavor {component['flavor']!r} in ZenML {zenml.__version__}"
        # Secret references resolve on a server that holds the secrets: validate with stand-ins.
        configuration = yaml.safe_load(SECRET_REFERENCE.sub(r"secret:\1.\2", yaml.safe_dump(component["configuration"])))
        config = flavor().config_class(**configuration)  # unknown or wrong-typed keys raise
        assert config is not None
    # Every secret a component reads is one the header tells the user to create.
    for secret, _ in SECRET_REFERENCE.findall(text):
        assert f"zenml secret create {secret}" in text, f"{recipe.name}: secret {secret!r} is used but not documented"
    for secret in re.findall(r"authentication_secret: ([\w-]+)", text):
        assert f"zenml secret create {secret}" in text, f"{recipe.name}: secret {secret!r} is used but not documented"


@pytest.mark.parametrize("config_path, recipe_path", REMOTE_CONFIGS.items())
def test_a_remote_pipeline_config_matches_its_stack_and_names_existing_files(config_path, recipe_path):
    config = yaml.safe_load((ROOT / config_path).read_text())
    recipe = yaml.safe_load((ROOT / recipe_path).read_text())
    assert config_path in (ROOT / recipe_path).read_text(), "the recipe's header says how to run on it"
    names = {kind: component["name"] for kind, component in recipe["components"].items()}
    docker = DockerSettings(**config["settings"]["docker"])
    assert (ROOT / docker.requirements).is_file()
    assert docker.requirements == "requirements.lock"  # the remote image gets the same pins as local runs
    flavors = _flavors()
    step_operator_settings = flavors[("step_operator", recipe["components"]["step_operator"]["flavor"])]().config_class
    uses_step_operator = False
    for name, step in config["steps"].items():
        if "experiment_tracker" in step:
            assert step["experiment_tracker"] == names["experiment_tracker"], name
        if "step_operator" in step:
            uses_step_operator = True
            assert step["step_operator"] == names["step_operator"], name
            settings = step.get("settings", {})
            ResourceSettings(**settings.get("resources", {}))
            step_operator_settings(**settings.get("step_operator", {}))
            assert step["parameters"]["training"]["device"] == "cuda"
    assert uses_step_operator
    run = re.search(rf"zenml pipeline run (\S+) -c {re.escape(config_path)}", (ROOT / recipe_path).read_text())
    module, _, pipeline = run.group(1).rpartition(".")
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file() and f"def {pipeline}(" in (
        ROOT / (module.replace(".", "/") + ".py")).read_text()
