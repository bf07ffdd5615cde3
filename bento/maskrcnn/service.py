"""BentoML service: the champion Mask R-CNN (hiPSC colonies by default; any registered Mask R-CNN).

``POST /segment`` (multipart field ``image``): every instance as JSON (mask as COCO RLE, box, score, area,
centroid, category), tiled when the image is larger than the training images; with the optional form field
``uncertainty`` (``true``; default ``false``) also how sure the model is of each instance and of the image, from
its agreement under eight flips and quarter turns (:func:`cellops.maskrcnn.predict.predict_with_uncertainty`;
eight predictions instead of one); ``POST /overlay`` (``image``): the
image with each instance's outline, box and score drawn, as a PNG (instance count in ``X-Instances``);
``POST /metadata``: which model answers, its lineage, metrics and prediction settings. ``GET /card``: the
served version's model card (HTML; markdown with ``?format=md``).

Every answer says whether the image is like the model's training images (:mod:`bento.ood`), from the picture the
network saw and what it detected: ``ood`` in ``/segment``'s JSON, ``X-OOD-Score``, ``X-OOD-Threshold`` and
``X-In-Distribution`` headers of ``/overlay``; under the ``refuse`` policy an out-of-distribution image is answered
422 naming its score and the threshold.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import bentoml
import numpy as np

from bento.common import Upload, guard, max_pixels, read_upload, serve_card, upload_errors
from bento.ood import OODMonitor, verdict_json
from bento.runtime import load_serving_runtime, served_model_metadata
from cellops.ood import verdict_and_features
from cellops.telemetry import disable_telemetry

disable_telemetry()

BENTO_MODEL = "cellops-maskrcnn:latest"


@bentoml.service(name="cellops-maskrcnn", traffic={"timeout": 300, "max_concurrency": 32})
class MaskRCNN:
    bento_model = bentoml.models.BentoModel(BENTO_MODEL)

    def __init__(self) -> None:
        import mlflow.pytorch
        import torch

        from cellops.maskrcnn.ood import FEATURE_NAMES
        from cellops.maskrcnn.predict import timing_unit
        from cellops.maskrcnn.runtime import with_runtime
        from cellops.maskrcnn.specs import MaskRCNNServing

        torch.set_grad_enabled(False)
        model = mlflow.pytorch.load_model(self.bento_model.path_of("mlflow_model"), map_location="cpu").eval()
        # The backbone in the runtime the registry chose (the fastest that kept the test AP50), or CELLOPS_RUNTIME's.
        self.settings = MaskRCNNServing.from_dict(dict(self.bento_model.info.metadata)["inference_settings"])
        # One served tile times the runtimes on this CPU.
        self.model = load_serving_runtime(self.bento_model, lambda runtime, folder: with_runtime(model, runtime, folder),
                                          timing_unit(self.settings))
        self.info = served_model_metadata(self.bento_model)
        self.max_pixels = max_pixels(self.info["service_limits"])
        self.lock = threading.Lock()  # one forward pass at a time: the model uses every core already
        self.ood = OODMonitor(self.bento_model, "cellops-maskrcnn", "maskrcnn", FEATURE_NAMES)
        self.info["ood"] = self.ood.describe()

    def _segment(self, data: bytes, endpoint: str, uncertainty: bool = False) -> tuple:
        """In a worker thread: the upload as a picture, its instances (and, when asked, their uncertainty) and
        its OOD verdict (observed), from the network picture the prediction used."""
        from cellops.maskrcnn.data import network_picture
        from cellops.maskrcnn.ood import grey_picture, image_features
        from cellops.maskrcnn.predict import predict_picture, predict_with_uncertainty

        image = self._picture(data)
        with upload_errors("image"):
            picture = network_picture(image, self.settings.normalization, source="image")
        measured = None
        with self.lock:
            if uncertainty:
                instances, measured = predict_with_uncertainty(self.model, image, self.settings)
            else:
                instances = predict_picture(self.model, picture, self.settings)
        verdict, features = verdict_and_features(self.ood.reference, grey_picture(picture),
                                                 lambda: image_features(picture, instances))
        self.ood.observe(verdict, features, endpoint, data)
        return image, instances, measured, verdict

    def _picture(self, data: bytes) -> np.ndarray:
        from cellops.maskrcnn.predict import as_picture

        picture = read_upload(data, self.max_pixels, "picture", normalization=self.settings.normalization,
                              name="image").array
        with upload_errors("image"):
            return as_picture(picture, source="image")

    @bentoml.api
    async def segment(self, image: Path, uncertainty: bool = False) -> dict:
        """Instances of one uploaded image (PNG, TIFF or JPEG; grey or RGB; 8/16-bit), highest score first; with
        ``uncertainty`` each instance's and the image's uncertainty (0 sure to 1 unsure); ``ood``: the OOD verdict."""
        from cellops.maskrcnn.predict import instance_rle

        # Decoding and the forward pass run in a worker thread: other requests (metadata) stay answered.
        picture, instances, measured, verdict = await asyncio.to_thread(self._segment, Path(image).read_bytes(),
                                                                        "segment", uncertainty)
        self.ood.enforce(verdict)
        shape = picture.shape[:2]
        answer = []
        for label, instance in enumerate(instances, start=1):
            ys, xs = np.nonzero(instance.mask)
            extra = {} if measured is None else {"uncertainty": round(measured.per_object[label - 1], 6)}
            answer.append({"label": label, "category": self.settings.category_name(instance.category),
                           "score": round(instance.score, 6), "area": instance.area, "box": list(instance.box),
                           "centroid": [round(float(xs.mean()) + instance.x0, 2), round(float(ys.mean()) + instance.y0, 2)],
                           "mask": instance_rle(instance, shape), **extra})
        extra = {} if measured is None else {"uncertainty": measured.as_dict()}
        return {"height": int(shape[0]), "width": int(shape[1]), "count": len(answer), "instances": answer,
                "score_threshold": self.settings.score_threshold,
                "normalization": self.settings.normalization.describe(),
                "model_version": self.info.get("model_version"), "ood": verdict_json(verdict), **extra}

    @bentoml.api
    async def overlay(self, image: Path, ctx: bentoml.Context) -> Path:
        """The image with every instance drawn, as a PNG."""
        from cellops.maskrcnn.predict import overlay
        from cellops.plots import save_png

        picture, instances, _, verdict = await asyncio.to_thread(self._segment, Path(image).read_bytes(), "overlay")
        self.ood.enforce(verdict)
        ctx.response.headers.update(verdict.headers())
        ctx.response.headers["X-Instances"] = str(len(instances))
        ctx.response.headers["X-Model-Version"] = str(self.info.get("model_version", "unknown"))
        ctx.response.headers["X-Normalization"] = self.settings.normalization.describe()
        return save_png(overlay(picture, instances, self.settings.categories), Path(ctx.temp_dir) / "overlay.png")

    @bentoml.api
    def metadata(self) -> dict:
        """Model version, MLflow run, ZenML run, data version, git commit, metrics and prediction settings."""
        return self.info


serve_card(MaskRCNN, MaskRCNN.inner.bento_model)  # GET /card: the served version's model card
guard(MaskRCNN, {"/segment": Upload("image", options=("uncertainty",)), "/overlay": Upload("image")},
      MaskRCNN.inner.bento_model)
