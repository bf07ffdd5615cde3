"""What a pipeline config says about each model to train: architecture, how it starts (random, ImageNet weights
from a local file, or the backbone pretrained in the project) and its own options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cellops.config import FromMapping
from models.classifier import ARCHITECTURES, imagenet_weights_file

INITS = ("scratch", "imagenet", "source")


@dataclass(frozen=True)
class ModelSpec(FromMapping):
    """One entry of the config's ``models`` mapping.

    ``init``: ``scratch`` (random weights), ``imagenet`` (torchvision architectures; the local file
    ``weights_file`` or torchvision's file in ``$TORCH_HOME/hub/checkpoints``, else random weights, as the log and
    the run's tags say) or ``source`` (the backbone pretrained on the project's own source task; the architecture
    must be the source task's). ``options`` go to the architecture (EfficientCellNet's widths...);
    ``training`` overrides the shared training settings for this model only.
    """

    architecture: str
    init: str
    options: dict = field(default_factory=dict)
    weights_file: str | None = None
    training: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.init == "imagenet" and self.architecture == "efficientcellnet":
            raise ValueError("efficientcellnet has no ImageNet weights; use init: source (in-project pretraining)")


def parse_models(models: dict[str, dict]) -> dict[str, ModelSpec]:
    """The config's ``models`` mapping as specs, errors naming the model."""
    if not models:
        raise ValueError("the config names no model to train (parameters.models is empty)")
    specs = {}
    for name, values in models.items():
        try:
            specs[name] = ModelSpec.from_dict(values)
        except ValueError as error:
            raise ValueError(f"models.{name}: {error}") from error
    return specs


def initial_weights(spec: ModelSpec) -> tuple[Path | None, str]:
    """The local ImageNet weights file a spec starts from (None otherwise) and the init that really applies:
    ``imagenet`` without a local file falls back to ``scratch`` (nothing is downloaded)."""
    if spec.init != "imagenet":
        return None, spec.init
    weights = imagenet_weights_file(spec.architecture, spec.weights_file)
    return weights, ("imagenet" if weights is not None else "scratch")
