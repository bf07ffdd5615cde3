"""A bento built by hand, offline, as the README says: `bentoml build` of the classical service (it needs no
model), and the generated Dockerfile and requirements install the versions of requirements.lock."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from helpers import built_bento, check_bento_environment, run_command

ROOT = Path(__file__).resolve().parents[2]


def test_the_classical_bento_builds_by_hand_and_pins_the_locked_versions(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = run_command(["bentoml", "build", "-f", "bento/classical/bentofile.yaml", "."], ROOT, env)
    assert "cellops-classical" in result.stdout + result.stderr
    bento = built_bento(tmp_path / "bentoml", "cellops-classical")
    pins = check_bento_environment(bento, ROOT / "requirements.lock")
    assert {"numpy", "opencv-python-headless", "python-multipart", "bentoml"} <= {p.split("==")[0] for p in pins}
    assert (bento / "src/bento/classical/service.py").is_file() and (bento / "src/configs/colonies.yaml").is_file()
