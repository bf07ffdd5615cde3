"""Mask R-CNN instance segmentation (hiPSC colonies, nuclei): annotations in any format as COCO, transfer
learning, COCO mask AP.

The family's public API (the contract every family meets: ``docs/adding-a-family.md``). Names are imported
on first use, so that importing one module (as a service imports ``predict``) loads no other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cellops.lazy import lazy_api

#: The family's modules, those a service needs first.
MODULES = ("specs", "predict", "files", "runtime", "data", "train", "validation")
__all__ = ["AnnotationSource", "SourceSettings", "MaskRCNNModelSpec", "parse_models", "MaskRCNNTraining",
           "MaskRCNNServing", "ImageSplitSettings", "split_images", "subset_coco", "load_instance_samples",
           "InstanceAugmentation", "build_instance_augmentation", "InstanceDataset", "AnnotationExpectations",
           "summarise_annotations", "validate_annotation_dataset", "MaskRCNNHistory", "warmup_cosine_schedule",
           "train_one_epoch", "evaluate", "fit", "Instance", "predict_image", "predict_picture", "label_image",
           "instance_table", "overlay", "segment_image_to_files", "export_maskrcnn", "with_runtime",
           "runtime_checks"]

__getattr__ = lazy_api(__name__, MODULES, __all__)


if TYPE_CHECKING:  # what readers, IDEs and the API reference see
    from cellops.maskrcnn.specs import (
        AnnotationSource,
        SourceSettings,
        MaskRCNNModelSpec,
        parse_models,
        MaskRCNNTraining,
        MaskRCNNServing,
    )
    from cellops.maskrcnn.data import (
        ImageSplitSettings,
        split_images,
        subset_coco,
        load_instance_samples,
        InstanceAugmentation,
        build_instance_augmentation,
        InstanceDataset,
    )
    from cellops.maskrcnn.validation import AnnotationExpectations, summarise_annotations, validate_annotation_dataset
    from cellops.maskrcnn.train import MaskRCNNHistory, warmup_cosine_schedule, train_one_epoch, evaluate, fit
    from cellops.maskrcnn.predict import (
        Instance,
        predict_image,
        predict_picture,
        label_image,
        instance_table,
        overlay,
    )
    from cellops.maskrcnn.files import segment_image_to_files
    from cellops.maskrcnn.runtime import export_maskrcnn, with_runtime, runtime_checks
