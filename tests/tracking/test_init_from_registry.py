"""Starting a training from a registered version (``init: models:/NAME@ALIAS`` or ``models:/NAME/VERSION``), for
every family, against a real MLflow registry (SQLite store in a temporary folder): the model the config builds
gets the version's weights; another architecture, other classes or categories, another family and an unknown
model, version or alias are refused before training, naming both sides or what exists; the parent is recorded on
the run and inherited by the version registered from it, which `cellops lineage` prints."""

from dataclasses import replace

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from cellops.classifier.specs import ClassifierModelSpec, ClassifierServing
from cellops.maskrcnn.specs import MaskRCNNModelSpec, MaskRCNNServing
from cellops.unet.specs import Architecture, UNetServing
from models.classifier import build_classifier
from models.maskrcnn import build_maskrcnn, MaskRCNNSettings
from steps.classifier.train import initial_model as initial_classifier
from steps.maskrcnn.train import initial_model as initial_maskrcnn
from steps.unet.train import initial_model as initial_unet
from tracking import tags
from tracking.cli import format_lineage, lineage, main
from tracking.registry import load_init_weights, register_and_maybe_promote

pytestmark = pytest.mark.minutes(1)

UNET = Architecture(in_channels=1, out_channels=1, base_channels=4, depth=2, dropout=0.0)
CLASSIFIER = ClassifierModelSpec("efficientcellnet", "scratch", options={"widths": [8, 16], "blocks_per_stage": 1})
CLASSIFIER_SERVING = ClassifierServing(("ec", "other"), "ec", channels=1, size=32, batch_size=2)
MASKRCNN = MaskRCNNSettings(backbone="resnet18", fpn_channels=16, representation_size=32, mask_head_layers=1,
                            anchor_sizes=(8, 16, 32, 64, 128), min_size=64, max_size=64)
COLONY = [{"id": 1, "name": "colony"}]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (creating one takes seconds); each test registers models of its own names."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("init", artifact_location=(folder / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield uri
    mlflow.set_tracking_uri(None)


def _register(uri: str, name: str, model: torch.nn.Module, settings: dict, score: float = 0.5,
              run_tags: dict | None = None, version_tags: dict | None = None) -> str:
    """Log ``model`` in a run tagged ``run_tags`` and register it as the registration steps do (champion when
    better); returns the version."""
    with mlflow.start_run() as run:
        mlflow.set_tags(run_tags or {})
        # Stated requirements: MLflow would otherwise infer them by importing the model in a subprocess.
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", pip_requirements=["torch"])
    decision = register_and_maybe_promote(
        MlflowClient(uri), info.model_uri, name, {"score": score},
        {**tags.lineage_to_tags({"data_version": "x.dir"}), **tags.inference_to_tags(settings),
         tags.MLFLOW_RUN_ID: run.info.run_id, tags.WEIGHTS_SHA256: str(score), **(version_tags or {})},
        promotion_metric="score", alias="champion", min_improvement=0.0)
    return decision["version"]


def _same_weights(model: torch.nn.Module, registered: torch.nn.Module) -> bool:
    theirs = registered.state_dict()
    return all(torch.equal(tensor, theirs[key]) for key, tensor in model.state_dict().items())


def _unet(seed: int = 1, architecture: Architecture = UNET) -> torch.nn.Module:
    torch.manual_seed(seed)
    from models.unet import UNet

    return UNet(**{k: getattr(architecture, k) for k in ("in_channels", "out_channels", "base_channels", "depth")})


UNET_SERVING = UNetServing(tile_size=32, tile_overlap=8, batch_size=1, threshold=0.5).as_dict()


def test_a_unet_starts_from_the_registered_weights_by_alias_or_version(store):
    registered = _unet(seed=1)
    assert _register(store, "unet-a", registered, UNET_SERVING) == "1"
    scratch, parent = initial_unet(UNET, "scratch", seed=7, distributed=False)
    assert parent is None and not _same_weights(scratch, registered)
    for init in ("models:/unet-a@champion", "models:/unet-a/1"):
        model, parent = initial_unet(UNET, init, seed=7, distributed=False)
        assert parent == "unet-a:1" and _same_weights(model, registered)
    # Dropout does not change a single weight's shape: a parent without it still fits.
    assert initial_unet(replace(UNET, dropout=0.2), "models:/unet-a/1", seed=7, distributed=False)[1]


def test_a_unet_of_another_shape_or_family_is_refused_naming_both(store):
    _register(store, "unet-b", _unet(), UNET_SERVING)
    with pytest.raises(ValueError, match=r"unet-b:1 is a U-Net with base_channels 4, depth 2; this config "
                                         r"builds one with base_channels 8, depth 3"):
        initial_unet(replace(UNET, base_channels=8, depth=3), "models:/unet-b@champion", seed=0,
                     distributed=False)
    _register(store, "classifier-b", build_classifier("efficientcellnet", num_classes=2, in_channels=1,
                                                            options=CLASSIFIER.options), CLASSIFIER_SERVING.as_dict())
    with pytest.raises(LookupError, match="classifier-b:1 is a classifier model, not a unet"):
        initial_unet(UNET, "models:/classifier-b@champion", seed=0, distributed=False)
    with pytest.raises(ValueError, match="not supported under distributed training"):
        initial_unet(UNET, "models:/unet-b@champion", seed=0, distributed=True)


def test_an_unknown_model_version_or_alias_is_refused_listing_what_exists(store):
    _register(store, "unet-c", _unet(), UNET_SERVING)
    with pytest.raises(LookupError, match=r"unet-c has no version with alias 'best'; its aliases: champion \(v1\)"):
        initial_unet(UNET, "models:/unet-c@best", seed=0, distributed=False)
    with pytest.raises(LookupError, match="unet-c has no version 4; its versions: 1"):
        load_init_weights(store, "models:/unet-c/4", "unet")
    with pytest.raises(LookupError, match="no registered model 'unet-ct'.*registered models: .*unet-c"):
        load_init_weights(store, "models:/unet-ct@champion", "unet")
    # What a config may say is checked when it is read, before any store is opened.
    with pytest.raises(ValueError, match="name the version, models:/NAME@ALIAS or models:/NAME/VERSION"):
        initial_unet(UNET, "models:/unet-c", seed=0, distributed=False)
    with pytest.raises(ValueError, match=r"init 'imagenet': choose one of \['scratch'\] or a registered version"):
        initial_unet(UNET, "imagenet", seed=0, distributed=False)
    with pytest.raises(ValueError, match="name the version"):
        MaskRCNNModelSpec(init="models:/cellops-maskrcnn@")


def test_a_classifier_starts_from_the_registered_weights_head_included(store):
    registered = build_classifier("efficientcellnet", num_classes=2, in_channels=1, options=CLASSIFIER.options, seed=3)
    _register(store, "classifier-d", registered, CLASSIFIER_SERVING.as_dict(),
              version_tags={tags.ARCHITECTURE: "efficientcellnet"})
    spec = replace(CLASSIFIER, init="models:/classifier-d@champion")
    model, run_tags, parent = initial_classifier("tiny", spec, CLASSIFIER_SERVING, seed=0, source_backbone=None)
    assert parent == "classifier-d:1" and _same_weights(model, registered)
    assert run_tags[tags.INIT] == "models:/classifier-d@champion" and run_tags[tags.INIT_USED] == parent
    # Other classes, another architecture, other options: refused, naming both.
    with pytest.raises(ValueError, match=r"classifier-d:1 is a classifier with classes \['ec', 'other'\]; "
                                         r"this config builds one with classes \['ec', 'mesenchymal', 'other'\]"):
        initial_classifier("tiny", spec, replace(CLASSIFIER_SERVING, classes=("ec", "mesenchymal", "other")), 0, None)
    with pytest.raises(ValueError, match="with architecture efficientcellnet; this config builds one with "
                                         "architecture resnet18"):
        initial_classifier("tiny", replace(spec, architecture="resnet18"), CLASSIFIER_SERVING, 0, None)
    with pytest.raises(ValueError, match=r"classifier-d:1's weights do not fit the model this config builds: "
                                         r"\d+ tensors differ"):
        initial_classifier("tiny", replace(spec, options={"widths": [8, 24], "blocks_per_stage": 1}),
                           CLASSIFIER_SERVING, 0, None)


def test_a_maskrcnn_starts_from_the_registered_weights_of_its_backbone_and_categories(store):
    registered = build_maskrcnn(MASKRCNN, 2, seed=3)
    serving = MaskRCNNServing(tile_size=64, tile_overlap=16, categories={1: "colony"}).as_dict()
    _register(store, "maskrcnn-e", registered, serving, version_tags={tags.ARCHITECTURE: "maskrcnn_resnet18_fpn"})
    spec = MaskRCNNModelSpec(init="models:/maskrcnn-e/1")
    net, init_used, parent = initial_maskrcnn("tiny", spec, MASKRCNN, COLONY, seed=0, source_model=None)
    assert init_used == parent == "maskrcnn-e:1" and _same_weights(net, registered)
    with pytest.raises(ValueError, match=r"maskrcnn-e:1 is a Mask R-CNN with categories \{'1': 'colony'\}; "
                                         r"this config builds one with categories \{'1': 'nucleus'\}"):
        initial_maskrcnn("tiny", spec, MASKRCNN, [{"id": 1, "name": "nucleus"}], 0, None)
    with pytest.raises(ValueError, match=r"maskrcnn-e:1's weights do not fit .* e\.g\. backbone\.fpn"):
        initial_maskrcnn("tiny", spec, replace(MASKRCNN, fpn_channels=8), COLONY, 0, None)


def test_the_parent_reaches_the_registered_version_and_cellops_lineage(store, capsys):
    _register(store, "cellops-unet", _unet(seed=1), UNET_SERVING, score=0.5)
    # A training run started from version 1 records its parent; the version registered from it inherits it.
    version = _register(store, "cellops-unet", _unet(seed=2), UNET_SERVING, score=0.6,
                        run_tags=tags.lineage_to_tags({tags.PARENT_MODEL: "cellops-unet:1"}))
    record = lineage(store, f"cellops-unet:{version}")
    assert record[tags.PARENT_MODEL] == "cellops-unet:1"
    assert "  parent model    cellops-unet:1" in format_lineage(record).splitlines()
    assert main(["lineage", "cellops-unet@champion", "--tracking-uri", store]) == 0
    assert "parent model    cellops-unet:1" in capsys.readouterr().out
    # A version trained from scratch has none.
    assert tags.PARENT_MODEL not in lineage(store, "cellops-unet:1")
