"""Stacked layers online (``n_layers``): exact RTRL through the stack, BPTT, finite differences,
the forward pass against PyTorch's equations, state sizes, checkpoints, refusals and learning."""

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.cells.dispatch import CELL_IDS
from streamrnn.learners.bptt import sequence_loss
from streamrnn.losses import TASK_IDS

from .helpers import (
    CELLS,
    N_OUTPUTS,
    lag_buffer_bytes,
    layer_param_count,
    random_sequence,
    rel_err,
    rtrl_bytes_per_key,
    tbptt_bytes_per_key,
)
from .test_forward_pytorch import pytorch_reference

N_IN, N, T = 3, 4, 24


def make(cell, n_layers, task="regression", n=N, **kw):
    kw.setdefault("standardize", False)
    return sr.Model(
        cell=cell, n_inputs=N_IN, n_hidden=n, n_outputs=N_OUTPUTS[task], task=task, n_layers=n_layers, seed=5, **kw
    )


def finite_differences(model, X, Y, eps=1e-6):
    """Central differences of Σ_t L_t over every parameter, by forward passes only, on the rows the
    learner is given (standardised inputs and targets, target feedback: ``Model.cell_sequence``)."""
    Xa, Ys, learn = model.cell_sequence(X, Y)
    c = model.config
    args = (CELL_IDS[c["cell"]], TASK_IDS[c["task"]], model.n_cell_inputs, model.n_hidden, model.n_outputs)
    theta = model.flat_parameters.copy()
    grad = np.empty_like(theta)
    for p in range(theta.size):
        orig = theta[p]
        theta[p] = orig + eps
        up = sequence_loss(*args, theta, model.n_params_cell, Xa, Ys, learn, model.n_layers)
        theta[p] = orig - eps
        down = sequence_loss(*args, theta, model.n_params_cell, Xa, Ys, learn, model.n_layers)
        theta[p] = orig
        grad[p] = (up - down) / (2 * eps)
    return model.unflatten(grad)


def test_layout_uses_pytorch_names_and_shapes():
    m = make("gru", 3)
    w = m.get_weights()
    assert list(w)[:8] == [
        "weight_ih_l0",
        "weight_hh_l0",
        "bias_ih_l0",
        "bias_hh_l0",
        "weight_ih_l1",
        "weight_hh_l1",
        "bias_ih_l1",
        "bias_hh_l1",
    ]
    assert w["weight_ih_l0"].shape == (3 * N, N_IN)
    assert w["weight_ih_l1"].shape == w["weight_ih_l2"].shape == (3 * N, N)  # layer l reads the n outputs below
    assert w["readout.weight"].shape == (N_OUTPUTS["regression"], N)  # the top layer's h
    assert m.n_params_cell == layer_param_count("gru", N_IN, N) + 2 * layer_param_count("gru", N, N)
    assert m.config["n_layers"] == 3 and m.dims.n_layers == 3
    assert m.hidden_state().shape == (3 * N,)


@pytest.mark.parametrize("cell", CELLS)
def test_forward_matches_pytorch_equations_layer_by_layer(cell):
    """Layer 1 runs PyTorch's equations (NumPy, tests/test_forward_pytorch.py) on layer 0's hidden
    outputs; the readout reads the top layer. Nothing of streamrnn's kernels is used for the reference."""
    m = make(cell, 2, lr=0.0, optimizer="sgd")
    X = np.random.default_rng(1).normal(size=(T, N_IN))
    w = m.get_weights()
    h0 = pytorch_reference(cell, w, X)
    w1 = {k.replace("_l1", "_l0"): v for k, v in w.items() if k.endswith("_l1")}
    h1 = pytorch_reference(cell, w1, h0)
    preds = m.step_many(X)
    expected = h1 @ w["readout.weight"].T + w["readout.bias"]
    assert np.abs(preds - expected).max() < 1e-12
    assert np.abs(m.hidden_state()[:N] - h0[-1]).max() < 1e-12
    S = m.hidden_state().size // 2
    assert np.abs(m.hidden_state()[S : S + N] - h1[-1]).max() < 1e-12


CASES = [(cell, 2) for cell in CELLS] + [("gru", 3)]


@pytest.mark.parametrize("preprocess", [False, True], ids=["raw", "standardize+lags"])
@pytest.mark.parametrize("cell,n_layers", CASES)
def test_rtrl_equals_bptt_equals_finite_differences(cell, n_layers, preprocess):
    kw = dict(standardize=True, target_lags=2) if preprocess else {}
    m = make(cell, n_layers, **kw)
    X, Y = random_sequence("regression", n_steps=T, n_inputs=N_IN, seed=7)
    g_rtrl = m.gradient(X, Y, method="rtrl")
    g_bptt = m.gradient(X, Y, method="bptt")
    g_fd = finite_differences(m, X, Y)
    assert set(g_rtrl) == set(m.get_weights())
    assert rel_err(g_rtrl, g_bptt) < 1e-9
    assert rel_err(g_bptt, g_fd) < 1e-6
    assert rel_err(g_rtrl, g_fd) < 1e-6
    for layer in range(n_layers):  # every layer's every block carries gradient
        for block in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            assert np.abs(g_rtrl[f"{block}_l{layer}"]).max() > 0


@pytest.mark.parametrize("task", ["classification", "binary"])
def test_rtrl_equals_bptt_for_the_other_losses(task):
    m = make("lstm", 2, task=task)
    X, Y = random_sequence(task, n_steps=T, n_inputs=N_IN, seed=3)
    g_rtrl, g_bptt = m.gradient(X, Y, method="rtrl"), m.gradient(X, Y, method="bptt")
    assert rel_err(g_rtrl, g_bptt) < 1e-9
    assert rel_err(g_bptt, finite_differences(m, X, Y)) < 1e-6


@pytest.mark.parametrize("cell", ["ernn", "egru", "elstm", "dlru"])
def test_elementwise_stacks_run_exact_dense_rtrl(cell):
    """A layer's state depends on every parameter below it, so the element-wise cells run the dense
    form in a stack (one layer: the per-unit O(P) form, unchanged)."""
    m = make(cell, 2)
    assert m._spec.name == "rtrl" and make(cell, 1)._spec.name == "snap1"
    X, Y = random_sequence("regression", n_steps=T, n_inputs=N_IN, seed=4)
    g_rtrl, g_bptt = m.gradient(X, Y, method="rtrl"), m.gradient(X, Y, method="bptt")
    assert rel_err(g_rtrl, g_bptt) < 1e-9
    assert rel_err(g_bptt, finite_differences(m, X, Y)) < 1e-6


@pytest.mark.parametrize("cell", CELLS)
def test_rtrl_equals_bptt_on_the_blas_path(cell):
    """n_hidden >= GEMM_MIN_WIDTH: the cross-layer products run as BLAS GEMMs."""
    m = make(cell, 2, n=17, readout_skip=True)
    X, Y = random_sequence("regression", n_steps=12, n_inputs=N_IN, seed=9)
    assert rel_err(m.gradient(X, Y, method="rtrl"), m.gradient(X, Y, method="bptt")) < 1e-9


def test_online_rtrl_with_zero_lr_reports_the_offline_losses():
    m = make("gru", 2, optimizer="sgd", lr=0.0)
    X, Y = random_sequence("regression", n_steps=T, n_inputs=N_IN, seed=2)
    before = m.flat_parameters.copy()
    _, losses = m.step_many(X, Y, return_loss=True)
    assert np.array_equal(before, m.flat_parameters)
    Xa, Ys, learn = m.cell_sequence(X, Y)
    offline = sequence_loss(CELL_IDS["gru"], 0, N_IN, N, 2, m.theta, m.n_params_cell, Xa, Ys, learn, 2)
    assert np.nansum(losses) == pytest.approx(offline, rel=1e-12)


@pytest.mark.parametrize("learner", ["snap1", "uoro"])
def test_learners_without_stacks_refuse_n_layers(learner):
    with pytest.raises(ValueError, match="does not support n_layers > 1"):
        make("gru", 2, learner=learner)
    m = make("gru", 2)
    X, Y = random_sequence("regression", n_steps=5, n_inputs=N_IN)
    with pytest.raises(ValueError, match="does not support n_layers > 1"):
        m.gradient(X, Y, method=learner)
    with pytest.raises(ValueError, match="n_layers must be a positive integer"):
        make("gru", 0)


@pytest.mark.parametrize("n", [8, 16])
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_rtrl_state_bytes_per_key_by_formula(cell, n_layers, n):
    m = sr.Model(cell=cell, n_inputs=N_IN, n_hidden=n, n_layers=n_layers)
    assert m.state_bytes_per_key == rtrl_bytes_per_key(cell, N_IN, n, n_layers) + lag_buffer_bytes(m)
    _ = m.step([0.1, 0.2, 0.3], y=[1.0], key="a")
    assert sum(a.nbytes for a in m.key_state("a").values()) == m.state_bytes_per_key


def test_save_load_round_trip_is_bit_identical(tmp_path):
    X, Y = random_sequence("regression", n_steps=60, n_inputs=N_IN, seed=1)
    keys = ["a", "b", "c"] * 20
    a = sr.Model(cell="lstm", n_inputs=N_IN, n_hidden=N, n_outputs=2, n_layers=2, lr=1e-2, seed=2)
    a.step_many(X[:30], Y[:30], keys=keys[:30])
    a.save(tmp_path / "a.ckpt")
    b = sr.Model.load(tmp_path / "a.ckpt")
    assert b.config == a.config and b.n_layers == 2
    for k in "abc":
        sa, sb = a.key_state(k), b.key_state(k)
        assert all(np.array_equal(sa[name], sb[name]) for name in sa)
    pa, la = a.step_many(X[30:], Y[30:], keys=keys[30:], return_loss=True)
    pb, lb = b.step_many(X[30:], Y[30:], keys=keys[30:], return_loss=True)
    assert np.array_equal(pa, pb) and np.array_equal(la, lb, equal_nan=True)
    assert np.array_equal(a.theta, b.theta) and np.array_equal(a.opt_state, b.opt_state)


def test_one_layer_checkpoint_has_no_n_layers_and_old_files_load_as_one_layer(tmp_path):
    from streamrnn import checkpoint

    m = sr.Model(cell="gru", n_inputs=2, n_hidden=3)
    m.step_many(np.ones((4, 2)), np.ones((4, 1)))
    m.save(tmp_path / "one.ckpt")
    _, meta = checkpoint.load(tmp_path / "one.ckpt")
    assert "n_layers" not in meta["config"]  # the file of a one-layer model is the format of before
    back = sr.Model.load(tmp_path / "one.ckpt")
    assert back.config["n_layers"] == 1 and np.array_equal(back.theta, m.theta)
    two = sr.Model(cell="gru", n_inputs=2, n_hidden=3, n_layers=2)
    two.save(tmp_path / "two.ckpt")
    assert checkpoint.load(tmp_path / "two.ckpt")[1]["config"]["n_layers"] == 2
    with pytest.raises(checkpoint.CheckpointError):  # a one-layer file does not restore into a stack
        two.load_state(*m.state_arrays())


def test_race_runs_stacks_member_by_member():
    """Under ``optimizer="race"`` member 1 (rate factor 1) is the plain Adam model, bit for bit."""
    X, Y = random_sequence("regression", n_steps=40, n_inputs=N_IN, seed=3)
    race = sr.Model(cell="gru", n_inputs=N_IN, n_hidden=N, n_outputs=2, n_layers=2, optimizer="race", lr=1e-2)
    plain = sr.Model(cell="gru", n_inputs=N_IN, n_hidden=N, n_outputs=2, n_layers=2, optimizer="adam", lr=1e-2)
    race.step_many(X, Y)
    plain.step_many(X, Y)
    factors = list(sr.optim.RACE_FACTORS)
    assert np.array_equal(race.theta[factors.index(1.0)], plain.theta)


def test_two_layers_learn_the_add_task_past_the_one_dependency_floor():
    """Binary add task (x_{t-3} and x_{t-8} set P(y_t = 1)): a memoryless predictor cannot beat
    0.6616 nats, one remembering only x_{t-3} 0.5192; the optimum is 0.4545. The running mean of y,
    the memoryless baseline, is measured on the same rows."""
    from streamrnn.datasets import binary_add_task

    X, Y = binary_add_task(30_000, seed=0)
    m = sr.Model(cell="gru", n_inputs=1, n_hidden=16, n_outputs=1, task="binary", lr=1e-3, seed=0, n_layers=2)
    _, losses = m.step_many(X, Y, return_loss=True)
    late = losses[-3000:].mean()
    p = np.clip((np.cumsum(Y) - Y + 1.0) / (np.arange(len(Y)) + 2.0), 1e-6, 1 - 1e-6)  # mean of earlier y
    baseline = -(Y * np.log(p) + (1 - Y) * np.log(1 - p))[-3000:].mean()
    assert baseline > 0.64
    assert 0.4545 - 0.02 < late < 0.51, (late, baseline)
    assert m.stats["influence_resets"] == 0 and m.stats["updates"] == 30_000


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "egru", "elstm", "dlru"])
def test_input_jacobian_forward_equals_reverse_equals_finite_differences(cell):
    """The cells' input Jacobian ds'/dx, forward (``dispatch.input_jacobian``, what RTRL crosses layers
    with) against central differences of one forward step and against the reverse form
    ``W_ih^T da_ih`` (``common.ih_transpose_product``, what BPTT and ``diagnose`` pass down)."""
    from streamrnn.cells.common import ih_transpose_product
    from streamrnn.cells.dispatch import (
        cache_size,
        cell_backward,
        cell_forward,
        input_jacobian,
        n_gates,
        recurrent_width,
        state_size,
        unit_coefficient_shape,
    )

    c, n, m_in = CELL_IDS[cell], 4, 3
    rng = np.random.default_rng(0)
    model = sr.Model(cell=cell, n_inputs=m_in, n_hidden=n, seed=1)
    w = model.flat_parameters[: model.n_params_cell].copy()
    S, C, G, rec = state_size(c, n), cache_size(c, n), n_gates(c), recurrent_width(c, n)
    x, s = rng.normal(size=m_in), rng.normal(size=S) * 0.5
    s_new, cache = np.zeros(S), np.zeros(C)
    cell_forward(c, w, m_in, n, x, s, s_new, cache)
    Jx = np.zeros((S + 1, m_in))
    input_jacobian(c, w, m_in, n, s, s_new, cache, np.zeros(unit_coefficient_shape(c, n)), Jx)
    fd = np.zeros((S, m_in))
    for k in range(m_in):
        up, down, su, sd = x.copy(), x.copy(), np.zeros(S), np.zeros(S)
        up[k] += 1e-6
        down[k] -= 1e-6
        cell_forward(c, w, m_in, n, up, s, su, np.zeros(C))
        cell_forward(c, w, m_in, n, down, s, sd, np.zeros(C))
        fd[:, k] = (su - sd) / 2e-6
    assert np.abs(Jx[:S] - fd).max() < 1e-8
    g = rng.normal(size=S)
    da_ih, da_hh, dx = np.zeros(G * n), np.zeros(G * n), np.zeros(m_in)
    cell_backward(c, w, m_in, n, x, s, s_new, cache, g, np.zeros(S), np.zeros(w.size), da_ih, da_hh)
    ih_transpose_product(w, G, m_in, n, rec, da_ih, dx)
    assert np.abs(dx - Jx[:S].T @ g).max() < 1e-12


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_input_sensitivity_of_a_stack_equals_finite_differences(cell):
    """``diagnose.input_sensitivity``: ‖∂h^top_{T-1}/∂x_{T-1-k}‖ through both layers."""
    from streamrnn import diagnose

    m = make(cell, 2)
    X = np.random.default_rng(2).normal(size=(7, N_IN))
    got = diagnose.input_sensitivity(m, X)
    top = m.hidden_state().size // 2

    def last_top_h(Xa):
        s, nxt, out = np.zeros(m.dims.state_size), np.zeros(m.dims.state_size), np.zeros(m.n_outputs)
        for x in Xa:
            m.predict_from_state(x, s, out, nxt)
            s, nxt = nxt.copy(), s
        return s[top : top + N]

    want = np.zeros(len(X))
    for t in range(len(X)):
        J = np.zeros((N, N_IN))
        for c in range(N_IN):
            up, down = X.copy(), X.copy()
            up[t, c] += 1e-6
            down[t, c] -= 1e-6
            J[:, c] = (last_top_h(up) - last_top_h(down)) / 2e-6
        want[len(X) - 1 - t] = np.linalg.norm(J)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------- TBPTT
@pytest.mark.parametrize("preprocess", [False, True], ids=["raw", "standardize+lags"])
@pytest.mark.parametrize("cell,n_layers", CASES)
def test_tbptt_with_a_window_past_the_sequence_equals_bptt(cell, n_layers, preprocess):
    kw = dict(standardize=True, target_lags=2) if preprocess else {}
    m = make(cell, n_layers, learner="tbptt", truncation=T, **kw)
    X, Y = random_sequence("regression", n_steps=T, n_inputs=N_IN, seed=7)
    g_bptt = m.gradient(X, Y, method="bptt")
    assert rel_err(m.gradient(X, Y, method="tbptt"), g_bptt) < 1e-9
    assert rel_err(m.gradient(X, Y, method="tbptt", truncation=T + 5, stride=5), g_bptt) < 1e-9
    assert rel_err(g_bptt, finite_differences(m, X, Y)) < 1e-6


@pytest.mark.parametrize("cell", CELLS)
def test_tbptt_windows_are_bptt_from_each_window_start(cell):
    """TBPTT(k, k): each window's gradient is full BPTT over its k rows from the state the stack
    reached before them (``bptt_sequence_gradient`` from that state, held constant)."""
    from streamrnn.learners.bptt import bptt_sequence_gradient

    k = 6
    m = make(cell, 2, learner="tbptt", truncation=k)
    X, Y = random_sequence("regression", n_steps=T, n_inputs=N_IN, seed=5)
    Yf, has_y = m._targets(Y, T)
    want = np.zeros(m.n_params)
    s, nxt, out = np.zeros(m.dims.state_size), np.zeros(m.dims.state_size), np.zeros(m.n_outputs)
    for start in range(0, T, k):
        g = np.zeros(m.n_params)
        end = start + k
        args = (CELL_IDS[cell], 0, N_IN, N, 2, m.theta, m.n_params_cell)
        bptt_sequence_gradient(*args, X[start:end], Yf[start:end], has_y[start:end], s, g)
        want += g
        for x in X[start:end]:
            m.predict_from_state(x, s, out, nxt)
            s, nxt = nxt.copy(), s
    got = m.gradient(X, Y, method="tbptt")
    assert rel_err(got, m.unflatten(want)) < 1e-9
    assert rel_err(got, m.gradient(X, Y, method="bptt")) > 1e-3  # truncation matters here


@pytest.mark.parametrize("n", [8, 16])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_tbptt_state_bytes_per_key_by_formula(n_layers, n):
    m = sr.Model(cell="lstm", n_inputs=N_IN, n_hidden=n, n_layers=n_layers, learner="tbptt", truncation=5, head_lags=0)
    assert m.state_bytes_per_key == tbptt_bytes_per_key("lstm", N_IN, n, n_layers, 5, 1)
    _ = m.step([0.1, 0.2, 0.3], y=[1.0], key="a")
    assert sum(a.nbytes for a in m.key_state("a").values()) == m.state_bytes_per_key


def test_online_tbptt_stack_survives_save_and_load(tmp_path):
    X, Y = random_sequence("regression", n_steps=50, n_inputs=N_IN, seed=1)
    keys = ["a", "b"] * 25
    a = sr.Model(
        cell="gru", n_inputs=N_IN, n_hidden=N, n_outputs=2, n_layers=2, learner="tbptt", truncation=4, stride=2, lr=1e-2
    )
    a.step_many(X[:25], Y[:25], keys=keys[:25])
    a.save(tmp_path / "a.ckpt")
    b = sr.Model.load(tmp_path / "a.ckpt")
    pa = a.step_many(X[25:], Y[25:], keys=keys[25:])
    pb = b.step_many(X[25:], Y[25:], keys=keys[25:])
    assert np.array_equal(pa, pb) and np.array_equal(a.theta, b.theta)
    assert a.stats["updates"] > 0


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "egru", "dlru"])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize(
    "kw", [{}, {"target_lags": 2}, {"standardize": False}, {"learner": "tbptt", "truncation": 4}, {"optimizer": "race"}]
)
def test_the_memory_estimate_of_a_stack_is_its_measured_state(cell, n_layers, kw):
    """The daemon's memory bound (streamrnn.memory, before anything is allocated) counts a stack's per-key
    state as the Model then allocates it, the target-feedback and head buffers included."""
    from streamrnn.memory import estimate_model_bytes

    cfg = dict(cell=cell, n_inputs=3, n_hidden=8, n_layers=n_layers, max_keys=10, **kw)
    per_key = estimate_model_bytes(cfg, n_keys=10, parts=True)[3]
    assert per_key == sr.Model(**cfg).state_bytes_per_key


def test_the_daemon_runs_a_stack_from_its_model_section(tmp_path):
    """``[model] n_layers = 2``: the daemon's predictions are those of ``Model(n_layers=2).step_many`` on the
    same rows, and the checkpoint restores the stack."""
    import json

    from streamrnn.service import Daemon, validate_config

    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((40, 1)), rng.standard_normal((40, 1))
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"k": "a", "x": float(x), "y": float(y)}) + "\n" for x, y in zip(X[:, 0], Y[:, 0]))
    )
    model = dict(cell="lstm", n_hidden=3, n_layers=2, lr=0.01, seed=2)
    cfg = {
        "source": {"type": "jsonl", "path": str(src)},
        "sink": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")},
        "schema": {"features": ["x"], "target": "y", "key": "k"},
        "model": model,
        "checkpoint": {"path": str(tmp_path / "d.ckpt")},
        "daemon": {"batch_size": 9, "progress": False},
    }
    d = Daemon(validate_config(cfg))
    d.run()
    with open(tmp_path / "out.jsonl") as fh:
        got = [json.loads(line)["prediction"] for line in fh]
    want = sr.Model(n_inputs=1, **model).step_many(X, Y, ["a"] * 40)[:, 0]
    assert got == want.tolist()
    again = Daemon(validate_config(cfg))  # resumes from the checkpoint: the stack, at the end of the file
    assert again.model.n_layers == 2 and again.model.get_weights().keys() == d.model.get_weights().keys()
    for name, w in d.model.get_weights().items():
        np.testing.assert_array_equal(again.model.get_weights()[name], w)
    again.close()
