"""Online standardisation kernels against the equations written out in plain Python."""

import math
import statistics

import numpy as np
import pytest

from streamrnn.standardize import (
    CLIP,
    WARMUP,
    fold,
    fold_stream,
    make_stats,
    scale_of,
    standardize_value,
)


def ref_scale(c, m2):
    """Population standard deviation, 1 while undefined (count < 2) or zero."""
    if c >= 2:
        v = m2 / c
        if v > 0 and v < math.inf:
            return math.sqrt(v)
    return 1.0


def ref_welford(c, m, m2, v):
    c += 1.0
    d = v - m
    m += d / c
    return c, m, m2 + d * (v - m)


def ref_fold(st, v, clip=CLIP, warmup=WARMUP):
    """``st`` = [count, mean, M2, the first values seen …]. The first ``warmup`` values go in as they
    are; at the ``warmup``-th the statistics are rebuilt from them, each winsorised at the median ±
    clip · 1.4826 · MAD (1.2533 · mean absolute deviation if the MAD is 0); later values are
    winsorised at mean ± clip·scale, then Welford."""
    c, m, m2 = st[:3]
    first = [float(x) for x in st[3 : 3 + int(min(c, warmup))]]
    if c < warmup:
        first.append(v)
        c, m, m2 = ref_welford(c, m, m2, v)
        if c == warmup:
            med = statistics.median(first)
            dev = [abs(x - med) for x in first]
            s = 1.4826 * statistics.median(dev)
            if not s > 0:
                s = 1.2533 * (sum(dev) / len(dev))
            c = m = m2 = 0.0
            for x in first:
                c, m, m2 = ref_welford(c, m, m2, min(max(x, med - clip * s), med + clip * s) if s > 0 else x)
        return [c, m, m2, *first]
    s = ref_scale(c, m2)
    v = min(max(v, m - clip * s), m + clip * s)
    return [*ref_welford(c, m, m2, v), *first]


def ref_standardize(st, v, clip=CLIP):
    z = (v - st[1]) / ref_scale(st[0], st[2])
    return min(max(z, -clip), clip)


def stream(n=600, seed=0):
    rng = np.random.default_rng(seed)
    V = np.column_stack([rng.normal(5000.0, 1000.0, n), rng.standard_t(2.0, n), np.full(n, 3.0)])
    V[[100, 101, 400], 0] = [1e9, -1e9, 7e7]  # outliers
    return V


def test_welford_winsorised_matches_plain_python_bit_for_bit():
    V = stream()
    stats = make_stats(V.shape[1])
    got = fold_stream(stats, V, CLIP, float(WARMUP))
    ref_st = [[0.0, 0.0, 0.0] for _ in range(V.shape[1])]
    want = np.empty_like(V)
    for i in range(V.shape[0]):
        for j in range(V.shape[1]):
            ref_st[j] = ref_fold(ref_st[j], float(V[i, j]))
            want[i, j] = ref_standardize(ref_st[j], float(V[i, j]))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(stats[:3], np.array([st[:3] for st in ref_st]).T)
    np.testing.assert_array_equal(stats[3:], np.array([st[3:] for st in ref_st]).T)  # the first values, kept


def test_without_winsorising_it_is_welford_exactly():
    V = np.random.default_rng(3).normal(2.0, 3.0, (500, 2))
    stats = make_stats(2)
    fold_stream(stats, V, np.inf, 1e300)
    np.testing.assert_allclose(stats[1], V.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(stats[2] / stats[0], V.var(axis=0), rtol=1e-12)
    assert stats[0, 0] == 500


def test_safe_scale_early_and_for_constant_values():
    stats = make_stats(1)
    assert scale_of(stats, 0) == 1.0 and standardize_value(stats, 0, 7.0, CLIP) == CLIP
    fold(stats, 0, 5000.0, CLIP, WARMUP)
    assert scale_of(stats, 0) == 1.0 and standardize_value(stats, 0, 5000.0, CLIP) == 0.0
    for _ in range(50):
        fold(stats, 0, 5000.0, CLIP, WARMUP)
    assert stats[2, 0] == 0.0 and scale_of(stats, 0) == 1.0
    assert standardize_value(stats, 0, 5000.0, CLIP) == 0.0


@pytest.mark.parametrize("burst_at", [1000, 5000])
def test_a_burst_of_outliers_does_not_wreck_the_scale(burst_at):
    rng = np.random.default_rng(1)
    clean = rng.normal(0.0, 1.0, burst_at)
    V = np.concatenate([clean, np.full(20, 1e6), rng.normal(0.0, 1.0, 1000)])[:, None]
    stats = make_stats(1)
    fold_stream(stats, V[:burst_at], CLIP, WARMUP)
    before_m, before_s = stats[1, 0], scale_of(stats, 0)
    Z = fold_stream(stats, V[burst_at:], CLIP, WARMUP)
    after_s = scale_of(stats, 0)
    # 20 outliers at 1e6 move the scale by at most ~ (1 + 15/n)^10 and the mean by 20·4·s/n
    assert after_s / before_s < 1.2
    assert abs(stats[1, 0] - before_m) < 0.1
    assert np.abs(Z).max() <= CLIP
    # plain Welford (no winsorising) is wrecked by the same burst
    plain = make_stats(1)
    fold_stream(plain, V, np.inf, 1e300)
    assert scale_of(plain, 0) > 1e4


@pytest.mark.parametrize("where", [(0,), (1, 4, 7), (9,), (0, 1, 2, 3)])
def test_outliers_among_the_first_values_do_not_set_the_scale(where):
    """The robust restart at the 10th value: 1 to 4 values at 1e6 among the first 10 of a unit-scale
    stream leave the scale within a factor 2 (plain Welford: above 1e4 after 2 000 values)."""
    rng = np.random.default_rng(7)
    V = rng.normal(0.0, 1.0, 2000)
    V[list(where)] = 1e6
    stats = make_stats(1)
    Z = fold_stream(stats, V[:, None], CLIP, WARMUP)[:, 0]
    assert 0.5 < scale_of(stats, 0) < 2.0 and abs(stats[1, 0]) < 0.2
    assert np.abs(Z[10:]).max() <= CLIP and np.abs(Z[100:][np.abs(V[100:]) < 1]).max() < 2
    plain = make_stats(1)
    fold_stream(plain, V[:, None], np.inf, 1e300)
    assert scale_of(plain, 0) > 1e4


def test_restart_with_a_zero_mad_uses_the_mean_absolute_deviation():
    V = np.array([5.0] * 9 + [1e6] + [5.0, 6.0, 4.0])
    stats = make_stats(1)
    fold_stream(stats, V[:, None], CLIP, WARMUP)
    ref = [0.0, 0.0, 0.0]
    for v in V:
        ref = ref_fold(ref, float(v))
    np.testing.assert_array_equal(stats[:3, 0], ref[:3])
    s = 1.2533 * (1e6 - 5.0) / 10  # the MAD is 0; the outlier is held at the median + 4 s, then 5, 6, 4 pass
    assert stats[0, 0] == 13
    assert math.isclose(stats[1, 0], (9 * 5.0 + (5.0 + 4 * s) + 5.0 + 6.0 + 4.0) / 13, rel_tol=1e-12)
