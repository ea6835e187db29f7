"""streamrnn: streaming online learning with recurrent cells (exact RTRL, TBPTT, BPTT)."""

from . import bptt, diagnose
from .checkpoint import CheckpointError
from .model import Model

__all__ = ["Model", "CheckpointError", "bptt", "diagnose"]
__version__ = "0.1.0"
