"""Class-activation maps (Zhou et al., 2016) of a classifier that ends in global average pooling + one linear layer.

For such a model the logit of class c is ``mean_xy(sum_k w_ck f_k(x, y)) + b_c``; the per-pixel sum is the class
activation map. It comes out of one forward pass for the whole batch (no gradients), which is why plain CAM is
much cheaper than Grad-CAM on these models.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def resize_maps(maps: torch.Tensor, size: tuple[int, int], normalise: bool = True) -> torch.Tensor:
    """Maps (N, h, w) at feature resolution resized bilinearly to (N, *size), scaled to [0, 1] per map when
    ``normalise`` (the post-processing of :func:`class_activation_maps`).

    Examples
    --------
    >>> maps = resize_maps(torch.tensor([[[0.0, 2.0], [2.0, 4.0]]]), (4, 4))
    >>> maps.shape, float(maps.min()), float(maps.max())
    (torch.Size([1, 4, 4]), 0.0, 1.0)
    """
    maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalise_maps(maps) if normalise else maps


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each map (N, H, W) scaled to [0, 1]: its minimum to 0, its maximum to 1.

    Examples
    --------
    >>> normalise_maps(torch.tensor([[[1.0, 3.0]]]))
    tensor([[[0., 1.]]])
    """
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return (maps - low) / (high - low).clamp_min(1e-12)


def resize_matrix(source: int, target: int) -> torch.Tensor:
    """The (target, source) matrix of torch's linear resizing along one axis (``align_corners=False``): bilinear
    resizing of maps ``m`` (N, h, w) is ``resize_matrix(h, H) @ m @ resize_matrix(w, W).T``, the same weights as
    :func:`resize_maps`, as two matrix products (what an exported graph runs fastest: OpenVINO's Interpolate took
    2.7 ms for 32 maps of 6x6 to 96x96 on 2 cores, the products a tenth of that).

    Examples
    --------
    >>> maps = torch.rand(2, 3, 5)
    >>> resized = resize_matrix(3, 12) @ maps @ resize_matrix(5, 20).T
    >>> bool(torch.allclose(resized, resize_maps(maps, (12, 20), normalise=False), atol=1e-6))
    True
    """
    identity = torch.eye(source)[:, None, :]  # (source, 1, source): each row a unit impulse
    return F.interpolate(identity, size=target, mode="linear", align_corners=False)[:, 0, :].T.contiguous()


@torch.inference_mode()
def class_activation_maps(model: nn.Module, images: torch.Tensor, classes: torch.Tensor | None = None, *,
                          normalise: bool = True, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CAMs of ``images`` (N, C, H, W) for ``classes`` (N,), by default each image's predicted class.

    ``model`` needs ``feature_maps(x)`` (the features before pooling) and a ``classifier`` linear layer, as
    :class:`models.classifier.EfficientCellNet` has, or a ``class_activation_maps`` method of this signature that
    computes the same (a model whose CAM path runs in an exported graph). Returns the maps resized to (N, H, W) (or
    to ``size``) — scaled to [0, 1] per image when ``normalise`` (significant regions near 1, trivial ones near 0) —
    and the logits (N, classes).

    Examples
    --------
    >>> from models.classifier import EfficientCellNet
    >>> net = EfficientCellNet(in_channels=1, num_classes=2).eval()
    >>> maps, logits = class_activation_maps(net, torch.rand(3, 1, 64, 64))
    >>> maps.shape, logits.shape, bool(maps.min() >= 0) and bool(maps.max() <= 1)
    (torch.Size([3, 64, 64]), torch.Size([3, 2]), True)
    """
    own = getattr(model, "class_activation_maps", None)
    if own is not None:
        return own(images, classes, normalise=normalise, size=size)
    features = model.feature_maps(images)  # (N, K, h, w)
    weights = model.classifier.weight  # (classes, K)
    logits = model.classifier(features.mean(dim=(2, 3)))
    chosen = logits.argmax(dim=1) if classes is None else classes.to(logits.device)
    maps = torch.einsum("nk,nkhw->nhw", weights[chosen], features)
    return resize_maps(maps, size or tuple(images.shape[-2:]), normalise), logits
