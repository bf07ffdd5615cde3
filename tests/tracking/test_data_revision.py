"""Training data from an older git revision, brought back through dvc.api (a real git repository and DVC cache)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cellops.data_revision import DataRevisionError, checkout_data_revision, resolve_data_revision
from cellops.data_version import dvc_dir_md5, hash_folder

BIN = Path(sys.executable).parent


def _run(root, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(list(args), cwd=root, env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """Two data versions: v1 (tagged) and v2 (HEAD, in the working tree)."""
    root = tmp_path_factory.mktemp("repo")
    (root / "data" / "em").mkdir(parents=True)
    (root / "data" / "other").mkdir()
    (root / "data" / "em" / "a.bin").write_bytes(b"version one")
    (root / "data" / "other" / "b.bin").write_bytes(b"unrelated")
    _run(root, "git", "init", "-q")
    _run(root, "dvc", "init", "-q")
    _run(root, "dvc", "add", "-q", "data")
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-qm", "v1")
    _run(root, "git", "tag", "v1")
    v1 = hash_folder(root / "data")
    (root / "data" / "em" / "a.bin").write_bytes(b"version two")
    (root / "data" / "em" / "new.bin").write_bytes(b"added in two")
    _run(root, "dvc", "add", "-q", "data")
    _run(root, "git", "commit", "-qam", "v2")
    return root, v1


def test_an_older_revision_is_brought_back_exactly_without_touching_the_working_tree(repo):
    root, v1 = repo
    revision = resolve_data_revision(root / "data.dvc", "v1", repo_root=root)
    assert revision.data_version == dvc_dir_md5(v1) and revision.data_files == 2 and revision.data_path == "data"
    assert len(revision.commit) == 40
    folder = checkout_data_revision(revision, "data/em", repo_root=root)
    assert folder == root / "outputs" / "data-revisions" / revision.data_version.removesuffix(".dir") / "data" / "em"
    assert (folder / "a.bin").read_bytes() == b"version one" and sorted(p.name for p in folder.iterdir()) == ["a.bin"]
    assert (root / "data" / "em" / "a.bin").read_bytes() == b"version two"  # the working tree is as it was
    # A second call reuses the checked-out copy; a damaged copy is brought back again.
    assert checkout_data_revision(revision, "data/em", repo_root=root) == folder
    (folder / "a.bin").write_bytes(b"tampered")
    assert (checkout_data_revision(revision, "data/em", repo_root=root) / "a.bin").read_bytes() == b"version one"


def test_bad_revisions_and_folders_are_named(repo):
    root, _ = repo
    with pytest.raises(DataRevisionError, match="data_rev 'v9' is not a tag, branch or commit"):
        resolve_data_revision(root / "data.dvc", "v9", repo_root=root)
    revision = resolve_data_revision(root / "data.dvc", "v1", repo_root=root)
    with pytest.raises(DataRevisionError, match="elsewhere is not under data/"):
        checkout_data_revision(revision, "elsewhere", repo_root=root)
    with pytest.raises(DataRevisionError, match="has no files under data/nothing"):
        checkout_data_revision(revision, "data/nothing", repo_root=root)


def test_a_version_missing_from_cache_and_remote_is_named(repo, tmp_path):
    root, _ = repo
    clone = tmp_path / "clone"
    shutil.copytree(root, clone, ignore=shutil.ignore_patterns("cache", "outputs"))
    revision = resolve_data_revision(clone / "data.dvc", "v1", repo_root=clone)
    with pytest.raises(DataRevisionError, match=r"data version .* \(data_rev 'v1'\) is in neither DVC's cache"):
        checkout_data_revision(revision, "data/em", repo_root=clone)
