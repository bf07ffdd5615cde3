"""Content hashes of a data folder, computed from the files themselves, as DVC computes them.

DVC identifies a folder by the md5 of its ``.dir`` listing: the JSON list of ``{"md5", "relpath"}`` of every
file, sorted by path. Computing the same listing here lets ``make data`` name exactly which files differ
from the committed version (``data.files.json`` keeps that listing in git beside ``data.dvc``, whose cache
a fresh clone does not have), and hashes the bytes on disk rather than trusting DVC's mtime cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

#: Files DVC never counts as data (its own ignore file, editor and OS litter are not ours to guess).
_SKIPPED_NAMES = frozenset({".dvcignore", ".gitignore"})


def file_md5(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """md5 hex digest of one file, read in chunks (datasets can be larger than memory)."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def hash_folder(root: str | Path) -> dict[str, str]:
    """md5 of every file under ``root``, keyed by its POSIX path relative to ``root``, sorted by path.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "a.txt").write_text("hi\\n")
    >>> hash_folder(root)
    {'a.txt': '764efa883dda1e11db47671c4a3bbd9e'}
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data folder")
    files = (p for p in root.rglob("*") if p.is_file() and p.name not in _SKIPPED_NAMES)
    return {p.relative_to(root).as_posix(): file_md5(p) for p in sorted(files, key=lambda p: p.relative_to(root).as_posix())}


def dvc_dir_md5(listing: dict[str, str]) -> str:
    """DVC's version id (``<md5>.dir``) of a folder whose files have the md5s in ``listing``.

    Examples
    --------
    >>> dvc_dir_md5({"a/x.txt": "764efa883dda1e11db47671c4a3bbd9e", "b.txt": "f6255bb01c648fe967714d52a89e8e9c"})
    '6cc98705253e3825ec6ec91abf7d2411.dir'
    """
    entries = [{"md5": md5, "relpath": relpath} for relpath, md5 in sorted(listing.items())]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def read_manifest(path: str | Path) -> dict[str, str]:
    """Read a listing written by :func:`write_manifest` (DVC's ``.dir`` format)."""
    entries = json.loads(Path(path).read_text())
    return {entry["relpath"]: entry["md5"] for entry in entries}


def write_manifest(path: str | Path, listing: dict[str, str]) -> Path:
    """Write ``listing`` in DVC's ``.dir`` format, one file per line so that git diffs name the files."""
    lines = [json.dumps({"md5": md5, "relpath": relpath}, sort_keys=True) for relpath, md5 in sorted(listing.items())]
    path = Path(path)
    path.write_text("[\n" + ",\n".join(lines) + "\n]\n")
    return path


@dataclass(frozen=True)
class DataDifference:
    """How a folder differs from an expected listing: paths relative to the folder, sorted."""

    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changed or self.missing or self.unexpected)

    def describe(self, root: str | Path = "", limit: int = 10) -> str:
        """One line per kind of difference, naming up to ``limit`` files each."""
        lines = []
        for what, paths in (("differ", self.changed), ("are missing", self.missing), ("are not expected", self.unexpected)):
            if paths:
                shown = ", ".join(str(Path(root) / p) for p in paths[:limit])
                more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
                lines.append(f"{len(paths)} file(s) {what}: {shown}{more}")
        return "\n".join(lines)


def compare_listings(expected: dict[str, str], actual: dict[str, str]) -> DataDifference:
    """Which files of ``actual`` differ from, are missing from, or are extra to ``expected``."""
    return DataDifference(
        changed=sorted(p for p in expected.keys() & actual.keys() if expected[p] != actual[p]),
        missing=sorted(expected.keys() - actual.keys()),
        unexpected=sorted(actual.keys() - expected.keys()),
    )


def dvc_file_output(dvc_file: str | Path) -> dict:
    """The first output recorded in a ``.dvc`` file (``md5``, ``nfiles``, ``path``...; empty when none)."""
    import yaml

    outs = (yaml.safe_load(Path(dvc_file).read_text()) or {}).get("outs") or [{}]
    return dict(outs[0])


def dvc_file_md5(dvc_file: str | Path) -> str:
    """The version id (``md5`` of the first output) recorded in a ``.dvc`` file."""
    md5 = dvc_file_output(dvc_file).get("md5")
    if not md5:
        raise ValueError(f"{dvc_file} records no md5 for its output")
    return str(md5)
