"""Tied bidirectional layers (bptt.fit(bidirectional=True, tie_directions=True)): the reverse
direction runs the forward direction's weights. Checked against the cell equations written out,
against central finite differences, and against an untied model whose reverse weights are set
equal to the forward ones (the tied gradient is the sum of its two directions' gradients)."""

import numpy as np
import pytest

from streamrnn import bptt
from streamrnn.bptt import OfflineModel

from .helpers import offline_fd_check


def rel_err(a, b):
    return np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), 1e-300)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def gru_layer(X, Wi, Wh, bi, bh, reverse):
    """PyTorch's GRU over (T, B, m): r, z, n; h' = (1 - z) n + z h, from h = 0."""
    T, B = X.shape[:2]
    n = Wh.shape[1]
    h, out = np.zeros((B, n)), np.zeros((T, B, n))
    for t in range(T - 1, -1, -1) if reverse else range(T):
        gi, gh = X[t] @ Wi.T + bi, h @ Wh.T + bh
        r = sigmoid(gi[:, :n] + gh[:, :n])
        z = sigmoid(gi[:, n : 2 * n] + gh[:, n : 2 * n])
        nn = np.tanh(gi[:, 2 * n :] + r * gh[:, 2 * n :])
        h = (1 - z) * nn + z * h
        out[t] = h
    return out


def build(cell, tie, L=2, merge="sum", output="many_to_many", seed=5, **kw):
    return OfflineModel(
        cell=cell,
        n_inputs=2,
        n_hidden=3,
        n_outputs=2,
        n_layers=L,
        bidirectional=True,
        tie_directions=tie,
        merge=merge,
        output=output,
        seed=seed,
        **kw,
    )


def test_parameters_have_no_reverse_blocks():
    tied, untied = build("lstm", True), build("lstm", False)
    names = set(tied.get_weights())
    assert not any(k.endswith("_reverse") for k in names)
    assert names == {k for k in untied.get_weights() if not k.endswith("_reverse")}
    # 4 gates x 3 units: layer 0 reads 2 inputs, layer 1 both directions (6); readout 2 x 3 + 2
    assert tied.n_params == 12 * (2 + 3 + 2) + 12 * (6 + 3 + 2) + 8
    with pytest.raises(ValueError, match="bidirectional=True"):
        OfflineModel(tie_directions=True)


@pytest.mark.parametrize("merge", ["sum", "concat"])
def test_forward_equals_the_gru_equations_with_shared_weights(merge):
    rng = np.random.default_rng(4)
    T, B, n = 7, 3, 3
    X = rng.normal(size=(T, B, 2))
    om = build("gru", True, merge=merge)
    w = om.get_weights()
    inp = X
    for l in range(2):  # both directions run weight_*_l{l}; layer 1 reads [forward, reverse]
        p = [w[f"{k}_l{l}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        inp = np.concatenate([gru_layer(inp, *p, reverse=False), gru_layer(inp, *p, reverse=True)], axis=-1)
    feats = inp[..., :n] + inp[..., n:] if merge == "sum" else inp
    want = feats @ w["readout.weight"].T + w["readout.bias"]
    assert np.abs(om.predict(X) - want).max() < 1e-12
    # many-to-one reads h_n: the forward direction after t = T-1, the reverse one after t = 0
    o1 = build("gru", True, merge=merge, output="many_to_one")
    o1.set_weights(w)
    hn = np.concatenate([inp[-1, :, :n], inp[0, :, n:]], axis=-1)
    hn = hn[:, :n] + hn[:, n:] if merge == "sum" else hn
    assert np.abs(o1.predict(X) - (hn @ w["readout.weight"].T + w["readout.bias"])).max() < 1e-12


def fd_rel_err(om, X, Y, eps=1e-6):
    return offline_fd_check(om, X, Y, eps)[0]


CASES = [
    # L, merge, output, before, after
    (1, "sum", "many_to_many", (), ()),
    (2, "concat", "many_to_many", (3,), ()),
    (2, "sum", "many_to_one", (), (2,)),
    (1, "concat", "many_to_one", (3,), (2,)),
]


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "egru"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"L{c[0]}-{c[1]}-{c[2]}")
def test_gradient_finite_differences(cell, case):
    L, merge, output, before, after = case
    rng = np.random.default_rng(8)
    T, B = 6, 3
    X = rng.normal(size=(T, B, 2))
    Y = rng.normal(size=(T, B, 2) if output == "many_to_many" else (B, 2))
    om = build(cell, True, L, merge, output, hidden_layers_before=before, hidden_layers_after=after)
    assert fd_rel_err(om, X, Y) < 1e-6


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_gradient_is_the_sum_of_both_directions_of_an_untied_twin(cell):
    rng = np.random.default_rng(9)
    X = rng.normal(size=(8, 4, 2))
    Y = rng.normal(size=(8, 4, 2))
    tied = build(cell, True, merge="concat")
    untied = build(cell, False, merge="concat")
    w = tied.get_weights()
    twin = dict(w)
    for k in w:
        if k.startswith(("weight_", "bias_")):
            twin[k + "_reverse"] = w[k]
    untied.set_weights(twin)
    assert np.abs(tied.predict(X) - untied.predict(X)).max() < 1e-13
    assert tied.loss(X, Y) == pytest.approx(untied.loss(X, Y), rel=1e-14)
    gt, gu = tied.gradient(X, Y), untied.gradient(X, Y)
    for k in gt:
        want = gu[k] + gu[k + "_reverse"] if k + "_reverse" in gu else gu[k]
        assert rel_err(gt[k], want) < 1e-12, k


def test_fit_save_load(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(6, 40, 1))
    Y = np.zeros_like(X)
    Y[:-2] = X[2:]  # y_t = x_{t+2}: only a model reading backwards can predict it
    m = bptt.fit(X, Y, cell="gru", n_hidden=4, bidirectional=True, tie_directions=True, epochs=2, batch_size=10)
    assert m.tie_directions and "weight_ih_l0_reverse" not in m.get_weights()
    m.save(tmp_path / "t.ckpt")
    m2 = bptt.load(tmp_path / "t.ckpt")
    assert m2.tie_directions and np.array_equal(m.predict(X), m2.predict(X))


def test_compare_offline_rows_parse():
    from streamrnn import compare

    assert compare.parse_learner("bidir") == ("bidir", {})
    assert compare.parse_learner("bidir:40") == ("bidir", {"window": 40})
    assert compare.parse_learner("bidir:40:sum") == ("bidir", {"window": 40, "merge": "sum"})
    assert compare.parse_learner("bidir-tied:30:concat") == (
        "bidir",
        {"window": 30, "merge": "concat", "tie_directions": True},
    )
    assert compare.parse_learner("bidir-tied") == ("bidir", {"tie_directions": True})
    assert compare.parse_learner("unidir:20") == ("bidir", {"window": 20, "bidirectional": False})
    for bad in ("bidir:40:mean", "bidir:x", "unidir:20:sum", "bidir:1:sum:2", "bidirtied"):
        with pytest.raises(ValueError, match="unknown learner"):
            compare.parse_learner(bad)


def test_lead_lag_stream():
    from streamrnn import compare

    task, make = compare.DATASETS["lead_lag"]
    X, Y = make(50, 3)
    x = X[:, 0]
    assert task == "regression" and X.shape == (50, 1) and Y.shape == (50,)
    assert np.array_equal(x, np.random.default_rng(3).normal(size=50))
    t = np.arange(2, 48)
    assert np.array_equal(Y[t], x[t - 2] + x[t + 2])
    assert np.array_equal(Y[:2], x[2:4]) and np.array_equal(Y[-2:], x[-4:-2])


@pytest.mark.parametrize(
    "spec, kw",
    [
        ("bidir-tied:20:sum", dict(bidirectional=True, tie_directions=True, merge="sum")),
        ("unidir:20", dict(bidirectional=False)),
    ],
)
def test_compare_offline_row_is_the_windowed_fit_scored_on_the_tail(spec, kw):
    from streamrnn import compare

    X, Y = compare.DATASETS["lead_lag"][1](1000, 0)
    result = compare.run(X, Y, learners=[spec], n_hidden=4, lr=1e-2, bidir_epochs=2, progress=False)
    row = result.summary()[0]
    assert row["learner"] == spec
    # train on the first 800 steps in 40 windows of 20, predict the last 200 in 10 windows

    def windows(a, lo, hi):
        return np.ascontiguousarray(a[lo:hi].reshape(-1, 20, 1).transpose(1, 0, 2))

    fitted = bptt.fit(
        windows(X, 0, 800), windows(Y[:, None], 0, 800), cell="gru", n_hidden=4, lr=1e-2, epochs=2, seed=0, **kw
    )
    p = fitted.predict(windows(X, 800, 1000)).transpose(1, 0, 2).reshape(-1)
    y = Y[800:]
    assert row["tail"] == pytest.approx(np.mean((p - y) ** 2) / np.mean((y - y.mean()) ** 2), rel=1e-12)
