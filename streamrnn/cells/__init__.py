"""Recurrent cells as pure Numba kernels over flat parameter arrays.

Each cell module defines ``<cell>_forward``, ``<cell>_tangent`` (forward-mode:
the influence matrix update ``M' = J M + I``), ``<cell>_backward`` (reverse
mode: one step of BPTT) and ``<cell>_unit_coefficients`` (one unit's share of
the tangent, for the per-unit influence of SnAp-1 and of exact RTRL in the
element-wise cells; see ``common``). ``dispatch`` selects among them by an
integer cell id, so learners are written once for every cell.
"""

from .dispatch import CELL_IDS, CELL_NAMES, cache_size, n_gates, state_size  # noqa: F401
