"""The step that registers every trained Mask R-CNN and promotes the best when it beats the champion."""

from __future__ import annotations

from typing import Annotated

import mlflow
import torch
from torchvision import tv_tensors
from zenml import step
from zenml.logger import get_logger

from cellops.maskrcnn.data import load_instance_samples, subset_coco
from cellops.maskrcnn.specs import instance_test_fingerprint, MaskRCNNServing
from cellops.maskrcnn.train import evaluate
from cellops.model_robustness import perturb
from steps.maskrcnn.data import split_ids
from steps.registry import record_ranked_extras, register_ranked
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
    robustness: dict,
) -> Annotated[dict, "registration"]:
    """Register every trained model (best first) and move ``alias`` to one only if it beats the champion on the
    same test images and annotations; a champion scored on another test set is re-scored on this one. Each
    registered version keeps the run config that trained it and its robustness sweep (``robustness``: the test
    images perturbed each way it lists, as the network receives them, after the served normalisation)."""
    test_set = instance_test_fingerprint(annotations, dataset_index)
    truth = subset_coco(annotations, split_ids(dataset_index, "test"))

    def score_as_served(model, settings: MaskRCNNServing, transform=None) -> dict[str, float]:
        test = load_instance_samples(annotations, dataset_index, "test", settings.normalization)
        if transform is not None:
            test = [(tv_tensors.Image(torch.from_numpy(transform(image.numpy()))), target) for image, target in test]
        return evaluate(model.eval(), test, truth, settings)[0].as_dict()

    def rescore(champion) -> dict[str, float]:
        inference = tags.inference_from_tags(champion.tags) or {}
        ours = {str(c["id"]): c["name"] for c in annotations["categories"]}
        if {str(k): v for k, v in (inference.get("categories") or {}).items()} != ours:  # same names under the same ids, or its labels mean other classes
            raise ValueError(f"the champion's categories {inference.get('categories')} are not this run's {ours}: "
                             "not comparable; register under another name")
        old = mlflow.pytorch.load_model(f"models:/{registered_model_name}/{champion.version}", map_location="cpu")
        return score_as_served(old, MaskRCNNServing.from_dict(inference))  # its own settings: judged as served

    def score_of(evaluation: dict):
        model = mlflow.pytorch.load_model(evaluation["model_uri"], map_location="cpu")
        settings = MaskRCNNServing.from_dict(evaluation["settings"])
        return lambda perturbation, rng: score_as_served(model, settings,
                                                         lambda image: perturb(image, perturbation, rng))

    registration = register_ranked(evaluations, lineage, test_set, rescore,
                                   registered_model_name=registered_model_name, promotion_metric=promotion_metric,
                                   tie_breakers=tie_breakers, alias=alias, min_improvement=min_improvement)
    record_ranked_extras(registration, evaluations, score_of, robustness)
    return registration
