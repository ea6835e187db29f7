"""The fast linear head: recursive least squares beside the recurrent cell, and the combiner that
mixes the two predictions.

A recurrent net trained by gradient steps needs thousands of samples before it predicts well; the
river sets have 144 to 1 300. A linear model fitted by recursive least squares (RLS) is the exact
least-squares fit after every sample, so it is useful after a few dozen. The Model runs both,
in standardised target units (:mod:`streamrnn.preprocess`), and predicts with an online linear
combination of the two.

Per regression row, with ``K = head_lags``:

- features ``z = [x_std (n_inputs), last target (w), its last K changes (K·w), K observed flags, 1]``
  (:func:`streamrnn.preprocess.prepare_rows` writes them; a change is ``(y_{t−j} − y_{t−j−1}) /
  scale(changes)``, 0 where either target is missing). Changes rather than levels because a smooth
  series' next change is a small combination of its last changes, while as a combination of levels
  it needs large, cancelling weights that the prior ``P₀ = I`` would hold back;
- head: ``ĥ = Wᵀz``, updated after the row by exponentially weighted RLS with forgetting factor
  ``LAMBDA`` (memory about ``1 / (1 − LAMBDA)`` = 200 rows)::

      g = P z / (λ + zᵀ P z),   W += g (t − Wᵀ z)ᵀ,   P = (P − g zᵀ P) / λ

  and ``P`` is bounded: a diagonal entry above the prior's (1) is brought back to it by a diagonal
  congruence ``P ← D P D``, which keeps ``P`` symmetric positive semi-definite. Without it the
  directions the rows never excite (the observed flags once they are all 1 are collinear with the
  constant) grow as ``λ^−t`` and overflow after some 10⁵ rows;
- combiner, per output ``q``: ``ŷ_q = c_q · [ĥ_q, ŷ_cell,q]``, a second RLS (``LAMBDA_MIX``,
  memory about 100 rows) with ``c_q`` starting at ``(½, ½)``: it learns how far to trust each.

``t`` is the row's standardised target (``Ys``): the change from the key's last target with
``baseline="last"``, otherwise the level. Nothing here touches the cell's parameters or gradient,
so RTRL's exactness is untouched. The constants were chosen on streams the quality benchmark does
not report (``scripts/bench_quality.py``'s docstring lists them).
"""

import numpy as np
from numba import njit

from .cells.common import combine_rows

LAMBDA = 0.995
LAMBDA_MIX = 0.99
PRIOR = 1.0  # P₀ = PRIOR · I, the weights' prior variance in standardised units; also P's bound
MIX_START = 0.5
HEAD_LAGS = 8  # the default K: a day of a weekly pattern plus one, two of a 4-step cycle, …

STATE_NAMES = ("head.P", "head.W", "head.mix_P", "head.mix_c")


def n_features(n_inputs, width, head_lags):
    """Length of ``z``: inputs, last target, ``head_lags`` changes per output, flags, constant."""
    return n_inputs + width * (1 + head_lags) + head_lags + 1


def make_state(n_inputs, width, head_lags):
    """``(P, W, mix_P, mix_c)`` before any row: the prior, zero head weights, the combiner at ½, ½."""
    d = n_features(n_inputs, width, head_lags)
    mix_P = np.zeros((width, 2, 2))
    mix_P[:, 0, 0] = mix_P[:, 1, 1] = PRIOR
    return PRIOR * np.eye(d), np.zeros((d, width)), mix_P, np.full((width, 2), MIX_START)


@njit(cache=True)
def rls_update(P, W, z, t, lam, bound, Pz):
    """One exponentially weighted RLS step of ``W`` (d, w) towards targets ``t`` (w,) at features
    ``z`` (d,), with the inverse-information matrix ``P`` (d, d) kept symmetric and its diagonal
    at most ``bound``. ``Pz`` (d,) is scratch."""
    d = z.shape[0]
    # P z as z^T P: row b of P is column b (P is exactly symmetric), so each entry is the sum a
    # row-by-row product forms, over b in order, in a loop that vectorises
    combine_rows(P, z, d, Pz)
    denom = lam
    for a in range(d):
        denom += z[a] * Pz[a]
    for q in range(W.shape[1]):
        err = t[q]
        for a in range(d):
            err -= W[a, q] * z[a]
        err /= denom
        for a in range(d):
            W[a, q] += Pz[a] * err
    inv_lam = 1.0 / lam
    for a in range(d):  # one triangle, mirrored: P stays exactly symmetric (round-off would not)
        ca = Pz[a] / denom
        for b in range(a, d):
            P[a, b] = (P[a, b] - ca * Pz[b]) * inv_lam
            P[b, a] = P[a, b]
    over = False
    for a in range(d):  # the bound: D P D with D_aa = sqrt(bound / P_aa) where P_aa > bound
        over |= P[a, a] > bound
        Pz[a] = np.sqrt(bound / P[a, a]) if P[a, a] > bound else 1.0
    if over:  # (else D = I: nothing to scale)
        for a in range(d):
            for b in range(d):
                P[a, b] *= Pz[a] * Pz[b]


@njit(cache=True)
def head_predict(z, cell, W, mix_c, head, out):
    """The head's predictions ``head`` (w,) at features ``z`` and the combined ``out`` (w,) from the
    cell's ``cell`` (w,) (``out`` may be ``cell``)."""
    for q in range(W.shape[1]):
        h = 0.0
        for a in range(z.shape[0]):
            h += W[a, q] * z[a]
        head[q] = h
        out[q] = mix_c[q, 0] * h + mix_c[q, 1] * cell[q]


@njit(cache=True)
def head_rows(Z, Ys, has_learn, out, P, W, mix_P, mix_c, scratch):
    """Rows in order: replace the cell's prediction ``out[i]`` (standardised units) by the combined
    one, then, where the row is learned from, update the head and the combiner with ``Ys[i]``.
    ``scratch`` (d + 4 + 2w,) holds P z and the per-row vectors."""
    w = W.shape[1]
    d = Z.shape[1]
    Pz = scratch[:d]
    pair = scratch[d : d + 2]
    pair_Pz = scratch[d + 2 : d + 4]
    head = scratch[d + 4 : d + 4 + w]
    cell = scratch[d + 4 + w : d + 4 + 2 * w]
    t1 = np.empty(1)
    for i in range(Z.shape[0]):
        z = Z[i]
        for q in range(w):
            cell[q] = out[i, q]
        head_predict(z, cell, W, mix_c, head, out[i])
        if has_learn[i]:
            rls_update(P, W, z, Ys[i], LAMBDA, PRIOR, Pz)
            for q in range(w):
                pair[0] = head[q]
                pair[1] = cell[q]
                t1[0] = Ys[i, q]
                rls_update(mix_P[q], mix_c[q : q + 1].T, pair, t1, LAMBDA_MIX, PRIOR, pair_Pz)
