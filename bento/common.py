"""What every cellops service shares: upload decoding with limits (bad input -> 4xx naming the problem) and the
metadata a service reports about the model it serves."""

from __future__ import annotations

import os
from http import HTTPStatus

import bentoml
from bentoml.exceptions import BentoMLException, InvalidArgument

from cellops.io import DecodedImage, ImageInputError, ImageTooLargeError, decode_image, decode_picture

#: Environment variable with which an operator tightens a service's pixel limit without rebuilding the bento.
MAX_PIXELS_ENV = "CELLOPS_MAX_PIXELS"


class PayloadTooLarge(BentoMLException):
    """413: the upload has more pixels than the service accepts."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


def max_pixels(limits: dict) -> int:
    """The pixel limit stored with the bento model, tightened (never loosened) by ``CELLOPS_MAX_PIXELS``."""
    limit = int(limits["max_pixels"])
    if os.environ.get(MAX_PIXELS_ENV):
        limit = min(limit, int(os.environ[MAX_PIXELS_ENV]))
    return limit


def decode_upload(data: bytes, limit: int, allowed_ndim: tuple[int, ...] = (2, 3)) -> DecodedImage:
    """Decode an uploaded PNG/TIFF, answering 413 for too many pixels and 400 for anything else unusable."""
    try:
        return decode_image(data, max_pixels=limit, allowed_ndim=allowed_ndim)
    except ImageTooLargeError as error:
        raise PayloadTooLarge(str(error)) from error
    except ImageInputError as error:
        raise InvalidArgument(str(error)) from error


def decode_picture_upload(data: bytes, limit: int, name: str) -> "np.ndarray":
    """Decode one uploaded picture (PNG, TIFF or JPEG; grey or colour) as stored: 413 for too many pixels, 400
    naming ``name`` and the problem for anything else unusable."""
    try:
        return decode_picture(data, max_pixels=limit)
    except ImageTooLargeError as error:
        raise PayloadTooLarge(f"{name}: {error}") from error
    except ImageInputError as error:
        raise InvalidArgument(f"{name}: {error}") from error


def model_metadata(bento_model: bentoml.Model) -> dict:
    """The served model's registry record (model version, run ids, lineage, metrics and the inference settings
    they were measured with) as the deployment stored it, plus the BentoML model tag."""
    return {"bento_model": str(bento_model.tag), **dict(bento_model.info.metadata)}
