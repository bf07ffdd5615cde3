import subprocess

from cellops.lineage import dvc_data_version, git_commit


def test_data_version_is_read_from_the_dvc_file(tmp_path):
    dvc_file = tmp_path / "data.dvc"
    dvc_file.write_text("outs:\n- md5: 0123abcd.dir\n  size: 10\n  nfiles: 4\n  hash: md5\n  path: data\n")
    assert dvc_data_version(dvc_file, check_workspace=False) == ("0123abcd.dir", 4)
    assert dvc_data_version(tmp_path / "missing.dvc") == ("untracked", -1)


def test_git_commit_marks_dirty_trees(tmp_path):
    assert git_commit(tmp_path) == "unknown"
    run = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    run("add", "f.txt")
    run("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    clean = git_commit(tmp_path)
    assert len(clean) == 40
    (tmp_path / "f.txt").write_text("b")
    assert git_commit(tmp_path) == clean + "-dirty"
