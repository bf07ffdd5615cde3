"""BioImage Model Zoo packages of freshly initialised tiny networks (cellops.bioimageio): bioimageio.core's test
passes (every weight format reproduces the test output, which is the project's own prediction), the package reads
back into the same network and served settings, and bad packages are refused saying why."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
import yaml

from cellops import bioimageio
from cellops.bioimageio import PackageError, PackageText
from cellops.classifier.specs import ClassifierServing
from cellops.intensity import Normalization
from cellops.unet.predict import predict_probabilities
from cellops.unet.specs import UNetServing
from models.classifier import build_classifier
from models.unet import UNet

SHAPE = {"in_channels": 1, "out_channels": 1, "base_channels": 4, "depth": 2}
OPTIONS = {"widths": [8, 16], "blocks_per_stage": 1, "expansion": 2, "dropout": 0.0}
TEXT = PackageText("cellops test package", "a tiny untrained network", "# Test\n\nA card.",
                   attachments={bioimageio.LINEAGE_FILE: bioimageio.lineage_json({"git_commit": "abc"})})


def _image(rng: np.random.Generator, shape: tuple[int, int], dtype=np.uint8) -> np.ndarray:
    """A smooth random image (blobs), so that an untrained network's outputs spread."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.random(shape), 3)
    return (np.iinfo(dtype).max * (noise - noise.min()) / np.ptp(noise)).astype(dtype)


def _unet_settings(net: torch.nn.Module, image: np.ndarray, tile: int, **options) -> UNetServing:
    """Served settings whose threshold splits the untrained network's probabilities of the centred tile in two,
    between two distinct values (the spec's binarize is ``>``, the project's ``>=``)."""
    settings = UNetServing(tile_size=tile, tile_overlap=0, batch_size=1, threshold=0.5, **options)
    top, left = (image.shape[0] - tile) // 2, (image.shape[1] - tile) // 2
    values = np.unique(predict_probabilities(net, image[top:top + tile, left:left + tile], settings))
    middle = values[len(values) // 4:3 * len(values) // 4]
    widest = int(np.argmax(np.diff(middle)))  # the widest gap: no value within rounding of the threshold
    return UNetServing(tile_size=tile, tile_overlap=0, batch_size=1,
                       threshold=float(middle[widest] + middle[widest + 1]) / 2, **options)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("bioimageio")
    unet = UNet(**SHAPE).eval()
    image = _image(rng, (40, 44))
    settings = _unet_settings(unet, image, 32, normalization=Normalization(), flip_averaging=True)
    unet_zip = bioimageio.unet_package(unet, image, settings, SHAPE, TEXT, folder / "unet.zip", pixel_size_um=0.008)
    classifier = build_classifier("efficientcellnet", num_classes=2, in_channels=1, options=OPTIONS).eval()
    served = ClassifierServing(("hipsc_ec", "non_ec"), "hipsc_ec", 1, 24, 4, normalization=Normalization())
    classifier_zip = bioimageio.classifier_package(classifier, _image(rng, (24, 24), np.uint16), served,
                                                   "efficientcellnet", bioimageio.classifier_options(classifier), TEXT,
                                                   folder / "classifier.zip")
    return {"unet": (unet_zip, unet, settings), "classifier": (classifier_zip, classifier, served), "folder": folder}


@pytest.mark.parametrize("family", ["unet", "classifier"])
def test_package_passes_bioimageio_core_test_in_every_weight_format(packages, family):
    result = bioimageio.check_package(packages[family][0])
    assert result["status"] == "passed", result["errors"]
    names = " ".join(check["name"] for check in result["checks"])
    for weights in ("torchscript", "onnx", "pytorch_state_dict"):
        assert f"({weights})" in names


def test_unet_package_holds_the_served_processing_units_card_cover_and_lineage(packages):
    path, _, settings = packages["unet"]
    with zipfile.ZipFile(path) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        files = set(archive.namelist())
    raw, mask = rdf["inputs"][0], rdf["outputs"][0]
    pre = [p for p in raw["preprocessing"] if p["id"] != "ensure_dtype"]
    post = [p for p in mask["postprocessing"] if p["id"] != "ensure_dtype"]
    assert [p["id"] for p in pre] == ["scale_range"] and [p["id"] for p in post] == ["sigmoid", "binarize"]
    assert (pre[0]["kwargs"]["min_percentile"], pre[0]["kwargs"]["max_percentile"]) == (1.0, 99.8)
    assert post[1]["kwargs"]["threshold"] == pytest.approx(settings.threshold)
    space = [axis for axis in raw["axes"] if axis["type"] == "space"]
    assert [(a["id"], a["unit"], a["scale"]) for a in space] == [("y", "micrometer", 0.008), ("x", "micrometer", 0.008)]
    assert set(rdf["weights"]) == {"torchscript", "onnx", "pytorch_state_dict"}
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["callable"] == "cellops_network"  # flips wrapped
    assert {"README.md", "cover.png", "lineage.json", "unet.py", "test_input.npy", "test_output.npy"} <= files
    assert rdf["config"]["cellops"]["inference_settings"]["flip_averaging"] is True


def test_classifier_package_outputs_class_probabilities_named_by_class(packages):
    with zipfile.ZipFile(packages["classifier"][0]) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        expected = np.load(archive.open("test_output.npy"))
    output = rdf["outputs"][0]
    assert [a["type"] for a in output["axes"]] == ["batch", "channel"]
    assert output["axes"][1]["channel_names"] == ["hipsc_ec", "non_ec"]
    assert expected.sum() == pytest.approx(1.0, abs=1e-5)  # the softmax is inside the exported network


@pytest.mark.parametrize("family", ["unet", "classifier"])
def test_package_reads_back_as_the_same_network_and_settings(packages, family):
    path, network, settings = packages[family]
    imported = bioimageio.read_package(path)
    assert imported.family == family
    assert imported.record["normalization"] == settings.normalization.as_dict()
    x = torch.rand(1, 1, 32 if family == "unet" else 24, 32 if family == "unet" else 24)
    with torch.no_grad():
        assert torch.allclose(imported.network(x), network(x), atol=1e-6)
    if family == "unet":
        assert imported.record["threshold"] == pytest.approx(settings.threshold)
        bioimageio.check_fits("unet", imported, {"channels": 1, "tile_size": 64})
    else:
        assert imported.record["classes"] == ["hipsc_ec", "non_ec"]


def test_a_package_failing_validation_is_refused_with_the_validators_messages(packages, tmp_path):
    folder = tmp_path / "broken"
    with zipfile.ZipFile(packages["unet"][0]) as archive:
        archive.extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    rdf["outputs"][0]["axes"][2]["size"] = {"tensor_id": "nothing", "axis_id": "y"}
    del rdf["weights"]["torchscript"]["source"]
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    with pytest.raises(PackageError, match="fails bioimage.io validation") as refusal:
        bioimageio.read_package(folder)
    assert "source" in str(refusal.value) and "nothing" in str(refusal.value)
    (folder / "rdf.yaml").write_text("format_version: [not, a, model")
    with pytest.raises(PackageError, match="fails bioimage.io validation"):
        bioimageio.read_package(folder)
    with pytest.raises(PackageError, match="no such package"):
        bioimageio.read_package(tmp_path / "missing.zip")


def test_a_package_of_another_kind_or_not_fitting_the_data_is_refused_naming_both(packages, tmp_path):
    path, _, settings = packages["unet"]
    imported = bioimageio.read_package(path)
    with pytest.raises(PackageError, match="input channels: the package takes 1, the unet data has 3"):
        bioimageio.check_fits("unet", imported, {"channels": 3, "tile_size": 64})
    with pytest.raises(PackageError, match="input size: the package takes y/x of 4 \\+ n \\* 4, the unet data is "
                                           "served in tiles of 30"):
        bioimageio.check_fits("unet", imported, {"channels": 1, "tile_size": 30})
    classifier = bioimageio.read_package(packages["classifier"][0])
    with pytest.raises(PackageError, match=r"classes: the package has \['hipsc_ec', 'non_ec'\], the classifier data "
                                           r"\['a', 'b'\]"):
        bioimageio.check_fits("classifier", classifier, {"channels": 1, "size": 24, "classes": ["a", "b"]})
    folder = tmp_path / "multi"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    rdf["outputs"][0]["axes"][1]["channel_names"] = ["a", "b", "c"]  # three classes per pixel: a semantic map
    rdf["outputs"][0]["test_tensor"].pop("sha256", None)
    np.save(folder / rdf["outputs"][0]["test_tensor"]["source"], np.repeat(np.load(folder / "test_output.npy"), 3, 1))
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    with pytest.raises(PackageError, match=r"output has axes batch, channel \(3: a, b, c\), y, x: neither a "
                                           "segmentation map"):
        bioimageio.read_package(folder)


def test_mask_rcnn_is_refused_saying_what_the_spec_cannot_express():
    with pytest.raises(PackageError, match="non-maximum suppression") as refusal:
        bioimageio.refuse_family("maskrcnn")
    assert "spec 0.5 has no operations" in str(refusal.value)


def test_a_zoo_package_without_cellops_metadata_loads_from_torchscript(packages, tmp_path):
    path, network, _ = packages["classifier"]
    folder = tmp_path / "zoo"
    with zipfile.ZipFile(path) as archive:
        archive.extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    del rdf["config"]["cellops"], rdf["weights"]["pytorch_state_dict"]
    for weights in rdf["weights"].values():
        weights.pop("parent", None)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    imported = bioimageio.read_package(folder)
    assert imported.cellops == {} and imported.record["decision_threshold"] is None
    x = torch.rand(2, 1, 24, 24)
    with torch.no_grad():  # the package returns probabilities; cellops takes logits: their softmax is the same
        assert torch.allclose(torch.softmax(imported.network(x), 1), torch.softmax(network(x), 1), atol=1e-5)
