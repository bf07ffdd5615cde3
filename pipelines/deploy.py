"""Every champion (or those named in the config) and the classical analyses, deployed in one run.

Run with ``zenml pipeline run pipelines.deploy.deploy_pipeline -c configs/deploy.yaml``. Each model family's
own deployment config (``configs/<family>_deploy.yaml``: registered model, alias, service limits, bentofile)
is reused as it is, so one family deployed alone or with the others gets the same bento.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from zenml import pipeline

from steps.deployment import build_bento, build_service_bento, import_champion


def _family_steps(config: str) -> tuple[dict, dict]:
    """The ``import_champion`` and ``build_bento`` parameters of a family's deployment config."""
    steps = yaml.safe_load(Path(config).read_text())["steps"]
    return steps["import_champion"]["parameters"], steps["build_bento"]["parameters"]


@pipeline(enable_cache=False)
def deploy_pipeline(families: dict[str, str], classical_bentofile: str | None = None, build_ctx: str = ".") -> None:
    """For each family (name -> its deployment config): champion -> BentoML model store -> bento; then the
    classical analyses' bento (no model) when ``classical_bentofile`` is given."""
    for name, config in families.items():
        champion, bento = _family_steps(config)
        tag = import_champion(**champion, id=f"import_{name}")
        build_bento(tag, **bento, id=f"build_{name}")
    if classical_bentofile:
        build_service_bento(classical_bentofile, build_ctx, id="build_classical")
