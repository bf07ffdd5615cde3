"""U-Net mitochondria segmentation of electron-microscopy volumes (EPFL/Lucchi CA1 format).

The family's public API (the contract every family meets: ``docs/adding-a-family.md``). Names are imported
on first use, so that importing one module (as a service imports ``predict``) loads no other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cellops.lazy import lazy_api

#: The family's modules, those a service needs first.
MODULES = ("specs", "predict", "runtime", "data", "train", "validation")
__all__ = ["Architecture", "UNetTraining", "UNetServing", "EMDataset", "load_lucchi", "SliceSplit", "split_slices",
           "training_patches", "SegmentationExpectations", "summarise_volumes", "validate_segmentation_dataset",
           "build_model", "DiceBCELoss", "UNetHistory", "train_one_epoch", "evaluate", "fit",
           "predict_probabilities", "segment", "score", "load_for_inference", "export_unet", "runtime_checks"]

__getattr__ = lazy_api(__name__, MODULES, __all__)


if TYPE_CHECKING:  # what readers, IDEs and the API reference see
    from cellops.unet.specs import Architecture, UNetTraining, UNetServing
    from cellops.unet.data import EMDataset, load_lucchi, SliceSplit, split_slices, training_patches
    from cellops.unet.validation import SegmentationExpectations, summarise_volumes, validate_segmentation_dataset
    from cellops.unet.train import build_model, DiceBCELoss, UNetHistory, train_one_epoch, evaluate, fit
    from cellops.unet.predict import predict_probabilities, segment, score, load_for_inference
    from cellops.unet.runtime import export_unet, runtime_checks
