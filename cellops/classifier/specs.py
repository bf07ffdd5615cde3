"""What a classifier config says: each model to train (:class:`ClassifierModelSpec`: architecture, how it starts,
its options), the optimisation (:class:`ClassifierTraining`) and how a trained classifier is applied
(:class:`ClassifierServing`, the record stored with every registered version)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

import numpy as np

from cellops.config import FromMapping, ServingRecord
from cellops.intensity import LEGACY, Normalization
from cellops.registered_init import check_init, check_same, registered_init
from models.classifier import ARCHITECTURES, imagenet_weights_file

INITS = ("scratch", "imagenet", "source")


@dataclass(frozen=True)
class ClassifierModelSpec(FromMapping):
    """One entry of the config's ``models`` mapping.

    ``init``: ``scratch`` (random weights), ``imagenet`` (torchvision architectures; the local file
    ``weights_file`` or torchvision's file in ``$TORCH_HOME/hub/checkpoints``, else random weights, as the log and
    the run's tags say), ``source`` (the backbone pretrained on the project's own source task; the architecture
    must be the source task's) or a registered version, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (the
    whole network, head included: same architecture, options, channels and classes). ``options`` go to the
    architecture (EfficientCellNet's widths...); ``training`` overrides the shared training settings for this model
    only.

    Attributes
    ----------
    architecture : str
        One of :data:`models.classifier.ARCHITECTURES`.
    init : str
        How the weights start: one of :data:`INITS`, or a registered version.
    options : dict, optional
        Keyword arguments of the architecture.
    weights_file : str or None, optional
        Local ImageNet weights file (``init: imagenet``).
    training : dict, optional
        Overrides of :class:`ClassifierTraining` fields for this model.

    Examples
    --------
    >>> ClassifierModelSpec.from_dict({"architecture": "efficientcellnet", "init": "scratch"}).options
    {}
    """

    architecture: str
    init: str
    options: dict = field(default_factory=dict)
    weights_file: str | None = None
    training: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        check_init(self.init, INITS)
        if self.init == "imagenet" and self.architecture == "efficientcellnet":
            raise ValueError("efficientcellnet has no ImageNet weights; use init: source (in-project pretraining)")


def parse_models(models: dict[str, dict]) -> dict[str, ClassifierModelSpec]:
    """The config's ``models`` mapping as specs, errors naming the model.

    Parameters
    ----------
    models : dict of str to dict
        Model name to its :class:`ClassifierModelSpec` fields.

    Returns
    -------
    dict of str to ClassifierModelSpec
        The specs, by model name.

    Raises
    ------
    ValueError
        When ``models`` is empty or an entry is invalid (the message starts with ``models.<name>``).

    Examples
    --------
    >>> parse_models({"tiny": {"architecture": "efficientcellnet", "init": "scratch"}})["tiny"].init
    'scratch'
    >>> parse_models({"tiny": {"architecture": "nope", "init": "scratch"}})
    Traceback (most recent call last):
    ValueError: models.tiny: unknown architecture 'nope'; choose one of ...
    """
    if not models:
        raise ValueError("the config names no model to train (parameters.models is empty)")
    specs = {}
    for name, values in models.items():
        try:
            specs[name] = ClassifierModelSpec.from_dict(values)
        except ValueError as error:
            raise ValueError(f"models.{name}: {error}") from error
    return specs


def initial_weights(spec: ClassifierModelSpec) -> tuple[Path | None, str]:
    """The local ImageNet weights file a spec starts from (None otherwise) and the init that really applies:
    ``imagenet`` without a local file falls back to ``scratch`` (nothing is downloaded); a registered version's
    network is built as from ``scratch``, then gets that version's weights (the training step loads them).

    Parameters
    ----------
    spec : ClassifierModelSpec
        The model's spec.

    Returns
    -------
    weights : Path or None
        The ImageNet weights file, None unless the init is ``imagenet`` and the file is there.
    init : str
        The init that applies.

    Examples
    --------
    >>> initial_weights(ClassifierModelSpec("efficientcellnet", "scratch"))
    (None, 'scratch')
    """
    if spec.init != "imagenet":
        return None, "scratch" if registered_init(spec.init) else spec.init
    weights = imagenet_weights_file(spec.architecture, spec.weights_file)
    return weights, ("imagenet" if weights is not None else "scratch")


def check_parent_classifier(parent: str, architecture: str | None, record: dict | None, spec: ClassifierModelSpec,
                            classes: tuple[str, ...], channels: int) -> None:
    """Raise a ``ValueError`` naming both when a registered classifier has another architecture, classes or input
    channels than the model the config builds (other options show tensor by tensor when its weights load,
    :func:`cellops.registered_init.load_parent_state`).

    Parameters
    ----------
    parent : str
        The registered version, ``NAME:VERSION``.
    architecture : str or None
        Its ``architecture`` tag; None when it records none.
    record : dict or None
        Its serving record (:meth:`ClassifierServing.as_dict`); None when it records none.
    spec : ClassifierModelSpec
        The configured model.
    classes : tuple of str
        The training data's classes, in the model's output order.
    channels : int
        The configured input channels.

    Examples
    --------
    >>> spec = ClassifierModelSpec("efficientcellnet", "models:/cellops-classifier@champion")
    >>> record = {"classes": ["ec", "other"], "channels": 1}
    >>> check_parent_classifier("cellops-classifier:4", "efficientcellnet", record, spec, ("ec", "other"), 1)
    >>> check_parent_classifier("cellops-classifier:4", "resnet18", record, spec, ("ec", "other"), 1)
    Traceback (most recent call last):
    ValueError: cellops-classifier:4 is a classifier with architecture resnet18; this config builds one with architecture efficientcellnet: ...
    """
    record = record or {}
    registered = {"architecture": architecture,
                  "classes": list(record["classes"]) if "classes" in record else None,
                  "channels": record.get("channels")}
    check_same(parent, registered, {"architecture": spec.architecture, "classes": list(classes), "channels": channels},
               "classifier")


@dataclass(frozen=True)
class ClassifierTraining(FromMapping):
    """Optimisation settings; every field comes from the YAML config.

    Attributes
    ----------
    epochs : int
        Passes over the training images.
    batch_size : int
        Images per optimiser step.
    learning_rate : float
        Peak learning rate of the schedule.
    weight_decay : float
        AdamW weight decay.
    label_smoothing : float
        Label smoothing of the cross-entropy loss.
    warmup_fraction : float
        Fraction of the steps over which the learning rate ramps up.
    seed : int
        Seed of the weights, shuffling and augmentation.
    device : str
        Torch device to train on.
    threads : int
        Torch CPU threads; 0 leaves torch's default.
    """

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    label_smoothing: float
    warmup_fraction: float
    seed: int
    device: str
    threads: int  # 0: leave torch's default


@dataclass(frozen=True)
class ClassifierServing(ServingRecord):
    """How images reach the model, stored with every registered version (so the CLI and the service prepare
    images exactly as training did).

    Attributes
    ----------
    classes : tuple of str
        Class names, in the order of the model's outputs.
    positive_class : str
        The class of interest (one of ``classes``), scored by ROC and the operating point.
    channels : int
        Input channels, 1 or 3.
    size : int
        Side of the square model input (at least 8).
    batch_size : int
        Images per forward pass.
    normalization : Normalization, optional
        How intensities are scaled (:class:`cellops.intensity.Normalization`).
    decision_threshold : float or None, optional
        The operating point: an image is ``positive_class`` when that class's probability reaches it (chosen on
        the validation split); ``None``: the most probable class.
    """

    family: ClassVar[str] = "classifier"

    classes: tuple[str, ...]
    positive_class: str
    channels: int
    size: int
    batch_size: int
    normalization: Normalization = LEGACY
    decision_threshold: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "normalization", Normalization.coerce(self.normalization))
        if self.decision_threshold is not None and not 0.0 < self.decision_threshold < 1.0:
            raise ValueError(f"decision_threshold must lie in (0, 1), got {self.decision_threshold}")
        if self.positive_class not in self.classes:
            raise ValueError(f"positive class {self.positive_class!r} is not one of the classes {list(self.classes)}")
        if self.channels not in (1, 3) or self.size < 8 or self.batch_size < 1:
            raise ValueError(f"channels must be 1 or 3, size >= 8 and batch_size >= 1 (got {self.channels}, "
                             f"{self.size}, {self.batch_size})")

    @property
    def positive(self) -> int:
        return self.classes.index(self.positive_class)

    def predicted_classes(self, probabilities: np.ndarray) -> np.ndarray:
        """The class index of each row of ``probabilities`` (N, classes) at the stored operating point.

        Parameters
        ----------
        probabilities : np.ndarray
            Class probabilities (N, classes).

        Returns
        -------
        np.ndarray
            Predicted class index of each row: ``positive`` when its probability reaches ``decision_threshold``,
            else the most probable other class (without a threshold: the most probable class).

        Examples
        --------
        >>> s = ClassifierServing(("ec", "other"), "ec", 1, 8, 1, decision_threshold=0.3)
        >>> s.predicted_classes(np.array([[0.35, 0.65], [0.2, 0.8]])).tolist()
        [0, 1]
        """
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if self.decision_threshold is None:
            return probabilities.argmax(axis=1)
        others = probabilities.copy()
        others[:, self.positive] = -np.inf
        return np.where(probabilities[:, self.positive] >= self.decision_threshold, self.positive,
                        others.argmax(axis=1))

    @classmethod
    def _from_json(cls, values: dict) -> dict:
        return {**values, "classes": tuple(values.get("classes", ()))}

    def as_dict(self) -> dict:
        """The record as stored: JSON types (lists, the normalisation as a mapping), with ``family``.

        Returns
        -------
        dict
            The mapping :meth:`from_dict` reads back.

        Examples
        --------
        >>> record = ClassifierServing(("ec", "other"), "ec", 1, 8, 1).as_dict()
        >>> record["family"], record["classes"], ClassifierServing.from_dict(record).classes
        ('classifier', ['ec', 'other'], ('ec', 'other'))
        """
        return {**super().as_dict(), "classes": list(self.classes), "normalization": self.normalization.as_dict()}
