"""Forward pass equals PyTorch's cell equations (written out in NumPy here), and torch itself if present."""

import numpy as np
import pytest

import streamrnn as sr

from .helpers import CELLS

N_IN, N, N_OUT, T = 3, 6, 2, 25


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def pytorch_reference(cell, w, X, recurrent=None):
    """Hidden states h_1..h_T from torch.nn.RNN/GRU/LSTM's documented equations.

    ``recurrent(h)`` is the recurrent term without bias; by default ``W_hh h`` (PyTorch's cells),
    the element-wise cells pass their own."""
    W_ih, W_hh, b_ih, b_hh = w["weight_ih_l0"], w["weight_hh_l0"], w["bias_ih_l0"], w["bias_hh_l0"]
    n = b_ih.size // GATES[cell]
    recurrent = recurrent or (lambda h: W_hh @ h)
    h = np.zeros(n)
    c = np.zeros(n)
    hs = []
    for x in X:
        gi = W_ih @ x + b_ih
        gh = recurrent(h) + b_hh
        if cell == "rnn":
            h = np.tanh(gi + gh)
        elif cell == "gru":
            r = sigmoid(gi[:n] + gh[:n])
            z = sigmoid(gi[n : 2 * n] + gh[n : 2 * n])
            nn = np.tanh(gi[2 * n :] + r * gh[2 * n :])
            h = (1 - z) * nn + z * h
        else:
            i, f, g, o = (gi + gh).reshape(4, n)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        hs.append(h)
    return np.array(hs)


def run_model(cell, X):
    # the PyTorch equations on the raw inputs: standardisation off
    m = sr.Model(
        cell=cell, n_inputs=N_IN, n_hidden=N, n_outputs=N_OUT, seed=11, optimizer="sgd", lr=0.0, standardize=False
    )
    w = m.get_weights()
    preds = m.step_many(X)
    return m, w, preds


@pytest.mark.parametrize("cell", CELLS)
def test_forward_matches_pytorch_equations(cell):
    X = np.random.default_rng(1).normal(size=(T, N_IN)) * 2
    m, w, preds = run_model(cell, X)
    hs = pytorch_reference(cell, w, X)
    expected = hs @ w["readout.weight"].T + w["readout.bias"]
    np.testing.assert_allclose(preds, expected, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(m.hidden_state()[:N], hs[-1], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cell", CELLS)
def test_parameter_shapes_follow_pytorch(cell):
    G = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    w = sr.Model(cell=cell, n_inputs=N_IN, n_hidden=N, n_outputs=N_OUT).get_weights()
    assert {k: v.shape for k, v in w.items()} == {
        "weight_ih_l0": (G * N, N_IN),
        "weight_hh_l0": (G * N, N),
        "bias_ih_l0": (G * N,),
        "bias_hh_l0": (G * N,),
        "readout.weight": (N_OUT, N),
        "readout.bias": (N_OUT,),
    }
    bound = 1 / np.sqrt(N)
    assert all(np.abs(v).max() <= bound for v in w.values())


@pytest.mark.parametrize("cell", CELLS)
def test_forward_matches_torch_modules(cell):
    torch = pytest.importorskip("torch")
    X = np.random.default_rng(2).normal(size=(T, N_IN))
    _, w, preds = run_model(cell, X)
    module = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](N_IN, N).double()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in w.items() if not k.startswith("readout")})
    with torch.no_grad():
        out, _ = module(torch.from_numpy(X)[:, None, :])
    hs = out[:, 0, :].numpy()
    np.testing.assert_allclose(preds, hs @ w["readout.weight"].T + w["readout.bias"], rtol=1e-10, atol=1e-12)
