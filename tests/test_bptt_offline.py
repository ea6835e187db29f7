"""Offline minibatch BPTT (streamrnn.bptt): exact gradients, PyTorch forward, learning, bad input."""

import numpy as np
import pytest

import streamrnn as sr
from streamrnn import bptt
from streamrnn.bptt import OfflineModel

from .helpers import offline_fd_check


def rel_err(a, b):
    return np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-300)


def flat(d, names):
    return np.concatenate([d[k].ravel() for k in names])


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "ernn", "egru", "elstm"])
def test_unidirectional_matches_model_bptt(cell):
    rng = np.random.default_rng(1)
    T, B, m, n, o = 12, 4, 3, 5, 2
    X = rng.normal(size=(T, B, m))
    Y = rng.normal(size=(T, B, o))
    om = OfflineModel(cell=cell, n_inputs=m, n_hidden=n, n_outputs=o, seed=3)
    # the offline model trains on the raw inputs: compare with the online Model's raw-input BPTT
    ref = sr.Model(cell=cell, n_inputs=m, n_hidden=n, n_outputs=o, seed=0, standardize=False)
    ref.set_weights(om.get_weights())
    want = None
    for b in range(B):
        g = ref.gradient(X[:, b], Y[:, b], method="bptt")
        want = g if want is None else {k: want[k] + g[k] for k in g}
    got = om.gradient(X, Y)
    assert set(got) == set(want)
    for k in want:
        assert rel_err(B * got[k], want[k]) < 1e-9, k


def fd_check(om, X, Y, eps=1e-6):
    return offline_fd_check(om, X, Y, eps)[0]


CASES = [
    # cell, layers, bidir, merge, output, task, before, after
    ("gru", 1, True, "sum", "many_to_many", "regression", (), ()),
    ("lstm", 1, True, "concat", "many_to_one", "classification", (3,), ()),
    ("rnn", 2, False, "sum", "many_to_many", "binary", (), (4,)),
    ("gru", 2, True, "concat", "many_to_one", "regression", (3,), (4,)),
    ("lstm", 2, True, "sum", "many_to_many", "regression", (), (3,)),
    ("egru", 2, True, "concat", "many_to_many", "classification", (), ()),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c[:5])))
def test_gradient_finite_differences(case):
    cell, L, bi, merge, output, task, before, after = case
    rng = np.random.default_rng(7)
    T, B, m, n = 11, 3, 2, 3
    o = 3 if task == "classification" else (1 if task == "binary" else 2)
    X = rng.normal(size=(T, B, m))
    lead = (T, B) if output == "many_to_many" else (B,)
    if task == "regression":
        Y = rng.normal(size=lead + (o,))
    else:
        Y = rng.integers(0, o if task == "classification" else 2, size=lead).astype(float)
    om = OfflineModel(
        cell=cell,
        n_inputs=m,
        n_hidden=n,
        n_outputs=o,
        n_layers=L,
        bidirectional=bi,
        merge=merge,
        output=output,
        task=task,
        hidden_layers_before=before,
        hidden_layers_after=after,
        activation="tanh",
        seed=2,
    )
    om.theta *= 2.0  # larger weights: stronger nonlinearity, a sharper test
    assert fd_check(om, X, Y) < 1e-6


def test_relu_ff_finite_differences():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(10, 3, 2))
    Y = rng.normal(size=(10, 3, 1))
    om = OfflineModel(
        cell="gru",
        n_inputs=2,
        n_hidden=3,
        n_outputs=1,
        bidirectional=True,
        merge="concat",
        hidden_layers_before=(4,),
        hidden_layers_after=(4,),
        activation="relu",
        seed=5,
    )
    assert fd_check(om, X, Y) < 1e-6


def _sig(v):
    return 1 / (1 + np.exp(-v))


def numpy_gru_layer(x, Wih, Whh, bih, bhh, reverse):
    """torch.nn.GRU equations for one direction over (T, B, m)."""
    T, B, _ = x.shape
    n = Whh.shape[1]
    h = np.zeros((B, n))
    out = np.zeros((T, B, n))
    for t in range(T - 1, -1, -1) if reverse else range(T):
        gi = x[t] @ Wih.T + bih
        gh = h @ Whh.T + bhh
        r = _sig(gi[:, :n] + gh[:, :n])
        z = _sig(gi[:, n : 2 * n] + gh[:, n : 2 * n])
        nn = np.tanh(gi[:, 2 * n :] + r * gh[:, 2 * n :])
        h = (1 - z) * nn + z * h
        out[t] = h
    return out


def test_forward_equals_pytorch_equations_bidirectional_two_layer_gru():
    rng = np.random.default_rng(4)
    T, B, m, n, o = 9, 3, 2, 4, 2
    X = rng.normal(size=(T, B, m))
    om = OfflineModel(
        cell="gru", n_inputs=m, n_hidden=n, n_outputs=o, n_layers=2, bidirectional=True, merge="concat", seed=6
    )
    w = om.get_weights()
    inp = X
    for l in range(2):
        outs = [
            numpy_gru_layer(
                inp, *(w[f"{k}_l{l}{s}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")), reverse=bool(s)
            )
            for s in ("", "_reverse")
        ]
        inp = np.concatenate(outs, axis=-1)
    want = inp @ w["readout.weight"].T + w["readout.bias"]
    assert np.abs(om.predict(X) - want).max() < 1e-12
    # sum merge uses the same layer outputs, added
    om2 = OfflineModel(
        cell="gru", n_inputs=m, n_hidden=n, n_outputs=o, n_layers=2, bidirectional=True, merge="sum", seed=6
    )
    w2 = om2.get_weights()
    for k in w2:
        if k != "readout.weight":
            w2[k] = w[k]
    om2.set_weights(w2)
    want2 = (inp[..., :n] + inp[..., n:]) @ w2["readout.weight"].T + w2["readout.bias"]
    assert np.abs(om2.predict(X) - want2).max() < 1e-12
    # many-to-one: h_n of the last layer (forward after t=T-1, reverse after t=0)
    om3 = OfflineModel(
        cell="gru",
        n_inputs=m,
        n_hidden=n,
        n_outputs=o,
        n_layers=2,
        bidirectional=True,
        merge="concat",
        output="many_to_one",
        seed=6,
    )
    om3.set_weights(w)
    hn = np.concatenate([inp[-1, :, :n], inp[0, :, n:]], axis=-1)
    assert np.abs(om3.predict(X) - (hn @ w["readout.weight"].T + w["readout.bias"])).max() < 1e-12
    torch = pytest.importorskip("torch")
    g = torch.nn.GRU(m, n, num_layers=2, bidirectional=True).double()
    with torch.no_grad():
        for name, p in g.named_parameters():
            p.copy_(torch.from_numpy(w[name]))
        out, _ = g(torch.from_numpy(X))
    assert np.abs(out.numpy() - inp).max() < 1e-12


def anticipation_task(rng, N, T=12, lead=3):
    """Many-to-many: y_t = x_{t+lead} (0 for the last ``lead`` steps), x ~ N(0, 1).

    Only a model that reads the sequence backwards can predict it."""
    X = rng.normal(size=(T, N, 1))
    Y = np.zeros_like(X)
    Y[:-lead] = X[lead:]
    return X, Y


def test_fit_learns_task_only_bidirectional_can_solve():
    rng = np.random.default_rng(0)
    X, Y = anticipation_task(rng, 400)
    trivial = 0.5 * (Y[:, 320:] ** 2).sum(axis=(0, 2)).mean()  # predicting 0, the target mean
    kw = dict(cell="gru", n_hidden=8, merge="concat", lr=1e-2, epochs=25, batch_size=20, validation=0.2, seed=0)
    bi = bptt.fit(X, Y, bidirectional=True, **kw)
    val = bi.history["validation"][-1]
    assert bi.loss(X[:, 320:], Y[:, 320:]) == pytest.approx(val)
    # measured: 0.0020 of the trivial loss (bidirectional), 1.003 (unidirectional: the future is noise)
    assert val < 0.01 * trivial, (val, trivial)
    uni = bptt.fit(X, Y, bidirectional=False, **kw)
    assert uni.history["validation"][-1] > 0.95 * trivial


def test_early_stopping_and_determinism():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(6, 60, 2))
    Y = rng.normal(size=(60, 1))  # pure noise: validation cannot keep improving
    kw = dict(
        cell="rnn",
        n_hidden=4,
        output="many_to_one",
        lr=5e-2,
        epochs=60,
        batch_size=10,
        validation=0.3,
        patience=3,
        seed=11,
        clip=1.0,
    )
    a = bptt.fit(X, Y, **kw)
    assert len(a.history["train"]) < 60
    assert len(a.history["validation"]) == len(a.history["train"])
    best = min(a.history["validation"])
    assert a.loss(X[:, 42:], Y[42:]) == pytest.approx(best)  # best weights restored
    b = bptt.fit(X, Y, **kw)
    for k, v in a.get_weights().items():
        assert np.array_equal(v, b.get_weights()[k])
    c = bptt.fit(X, Y, **dict(kw, seed=12))
    assert not np.array_equal(a.theta, c.theta)


def test_clip_and_sgd_step():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(7, 8, 2))
    Y = rng.normal(size=(7, 8, 1))
    init = OfflineModel(cell="gru", n_inputs=2, n_hidden=3, bidirectional=True, seed=4)
    g = flat(init.gradient(X, Y), init.get_weights().keys())
    kw = dict(
        cell="gru",
        n_hidden=3,
        bidirectional=True,
        optimizer="sgd",
        lr=1.0,
        epochs=1,
        batch_size=8,
        validation=0.0,
        seed=4,
    )
    m = bptt.fit(X, Y, clip=1e-3, **kw)  # one full-batch step of length lr * clip
    step = init.theta - m.theta
    assert np.linalg.norm(step) == pytest.approx(1e-3 * np.linalg.norm(g) / (np.linalg.norm(g) + 1e-6), rel=1e-12)
    assert rel_err(step / np.linalg.norm(step), g / np.linalg.norm(g)) < 1e-12
    m2 = bptt.fit(X, Y, **kw)  # no clip: plain gradient step
    assert rel_err(init.theta - m2.theta, g) < 1e-12


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(5, 20, 2))
    Y = rng.integers(0, 3, size=(5, 20))
    m = bptt.fit(
        X,
        Y,
        cell="lstm",
        n_hidden=3,
        n_layers=2,
        bidirectional=True,
        task="classification",
        hidden_layers_before=(3,),
        epochs=2,
        batch_size=5,
        validation=0.0,
    )
    assert m.n_outputs == 3 and m.history["validation"] == []
    m.save(tmp_path / "m.ckpt")
    m2 = bptt.load(tmp_path / "m.ckpt")
    assert np.array_equal(m.predict(X), m2.predict(X))
    assert m2.history == m.history
    assert np.allclose(m.predict(X).sum(-1), 1.0)


@pytest.mark.parametrize(
    "bad, msg",
    [
        (lambda X, Y: (X[0], Y), "shape"),
        (lambda X, Y: (X[..., :1], Y), "inputs"),
        (lambda X, Y: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), Y), "NaN"),
        (lambda X, Y: (X, Y[:-1]), "Y must have shape"),
        (lambda X, Y: (X, np.full_like(Y, np.inf)), "NaN or inf"),
    ],
)
def test_bad_input(bad, msg):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(4, 6, 2))
    Y = rng.normal(size=(4, 6, 1))
    Xb, Yb = bad(X, Y)
    if msg != "inputs":  # fit takes n_inputs from X itself
        with pytest.raises(ValueError, match=msg):
            bptt.fit(Xb, Yb, n_hidden=2, n_outputs=1, epochs=1)
    m = OfflineModel(n_inputs=2, n_hidden=2)
    with pytest.raises(ValueError, match=msg):
        m.loss(Xb, Yb)


def test_bad_options():
    X = np.zeros((3, 4, 1))
    with pytest.raises(ValueError, match="merge"):
        bptt.fit(X, X, merge="mean")
    with pytest.raises(ValueError, match="classification targets"):
        bptt.fit(X, X + 0.5, task="classification", n_outputs=2)
    with pytest.raises(ValueError, match="validation"):
        bptt.fit(X, X, validation=1.0)
