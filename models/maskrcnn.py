"""Mask R-CNN (torchvision) for instance segmentation of colonies and nuclei, with a configurable backbone.

``resnet50`` is the lab's ResNet-50-FPN; ``resnet18``/``resnet34`` and ``mobilenet_v3_large`` are lighter ones for
CPUs. The FPN width, the box and mask heads, the anchor sizes, the input scale and the number of detections per
image are settings (:class:`MaskRCNNSettings`), so a small CPU model and the full-size one share one code path.

Weights are only ever read from local files: torchvision's COCO Mask R-CNN checkpoint (ResNet-50-FPN) or an
ImageNet backbone checkpoint, configured or found under ``$TORCH_HOME/hub/checkpoints``. Without one the model
starts from random weights, with trainable batch norm (frozen batch norm only makes sense for pretrained
statistics).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

#: Backbones and the torchvision weights enum of their ImageNet checkpoint.
BACKBONES = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "mobilenet_v3_large": "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
}
#: torchvision's COCO-trained Mask R-CNN (ResNet-50-FPN only).
COCO_WEIGHTS = "MaskRCNN_ResNet50_FPN_Weights.COCO_V1"


@dataclass(frozen=True)
class MaskRCNNSettings:
    """Architecture and inference settings of one Mask R-CNN (from the YAML config; stored with the model).

    Attributes
    ----------
    backbone : a key of :data:`BACKBONES`.
    fpn_channels : width of the feature pyramid (256 in the paper; 128 or 64 make a CPU model several times faster).
    representation_size : width of the box head's two fully connected layers.
    mask_head_layers : convolutions in the mask head (each ``fpn_channels`` wide).
    anchor_sizes : one anchor size per pyramid level, in pixels of the model input (five levels for ResNets,
        three for MobileNetV3); small objects need small anchors.
    min_size, max_size : the model resizes each image so its short side is ``min_size`` (long side at most
        ``max_size``): a scale below 1 trades small-object detail for speed.
    detections_per_image : kept after non-maximum suppression (torchvision's default 100 is too few for a field
        of nuclei).
    score_threshold : detections below this score are dropped.
    rpn_post_nms_train, rpn_post_nms_test : proposals kept per image.
    box_batch_size_per_image : RoIs sampled per image to train the box head.
    trainable_layers : backbone stages trained when starting from pretrained weights (5: all).
    """

    backbone: str = "resnet18"
    fpn_channels: int = 256
    representation_size: int = 1024
    mask_head_layers: int = 4
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    min_size: int = 512
    max_size: int = 512
    detections_per_image: int = 300
    score_threshold: float = 0.05
    rpn_post_nms_train: int = 2000
    rpn_post_nms_test: int = 1000
    box_batch_size_per_image: int = 512
    trainable_layers: int = 5

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {sorted(BACKBONES)}")
        levels = 3 if self.backbone.startswith("mobilenet") else 5
        if len(self.anchor_sizes) != levels:
            raise ValueError(f"{self.backbone} has {levels} pyramid levels: give {levels} anchor_sizes, "
                             f"not {len(self.anchor_sizes)}")
        if self.detections_per_image < 1 or self.min_size < 32 or self.max_size < self.min_size:
            raise ValueError("detections_per_image must be >= 1, min_size >= 32 and max_size >= min_size")
        object.__setattr__(self, "anchor_sizes", tuple(int(s) for s in self.anchor_sizes))

    def as_dict(self) -> dict:
        return {**asdict(self), "anchor_sizes": list(self.anchor_sizes)}


def local_weights_file(enum_name: str, configured: str | None = None) -> Path | None:
    """The local file of torchvision weights ``enum_name``: ``configured`` when given (it must exist), else
    torchvision's own file name in ``$TORCH_HOME/hub/checkpoints``; None when there is none (nothing is
    downloaded)."""
    import torchvision

    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the configured weights file does not exist")
        return path
    url = torchvision.models.get_weight(enum_name).url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return path if path.is_file() else None


def _backbone(settings: MaskRCNNSettings, imagenet_state: dict | None) -> nn.Module:
    import torchvision
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    pretrained = imagenet_state is not None
    norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    trainable = settings.trainable_layers if pretrained else 5
    if settings.backbone.startswith("resnet"):
        net = getattr(torchvision.models, settings.backbone)(weights=None, norm_layer=norm_layer)
        if pretrained:
            net.load_state_dict(imagenet_state)
        stages = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
        for name, parameter in net.named_parameters():
            parameter.requires_grad_(any(name.startswith(stage) for stage in stages) or not pretrained)
        in_channels = [net.inplanes // 8, net.inplanes // 4, net.inplanes // 2, net.inplanes]
        return BackboneWithFPN(net, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}, in_channels,
                               settings.fpn_channels, extra_blocks=LastLevelMaxPool(), norm_layer=None)
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor

    net = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=norm_layer)
    if pretrained:
        net.load_state_dict(imagenet_state)
    backbone = _mobilenet_extractor(net, True, trainable if pretrained else 6, norm_layer=None)
    # torchvision fixes the MobileNet FPN at 256 channels; rebuild it at the configured width.
    if settings.fpn_channels != backbone.out_channels:
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

        in_channels = [block[0].in_channels for block in backbone.fpn.inner_blocks]
        backbone.fpn = FeaturePyramidNetwork(in_channels, settings.fpn_channels, extra_blocks=LastLevelMaxPool())
        backbone.out_channels = settings.fpn_channels
    return backbone


def build_maskrcnn(settings: MaskRCNNSettings, num_classes: int, *, imagenet_weights: Path | None = None,
                   coco_weights: Path | None = None, seed: int = 0) -> nn.Module:
    """A torchvision Mask R-CNN with ``num_classes`` classes (background included).

    ``coco_weights`` (torchvision's COCO checkpoint, ResNet-50 with the paper's head sizes) initialise everything
    but the class-specific predictors; ``imagenet_weights`` initialise the backbone only; neither: random weights.

    Examples
    --------
    >>> model = build_maskrcnn(MaskRCNNSettings(backbone="resnet18", fpn_channels=64, min_size=128, max_size=128), 2)
    >>> model.roi_heads.detections_per_img
    300
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead

    if num_classes < 2:
        raise ValueError(f"num_classes counts the background: at least 2, got {num_classes}")
    if coco_weights is not None and (settings.backbone != "resnet50" or settings.fpn_channels != 256
                                     or settings.representation_size != 1024 or settings.mask_head_layers != 4):
        raise ValueError("COCO Mask R-CNN weights fit backbone resnet50 with fpn_channels 256, representation_size "
                         "1024 and mask_head_layers 4 only")
    torch.manual_seed(seed)
    imagenet_state = None
    if imagenet_weights is not None and coco_weights is None:
        imagenet_state = torch.load(imagenet_weights, map_location="cpu", weights_only=True)
    backbone = _backbone_for_coco(settings) if coco_weights is not None else _backbone(settings, imagenet_state)
    channels = settings.fpn_channels
    anchors = AnchorGenerator(tuple((size,) for size in settings.anchor_sizes),
                              ((0.5, 1.0, 2.0),) * len(settings.anchor_sizes))
    model = MaskRCNN(
        backbone, num_classes=None, min_size=settings.min_size, max_size=settings.max_size,
        rpn_anchor_generator=anchors, rpn_head=RPNHead(channels, 3),
        rpn_post_nms_top_n_train=settings.rpn_post_nms_train, rpn_post_nms_top_n_test=settings.rpn_post_nms_test,
        box_head=TwoMLPHead(channels * 7 * 7, settings.representation_size),
        box_predictor=FastRCNNPredictor(settings.representation_size, num_classes),
        box_batch_size_per_image=settings.box_batch_size_per_image,
        box_detections_per_img=settings.detections_per_image, box_score_thresh=settings.score_threshold,
        mask_head=MaskRCNNHeads(channels, [channels] * settings.mask_head_layers, 1),
        mask_predictor=MaskRCNNPredictor(channels, channels, num_classes),
    )
    if coco_weights is not None:
        skipped = load_matching(model, torch.load(coco_weights, map_location="cpu", weights_only=True))
        if any(name.startswith("backbone.") for name in skipped):
            raise ValueError(f"{coco_weights} is not torchvision's COCO Mask R-CNN checkpoint: its backbone does not "
                             f"fit (e.g. {next(n for n in skipped if n.startswith('backbone.'))})")
    return model


def _backbone_for_coco(settings: MaskRCNNSettings) -> nn.Module:
    """A ResNet-50-FPN shaped like torchvision's COCO model (frozen batch norm), weights loaded afterwards."""
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models import resnet50
    from torchvision.ops import FrozenBatchNorm2d

    return _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), settings.trainable_layers)


def load_matching(model: nn.Module, state_dict: dict) -> list[str]:
    """Load every tensor of ``state_dict`` whose name and shape match ``model``'s; return the names skipped (e.g.
    the class-specific predictors of another dataset, or the heads of another backbone)."""
    own = model.state_dict()
    kept = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(kept, strict=False)
    return sorted(set(own) - set(kept))


def transfer_weights(model: nn.Module, source: nn.Module) -> list[str]:
    """Initialise ``model`` from another Mask R-CNN (e.g. pretrained on nuclei): backbone, FPN, RPN and heads,
    all but the class-specific predictors when the class counts differ. Returns what was not transferred."""
    own, theirs = model.state_dict(), source.state_dict()
    misfits = [k for k in own if k.startswith("backbone.") and (k not in theirs or theirs[k].shape != own[k].shape)]
    if misfits:
        raise ValueError(f"the source model's backbone does not fit this model's (another backbone or FPN width): "
                         f"{len(misfits)} tensors differ, e.g. {misfits[0]}")
    return load_matching(model, theirs)


@dataclass(frozen=True)
class InitialWeights:
    """What a model starts from: ``kind`` scratch|imagenet|coco|source, and the file used (if any)."""

    kind: str = "scratch"
    imagenet: Path | None = None
    coco: Path | None = None
    notes: list[str] = field(default_factory=list)


def find_initial_weights(init: str, backbone: str, weights_file: str | None = None) -> InitialWeights:
    """Resolve ``init`` (scratch, imagenet, coco or source) to local files. ``imagenet``/``coco`` without a local
    file fall back to scratch, with a note saying so (nothing is downloaded)."""
    if init in ("scratch", "source"):
        return InitialWeights(kind=init)
    if init == "coco":
        path = local_weights_file(COCO_WEIGHTS, weights_file)
        if path is not None:
            return InitialWeights(kind="coco", coco=path)
        return InitialWeights(notes=[f"no local COCO Mask R-CNN weights (weights_file, or torchvision's file in "
                                     f"$TORCH_HOME/hub/checkpoints): {backbone} starts from random weights"])
    if init == "imagenet":
        path = local_weights_file(BACKBONES[backbone], weights_file)
        if path is not None:
            return InitialWeights(kind="imagenet", imagenet=path)
        return InitialWeights(notes=[f"no local ImageNet weights for {backbone} (weights_file, or torchvision's "
                                     "file in $TORCH_HOME/hub/checkpoints): random weights (weights=None)"])
    raise ValueError(f"unknown init {init!r}: choose scratch, imagenet, coco or source")
