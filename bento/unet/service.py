"""BentoML services: mitochondria segmentation of an uploaded EM image (PNG/TIFF) or TIFF stack.

One service process: ``UNetSegmenter`` checks and decodes uploads, cuts them into tiles and blends the answers
with the same :func:`cellops.unet.predict.segment` the metrics were measured with, so a bad file is answered with a
4xx naming it and never fails other clients' batch; the network (:class:`UNetNetwork`) runs on one thread of the
same process, which merges the tile chunks of concurrent requests into one forward pass up to the registered batch
size (:class:`bento.batching.Batcher`; ``CELLOPS_BATCHING=off``: one chunk per pass). A separate model service cost
an HTTP hop and the pickling of every tile batch both ways, on the same two cores as the forward pass.

``POST /segment`` (multipart field ``image``) answers with the mask in the format sent (PNG or TIFF, 0/255
uint8) and the foreground fraction in the ``X-Foreground-Fraction`` header; ``POST /segment_stats`` answers
JSON only. Both take the optional form field ``uncertainty`` (``true``; default ``false``): the same mask, and how
sure the model is of it from its agreement under eight flips and quarter turns
(:func:`cellops.unet.predict.segment_with_uncertainty`; eight times the tiles): in the ``X-Uncertainty`` header, or
as ``uncertainty`` (image score, method) in the JSON; ``POST /metadata`` tells which model answers, where it
came from and the inference settings it applies (those its registered test metrics were measured with). ``GET /card``: the
served version's model card (HTML; markdown with ``?format=md``). Bad requests get a 4xx naming the problem.

Every answer says whether the upload is like the model's training images (:mod:`bento.ood`), from the
probabilities it was segmented from: ``X-OOD-Score``, ``X-OOD-Threshold`` and ``X-In-Distribution`` headers of
``/segment``, ``ood`` in ``/segment_stats``' JSON; under the ``refuse`` policy an out-of-distribution upload is
answered 422 naming its score and the threshold.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import bentoml
import numpy as np
import torch

from bento.batching import Batcher
from bento.common import PayloadTooLarge, Upload, guard, max_pixels, read_upload, serve_card
from bento.ood import OODMonitor, verdict_json
from bento.runtime import load_serving_runtime, served_model_metadata
from cellops.io import encode_image
from cellops.ood import verdict_and_features
from cellops.telemetry import disable_telemetry

disable_telemetry()

BENTO_MODEL = "cellops-unet:latest"


class UNetNetwork:
    """The network: foreground logits of tiles (N, 1, T, T), float32 in [0, 1], whatever runtime runs it."""

    def __init__(self, bento_model) -> None:
        import mlflow.pytorch

        from cellops.runtimes import load_runtime
        from cellops.unet.predict import load_for_inference

        torch.set_grad_enabled(False)
        fast = load_for_inference(mlflow.pytorch.load_model(bento_model.path_of("mlflow_model"), map_location="cpu"))
        # The runtime the registry chose (the fastest that kept the test IoU), or CELLOPS_RUNTIME's.
        self.model = load_serving_runtime(bento_model, lambda runtime, folder: load_runtime(runtime, folder, fast))

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32))
            return self.model(batch.contiguous(memory_format=torch.channels_last)).float().numpy()


class RequestCancelled(RuntimeError):
    """Raised in the worker thread of a request whose client has gone."""


class _BatchedNetwork(torch.nn.Module):
    """Stands in for the U-Net inside :func:`cellops.unet.predict.segment`, which runs in a worker thread: each
    forward pass goes to the batcher, where concurrent requests' tiles meet."""

    def __init__(self, batcher: Batcher, cancelled: threading.Event) -> None:
        super().__init__()
        self.batcher, self.cancelled = batcher, cancelled

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.cancelled.is_set():  # the request was cancelled (its client left): stop at the next tile batch
            raise RequestCancelled("request cancelled")
        return torch.from_numpy(self.batcher(np.ascontiguousarray(batch.cpu().numpy(), dtype=np.float32)))


@bentoml.service(name="cellops-unet", traffic={"timeout": 600, "max_concurrency": 64})
class UNetSegmenter:
    bento_model = bentoml.models.BentoModel(BENTO_MODEL)

    def __init__(self) -> None:
        from cellops.unet.ood import FEATURE_NAMES
        from cellops.unet.specs import UNetServing

        self.settings = UNetServing.from_dict(dict(self.bento_model.info.metadata)["inference_settings"])
        # One thread runs the network. A request's tiles come in chunks of the registered batch size (8) and a
        # remainder; a pass merges concurrent requests' chunks up to that size, not beyond: a tile costs no less in
        # a larger batch (OpenVINO bf16 on 2 cores: 1.35 ms a tile at 8, 1.4-1.9 ms at 16-64), and a runtime
        # compiled per input shape (OpenVINO, static shapes) keeps 8 shapes, which sizes 1-8 fit.
        # CELLOPS_BATCHING=off: one chunk per pass.
        self.tiles = Batcher(UNetNetwork(self.bento_model), max_batch_size=self.settings.batch_size,
                             service="cellops-unet", api="predict_tiles")
        self.info = served_model_metadata(self.bento_model)  # after the network: its runtime is chosen by now
        self.info["batching"] = {"enabled": self.tiles.enabled, "max_batch_tiles": self.settings.batch_size}
        limits = self.info["service_limits"]
        self.max_pixels = max_pixels(limits)
        self.max_tiles = int(limits.get("max_tiles", 4096))
        self.ood = OODMonitor(self.bento_model, "cellops-unet", "unet", FEATURE_NAMES)
        self.info["ood"] = self.ood.describe()

    def _decode(self, data: bytes, uncertainty: bool = False):
        from cellops.inference import tile_count

        decoded = read_upload(data, self.max_pixels, "image or stack", normalization=self.settings.normalization)
        tiles = tile_count(decoded.array.shape, self.settings.tile_size, self.settings.tile_overlap)
        tiles *= 8 if uncertainty else 4 if self.settings.flip_averaging else 1  # views per tile
        if tiles > self.max_tiles:
            # Pixels alone do not bound the work: every slice costs at least one whole tile.
            raise PayloadTooLarge(f"image of shape {decoded.array.shape} needs {tiles} tiles of "
                                  f"{self.settings.tile_size} px; the limit is {self.max_tiles}")
        return decoded

    async def _segment(self, data: bytes, endpoint: str, uncertainty: bool = False):
        """The 0/255 mask of an upload, its format, its uncertainty (when asked) and its OOD verdict (observed;
        under ``refuse``, 422 for an out-of-distribution upload)."""
        decoded = await asyncio.to_thread(self._decode, data, uncertainty)
        cancelled = threading.Event()
        remote = _BatchedNetwork(self.tiles, cancelled)
        try:
            mask, measured, verdict = await asyncio.to_thread(self._predict, remote, decoded.array, uncertainty,
                                                              data, endpoint)
        except asyncio.CancelledError:
            cancelled.set()  # the worker thread stops before its next tile batch
            raise
        self.ood.enforce(verdict)
        return mask.astype(np.uint8) * 255, decoded.format, measured, verdict

    def _predict(self, remote, image: np.ndarray, uncertainty: bool, data: bytes, endpoint: str):
        """In a worker thread: the mask (what :func:`cellops.unet.predict.segment` returns, or
        :func:`~cellops.unet.predict.segment_with_uncertainty`'s with its uncertainty) and the verdict of the
        probabilities it was thresholded from."""
        from cellops.unet.ood import image_features
        from cellops.unet.predict import predict_probabilities, probabilities_with_uncertainty

        measured = None
        bounds = self.settings.normalization.bounds(image)  # once, for the prediction and the verdict
        if uncertainty:
            probabilities, measured = probabilities_with_uncertainty(remote, image, self.settings, bounds=bounds)
        else:
            probabilities = predict_probabilities(remote, image, self.settings, bounds=bounds)
        unit = self.settings.normalization.apply(image, bounds=bounds)
        verdict, features = verdict_and_features(
            self.ood.reference, unit, lambda: image_features(unit, probabilities, self.settings.threshold))
        self.ood.observe(verdict, features, endpoint, data)
        return probabilities >= self.settings.threshold, measured, verdict

    @bentoml.api
    async def segment(self, image: Path, ctx: bentoml.Context, uncertainty: bool = False) -> Path:
        """Mask of an uploaded 2-D image or 3-D stack, in the format sent; fraction (and, when asked, the
        uncertainty) in headers."""
        mask, fmt, measured, verdict = await self._segment(Path(image).read_bytes(), "segment", uncertainty)
        ctx.response.headers.update(verdict.headers())
        if measured is not None:
            ctx.response.headers["X-Uncertainty"] = f"{measured.image:.6f}"
            ctx.response.headers["X-Uncertainty-Method"] = measured.method
        ctx.response.headers["X-Foreground-Fraction"] = f"{float((mask > 0).mean()):.6f}"
        ctx.response.headers["X-Model-Version"] = str(self.info.get("model_version", "unknown"))
        ctx.response.headers["X-Normalization"] = self.settings.normalization.describe()
        out = Path(ctx.temp_dir) / ("mask.png" if fmt == "png" else "mask.tif")  # removed after the response
        out.write_bytes(encode_image(mask, fmt))
        return out

    @bentoml.api
    async def segment_stats(self, image: Path, uncertainty: bool = False) -> dict:
        """Foreground fraction (whole upload and per slice) without sending the mask back; with ``uncertainty``
        also how sure the model is (``uncertainty``: image score and method); ``ood``: the OOD verdict."""
        mask, _, measured, verdict = await self._segment(Path(image).read_bytes(), "segment_stats", uncertainty)
        per_slice = (mask > 0).reshape(-1, *mask.shape[-2:]).mean(axis=(1, 2))
        extra = {} if measured is None else {"uncertainty": measured.as_dict()}
        return {
            "shape": list(mask.shape),
            "foreground_fraction": float((mask > 0).mean()),
            "slice_foreground_fraction": [round(float(v), 6) for v in per_slice],
            "model_version": self.info.get("model_version"),
            "normalization": self.settings.normalization.describe(),
            "ood": verdict_json(verdict),
            **extra,
        }

    @bentoml.api
    def metadata(self) -> dict:
        """Model version, MLflow run, ZenML run, data version, git commit, metrics and inference settings."""
        return self.info


serve_card(UNetSegmenter, UNetSegmenter.inner.bento_model)  # GET /card: the served version's model card
guard(UNetSegmenter, {"/segment": Upload("image", options=("uncertainty",)),
                      "/segment_stats": Upload("image", options=("uncertainty",))},
      UNetSegmenter.inner.bento_model)
