"""Where a run's inputs came from: the DVC data version and the git commit of the code."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from cellops.data_version import dvc_file_output

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
    """

    data_version: str
    data_files: int
    git_commit: str

    def as_dict(self) -> dict[str, str | int]:
        return asdict(self)


def _dvc_workspace_matches(repo_root: Path, dvc_file: Path) -> bool | None:
    """True if the data on disk is the version ``dvc_file`` records, None if DVC cannot tell."""
    try:
        from dvc.repo import Repo

        with Repo(str(repo_root)) as repo:
            return not repo.status(targets=[str(dvc_file)])
    except Exception as error:  # DVC not initialised, file outside the repo...
        log.warning("could not compare %s with the workspace: %s", dvc_file, error)
        return None


def dvc_data_version(dvc_file: str | Path, *, check_workspace: bool = True) -> tuple[str, int]:
    """Read the data version recorded in a ``.dvc`` file, and whether the workspace still matches it."""
    dvc_file = Path(dvc_file)
    if not dvc_file.is_file():
        return "untracked", -1
    output = dvc_file_output(dvc_file)
    md5 = str(output.get("md5", "unknown"))
    n_files = int(output.get("nfiles", -1))
    if check_workspace and _dvc_workspace_matches(dvc_file.resolve().parent, dvc_file) is False:
        md5 += "+modified"
    return md5, n_files


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


def collect_lineage(dvc_file: str | Path, repo_root: str | Path = ".") -> Lineage:
    """Data version from ``dvc_file`` and git commit of ``repo_root``."""
    version, n_files = dvc_data_version(dvc_file)
    return Lineage(data_version=version, data_files=n_files, git_commit=git_commit(repo_root))
