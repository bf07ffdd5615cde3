"""The Mask R-CNN family's library: augmentation keeps boxes and masks aligned, COCO AP and F1 against
hand-computed values, tiled prediction equals whole-image prediction, label images and tables, the model builder,
and a training run that resumes from its checkpoint."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision import tv_tensors

from cellops.intensity import Normalization
from cellops.maskrcnn.data import (InstanceAugmentation, InstanceDataset, build_instance_augmentation, model_image, network_picture,
                                   tidy_target)
from cellops.maskrcnn.train import fit, warmup_cosine
from cellops.maskrcnn.specs import MaskRCNNTraining
from cellops.maskrcnn.evaluation import coco_ap, evaluate_instances, match_f1
from cellops.maskrcnn.predict import crop_instance, instance_table, label_image, predict_image, predict_instances, predict_tiled
from cellops.tiling import tile_starts
from cellops.maskrcnn.specs import MaskRCNNServing
from cellops.maskrcnn.specs import parse_models
from models.maskrcnn import MaskRCNNSettings, build_maskrcnn, find_initial_weights, transfer_weights

TINY = MaskRCNNSettings(backbone="resnet18", fpn_channels=16, representation_size=32, mask_head_layers=1,
                        min_size=64, max_size=64, anchor_sizes=(8, 16, 32, 64, 128), rpn_post_nms_train=50,
                        rpn_post_nms_test=50, box_batch_size_per_image=32)


def _sample(size=64):
    image = torch.rand(3, size, size)
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 5:20, 8:30] = 1
    masks[1, 35:60, 40:50] = 1
    image[:, masks[0].bool()] += 1
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([[8, 5, 30, 20], [40, 35, 50, 60]]), format="XYXY",
                                                canvas_size=(size, size)),
              "masks": tv_tensors.Mask(masks), "labels": torch.tensor([1, 1]), "image_id": 1}
    return tv_tensors.Image(image), target


def test_augmentation_moves_boxes_and_masks_with_the_image():
    torch.manual_seed(0)
    augment = build_instance_augmentation(InstanceAugmentation(flip=True, rotate90=True, scale=(0.8, 1.2), crop=48,
                                                               brightness=0.2, contrast=0.2, noise_sigma=0.01))
    dataset = InstanceDataset([_sample()], augment)
    for _ in range(20):
        image, target = dataset[0]
        assert image.shape[-2:] == target["masks"].shape[-2:] == (48, 48)
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = np.nonzero(mask.numpy())
            # The box is the tight box of the mask (exclusive right/bottom edges).
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert len(target["labels"]) == len(target["masks"]) == len(target["boxes"])
    # Without photometric changes the bright instance stays under its mask after any flip or rotation.
    geometric = InstanceDataset([_sample()], build_instance_augmentation(InstanceAugmentation(flip=True, rotate90=True)))
    for _ in range(10):
        image, target = geometric[0]
        bright = target["masks"][0].bool()
        assert image[0][bright].min() >= 1.0 and image[0][~bright].max() < 1.0


def test_instances_cropped_away_are_dropped():
    image, target = _sample()
    target["masks"] = tv_tensors.Mask(torch.stack([target["masks"][0], torch.zeros_like(target["masks"][1])]))
    tidy = tidy_target(target)
    assert len(tidy["masks"]) == len(tidy["boxes"]) == len(tidy["labels"]) == 1


def _square(x, y, side):
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


GT = {"images": [{"id": 1, "height": 100, "width": 100}], "categories": [{"id": 1, "name": "c"}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": _square(10, 10, 20), "area": 400,
                       "bbox": [10, 10, 20, 20]},
                      {"id": 2, "image_id": 1, "category_id": 1, "segmentation": _square(50, 50, 20), "area": 400,
                       "bbox": [50, 50, 20, 20]}]}


def test_coco_ap_matches_a_hand_computed_case():
    # One exact hit (score 0.9), then a false positive (0.8); the second object is missed. Precision is 1 up to
    # recall 0.5 and nothing beyond, so COCO's 101-point AP is 51/101 at every IoU threshold.
    detections = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": _square(10, 10, 20),
                   "bbox": [10, 10, 20, 20]},
                  {"image_id": 1, "category_id": 1, "score": 0.8, "segmentation": _square(80, 5, 10),
                   "bbox": [80, 5, 10, 10]}]
    scores = evaluate_instances(GT, detections, max_detections=300)
    assert scores.mask_ap == scores.mask_ap50 == scores.mask_ap75 == pytest.approx(51 / 101)
    assert scores.box_ap50 == pytest.approx(51 / 101)
    assert (scores.f1_50, scores.precision_50, scores.recall_50) == (0.5, 0.5, 0.5)
    # The false positive ranked first instead: precision 0.5 at recall 0.5, so AP50 = 0.5 * 51/101.
    swapped = [{**detections[0], "score": 0.7}, detections[1]]
    assert coco_ap(GT, [{k: v for k, v in d.items() if k != "bbox"} for d in swapped], "segm", 300)[1] == \
        pytest.approx(0.5 * 51 / 101)
    assert coco_ap(GT, [], "segm", 300) == (0.0, 0.0, 0.0)


def test_ap_counts_every_detection_up_to_the_configured_cap():
    # 150 objects found exactly: a cap of 100 (pycocotools' default) would lose a third of them.
    gt = {"images": [{"id": 1, "height": 400, "width": 400}], "categories": [{"id": 1, "name": "n"}],
          "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": _square(25 * (i % 15) + 2,
                           25 * (i // 15) + 2, 20), "area": 400} for i in range(150)]}
    detections = [{"image_id": 1, "category_id": 1, "score": 1 - i / 1000, "segmentation": a["segmentation"]}
                  for i, a in enumerate(gt["annotations"])]
    assert coco_ap(gt, detections, "segm", 300)[1] == pytest.approx(1.0)
    assert coco_ap(gt, detections, "segm", 100)[1] < 0.7


def test_f1_matches_one_to_one_and_ignores_low_scores():
    # Two detections on one object: one true positive, one false positive.
    double = [{"image_id": 1, "category_id": 1, "score": s, "segmentation": _square(10, 10, 20)} for s in (0.9, 0.8)]
    f1, precision, recall = match_f1(GT, double)
    assert (precision, recall) == (0.5, 0.5) and f1 == 0.5
    assert match_f1(GT, [{**double[0], "score": 0.3}]) == (0.0, 0.0, 0.0)


def _blobs(image):
    labels, n = ndimage.label(image > 0)
    return [crop_instance(labels == i, 1, 1.0 - i / 1000) for i in range(1, n + 1)]


def test_tiled_prediction_equals_whole_image_prediction():
    rng = np.random.default_rng(0)
    image = np.zeros((700, 900), np.uint8)
    for _ in range(60):
        y, x = rng.integers(0, 690), rng.integers(0, 890)
        image[y:y + rng.integers(3, 12), x:x + rng.integers(3, 12)] = 1
    whole = _blobs(image)
    tiled = predict_tiled(_blobs, image, tile=256, overlap=64)
    assert len(tile_starts(900, 256, 64)) > 3  # really tiled
    key = lambda i: (i.box, i.mask.tobytes())  # noqa: E731
    assert sorted(map(key, tiled)) == sorted(map(key, whole))


def test_real_model_tiling_equals_whole_image_where_it_fits_one_tile():
    model = build_maskrcnn(TINY, 2).eval()
    image = (np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)
    settings = MaskRCNNServing(score_threshold=0.0, tile_size=64, tile_overlap=16)
    direct = predict_instances(model, network_picture(image, settings.normalization), settings)
    via_tiles = predict_image(model, image, settings)
    assert [(i.box, i.score) for i in via_tiles] == [(i.box, i.score) for i in direct]


def test_label_image_and_table_describe_the_instances():
    a = crop_instance(np.pad(np.ones((4, 6), bool), ((2, 14), (3, 11))), 1, 0.9)
    b = crop_instance(np.pad(np.ones((5, 5), bool), ((4, 11), (6, 9))), 1, 0.8)  # overlaps a
    labels = label_image([a, b], (20, 20))
    assert labels.dtype == np.uint16 and (labels == 1).sum() == 24 and set(np.unique(labels)) == {0, 1, 2}
    table = instance_table([a, b], {1: "colony"})
    assert table["area"].tolist() == [24, 25] and table["category"].tolist() == ["colony", "colony"]
    assert table.loc[0, ["box_x0", "box_y0", "box_x1", "box_y1"]].tolist() == [3, 2, 9, 6]
    assert table.loc[0, ["centroid_x", "centroid_y"]].tolist() == [5.5, 3.5]
    assert model_image(np.zeros((5, 7, 4), np.uint16), Normalization(mode="dtype")).shape == (3, 5, 7)


def test_model_builder_settings_and_weights():
    model = build_maskrcnn(TINY, 3)
    assert model.roi_heads.detections_per_img == 300 and model.roi_heads.box_predictor.cls_score.out_features == 3
    light = build_maskrcnn(MaskRCNNSettings(backbone="mobilenet_v3_large", fpn_channels=32, anchor_sizes=(16, 32, 64),
                                            min_size=64, max_size=64), 2).eval()
    assert light.backbone.out_channels == 32
    with torch.no_grad():
        assert set(light([torch.rand(3, 64, 64)])[0]) == {"boxes", "labels", "scores", "masks"}
    with pytest.raises(ValueError, match="resnet18 has 5 pyramid levels"):
        MaskRCNNSettings(anchor_sizes=(16, 32))
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        MaskRCNNSettings(backbone="vgg")
    with pytest.raises(ValueError, match="models.b: init 'imagenette'"):
        parse_models({"a": {}, "b": {"init": "imagenette"}}, TINY.as_dict())
    # No local weights: random init, and the note says so (nothing is downloaded).
    found = find_initial_weights("coco", "resnet50")
    assert found.kind == "scratch" and "no local COCO" in found.notes[0]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_initial_weights("imagenet", "resnet18", "/nonexistent/weights.pth")


def test_transfer_copies_everything_but_predictors_of_another_class_count():
    source, target = build_maskrcnn(TINY, 2, seed=1), build_maskrcnn(TINY, 4, seed=2)
    skipped = transfer_weights(target, source)
    assert all("predictor" in name for name in skipped) and skipped
    assert torch.equal(target.backbone.body.conv1.weight, source.backbone.body.conv1.weight)
    other = build_maskrcnn(MaskRCNNSettings(**{**TINY.as_dict(), "fpn_channels": 8}), 2)
    with pytest.raises(ValueError, match="backbone does not fit"):
        transfer_weights(build_maskrcnn(MaskRCNNSettings(backbone="mobilenet_v3_large", fpn_channels=8,
                                                         anchor_sizes=(8, 16, 32), min_size=64, max_size=64), 2), other)


def test_training_resumes_from_its_checkpoint_and_removes_it_when_done(tmp_path):
    samples = [_sample() for _ in range(2)]
    config = MaskRCNNTraining(epochs=3, batch_size=2, learning_rate=0.005, warmup_iterations=1, threads=1)

    def interrupt_in_second_epoch(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt  # e.g. Ctrl-C or a preempted machine, once epoch 1 was checkpointed

    with pytest.raises(KeyboardInterrupt):
        fit(build_maskrcnn(TINY, 2), InstanceDataset(samples), [], {}, config, MaskRCNNServing(),
            checkpoint_dir=tmp_path, on_epoch_end=interrupt_in_second_epoch)
    saved = list(tmp_path.glob("*/last.pt"))  # in a folder named after the settings' fingerprint
    assert len(saved) == 1 and not list(tmp_path.glob("*/last.partial"))
    # resume=False starts afresh, and other settings do too (in a folder of their own).
    epochs = []
    history = fit(build_maskrcnn(TINY, 2), InstanceDataset(samples), [], {}, config, MaskRCNNServing(),
                  checkpoint_dir=tmp_path, on_epoch_end=lambda e, m: epochs.append(e), resume=False)
    assert history.resumed_from_epoch is None and epochs == [0, 1, 2]
    assert not any(tmp_path.iterdir())  # finished: a rerun starts afresh
    with pytest.raises(KeyboardInterrupt):
        fit(build_maskrcnn(TINY, 2), InstanceDataset(samples), [], {}, config, MaskRCNNServing(),
            checkpoint_dir=tmp_path, on_epoch_end=interrupt_in_second_epoch)
    other = MaskRCNNTraining(**{**config.__dict__, "learning_rate": 0.001, "epochs": 1})
    epochs.clear()
    history = fit(build_maskrcnn(TINY, 2), InstanceDataset(samples), [], {}, other, MaskRCNNServing(),
                  checkpoint_dir=tmp_path, on_epoch_end=lambda e, m: epochs.append(e))
    assert history.resumed_from_epoch is None and epochs == [0]
    assert list(tmp_path.glob("*/last.pt")) == saved
    epochs.clear()
    history = fit(build_maskrcnn(TINY, 2), InstanceDataset(samples), [], {}, config, MaskRCNNServing(),
                  checkpoint_dir=tmp_path, on_epoch_end=lambda e, m: epochs.append(e))
    assert history.resumed_from_epoch == 1 and epochs == [0, 1, 2] and len(history.losses) == 3


def test_a_resumed_training_reports_the_whole_curve_and_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    torch.manual_seed(0)
    samples = [_sample() for _ in range(4)]
    config = MaskRCNNTraining(epochs=3, batch_size=2, learning_rate=0.005, warmup_iterations=2, threads=1)

    def train(checkpoint_dir, on_epoch_end):
        model = build_maskrcnn(TINY, 2)
        history = fit(model, InstanceDataset(samples, build_instance_augmentation(InstanceAugmentation(flip=True))),
                      [], {}, config, MaskRCNNServing(), checkpoint_dir=checkpoint_dir, on_epoch_end=on_epoch_end)
        return model.state_dict(), history

    def interrupt_after_first_epoch(epoch, metrics):
        if epoch == 0:
            raise KeyboardInterrupt

    straight, resumed = [], []
    uninterrupted, expected = train(tmp_path / "straight", lambda epoch, metrics: straight.append((epoch, metrics)))
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", interrupt_after_first_epoch)
    # The same command again: resumes after epoch 0, which it reports again, then trains epochs 1 and 2.
    weights, history = train(tmp_path / "resumed", lambda epoch, metrics: resumed.append((epoch, metrics)))
    assert history.resumed_from_epoch == 0 and history.losses == expected.losses

    def without_timing(reports):
        return [(epoch, {k: v for k, v in metrics.items() if k != "epoch_seconds"}) for epoch, metrics in reports]

    assert [e for e, _ in resumed] == [0, 1, 2] and without_timing(resumed) == without_timing(straight)
    # Two steps an epoch, six in all: linear warm-up over two, then a cosine to 1 %; "lr" is the last step's.
    assert [m["lr"] for _, m in straight] == pytest.approx([0.005 * warmup_cosine(i, 2, 6) for i in (1, 3, 5)])
    # Model, optimiser, schedule position, sampler order and augmentation draws all restored: the same weights.
    assert weights.keys() == uninterrupted.keys()
    for name in uninterrupted:
        assert torch.equal(weights[name], uninterrupted[name]), name


def test_the_same_object_from_two_tiles_is_kept_once_and_pictures_are_checked():
    from cellops.io import ImageInputError
    from cellops.maskrcnn.predict import as_picture, suppress_duplicates

    whole = np.zeros((40, 40), bool)
    whole[10:30, 10:30] = True
    shifted = np.roll(whole, 1, axis=1)
    kept = suppress_duplicates([crop_instance(whole, 1, 0.9), crop_instance(shifted, 1, 0.95),
                                crop_instance(shifted, 2, 0.5)])  # another category is not a duplicate
    assert [(k.score, k.category) for k in kept] == [(0.95, 1), (0.5, 2)]
    assert as_picture(np.zeros((1, 30, 40), np.uint16)).shape == (30, 40)  # a one-plane TIFF stack
    with pytest.raises(ImageInputError, match="too small"):
        as_picture(np.zeros((1, 600), np.uint8), source="strip.png")


def test_small_images_are_padded_to_the_tile_size_so_the_scale_stays_the_trained_one():
    model = build_maskrcnn(TINY, 2).eval()
    settings = MaskRCNNServing(score_threshold=0.0, tile_size=64, tile_overlap=16)
    image = (np.random.default_rng(2).random((40, 50)) * 255).astype(np.uint8)
    picture = network_picture(image, settings.normalization)  # normalised once, as a whole, then padded
    canvas = np.empty((64, 64, 3), np.float32)
    canvas[...] = np.median(picture, axis=(0, 1))
    canvas[:40, :50] = picture
    expected = [i for i in (crop_instance(i.full_mask((64, 64))[:40, :50], i.category, i.score)
                            for i in predict_instances(model, canvas, settings)) if i is not None]
    got = predict_image(model, image, settings)
    assert sorted((i.box, round(i.score, 5)) for i in got) == sorted((i.box, round(i.score, 5)) for i in expected)
    assert all(i.box[2] <= 50 and i.box[3] <= 40 for i in got)
