"""The classifier family's library: scores against hand-computed values, the split, the seeded augmentation,
CAM on a constructed example, the torchvision models with local weights, transfer, training and prediction."""

import numpy as np
import pytest
import torch
from torch import nn

from cellops.classifier.cost import count_macs, count_parameters
from cellops.classifier.data import Augmentation, augment_batch, build_augmentation, epoch_batches, stratified_split
from cellops.classifier.metrics import classification_scores
from cellops.classifier.specs import ClassifierModelSpec, parse_models
from cellops.classifier.predict import cam_overlay, classify_files
from cellops.classifier.specs import ClassifierServing
from cellops.classifier.train import fit, predict_probabilities
from cellops.classifier.specs import ClassifierTraining
from cellops.io import encode_image
from models.cam import class_activation_maps
from models.classifier import GapClassifier, build_classifier, imagenet_weights_file, transfer_features

AUG = Augmentation(flip=True, rotate90=True, brightness=0.2, contrast=0.2, blur_sigma=1.0, noise_sigma=0.02)


def test_scores_match_hand_computed_values():
    # 10 images, positive class 1: 4 positives of which 3 found; 6 negatives of which 1 called positive.
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p1 = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1, 0.35, 0.05])
    s = classification_scores(np.stack([1 - p1, p1], axis=1), labels, positive=1)
    assert s.accuracy == pytest.approx(8 / 10)
    assert s.sensitivity == pytest.approx(3 / 4) and s.specificity == pytest.approx(5 / 6)
    assert s.precision == pytest.approx(3 / 4) and s.f1 == pytest.approx(0.75)
    # AUC: of the 24 positive-negative pairs, the positive scores higher in 22 (0.4 < 0.6 and 0.4 < ... no: 0.4
    # beats 0.3, 0.2, 0.1, 0.35, 0.05 but not 0.6) -> 23/24.
    assert s.roc_auc == pytest.approx(23 / 24)
    expected_loss = -np.mean(np.log(np.where(labels == 1, p1, 1 - p1)))
    assert s.loss == pytest.approx(expected_loss)
    assert s.confusion == [[5, 1], [1, 3]] and s.n == 10
    # Sensitivity follows the positive class, whichever index it has.
    flipped = classification_scores(np.stack([p1, 1 - p1], axis=1), 1 - labels, positive=0)
    assert flipped.sensitivity == s.sensitivity and flipped.specificity == s.specificity


def test_scores_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match="need probabilities"):
        classification_scores(np.ones((3, 2)) / 2, np.array([0, 1]), positive=1)
    with pytest.raises(ValueError, match="positive class 2"):
        classification_scores(np.ones((2, 2)) / 2, np.array([0, 1]), positive=2)


def test_split_is_stratified_seeded_and_keeps_identical_pictures_together():
    labels = [0] * 30 + [1] * 20
    groups = [f"g{i}" for i in range(50)]
    groups[3] = groups[4] = groups[5] = "same-picture"
    split = stratified_split(labels, groups, val_fraction=0.2, test_fraction=0.2, seed=1)
    assert len({split[3], split[4], split[5]}) == 1
    for label, n in ((0, 30), (1, 20)):
        chosen = split[np.asarray(labels) == label]
        assert abs(np.sum(chosen == "test") - 0.2 * n) <= 2 and np.sum(chosen == "val") >= 1
    assert np.array_equal(split, stratified_split(labels, groups, val_fraction=0.2, test_fraction=0.2, seed=1))
    assert not np.array_equal(split, stratified_split(labels, groups, val_fraction=0.2, test_fraction=0.2, seed=2))
    with pytest.raises(ValueError, match="must leave images to train on"):
        stratified_split(labels, groups, val_fraction=0.5, test_fraction=0.5, seed=0)


def test_augmentation_is_reproducible_per_seed_and_leaves_the_global_generator_alone():
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    transform = build_augmentation(AUG)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a, b = augment_batch(images, transform, seed=3), augment_batch(images, transform, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, augment_batch(images, transform, seed=4))
    assert torch.equal(torch.get_rng_state(), before)
    assert a.shape == images.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    batches = [b.tolist() for _, b in epoch_batches(10, 4, seed=0, epoch=0)]
    assert sorted(sum(batches, [])) == list(range(10)) and [len(b) for b in batches] == [4, 4, 2]
    assert [len(b) for _, b in epoch_batches(9, 4, seed=0, epoch=0)] == [4, 4]  # a batch of one is dropped


class _BrightnessNet(nn.Module):
    """Features = the image at half resolution; class 1's weight is +1, class 0's -1: its CAM is the image."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.classifier = nn.Linear(1, 2)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.classifier.bias.zero_()

    def feature_maps(self, x):
        return self.pool(x)

    def forward(self, x):
        return self.classifier(self.feature_maps(x).mean(dim=(2, 3)))


def test_cam_highlights_the_discriminative_region_of_every_image_in_the_batch():
    images = torch.zeros(3, 1, 32, 32)
    corners = [(2, 2), (20, 6), (12, 22)]
    for image, (y, x) in zip(images, corners):
        image[0, y:y + 8, x:x + 8] = 1.0
    maps, logits = class_activation_maps(_BrightnessNet(), images, torch.ones(3, dtype=torch.long))
    assert maps.shape == (3, 32, 32) and logits.shape == (3, 2)
    for cam, (y, x) in zip(maps, corners):
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[y:y + 8, x:x + 8] = True
        peak = divmod(int(cam.argmax()), 32)
        assert inside[peak] and cam[inside].mean() > 0.8 and cam[~inside].mean() < 0.1
    against, _ = class_activation_maps(_BrightnessNet(), images, torch.zeros(3, dtype=torch.long))
    assert float(against[0, 4, 4]) == pytest.approx(0.0)  # the bright square is evidence against class 0
    overlay = cam_overlay(images[0].numpy(), maps[0].numpy())
    assert overlay.dtype == np.uint8 and overlay[5, 5, 0] > overlay[5, 5, 2]  # red where significant
    assert overlay[30, 30, 2] > overlay[30, 30, 0]  # blue where trivial


def test_every_architecture_ends_in_gap_and_a_linear_layer_so_cam_applies():
    images = torch.rand(2, 1, 64, 64)
    for architecture in ("efficientcellnet", "resnet18", "densenet121"):
        net = build_classifier(architecture, num_classes=3, in_channels=1, seed=0).eval()
        maps, logits = class_activation_maps(net, images, normalise=False)
        assert maps.shape == (2, 64, 64) and torch.allclose(logits, net(images), atol=1e-4)
    small = build_classifier("efficientcellnet", num_classes=2, in_channels=1, options={"widths": [16, 24, 32, 64]})
    dense = build_classifier("densenet121", num_classes=2, in_channels=1)
    assert count_parameters(small) < 1_000_000 < count_parameters(dense)
    assert count_macs(small, (1, 96, 96)) * 10 < count_macs(dense, (1, 96, 96))


def test_imagenet_weights_are_read_from_a_local_file_only(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert imagenet_weights_file("resnet18") is None  # nothing there, nothing downloaded
    reference = torchvision.models.resnet18(weights=None)
    name = torchvision.models.get_weight("ResNet18_Weights.IMAGENET1K_V1").url.rsplit("/", 1)[-1]
    cached = tmp_path / "torch" / "hub" / "checkpoints" / name
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    assert imagenet_weights_file("resnet18") == cached
    net = build_classifier("resnet18", num_classes=2, in_channels=1, imagenet_weights=cached)
    assert isinstance(net, GapClassifier)
    assert torch.equal(net.features[0].weight, reference.conv1.weight)  # the backbone is the file's
    assert net.classifier.out_features == 2  # the head is new
    with pytest.raises(FileNotFoundError, match="does not exist"):
        imagenet_weights_file("resnet18", str(tmp_path / "nope.pth"))


def test_densenet_checkpoints_with_old_key_names_load():
    import re

    import torchvision

    reference = torchvision.models.densenet121(weights=None)
    old_style = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))(\d)", r"\1.\2", k): v
                 for k, v in reference.state_dict().items()}
    assert any(".norm.1." in k for k in old_style)
    path = __import__("tempfile").mkdtemp() + "/densenet.pth"
    torch.save(old_style, path)
    net = build_classifier("densenet121", num_classes=2, in_channels=1, imagenet_weights=path)
    assert torch.equal(net.features[0].conv0.weight, reference.features.conv0.weight)


def test_transfer_copies_the_backbone_and_refuses_another_shape():
    source = build_classifier("efficientcellnet", num_classes=6, in_channels=1, options={"widths": [8, 16]}, seed=1)
    target = build_classifier("efficientcellnet", num_classes=2, in_channels=1, options={"widths": [8, 16]}, seed=2)
    copied = transfer_features(target, source)
    assert copied and all(torch.equal(a, b) for a, b in zip(target.features.state_dict().values(),
                                                             source.features.state_dict().values()))
    assert target.classifier.out_features == 2
    other = build_classifier("efficientcellnet", num_classes=2, in_channels=1, options={"widths": [8, 24]})
    with pytest.raises(ValueError, match="does not fit"):
        transfer_features(other, source)


def test_model_specs_name_the_bad_entry():
    assert parse_models({"a": {"architecture": "resnet18", "init": "imagenet"}})["a"].weights_file is None
    with pytest.raises(ValueError, match="models.b: unknown architecture 'vgg'"):
        parse_models({"b": {"architecture": "vgg", "init": "scratch"}})
    with pytest.raises(ValueError, match="no ImageNet weights"):
        ClassifierModelSpec(architecture="efficientcellnet", init="imagenet")
    with pytest.raises(ValueError, match="names no model"):
        parse_models({})
    with pytest.raises(ValueError, match="positive class 'ec' is not one of"):
        ClassifierServing.from_dict({"classes": ["a", "b"], "positive_class": "ec", "channels": 1, "size": 32,
                                      "batch_size": 4})


def _toy_set(n, seed):
    """Class 1: a bright bar somewhere; class 0: a bright disc. Same mean brightness."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.3, 0.03, (n, 1, 24, 24)).astype(np.float32)
    labels = np.arange(n) % 2
    yy, xx = np.mgrid[:24, :24]
    for image, label in zip(images, labels):
        y, x = rng.integers(6, 18, 2)
        shape = (np.abs(yy - y) <= 1) & (np.abs(xx - x) <= 5) if label else (yy - y) ** 2 + (xx - x) ** 2 <= 8
        image[0][shape] = 0.9
    return np.clip(images, 0, 1), labels.astype(np.int64)


def test_training_learns_a_toy_task_keeps_the_best_epoch_and_is_reproducible():
    train, val = _toy_set(128, 0), _toy_set(32, 1)
    config = ClassifierTraining(epochs=8, batch_size=16, learning_rate=0.01, weight_decay=0.0, label_smoothing=0.0,
                                warmup_fraction=0.2, seed=0, device="cpu", threads=0)
    histories, weights = [], []
    for _ in range(2):
        net = build_classifier("efficientcellnet", num_classes=2, in_channels=1, options={"widths": [8, 16, 24]}, seed=0)
        seen = []
        histories.append(fit(net, train, val, config, build_augmentation(AUG), positive=1,
                             on_epoch_end=lambda epoch, m: seen.append((epoch, m["val_accuracy"]))))
        weights.append(net.state_dict())
        assert [e for e, _ in seen] == list(range(8))
    history = histories[0]
    assert history.val_accuracy[history.best_epoch] == max(history.val_accuracy)
    assert max(history.val_accuracy) >= 0.9
    assert histories[0].train_loss == histories[1].train_loss  # same seed, same batches, same augmentation
    probabilities = predict_probabilities(net, val[0], batch_size=8)
    assert probabilities.shape == (32, 2) and np.allclose(probabilities.sum(axis=1), 1)


def test_an_interrupted_fit_resumes_to_the_weights_and_curves_of_an_uninterrupted_one(tmp_path):
    train, val = _toy_set(64, 0), _toy_set(16, 1)
    config = ClassifierTraining(epochs=4, batch_size=16, learning_rate=0.01, weight_decay=0.0, label_smoothing=0.1,
                                warmup_fraction=0.2, seed=0, device="cpu", threads=0)

    def net():
        # Dropout draws from torch's global generator: the checkpoint must restore it for the same weights.
        return build_classifier("efficientcellnet", num_classes=2, in_channels=1,
                                options={"widths": [8, 16], "dropout": 0.2}, seed=0)

    whole = net()
    expected = fit(whole, train, val, config, build_augmentation(AUG), positive=1, checkpoint_dir=tmp_path / "whole")

    class Interrupted(Exception):
        pass

    def stop_after(last):
        def report(epoch, metrics):
            reported.append((epoch, metrics))
            if epoch == last:
                raise Interrupted
        return report

    def interrupted(last, settings=config, **options):
        reported.clear()
        with pytest.raises(Interrupted):
            fit(net(), train, val, settings, build_augmentation(AUG), positive=1, on_epoch_end=stop_after(last),
                checkpoint_dir=tmp_path / "resumed", **options)
        return list(reported)

    reported = []
    assert [e for e, _ in interrupted(1)] == [0, 1]
    # resume=False starts over whatever is saved (here: after epoch 1), and replaces it.
    first = interrupted(0, resume=False)
    assert [e for e, _ in first] == [0]
    # Other settings start afresh in a folder of their own, leaving this one's checkpoint alone.
    assert [e for e, _ in interrupted(0, ClassifierTraining(**{**vars(config), "epochs": 5}))] == [0]
    assert len(list((tmp_path / "resumed").iterdir())) == 2
    resumed = net()
    again = []
    history = fit(resumed, train, val, config, build_augmentation(AUG), positive=1, checkpoint_dir=tmp_path / "resumed",
                  on_epoch_end=lambda epoch, metrics: again.append((epoch, metrics)))
    assert history.resumed_from_epoch == 0 and history.val_loss == expected.val_loss
    assert history.best_epoch == expected.best_epoch
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    # The epoch done before the interruption is reported again, as it was: the new run has the whole curve.
    assert [e for e, _ in again] == [0, 1, 2, 3] and again[0] == first[0]


def test_classify_files_names_bad_files_and_goes_on(tmp_path):
    net = build_classifier("efficientcellnet", num_classes=2, in_channels=1, options={"widths": [8, 16]}).eval()
    good = tmp_path / "good.png"
    good.write_bytes(encode_image(np.full((40, 50), 120, np.uint8), "png"))
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture")
    settings = ClassifierServing(classes=("ec", "other"), positive_class="ec", channels=1, size=32, batch_size=4)
    rows, failures, cams, _ = classify_files(net, [bad, good, tmp_path / "missing.tif"], settings, with_cams=True)
    assert [r["file"] for r in rows] == [str(good)] and rows[0]["label"] in ("ec", "other")
    assert rows[0]["p_ec"] + rows[0]["p_other"] == pytest.approx(1)
    assert {p.name for p, _ in failures} == {"bad.png", "missing.tif"} and cams.shape == (1, 32, 32)


def test_maps_are_drawn_for_the_class_the_operating_point_decides():
    from cellops.classifier.predict import explain
    from cellops.classifier.specs import ClassifierServing
    from models.cam import class_activation_maps
    from models.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier("efficientcellnet", num_classes=2, in_channels=1).eval()
    images = np.random.default_rng(0).random((4, 1, 32, 32), dtype=np.float32)
    # One batch of 4: an untrained network's maps are nearly flat, so per-image scaling magnifies the last-digit
    # differences that another batch size (another kernel) would bring.
    probabilities, default_maps = explain(model, images, 4)
    other = 1 - probabilities.argmax(axis=1)  # an operating point that decides the other class for every image
    _, maps = explain(model, images, 4, decide=lambda p: 1 - p.argmax(axis=1))
    with torch.no_grad():
        expected = class_activation_maps(model, torch.from_numpy(images), torch.from_numpy(other))[0].numpy()
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    assert not np.allclose(maps, default_maps, atol=1e-3)
    settings = ClassifierServing(("ec", "other"), "ec", 1, 32, 4, decision_threshold=0.99)
    assert settings.predicted_classes(np.array([[0.98, 0.02]])).tolist() == [1]  # below the point: not "ec"
