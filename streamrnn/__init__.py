"""streamrnn: streaming online learning with recurrent cells (exact RTRL, TBPTT, BPTT).

The names below load on first use (PEP 562): importing a part of the package that needs no model,
such as the connectors in the Kafka sink's child process, does not import the model and Numba
(0.6 CPU-seconds a process).
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the names are, for type checkers and the API reference (not run)
    from . import bptt, diagnose
    from .checkpoint import CheckpointError
    from .model import Model

__all__ = ["Model", "CheckpointError", "bptt", "diagnose"]
__version__ = "0.1.0"

_WHERE = {"Model": ".model", "CheckpointError": ".checkpoint", "bptt": None, "diagnose": None}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    where = _WHERE[name]
    if where is None:  # a submodule: importing it binds it here
        return importlib.import_module(f".{name}", __name__)
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
