"""BentoML service: mitochondria segmentation of an uploaded EM image (PNG/TIFF) or TIFF stack.

``POST /segment`` (multipart field ``image``) answers with the mask in the format sent (PNG or TIFF,
0/255 uint8) and the foreground fraction in the ``X-Foreground-Fraction`` header; ``POST /segment_stats``
answers JSON only; ``POST /metadata`` tells which model answers and where it came from. Bad uploads get
a 4xx naming the problem.
"""

from __future__ import annotations

import os
import tempfile
from http import HTTPStatus
from pathlib import Path

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument

from cellops.io import ImageInputError, ImageTooLargeError, decode_image, encode_image, to_unit_range
from cellops.telemetry import disable_telemetry

disable_telemetry()

DEFAULTS = {"tile_size": 128, "tile_overlap": 0.25, "batch_size": 8, "threshold": 0.5, "max_pixels": 50_000_000}


class PayloadTooLarge(BentoMLException):
    """413: the upload has more pixels than the service accepts."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


@bentoml.service(name="cellops-unet", traffic={"timeout": 600})
class UNetSegmenter:
    bento_model = bentoml.models.BentoModel("cellops-unet:latest")

    def __init__(self) -> None:
        import mlflow.pytorch
        import torch

        torch.set_grad_enabled(False)
        from cellops.inference import prepare_for_inference

        model = mlflow.pytorch.load_model(self.bento_model.path_of("mlflow_model"), map_location="cpu")
        self.model = prepare_for_inference(model)
        self.info = dict(self.bento_model.info.metadata)
        self.settings = {**DEFAULTS, **self.info.get("service_settings", {})}
        if "CELLOPS_MAX_PIXELS" in os.environ:  # operators may tighten the limit without a rebuild
            self.settings["max_pixels"] = int(os.environ["CELLOPS_MAX_PIXELS"])

    def _predict(self, data: bytes) -> tuple[np.ndarray, str]:
        from cellops.inference import sliding_window_predict

        try:
            decoded = decode_image(data, max_pixels=int(self.settings["max_pixels"]))
            image = to_unit_range(decoded.array)
        except ImageTooLargeError as error:
            raise PayloadTooLarge(str(error)) from error
        except ImageInputError as error:
            raise InvalidArgument(str(error)) from error
        probabilities = sliding_window_predict(
            self.model,
            image,
            tile_size=int(self.settings["tile_size"]),
            overlap=float(self.settings["tile_overlap"]),
            batch_size=int(self.settings["batch_size"]),
        )
        mask = (probabilities > float(self.settings["threshold"])).astype(np.uint8) * 255
        return mask, decoded.format

    @bentoml.api
    def segment(self, image: Path, ctx: bentoml.Context) -> Path:
        """Mask of an uploaded 2-D image or 3-D stack, in the format sent; fraction in a header."""
        mask, fmt = self._predict(Path(image).read_bytes())
        ctx.response.headers["X-Foreground-Fraction"] = f"{float((mask > 0).mean()):.6f}"
        ctx.response.headers["X-Model-Version"] = str(self.info.get("model_version", "unknown"))
        out = Path(tempfile.mkdtemp()) / ("mask.png" if fmt == "png" else "mask.tif")
        out.write_bytes(encode_image(mask, fmt))
        return out

    @bentoml.api
    def segment_stats(self, image: Path) -> dict:
        """Foreground fraction (whole upload and per slice) without sending the mask back."""
        mask, _ = self._predict(Path(image).read_bytes())
        per_slice = (mask > 0).reshape(-1, *mask.shape[-2:]).mean(axis=(1, 2))
        return {
            "shape": list(mask.shape),
            "foreground_fraction": float((mask > 0).mean()),
            "slice_foreground_fraction": [round(float(v), 6) for v in per_slice],
            "model_version": self.info.get("model_version"),
        }

    @bentoml.api
    def metadata(self) -> dict:
        """Model version, MLflow run, ZenML run, data version and git commit of the served model."""
        keys = ("registered_model", "model_version", "alias", "mlflow_run_id", "zenml_run_id", "data_version",
                "git_commit", "metrics")
        return {"bento_model": str(self.bento_model.tag), **{k: self.info.get(k) for k in keys}}
