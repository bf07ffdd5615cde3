"""Shared fixtures. Every test that touches ZenML, MLflow or BentoML gets its own temporary state."""

from __future__ import annotations

import os
import tempfile

# Before anything imports ZenML or BentoML: never touch the user's global state, never phone home.
_STATE = tempfile.mkdtemp(prefix="cellops-tests-")
os.environ["ZENML_CONFIG_PATH"] = os.path.join(_STATE, "zenml")
os.environ["BENTOML_HOME"] = os.path.join(_STATE, "bentoml")
from cellops.telemetry import TELEMETRY_OFF  # noqa: E402

os.environ.update(TELEMETRY_OFF)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cellops.synthetic.em import EMVolume, generate_em_volume  # noqa: E402


@pytest.fixture(scope="session")
def small_volume() -> EMVolume:
    """A small synthetic EM volume, drawn once per session."""
    return generate_em_volume((6, 96, 96), seed=3)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
