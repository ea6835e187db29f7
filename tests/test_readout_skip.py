"""The readout skip connection ŷ = W_out h + S x + b_out: gradients of every learner against full BPTT,
finite differences and a NumPy forward pass; initialisation, checkpoints and weights by name."""

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.cells.dispatch import CELL_IDS
from streamrnn.checkpoint import CheckpointError
from streamrnn.learners.common import cell_params_end

from .helpers import CELLS, N_OUTPUTS, TASKS, random_sequence, rel_err
from .test_forward_pytorch import pytorch_reference
from .test_gradients import finite_difference_gradient

N_HIDDEN, N_INPUTS, N_STEPS = 4, 3, 24
READOUT = ("readout.weight", "readout.bias", "readout.skip_weight")


def make_model(cell, task, seed=0, **kw):
    """The tests using this check the equations on the raw inputs: standardisation off."""
    kw.setdefault("standardize", False)
    model = sr.Model(
        cell=cell,
        n_inputs=N_INPUTS,
        n_hidden=N_HIDDEN,
        n_outputs=N_OUTPUTS[task],
        task=task,
        seed=seed,
        readout_skip=True,
        **kw,
    )
    # skip weights start at zero; random ones make the checks below see them
    w = model.get_weights()
    w["readout.skip_weight"] = np.random.default_rng(seed + 100).uniform(-0.5, 0.5, w["readout.skip_weight"].shape)
    model.set_weights(w)
    return model


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("cell", CELLS + ("egru",))
def test_rtrl_equals_bptt_equals_finite_differences_with_skip(cell, task):
    model = make_model(cell, task, seed=3)
    X, Y = random_sequence(task, n_steps=N_STEPS, n_inputs=N_INPUTS, seed=7)
    g_rtrl = model.gradient(X, Y, method="rtrl")
    g_bptt = model.gradient(X, Y, method="bptt")
    g_fd = finite_difference_gradient(model, X, Y)
    assert set(g_rtrl) == set(g_bptt) == set(model.get_weights())
    assert g_rtrl["readout.skip_weight"].shape == (N_OUTPUTS[task], N_INPUTS)
    assert rel_err(g_rtrl, g_bptt) < 1e-9
    assert rel_err(g_bptt, g_fd) < 1e-6
    assert rel_err(g_rtrl["readout.skip_weight"], g_fd["readout.skip_weight"]) < 1e-6
    assert np.abs(g_rtrl["readout.skip_weight"]).max() > 0


@pytest.mark.parametrize(
    "method, kw",
    [
        ("snap1", {}),
        ("uoro", {}),
        ("tbptt", {"truncation": 5}),
        ("tbptt", {"truncation": 5, "stride": 2}),
        ("tbptt", {"truncation": N_STEPS}),
    ],
)
@pytest.mark.parametrize("cell", CELLS)
def test_every_learner_has_the_exact_readout_gradient(cell, method, kw):
    """The readout (skip included) reads the states of the forward pass only, which every learner
    computes exactly; so its gradient is BPTT's even where the recurrent part is approximate or
    truncated. TBPTT over the whole sequence equals BPTT everywhere."""
    model = make_model(cell, "regression", seed=5)
    X, Y = random_sequence("regression", n_steps=N_STEPS, n_inputs=N_INPUTS, seed=11)
    g = model.gradient(X, Y, method=method, **kw)
    g_bptt = model.gradient(X, Y, method="bptt")
    g_fd = finite_difference_gradient(model, X, Y)
    for name in READOUT:
        assert rel_err(g[name], g_bptt[name]) < 1e-12, name
        assert rel_err(g[name], g_fd[name]) < 1e-6, name
    if method == "tbptt" and kw["truncation"] >= N_STEPS:
        assert rel_err(g, g_bptt) < 1e-9


@pytest.mark.parametrize("cell", CELLS)
def test_forward_and_skip_gradient_match_numpy(cell):
    """ŷ_t = W_out h_t + S x_t + b_out with h_t from PyTorch's equations in NumPy, and
    dΣL/dS = Σ_t (ŷ_t − y_t) x_tᵀ for the squared error."""
    model = make_model(cell, "regression", seed=2, optimizer="sgd", lr=0.0)
    X, Y = random_sequence("regression", n_steps=N_STEPS, n_inputs=N_INPUTS, seed=4, missing_every=0)
    w = model.get_weights()
    hs = pytorch_reference(cell, w, X)
    expected = hs @ w["readout.weight"].T + X @ w["readout.skip_weight"].T + w["readout.bias"]
    np.testing.assert_allclose(model.step_many(X), expected, rtol=1e-12, atol=1e-13)
    g = model.gradient(X, Y, method="rtrl")
    np.testing.assert_allclose(g["readout.skip_weight"], (expected - Y).T @ X, rtol=1e-12)


def test_sgd_step_moves_the_skip_weights_by_the_gradient():
    lr = 0.1
    model = make_model("gru", "regression", seed=4, optimizer="sgd", lr=lr)
    X, Y = random_sequence("regression", n_steps=1, n_inputs=N_INPUTS, seed=5, missing_every=0)
    before = model.get_weights()
    pred = model.step(X[0], Y[0])
    after = model.get_weights()
    np.testing.assert_allclose(
        after["readout.skip_weight"], before["readout.skip_weight"] - lr * np.outer(pred - Y[0], X[0]), rtol=1e-12
    )


@pytest.mark.parametrize("cell", CELLS)
def test_skip_starts_at_zero_as_the_same_seed_model_without_it(cell):
    X, Y = random_sequence("regression", n_steps=N_STEPS, n_inputs=N_INPUTS, seed=1, missing_every=0)
    kw = dict(cell=cell, n_inputs=N_INPUTS, n_hidden=N_HIDDEN, n_outputs=2, seed=9, optimizer="sgd", lr=0.0)
    plain, skip = sr.Model(**kw), sr.Model(readout_skip=True, **kw)
    ws = skip.get_weights()
    assert not ws.pop("readout.skip_weight").any()
    wp = plain.get_weights()
    assert all(np.array_equal(ws[name], wp[name]) for name in wp)
    assert np.array_equal(plain.step_many(X), skip.step_many(X))
    gp, gs = plain.gradient(X, Y), skip.gradient(X, Y)
    assert all(np.array_equal(gp[name], gs[name]) for name in gp)


@pytest.mark.parametrize("learner", ["rtrl", "uoro", "tbptt"])
def test_checkpoint_holds_the_skip_weights_and_continues_bit_identically(learner, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, N_INPUTS))
    Y = (X @ [1.0, -2.0, 0.5])[:, None]
    keys = [t % 3 for t in range(300)]
    kw = dict(truncation=4) if learner == "tbptt" else {}
    a = sr.Model(
        cell="gru", n_inputs=N_INPUTS, n_hidden=N_HIDDEN, learner=learner, lr=0.02, readout_skip=True, seed=1, **kw
    )
    a.step_many(X[:150], Y[:150], keys[:150])
    arrays, meta = a.state_arrays()
    assert meta["config"]["readout_skip"] is True
    a.save(tmp_path / "m.ckpt")
    b = sr.Model.load(tmp_path / "m.ckpt")
    assert b.readout_skip and np.array_equal(
        b.get_weights()["readout.skip_weight"], a.get_weights()["readout.skip_weight"]
    )
    assert np.array_equal(a.step_many(X[150:], Y[150:], keys[150:]), b.step_many(X[150:], Y[150:], keys[150:]))
    assert np.array_equal(a.theta, b.theta) and np.array_equal(a.opt_state, b.opt_state)


@pytest.mark.parametrize("cell", CELLS)
def test_skip_learns_a_linear_map_of_the_input_better(cell):
    """y_t = a·x_t: through the skip path it is one linear map, without it the cell must encode it (the
    network alone: the linear head would fit the map either way)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, N_INPUTS))
    Y = (X @ [1.0, -2.0, 0.5])[:, None]
    err = {}
    for skip in (False, True):
        m = sr.Model(cell=cell, n_inputs=N_INPUTS, n_hidden=N_HIDDEN, lr=0.02, readout_skip=skip, seed=1, head_lags=0)
        err[skip] = np.abs(m.step_many(X, Y) - Y)[-200:].mean()
    assert err[True] < 0.5 * err[False]


def test_a_checkpoint_from_before_the_option_loads_as_a_model_without_skip():
    m = sr.Model(cell="gru", n_inputs=2, n_hidden=3)
    arrays, meta = m.state_arrays()
    meta = {**meta, "config": {k: v for k, v in meta["config"].items() if k != "readout_skip"}}
    restored = sr.Model.from_state(arrays, meta)
    assert not restored.readout_skip and np.array_equal(restored.theta, m.theta)
    with pytest.raises(CheckpointError):
        sr.Model(cell="gru", n_inputs=2, n_hidden=3, readout_skip=True).load_state(arrays, meta)


@pytest.mark.parametrize("cell", sorted(CELL_IDS))
def test_kernels_find_the_readout_where_the_model_puts_it(cell):
    """The learners locate the readout (and its skip block) at ``cell_params_end``; the Model lays
    the parameters out by name: both must agree for every cell."""
    m = sr.Model(cell=cell, n_inputs=N_INPUTS, n_hidden=N_HIDDEN, n_outputs=2, readout_skip=True)
    assert cell_params_end(CELL_IDS[cell], N_INPUTS, N_HIDDEN) == m.n_params_cell
    names = list(m.get_weights())
    assert names[-3:] == ["readout.weight", "readout.bias", "readout.skip_weight"]
    assert m.n_params == m.n_params_cell + 2 * (N_HIDDEN + 1 + N_INPUTS)


def test_set_weights_requires_the_skip_weights():
    m = sr.Model(cell="rnn", n_inputs=2, n_hidden=3, n_outputs=2, readout_skip=True)
    w = m.get_weights()
    assert w["readout.skip_weight"].shape == (2, 2) and m.n_params == sum(v.size for v in w.values())
    with pytest.raises(ValueError, match="skip_weight"):
        m.set_weights({k: v for k, v in w.items() if k != "readout.skip_weight"})
