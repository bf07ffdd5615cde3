"""BentoML service: mitochondria segmentation of an uploaded EM image (PNG/TIFF) or TIFF stack.

``POST /segment`` (multipart field ``image``) answers with the mask in the format sent (PNG or TIFF,
0/255 uint8) and the foreground fraction in the ``X-Foreground-Fraction`` header; ``POST /segment_stats``
answers JSON only; ``POST /metadata`` tells which model answers, where it came from and the inference settings
it applies (those its registered test metrics were measured with). Bad uploads get a 4xx naming the problem.
"""

from __future__ import annotations

from pathlib import Path

import bentoml
import numpy as np

from bento.common import decode_upload, max_pixels, model_metadata
from cellops.io import encode_image
from cellops.telemetry import disable_telemetry

disable_telemetry()


@bentoml.service(name="cellops-unet", traffic={"timeout": 600})
class UNetSegmenter:
    bento_model = bentoml.models.BentoModel("cellops-unet:latest")

    def __init__(self) -> None:
        import mlflow.pytorch
        import torch

        from cellops.unet.predict import InferenceSettings, load_for_inference

        torch.set_grad_enabled(False)
        self.info = model_metadata(self.bento_model)
        self.settings = InferenceSettings.from_dict(self.info["inference_settings"])
        self.max_pixels = max_pixels(self.info["service_limits"])
        self.model = load_for_inference(
            mlflow.pytorch.load_model(self.bento_model.path_of("mlflow_model"), map_location="cpu"))

    def _segment(self, data: bytes) -> tuple[np.ndarray, str]:
        from cellops.unet.predict import segment

        decoded = decode_upload(data, self.max_pixels)
        return segment(self.model, decoded.array, self.settings).astype(np.uint8) * 255, decoded.format

    @bentoml.api
    def segment(self, image: Path, ctx: bentoml.Context) -> Path:
        """Mask of an uploaded 2-D image or 3-D stack, in the format sent; fraction in a header."""
        mask, fmt = self._segment(Path(image).read_bytes())
        ctx.response.headers["X-Foreground-Fraction"] = f"{float((mask > 0).mean()):.6f}"
        ctx.response.headers["X-Model-Version"] = str(self.info.get("model_version", "unknown"))
        out = Path(ctx.temp_dir) / ("mask.png" if fmt == "png" else "mask.tif")  # removed after the response
        out.write_bytes(encode_image(mask, fmt))
        return out

    @bentoml.api
    def segment_stats(self, image: Path) -> dict:
        """Foreground fraction (whole upload and per slice) without sending the mask back."""
        mask, _ = self._segment(Path(image).read_bytes())
        per_slice = (mask > 0).reshape(-1, *mask.shape[-2:]).mean(axis=(1, 2))
        return {
            "shape": list(mask.shape),
            "foreground_fraction": float((mask > 0).mean()),
            "slice_foreground_fraction": [round(float(v), 6) for v in per_slice],
            "model_version": self.info.get("model_version"),
        }

    @bentoml.api
    def metadata(self) -> dict:
        """Model version, MLflow run, ZenML run, data version, git commit, metrics and inference settings."""
        return self.info
