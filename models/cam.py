"""Class-activation maps (Zhou et al., 2016) of a classifier that ends in global average pooling + one linear layer.

For such a model the logit of class c is ``mean_xy(sum_k w_ck f_k(x, y)) + b_c``; the per-pixel sum is the class
activation map. It comes out of one forward pass for the whole batch (no gradients), which is why plain CAM is
much cheaper than Grad-CAM on these models.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


@torch.inference_mode()
def class_activation_maps(model: nn.Module, images: torch.Tensor, classes: torch.Tensor | None = None, *,
                          normalise: bool = True, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CAMs of ``images`` (N, C, H, W) for ``classes`` (N,), by default each image's predicted class.

    ``model`` needs ``feature_maps(x)`` (the features before pooling) and a ``classifier`` linear layer, as
    :class:`models.classifier.EfficientCellNet` has. Returns the maps resized to (N, H, W) (or to ``size``) — scaled to [0, 1] per
    image when ``normalise`` (significant regions near 1, trivial ones near 0) — and the logits (N, classes).

    Examples
    --------
    >>> from models.classifier import EfficientCellNet
    >>> net = EfficientCellNet(in_channels=1, num_classes=2).eval()
    >>> maps, logits = class_activation_maps(net, torch.rand(3, 1, 64, 64))
    >>> maps.shape, logits.shape, bool(maps.min() >= 0) and bool(maps.max() <= 1)
    (torch.Size([3, 64, 64]), torch.Size([3, 2]), True)
    """
    features = model.feature_maps(images)  # (N, K, h, w)
    weights = model.classifier.weight  # (classes, K)
    logits = model.classifier(features.mean(dim=(2, 3)))
    chosen = logits.argmax(dim=1) if classes is None else classes.to(logits.device)
    maps = torch.einsum("nk,nkhw->nhw", weights[chosen], features)
    maps = F.interpolate(maps[:, None], size=size or images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    if normalise:
        low = maps.amin(dim=(1, 2), keepdim=True)
        high = maps.amax(dim=(1, 2), keepdim=True)
        maps = (maps - low) / (high - low).clamp_min(1e-12)
    return maps, logits
