"""The diagonal linear recurrent unit ("dlru"): s' = σ(ν) ⊙ s + W_ih x + b_ih + b_hh, h' = tanh(s').

Forward against a NumPy transcription of those equations; exact RTRL (the O(P) per-unit
form and the dense one) against BPTT and finite differences in float64; float32; offline
BPTT through stacked bidirectional layers; and selection by name everywhere a cell is named.
"""

import json

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.bptt import OfflineModel
from streamrnn.cells.dispatch import CELL_IDS
from streamrnn.learners import rtrl

from .helpers import N_OUTPUTS, TASKS, random_sequence, rel_err
from .test_bptt_offline import fd_check
from .test_gradients import finite_difference_gradient

N_IN, N, T = 3, 5, 40


def make_model(task="regression", **kw):
    kw.setdefault("seed", 2)
    return sr.Model(cell="dlru", n_inputs=N_IN, n_hidden=N, n_outputs=N_OUTPUTS[task], task=task, **kw)


def numpy_dlru(w, X):
    """The equations, step by step: the h each step emits."""
    lam = 1.0 / (1.0 + np.exp(-w["weight_hh_l0"]))
    s = np.zeros(N)
    hs = []
    for x in X:
        s = lam * s + w["weight_ih_l0"] @ x + w["bias_ih_l0"] + w["bias_hh_l0"]
        hs.append(np.tanh(s))
    return np.array(hs)


def test_parameters_follow_the_pytorch_names():
    w = make_model().get_weights()
    assert {k: v.shape for k, v in w.items()} == {
        "weight_ih_l0": (N, N_IN),
        "weight_hh_l0": (N,),
        "bias_ih_l0": (N,),
        "bias_hh_l0": (N,),
        "readout.weight": (2, N),
        "readout.bias": (2,),
    }


def test_forward_is_the_equations():
    model = make_model(optimizer="sgd", lr=0.0, standardize=False)  # the equations on the raw inputs
    w = model.get_weights()
    w["weight_hh_l0"] = np.array([-3.0, -0.5, 0.0, 2.0, 6.0])  # decays from 0.05 to 0.998
    model.set_weights(w)
    X = np.random.default_rng(4).normal(size=(60, N_IN))
    preds = model.step_many(X)
    hs = numpy_dlru(w, X)
    np.testing.assert_allclose(preds, hs @ w["readout.weight"].T + w["readout.bias"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(model.hidden_state()[:N], hs[-1], rtol=1e-12)


def test_state_stays_bounded_for_any_decay_logit():
    """λ = σ(ν) < 1: under a constant input s converges to (W x + b) / (1 - λ), never diverges."""
    model = make_model(optimizer="sgd", lr=0.0, standardize=False)  # the constant raw input drives s
    w = model.get_weights()
    w["weight_hh_l0"] = np.array([-30.0, 0.0, 5.0, 10.0, 30.0])
    model.set_weights(w)
    x = np.ones(N_IN)
    model.step_many(np.tile(x, (5000, 1)))
    lam = 1.0 / (1.0 + np.exp(-w["weight_hh_l0"]))
    drive = w["weight_ih_l0"] @ x + w["bias_ih_l0"] + w["bias_hh_l0"]
    s = model.hidden_state()[N:]
    assert np.all(np.isfinite(s))
    converged = lam < 0.99  # the slow units are still on their way
    np.testing.assert_allclose(s[converged], drive[converged] / (1 - lam[converged]), rtol=1e-9)
    assert np.all(np.abs(s) <= np.abs(drive) / (1 - lam) + 1e-9)


@pytest.mark.parametrize("task", TASKS)
def test_exact_rtrl_equals_bptt_equals_finite_differences(task):
    model = make_model(task, standardize=False)  # finite differences on the raw inputs
    X, Y = random_sequence(task, n_steps=T, n_inputs=N_IN, seed=3)
    g_rtrl = model.gradient(X, Y, method="rtrl")
    g_bptt = model.gradient(X, Y, method="bptt")
    assert rel_err(g_rtrl, g_bptt) < 1e-9
    assert rel_err(g_bptt, finite_difference_gradient(model, X, Y)) < 1e-6
    assert all(np.abs(g).max() > 0 for g in g_rtrl.values())
    # SnAp-1 keeps the same entries: exact here as well
    assert rel_err(model.gradient(X, Y, method="snap1"), g_bptt) < 1e-9
    # TBPTT with a window covering the sequence is full BPTT
    assert rel_err(model.gradient(X, Y, method="tbptt", truncation=T), g_bptt) < 1e-9


def test_dense_rtrl_agrees_with_the_per_unit_form():
    """The dense influence recursion (S x P, the cell's full tangent) gives the same gradient."""
    model = make_model(standardize=False)  # the dense kernels below run on the raw inputs
    X, Y = random_sequence("regression", n_steps=T, n_inputs=N_IN, seed=7)
    Yf, has_y = model._targets(Y, T)
    assert model.dims.cell == CELL_IDS["dlru"] and model.dims.n_outputs == 2
    dense = rtrl.SPEC  # the dense kernels, not the per-unit ones the Model runs
    grad = np.zeros(model.n_params)
    dense.sequence_gradient(
        CELL_IDS["dlru"],
        0,
        N_IN,
        N,
        2,
        model.theta,
        X,
        Yf,
        has_y,
        dense.new_key_state(model.dims),
        dense.make_workspace(model.dims),
        grad,
    )
    assert grad.shape == (model.n_params,) and dense.key_layout(model.dims)[1][1][1] == model.n_params_cell
    assert rel_err(model.unflatten(grad), model.gradient(X, Y, method="bptt")) < 1e-9


def test_online_learning_is_exact_rtrl_in_O_P_memory():
    # raw inputs: the online steps and the offline gradient see the same inputs (standardisation
    # would advance its statistics along the online run, and skip the first labelled rows)
    model = make_model(optimizer="sgd", lr=0.0, standardize=False)
    # state (h, s): 2n values; influence: 2n rows of one unit's n_in + 3 parameters
    assert model.state_bytes_per_key == 8 * 2 * N * (1 + N_IN + 3)
    X, Y = random_sequence("regression", n_steps=T, n_inputs=N_IN, seed=5)
    total = np.zeros(model.n_params)
    for t in range(T):  # lr = 0: the per-step gradients the learner would apply
        model.step_many(X[t : t + 1], Y[t : t + 1])
        if not np.isnan(Y[t, 0]):
            total += model.last_gradient()
    assert rel_err(model.unflatten(total), model.gradient(X, Y, method="bptt")) < 1e-9
    # and an update applies it: one labelled step at the end moves θ by -lr dL_T/dθ
    lr = 1e-3
    online = make_model(optimizer="sgd", lr=lr, standardize=False)
    theta0 = online.theta.copy()
    last_only = np.full_like(Y, np.nan)
    last_only[-1] = Y[-1]
    online.step_many(X, last_only)
    g = make_model(standardize=False).gradient(X, last_only, method="bptt")
    np.testing.assert_allclose(
        online.theta, theta0 - lr * np.concatenate([v.ravel() for v in g.values()]), rtol=0, atol=1e-14
    )


def test_float32_gradient_tracks_float64_and_learns():
    X, Y = random_sequence("regression", n_steps=T, n_inputs=N_IN, seed=9)
    m64 = make_model()
    m32 = make_model(dtype="float32")
    m32.set_weights(m64.get_weights())
    g32 = m32.gradient(X, Y, method="rtrl")
    assert all(g.dtype == np.float32 for g in g32.values())
    assert rel_err(g32, m64.gradient(X, Y, method="rtrl")) < 1e-4
    # a fading-memory target, y_t = tanh(Σ_k 0.7^k x_{t-k,0}), learnt online in float32
    rng = np.random.default_rng(0)
    Xs = rng.normal(size=(6000, N_IN)).astype(np.float32)
    s = np.zeros(1)
    ys = []
    for x in Xs:
        s = 0.7 * s + x[0]
        ys.append(np.tanh(s))
    ys = np.array(ys)
    m = sr.Model(cell="dlru", n_inputs=N_IN, n_hidden=8, n_outputs=1, lr=3e-3, seed=1, dtype="float32")
    _, losses = m.step_many(Xs, ys, return_loss=True)
    assert losses.dtype == np.float32
    assert losses[-1000:].mean() < 0.1 * losses[:200].mean()


def test_offline_bptt_through_stacked_bidirectional_layers():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(7, 3, 2)), rng.normal(size=(7, 3, 2))
    om = OfflineModel(
        cell="dlru", n_inputs=2, n_hidden=3, n_outputs=2, n_layers=2, bidirectional=True, merge="concat", seed=2
    )
    assert om.get_weights()["weight_hh_l1_reverse"].shape == (3,)
    assert fd_check(om, X, Y) < 1e-6
    fitted = sr.bptt.fit(X, Y, cell="dlru", n_hidden=3, bidirectional=True, epochs=3, batch_size=3, lr=1e-2)
    assert fitted.predict(X).shape == (7, 3, 2)


@pytest.mark.parametrize("learner, kw", [("rtrl", {}), ("snap1", {}), ("uoro", {}), ("tbptt", {"truncation": 4})])
def test_every_online_learner_runs_and_replays_bit_identically(learner, kw, tmp_path):
    X, Y = random_sequence("regression", n_steps=120, n_inputs=N_IN, seed=6)
    keys = [i % 4 for i in range(120)]
    a = make_model(learner=learner, lr=0.01, **kw)
    a.step_many(X[:60], Y[:60], keys[:60])
    a.save(tmp_path / "m.ckpt")
    b = sr.Model.load(tmp_path / "m.ckpt")
    pa, pb = a.step_many(X[60:], Y[60:], keys[60:]), b.step_many(X[60:], Y[60:], keys[60:])
    assert np.isfinite(pa).all() and np.array_equal(pa, pb) and np.array_equal(a.theta, b.theta)


def test_selectable_by_name_in_the_river_estimator_daemon_and_compare(tmp_path):
    from streamrnn.compare import build_parser
    from streamrnn.river import RNNRegressor
    from streamrnn.service import Daemon, validate_config

    reg = RNNRegressor(cell="dlru", n_hidden=4, n_inputs=2, key="k")
    for t in range(20):
        reg.learn_one({"k": t % 2, "a": float(t), "b": 1.0}, float(t % 3))
    assert reg.model.config["cell"] == "dlru" and np.isfinite(reg.predict_one({"k": 0, "a": 1.0, "b": 0.0}))

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"key": f"k{i % 5}", "a": i / 10, "y": (i % 3) / 3}) + "\n" for i in range(50)))
    cfg = validate_config(
        {
            "source": {"type": "jsonl", "path": str(src)},
            "sink": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")},
            "schema": {"features": ["a"], "target": "y", "key": "key"},
            "model": {"cell": "dlru", "n_hidden": 4, "dtype": "float32"},
            "daemon": {"progress": False},
        }
    )
    d = Daemon(cfg)
    d.run()
    assert d.model.config["cell"] == "dlru" and len(d.model.keys) == 5
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 50

    assert build_parser().parse_args(["--cell", "dlru"]).cell == "dlru"
