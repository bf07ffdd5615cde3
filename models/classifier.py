"""An efficient image classifier for microscopy (hiPSC-derived endothelial cells vs others): inverted-residual
blocks (MobileNetV2-style depthwise-separable convolutions), global average pooling, one linear layer.

Ending in GAP + one linear layer is what makes class-activation maps exact (Zhou et al., 2016): the logit of
class c is the spatial mean of ``sum_k w_ck * feature_k``, so that weighted sum, kept per pixel, shows where the
evidence for c lies (see :func:`models.cam.class_activation_maps`).
"""

from __future__ import annotations

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
