"""The documentation: the site builds with `mkdocs build --strict` (no broken link, anchor or API reference; the
API pages are generated from the docstrings), and README.md stays a short front door whose links all resolve."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The README is the front door; everything else lives in docs/.
README_MAX_LINES = 160
FAMILY_PAGES = ("unet", "classifier", "maskrcnn", "classical")


def test_the_site_builds_strictly_with_every_family_page_and_the_api_reference(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs packages of requirements.lock are not installed (make setup)")
    site = tmp_path / "site"
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    assert (site / "index.html").is_file()
    for family in FAMILY_PAGES:
        assert (site / "families" / family / "index.html").is_file(), family
    # the API reference is generated: one page per public module, the family packages among them
    for module in ("cellops/batch", "cellops/unet", "models/unet", "tracking/registry"):
        assert (site / "reference" / module / "index.html").is_file(), module
    assert "doc doc-object doc-function" in (site / "reference" / "cellops" / "batch" / "index.html").read_text()


def test_readme_is_a_short_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    text = README.read_text()
    for command in ("make demo", "make test"):
        assert f"\n{command}   # " in text, f"README lacks the `{command}` line"


def _relative_links(markdown: str) -> list[str]:
    """Targets of the Markdown links and images in ``markdown`` that are not URLs or in-page anchors, outside code."""
    prose = re.sub(r"```.*?```", "", markdown, flags=re.S)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:|^#|^//", t)]


def test_every_relative_link_in_the_readme_points_to_a_file():
    links = _relative_links(README.read_text())
    assert links, "README.md links no page"
    missing = [link for link in links if not (ROOT / unquote(link.split("#")[0])).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_relative_links_are_found_outside_code():
    assert _relative_links("[a](docs/a.md#x) ![b](docs/b.png) [c](https://x.org) [d](#e) `[f](g.md)`\n"
                           "```\n[h](i.md)\n```") == ["docs/a.md#x", "docs/b.png"]


def _api_pages_script():
    pytest.importorskip("griffe", reason="the docs packages of requirements.lock are not installed (make setup)")
    spec = importlib.util.spec_from_file_location("gen_api_pages", ROOT / "scripts" / "gen_api_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docstrings_become_markdown_doctests_fenced_and_sphinx_roles_as_code():
    script = _api_pages_script()
    docstring = ("Intro [a][b] stays.\n\n>>> f(1)[0:2]\n['x', 'y']\n>>> g()\n\nAfter.\n\n"
                 "Examples\n--------\n    >>> h()\n    1\n\n```\n>>> fenced already\n```")
    assert script.fence_doctests(docstring) == (
        "Intro [a][b] stays.\n\n```pycon\n>>> f(1)[0:2]\n['x', 'y']\n>>> g()\n```\n\nAfter.\n\n"
        "Examples\n--------\n    ```pycon\n    >>> h()\n    1\n    ```\n\n```\n>>> fenced already\n```")
    assert script.drop_roles("see :class:`~cellops.config.ServingRecord`, :py:func:`f` and :mod:`tags`") == (
        "see `cellops.config.ServingRecord`, `f` and `tags`")


def test_the_api_reference_covers_every_public_module_and_skips_private_ones():
    script = _api_pages_script()
    modules = {".".join(parts) for package in script.PACKAGES for parts in script.public_modules(package)}
    assert {"cellops", "cellops.batch", "models.unet", "tracking"} <= modules
    assert not [m for m in modules if any(part.startswith("_") for part in m.split("."))]
    assert not [m for m in modules if m.startswith("cellops.synthetic")]
