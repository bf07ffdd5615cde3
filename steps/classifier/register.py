"""The step that registers every trained classifier and promotes the best when it beats the champion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import mlflow
import numpy as np
from zenml import step
from zenml.logger import get_logger

from cellops.classifier.data import classification_test_fingerprint, load_class_images
from cellops.classifier.metrics import classification_scores
from cellops.classifier.specs import ClassifierServing
from cellops.classifier.train import predict_probabilities
from cellops.model_robustness import perturb_each
from steps.registry import record_ranked_extras, register_ranked
from tracking import tags

logger = get_logger(__name__)


@step(enable_cache=False)  # a side effect: a cache hit would silently skip the registration
def register_classifiers(
    evaluations: list[dict],
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
    same test data; a champion scored on another data version is re-scored on this run's test split. Each
    registered version keeps the run config that trained it and its robustness sweep (``robustness``: the test
    images perturbed each way it lists, as the network receives them, after the served normalisation)."""
    positive_class = evaluations[0]["settings"]["positive_class"]
    test_files = [Path(f) for f, s in zip(dataset_index["files"], dataset_index["splits"]) if s == "test"]
    test_labels = np.asarray(dataset_index["labels"])[np.asarray(dataset_index["splits"]) == "test"]
    # The test set by content and labels: a champion scored on another one (other split, folder or positive
    # class, same DVC version or not) is re-scored before the comparison.
    test_set = classification_test_fingerprint(dataset_index["md5"], [dataset_index["classes"][i] for i in dataset_index["labels"]],
                                    dataset_index["splits"], positive_class)

    def score_as_served(model, settings: ClassifierServing, transform=None) -> dict[str, float]:
        # The model's own input settings: it is judged on these images as it is served.
        prepared, failures = load_class_images(test_files, channels=settings.channels, size=settings.size,
                                             normalization=settings.normalization)
        if failures:
            raise ValueError(f"test images became unreadable: {failures}")
        if transform is not None:
            prepared = np.stack(transform(prepared))
        probabilities = predict_probabilities(model.eval(), prepared, settings.batch_size)
        return classification_scores(probabilities, test_labels, settings.positive,
                                     threshold=settings.decision_threshold).as_dict()

    def rescore(champion) -> dict[str, float]:
        settings = ClassifierServing.from_dict(tags.inference_from_tags(champion.tags))
        if list(settings.classes) != list(dataset_index["classes"]) or settings.positive_class != positive_class:
            raise ValueError(f"the champion classifies {list(settings.classes)} (positive {settings.positive_class!r}), "
                             f"this run {dataset_index['classes']} (positive {positive_class!r}): not comparable; "
                             "register under another name")
        old = mlflow.pytorch.load_model(f"models:/{registered_model_name}/{champion.version}", map_location="cpu")
        return score_as_served(old, settings)

    def score_of(evaluation: dict):
        model = mlflow.pytorch.load_model(evaluation["model_uri"], map_location="cpu")
        settings = ClassifierServing.from_dict(evaluation["settings"])
        return lambda perturbation, rng: score_as_served(model, settings,
                                                         lambda images: perturb_each(images, perturbation, rng))

    registration = register_ranked(evaluations, lineage, test_set, rescore,
                                   registered_model_name=registered_model_name, promotion_metric=promotion_metric,
                                   tie_breakers=tie_breakers, alias=alias, min_improvement=min_improvement)
    record_ranked_extras(registration, evaluations, score_of, robustness)
    return registration
