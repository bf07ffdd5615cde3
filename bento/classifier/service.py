"""BentoML services: the champion classifier of hiPSC-derived endothelial cells.

Two services, as BentoML recommends for adaptive batching: ``ClassifierModel`` holds the network and batches
concurrent requests (``predict`` is batchable); ``Classifier``, the one clients talk to, decodes and checks
uploads first, so that a bad file is answered with a 4xx naming it and never fails other clients' batch.

``POST /classify`` (multipart field ``image``): label and class probabilities; ``POST /classify_batch`` (field
``images``, several files): one answer per file, in order; ``POST /explain`` (``image``): the class-activation
map of the predicted class over the image as a PNG (significant regions red, trivial ones blue), label and
probability in headers. ``/classify`` and ``/classify_batch`` take the optional form field ``uncertainty``
(``true``; default ``false``): each answer then holds ``uncertainty`` (0 sure to 1 unsure: the normalised
predictive entropy of the served probabilities, as :func:`cellops.classifier.predict.uncertainties`; no extra pass,
and it holds on every runtime the registry may serve, which MC dropout would not); ``POST /metadata``: which
model answers, its lineage, metrics and input settings; ``GET /card``: the served version's model card (HTML;
markdown with ``?format=md``).

Every answer says whether the image is like the model's training images (:mod:`bento.ood`), from the model input
and the probabilities of the one pass: ``ood`` in each JSON answer (per image of a batch), ``X-OOD-Score``,
``X-OOD-Threshold`` and ``X-In-Distribution`` headers of ``/explain``; under the ``refuse`` policy an
out-of-distribution image is answered 422 naming its score and the threshold (in a batch: the first such image,
named).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument

from bento.common import (KEEP_CONNECTION, PayloadTooLarge, Upload, guard, max_pixels, read_upload, serve_card,
                          upload_errors)
from bento.ood import OODMonitor, verdict_json
from bento.runtime import load_serving_runtime, served_model_metadata
from cellops.ood import verdict_and_features
from cellops.telemetry import disable_telemetry

disable_telemetry()

BENTO_MODEL = "cellops-classifier:latest"


@bentoml.service(name="cellops-classifier-model", traffic={"timeout": 120},
                  runner_connection=KEEP_CONNECTION)
class ClassifierModel:
    """The network: batched probabilities and class-activation maps of prepared inputs (N, C, S, S)."""

    bento_model = bentoml.models.BentoModel(BENTO_MODEL)

    def __init__(self) -> None:
        import mlflow.pytorch
        import torch

        from cellops.classifier.specs import ClassifierServing
        from cellops.classifier.runtime import runtime_classifier
        from cellops.inference import prepare_for_inference

        torch.set_grad_enabled(False)
        fast = prepare_for_inference(
            mlflow.pytorch.load_model(self.bento_model.path_of("mlflow_model"), map_location="cpu"))
        # The runtime the registry chose (the fastest that kept the test accuracy), or CELLOPS_RUNTIME's.
        self.model = load_serving_runtime(self.bento_model,
                                          lambda runtime, folder: runtime_classifier(runtime, folder, fast))
        # The stored operating point decides the label, and so which class's map is drawn.
        self.settings = ClassifierServing.from_dict(dict(self.bento_model.info.metadata)["inference_settings"])

    # max_latency_ms bounds how long a request may wait for its batch, forward pass included: generous, since a
    # 64-image DenseNet batch takes about a second on 2 CPU cores (a tighter bound answers 503 under load).
    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=64, max_latency_ms=5000)
    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) of a batch; BentoML merges concurrent requests into one batch."""
        from cellops.classifier.train import predict_probabilities

        return predict_probabilities(self.model, inputs.astype(np.float32), batch_size=64)

    @bentoml.api
    def explain(self, inputs: np.ndarray) -> dict:
        """Probabilities and the CAM of the predicted class (at the stored operating point) of each input."""
        from cellops.classifier.predict import explain

        probabilities, cams = explain(self.model, inputs.astype(np.float32), batch_size=64,
                                      decide=self.settings.predicted_classes)
        return {"probabilities": probabilities.tolist(), "cams": cams.astype(np.float32).tolist()}


@bentoml.service(name="cellops-classifier", traffic={"timeout": 120, "max_concurrency": 64})
class Classifier:
    bento_model = bentoml.models.BentoModel(BENTO_MODEL)
    network = bentoml.depends(ClassifierModel)

    def __init__(self) -> None:
        from cellops.classifier.ood import FEATURE_NAMES
        from cellops.classifier.specs import ClassifierServing

        self.info = served_model_metadata(self.bento_model)
        self.settings = ClassifierServing.from_dict(self.info["inference_settings"])
        limits = self.info["service_limits"]
        self.max_pixels = max_pixels(limits)
        self.max_batch_files = int(limits["max_batch_files"])
        self.max_batch_pixels = int(limits["max_batch_pixels"])
        self.ood = OODMonitor(self.bento_model, "cellops-classifier", "classifier", FEATURE_NAMES)
        self.info["ood"] = self.ood.describe()

    def _prepare(self, data: bytes, name: str) -> np.ndarray:
        return self._to_input(self._picture(data, name), name)

    def _picture(self, data: bytes, name: str) -> np.ndarray:
        return read_upload(data, self.max_pixels, "picture", normalization=self.settings.normalization,
                           name=name).array

    def _to_input(self, picture: np.ndarray, name: str) -> np.ndarray:
        from cellops.classifier.data import to_model_input

        with upload_errors(name):
            return to_model_input(picture, channels=self.settings.channels, size=self.settings.size,
                                  normalization=self.settings.normalization, source=name)

    def _verdicts(self, inputs: np.ndarray, probabilities: np.ndarray, uploads: list[bytes], endpoint: str,
                  names: list[str] | None = None) -> list:
        """In a worker thread: the OOD verdict of each model input (C, H, W) from its probabilities, observed;
        under ``refuse``, 422 for the first out-of-distribution image (named by ``names`` in a batch)."""
        from cellops.classifier.ood import grey_input, image_features

        verdicts = []
        for x, p, data in zip(inputs, probabilities, uploads):
            verdict, features = verdict_and_features(self.ood.reference, grey_input(x), lambda: image_features(x, p))
            verdicts.append(self.ood.observe(verdict, features, endpoint, data))
        for i, verdict in enumerate(verdicts):
            self.ood.enforce(verdict, names[i] if names else "")
        return verdicts

    def _answer(self, probabilities: np.ndarray, uncertainty: bool = False) -> dict:
        best = int(self.settings.predicted_classes(np.asarray(probabilities)[None])[0])
        extra = {}
        if uncertainty:
            from cellops.uncertainty import Uncertainty, normalised_entropy

            entropy = float(normalised_entropy(np.asarray(probabilities)[None])[0])
            extra = {"uncertainty": Uncertainty(entropy, "entropy").as_dict()}
        return {"label": self.settings.classes[best],
                "probabilities": {c: round(float(p), 6) for c, p in zip(self.settings.classes, probabilities)},
                "decision_threshold": self.settings.decision_threshold,
                "normalization": self.settings.normalization.describe(),
                "model_version": self.info.get("model_version"), **extra}

    @bentoml.api
    async def classify(self, image: Path, uncertainty: bool = False) -> dict:
        """Label and class probabilities of one uploaded image (PNG, TIFF or JPEG; grey or RGB; 8/16-bit); with
        ``uncertainty`` also how sure the model is; ``ood``: the OOD verdict."""
        # Decoding runs in a worker thread: a large upload must not stall the other requests.
        data = Path(image).read_bytes()
        x = await asyncio.to_thread(self._prepare, data, "image")
        probabilities = np.asarray(await self.network.to_async.predict(x[None]))
        [verdict] = await asyncio.to_thread(self._verdicts, x[None], probabilities, [data], "classify")
        return {**self._answer(probabilities[0], uncertainty), "ood": verdict_json(verdict)}

    @bentoml.api
    async def classify_batch(self, images: list[Path], uncertainty: bool = False) -> list[dict]:
        """One answer per uploaded file, in the order sent; any bad file fails the request, naming it."""
        if not images:
            raise InvalidArgument("no images: send one or more files in the 'images' field")
        if len(images) > self.max_batch_files:
            raise InvalidArgument(f"{len(images)} images in one request; the limit is {self.max_batch_files}")
        paths = [Path(p) for p in images]
        batch, uploads = await asyncio.to_thread(self._prepare_batch, paths)
        probabilities = np.asarray(await self.network.to_async.predict(batch))
        names = [f"images[{i}] ({path.name})" for i, path in enumerate(paths)]
        verdicts = await asyncio.to_thread(self._verdicts, batch, probabilities, uploads, "classify_batch", names)
        return [{**self._answer(p, uncertainty), "ood": verdict_json(v)} for p, v in zip(probabilities, verdicts)]

    def _prepare_batch(self, paths: list[Path]) -> tuple[np.ndarray, list[bytes]]:
        """The model inputs of the uploaded files, stacked, and the uploads as sent."""
        pictures, uploads, total = [], [], 0
        for i, path in enumerate(paths):
            name = f"images[{i}] ({path.name})"
            uploads.append(path.read_bytes())
            picture = self._picture(uploads[-1], name)
            total += int(np.prod(picture.shape[:2]))
            if total > self.max_batch_pixels:
                raise PayloadTooLarge(f"the images up to {name} hold {total} pixels; a request may hold "
                                      f"{self.max_batch_pixels}")
            pictures.append(self._to_input(picture, name))
        return np.stack(pictures), uploads

    @bentoml.api
    async def explain(self, image: Path, ctx: bentoml.Context) -> Path:
        """The CAM overlay PNG of the predicted class; label and probability in X-Label / X-Probability."""
        from cellops.classifier.predict import cam_overlay

        data = Path(image).read_bytes()
        x = await asyncio.to_thread(self._prepare, data, "image")
        result = await self.network.to_async.explain(x[None])
        probabilities = np.asarray(result["probabilities"][0])
        [verdict] = await asyncio.to_thread(self._verdicts, x[None], probabilities[None], [data], "explain")
        ctx.response.headers.update(verdict.headers())
        answer = self._answer(probabilities)
        ctx.response.headers["X-Label"] = quote(answer["label"])  # class names are folder names: any characters
        ctx.response.headers["X-Probability"] = f"{float(answer['probabilities'][answer['label']]):.6f}"
        ctx.response.headers["X-Model-Version"] = str(self.info.get("model_version", "unknown"))
        out = Path(ctx.temp_dir) / "cam.png"  # removed after the response
        overlay = cam_overlay(x, np.asarray(result["cams"][0]))
        from PIL import Image

        Image.fromarray(overlay).save(out)
        return out

    @bentoml.api
    def metadata(self) -> dict:
        """Model version, MLflow run, ZenML run, data version, git commit, metrics and input settings."""
        return self.info


serve_card(Classifier, Classifier.inner.bento_model)  # GET /card: the served version's model card
guard(Classifier, {"/classify": Upload("image", options=("uncertainty",)),
                   "/classify_batch": Upload("images", many=True, options=("uncertainty",)),
                   "/explain": Upload("image")}, Classifier.inner.bento_model)
