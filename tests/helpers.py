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
