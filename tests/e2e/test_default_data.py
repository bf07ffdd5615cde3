"""The built-in default data is the same bytes on every CPU, and `make data` names what differs when it is not.

Users' CPUs pick other OpenBLAS kernels and numpy SIMD loops than the one that wrote ``data.dvc``; a few ulps of
difference in an intermediate float must never reach a stored byte. Two tests check that from two sides:
the whole default data regenerated under every kernel, SIMD level and thread count this CPU offers, and the
generators run with every transcendental result nudged by one ulp (what another CPU's exp/sin/cos may return).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from cellops import data_version as dv
from cellops.synthetic.calcium import generate_calcium_movie
from cellops.synthetic.colonies import generate_colony_image
from cellops.synthetic.em import generate_em_volume
from cellops.synthetic.endothelial import CLASSES, generate_cell_image
from cellops.synthetic.nuclei import generate_nuclei_image
from cellops.telemetry import TELEMETRY_OFF
from tracking.cli import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.minutes(4)

# Runs in each subprocess: write the default data, report which kernels actually ran.
_GENERATE = """
import json, sys
from pathlib import Path
import threadpoolctl
from numpy._core._multiarray_umath import __cpu_features__
from cellops.cli import generate_data
generate_data(Path(sys.argv[1]), Path(sys.argv[2]))
blas = sorted({i["architecture"] for i in threadpoolctl.threadpool_info() if i["prefix"] == "libscipy_openblas"})
print(json.dumps({"openblas": blas, "numpy": sorted(k for k, on in __cpu_features__.items() if on)}))
"""


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith(("flags", "Features")) for flag in line.split(":")[1].split()}


def _numpy_levels() -> list[str]:
    """NPY_DISABLE_CPU_FEATURES values that step numpy down through every SIMD level it dispatches to here."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    enabled = [feature for feature in __cpu_dispatch__ if __cpu_features__.get(feature)]
    return [""] + [" ".join(enabled[i:]) for i in range(len(enabled) - 1, -1, -1)]


def _openblas_kernels() -> list[str]:
    """OPENBLAS_CORETYPE values this CPU can run ("" = the one OpenBLAS picks). A value already set for this
    machine (some CPUs need one) is kept, never changed."""
    if "OPENBLAS_CORETYPE" in os.environ or platform.machine() not in ("x86_64", "AMD64"):
        return [""]
    flags = _cpu_flags()
    kernels = [""] + (["SkylakeX", "Haswell"] if "avx512f" in flags else [])  # else "" is Haswell or older
    return kernels + ["Sandybridge", "Prescott"]


def kernel_matrix() -> list[dict[str, str]]:
    """Environments to compare, the two ends of what differs between CPUs: the kernels and SIMD level this CPU
    picks with 2 threads, and the oldest OpenBLAS kernel with every numpy SIMD level above the baseline disabled
    and 1 thread (one full generation each, in parallel; the levels between them add time, not coverage)."""
    kernels, levels = _openblas_kernels(), _numpy_levels()
    oldest = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if kernels[-1]:
        oldest["OPENBLAS_CORETYPE"] = kernels[-1]
    if levels[-1]:
        oldest["NPY_DISABLE_CPU_FEATURES"] = levels[-1]
    return [{"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}, oldest]


def _generate_under(settings: dict[str, str], out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NPY_DISABLE_CPU_FEATURES",)}
    env.update(TELEMETRY_OFF, **settings)
    run = subprocess.run([sys.executable, "-c", _GENERATE, str(ROOT / "params.yaml"), str(out)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, f"{settings}: {run.stderr[-2000:]}"
    return {"settings": settings, "ran": json.loads(run.stdout.strip().splitlines()[-1]), "files": dv.hash_folder(out)}


def test_committed_manifest_lists_the_version_data_dvc_records():
    listing = dv.read_manifest(ROOT / "data.files.json")
    assert dv.dvc_dir_md5(listing) == dv.dvc_file_md5(ROOT / "data.dvc")


def test_default_data_is_the_same_bytes_under_every_kernel_simd_level_and_thread_count(tmp_path):
    matrix = kernel_matrix()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda ie: _generate_under(ie[1], tmp_path / f"run{ie[0]}"), enumerate(matrix)))
    expected = dv.read_manifest(ROOT / "data.files.json")
    seen = [(r["settings"], r["ran"]["openblas"], len(r["ran"]["numpy"])) for r in results]
    print("compared:", *seen, sep="\n  ")
    for result in results:
        difference = dv.compare_listings(expected, result["files"])
        assert not difference, f"under {result['settings']} (ran {result['ran']['openblas']}): {difference.describe()}"
    if len(_openblas_kernels()) > 1:  # the variable took effect: more than one kernel really ran
        assert len({tuple(r["ran"]["openblas"]) for r in results}) > 1, seen
    if len(_numpy_levels()) > 1:
        assert len({len(r["ran"]["numpy"]) for r in results}) > 1, seen


@contextmanager
def last_bit_noise(seed: int = 0, ulps_max: int = 4):
    """Nudge every result of numpy's transcendental functions by 1 to ``ulps_max`` ulps, up or down at random: what
    another CPU's SIMD or libm implementation of exp, log, sin, cos or power may return (numpy documents up to
    4 ulps for its SIMD float64 loops)."""
    rng = np.random.default_rng(seed)
    names = ("exp", "log", "sin", "cos", "power", "tanh", "arctan2", "hypot")
    originals = {name: getattr(np, name) for name in names}

    def nudged(function):
        def call(*args, **kwargs):
            out = function(*args, **kwargs)
            array = np.asarray(out)
            if array.dtype.kind != "f":
                return out
            ulps = rng.integers(1, ulps_max + 1, size=array.shape) * rng.choice([-1, 1], size=array.shape)
            result = (array * (1 + ulps * np.finfo(array.dtype).eps)).astype(array.dtype)
            return result if isinstance(out, np.ndarray) else array.dtype.type(result)
        return call

    try:
        for name, function in originals.items():
            setattr(np, name, nudged(function))
        yield
    finally:
        for name, function in originals.items():
            setattr(np, name, function)


GENERATORS = {
    "em": lambda: (lambda v: (v.image, v.mask))(generate_em_volume((12, 192, 192), seed=3)),
    "colonies": lambda: (lambda c: (c.image, c.labels))(generate_colony_image((384, 384), seed=3)),
    "nuclei": lambda: (lambda n: (n.image, n.labels, n.ellipses.to_csv(float_format="%.6g").encode()))(
        generate_nuclei_image("Film", (256, 256), seed=3, n_nuclei=20)),
    "calcium": lambda: (lambda m: (m.movie, m.labels))(generate_calcium_movie("Film", (128, 128), n_frames=24, n_cells=8, seed=3)),
    "endothelial": lambda: tuple(generate_cell_image(label, 96, seed=seed) for label in CLASSES for seed in range(8)),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_ignore_last_bit_differences_of_transcendental_functions(name):
    clean = GENERATORS[name]()
    for seed in range(3):
        with last_bit_noise(seed):
            noisy = GENERATORS[name]()
        for a, b in zip(clean, noisy):
            changed = np.count_nonzero(np.asarray(a) != np.asarray(b))
            assert changed == 0, f"{name}: last-bit differences (seed {seed}) changed {changed} stored values"


def test_last_bit_noise_really_changes_results():
    x = np.linspace(0.1, 3.0, 1000)
    with last_bit_noise():
        noisy = np.exp(x)
    assert np.count_nonzero(noisy != np.exp(x)) == 1000
    assert np.max(np.abs(noisy / np.exp(x) - 1)) < 5 * np.finfo(np.float64).eps


def test_dvc_dir_hash_is_the_one_dvc_computes(tmp_path):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "sub" / "a.tif").write_bytes(b"\x00\x01" * 100)
    (tmp_path / "data" / "b.csv").write_text("x,y\n1,2\n")
    dvc = Path(sys.executable).parent / "dvc"
    env = {**os.environ, **TELEMETRY_OFF}
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run([str(dvc), "add", "-q", "data"], cwd=tmp_path, check=True, env=env)
    assert dv.dvc_dir_md5(dv.hash_folder(tmp_path / "data")) == dv.dvc_file_md5(tmp_path / "data.dvc")


def _tiny_versioned_data(tmp_path: Path) -> tuple[Path, Path, Path]:
    data = tmp_path / "data"
    (data / "em").mkdir(parents=True)
    (data / "em" / "training.tif").write_bytes(b"volume")
    (data / "cells.csv").write_text("cell\n1\n")
    manifest = dv.write_manifest(tmp_path / "data.files.json", dv.hash_folder(data))
    dvc_file = tmp_path / "data.dvc"
    dvc_file.write_text(f"outs:\n- md5: {dv.dvc_dir_md5(dv.hash_folder(data))}\n  path: data\n")
    return data, manifest, dvc_file


def test_check_data_names_the_files_that_differ_and_what_to_do(tmp_path, capsys):
    data, manifest, dvc_file = _tiny_versioned_data(tmp_path)
    committed = manifest.read_text()
    args = ["check-data", "--data", str(data), "--manifest", str(manifest), "--dvc-file", str(dvc_file)]
    assert main(args) == 0
    (data / "em" / "training.tif").write_bytes(b"other volume")
    (data / "cells.csv").unlink()
    (data / "extra.png").write_bytes(b"png")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "em/training.tif" in err and "cells.csv" in err and "extra.png" in err
    assert "make data-accept" in err and "git checkout params.yaml" in err
    assert manifest.read_text() == committed  # checking never rewrites the committed listing


def test_check_data_update_refuses_a_manifest_that_disagrees_with_data_dvc(tmp_path, capsys):
    data, manifest, dvc_file = _tiny_versioned_data(tmp_path)
    before = manifest.read_text()
    (data / "cells.csv").write_text("cell\n2\n")
    update = ["check-data", "--data", str(data), "--manifest", str(manifest), "--dvc-file", str(dvc_file), "--update"]
    assert main(update) == 1  # data.dvc was not updated by `dvc add`: the manifest stays as it was
    assert "dvc add" in capsys.readouterr().err and manifest.read_text() == before
    dvc_file.write_text(f"outs:\n- md5: {dv.dvc_dir_md5(dv.hash_folder(data))}\n  path: data\n")
    assert main(update) == 0
    assert dv.read_manifest(manifest) == dv.hash_folder(data)


def test_check_data_refuses_a_manifest_of_another_version(tmp_path, capsys):
    data, manifest, dvc_file = _tiny_versioned_data(tmp_path)
    dvc_file.write_text("outs:\n- md5: 0123.dir\n  path: data\n")
    assert main(["check-data", "--data", str(data), "--manifest", str(manifest), "--dvc-file", str(dvc_file)]) == 1
    assert "does not list the version" in capsys.readouterr().err


def test_generate_data_never_overwrites_other_data(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("em: {shape: [2, 32, 32], seed: 0, voxel_nm: 8.0, mitochondria_fraction: 0.1}\n")
    assert main(["generate-data", "--params", str(params), "--out", str(tmp_path / "data")]) == 0
    own = tmp_path / "data" / "em" / "training.tif"
    own.write_bytes(b"a lab's own volume")
    assert main(["generate-data", "--params", str(params), "--out", str(tmp_path / "data")]) == 1
    assert "training.tif already exist" in capsys.readouterr().err
    assert own.read_bytes() == b"a lab's own volume"
    assert main(["generate-data", "--params", str(params), "--out", str(tmp_path / "data"), "--force"]) == 0
    assert own.read_bytes() != b"a lab's own volume"


def test_report_files_that_dvc_hashes_are_the_same_bytes_under_other_kernels(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("nuclei: {images_per_group: 1, shape: [256, 256], seed: 5}\n"
                      "calcium: {movies_per_group: 1, shape: [128, 128], n_frames: 40, seed: 5}\n")
    assert main(["generate-data", "--params", str(params), "--out", str(tmp_path / "data")]) == 0
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    outputs = {}
    for i, settings in enumerate([{}, kernel_matrix()[-1]]):
        env = {**os.environ, **TELEMETRY_OFF, **settings}
        for kind in ("nuclei", "calcium"):
            out = tmp_path / f"reports{i}" / kind
            subprocess.run([str(Path(sys.executable).parent / "cellops"), "report", kind, "--out", str(out)],
                           cwd=tmp_path, env=env, check=True, capture_output=True)
        outputs[i] = {k: v for k, v in dv.hash_folder(tmp_path / f"reports{i}").items() if k.endswith((".csv", ".json"))}
    assert len(outputs[0]) >= 8
    assert not dv.compare_listings(outputs[0], outputs[1]), dv.compare_listings(outputs[0], outputs[1]).describe()


def test_forced_regeneration_leaves_no_file_of_the_old_dataset(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("colonies: {n_images: 3, shape: [256, 256], seed: 0}\n")
    assert main(["generate-data", "--params", str(params), "--out", str(tmp_path / "data")]) == 0
    params.write_text("colonies: {n_images: 2, shape: [256, 256], seed: 0}\n")
    assert main(["generate-data", "--params", str(params), "--out", str(tmp_path / "data"), "--force"]) == 0
    assert sorted(p.name for p in (tmp_path / "data/colonies/images").iterdir()) == ["colony_000.png", "colony_001.png"]
    out = capsys.readouterr().out
    assert "removed" in out and "colony_002.png" in out
