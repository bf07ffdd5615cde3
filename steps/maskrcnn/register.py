"""The step that registers every trained Mask R-CNN and promotes the best when it beats the champion."""

from __future__ import annotations

from typing import Annotated

import mlflow
from zenml import step
from zenml.logger import get_logger

from cellops.maskrcnn.data import load_instance_samples, subset_coco
from cellops.maskrcnn.specs import instance_test_fingerprint, MaskRCNNServing
from cellops.maskrcnn.train import evaluate
from steps.maskrcnn.data import split_ids
from steps.registry import register_ranked
from tracking import tags

logger = get_logger(__name__)


@step(enable_cache=False)  # a side effect: a cache hit would silently skip the registration
def register_maskrcnn(
    evaluations: list[dict],
    annotations: dict,
    dataset_index: dict,
    lineage: dict,
    registered_model_name: str,
    promotion_metric: str,
    tie_breakers: list[str],
    alias: str,
    min_improvement: float,
) -> Annotated[dict, "registration"]:
    """Register every trained model (best first) and move ``alias`` to one only if it beats the champion on the
    same test images and annotations; a champion scored on another test set is re-scored on this one."""
    test_set = instance_test_fingerprint(annotations, dataset_index)
    truth = subset_coco(annotations, split_ids(dataset_index, "test"))

    def rescore(champion) -> dict[str, float]:
        inference = tags.inference_from_tags(champion.tags) or {}
        ours = {str(c["id"]): c["name"] for c in annotations["categories"]}
        if {str(k): v for k, v in (inference.get("categories") or {}).items()} != ours:  # same names under the same ids, or its labels mean other classes
            raise ValueError(f"the champion's categories {inference.get('categories')} are not this run's {ours}: "
                             "not comparable; register under another name")
        old = mlflow.pytorch.load_model(f"models:/{registered_model_name}/{champion.version}", map_location="cpu")
        settings = MaskRCNNServing.from_dict(inference)  # the champion's own: it is judged as it is served
        test = load_instance_samples(annotations, dataset_index, "test", settings.normalization)
        return evaluate(old.eval(), test, truth, settings)[0].as_dict()

    return register_ranked(evaluations, lineage, test_set, rescore, registered_model_name=registered_model_name,
                           promotion_metric=promotion_metric, tie_breakers=tie_breakers, alias=alias,
                           min_improvement=min_improvement)
