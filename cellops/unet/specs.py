"""What a U-Net config says: the architecture (:class:`Architecture`), the optimisation (:class:`UNetTraining`)
and how a trained U-Net is applied (:class:`UNetServing`, the record stored with every registered version)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch

from cellops.config import FromMapping, ServingRecord
from cellops.intensity import LEGACY, Normalization
from cellops.registered_init import check_init, check_same
from cellops.tiling import overlap_from_fraction

#: How a U-Net may start besides a registered version (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``).
INITS = ("scratch",)


@dataclass(frozen=True)
class Architecture(FromMapping):
    """U-Net shape (see :class:`models.unet.UNet`).

    Attributes
    ----------
    in_channels : int
        Channels of the input image (1 for grey-level EM).
    out_channels : int
        Channels of the output logits (1 for a binary foreground map).
    base_channels : int
        Feature channels of the first encoder level, doubled at every level below.
    depth : int
        Number of down-sampling steps; tiles must be a multiple of ``2 ** depth``.
    dropout : float
        Dropout probability in the bottleneck.

    Examples
    --------
    >>> Architecture.from_dict({"in_channels": 1, "out_channels": 1, "base_channels": 16, "depth": 4,
    ...                         "dropout": 0.1}).depth
    4
    """

    in_channels: int
    out_channels: int
    base_channels: int
    depth: int
    dropout: float

    def shape(self) -> dict[str, int]:
        """What decides the shapes of the weights (dropout does not): :func:`unet_shape` of a trained U-Net.

        Returns
        -------
        dict of str to int
            ``in_channels``, ``out_channels``, ``base_channels`` and ``depth``.
        """
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "base_channels": self.base_channels, "depth": self.depth}


def unet_shape(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The :meth:`Architecture.shape` of a :class:`models.unet.UNet`, read from its weights (a registered version
    records no architecture).

    Parameters
    ----------
    state_dict : Mapping of str to torch.Tensor
        A U-Net's weights.

    Returns
    -------
    dict of str to int
        ``in_channels``, ``out_channels``, ``base_channels`` and ``depth``.

    Raises
    ------
    ValueError
        When the weights are not a U-Net's.

    Examples
    --------
    >>> from models.unet import UNet
    >>> unet_shape(UNet(in_channels=1, out_channels=2, base_channels=4, depth=3).state_dict())
    {'in_channels': 1, 'out_channels': 2, 'base_channels': 4, 'depth': 3}
    """
    try:
        first, head = state_dict["encoders.0.0.weight"], state_dict["head.weight"]
    except KeyError as error:
        raise ValueError(f"these weights are not a U-Net's (no {error.args[0]})") from None
    depth = len({key.split(".")[1] for key in state_dict if key.startswith("decoders.")})
    return {"in_channels": int(first.shape[1]), "out_channels": int(head.shape[0]),
            "base_channels": int(first.shape[0]), "depth": depth}


def check_unet_init(init: str) -> None:
    """Raise a ``ValueError`` unless ``init`` is ``scratch`` or a registered version
    (:func:`cellops.registered_init.check_init`).

    Parameters
    ----------
    init : str
        The training step's ``init``.

    Examples
    --------
    >>> check_unet_init("models:/cellops-unet@champion")
    """
    check_init(init, INITS)


def check_parent_architecture(parent: str, state_dict: Mapping[str, torch.Tensor], architecture: Architecture) -> None:
    """Raise a ``ValueError`` naming both when a registered U-Net's weights are of another shape than the config's
    architecture (another depth, base_channels or channel count).

    Parameters
    ----------
    parent : str
        The registered version, ``NAME:VERSION``.
    state_dict : Mapping of str to torch.Tensor
        Its weights.
    architecture : Architecture
        The config's.

    Examples
    --------
    >>> from models.unet import UNet
    >>> weights = UNet(base_channels=4, depth=2).state_dict()
    >>> check_parent_architecture("cellops-unet:3", weights, Architecture(1, 1, 4, 2, 0.1))
    >>> check_parent_architecture("cellops-unet:3", weights, Architecture(1, 1, 8, 2, 0.0))
    Traceback (most recent call last):
    ValueError: cellops-unet:3 is a U-Net with base_channels 4; this config builds one with base_channels 8: ...
    """
    check_same(parent, unet_shape(state_dict), architecture.shape(), "U-Net")


@dataclass(frozen=True)
class UNetTraining(FromMapping):
    """Optimisation settings; every field comes from the YAML config (no second set of defaults here).

    Attributes
    ----------
    epochs : int
        Passes over the training patches.
    batch_size : int
        Patches per optimiser step.
    learning_rate : float
        Peak learning rate of the schedule.
    weight_decay : float
        AdamW weight decay.
    dice_weight : float
        Weight of the Dice term in the Dice + BCE loss.
    warmup_fraction : float
        Fraction of the steps over which the learning rate ramps up linearly.
    seed : int
        Seed of torch, numpy and the patch sampler.
    device : str
        Torch device to train on (``"cpu"``, ``"cuda"``).
    threads : int
        Torch CPU threads; 0 leaves torch's default.
    """

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    dice_weight: float
    warmup_fraction: float
    seed: int
    device: str
    threads: int  # 0: leave torch's default


@dataclass(frozen=True)
class UNetServing(ServingRecord):
    """How a U-Net is applied to an image larger than its tiles.

    Attributes
    ----------
    tile_size : int
        Side of the square tiles (a multiple of ``2 ** depth`` of the U-Net).
    tile_overlap : int
        Least number of pixels a tile shares with its neighbour, in ``[0, tile_size)``
        (:func:`cellops.tiling.tile_starts`). A float in (0, 1) is read as a fraction of ``tile_size`` (the form of
        records registered with a fractional overlap) and converted to the pixels that lay the same tiles,
        :func:`cellops.tiling.overlap_from_fraction`: ``round(fraction * tile_size)`` when that is a whole number
        of pixels (0.25 of 128 is 32).
    batch_size : int
        Tiles per forward pass.
    threshold : float
        Foreground probability from which a pixel is mitochondrion (>=, as it was chosen on validation).
    flip_averaging : bool, optional
        Average the probabilities of the image and its three flips (test-time augmentation; the
        U-Net is trained on flipped patches, so the four views are equally valid; four times the compute).
    z_smoothing : int, optional
        For stacks, average each slice's probabilities with its neighbours over this many slices
        (odd; 1 = off): mitochondria are 3-D, a 2-D U-Net's slice-to-slice noise is not.
    normalization : Normalization, optional
        How intensities are scaled, for a 2-D image or a whole stack at once
        (:class:`cellops.intensity.Normalization`; training patches are cut from volumes scaled the same way).

    Examples
    --------
    >>> UNetServing(tile_size=128, tile_overlap=0.25, batch_size=4, threshold=0.5).tile_overlap
    32
    """

    family: ClassVar[str] = "unet"

    tile_size: int
    tile_overlap: int
    batch_size: int
    threshold: float
    flip_averaging: bool = False  # defaults only so that versions registered before these existed still load
    z_smoothing: int = 1
    normalization: Normalization = LEGACY  # versions registered before it was a setting were trained on dtype scaling

    def __post_init__(self) -> None:
        object.__setattr__(self, "normalization", Normalization.coerce(self.normalization))
        if self.tile_size < 8:
            raise ValueError(f"tile_size must be at least 8, got {self.tile_size}")
        if isinstance(self.tile_overlap, float) and 0.0 < self.tile_overlap < 1.0:
            object.__setattr__(self, "tile_overlap", overlap_from_fraction(self.tile_overlap, self.tile_size))
        if self.tile_overlap != int(self.tile_overlap) or not 0 <= self.tile_overlap < self.tile_size:
            raise ValueError(f"tile_overlap must be a whole number of pixels in [0, tile_size {self.tile_size}) "
                             f"(or a fraction in (0, 1)), got {self.tile_overlap}")
        object.__setattr__(self, "tile_overlap", int(self.tile_overlap))
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.z_smoothing < 1 or self.z_smoothing % 2 == 0:
            raise ValueError(f"z_smoothing must be an odd number of slices (1 = off), got {self.z_smoothing}")
