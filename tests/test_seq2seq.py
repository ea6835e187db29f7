"""Offline encoder-decoder (bptt.fit(output="seq2seq")): the forward pass against the cell equations
written out in NumPy, the gradient against central finite differences, the kernels' initial-state
additions against finite differences, a learning task, save/load and bad input."""

import numpy as np
import pytest

from streamrnn import bptt
from streamrnn.bptt import OfflineModel
from streamrnn.cells.dispatch import CELL_IDS, state_size
from streamrnn.learners.bptt_batch import allocate, stack_backward, stack_forward

from .helpers import offline_fd_check


def rel_err(a, b):
    return np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-300)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def cell_step(cell, w, sfx, x, h, c):
    """One step of PyTorch's cell equations; (h', c') for a batch x (B, m), h, c (B, n)."""
    Wi, Wh, bi, bh = (w[f"{k}_{sfx}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    gi, gh = x @ Wi.T + bi, h @ Wh.T + bh
    n = h.shape[1]
    if cell == "rnn":  # h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
        return np.tanh(gi + gh), c
    if cell == "gru":  # r, z, n; h' = (1 - z) n + z h
        r = sigmoid(gi[:, :n] + gh[:, :n])
        z = sigmoid(gi[:, n : 2 * n] + gh[:, n : 2 * n])
        nn = np.tanh(gi[:, 2 * n :] + r * gh[:, 2 * n :])
        return (1 - z) * nn + z * h, c
    a = gi + gh  # lstm: i, f, g, o; c' = f c + i g, h' = o tanh(c')
    i, f, g, o = sigmoid(a[:, :n]), sigmoid(a[:, n : 2 * n]), np.tanh(a[:, 2 * n : 3 * n]), sigmoid(a[:, 3 * n :])
    c2 = f * c + i * g
    return o * np.tanh(c2), c2


def reference_encoder(cell, w, X, L, bidirectional, n):
    """Final (h, c) of every layer, summed over the directions, as the decoder's start."""
    T, B = X.shape[:2]
    inp, start = X, []
    for l in range(L):
        outs, finals = [], []
        for d, sfx in enumerate(["", "_reverse"] if bidirectional else [""]):
            h, c = np.zeros((B, n)), np.zeros((B, n))
            out = np.zeros((T, B, n))
            for t in range(T - 1, -1, -1) if d else range(T):
                h, c = cell_step(cell, w, f"l{l}{sfx}", inp[t], h, c)
                out[t] = h
            outs.append(out)
            finals.append((h, c))
        start.append((sum(f[0] for f in finals), sum(f[1] for f in finals)))
        inp = np.concatenate(outs, axis=-1)
    return start


def reference_decoder_step(cell, w, state, u):
    """One decoder step from per-layer (h, c); returns the new states and the readout's logits."""
    new, inp = [], u
    for l, (h, c) in enumerate(state):
        h, c = cell_step(cell, w, f"l{l}_dec", inp, h, c)
        new.append((h, c))
        inp = h
    return new, inp @ w["readout.weight"].T + w["readout.bias"]


def make(cell, L=1, bidirectional=False, task="regression", n_outputs=2, seed=3, **kw):
    return OfflineModel(
        cell=cell,
        n_inputs=2,
        n_hidden=3,
        n_outputs=n_outputs,
        n_layers=L,
        bidirectional=bidirectional,
        output="seq2seq",
        task=task,
        seed=seed,
        **kw,
    )


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("L, bidirectional", [(1, False), (2, True)])
def test_forward_equals_the_cell_equations(cell, L, bidirectional):
    rng = np.random.default_rng(11)
    T_in, T_out, B, n, k = 6, 4, 3, 3, 2
    X = rng.normal(size=(T_in, B, 2))
    Y = rng.normal(size=(T_out, B, k))
    om = make(cell, L, bidirectional, output_steps=T_out)
    w = om.get_weights()
    assert {f"weight_ih_l{l}_dec" for l in range(L)} <= set(w)
    assert w["weight_ih_l0_dec"].shape == (om.n_hidden * {"rnn": 1, "gru": 3, "lstm": 4}[cell], k)
    start = reference_encoder(cell, w, X, L, bidirectional, n)
    # teacher forcing: input 0 at the first step, then the previous true target;
    # loss = (1/B) Σ_b Σ_t ½‖ŷ_t − y_t‖²
    state, loss = start, 0.0
    for t in range(T_out):
        state, z = reference_decoder_step(cell, w, state, np.zeros((B, k)) if t == 0 else Y[t - 1])
        loss += 0.5 * ((z - Y[t]) ** 2).sum() / B
    assert om.loss(X, Y) == pytest.approx(loss, rel=1e-12)
    # free running: the previous prediction is the next input
    state, u, want = start, np.zeros((B, k)), []
    for _ in range(T_out + 2):
        state, u = reference_decoder_step(cell, w, state, u)
        want.append(u)
    assert np.abs(om.predict(X) - np.array(want[:T_out])).max() < 1e-12
    assert np.abs(om.predict(X, n_steps=T_out + 2) - np.array(want)).max() < 1e-12


def test_classification_decoder_reads_one_hot_targets_and_its_argmax():
    rng = np.random.default_rng(5)
    T_in, T_out, B, n, K = 4, 5, 6, 3, 3
    X = rng.normal(size=(T_in, B, 2))
    Y = rng.integers(0, K, size=(T_out, B)).astype(float)
    om = make("gru", task="classification", n_outputs=K)
    w = om.get_weights()
    start = reference_encoder("gru", w, X, 1, False, n)
    eye = np.eye(K)
    state, loss = start, 0.0
    for t in range(T_out):  # cross-entropy of softmax(z) at the true class
        state, z = reference_decoder_step("gru", w, state, np.zeros((B, K)) if t == 0 else eye[Y[t - 1].astype(int)])
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss -= logp[np.arange(B), Y[t].astype(int)].sum() / B
    assert om.loss(X, Y) == pytest.approx(loss, rel=1e-12)
    state, u, want = start, np.zeros((B, K)), []
    for _ in range(T_out):
        state, z = reference_decoder_step("gru", w, state, u)
        want.append(np.exp(z) / np.exp(z).sum(axis=1, keepdims=True))
        u = eye[np.argmax(z, axis=1)]
    assert np.abs(om.predict(X, n_steps=T_out) - np.array(want)).max() < 1e-12


def fd_rel_err(om, X, Y, eps=1e-6):
    return offline_fd_check(om, X, Y, eps)


SEQ_CASES = [
    # L, bidirectional, tie_directions, task, T_in, T_out, before, after
    (1, False, False, "regression", 5, 3, (), ()),
    (2, True, False, "regression", 4, 7, (3,), (2,)),
    (2, True, True, "classification", 6, 4, (), ()),
    (1, True, False, "binary", 3, 5, (), (2,)),
]


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("case", SEQ_CASES, ids=lambda c: f"L{c[0]}-bi{int(c[1])}-tie{int(c[2])}-{c[3]}")
def test_gradient_finite_differences(cell, case):
    L, bi, tie, task, T_in, T_out, before, after = case
    rng = np.random.default_rng(7)
    B = 3
    K = {"regression": 2, "classification": 3, "binary": 1}[task]
    X = rng.normal(size=(T_in, B, 2))
    if task == "regression":
        Y = rng.normal(size=(T_out, B, K))
    else:
        Y = rng.integers(0, 3 if task == "classification" else 2, size=(T_out, B)).astype(float)
    om = make(
        cell,
        L,
        bi,
        task=task,
        n_outputs=K,
        tie_directions=tie,
        hidden_layers_before=before,
        hidden_layers_after=after,
        seed=2,
    )
    err, g = fd_rel_err(om, X, Y)
    assert err < 1e-6, err
    grads = om.gradient(X, Y)
    for name in ("weight_hh_l0", "weight_hh_l0_dec", f"weight_ih_l{L - 1}", f"weight_ih_l{L - 1}_dec"):
        assert np.abs(grads[name]).max() > 1e-6, name  # encoder and decoder both carry gradient


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_kernel_initial_and_final_state_gradients_finite_differences(cell):
    """stack_forward(S0) and stack_backward(G_ST, G_S0) on the loss
    F = Σ A ⊙ outputs[L-1] + Σ C ⊙ states[:, :, T] (a direct term on the final states)."""
    rng = np.random.default_rng(3)
    L, D, n, T, B, m = 2, 2, 3, 4, 2, 2
    cid = CELL_IDS[cell]
    om = OfflineModel(cell=cell, n_inputs=m, n_hidden=n, n_layers=L, bidirectional=True, seed=1)
    theta, offs = om.theta, om._offs
    S = state_size(cid, n)
    X = rng.normal(size=(T, B, m))
    S0 = rng.normal(size=(L, D, B, S)) * 0.5
    A = rng.normal(size=(T, B, D * n))
    C = rng.normal(size=(L, D, B, S))

    def F(s0):
        states, caches, outputs = allocate(cid, L, D, n, T, B, np.float64)
        stack_forward(cid, L, D, n, theta, offs, X, states, caches, outputs, np.ascontiguousarray(s0))
        return float((A * outputs[-1]).sum() + (C * states[:, :, T]).sum()), (states, caches, outputs)

    _, (states, caches, outputs) = F(S0)
    assert np.array_equal(states[:, :, 0], S0)
    grad, G_X, G_S0 = np.zeros_like(theta), np.zeros_like(X), np.zeros_like(S0)
    stack_backward(cid, L, D, n, theta, offs, X, states, caches, outputs, A.copy(), grad, G_X, G_ST=C, G_S0=G_S0)
    num = np.empty_like(S0)
    for idx in np.ndindex(S0.shape):
        e = np.zeros_like(S0)
        e[idx] = 1e-6
        num[idx] = (F(S0 + e)[0] - F(S0 - e)[0]) / 2e-6
    assert rel_err(G_S0, num) < 1e-7
    # without S0, G_ST or G_S0 the kernels are the zero-state ones: S0 = 0 gives the same numbers
    s_a, c_a, o_a = allocate(cid, L, D, n, T, B, np.float64)
    stack_forward(cid, L, D, n, theta, offs, X, s_a, c_a, o_a)
    s_b, c_b, o_b = allocate(cid, L, D, n, T, B, np.float64)
    stack_forward(cid, L, D, n, theta, offs, X, s_b, c_b, o_b, np.zeros_like(S0))
    assert np.array_equal(o_a, o_b) and np.array_equal(s_a, s_b)
    g_a, gx_a = np.zeros_like(theta), np.zeros_like(X)
    stack_backward(cid, L, D, n, theta, offs, X, s_a, c_a, o_a, A.copy(), g_a, gx_a)
    g_b, gx_b = np.zeros_like(theta), np.zeros_like(X)
    stack_backward(cid, L, D, n, theta, offs, X, s_a, c_a, o_a, A.copy(), g_b, gx_b, G_ST=np.zeros_like(C))
    assert np.array_equal(g_a, g_b) and np.array_equal(gx_a, gx_b)


def reverse_task(rng, N):
    """x_t ~ N(0, 1), t = 0..4; the targets are x_4, x_3, x_2 (the last three, reversed)."""
    X = rng.normal(size=(5, N, 1))
    return X, X[[4, 3, 2]]


def test_learns_to_emit_the_last_three_inputs_reversed():
    rng = np.random.default_rng(0)
    X, Y = reverse_task(rng, 2000)
    Xt, Yt = reverse_task(rng, 500)
    m = bptt.fit(X, Y, cell="gru", n_hidden=16, output="seq2seq", epochs=30, batch_size=32, lr=1e-2, seed=0)
    assert m.output_steps == 3
    p = m.predict(Xt)  # free running on held-out sequences
    assert p.shape == (3, 500, 1)
    mse = float(np.mean((p - Yt) ** 2))
    baseline = float(np.mean(Yt**2))  # no memory: predict 0, the targets' mean; variance 1
    # measured: 0.0049 (per output step 0.0004, 0.0042, 0.0102); the baseline is 1.02
    assert 0.9 < baseline < 1.1
    assert mse < 0.05 and mse < 0.05 * baseline, (mse, baseline)


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(5, 20, 2))
    Y = rng.normal(size=(3, 20, 2))
    m = bptt.fit(
        X,
        Y,
        cell="lstm",
        n_hidden=3,
        n_layers=2,
        bidirectional=True,
        tie_directions=True,
        output="seq2seq",
        epochs=2,
        batch_size=5,
        validation=0.2,
    )
    m.save(tmp_path / "m.ckpt")
    m2 = bptt.load(tmp_path / "m.ckpt")
    assert (m2.output, m2.output_steps, m2.tie_directions) == ("seq2seq", 3, True)
    assert m2.get_weights().keys() == m.get_weights().keys()
    assert np.array_equal(m.predict(X), m2.predict(X))
    assert np.array_equal(m.predict(X, n_steps=6), m2.predict(X, n_steps=6))
    assert m2.history == m.history and len(m.history["validation"]) == 2


def test_bad_input():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 4, 2))
    om = make("gru")
    with pytest.raises(ValueError, match="Y must have shape"):
        om.loss(X, rng.normal(size=(3, 5, 2)))  # 5 samples, X has 4
    with pytest.raises(ValueError, match="Y must have shape"):
        om.loss(X, rng.normal(size=(4, 2)))
    with pytest.raises(ValueError, match="n_steps"):
        om.predict(X)  # not fitted, no output_steps
    with pytest.raises(ValueError, match="n_steps"):
        OfflineModel(n_inputs=2).predict(X, n_steps=3)
    with pytest.raises(ValueError, match="output must be one of"):
        OfflineModel(output="seq-to-seq")
