"""Online standardisation: running mean and variance (Welford), winsorised against outliers.

Kernels over a statistics array ``stats`` of shape ``(3 + WARMUP, width)`` (float64): row
``COUNT`` holds how many values were folded into column ``j``, row ``MEAN`` their mean, row ``M2``
the sum of squared deviations (Welford's accumulator), and rows ``SAMPLE …`` the column's first
``WARMUP`` values. The variance is the population
variance ``M2 / count``; the scale is its square root, or 1 while it is undefined or zero
(``count < 2`` or every value equal), so a transform never divides by zero and never
produces NaN.

Robust start. The first ``warmup`` values cannot be judged against a scale not yet known, so
they go in as they are; at the ``warmup``-th, the column is refolded from them, each winsorised to
``median ± clip · 1.4826 · MAD`` (the median and the median absolute deviation, which a minority
of outliers cannot move far). So an outlier among the first values does not set the scale for the
rest of the stream (it would: the statistics never forget): 3 values at 1e6 among the first 10
of a unit-scale stream leave the scale within a factor 2 (``tests/test_standardize.py``).

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
SAMPLE = 3  # rows SAMPLE .. SAMPLE + WARMUP - 1: a column's first WARMUP values, for the robust restart
CLIP = 4.0
WARMUP = 10
MAD_TO_SD = 1.4826  # a Gaussian's standard deviation per median absolute deviation
MEAN_AD_TO_SD = 1.2533  # … per mean absolute deviation (sqrt(pi / 2)), where the MAD is 0


def make_stats(width):
    """Empty statistics for ``width`` columns: ``(3 + WARMUP, width)``."""
    return np.zeros((SAMPLE + WARMUP, width), np.float64)


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
def welford(stats, j, v):
    """Welford's update of column ``j`` with ``v``."""
    c = stats[COUNT, j] + 1.0
    m = stats[MEAN, j]
    d = v - m
    m += d / c
    stats[M2, j] += d * (v - m)
    stats[MEAN, j] = m
    stats[COUNT, j] = c


@njit(cache=True)
def robust_restart(stats, j, clip, n):
    """Refold column ``j`` from its first ``n`` values, each winsorised to ``median ± clip·s`` with
    ``s`` = 1.4826 · MAD (1.2533 · the mean absolute deviation where the MAD is 0): an outlier among
    the first values then weighs no more than a later one would."""
    vals = stats[SAMPLE : SAMPLE + n, j].copy()
    med = np.median(vals)
    dev = np.abs(vals - med)
    s = MAD_TO_SD * np.median(dev)
    if not s > 0.0:
        s = MEAN_AD_TO_SD * dev.mean()
    stats[COUNT, j] = 0.0
    stats[MEAN, j] = 0.0
    stats[M2, j] = 0.0
    for v in vals:
        if s > 0.0:
            v = min(max(v, med - clip * s), med + clip * s)
        welford(stats, j, v)


@njit(cache=True)
def fold(stats, j, v, clip, warmup):
    """Fold value ``v`` into column ``j``. The first ``warmup`` values go in as they are (and are kept);
    at the ``warmup``-th the column is refolded robustly from them (:func:`robust_restart`); later
    values are winsorised to ``mean ± clip·scale`` first. Returns the value actually folded."""
    c = stats[COUNT, j]
    if c < warmup:
        kept = stats.shape[0] - SAMPLE
        if c < kept:
            stats[SAMPLE + int(c), j] = v
        welford(stats, j, v)
        if c + 1.0 == warmup and warmup <= kept:
            robust_restart(stats, j, clip, int(warmup))
        return v
    m = stats[MEAN, j]
    s = scale_of(stats, j)
    v = min(max(v, m - clip * s), m + clip * s)
    welford(stats, j, v)
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
