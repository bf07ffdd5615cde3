"""Training on an older data version: a git revision's ``data.dvc`` names it, DVC's API brings its files.

A config sets ``data_rev`` (a tag, branch or commit). :func:`resolve_data_revision` reads the ``.dvc`` file as it
was at that revision (its data version), and :func:`checkout_data_revision` copies the part of that version a
pipeline reads (for example ``data/em``) out of DVC's cache or remote through :class:`dvc.api.DVCFileSystem`,
into a folder named after the version (``outputs/data-revisions/<md5>/``). The files are hashed against the
version's listing before they are used, so what is trained on is exactly that version. The working tree's
``data/`` is never touched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from cellops.data_version import compare_listings, dvc_dir_md5, hash_folder, read_manifest

#: Where checked-out data versions are kept, relative to the repository.
REVISIONS_DIR = Path("outputs") / "data-revisions"


class DataRevisionError(ValueError):
    """A data revision that cannot be resolved or whose files cannot be brought back as recorded."""


@dataclass(frozen=True)
class DataRevision:
    """A git revision and the data version its ``.dvc`` file records.

    Attributes
    ----------
    rev : the revision as the config names it (tag, branch, commit).
    commit : the git commit it resolves to.
    dvc_file : the ``.dvc`` file, relative to the repository.
    data_version : the md5 (``<md5>.dir``) that file records at ``commit``.
    data_files : the number of files of that version.
    data_path : the tracked folder, relative to the repository (``data``).
    """

    rev: str
    commit: str
    dvc_file: str
    data_version: str
    data_files: int
    data_path: str


def _git(repo_root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=repo_root, capture_output=True, text=True)
    if result.returncode != 0:
        raise DataRevisionError(result.stderr.strip() or f"git {' '.join(args)} failed")
    return result.stdout


def resolve_data_revision(dvc_file: str | Path, rev: str, repo_root: str | Path = ".") -> DataRevision:
    """The data version ``dvc_file`` records at git revision ``rev``.

    Raises :class:`DataRevisionError` naming the revision when it is not one of the repository's, or when the
    ``.dvc`` file did not exist or tracked no folder there.
    """
    repo_root = Path(repo_root).resolve()
    if not str(rev).strip():
        raise DataRevisionError("data_rev is empty: name a git tag, branch or commit, or leave it null")
    try:
        commit = _git(repo_root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    except DataRevisionError:
        commit = ""
    if not commit:
        raise DataRevisionError(f"data_rev {rev!r} is not a tag, branch or commit of the repository at {repo_root} "
                                "(`git tag` and `git log --oneline` list them)")
    relative = Path(dvc_file).resolve().relative_to(repo_root).as_posix() if Path(dvc_file).is_absolute() \
        else Path(dvc_file).as_posix()
    try:
        recorded = yaml.safe_load(_git(repo_root, "show", f"{commit}:{relative}"))
    except DataRevisionError:
        raise DataRevisionError(f"{relative} does not exist at data_rev {rev!r} ({commit[:12]}): no data version "
                                "was recorded there") from None
    output = (recorded or {}).get("outs", [{}])[0]
    md5 = str(output.get("md5", ""))
    if not md5.endswith(".dir"):
        raise DataRevisionError(f"{relative} at data_rev {rev!r} ({commit[:12]}) tracks no folder (md5 {md5!r})")
    return DataRevision(rev=str(rev), commit=commit, dvc_file=relative, data_version=md5,
                        data_files=int(output.get("nfiles", -1)), data_path=str(output.get("path", "data")))


def revision_listing(revision: DataRevision, repo_root: str | Path = ".") -> dict[str, str]:
    """The md5 of every file of the version: from DVC's cache (the ``.dir`` object) or, when the cache lacks it,
    the ``.files.json`` committed beside the ``.dvc`` file at that revision (if it hashes to the version)."""
    repo_root = Path(repo_root).resolve()
    md5 = revision.data_version
    cached = repo_root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    if cached.is_file():
        return read_manifest(cached)
    committed = Path(revision.dvc_file).with_suffix(".files.json").as_posix()
    try:
        listing = json.loads(_git(repo_root, "show", f"{revision.commit}:{committed}"))
    except (DataRevisionError, json.JSONDecodeError):
        listing = None
    if isinstance(listing, dict) and dvc_dir_md5(listing) == md5:
        return listing
    raise DataRevisionError(f"data version {md5} (data_rev {revision.rev!r}) is in neither DVC's cache nor a committed "
                            f"{committed}: run `dvc fetch --rev {revision.rev}` (from the remote) first")


def checkout_data_revision(revision: DataRevision, data_dir: str | Path, repo_root: str | Path = ".",
                           revisions_dir: str | Path = REVISIONS_DIR) -> Path:
    """The folder holding ``data_dir`` (e.g. ``data/em``) as it is in ``revision``'s data version, brought from
    DVC's cache or remote once and kept under ``revisions_dir/<md5>/`` (read-only use; a later call reuses it).

    Every file is hashed against the version's listing before the folder is made visible, so a partial or
    corrupted copy is never used.

    Examples
    --------
    A config's ``data_dir: data/em`` with ``data_rev: v1`` reads ``outputs/data-revisions/<md5 of v1>/data/em``.
    """
    repo_root = Path(repo_root).resolve()
    data_dir = Path(data_dir)
    tracked = Path(revision.data_path)
    try:
        inner = (data_dir.resolve().relative_to(repo_root / tracked) if data_dir.is_absolute()
                 else data_dir.relative_to(tracked))
    except ValueError:
        raise DataRevisionError(f"data_dir {data_dir} is not under {tracked}/, the folder {revision.dvc_file} tracks: "
                                "a data_rev can only bring back DVC-tracked data") from None
    listing = revision_listing(revision, repo_root)
    prefix = "" if inner.as_posix() == "." else inner.as_posix() + "/"
    expected = {path[len(prefix):]: md5 for path, md5 in listing.items() if path.startswith(prefix)}
    if not expected:
        raise DataRevisionError(f"data version {revision.data_version} (data_rev {revision.rev!r}) has no files under "
                                f"{data_dir}")
    root = (repo_root / revisions_dir / revision.data_version.removesuffix(".dir")).resolve()
    target = root / tracked / inner
    if target.is_dir() and not compare_listings(expected, hash_folder(target)):
        return target
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".incoming-") as incoming:
        copy = Path(incoming) / "copy"
        try:
            fs = DVCFileSystem(str(repo_root), rev=revision.commit)
            fs.get((tracked / inner).as_posix(), str(copy), recursive=True)
        except (DvcException, FileNotFoundError, OSError) as error:
            raise DataRevisionError(f"could not bring {data_dir} of data version {revision.data_version} (data_rev "
                                    f"{revision.rev!r}) from DVC's cache or remote: {error}; `dvc fetch --rev "
                                    f"{revision.rev}` needs the remote that holds it") from error
        difference = compare_listings(expected, hash_folder(copy) if copy.is_dir() else {})
        if difference:
            raise DataRevisionError(f"{data_dir} of data version {revision.data_version} (data_rev {revision.rev!r}) "
                                    f"came back different from its listing:\n{difference.describe(data_dir)}")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        copy.rename(target)
    return target
