"""The step that records the model card of the version a training run registered (tracking.cards) and shows it in
the ZenML dashboard as an HTML artifact; the last step of every training pipeline, so the card holds the runtime
checks and the out-of-distribution reference the steps before it recorded."""

from __future__ import annotations

from typing import Annotated

from mlflow import MlflowClient
from zenml import log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from cellops.model_card import no_card_html
from steps.registry import registered_versions
from tracking.cards import card_artifacts, record_card
from tracking.runs import require_own_store

logger = get_logger(__name__)


@step(enable_cache=False)  # records in the registry: a cache hit would skip it
def record_model_card(registration: dict) -> Annotated[HTMLString, "model_card"]:
    """Generate and keep the card of each version ``registration`` registered (``card/`` in its run's artifacts and
    the ``cellops.card`` tag); returns the first (best) version's card as HTML, or a page saying why there is none.
    The pipelines run it ``after=`` the steps that record the runtime checks and the OOD reference, so the card
    holds them."""
    versions = registered_versions(registration)
    if not versions:
        reason = str(registration.get("reason") or "no version was registered (a duplicate of the champion)")
        logger.info("no model card: %s", reason)
        log_metadata(metadata={"model_card": {"recorded": False, "reason": reason}})
        return HTMLString(no_card_html(str(registration.get("registered_model", "the model")), reason))
    client = MlflowClient(require_own_store())  # no experiment tracker needed: the stack's store, checked
    cards, locations = [], []
    for decision in versions:
        name, version = decision["registered_model"], str(decision["version"])
        cards.append(record_card(client, name, version))
        run_id = client.get_model_version(name, version).run_id
        locations.append({"registered_model": name, "version": version,
                          "artifacts": f"runs:/{run_id}/{card_artifacts(name, version)}"})
        logger.info("%s v%s: model card kept in runs:/%s/%s", name, version, run_id, card_artifacts(name, version))
    log_metadata(metadata={"model_card": {"recorded": True, "versions": locations}})
    return HTMLString(cards[0].html)
