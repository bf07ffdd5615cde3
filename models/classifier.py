"""An efficient image classifier for microscopy (hiPSC-derived endothelial cells vs others): inverted-residual
blocks (MobileNetV2-style depthwise-separable convolutions), global average pooling, one linear layer.

Ending in GAP + one linear layer is what makes class-activation maps exact (Zhou et al., 2016): the logit of
class c is the spatial mean of ``sum_k w_ck * feature_k``, so that weighted sum, kept per pixel, shows where the
evidence for c lies (see :func:`models.cam.class_activation_maps`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class ConvBNAct(nn.Sequential):
    """Convolution, batch normalisation, ReLU6 (the activation inverted residuals use)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1), filter (3x3 depthwise), project (1x1, linear); a skip connection when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = [] if expansion == 1 else [ConvBNAct(in_channels, hidden, 1)]
        layers += [ConvBNAct(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class EfficientCellNet(nn.Module):
    """A small classifier: a stem, stages of inverted residuals (each halving the resolution), GAP, linear.

    Parameters
    ----------
    in_channels : 1 for grey images, 3 for RGB.
    num_classes : number of classes (2 for EC vs non-EC).
    widths : output channels of the stem and of each stage.
    blocks_per_stage : inverted residual blocks per stage (the first one strides by 2).
    expansion : channel expansion inside a block.
    dropout : before the linear layer.

    Examples
    --------
    >>> net = EfficientCellNet(in_channels=1, num_classes=2)
    >>> net(torch.zeros(2, 1, 96, 96)).shape
    torch.Size([2, 2])
    >>> sum(p.numel() for p in net.parameters()) < 1_000_000
    True
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, widths: tuple[int, ...] = (16, 24, 32, 64, 96),
                 blocks_per_stage: int = 2, expansion: int = 4, dropout: float = 0.2) -> None:
        super().__init__()
        if len(widths) < 2 or num_classes < 2:
            raise ValueError(f"need a stem and at least one stage and two classes, got widths={widths}, "
                             f"num_classes={num_classes}")
        layers: list[nn.Module] = [ConvBNAct(in_channels, widths[0], 3, stride=2)]
        for previous, width in zip(widths, widths[1:]):
            for i in range(blocks_per_stage):
                layers.append(InvertedResidual(previous if i == 0 else width, width, 2 if i == 0 else 1, expansion))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional features (N, C, h, w), before global average pooling."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.flatten(self.pool(self.feature_maps(x)), 1)))


class GapClassifier(nn.Module):
    """A torchvision backbone seen as ``features -> GAP -> linear``, the shape class-activation maps need.

    ResNet18 and DenseNet121 already end that way; this wrapper names the two parts (``feature_maps`` and
    ``classifier``) so that :func:`models.cam.class_activation_maps` treats them like :class:`EfficientCellNet`.
    Grey input is repeated to the three channels the backbone (and its ImageNet weights) expect, and normalised
    with ImageNet's statistics.
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, features: nn.Module, classifier: nn.Linear, in_channels: int) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"torchvision backbones take 1 (grey, repeated) or 3 channels, not {in_channels}")
        self.in_channels = in_channels
        self.features = features
        self.classifier = classifier
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.features((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.feature_maps(x).mean(dim=(2, 3)), 1))


#: Architectures :func:`build_classifier` knows, and the torchvision weights enum of each ImageNet one.
ARCHITECTURES = ("efficientcellnet", "resnet18", "densenet121")
IMAGENET_WEIGHTS = {"resnet18": "ResNet18_Weights.IMAGENET1K_V1", "densenet121": "DenseNet121_Weights.IMAGENET1K_V1"}


def imagenet_weights_file(architecture: str, configured: str | None = None) -> Path | None:
    """The local file of ``architecture``'s ImageNet weights: ``configured`` when given (it must exist), else
    torchvision's own file name in ``$TORCH_HOME/hub/checkpoints`` if a user put it there; None when there is none
    (nothing is ever downloaded)."""
    import torchvision

    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: configured ImageNet weights file for {architecture} does not exist")
        return path
    if architecture not in IMAGENET_WEIGHTS:
        return None
    url = torchvision.models.get_weight(IMAGENET_WEIGHTS[architecture]).url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return path if path.is_file() else None


def _torchvision_backbone(architecture: str, state_dict: dict | None) -> tuple[nn.Module, nn.Linear]:
    import torchvision

    if architecture == "resnet18":
        net = torchvision.models.resnet18(weights=None)
        if state_dict is not None:
            net.load_state_dict(state_dict)
        features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                                 net.layer4)
        return features, net.fc
    if architecture == "densenet121":
        net = torchvision.models.densenet121(weights=None)
        if state_dict is not None:
            # ImageNet checkpoints use the old "norm.1"-style keys; torchvision's own loader renames them the same way.
            import re

            pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
            state_dict = {pattern.sub(r"\1\2", key): value for key, value in state_dict.items()}
            net.load_state_dict(state_dict)
        # DenseNet's forward applies a ReLU after the last norm, before pooling.
        return nn.Sequential(net.features, nn.ReLU(inplace=False)), net.classifier
    raise ValueError(f"unknown torchvision architecture {architecture!r}")


def build_classifier(architecture: str, *, num_classes: int, in_channels: int, options: dict | None = None,
                     imagenet_weights: str | Path | None = None, seed: int = 0) -> nn.Module:
    """A classifier of one of :data:`ARCHITECTURES` for ``num_classes`` classes, ending in GAP + one linear layer.

    ``options`` are :class:`EfficientCellNet`'s keyword arguments (ignored by the torchvision models).
    ``imagenet_weights`` is a local state-dict file for a torchvision architecture (see
    :func:`imagenet_weights_file`); without it the backbone starts from random weights. The final linear layer
    is always new (``num_classes`` outputs). Initialisation is seeded.

    Examples
    --------
    >>> net = build_classifier("resnet18", num_classes=2, in_channels=1)
    >>> net(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 2])
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    torch.manual_seed(seed)
    if architecture == "efficientcellnet":
        if imagenet_weights is not None:
            raise ValueError("efficientcellnet has no ImageNet weights; use init: source for in-project pretraining")
        options = dict(options or {})
        if "widths" in options:
            options["widths"] = tuple(options["widths"])
        return EfficientCellNet(in_channels=in_channels, num_classes=num_classes, **options)
    state_dict = None
    if imagenet_weights is not None:
        state_dict = torch.load(imagenet_weights, map_location="cpu", weights_only=True)
    features, head = _torchvision_backbone(architecture, state_dict)
    return GapClassifier(features, nn.Linear(head.in_features, num_classes), in_channels)


def transfer_features(target: nn.Module, source: nn.Module) -> list[str]:
    """Copy ``source.features`` weights into ``target.features`` (the classifier head stays new); returns the
    names of the tensors copied. Raises when the two backbones differ in shape (a source task pretrained with
    another architecture)."""
    source_state = source.features.state_dict()
    target_state = target.features.state_dict()
    mismatched = [k for k in target_state if k not in source_state or source_state[k].shape != target_state[k].shape]
    if mismatched:
        raise ValueError(f"the pretrained backbone does not fit this architecture: {len(mismatched)} tensors differ "
                         f"(first: {mismatched[0]})")
    target.features.load_state_dict(source_state)
    return list(source_state)
