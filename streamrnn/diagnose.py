"""Gradient-flow diagnostics: how far back a cell remembers, and where gradients vanish or explode.

Two curves, both at a model's current weights, over a sequence run from a zero recurrent state:

- :func:`input_sensitivity`: ``‖∂h_{T−1} / ∂x_{T−1−k}‖_F`` for ``k = 0 … T−1``, how much the last
  hidden output still depends on the input ``k`` steps back (a vanishing curve: the cell forgets);
- :func:`gradient_flow`: ``‖∂L_t / ∂s_{t−k}‖`` for ``k = 0 … max_lag``, averaged over the labelled
  rows ``t``, the size of a loss's gradient as it travels back through the recurrent state (what
  BPTT propagates and RTRL carries forward; growing: exploding gradients, the reason for ``clip``).

``x`` is the cell's input as the Model feeds it: the features standardised with the current
statistics (:meth:`streamrnn.Model.cell_sequence`); the target-feedback columns are left out. ``h``
is what the readout sees (the first ``n_hidden`` state entries; the LSTM's ``h``, not ``c``).
Everything is reverse mode through the cells' own backward kernels
(:func:`streamrnn.cells.dispatch.cell_backward`): one backward pass per hidden unit for the
sensitivity, one per labelled row for the flow. Meant for analysis, not for the hot path.

Examples
--------
>>> import numpy as np, streamrnn as sr
>>> from streamrnn import diagnose
>>> m = sr.Model(cell="gru", n_inputs=1, n_hidden=4, seed=0)
>>> curve = diagnose.input_sensitivity(m, np.random.default_rng(0).normal(size=(30, 1)))
>>> curve.shape, bool(curve[0] > curve[-1])
((30,), True)
"""

from __future__ import annotations

import numpy as np

from .cells.dispatch import cache_size, cell_backward, cell_forward, n_gates
from .learners.common import readout_step

__all__ = ["input_sensitivity", "gradient_flow", "Trace"]


class Trace:
    """One sequence run forward from a zero state: the cell's inputs, every state and cache."""

    def __init__(self, model, X, Y=None, key=None):
        self.model = model
        self.X, self.Y, self.learn = model.cell_sequence(X, Y, key)
        d = model.dims
        self.dims = d
        self.theta = np.ascontiguousarray(model.flat_parameters, np.float64)
        self.X = np.ascontiguousarray(self.X, np.float64)
        self.Y = np.ascontiguousarray(self.Y, np.float64)
        T = self.X.shape[0]
        self.states = np.zeros((T + 1, d.state_size))
        self.caches = np.zeros((T, cache_size(d.cell, d.n_hidden)))
        for t in range(T):
            cell_forward(
                d.cell,
                self.theta,
                d.n_inputs,
                d.n_hidden,
                self.X[t],
                self.states[t],
                self.states[t + 1],
                self.caches[t],
            )
        rows = n_gates(d.cell) * d.n_hidden
        self._da_ih, self._da_hh = np.empty(rows), np.empty(rows)
        self._grad = np.zeros(d.n_params)
        self.weight_ih = model.unflatten(self.theta)["weight_ih_l0"]  # (gates·n, n_cell_inputs)

    def back(self, t, g_new, g_prev):
        """``g_prev = (∂s_t/∂s_{t−1})ᵀ g_new``; returns ``(∂s_t/∂x_t)ᵀ g_new`` (n_cell_inputs,)."""
        d = self.dims
        cell_backward(
            d.cell,
            self.theta,
            d.n_inputs,
            d.n_hidden,
            self.X[t],
            self.states[t],
            self.states[t + 1],
            self.caches[t],
            g_new,
            g_prev,
            self._grad,
            self._da_ih,
            self._da_hh,
        )
        return self.weight_ih.T @ self._da_ih


def input_sensitivity(model, X, key=None) -> np.ndarray:
    """``‖∂h_{T−1} / ∂x_{T−1−k}‖_F`` for ``k = 0 … T−1`` (see the module docstring).

    Parameters
    ----------
    model : streamrnn.Model
        At its current weights (a race: its leader's).
    X : array_like (T, n_inputs)
        The sequence, run from a zero recurrent state.
    key : str, int or None
        Whose target-feedback buffer the inputs are transformed with (None: a fresh key's).

    Returns
    -------
    ndarray (T,)
        Entry ``k``: the Frobenius norm of the ``n_hidden × n_inputs`` Jacobian of the last hidden
        output with respect to the features ``k`` steps before it.
    """
    tr = Trace(model, X, key=key)
    d, T, m = tr.dims, tr.X.shape[0], model.n_inputs
    S = d.state_size
    sq = np.zeros(T)
    g, g_prev = np.zeros(S), np.zeros(S)
    for unit in range(d.n_hidden):  # one reverse pass per row of the Jacobian
        g[:] = 0.0
        g[unit] = 1.0
        for t in range(T - 1, -1, -1):
            dx = tr.back(t, g, g_prev)
            sq[T - 1 - t] += float(dx[:m] @ dx[:m])
            g, g_prev = g_prev, g
    return np.sqrt(sq)


def gradient_flow(model, X, Y, max_lag=50, key=None) -> np.ndarray:
    """``‖∂L_t / ∂s_{t−k}‖`` for ``k = 0 … max_lag``, the mean over the labelled rows ``t ≥ k``
    (NaN where no row reaches lag ``k``); ``L_t`` is the row's loss in the learner's units.

    Parameters
    ----------
    model : streamrnn.Model
    X, Y : array_like
        The sequence (run from a zero state) and its targets (NaN or None: no target).
    max_lag : int
        Longest lag measured.
    key : str, int or None
        As for :func:`input_sensitivity`.
    """
    tr = Trace(model, X, Y, key=key)
    d, T = tr.dims, tr.X.shape[0]
    S, n = d.state_size, d.n_hidden
    total, count = np.zeros(max_lag + 1), np.zeros(max_lag + 1)
    logits, pred, dlogits = np.zeros(d.n_outputs), np.zeros(d.n_outputs), np.zeros(d.n_outputs)
    scratch, g_h = np.zeros(d.n_params), np.zeros(n)
    g, g_prev = np.zeros(S), np.zeros(S)
    for t in range(T):
        if not tr.learn[t]:
            continue
        h = tr.states[t + 1]
        readout_step(
            d.task,
            tr.theta,
            d.n_params_cell,
            n,
            d.n_outputs,
            h,
            tr.X[t],
            tr.Y[t],
            True,
            logits,
            pred,
            dlogits,
            scratch,
            g_h,
        )
        g[:] = 0.0
        g[:n] = g_h
        for k in range(min(max_lag, t) + 1):
            total[k] += float(np.sqrt(g @ g))
            count[k] += 1
            if k < min(max_lag, t):
                tr.back(t - k, g, g_prev)
                g, g_prev = g_prev, g
    with np.errstate(invalid="ignore"):
        return total / count
