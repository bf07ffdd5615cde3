"""The endothelial-cell classifier: class folders, an efficient custom CNN against DenseNet and ResNet, class
activation maps.

The family's public API (the contract every family meets: ``docs/adding-a-family.md``). Names are imported
on first use, so that importing one module (as a service imports ``predict``) loads no other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cellops.lazy import lazy_api

#: The family's modules, those a service needs first.
MODULES = ("specs", "predict", "runtime", "data", "train", "validation")
__all__ = ["ClassifierModelSpec", "parse_models", "initial_weights", "ClassifierTraining", "ClassifierServing",
           "list_class_folders", "index_class_folder", "stratified_split", "SplitSettings", "Augmentation",
           "build_augmentation", "load_class_images", "to_model_input", "ClassificationExpectations",
           "summarise_class_images", "validate_classification_dataset", "ClassifierHistory",
           "predict_probabilities", "train_one_epoch", "evaluate", "fit", "explain", "cam_overlay",
           "classify_files", "classify_image_to_files", "export_classifier", "runtime_classifier", "runtime_checks"]

__getattr__ = lazy_api(__name__, MODULES, __all__)


if TYPE_CHECKING:  # what readers, IDEs and the API reference see
    from cellops.classifier.specs import (
        ClassifierModelSpec,
        parse_models,
        initial_weights,
        ClassifierTraining,
        ClassifierServing,
    )
    from cellops.classifier.data import (
        list_class_folders,
        index_class_folder,
        stratified_split,
        SplitSettings,
        Augmentation,
        build_augmentation,
        load_class_images,
        to_model_input,
    )
    from cellops.classifier.validation import (
        ClassificationExpectations,
        summarise_class_images,
        validate_classification_dataset,
    )
    from cellops.classifier.train import ClassifierHistory, predict_probabilities, train_one_epoch, evaluate, fit
    from cellops.classifier.predict import explain, cam_overlay, classify_files, classify_image_to_files
    from cellops.classifier.runtime import export_classifier, runtime_classifier, runtime_checks
