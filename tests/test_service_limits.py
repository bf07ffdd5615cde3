"""Request limits of every service: the environment can tighten the limits a service was built with, never loosen
them; an empty value is ignored and a value that is not a positive whole number stops the service as it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bento.common import MAX_BYTES_ENV, MAX_PIXELS_ENV, env_limit, max_pixels, max_request_bytes

ROOT = Path(__file__).resolve().parents[1]


def test_the_environment_only_tightens_the_stored_limits(monkeypatch):
    limits = {"max_pixels": 1000, "max_request_bytes": 5000}
    monkeypatch.setenv(MAX_PIXELS_ENV, "10000000")
    monkeypatch.setenv(MAX_BYTES_ENV, "10000000")
    assert (max_pixels(limits), max_request_bytes(limits)) == (1000, 5000)  # above the stored limit: no effect
    monkeypatch.setenv(MAX_PIXELS_ENV, "10")
    monkeypatch.setenv(MAX_BYTES_ENV, " 20 ")
    assert (max_pixels(limits), max_request_bytes(limits)) == (10, 20)
    monkeypatch.setenv(MAX_PIXELS_ENV, "")
    monkeypatch.setenv(MAX_BYTES_ENV, "")
    assert (max_pixels(limits), max_request_bytes(limits)) == (1000, 5000)  # empty: ignored
    monkeypatch.delenv(MAX_BYTES_ENV)
    assert max_request_bytes({}) == 64 * 2**20  # the default when the bento stored none


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5", "1e6"])
def test_a_limit_that_is_not_a_positive_whole_number_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("CELLOPS_SOME_LIMIT", value)
    with pytest.raises(ValueError, match=f"CELLOPS_SOME_LIMIT='{value}' is not a positive whole number"):
        env_limit(100, "CELLOPS_SOME_LIMIT")


def _classical_limits(**env: str) -> subprocess.CompletedProcess:
    """Import the classical service (as ``bentoml serve`` does when it starts) with ``env`` and print its limits."""
    code = "import json; from bento.classical.service import LIMITS; print(json.dumps(LIMITS))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_the_classical_service_follows_the_same_rule():
    loosened = _classical_limits(**{MAX_PIXELS_ENV: str(10**12), MAX_BYTES_ENV: ""})
    assert loosened.returncode == 0, loosened.stderr[-3000:]
    limits = json.loads(loosened.stdout.strip().splitlines()[-1])
    assert limits["max_pixels"] == 25_000_000 and limits["max_request_bytes"] == 256 * 2**20
    tightened = _classical_limits(**{MAX_PIXELS_ENV: "1000", MAX_BYTES_ENV: "2000"})
    assert tightened.returncode == 0, tightened.stderr[-3000:]
    limits = json.loads(tightened.stdout.strip().splitlines()[-1])
    assert limits["max_pixels"] == 1000 and limits["max_request_bytes"] == 2000
    refused = _classical_limits(**{MAX_BYTES_ENV: "lots"})
    assert refused.returncode != 0 and f"{MAX_BYTES_ENV}='lots' is not a positive whole number" in refused.stderr
