"""Where a run's inputs came from: the DVC data version and the git commit of the code."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from cellops.data_version import (
    DataDifference,
    compare_listings,
    dvc_dir_md5,
    dvc_file_output,
    hash_folder,
    read_manifest,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lineage:
    """Identifiers that let a result be traced back and reproduced.

    Attributes
    ----------
    data_version : DVC md5 of the tracked data folder (``<md5>.dir``), with ``+modified`` appended when the
        files on disk no longer match ``data.dvc``, or ``untracked`` when there is no ``.dvc`` file.
    data_files : number of files in the tracked version (from ``data.dvc``), -1 when unknown.
    git_commit : commit of the code, with ``-dirty`` appended when tracked files have uncommitted changes.
    data_rev : the git revision the data was taken from when a config names one (``data_rev``), else empty.
    data_rev_commit : the commit ``data_rev`` resolved to, else empty.
    """

    data_version: str
    data_files: int
    git_commit: str
    data_rev: str = ""
    data_rev_commit: str = ""

    def as_dict(self) -> dict[str, str | int]:
        """The fields, without the empty revision ones (so runs on the working tree's data keep their old tags)."""
        return {k: v for k, v in asdict(self).items() if v != "" or not k.startswith("data_rev")}


def expected_listing(dvc_file: str | Path) -> dict[str, str] | None:
    """The md5 of every file of the version ``dvc_file`` records (relative paths), from DVC's cache (the
    ``<md5>.dir`` listing ``dvc add`` wrote) or the committed ``data.files.json`` beside it when that listing
    has the recorded md5; None when neither is there."""
    dvc_file = Path(dvc_file)
    md5 = str(dvc_file_output(dvc_file).get("md5", ""))
    if not md5.endswith(".dir"):
        return None
    cached = dvc_file.resolve().parent / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    if cached.is_file():
        return read_manifest(cached)
    committed = dvc_file.with_name(dvc_file.stem + ".files.json")
    if committed.is_file():
        listing = read_manifest(committed)
        if dvc_dir_md5(listing) == md5:
            return listing
    return None


def tracking_dvc_file(path: str | Path) -> Path | None:
    """The ``.dvc`` file that tracks ``path`` or a folder above it (``data/em`` -> ``data.dvc``), or None.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "data" / "em").mkdir(parents=True)
    >>> _ = (root / "data.dvc").write_text("outs: [{path: data}]")
    >>> tracking_dvc_file(root / "data" / "em").name, tracking_dvc_file(root)
    ('data.dvc', None)
    """
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        candidate = folder.with_name(folder.name + ".dvc") if folder.name else None
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def check_data_matches(dvc_file: str | Path) -> DataDifference | None:
    """Hash every file of the data folder ``dvc_file`` tracks and compare them with the version it records: the
    files themselves, not DVC's cache of sizes and modification times (an edit with the old mtime restored is
    invisible to ``dvc status``). None when there is no recorded listing to compare with."""
    dvc_file = Path(dvc_file)
    expected = expected_listing(dvc_file)
    if expected is None:
        return None
    folder = dvc_file.resolve().parent / str(dvc_file_output(dvc_file).get("path", ""))
    actual = hash_folder(folder) if folder.is_dir() else {}
    return compare_listings(expected, actual)


def dvc_data_version(dvc_file: str | Path, *, check_workspace: bool = True) -> tuple[str, int]:
    """Read the data version recorded in a ``.dvc`` file, with ``+modified`` appended when the files on disk
    differ from it (see :func:`check_data_matches`)."""
    dvc_file = Path(dvc_file)
    if not dvc_file.is_file():
        return "untracked", -1
    output = dvc_file_output(dvc_file)
    md5 = str(output.get("md5", "unknown"))
    n_files = int(output.get("nfiles", -1))
    if check_workspace:
        difference = check_data_matches(dvc_file)
        if difference is None:
            log.warning("%s: no listing of version %s to check the files against (run `dvc add` or `make data`)",
                        dvc_file, md5)
        elif difference:
            md5 += "+modified"
    return md5, n_files


class DataNotAsRecorded(ValueError):
    """The data folder differs from the version its ``.dvc`` file records."""


def require_recorded_data(dvc_file: str | Path) -> str:
    """The recorded data version, or :class:`DataNotAsRecorded` naming the files that differ, are missing or
    are extra, the version expected, and how to get back to it or record the change.

    Called before any training: a model must never be trained (let alone promoted) on data no version names."""
    dvc_file = Path(dvc_file)
    if not dvc_file.is_file():
        raise DataNotAsRecorded(f"{dvc_file}: no such file; track the data with `dvc add` first")
    md5 = str(dvc_file_output(dvc_file).get("md5", "unknown"))
    difference = check_data_matches(dvc_file)
    if difference is None:
        raise DataNotAsRecorded(f"{dvc_file}: no listing of version {md5} to check the files against (DVC's cache "
                                "and the committed .files.json both lack it): run `dvc pull` or `dvc add` first")
    if difference:
        folder = dvc_file.parent / str(dvc_file_output(dvc_file).get("path", ""))
        raise DataNotAsRecorded(
            f"the files under {folder} are not data version {md5} recorded in {dvc_file}:\n"
            f"{difference.describe(folder)}\n`dvc checkout {dvc_file}` restores the recorded version; "
            f"`dvc add {folder}` and committing {dvc_file} records the change as a new version")
    return md5


def git_commit(repo_root: str | Path = ".") -> str:
    """The HEAD commit of ``repo_root``, ``-dirty`` if tracked files changed, ``unknown`` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo_root, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if changes else commit


def collect_lineage(dvc_file: str | Path, repo_root: str | Path = ".", data_rev: str | None = None) -> Lineage:
    """Data version from ``dvc_file`` and git commit of ``repo_root``; with ``data_rev``, the data version
    ``dvc_file`` recorded at that git revision (see :mod:`cellops.data_revision`)."""
    if data_rev:
        from cellops.data_revision import resolve_data_revision

        revision = resolve_data_revision(dvc_file, data_rev, repo_root)
        return Lineage(data_version=revision.data_version, data_files=revision.data_files,
                       git_commit=git_commit(repo_root), data_rev=revision.rev, data_rev_commit=revision.commit)
    version, n_files = dvc_data_version(dvc_file)
    return Lineage(data_version=version, data_files=n_files, git_commit=git_commit(repo_root))


def data_dir_for(data_dir: str | Path, lineage: dict, dvc_file: str | Path = "data.dvc",
                 repo_root: str | Path = ".") -> Path:
    """Where a pipeline reads ``data_dir`` from: the folder itself, or, when the run's lineage names a
    ``data_rev``, that folder as it is in the revision's data version (brought back by
    :func:`cellops.data_revision.checkout_data_revision`)."""
    if not lineage.get("data_rev"):
        return Path(data_dir)
    from dataclasses import replace

    from cellops.data_revision import checkout_data_revision, resolve_data_revision

    # The commit recorded when the run started: a branch that moves meanwhile does not change the data mid-run.
    revision = resolve_data_revision(dvc_file, str(lineage["data_rev_commit"]), repo_root)
    return checkout_data_revision(replace(revision, rev=str(lineage["data_rev"])), data_dir, repo_root)
