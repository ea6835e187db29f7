"""Recurrent cells as pure Numba kernels over flat parameter arrays.

Each cell module defines ``<cell>_forward``, ``<cell>_backward`` (reverse mode:
one step of BPTT) and ``<cell>_unit_coefficients`` (one unit's share of the
tangent: the slopes through which its gates carry derivatives). ``dispatch``
builds both forward-mode updates from those coefficients: the dense influence
update ``M' = J M + I`` of exact RTRL (J formed first, then one GEMM-shaped
product) and the per-unit one of SnAp-1 and of exact RTRL in the element-wise
cells (see ``common``). It selects among the cells by an integer cell id, so
learners are written once for every cell.
"""

from .dispatch import CELL_IDS, CELL_NAMES, cache_size, n_gates, state_size  # noqa: F401
