"""Write the API reference pages of the documentation site at build time (mkdocs-gen-files runs this file).

Every public module of the packages in ``PACKAGES`` gets one page, ``reference/<package>/<module>.md``, holding a
single mkdocstrings directive (``::: package.module``); a package's ``__init__`` becomes its section's index page.
``reference/SUMMARY.md`` lists them all for mkdocs-literate-nav. The pages are found by walking the source tree
on every build, so moving, adding or removing a module changes the reference with nothing to edit here.

Skipped: private modules and packages (a name starting with ``_``, except ``__init__``) and ``SKIP`` below.

The same file holds ``DocstringMarkdown``, the Griffe extension that mkdocs.yml loads
(``extensions: [scripts/gen_api_pages.py:DocstringMarkdown]``). The project's docstrings are written for the
terminal and for pytest's doctests: bare ``>>>`` lines, which Markdown would read as prose (``x[0][1]`` as a link
reference), so it fences them as ``pycon``; and Sphinx roles (``:class:`Name```), which it turns into plain code.
"""

from __future__ import annotations

import re
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parents[1]
#: The packages documented, in the order of the import layers (models <- cellops <- tracking).
PACKAGES = ("models", "cellops", "tracking")
#: Module paths (dotted, a package skips everything under it) left out of the reference.
SKIP = ("cellops.synthetic",)


def public_modules(package: str) -> list[tuple[str, ...]]:
    """Dotted parts of every public module under ``package``, sorted, packages before their modules."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") for part in parts):
            continue
        if any(".".join(parts) == skip or ".".join(parts).startswith(skip + ".") for skip in SKIP):
            continue
        # a module in a folder without an __init__ is not importable by a dotted name
        if not all((ROOT.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            continue
        found.append(parts)
    return sorted(set(found))


class DocstringMarkdown(griffe.Extension):
    """Docstrings as Markdown: doctests fenced, Sphinx roles as code (:func:`fence_doctests`, :func:`drop_roles`)."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = drop_roles(fence_doctests(obj.docstring.value))


#: A Sphinx cross-reference role, ``:class:`~pkg.Name``` or ``:py:func:`name```.
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|obj|exc|const):`~?([^`]+)`")


def drop_roles(text: str) -> str:
    """``text`` with each Sphinx role replaced by its target as code: ``:class:`~pkg.Name``` becomes
    ```pkg.Name``` (tests/test_docs.py checks both rewrites)."""
    return ROLE.sub(lambda match: f"`{match.group(1)}`", text)


def fence_doctests(text: str) -> str:
    """``text`` with each doctest block fenced as ``pycon``, at its own indentation; fenced code left alone."""
    out: list[str] = []
    lines = text.splitlines()
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            in_fence = not in_fence
        if in_fence or not stripped.startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(stripped)]
        block = []
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            block.append(lines[i])
            i += 1
        out += [f"{indent}```pycon", *block, f"{indent}```"]
    return "\n".join(out)


def main() -> None:
    import mkdocs_gen_files  # only at build time: the extension above loads without it

    nav = mkdocs_gen_files.Nav()
    for package in PACKAGES:
        for parts in public_modules(package):
            is_package = (ROOT.joinpath(*parts) / "__init__.py").is_file()
            doc_path = Path(*parts, "index.md") if is_package else Path(*parts).with_suffix(".md")
            nav[parts] = doc_path.as_posix()
            with mkdocs_gen_files.open(Path("reference", doc_path), "w") as page:
                page.write(f"# `{'.'.join(parts)}`\n\n::: {'.'.join(parts)}\n")
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as summary:
        if (ROOT / "docs" / "reference" / "index.md").is_file():  # the section's own page first
            summary.write("* [Overview](index.md)\n")
        summary.writelines(nav.build_literate_nav())


if __name__ == "<run_path>":  # mkdocs-gen-files runs the script with runpy.run_path; Griffe only imports it
    main()
