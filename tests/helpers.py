"""Helpers for the end-to-end tests (imported by conftest and the e2e modules)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def run_command(args: list[str], cwd: Path, env: dict, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command; on failure (with ``check``) raise with the tail of its output."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def png_bytes(array) -> bytes:
    """``array`` encoded as a PNG file's bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def bad_uploads(too_large_side: int) -> list[tuple[str, bytes, int, str]]:
    """(name, bytes, expected status, expected message) of uploads every service must refuse: not an image, empty,
    a stack of planes, and a picture of ``too_large_side`` squared pixels (above the service's pixel limit)."""
    import io

    import numpy as np
    import tifffile

    stack = io.BytesIO()
    tifffile.imwrite(stack, np.zeros((3, 32, 32), np.uint8))
    return [("notes.txt", b"not an image at all", 400, "not an image"),
            ("empty.png", b"", 400, "empty upload"),
            ("stack.tif", stack.getvalue(), 400, "stack"),
            ("huge.png", png_bytes(np.zeros((too_large_side, too_large_side), np.uint8)), 413, "too large")]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class served_bento:
    """``with served_bento("cellops-x:latest", root, env) as base_url:`` — a real ``bentoml serve`` on a free
    local port, ready (``/readyz``) before the block runs, killed with its workers afterwards."""

    def __init__(self, tag: str, cwd: Path, env: dict, ready_timeout: float = 180) -> None:
        self.tag, self.cwd, self.env, self.ready_timeout = tag, cwd, env, ready_timeout

    def __enter__(self) -> str:
        import time

        import httpx

        import tempfile

        port = free_port()
        # The server's log goes to a file: a pipe nobody reads fills up after a few dozen logged errors and
        # then blocks the server.
        self.log = tempfile.TemporaryFile()
        self.server = subprocess.Popen(
            ["bentoml", "serve", self.tag, "--host", "127.0.0.1", "--port", str(port)], cwd=self.cwd, env=self.env,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self.server.poll() is not None:
                raise AssertionError(self.output()[-3000:])
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise AssertionError(f"bentoml serve {self.tag} was not ready in {self.ready_timeout} s")
            time.sleep(1)

    def output(self) -> str:
        """What the server has logged so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.server.poll() is None

    def __exit__(self, *exc) -> None:
        import os
        import signal

        try:
            os.killpg(self.server.pid, signal.SIGTERM)
            self.server.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, signal.SIGKILL)
        self.log.close()


def check_bento_environment(bento_dir: Path, lock_file: Path) -> list[str]:
    """Assert that a built bento's generated Dockerfile installs its ``requirements.txt`` on Python 3.11 and that
    every package pinned there has the version of ``lock_file`` (what the tests ran with); return the pins.
    (``bentoml containerize`` needs Docker; what it would install is decided by these two files.)"""
    lock = {}
    for line in lock_file.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            lock[name.strip().lower().replace("_", "-")] = version.split(";")[0].strip()
    pins = [line.strip() for line in (bento_dir / "env/python/requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    for pin in pins:
        assert "==" in pin, f"{bento_dir.name}: {pin!r} is not pinned"
        name, version = pin.split("==", 1)
        assert lock.get(name.lower().replace("_", "-")) == version, \
            f"{bento_dir}: {pin} but requirements.lock has {lock.get(name.lower())}"
    dockerfile = (bento_dir / "env/docker/Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile and "env/python/requirements.txt" in dockerfile
    return pins


def built_bento(bentoml_home: Path, name: str) -> Path:
    """The directory of the latest bento ``name`` in a BentoML home."""
    folder = bentoml_home / "bentos" / name
    return folder / (folder / "latest").read_text().strip()


def served_runtime(champion) -> tuple[str, Path | None]:
    """The runtime a registered version is served with on this host (timed now among those the registry found
    accurate and cached, as its service will find it: :func:`tracking.batch.version_on_host`) and the folder of
    its exported graphs (downloaded from the version's run; None for torch)."""
    import mlflow

    from tracking.batch import resolve_batch_model, version_on_host

    uri = mlflow.get_tracking_uri()
    _, choice = version_on_host(uri, resolve_batch_model(uri, f"models:/{champion.name}/{champion.version}"))
    if choice.runtime == "torch":
        return choice.runtime, None
    return choice.runtime, Path(mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path="runtimes"))


def assert_host_choice(serving: dict) -> None:
    """A service's ``/metadata`` ``serving``: the runtime timed fastest on this CPU among torch and those the registry
    found accurate (each runtime's verdict shown), or torch where none beat it by 5 %; not overridden."""
    verdicts, timings = serving["registry_verdicts"], serving["host_timings"]
    assert not serving["overridden"] and serving["reason"] in ("fastest here", "no faster runtime"), serving
    assert "torch" in timings["seconds"] and set(timings["seconds"]) <= {r for r, v in verdicts.items() if v["accurate"]}
    fastest = min(timings["seconds"], key=timings["seconds"].get)
    expected = fastest if timings["speedups"][fastest] >= 1.05 else "torch"
    assert serving["runtime"] == expected, serving
    assert serving["host"]["key"] and serving["cpu"] and serving["precision"]


def assert_runtimes_recorded(client, version, configured: list[str]) -> list[dict]:
    """The version carries the runtime checks of every ``configured`` runtime against torch fp32, the chosen runtime
    is torch or the fastest that passed, and the exported graphs and the checks lie in its run's ``runtimes/``."""
    import json

    checks = json.loads(version.tags["runtime_checks"])
    by_runtime = {c["runtime"]: c for c in checks}
    assert set(by_runtime) == {"torch", *configured}, by_runtime
    assert by_runtime["torch"]["passed"] and by_runtime["torch"]["speedup"] == 1.0
    for check in checks:
        assert check["passed"] == (check["seconds"] is not None and abs(check["change"]) <= check["tolerance"] + 1e-9), check
    passed = [c for c in checks if c["passed"] and c["runtime"] != "torch" and c["speedup"] >= 1.05]
    expected = min(passed, key=lambda c: c["seconds"])["runtime"] if passed else "torch"
    assert version.tags["runtime"] == expected, (version.tags["runtime"], checks)
    files = {Path(a.path).name for a in client.list_artifacts(version.run_id, "runtimes")}
    assert {"checks.json", "model.onnx", "model.int8.onnx", "openvino_static_shapes.json"} <= files, files
    return checks
