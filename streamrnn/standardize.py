"""Online standardisation: running mean and variance (Welford), winsorised against outliers.

Kernels over a statistics array ``stats`` of shape ``(3, width)`` (float64): row ``COUNT``
holds how many values were folded into column ``j``, row ``MEAN`` their mean and row ``M2``
the sum of squared deviations (Welford's accumulator). The variance is the population
variance ``M2 / count``; the scale is its square root, or 1 while it is undefined or zero
(``count < 2`` or every value equal), so a transform never divides by zero and never
produces NaN.

Robust update. Once a column holds ``warmup`` values, a new value is winsorised to
``mean ± clip · scale`` (the statistics as they stand before it) and only the clipped value
is folded in. A burst of outliers then moves the mean by at most ``clip · scale / count`` and
multiplies the variance by about ``1 + (clip² − 1) / count`` per outlier: 20 values at 1e6 in
a unit-scale stream of 1 000 values leave the scale within a factor 1.2 (measured in
``tests/test_standardize.py``). A genuine change of level or scale is still followed, at a
rate that slows as ``count`` grows (the statistics never forget: they are the statistics of
the whole stream, as Welford's are).

Transformed values are clipped to ``[-clip, clip]`` as well (``standardize_value``), so what
reaches the network, or the loss, is bounded whatever arrives.

The constants: ``CLIP = 4`` keeps 99.994 % of Gaussian values untouched (and ≥ 99.6 % of a
Laplace stream), while bounding an outlier's weight; ``WARMUP = 10`` values before
winsorising, enough for a first scale, few enough that a burst early in a stream is rare.
"""

import math

import numpy as np
from numba import njit

COUNT, MEAN, M2 = 0, 1, 2
CLIP = 4.0
WARMUP = 10


def make_stats(width):
    """Empty statistics for ``width`` columns."""
    return np.zeros((3, width), np.float64)


@njit(cache=True)
def scale_of(stats, j):
    """Standard deviation of column ``j`` (population), or 1.0 while undefined or zero."""
    c = stats[COUNT, j]
    if c >= 2.0:
        v = stats[M2, j] / c
        if v > 0.0 and v < np.inf:
            return math.sqrt(v)
    return 1.0


@njit(cache=True)
def fold(stats, j, v, clip, warmup):
    """Fold value ``v`` into column ``j``: winsorised to ``mean ± clip·scale`` once the column
    holds ``warmup`` values, then Welford's update. Returns the value actually folded."""
    c = stats[COUNT, j]
    m = stats[MEAN, j]
    if c >= warmup:
        s = scale_of(stats, j)
        lo = m - clip * s
        hi = m + clip * s
        if v < lo:
            v = lo
        elif v > hi:
            v = hi
    c += 1.0
    d = v - m
    m += d / c
    stats[M2, j] += d * (v - m)
    stats[MEAN, j] = m
    stats[COUNT, j] = c
    return v


@njit(cache=True)
def standardize_value(stats, j, v, clip):
    """``(v − mean) / scale`` of column ``j``, clipped to ``[-clip, clip]``."""
    z = (v - stats[MEAN, j]) / scale_of(stats, j)
    if z > clip:
        return clip
    if z < -clip:
        return -clip
    return z


@njit(cache=True)
def fold_stream(stats, V, clip, warmup):
    """Fold the rows of ``V`` (n, width) in order; ``out[i]`` is row ``i`` standardised with the
    statistics right after it was folded (the input rule). For tests and tools."""
    out = np.empty(V.shape)
    for i in range(V.shape[0]):
        for j in range(V.shape[1]):
            fold(stats, j, V[i, j], clip, warmup)
            out[i, j] = standardize_value(stats, j, V[i, j], clip)
    return out
