"""Starting a model from a registered version: a config's ``init: models:/NAME@ALIAS`` or
``models:/NAME/VERSION`` (the URIs ``cellops predict --model`` takes), and the checks that the version's weights
fit the model the config builds, made before training starts.

Every family uses these: its ``specs`` accept such an ``init`` (:func:`check_init`) and compare the parent's
architecture with the config's (:func:`check_same`, naming both); :func:`load_parent_state` then loads the
parent's tensors into the configured model, refusing any that is missing or shaped otherwise. Reading the version
from the MLflow registry is :func:`tracking.registry.load_init_weights` (this package never imports MLflow).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

#: What starts an ``init`` that names a registered version.
REGISTRY_PREFIX = "models:/"
#: Buffers that a network with frozen batch norm (started from ImageNet or COCO weights) does not have: they count
#: the batches seen and carry no weights, so a parent without them still fits.
COUNTERS = "num_batches_tracked"


def registered_init(init: str) -> bool:
    """Whether ``init`` names a registered version (``models:/...``) rather than a built-in initialisation.

    Parameters
    ----------
    init : str
        A config's ``init``.

    Returns
    -------
    bool
        True for ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION``.

    Examples
    --------
    >>> registered_init("models:/cellops-unet@champion"), registered_init("scratch")
    (True, False)
    """
    return init.startswith(REGISTRY_PREFIX)


def check_init(init: str, choices: Sequence[str]) -> None:
    """Raise a ``ValueError`` unless ``init`` is one of ``choices`` or names a registered version:
    ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/NAME/latest``.

    Parameters
    ----------
    init : str
        A config's ``init``.
    choices : sequence of str
        The family's built-in initialisations (``scratch``...).

    Raises
    ------
    ValueError
        Naming ``init`` and what it may be.

    Examples
    --------
    >>> check_init("models:/cellops-unet/3", ["scratch"])
    >>> check_init("models:/cellops-unet", ["scratch"])
    Traceback (most recent call last):
    ValueError: init 'models:/cellops-unet': name the version, models:/NAME@ALIAS or models:/NAME/VERSION
    """
    if init in choices:
        return
    if not registered_init(init):
        raise ValueError(f"init {init!r}: choose one of {list(choices)} or a registered version, "
                         "models:/NAME@ALIAS or models:/NAME/VERSION")
    path = init.removeprefix(REGISTRY_PREFIX)
    name, separator, ref = next(((*path.partition(s),) for s in ("@", "/") if s in path), (path, "", ""))
    if not name or not separator or not ref or "/" in ref:
        raise ValueError(f"init {init!r}: name the version, models:/NAME@ALIAS or models:/NAME/VERSION")


def check_same(parent: str, registered: Mapping[str, object], configured: Mapping[str, object], what: str) -> None:
    """Raise a ``ValueError`` naming both when the parent's settings differ from the config's (keys the parent
    does not record, None, are not compared).

    Parameters
    ----------
    parent : str
        The registered version, ``NAME:VERSION``.
    registered : Mapping of str to object
        What the parent is (architecture, classes...).
    configured : Mapping of str to object
        The same keys for the model the config builds.
    what : str
        The kind of model, for the message (``U-Net``...).

    Raises
    ------
    ValueError
        ``<parent> is a <what> with <its values>; this config builds one with <the config's>``.

    Examples
    --------
    >>> check_same("cellops-unet:3", {"depth": 4}, {"depth": 4}, "U-Net")
    >>> check_same("cellops-unet:3", {"depth": 3, "base_channels": 8}, {"depth": 4, "base_channels": 8}, "U-Net")
    Traceback (most recent call last):
    ValueError: cellops-unet:3 is a U-Net with depth 3; this config builds one with depth 4: configure the parent's architecture, or start from scratch
    """
    differ = [key for key in configured if registered.get(key) is not None and registered[key] != configured[key]]
    if differ:
        def describe(values: Mapping[str, object]) -> str:
            return ", ".join(f"{key} {values[key]}" for key in differ)

        raise ValueError(f"{parent} is a {what} with {describe(registered)}; this config builds one with "
                         f"{describe(configured)}: configure the parent's architecture, or start from scratch")


def load_parent_state(model: torch.nn.Module, parent: str, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load every tensor of the parent into ``model``, after checking that each of the model's tensors is in the
    parent with the same shape and the parent has no other (batch counters excepted, :data:`COUNTERS`).

    Parameters
    ----------
    model : torch.nn.Module
        The model the config builds.
    parent : str
        The registered version, ``NAME:VERSION``, for the message.
    state_dict : Mapping of str to torch.Tensor
        The parent's weights.

    Raises
    ------
    ValueError
        Naming the parent, how many tensors do not fit and the first of them with both shapes; ``model`` is
        left as it was.

    Examples
    --------
    >>> model = torch.nn.Linear(2, 1)
    >>> load_parent_state(model, "m:1", {"weight": torch.ones(1, 2), "bias": torch.zeros(1)})
    >>> model.weight.tolist()
    [[1.0, 1.0]]
    >>> load_parent_state(model, "m:1", {"weight": torch.ones(1, 3), "bias": torch.zeros(1)})
    Traceback (most recent call last):
    ValueError: m:1's weights do not fit the model this config builds: 1 tensors differ, e.g. weight: (1, 3) in m:1, (1, 2) in the config's model
    """
    own = model.state_dict()
    wanted = {key for key in own if not key.endswith(COUNTERS)}
    given = {key for key in state_dict if not key.endswith(COUNTERS)}
    misfits = sorted(key for key in wanted & given if tuple(state_dict[key].shape) != tuple(own[key].shape))
    missing, extra = sorted(wanted - given), sorted(given - wanted)
    if misfits or missing or extra:
        examples = [f"{key}: {tuple(state_dict[key].shape)} in {parent}, {tuple(own[key].shape)} in the config's "
                    "model" for key in misfits[:1]]
        examples += [f"{key} only in the config's model" for key in missing[:1]]
        examples += [f"{key} only in {parent}" for key in extra[:1]]
        raise ValueError(f"{parent}'s weights do not fit the model this config builds: "
                         f"{len(misfits) + len(missing) + len(extra)} tensors differ, e.g. {'; '.join(examples)}")
    model.load_state_dict({key: value for key, value in state_dict.items() if key in own}, strict=False)
