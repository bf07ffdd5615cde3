"""Configuration mappings (YAML) to typed settings, and configs derived from a main one by overrides.

One way to build settings from a mapping (:func:`from_mapping`): an unknown key and a missing required key are
both named, never a bare ``TypeError``. Derived configs (full-size, test) are the main config with a few
overrides (:func:`deep_merge`), so a tunable added to the main config reaches every derived one.
"""

from __future__ import annotations

import copy
import re
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import yaml

T = TypeVar("T")


def from_mapping(cls: type[T], values: dict | None) -> T:
    """Build the dataclass ``cls`` from a mapping, naming unknown and missing keys.

    Parameters
    ----------
    cls : type
        A dataclass.
    values : dict or None
        Its fields by name (None: no field given).

    Returns
    -------
    T
        The instance.

    Raises
    ------
    ValueError
        Naming the unknown and the missing keys.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Blur:
    ...     sigma: float
    ...     truncate: float = 4.0
    >>> from_mapping(Blur, {"sigma": 2.0})
    Blur(sigma=2.0, truncate=4.0)
    >>> from_mapping(Blur, {"sigmaa": 2.0})
    Traceback (most recent call last):
    ValueError: Blur: unknown keys ['sigmaa'] (known: ['sigma', 'truncate']); missing keys ['sigma']
    """
    values = dict(values or {})
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    missing = [name for name in required if name not in values]
    if unknown or missing:
        problems = ([f"unknown keys {unknown} (known: {sorted(known)})"] if unknown else []) + (
            [f"missing keys {missing}"] if missing else [])
        raise ValueError(f"{cls.__name__}: {'; '.join(problems)}")
    return cls(**values)


class FromMapping:
    """Mixin for settings dataclasses: ``Settings.from_dict(values)`` is :func:`from_mapping` (unknown and missing
    keys named), the one way configs become typed settings."""

    @classmethod
    def from_dict(cls, values: dict | None) -> Self:
        """The settings of a config mapping (:func:`from_mapping`).

        Parameters
        ----------
        values : dict or None
            The fields by name.

        Returns
        -------
        Self
            The settings.
        """
        return from_mapping(cls, values)


class ServingRecord(FromMapping):
    """Base of every family's ``<Family>Serving`` settings: the one record a training pipeline writes to the model
    registry and every reader (service, CLI, batch pipeline, runtime measurement) reads back.

    :meth:`as_dict` carries the family's name, and :meth:`from_dict` takes the record as stored, checks that it
    belongs to this family and turns JSON forms (lists, string keys) back into the typed fields
    (:meth:`_from_json`), so no reader filters or converts keys itself.

    Attributes
    ----------
    family : str
        The family's name (a class variable), written into every record.
    """

    #: The family's name (its package under ``cellops/``), written into every record.
    family: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, values: dict | None) -> Self:
        """The settings of a config or registry mapping; a record of another family, an unknown or a missing key
        is named in the error.

        Parameters
        ----------
        values : dict or None
            The record, with or without ``family``.

        Returns
        -------
        Self
            The typed settings.

        Raises
        ------
        ValueError
            When the record is another family's, or has unknown or missing keys.
        """
        values = dict(values or {})
        family = values.pop("family", cls.family)
        if family != cls.family:
            raise ValueError(f"{cls.__name__}: these are the serving settings of a {family!r} model, "
                             f"not of a {cls.family!r} one")
        return from_mapping(cls, cls._from_json(values))

    @classmethod
    def _from_json(cls, values: dict) -> dict:
        return values

    def as_dict(self) -> dict:
        """The record as stored: JSON types, with ``family``.

        Returns
        -------
        dict
            The mapping :meth:`from_dict` reads back.
        """
        return {"family": self.family, **asdict(self)}  # type: ignore[call-overload]


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in: mappings merge key by key, anything else is replaced.

    Parameters
    ----------
    base : dict
        The main mapping (left as it is).
    override : dict
        What changes.

    Returns
    -------
    dict
        A deep copy of ``base`` with ``override`` merged in.

    Examples
    --------
    >>> deep_merge({"a": {"x": 1, "y": 2}, "b": [1]}, {"a": {"y": 3}, "b": [2]})
    {'a': {'x': 1, 'y': 3}, 'b': [2]}
    """
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def key_paths(mapping: Any, prefix: str = "") -> set[str]:
    """Every dotted key path of a nested mapping (lists are leaves).

    Parameters
    ----------
    mapping : Any
        A nested mapping (anything else has no key).
    prefix : str, optional
        Path of ``mapping`` itself.

    Returns
    -------
    set of str
        The paths.

    Examples
    --------
    >>> sorted(key_paths({"a": {"x": 1}, "b": 2}))
    ['a', 'a.x', 'b']
    """
    if not isinstance(mapping, dict):
        return set()
    paths = set()
    for key, value in mapping.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        paths |= {path} | key_paths(value, path)
    return paths


#: Key of a derived config naming the config it overrides (a path relative to the derived file).
BASE_KEY = "derive_from"
#: Key of a derived config listing dotted paths its values replace whole instead of merging into (e.g.
#: ``parameters.models``: a different set of models), or add (a step its pipeline adds).
REPLACE_KEY = "replace"


def addable_key(key: str) -> bool:
    """Whether a derived config may add ``key`` (a dotted path) that its base lacks: lists and free-form blocks
    (tags, model-card fields, the named models of a comparison), ZenML's own settings and step operators (ZenML
    validates those against their classes). Parameters may not: a misspelt one would be silently ignored.

    Parameters
    ----------
    key : str
        A dotted key path.

    Returns
    -------
    bool
        Whether a derived config may add it.

    Examples
    --------
    >>> addable_key("steps.train_unet.step_operator"), addable_key("steps.train_unet.parameters.epoch")
    (True, False)
    """
    return (key.startswith(("model.", "tags", "parameters.models.", "settings."))
            or re.match(r"steps\.[^.]+\.(settings(\.|$)|step_operator$)", key) is not None)


def render_derived(path: str | Path) -> dict:
    """The full config a derived file describes: its base (``derive_from``), rendered recursively, with the
    file's other keys merged in (those under the paths it lists in ``replace`` replace the base's whole). Keys
    the base does not have are refused: an override of a misspelt key would otherwise be silently ignored by
    the pipeline.

    Parameters
    ----------
    path : str or Path
        A config file, derived (``derive_from``) or not.

    Returns
    -------
    dict
        The full config.

    Raises
    ------
    ValueError
        When the derived file has keys its base lacks.
    """
    path = Path(path)
    derived = yaml.safe_load(path.read_text()) or {}
    if BASE_KEY not in derived:
        return derived
    base_path = path.parent / derived.pop(BASE_KEY)
    base = render_derived(base_path)
    replaced = derived.pop(REPLACE_KEY, None) or []
    for dotted in replaced:
        parts = dotted.split(".")
        node = derived
        for part in parts:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ValueError(f"{path}: `{REPLACE_KEY}` names {dotted}, which the file does not set")
        parent = base
        for part in parts[:-1]:
            parent = parent.setdefault(part, {})
        parent[parts[-1]] = {}
    unknown = sorted(key_paths(derived) - key_paths(base))
    unknown = [k for k in unknown if not addable_key(k)
               and not any(k == r or k.startswith(r + ".") for r in replaced)]
    if unknown:
        raise ValueError(f"{path}: keys not in {base_path.name}: {unknown}")
    return deep_merge(base, derived)


def derived_configs(root: str | Path) -> dict[Path, Path]:
    """Every override file under ``root`` (``**/overrides/*.yaml``) and the config file it derives.

    Parameters
    ----------
    root : str or Path
        Folder searched (virtual environments are skipped).

    Returns
    -------
    dict of Path to Path
        Override file to the derived config it renders to (same name, one folder up).
    """
    root = Path(root)
    return {path: path.parent.parent / path.name for path in sorted(root.glob("**/overrides/*.yaml"))
            if ".venv" not in path.parts}


def render_text(override: Path, root: Path) -> str:
    """The derived config file's text: a header naming its sources, then the merged YAML.

    Parameters
    ----------
    override : Path
        The override file.
    root : Path
        The repository root, for the paths in the header.

    Returns
    -------
    str
        The YAML text.
    """
    base = (override.parent / (yaml.safe_load(override.read_text()) or {})[BASE_KEY]).resolve()
    header = (f"# GENERATED by `make configs` from {override.resolve().relative_to(root.resolve())} over "
              f"{base.relative_to(root.resolve())}: edit those, not this file.\n")
    return header + yaml.safe_dump(render_derived(override), sort_keys=False, width=110)
