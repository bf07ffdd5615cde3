"""BioImage Model Zoo packages (bioimage.io model spec 0.5, through ``bioimageio.spec``) of the project's networks,
both ways.

Export (:func:`unet_package`, :func:`classifier_package`): one zip holding the network three ways (TorchScript,
ONNX, and the state dict with the project's architecture source file and its keyword arguments), a test input
cut from the model's test data and the output the project's own prediction gives for it, the served settings as
the spec's pre- and post-processing, axes with their physical units where the data states them, a cover image,
the model card as documentation and the lineage as an attachment.

What the spec 0.5 can say, and how each served setting is said:

* percentile normalisation (:class:`cellops.intensity.Normalization`, ``mode="percentile"``) is ``scale_range``
  with the same percentiles, per sample (numpy's linear percentiles, as :mod:`cellops.intensity` computes them);
  ``mode="dtype"`` is ``scale_linear`` by one over the test image's dtype maximum (a float test image is taken as
  already in [0, 1]);
* the U-Net's threshold is ``sigmoid`` then ``binarize`` (the spec's binarize is ``>``, cellops' ``>=``: they
  differ only on a probability exactly equal to the threshold); flip averaging is inside the exported network
  (it returns the logit of the averaged probability, so the same ``sigmoid`` applies);
* the classifier's softmax is inside the exported network (the spec has no softmax operation): the package
  outputs class probabilities, one channel per class name; the decision threshold has no operation in the spec and
  is recorded under ``config.cellops``.

Not expressed: the U-Net's tiling of images larger than a tile (a consumer tiles with its own tool), its
z-smoothing of stacks (the package is 2-D), and the classifier's crop to the centred square and resize (the package
takes images of the model's size). The served normalisation is computed over the whole image before those
steps; on an input already of the model's size (the test input is one) the two are the same.

Mask R-CNN is refused (:data:`MASKRCNN_REFUSAL`): its served output is instances, made by region proposals, non-maximum
suppression and mask pasting, which the spec 0.5 has no operations for.

Import (:func:`read_package`): a package that fails validation is refused with the validator's messages; the
family follows from the output axes (a one-channel y, x map: ``unet``; a class axis without space axes:
``classifier``); a package whose input does not fit the family's data is refused naming both; the network comes
back as a torch module in the project's conventions (logits), from the state dict with the project's architecture
when the package came from cellops, else from TorchScript.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cellops.intensity import Normalization
from cellops.runtimes import export_onnx

#: Why a Mask R-CNN version is not exported (the message of the refusal).
MASKRCNN_REFUSAL = (
    "a Mask R-CNN is not exported to bioimage.io: its served output is a set of instances, made from the network's "
    "raw outputs by region proposals, non-maximum suppression of regions and pasting each mask into the image, and "
    "the model spec 0.5 has no operations for these; a package of the raw network would give its consumers "
    "something that is not the served model")
#: Families that export whole.
EXPORTED_FAMILIES = ("unet", "classifier")
#: The ``config`` key under which a package records what cellops needs to rebuild and serve it.
CONFIG_KEY = "cellops"
#: Appended to the documentation: how the package is checked (the spec looks for a ``# Validation`` section).
VALIDATION_SECTION = """## Validation

The test input (`test_input.npy`) is cut from the model's test data; the test output (`test_output.npy`) is what
cellops serves for it (its own normalisation, network and threshold, not the package's). `bioimageio test` on this
package reproduces that output from the input in each weight format (TorchScript, ONNX, state dict with the
architecture source), through the package's pre- and post-processing, so the package is the served model. cellops
runs this test in its test suite on the packages it exports.
"""
#: Name of the lineage attachment.
LINEAGE_FILE = "lineage.json"
#: ONNX opset of the export (:func:`cellops.runtimes.export_onnx`).
ONNX_OPSET = 17
#: Elements of a binarised output (the U-Net's mask) that may differ between weight formats, per million: a pixel
#: whose probability lies within float rounding of the threshold may fall on either side in ONNX Runtime and torch
#: (one pixel of a 64 px tile is 244 per million; the spec's default allows 100).
BINARY_MISMATCHES_PER_MILLION = 1000
#: The smallest probability the logit of an averaged probability is taken of (flip averaging).
_EPS = 1e-7

# Appended, after :class:`ServedNetwork`'s own source, to a project architecture file when the exported network wraps
# it: the wrapper has to live in the package's architecture source, which ``bioimageio.core`` imports on its own.
_BUILDER_SOURCE = '''

def cellops_network(head: str, builder: str, **kwargs) -> nn.Module:
    """The served network: ``builder(**kwargs)`` of this file wrapped in :class:`ServedNetwork`."""
    return ServedNetwork(globals()[builder](**kwargs), head)
'''


class PackageError(ValueError):
    """A package that cannot be written or imported; the message says why (the validator's messages for an invalid
    package, both sides for a package that does not fit the family)."""


class ServedNetwork(nn.Module):
    """``network`` followed by the steps of the served model that the spec has no operation for (the same code as
    the package's architecture file, where its source is appended).

    Parameters
    ----------
    network : nn.Module
        The trained network (returns logits).
    head : str
        ``"softmax"``: class probabilities; ``"flips"``: the logit of the foreground probability averaged over the
        image and its three flips.

    Examples
    --------
    >>> net = ServedNetwork(nn.Conv2d(1, 1, 1), "flips").eval()
    >>> net(torch.zeros(1, 1, 4, 4)).shape
    torch.Size([1, 1, 4, 4])
    """

    def __init__(self, network: nn.Module, head: str) -> None:
        super().__init__()
        if head not in ("softmax", "flips"):
            raise ValueError(f"head must be 'softmax' or 'flips', got {head!r}")
        self.network, self.head = network, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head == "softmax":
            return torch.softmax(self.network(x), dim=1)
        total = torch.sigmoid(self.network(x))
        for dims in ((3,), (2,), (2, 3)):
            total = total + torch.flip(torch.sigmoid(self.network(torch.flip(x, dims))), dims)
        return torch.logit((total / 4.0).clamp(_EPS, 1.0 - _EPS))


@dataclass(frozen=True)
class PackageText:
    """What a package says about itself besides the network.

    Attributes
    ----------
    name : str
        The package's name (e.g. ``cellops-unet v3``).
    description : str
        One sentence.
    documentation : str
        Markdown (the model card).
    license : str, optional
        SPDX licence identifier of the weights.
    authors : tuple of str, optional
        Author names.
    tags : tuple of str, optional
        Free keywords.
    attachments : Mapping of str to str, optional
        File name to text content (the lineage JSON, the card's HTML).
    config : Mapping, optional
        More of what cellops records under ``config.cellops`` (lineage, registry version).
    """

    name: str
    description: str
    documentation: str
    license: str = "Apache-2.0"
    authors: tuple[str, ...] = ("cellops",)
    tags: tuple[str, ...] = ()
    attachments: Mapping[str, str] = field(default_factory=dict)
    config: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class _Export:
    """One network to package: the module exported, its architecture source and the tensors' descriptions."""

    network: nn.Module
    source: str  # the architecture file's text
    source_name: str
    builder: str
    kwargs: dict
    test_input: np.ndarray
    test_output: np.ndarray
    tensors: Callable[[Path, Path], tuple]  # (test input file, test output file) -> (input, output) descriptions
    cover: np.ndarray
    record: dict
    onnx_axes: dict[int, str]
    mismatched_per_million: int | None = None  # None: the spec's default (100)


# ----------------------------------------------------------------------------------------------------- export


def _spec():
    """The spec 0.5 model module (imported late: ``bioimageio.spec`` takes seconds to import)."""
    from bioimageio.spec.model import v0_5

    return v0_5


def _preprocessing(normalization: Normalization, image: np.ndarray, axes: Sequence[str]) -> list:
    """The spec's preprocessing for ``normalization`` of ``image`` (its dtype decides ``dtype`` mode's gain)."""
    spec = _spec()
    as_float = spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))
    if normalization.mode == "percentile":
        kwargs = spec.ScaleRangeKwargs(axes=[spec.AxisId(a) for a in axes], min_percentile=normalization.low,
                                       max_percentile=normalization.high)
        return [spec.ScaleRangeDescr(kwargs=kwargs), as_float]
    if image.dtype.kind == "u":
        gain = 1.0 / float(np.iinfo(image.dtype).max)
        return [spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=gain)), as_float]
    return [as_float]


def _space_axes(kind: str, size, pixel_size_um: float | None, reference: str | None = None) -> list:
    """The y and x axes: sizes (input: ``size`` as given; output: the input's), micrometres where known."""
    spec = _spec()
    unit = {"unit": "micrometer", "scale": pixel_size_um} if pixel_size_um else {}
    axes = []
    for name in ("y", "x"):
        if kind == "input":
            axes.append(spec.SpaceInputAxis(id=spec.AxisId(name), size=size, **unit))
        else:
            ref = spec.SizeReference(tensor_id=spec.TensorId(reference), axis_id=spec.AxisId(name))
            axes.append(spec.SpaceOutputAxis(id=spec.AxisId(name), size=ref, **unit))
    return axes


def _grey(image: np.ndarray) -> np.ndarray:
    """``image`` scaled to uint8 by its 1st and 99th percentiles, for the cover."""
    low, high = np.percentile(image, [1, 99])
    return (np.clip((image - low) / max(high - low, 1e-12), 0, 1) * 255).astype(np.uint8)


def _architecture_source(module: str, wrapped: bool) -> str:
    """The text of the project's architecture file ``models/<module>.py``, with :class:`ServedNetwork` and its
    builder appended when the exported network wraps it."""
    import models.classifier
    import models.unet

    text = Path(inspect.getfile({"unet": models.unet, "classifier": models.classifier}[module])).read_text()
    if not wrapped:
        return text
    return (f"{text}\n\n# --- cellops: the network as the bioimage.io package serves it (cellops.bioimageio) ---\n"
            f"_EPS = {_EPS!r}\n\n\n{inspect.getsource(ServedNetwork)}{_BUILDER_SOURCE}")


def unet_export(model: nn.Module, image: np.ndarray, settings, architecture: Mapping[str, object], *,
                pixel_size_um: float | None = None) -> _Export:
    """What :func:`unet_package` writes for ``model`` (see there)."""
    from cellops.unet.predict import predict_probabilities

    spec = _spec()
    tile = settings.tile_size
    if image.ndim != 2 or min(image.shape) < tile:
        raise PackageError(f"the U-Net test input must be a 2-D image of at least one tile ({tile} px), got shape "
                           f"{image.shape}")
    top, left = (image.shape[0] - tile) // 2, (image.shape[1] - tile) // 2
    crop = np.ascontiguousarray(image[top:top + tile, left:left + tile])
    model = model.eval()
    probabilities = predict_probabilities(model, crop, settings)
    mask = (probabilities >= settings.threshold).astype(np.float32)
    depth = int(architecture["depth"])
    step = 2 ** depth
    def tensors(test_input: Path, test_output: Path) -> tuple:
        raw = spec.InputTensorDescr(
            id=spec.TensorId("raw"), description="EM image, one channel",
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=["em"]),
                  *_space_axes("input", spec.ParameterizedSize(min=step, step=step), pixel_size_um)],
            test_tensor=spec.FileDescr(source=test_input),
            data=spec.IntervalOrRatioDataDescr(type=_dtype_name(crop)),
            preprocessing=_preprocessing(settings.normalization, crop, ("channel", "y", "x")))
        output = spec.OutputTensorDescr(
            id=spec.TensorId("mask"), description=f"foreground (mitochondria) where the probability exceeds "
                                                  f"{settings.threshold:g}",
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=["foreground"]),
                  *_space_axes("output", None, pixel_size_um, reference="raw")],
            test_tensor=spec.FileDescr(source=test_output),
            postprocessing=[spec.SigmoidDescr(), spec.BinarizeDescr(kwargs=spec.BinarizeKwargs(threshold=settings.threshold)),
                            spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))])
        return raw, output

    kwargs = {k: architecture[k] for k in ("in_channels", "out_channels", "base_channels", "depth")}
    kwargs["dropout"] = float(architecture.get("dropout", 0.0))
    wrapped = bool(settings.flip_averaging)
    network = ServedNetwork(model, "flips") if wrapped else model
    return _Export(network=network.eval(), source=_architecture_source("unet", wrapped), source_name="unet.py",
                   builder="UNet", kwargs=kwargs, test_input=crop[None, None], test_output=mask[None, None],
                   tensors=tensors, cover=np.concatenate([_grey(crop), (mask * 255).astype(np.uint8)], 1),
                   record={"family": "unet", "architecture": kwargs, "head": "flips" if wrapped else "logits",
                           "inference_settings": settings.as_dict()},
                   onnx_axes={0: "batch", 2: "height", 3: "width"}, mismatched_per_million=BINARY_MISMATCHES_PER_MILLION)


def _dtype_name(array: np.ndarray) -> str:
    return np.dtype(array.dtype).name


def classifier_export(model: nn.Module, image: np.ndarray, settings, architecture: str,
                      options: Mapping[str, object]) -> _Export:
    """What :func:`classifier_package` writes for ``model`` (see there)."""
    from cellops.classifier.data import to_model_input
    from cellops.classifier.train import predict_probabilities

    spec = _spec()
    # The package takes images of the model's size: the test image brought to that size with a linear scaling only
    # (0-100 percentiles), which the package's scale_range undoes exactly.
    geometry = Normalization(mode="percentile", low=0.0, high=100.0)
    if settings.normalization.mode == "dtype":
        geometry = settings.normalization
    x = to_model_input(image, channels=settings.channels, size=settings.size, normalization=geometry)
    served = settings.normalization.apply(x) if settings.normalization.mode == "percentile" else x
    model = model.eval()
    probabilities = predict_probabilities(model, served[None], 1).astype(np.float32)
    channel_names = ["grey"] if settings.channels == 1 else ["red", "green", "blue"]
    size = settings.size
    def tensors(test_input: Path, test_output: Path) -> tuple:
        inputs = spec.InputTensorDescr(
            id=spec.TensorId("image"), description=f"image of {size} x {size} px, "
                                                   f"{'grey' if settings.channels == 1 else 'RGB'}",
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=channel_names),
                  spec.SpaceInputAxis(id=spec.AxisId("y"), size=size), spec.SpaceInputAxis(id=spec.AxisId("x"), size=size)],
            test_tensor=spec.FileDescr(source=test_input),
            preprocessing=(_preprocessing(settings.normalization, x, ("channel", "y", "x"))
                           if settings.normalization.mode == "percentile" else []))
        outputs = spec.OutputTensorDescr(
            id=spec.TensorId("probabilities"), description="class probabilities (softmax of the network's logits)",
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=list(settings.classes))],
            test_tensor=spec.FileDescr(source=test_output),
            data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))
        return inputs, outputs

    kwargs = {"architecture": architecture, "num_classes": len(settings.classes), "in_channels": settings.channels,
              "options": dict(options)}
    bars = np.zeros((size, size), np.uint8)
    for i, p in enumerate(probabilities[0]):
        width = max(1, size // len(probabilities[0]))
        bars[size - int(round(p * (size - 1))):, i * width:(i + 1) * width - 1] = 255
    return _Export(network=ServedNetwork(model, "softmax").eval(), source=_architecture_source("classifier", True),
                   source_name="classifier.py", builder="build_classifier", kwargs=kwargs,
                   test_input=x[None].astype(np.float32), test_output=probabilities, tensors=tensors,
                   cover=np.concatenate([_grey(x.mean(axis=0)), bars], 1),
                   record={"family": "classifier", "architecture": kwargs, "head": "softmax",
                           "inference_settings": settings.as_dict()},
                   onnx_axes={0: "batch"})


def classifier_options(model: nn.Module) -> dict:
    """The :class:`models.classifier.EfficientCellNet` keyword arguments that rebuild ``model``, read from its
    layers (a registered version records none); ``{}`` for the torchvision architectures, which take none.

    Examples
    --------
    >>> from models.classifier import build_classifier
    >>> options = {"widths": (8, 16, 24), "blocks_per_stage": 2, "expansion": 3, "dropout": 0.1}
    >>> classifier_options(build_classifier("efficientcellnet", num_classes=2, in_channels=1, options=options))
    {'widths': [8, 16, 24], 'blocks_per_stage': 2, 'expansion': 3, 'dropout': 0.1}
    """
    from models.classifier import EfficientCellNet

    if not isinstance(model, EfficientCellNet):
        return {}
    stem, *blocks = model.features
    widths = [stem[0].out_channels]
    for block in blocks:
        depthwise = block.block[-3][0]
        if depthwise.stride[0] == 2:
            widths.append(block.block[-2].out_channels)
    first = blocks[0].block
    return {"widths": widths, "blocks_per_stage": len(blocks) // (len(widths) - 1),
            "expansion": first[-2].in_channels // widths[0], "dropout": float(model.dropout.p)}


def _write_png(array: np.ndarray, path: Path) -> Path:
    from PIL import Image

    Image.fromarray(array).save(path)
    return path


def _tolerance(export: _Export):
    """The ``config.bioimageio`` of a package: its reproducibility tolerance where it is not the spec's default."""
    spec = _spec()
    if export.mismatched_per_million is None:
        return spec.BioimageioConfig()
    return spec.BioimageioConfig(reproducibility_tolerance=[spec.ReproducibilityTolerance(
        mismatched_elements_per_million=export.mismatched_per_million)])


def write_package(export: _Export, text: PackageText, out: str | Path) -> Path:
    """Write ``export`` as a bioimage.io model package (zip) at ``out``; returns its path.

    Raises
    ------
    PackageError
        When the description does not validate (the validator's messages).
    """
    import pydantic
    import torch.jit

    spec = _spec()
    from bioimageio.spec import save_bioimageio_package

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cellops-bioimageio-"))
    try:
        np.save(work / "test_input.npy", export.test_input)
        np.save(work / "test_output.npy", export.test_output)
        inputs, outputs = export.tensors(work / "test_input.npy", work / "test_output.npy")
        example = torch.from_numpy(np.asarray(export.test_input, dtype=np.float32))
        with torch.inference_mode():
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer and deprecation warnings
                torch.jit.trace(export.network, example, check_trace=False).save(str(work / "weights.torchscript.pt"))
        export_onnx(export.network, example, work / "weights.onnx", dynamic_axes=export.onnx_axes)
        torch.save(export.network.state_dict(), work / "weights.pt")
        (work / export.source_name).write_text(export.source)
        (work / "README.md").write_text(text.documentation.rstrip() + "\n\n" + VALIDATION_SECTION)
        _write_png(export.cover, work / "cover.png")
        attachments = []
        for name, content in text.attachments.items():
            (work / name).write_text(content)
            attachments.append(spec.FileDescr(source=work / name))
        version = spec.Version(torch.__version__.split("+")[0])
        wrapped = export.record["head"] in ("softmax", "flips")
        callable_, kwargs = ("cellops_network", {"head": export.record["head"], "builder": export.builder,
                                                 **export.kwargs}) if wrapped else (export.builder, export.kwargs)
        weights = spec.WeightsDescr(
            pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
                source=work / "weights.pt", pytorch_version=version,
                architecture=spec.ArchitectureFromFileDescr(source=work / export.source_name, callable=callable_,
                                                            kwargs=kwargs)),
            torchscript=spec.TorchscriptWeightsDescr(source=work / "weights.torchscript.pt", pytorch_version=version,
                                                     parent="pytorch_state_dict"),
            onnx=spec.OnnxWeightsDescr(source=work / "weights.onnx", opset_version=ONNX_OPSET,
                                       parent="pytorch_state_dict"))
        try:
            description = spec.ModelDescr(
                name=text.name, description=text.description, authors=[spec.Author(name=a) for a in text.authors],
                cite=[spec.CiteEntry(text="cellops: " + text.name, url="https://bioimage.io")],
                license=text.license, tags=list(text.tags), documentation=spec.FileDescr(source=work / "README.md"),
                covers=[spec.FileDescr(source=work / "cover.png")], attachments=attachments, inputs=[inputs],
                outputs=[outputs], weights=weights,
                config=spec.Config(bioimageio=_tolerance(export), **{CONFIG_KEY: {**export.record, **dict(text.config)}}))
        except pydantic.ValidationError as error:
            raise PackageError(f"the package's description does not validate: {error}") from None
        return Path(save_bioimageio_package(description, output_path=out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def unet_package(model: nn.Module, image: np.ndarray, settings, architecture: Mapping[str, object],
                 text: PackageText, out: str | Path, *, pixel_size_um: float | None = None) -> Path:
    """A bioimage.io package of a U-Net, as served with ``settings``.

    Parameters
    ----------
    model : nn.Module
        The trained U-Net (:class:`models.unet.UNet`, returning logits).
    image : np.ndarray
        A test slice (Y, X), raw intensities; its centred tile of ``settings.tile_size`` is the test input and the
        project's prediction of it (:func:`cellops.unet.predict.predict_probabilities`, thresholded) the test output.
    settings : cellops.unet.specs.UNetServing
        The served settings (normalisation, threshold, flip averaging).
    architecture : Mapping
        The U-Net's keyword arguments (``in_channels``, ``out_channels``, ``base_channels``, ``depth``).
    text : PackageText
        Name, description, documentation and attachments.
    out : str or Path
        The zip to write.
    pixel_size_um : float or None, optional
        The pixel size of the data, in µm (the axes' scale); None: no unit.

    Returns
    -------
    Path
        The package.

    Examples
    --------
    >>> import tempfile
    >>> from models.unet import UNet
    >>> from cellops.unet.specs import UNetServing
    >>> settings = UNetServing(tile_size=16, tile_overlap=0, batch_size=1, threshold=0.5)
    >>> image = np.random.default_rng(0).integers(0, 255, (20, 20)).astype(np.uint8)
    >>> shape = {"in_channels": 1, "out_channels": 1, "base_channels": 2, "depth": 1}
    >>> path = unet_package(UNet(**shape), image, settings, shape, PackageText("u", "d", "# u"),
    ...                     Path(tempfile.mkdtemp()) / "u.zip")  # doctest: +SKIP
    """
    return write_package(unet_export(model, image, settings, architecture, pixel_size_um=pixel_size_um), text, out)


def classifier_package(model: nn.Module, image: np.ndarray, settings, architecture: str,
                       options: Mapping[str, object], text: PackageText, out: str | Path) -> Path:
    """A bioimage.io package of a classifier, as served with ``settings``, its softmax inside the network.

    Parameters
    ----------
    model : nn.Module
        The trained classifier (:func:`models.classifier.build_classifier`, returning logits).
    image : np.ndarray
        A test image, raw (as :func:`cellops.io.read_image_file` returns it); brought to the model's size and
        channels, it is the test input, and the project's probabilities of it the test output.
    settings : cellops.classifier.specs.ClassifierServing
        The served settings (classes, channels, size, normalisation).
    architecture : str
        One of :data:`models.classifier.ARCHITECTURES`.
    options : Mapping
        The architecture's keyword arguments.
    text : PackageText
        Name, description, documentation and attachments.
    out : str or Path
        The zip to write.

    Returns
    -------
    Path
        The package.
    """
    return write_package(classifier_export(model, image, settings, architecture, options), text, out)


def refuse_family(family: str) -> None:
    """Raise a :class:`PackageError` saying why ``family`` is not exported (Mask R-CNN: :data:`MASKRCNN_REFUSAL`).

    Examples
    --------
    >>> refuse_family("unet")
    >>> refuse_family("maskrcnn")
    Traceback (most recent call last):
    cellops.bioimageio.PackageError: a Mask R-CNN is not exported to bioimage.io: ...
    """
    if family == "maskrcnn":
        raise PackageError(MASKRCNN_REFUSAL)
    if family not in EXPORTED_FAMILIES:
        raise PackageError(f"family {family!r} has no bioimage.io export; exported: {', '.join(EXPORTED_FAMILIES)}")


def sha256(path: str | Path) -> str:
    """The SHA-256 of a file (the package's identity in the registry).

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a"; _ = p.write_bytes(b"")
    >>> sha256(p)[:12]
    'e3b0c44298fc'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_package(path: str | Path) -> dict:
    """``bioimageio.core``'s test of a package (validation, then every weight format reproducing the test output
    from the test input): its status and the failing checks' messages.

    Parameters
    ----------
    path : str or Path
        The package (zip) or its ``rdf.yaml``.

    Returns
    -------
    dict
        ``status`` (``passed``/``valid-format``/``failed``), ``errors`` (the failing checks, ``name: message``) and
        ``checks`` (every check's name and status).
    """
    from bioimageio.core import test_model

    summary = test_model(Path(path))
    errors = [f"{d.name}: {e.msg}" for d in summary.details for e in d.errors]
    return {"status": summary.status, "errors": errors,
            "checks": [{"name": d.name, "status": d.status} for d in summary.details]}



# ----------------------------------------------------------------------------------------------------- import


@dataclass(frozen=True)
class ImportedPackage:
    """A package read for import.

    Attributes
    ----------
    family : str
        ``unet`` or ``classifier``.
    name : str
        The package's name.
    network : nn.Module
        The network in the project's conventions (returns logits).
    record : dict
        The served settings the package says (the family's serving record fields): ``normalization`` from the
        preprocessing; a U-Net's ``threshold`` (binarize) and ``flip_averaging``; a classifier's ``classes`` and
        ``decision_threshold`` (recorded under ``config.cellops`` by a cellops package, else None).
    input_channels : int
        Channels of the input.
    input_size : dict
        ``min`` and ``step`` of the space axes (``step`` 0: a fixed size).
    cellops : dict
        What the package recorded under ``config.cellops`` (empty for a package that did not come from cellops).
    """

    family: str
    name: str
    network: nn.Module
    record: dict
    input_channels: int
    input_size: dict
    cellops: dict


def load_description(path: str | Path):
    """The package's model description, validated; a package that fails validation raises a
    :class:`PackageError` carrying the validator's messages.

    Parameters
    ----------
    path : str or Path
        The package (zip) or its folder (holding ``rdf.yaml`` or ``bioimageio.yaml``).

    Returns
    -------
    bioimageio.spec.model.v0_5.ModelDescr
        The description.
    """
    from bioimageio.spec import load_model_description

    path = Path(path)
    if not path.exists():
        raise PackageError(f"{path}: no such package (a .zip or a folder with rdf.yaml)")
    source = path
    if path.is_dir():
        found = [path / n for n in ("rdf.yaml", "bioimageio.yaml") if (path / n).is_file()]
        if not found:
            raise PackageError(f"{path}: a folder without rdf.yaml or bioimageio.yaml is not a package")
        source = found[0]
    try:  # an invalid description raises a ValueError carrying the validator's messages
        description = load_model_description(source, perform_io_checks=True)
    except Exception as error:  # noqa: BLE001 - the loader's refusal (invalid, not a model, not a zip), whole
        raise PackageError(f"{path}: the package fails bioimage.io validation: {error}") from None
    if not str(description.format_version).startswith("0.5"):
        raise PackageError(f"{path}: model spec {description.format_version}; cellops imports spec 0.5 packages")
    return description


def _kind(tensor) -> dict:
    """The axes of ``tensor`` by type: ``space`` ids, ``channel`` count, ``other`` ids."""
    space, channels, other = [], None, []
    for axis in tensor.axes:
        if axis.type == "space":
            space.append(str(axis.id))
        elif axis.type == "channel":
            channels = len(axis.channel_names)
        elif axis.type != "batch":
            other.append(f"{axis.type} {axis.id}")
    return {"space": space, "channels": channels, "other": other}


def describe_axes(tensor) -> str:
    """One tensor's axes as text, e.g. ``batch, channel (1), y, x``."""
    parts = []
    for axis in tensor.axes:
        if axis.type == "channel":
            parts.append(f"channel ({len(axis.channel_names)}: {', '.join(axis.channel_names)})")
        else:
            parts.append(str(axis.id) if axis.type in ("batch", "space") else f"{axis.type} {axis.id}")
    return ", ".join(parts)


def package_family(description) -> str:
    """The family a model description belongs to: ``unet`` (one output, a one-channel y, x map) or
    ``classifier`` (one output with a class axis and no space axes); anything else raises a
    :class:`PackageError` naming what it is."""
    if len(description.inputs) != 1 or len(description.outputs) != 1:
        raise PackageError(f"the package has {len(description.inputs)} inputs and {len(description.outputs)} outputs; "
                           "cellops imports one-input, one-output segmentation or classification models")
    output = _kind(description.outputs[0])
    if output["other"]:
        raise PackageError(f"the package's output has axes {describe_axes(description.outputs[0])}: not a 2-D "
                           "segmentation map nor class scores")
    if sorted(output["space"]) == ["x", "y"] and output["channels"] in (None, 1):
        return "unet"
    if not output["space"] and (output["channels"] or 0) >= 2:
        return "classifier"
    raise PackageError(f"the package's output has axes {describe_axes(description.outputs[0])}: neither a "
                       "segmentation map (y, x and one channel, family unet) nor class scores (a class axis without "
                       "space axes, family classifier)")


def _input_size(tensor) -> dict:
    """``min`` and ``step`` of the input's y axis (step 0: a fixed size)."""
    for axis in tensor.axes:
        if axis.type == "space" and str(axis.id) == "y":
            size = axis.size
            if isinstance(size, int):
                return {"min": size, "step": 0}
            if hasattr(size, "step"):
                return {"min": int(size.min), "step": int(size.step)}
    return {"min": 0, "step": 0}


def _normalization(tensor) -> Normalization:
    """The served :class:`Normalization` the input's preprocessing says (``scale_range`` -> percentile,
    ``scale_linear`` or nothing -> dtype); other operations raise a :class:`PackageError`."""
    normalization = Normalization(mode="dtype")
    for step in tensor.preprocessing:
        if step.id == "scale_range":
            normalization = Normalization(mode="percentile", low=float(step.kwargs.min_percentile),
                                          high=float(step.kwargs.max_percentile))
        elif step.id not in ("ensure_dtype", "scale_linear"):
            raise PackageError(f"the package's input preprocessing {step.id!r} has no cellops equivalent "
                               "(scale_range and scale_linear have)")
    return normalization


def check_fits(family: str, imported: ImportedPackage, data: Mapping[str, object]) -> None:
    """Raise a :class:`PackageError` naming both when the package's input does not fit the family's data.

    Parameters
    ----------
    family : str
        ``unet`` or ``classifier``.
    imported : ImportedPackage
        The package.
    data : Mapping
        The family's data: ``channels`` (input channels), and for a U-Net ``tile_size`` (the served tile), for a
        classifier ``size`` (the model input side) and ``classes``.
    """
    problems = []
    if imported.input_channels != data["channels"]:
        problems.append(f"input channels: the package takes {imported.input_channels}, the {family} data has "
                        f"{data['channels']}")
    size = imported.input_size
    if family == "unet":
        tile = int(data["tile_size"])
        fits = tile >= size["min"] and (size["step"] == 0 and tile == size["min"]
                                        or size["step"] and (tile - size["min"]) % size["step"] == 0)
        if not fits:
            problems.append(f"input size: the package takes y/x of {size['min']} + n * {size['step']}, the unet "
                            f"data is served in tiles of {tile}")
    else:
        if size["step"] != 0 or size["min"] != int(data["size"]):
            problems.append(f"input size: the package takes {size['min']} px (step {size['step']}), the classifier "
                            f"data is {data['size']} px")
        if list(imported.record["classes"]) != list(data["classes"]):
            problems.append(f"classes: the package has {list(imported.record['classes'])}, the classifier data "
                            f"{list(data['classes'])}")
    if problems:
        raise PackageError(f"the package {imported.name!r} does not fit the {family} data: " + "; ".join(problems))


class _FromProbabilities(nn.Module):
    """A network returning probabilities (foreign TorchScript), seen as one returning logits (cellops applies the
    sigmoid or softmax itself): the logit of a probability map, the log of class probabilities."""

    def __init__(self, network: nn.Module, family: str) -> None:
        super().__init__()
        self.network, self.family = network, family

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.network(x).clamp(_EPS, 1.0 - _EPS)
        return torch.logit(p) if self.family == "unet" else torch.log(p)


def _read_bytes(source) -> bytes:
    from bioimageio.spec.utils import get_reader

    return get_reader(source).read()


def _network(description, family: str, cellops: dict, sigmoid: bool) -> nn.Module:
    """The package's network in the project's conventions (see :class:`ImportedPackage`)."""
    import io

    weights = description.weights
    architecture = cellops.get("architecture")
    if weights.pytorch_state_dict is not None and architecture and cellops.get("family") == family:
        state = torch.load(io.BytesIO(_read_bytes(weights.pytorch_state_dict.source)), map_location="cpu",
                           weights_only=True)
        if family == "unet":
            from models.unet import UNet

            network = UNet(**architecture)
        else:
            from models.classifier import build_classifier

            network = build_classifier(architecture["architecture"], num_classes=int(architecture["num_classes"]),
                                       in_channels=int(architecture["in_channels"]),
                                       options=dict(architecture.get("options") or {}))
        if cellops.get("head") in ("softmax", "flips"):
            state = {k.removeprefix("network."): v for k, v in state.items() if k.startswith("network.")}
        network.load_state_dict(state)
        return network.eval()
    if weights.torchscript is None:
        raise PackageError("the package has neither TorchScript weights nor a cellops architecture for its state "
                           "dict; cellops imports one of these")
    network = torch.jit.load(io.BytesIO(_read_bytes(weights.torchscript.source)), map_location="cpu").eval()
    if family == "unet" and sigmoid:
        return network
    return _FromProbabilities(network, family).eval()


def read_package(path: str | Path) -> ImportedPackage:
    """Read a bioimage.io model package for import: validated, its family decided, its network loaded, its
    pre- and post-processing read as the family's served settings.

    Parameters
    ----------
    path : str or Path
        The package (zip) or its folder.

    Returns
    -------
    ImportedPackage
        The package.

    Raises
    ------
    PackageError
        An invalid package (the validator's messages), one of no importable family, or one whose processing has
        no cellops equivalent.
    """
    description = load_description(path)
    family = package_family(description)
    extra = description.config.model_extra or {}
    cellops = dict(extra.get(CONFIG_KEY) or {})
    tensor, output = description.inputs[0], description.outputs[0]
    kind = _kind(tensor)
    if sorted(kind["space"]) != ["x", "y"] or kind["other"]:
        raise PackageError(f"the package's input has axes {describe_axes(tensor)}; cellops {family} data is 2-D "
                           "images (batch, channel, y, x)")
    record: dict = {"normalization": _normalization(tensor).as_dict()}
    steps = [step.id for step in output.postprocessing if step.id != "ensure_dtype"]
    sigmoid = "sigmoid" in steps
    served = cellops.get("inference_settings") or {}
    if family == "unet":
        thresholds = [float(step.kwargs.threshold) for step in output.postprocessing if step.id == "binarize"]
        record["threshold"] = thresholds[0] if thresholds else 0.5
        # A cellops network with flip averaging comes back without its wrapper: the setting takes its place.
        record["flip_averaging"] = cellops.get("head") == "flips" and bool(served.get("flip_averaging"))
        if set(steps) - {"sigmoid", "binarize"}:
            raise PackageError(f"the package's output postprocessing {steps} has no cellops equivalent "
                               "(sigmoid and binarize have)")
    else:
        if set(steps) - {"softmax"}:
            raise PackageError(f"the package's output postprocessing {steps} has no cellops equivalent")
        record["classes"] = [name for axis in output.axes if axis.type == "channel" for name in axis.channel_names]
        # The operating point has no operation in the spec; a cellops package records it.
        record["decision_threshold"] = served.get("decision_threshold")
    return ImportedPackage(family=family, name=str(description.name), network=_network(description, family, cellops,
                                                                                       sigmoid),
                           record=record, input_channels=kind["channels"] or 1, input_size=_input_size(tensor),
                           cellops=cellops)


def lineage_json(record: Mapping[str, object]) -> str:
    """The lineage attachment's text: ``record`` as indented, key-sorted JSON.

    Examples
    --------
    >>> lineage_json({"git_commit": "abc", "data_version": "d.dir"})
    '{\\n  "data_version": "d.dir",\\n  "git_commit": "abc"\\n}'
    """
    return json.dumps(dict(record), indent=2, sort_keys=True, default=str)
