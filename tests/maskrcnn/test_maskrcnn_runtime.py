"""Mask R-CNN at CPU speed gives torchvision's answers: the vectorised RoIAlign and box head, the RPN convolutions
computed with the exported pyramid, and masks pasted into their own boxes."""

import numpy as np
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from cellops.maskrcnn.heads import FastMultiScaleRoIAlign, roi_align_bilinear
from cellops.maskrcnn.predict import crop_instance, predict_instances
from cellops.maskrcnn.specs import MaskRCNNServing
from models.maskrcnn import MaskRCNNSettings, build_maskrcnn

TINY = MaskRCNNSettings(backbone="resnet18", fpn_channels=16, representation_size=32, mask_head_layers=1,
                        min_size=96, max_size=96, anchor_sizes=(16, 32, 64, 128, 256), score_threshold=0.0,
                        detections_per_image=20)


def _boxes(count: int, extent: float, seed: int) -> torch.Tensor:
    """Boxes of every size, some reaching past the image and some thinner than a feature pixel."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator) * (extent + 40) - 20
    size = torch.rand(count, 2, generator=generator) * extent / 2 + 0.1
    return torch.cat([corner, corner + size], dim=1)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("output_size", [(7, 7), (14, 14)])
def test_roi_align_matches_torchvision_inside_and_outside_the_map(channels_last, output_size):
    feature = torch.randn(1, 8, 30, 26)
    if channels_last:
        feature = feature.contiguous(memory_format=torch.channels_last)
    boxes = _boxes(60, 100.0, seed=1)
    ours = roi_align_bilinear(feature, boxes, 0.25, output_size, 2)
    theirs = roi_align(feature, [boxes], output_size, spatial_scale=0.25, sampling_ratio=2)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < 1e-5


def test_multiscale_pooler_assigns_levels_as_torchvision_does():
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    pyramid = {name: torch.randn(1, 4, 64 // 2 ** i, 64 // 2 ** i) for i, name in enumerate("0123")}
    pyramid["pool"] = torch.randn(1, 4, 2, 2)  # not pooled, as in the model
    boxes = [_boxes(80, 256.0, seed=2).clamp(0, 256)]
    ours = FastMultiScaleRoIAlign(pooler)(pyramid, boxes, [(256, 256)])
    theirs = pooler(pyramid, boxes, [(256, 256)])
    assert (ours - theirs).abs().max() < 1e-5
    assert FastMultiScaleRoIAlign(pooler)(pyramid, [torch.zeros(0, 4)], [(256, 256)]).shape == (0, 4, 7, 7)


def _old_predict_instances(model, picture, settings):
    """Prediction as it was: the model's own forward, full-size masks, thresholded and cropped."""
    tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(picture, -1, 0), dtype=np.float32))
    with torch.no_grad():
        output = model([tensor])[0]
    masks = (output["masks"][:, 0] >= settings.mask_threshold).numpy()
    found = [crop_instance(m, c, s) for m, c, s in zip(masks, output["labels"].tolist(), output["scores"].tolist())]
    return [i for i in found if i is not None]


def test_masks_pasted_into_their_boxes_equal_the_full_size_masks_cropped():
    torch.manual_seed(0)
    model = build_maskrcnn(TINY, 2).eval()
    picture = np.random.default_rng(0).random((100, 90, 3), dtype=np.float32)
    settings = MaskRCNNServing(score_threshold=0.0, tile_size=128, tile_overlap=32, max_detections=20)
    ours, theirs = predict_instances(model, picture, settings), _old_predict_instances(model, picture, settings)
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert (a.box, a.category, a.score) == (b.box, b.category, b.score)
        assert np.array_equal(a.mask, b.mask)


def test_runtime_copy_computes_the_rpn_with_the_pyramid_and_detects_what_torch_detects(tmp_path):
    from cellops.maskrcnn.runtime import PrecomputedRPNHead, export_maskrcnn, with_runtime

    torch.manual_seed(0)
    model = build_maskrcnn(TINY, 2).eval()
    export_maskrcnn(model, [torch.rand(3, 96, 96)], tmp_path)
    served = with_runtime(model, "onnxruntime", tmp_path)
    assert isinstance(served.rpn.head, PrecomputedRPNHead) and model.rpn.head is served.rpn.head.head
    calls = []
    served.rpn.head.head.register_forward_hook(lambda *args: calls.append(1))
    image = torch.rand(3, 80, 96)
    with torch.no_grad():
        expected, got = model([image])[0], served([image])[0]
    assert calls == [1]  # only torch's own forward ran the torch RPN head: the runtime's outputs were used
    assert torch.equal(expected["labels"], got["labels"])
    assert torch.allclose(expected["scores"], got["scores"], atol=1e-4)
    assert torch.allclose(expected["boxes"], got["boxes"], atol=1e-2)

