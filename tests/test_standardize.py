"""Online standardisation kernels against the equations written out in plain Python."""

import math

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


def ref_fold(st, v, clip=CLIP, warmup=WARMUP):
    """Winsorise at mean ± clip·scale once ``warmup`` values are in, then Welford."""
    c, m, m2 = st
    if c >= warmup:
        s = ref_scale(c, m2)
        v = min(max(v, m - clip * s), m + clip * s)
    c += 1.0
    d = v - m
    m += d / c
    m2 += d * (v - m)
    return [c, m, m2]


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
    np.testing.assert_array_equal(stats, np.array(ref_st).T)


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
