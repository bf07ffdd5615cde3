"""The rules every model family and analysis relies on: library boundaries, configs without drift, DVC stages
that know what they depend on, bentos that install what they import."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import re
import subprocess
import sys
from fnmatch import fnmatch
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

from cellops.config import addable_key, derived_configs, key_paths, render_derived, render_text

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("zenml", "mlflow", "bentoml")


def _modules(path: Path) -> set[str]:
    """Full names of every module a Python file imports (absolute imports, nested ones included)."""
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and
                 getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in type_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _imports(path: Path) -> set[str]:
    """Top-level names of every module a Python file imports."""
    return {name.split(".")[0] for name in _modules(path)}


@pytest.mark.parametrize("package", ["cellops", "models"])
def test_the_library_never_imports_zenml_mlflow_bentoml_or_the_adapters(package):
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & {*FRAMEWORKS, "tracking", "steps", "pipelines", "bento"})
                 for p in (ROOT / package).rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


ADAPTERS = {*FRAMEWORKS, "tracking", "steps", "pipelines", "bento"}


def _string_imports(path: Path) -> list[str]:
    """``importlib.import_module(...)`` and ``__import__(...)`` calls of a file: the module named, or ``<dynamic>``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__"):
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant):
                    found.append(first.value)
                elif not _own_submodule(first):
                    found.append("<dynamic>")
    return found


def _own_submodule(node: ast.AST | None) -> bool:
    """``f"{__name__}.{...}"`` or ``f".{...}"`` (relative): a module of the importing package itself (a family's lazy
    API, :func:`cellops.lazy.lazy_api`)."""
    if not (isinstance(node, ast.JoinedStr) and node.values):
        return False
    first = node.values[0]
    return ((isinstance(first, ast.FormattedValue) and getattr(first.value, "id", None) == "__name__")
            or (isinstance(first, ast.Constant) and str(first.value).startswith(".")))


#: Library files that import a module their caller names ({path: why}); an entry needs its reason.
CALLER_NAMED_IMPORTS = {
    "cellops/distributed.py": "a torchrun rank loads the epoch logger its caller names as 'module:function' "
                              "(a subprocess cannot be handed a function)",
}


@pytest.mark.parametrize("package", ["cellops", "models"])
def test_the_library_never_loads_an_adapter_by_name(package):
    offenders = {path: names for p in (ROOT / package).rglob("*.py")
                 if (path := str(p.relative_to(ROOT))) not in CALLER_NAMED_IMPORTS
                 and (names := [n for n in _string_imports(p) if n == "<dynamic>" or n.split(".")[0] in ADAPTERS])}
    assert not offenders
    assert all(_string_imports(ROOT / path) == ["<dynamic>"] for path in CALLER_NAMED_IMPORTS)


def test_the_string_import_rule_sees_import_module_and_dunder_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import importlib\nimportlib.import_module('tracking.cli')\n__import__(name)\n"
                      "importlib.import_module(f'{__name__}.train')\nimportlib.import_module(f'.{name}', package)\n")
    assert _string_imports(source) == ["tracking.cli", "<dynamic>"]


def test_models_are_pure_torch():
    allowed = set(sys.stdlib_module_names) | {"torch", "torchvision", "numpy", "models"}
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) - allowed) for p in (ROOT / "models").rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycle_and_no_import_of_a_higher_layer():
    graph = _import_graph()
    modules = graph.project_graph(ROOT)
    assert {"cellops.cli", "tracking.cli", "steps.unet.train", "models.unet"} <= set(modules)
    assert graph.find_cycles(modules) == []
    assert graph.layer_violations(modules) == []


def test_the_import_graph_sees_a_cycle_and_a_layer_violation(tmp_path):
    graph = _import_graph()
    for package in ("cellops", "tracking"):
        (tmp_path / package).mkdir()
    (tmp_path / "cellops" / "a.py").write_text("from cellops import b\n")
    (tmp_path / "cellops" / "b.py").write_text("def f():\n    import cellops.a\n    import tracking.c\n")
    (tmp_path / "tracking" / "c.py").write_text("")
    modules = graph.project_graph(tmp_path)
    assert graph.find_cycles(modules) == [["cellops.a", "cellops.b"]]
    assert graph.layer_violations(modules) == ["cellops.b -> tracking.c"]


def test_importing_the_whole_library_loads_no_framework():
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "cellops").rglob("*.py")
                     if p.name != "__init__.py")
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print([m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}])")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_derived_configs_are_up_to_date_and_have_the_keys_of_their_base():
    overrides = derived_configs(ROOT)
    assert {p.relative_to(ROOT).as_posix() for p in overrides.values()} >= {
        "configs/unet_full.yaml", "tests/configs/unet_tiny.yaml", "tests/configs/classifier_tiny.yaml",
        "configs/maskrcnn_full.yaml", "tests/configs/maskrcnn_tiny.yaml"}
    for override, target in overrides.items():
        assert target.read_text() == render_text(override, ROOT), f"{target} is stale: run `make configs`"
        values = yaml.safe_load(override.read_text())
        base = (override.parent / values["derive_from"]).resolve()
        replaced = values.get("replace") or []

        def kept(keys: set[str]) -> set[str]:  # keys outside the blocks the override replaces whole
            return {k for k in keys if not any(k == r or k.startswith(r + ".") for r in replaced)}

        # Same keys, except what a derived config may add (named models of a comparison, ZenML settings).
        added = kept(key_paths(yaml.safe_load(target.read_text()))) - key_paths(yaml.safe_load(base.read_text()))
        assert kept(key_paths(yaml.safe_load(base.read_text()))) <= key_paths(yaml.safe_load(target.read_text())), target
        assert all(addable_key(k) for k in added), (target, added)


def test_an_override_replaces_the_blocks_it_lists_whole(tmp_path):
    (tmp_path / "base.yaml").write_text("parameters: {models: {a: {init: scratch}, b: {init: source}}, epochs: 3}\n")
    (tmp_path / "over.yaml").write_text("derive_from: base.yaml\nreplace: [parameters.models, steps.extra]\n"
                                        "parameters: {models: {c: {init: x}}}\nsteps: {extra: {parameters: {n: 1}}}\n")
    assert render_derived(tmp_path / "over.yaml") == {"parameters": {"models": {"c": {"init": "x"}}, "epochs": 3},
                                                      "steps": {"extra": {"parameters": {"n": 1}}}}
    (tmp_path / "bad.yaml").write_text("derive_from: base.yaml\nreplace: [parameters.model]\n")
    with pytest.raises(ValueError, match="parameters.model"):
        render_derived(tmp_path / "bad.yaml")


def test_an_override_of_a_key_the_base_lacks_is_refused(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: {train: {parameters: {epochs: 3}}}\n")
    (tmp_path / "over.yaml").write_text("derive_from: base.yaml\nsteps: {train: {parameters: {epoch: 5}}}\n")
    with pytest.raises(ValueError, match="steps.train.parameters.epoch"):
        render_derived(tmp_path / "over.yaml")


def _steps():
    import importlib
    import pkgutil

    import steps

    # Every module of steps/, so that a new one cannot escape the rules.
    modules = [importlib.import_module(info.name) for info in pkgutil.walk_packages(steps.__path__, "steps.")]
    return {name: obj for module in modules for name, obj in vars(module).items() if hasattr(obj, "entrypoint")}


def test_no_step_parameter_has_a_second_default_outside_the_configs():
    with_defaults = {name: [p.name for p in inspect.signature(step.entrypoint).parameters.values()
                            if p.default is not inspect.Parameter.empty]
                     for name, step in _steps().items()}
    assert not {k: v for k, v in with_defaults.items() if v}


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_step_parameter_in_a_config_exists(config):
    steps = _steps()
    for name, block in (yaml.safe_load((ROOT / "configs" / config).read_text()).get("steps") or {}).items():
        assert name in steps, f"{config}: no step named {name}"
        known = set(inspect.signature(steps[name].entrypoint).parameters)
        assert set((block or {}).get("parameters", {})) <= known, f"{config}: {name}"


def test_dvc_stages_depend_on_every_cellops_module_a_report_imports():
    code = ("import json, sys, cellops.cli, cellops.reports\n"
            "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() if n.startswith('cellops') and m.__file__)))")
    files = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                      check=True).stdout)
    imported = {Path(f).resolve().relative_to(ROOT).as_posix() for f in files}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        deps = stage["deps"]
        uncovered = [f for f in imported if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)]
        assert not uncovered, f"{name} does not depend on {uncovered}"



def test_dvc_lock_is_up_to_date_for_the_report_stages():
    """``make reports`` must not rewrite dvc.lock in a fresh clone: every code and config dependency of a report
    stage hashes as the lock says (data/ is checked file by file against data.dvc elsewhere; outputs are rebuilt)."""
    stages = [name for name in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"] if name.endswith("_report")]
    status = subprocess.run([str(Path(sys.executable).with_name("dvc")), "status", "--json", *stages], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    changed = {stage: {path: why for entry in entries if isinstance(entry, dict)
                       for path, why in entry.get("changed deps", {}).items() if not path.startswith("data/")}
               for stage, entries in json.loads(status.stdout or "{}").items()}
    assert len(stages) == 3
    assert not {k: v for k, v in changed.items() if v}, "run `make reports` and commit dvc.lock"

def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_each_bento_installs_what_its_files_import_at_the_locked_versions():
    distributions = packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    for bentofile in sorted(ROOT.glob("bento/*/bentofile.yaml")):
        spec = yaml.safe_load(bentofile.read_text())
        files = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and
                 any(fnmatch(p.relative_to(ROOT).as_posix(), pattern.replace("**/", "*")) for pattern in spec["include"])]
        assert files, bentofile
        local = {"bento", "cellops", "models", "__future__"}
        third_party = set().union(*map(_imports, files)) - stdlib - local
        packages = {p.split("==")[0].lower() for p in spec["python"]["packages"]} | {"bentoml"}  # bentoml: its own
        missing = {name for name in third_party if not {d.lower() for d in distributions[name]} & packages}
        assert not missing, f"{bentofile}: no package installs {sorted(missing)}"
        lock = _lock()
        for pin in spec["python"]["packages"]:
            name, version = pin.split("==")
            key = name.lower().replace("_", "-")  # the lock file's names are normalised (prometheus-client)
            assert lock[key] == version, f"{bentofile}: {pin} but requirements.lock has {lock[key]}"
        # Every project module the bundled files import is bundled too (else serving fails at run time only).
        bundled = {p.relative_to(ROOT).as_posix() for p in files}
        for path in files:
            for module in (m for m in _modules(path) if m.split(".")[0] in local - {"__future__"}):
                stem = module.replace(".", "/")
                assert {f"{stem}.py", f"{stem}/__init__.py"} & bundled, f"{bentofile}: {path.name} imports {module}"


def test_the_cli_offers_exactly_the_analyses_there_are():
    from cellops.classical.analyses import ANALYSES
    from cellops.cli import KINDS
    from cellops.reports import REPORTS

    assert sorted(ANALYSES) == list(KINDS) == sorted(REPORTS)


#: Tests that assert through something the rule below cannot see ({"tests/path.py::test_name": how it fails}). Empty:
#: every test asserts in its own body today; an entry needs its reason, and one that asserts again must go.
ASSERTS_ELSEWHERE: dict[str, str] = {}
#: Calls that count as asserting when the function called asserts: helpers named like this in tests/, and numpy's.
ASSERTING_PREFIXES = ("assert_", "check_", "expect")


def _call_name(node: ast.Call) -> str:
    """``f`` for ``f(...)``, ``a.b.f`` for ``a.b.f(...)``; '' for anything else called."""
    parts, target = [], node.func
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    if isinstance(target, ast.Name):
        parts.append(target.id)
        return ".".join(reversed(parts))
    return ""


def _own_nodes(function: ast.AST):
    """The nodes of ``function``'s own body: not those of a function, lambda or class defined inside it (which may
    never run)."""
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            yield node
            stack.extend(ast.iter_child_nodes(node))


def _asserts_directly(function: ast.AST) -> bool:
    """An ``assert``, ``pytest.raises`` / ``pytest.warns``, or numpy's (torch's) ``testing.assert_*`` in
    ``function``'s own body."""
    for node in _own_nodes(function):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            name = _call_name(node)
            if name in ("pytest.raises", "pytest.warns") or (
                    ".testing.assert_" in name and name.split(".")[0] in ("np", "numpy", "torch")):
                return True
    return False


def _helper_calls(function: ast.AST) -> set[str]:
    """Names of the assert_/check_/expect* functions ``function`` calls."""
    return {name.rsplit(".", 1)[-1] for node in _own_nodes(function) if isinstance(node, ast.Call)
            for name in [_call_name(node)] if name.rsplit(".", 1)[-1].startswith(ASSERTING_PREFIXES)}


def silent_tests(root: Path) -> list[str]:
    """``path::name`` of every ``test_*`` function under ``root`` that neither asserts nor calls a helper of
    ``root`` (assert_*, check_*, expect*) that asserts, directly or through another such helper."""
    trees = {path: ast.parse(path.read_text()) for path in sorted(root.rglob("*.py"))}
    functions = [(path, node) for path, tree in trees.items() for node in ast.walk(tree)
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    helpers: dict[str, list[ast.AST]] = {}
    for _, node in functions:
        if node.name.startswith(ASSERTING_PREFIXES):
            helpers.setdefault(node.name, []).append(node)
    asserting = {name for name, nodes in helpers.items() if all(_asserts_directly(n) for n in nodes)}
    changed = True
    while changed:  # helpers that assert through other asserting helpers
        changed = False
        for name, nodes in helpers.items():
            if name not in asserting and all(_asserts_directly(n) or _helper_calls(n) & asserting for n in nodes):
                asserting.add(name)
                changed = True
    return [f"{path.relative_to(root.parent).as_posix()}::{node.name}" for path, node in functions
            if node.name.startswith("test_") and not _asserts_directly(node) and not _helper_calls(node) & asserting]


def test_every_test_can_fail():
    silent = silent_tests(ROOT / "tests")
    assert not set(silent) - set(ASSERTS_ELSEWHERE), "tests that assert nothing: " + ", ".join(
        sorted(set(silent) - set(ASSERTS_ELSEWHERE)))
    assert not set(ASSERTS_ELSEWHERE) - set(silent), "allowed but asserting now: remove them from ASSERTS_ELSEWHERE"


def test_the_assertion_rule_sees_silent_tests_and_helpers_that_do_not_assert(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import numpy as np, pytest\n"
        "from cellops.runtimes import check_runtime\n"
        "def check_shape(x):\n    assert x.shape\n"
        "def check_nothing(x):\n    print(x)\n"
        "def expect_shape(x):\n    check_shape(x)\n"
        "def test_asserts():\n    assert 1\n"
        "def test_raises():\n    with pytest.raises(ValueError):\n        int('x')\n"
        "def test_numpy():\n    np.testing.assert_allclose(1, 1)\n"
        "def test_helper():\n    check_shape(np.ones(1))\n"
        "def test_helper_of_helper():\n    expect_shape(np.ones(1))\n"
        "def test_silent():\n    print(1)\n"
        "def test_assert_in_a_function_never_called():\n    def inner():\n        assert 1\n"
        "def test_helper_that_does_not_assert():\n    check_nothing(1)\n"
        "def test_library_check_that_returns():\n    check_runtime('torch', 1, 1, 1, 1, 1)\n"
        "class TestClass:\n    def test_method_silent(self):\n        pass\n")
    assert silent_tests(tmp_path / "tests") == [
        "tests/test_x.py::test_silent", "tests/test_x.py::test_assert_in_a_function_never_called",
        "tests/test_x.py::test_helper_that_does_not_assert",
        "tests/test_x.py::test_library_check_that_returns", "tests/test_x.py::test_method_silent"]


def test_every_doctest_outside_the_library_is_collected():
    """bento/, steps/ and benchmarks/ are collected file by file (pyproject.toml testpaths): a new doctest there
    must be listed, or it never runs."""
    import tomllib

    testpaths = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["testpaths"]
    folders = ("bento", "steps", "benchmarks", "pipelines", "scripts")
    with_doctests = {p.relative_to(ROOT).as_posix() for folder in folders for p in (ROOT / folder).rglob("*.py")
                     if ">>> " in p.read_text()}
    assert with_doctests, "no doctest found: the search is broken"
    assert not with_doctests - set(testpaths), "doctests that never run: add them to testpaths in pyproject.toml"


def test_every_test_a_bentofile_cites_exists():
    for bentofile in sorted(ROOT.glob("bento/*/bentofile.yaml")):
        for cited in re.findall(r"tests/[\w/]+\.py", bentofile.read_text()):
            assert (ROOT / cited).is_file(), f"{bentofile.relative_to(ROOT)} cites {cited}, which does not exist"
