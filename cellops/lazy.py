"""Public APIs imported on first use: what a family package's ``__init__`` names without loading its modules."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence


def lazy_api(package: str, modules: Sequence[str], names: Sequence[str]) -> Callable[[str], object]:
    """A family package's ``__getattr__`` (PEP 562): its public ``names``, imported from its ``modules`` on first use,
    so that importing one module (as a service imports ``predict``) loads no other.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    modules : sequence of str
        Its modules, searched in this order.
    names : sequence of str
        Its public API (its ``__all__``).

    Returns
    -------
    Callable[[str], object]
        The ``__getattr__`` to assign in the package.

    Examples
    --------
    >>> getattr_ = lazy_api("cellops.unet", ("specs",), ["UNetServing"])
    >>> getattr_("UNetServing").__name__
    'UNetServing'
    """
    def __getattr__(name: str) -> object:
        if name in names:
            for module in modules:
                found = importlib.import_module(f".{module}", package)
                if hasattr(found, name):
                    return getattr(found, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
