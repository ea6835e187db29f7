"""Optional dependencies: import one, or say which extra of ``pip install streamrnn[...]`` brings it."""

from __future__ import annotations

import importlib
from types import ModuleType

# extra -> the modules it brings (pyproject.toml's [project.optional-dependencies])
EXTRAS = {"kafka": ("kafka",), "river": ("river",), "metrics": ("prometheus_client",), "plot": ("matplotlib",)}


class MissingExtra(ImportError):
    """A feature's optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise :class:`MissingExtra` naming ``pip install 'streamrnn[extra]'``.

    >>> require("json", "kafka", "the test").__name__
    'json'
    >>> require("no_such_module", "kafka", "Kafka")
    Traceback (most recent call last):
    ...
    streamrnn.extras.MissingExtra: Kafka needs the 'no_such_module' package: pip install 'streamrnn[kafka]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{feature} needs the {module!r} package: pip install 'streamrnn[{extra}]'") from exc
