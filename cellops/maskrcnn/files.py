"""Mask R-CNN over image files: one file's instances written as a label image, a table and an overlay, with the
image's out-of-distribution verdict (a batch predictor of :func:`cellops.batch.run_batch`). Above both
:mod:`cellops.maskrcnn.predict` and :mod:`cellops.maskrcnn.ood`, as :mod:`cellops.unet.streaming` is for the U-Net."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cellops.maskrcnn.data import network_picture
from cellops.maskrcnn.predict import (as_picture, instance_table, label_image, overlay, predict_picture,
                                      predict_with_uncertainty)
from cellops.maskrcnn.specs import MaskRCNNServing

if TYPE_CHECKING:
    from cellops.io import FileReading
    from cellops.ood import OODReference


def segment_image_to_files(model: torch.nn.Module, path: str | Path, out_dir: str | Path, stem: str,
                           settings: MaskRCNNServing, *, reading: FileReading | None = None,
                           uncertainty: bool = False, reference: OODReference | None = None,
                           policy: str = "flag") -> dict:
    """Segment one image file into ``<stem>_labels.tif`` (16-bit label image, OME-TIFF with the input's pixel size),
    ``<stem>_instances.csv`` (label, category, score, area, box, centroid; areas and lengths also in µm when the pixel
    size is known) and ``<stem>_overlay.png`` under ``out_dir``, tiled when larger than the training images. Returns
    the outputs, the instance count and the image's out-of-distribution verdict (a batch predictor:
    :func:`cellops.batch.run_batch`); an image that cannot be used raises :class:`cellops.io.ImageInputError` naming
    the file.

    Parameters
    ----------
    model : torch.nn.Module
        A torchvision Mask R-CNN in eval mode.
    path : str or Path
        The image file (any format :func:`cellops.microscopy.open_image` reads).
    out_dir : str or Path
        Folder of the outputs.
    stem : str
        Prefix of the output names.
    settings : MaskRCNNServing
        How the model is applied, as served.
    reading : FileReading, optional
        The channel and scene to read from a multi-channel or multi-scene file.
    uncertainty : bool, optional
        Predict with :func:`predict_with_uncertainty` (eight predictions): the table gets an ``uncertainty``
        column, the answer the image's ``uncertainty`` and ``uncertainty_method``.
    reference : OODReference, optional
        The model version's OOD reference (None: it has none, and the verdict says so); the verdict
        (:func:`cellops.maskrcnn.ood.verdict_for`) comes from the picture and the detections of the one pass.
    policy : str, optional
        ``flag`` (answer and flag) or ``refuse``: an image out of distribution raises
        :class:`cellops.ood.OutOfDistribution` (a ValueError) before anything is written.

    Returns
    -------
    dict
        ``outputs`` (the file names written), ``instances`` (their count), ``normalization`` (its description) and
        ``pixel_size_um`` (None when the file states none); with ``uncertainty`` also ``uncertainty`` and
        ``uncertainty_method``; then ``ood_score``, ``ood_threshold``, ``in_distribution`` and ``ood_reason``.
    """
    from cellops.io import FileReading, check_pixels
    from cellops.maskrcnn.ood import verdict_for
    from cellops.microscopy import write_ome_tiff
    from cellops.ood import check_policy, enforce
    from cellops.plots import save_png
    from cellops.units import with_physical_sizes

    check_policy(policy)
    out_dir = Path(out_dir)
    opened = (reading or FileReading()).open(path, "Mask R-CNN")
    image = as_picture(opened.data, source=str(path))
    check_pixels(np.moveaxis(image, -1, 0) if image.ndim == 3 else image, source=str(path), allowed_ndim=(image.ndim,),
                 unit_floats=False)  # the model takes floats of any range: its normalisation scales them
    pixel_size = opened.yx_pixel_size_um
    measured = None
    picture = network_picture(image, settings.normalization, source=str(path))
    if uncertainty:
        instances, measured = predict_with_uncertainty(model, image, settings)
    else:
        instances = predict_picture(model, picture, settings)
    verdict = enforce(verdict_for(reference, picture, instances), policy)
    write_ome_tiff(out_dir / f"{stem}_labels.tif", label_image(instances, image.shape[:2]), axes="YX",
                   pixel_size_um=pixel_size, overwrite=True)
    table = with_physical_sizes(instance_table(instances, settings.categories), pixel_size)
    if measured is not None:
        table["uncertainty"] = np.round(np.asarray(measured.per_object, dtype=float), 4)
    table.to_csv(out_dir / f"{stem}_instances.csv", index=False)
    save_png(overlay(image, instances, settings.categories), out_dir / f"{stem}_overlay.png")
    result = {"outputs": [f"{stem}_labels.tif", f"{stem}_instances.csv", f"{stem}_overlay.png"],
              "instances": len(instances), "normalization": settings.normalization.describe(),
              "pixel_size_um": pixel_size}
    if measured is not None:
        result.update({"uncertainty": round(measured.image, 6), "uncertainty_method": measured.method})
    return {**result, **verdict.as_dict()}
