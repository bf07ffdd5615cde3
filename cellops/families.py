"""The model families cellops trains and serves, and the record each one stores in the model registry.

Every family is a package ``cellops/<family>/`` with the same modules (see ``docs/adding-a-family.md``); its
``specs.<Family>Serving`` (a :class:`cellops.config.ServingRecord`) is the only thing written to and read from the
registry, and carries the family's name.
"""

from __future__ import annotations

from collections.abc import Mapping

from cellops.config import ServingRecord

#: The families, in the order the docs and the CLI list them.
FAMILIES = ("unet", "classifier", "maskrcnn")


def serving_type(family: str) -> type[ServingRecord]:
    """The ``<Family>Serving`` class of ``family``.

    Parameters
    ----------
    family : str
        One of :data:`FAMILIES`.

    Returns
    -------
    type[ServingRecord]
        The family's serving-settings class.

    Examples
    --------
    >>> serving_type("unet").__name__
    'UNetServing'
    """
    if family == "unet":
        from cellops.unet.specs import UNetServing
        return UNetServing
    if family == "classifier":
        from cellops.classifier.specs import ClassifierServing
        return ClassifierServing
    if family == "maskrcnn":
        from cellops.maskrcnn.specs import MaskRCNNServing
        return MaskRCNNServing
    raise LookupError(f"unknown model family {family!r}; cellops has {', '.join(FAMILIES)}")


def record_family(values: Mapping[str, object] | None) -> str:
    """The family of a stored serving record: its ``family`` key; records stored before they carried it are told
    apart by the one key only their family has.

    Parameters
    ----------
    values : Mapping or None
        A serving record as read from the registry.

    Returns
    -------
    str
        One of :data:`FAMILIES`.

    Examples
    --------
    >>> record_family({"family": "maskrcnn"}), record_family({"classes": ["a", "b"]})
    ('maskrcnn', 'classifier')
    """
    values = values or {}
    family = values.get("family")
    if family is None:  # registered before records named their family
        family = ("maskrcnn" if "categories" in values else "classifier" if "classes" in values
                  else "unet" if "tile_size" in values else None)
    if family not in FAMILIES:
        raise LookupError("this model version was registered without the serving settings of a cellops family "
                          f"({', '.join(FAMILIES)}); retrain it with its pipeline")
    return str(family)


def read_serving(values: Mapping[str, object] | None) -> ServingRecord:
    """The typed serving settings of a stored record, whatever its family.

    Parameters
    ----------
    values : Mapping or None
        A serving record as read from the registry.

    Returns
    -------
    ServingRecord
        The family's ``<Family>Serving``.

    Examples
    --------
    >>> read_serving({"family": "unet", "tile_size": 64, "tile_overlap": 0.25, "batch_size": 2,
    ...               "threshold": 0.5}).tile_size
    64
    """
    return serving_type(record_family(values)).from_dict(dict(values or {}))
