"""Element-wise cells: each gate row reads only its own unit, so exact RTRL is O(P) per step."""

import numpy as np
import pytest

import streamrnn as sr

from .helpers import N_OUTPUTS, TASKS, random_sequence, rel_err
from .test_forward_pytorch import pytorch_reference
from .test_gradients import finite_difference_gradient

ECELLS = ("ernn", "egru", "elstm")
GATES = {"ernn": 1, "egru": 3, "elstm": 4}
N_IN, N, T = 3, 5, 32


def make_model(cell, task="regression", **kw):
    kw.setdefault("seed", 2)
    return sr.Model(cell=cell, n_inputs=N_IN, n_hidden=N, n_outputs=N_OUTPUTS[task], task=task, **kw)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("cell", ECELLS)
def test_exact_rtrl_equals_bptt_equals_finite_differences(cell, task):
    model = make_model(cell, task, standardize=False)  # finite differences on the raw inputs
    X, Y = random_sequence(task, n_steps=T, n_inputs=N_IN, seed=3)
    g_rtrl = model.gradient(X, Y, method="rtrl")
    g_bptt = model.gradient(X, Y, method="bptt")
    assert rel_err(g_rtrl, g_bptt) < 1e-9
    assert rel_err(g_bptt, finite_difference_gradient(model, X, Y)) < 1e-6
    assert all(np.abs(g).max() > 0 for g in g_rtrl.values())


@pytest.mark.parametrize("cell", ECELLS)
def test_forward_is_the_elementwise_equations(cell):
    model = make_model(cell, optimizer="sgd", lr=0.0, standardize=False)  # the equations on the raw inputs
    w = model.get_weights()
    G = GATES[cell]
    assert w["weight_hh_l0"].shape == (G * N,)
    X = np.random.default_rng(4).normal(size=(20, N_IN))
    preds = model.step_many(X)
    u = w["weight_hh_l0"]
    # each gate row reads its own unit only: u ⊙ (h tiled over the gates)
    hs = pytorch_reference(cell[1:], w, X, recurrent=lambda h: u * np.tile(h, G))
    np.testing.assert_allclose(preds, hs @ w["readout.weight"].T + w["readout.bias"], rtol=1e-12)


@pytest.mark.parametrize("cell", ECELLS)
def test_online_exact_rtrl_memory_is_O_P(cell):
    # raw inputs and targets: every labelled row is an update (no standardisation warm-up)
    m = make_model(cell, learner="rtrl", lr=0.01, standardize=False)
    G = GATES[cell]
    S = 2 * N if cell == "elstm" else N
    assert m.n_params_cell == G * N * (N_IN + 3)
    assert m.state_bytes_per_key == 8 * S * (1 + G * (N_IN + 3))
    X, Y = random_sequence("regression", n_steps=100, n_inputs=N_IN, seed=5)
    snap = make_model(cell, learner="snap1", lr=0.01, standardize=False)
    assert np.array_equal(m.step_many(X, Y), snap.step_many(X, Y))  # the same exact kernel
    assert np.array_equal(m.theta, snap.theta)
    assert m.stats["updates"] == int(np.sum(~np.isnan(Y[:, 0])))


def test_many_keys_export_their_live_rows_in_lru_order_and_resume_bit_identically(tmp_path):
    """Saving puts the key rows in LRU order in place and hands out views (no second copy of every
    key's state); a save/load in the middle of a stream with evictions changes nothing."""
    kw = dict(learner="rtrl", lr=0.01, dtype="float32", max_keys=40)
    X, Y = random_sequence("regression", n_steps=600, n_inputs=N_IN, seed=9)
    keys = [int(k) for k in np.random.default_rng(3).integers(0, 70, 600)]  # evictions throughout
    a = make_model("elstm", **kw)
    a.step_many(X[:300], Y[:300], keys[:300])
    lru = a.keys
    arrays, meta = a.state_arrays()
    assert np.shares_memory(arrays["key.influence"], a._keyed.arrays["influence"])
    assert [value for _, value in meta["keys"]] == lru == a.keys
    assert all(np.array_equal(arrays["key.hidden"][i], a.hidden_state(k)) for i, k in enumerate(lru))
    a.save(tmp_path / "m.ckpt")
    b = sr.Model.load(tmp_path / "m.ckpt")
    assert b.keys == lru
    pa, pb = a.step_many(X[300:], Y[300:], keys[300:]), b.step_many(X[300:], Y[300:], keys[300:])
    assert np.array_equal(pa, pb) and np.array_equal(a.theta, b.theta) and a.keys == b.keys
    c = make_model("elstm", **kw)  # never saved: the same run
    assert np.array_equal(c.step_many(X, Y, keys)[300:], pa) and np.array_equal(c.theta, a.theta)
