"""streamrnn.diagnose against central finite differences through the Model's own forward step
(``predict_from_state``), float64."""

import numpy as np
import pytest

import streamrnn as sr
from streamrnn import datasets, diagnose

EPS = 1e-6


def roll(m, Xa, s0=None):
    """States after each row of cell inputs ``Xa`` from ``s0`` (zeros), and the predictions."""
    s = np.zeros(m.dims.state_size) if s0 is None else s0.copy()
    nxt, out = np.empty_like(s), np.empty(m.n_outputs)
    states, preds = [], []
    for x in Xa:
        m.predict_from_state(x, s, out, nxt)
        s, nxt = nxt.copy(), s
        states.append(s.copy())
        preds.append(out.copy())
    return np.array(states), np.array(preds)


def model(cell, **kw):
    m = sr.Model(cell=cell, n_inputs=2, n_hidden=3, seed=4, lr=3e-2, **kw)
    rng = np.random.default_rng(1)
    m.step_many(rng.normal(size=(60, 2)), rng.normal(size=(60, 1)))  # weights away from the initial ones
    return m


CELLS = ["rnn", "gru", "lstm", "egru", "elstm", "dlru"]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kw", [dict(standardize=False), dict(target_lags=1)])
def test_input_sensitivity_equals_finite_differences(cell, kw):
    m = model(cell, **kw)
    X = np.random.default_rng(2).normal(size=(9, 2)) * 2.0
    got = diagnose.input_sensitivity(m, X)
    Xa = m.cell_sequence(X)[0]
    n, T = m.n_hidden, len(X)
    want = np.zeros(T)
    for t in range(T):
        J = np.zeros((n, 2))
        for c in range(2):  # the features, not the target-feedback columns
            up, down = Xa.copy(), Xa.copy()
            up[t, c] += EPS
            down[t, c] -= EPS
            J[:, c] = (roll(m, up)[0][-1, :n] - roll(m, down)[0][-1, :n]) / (2 * EPS)
        want[T - 1 - t] = np.linalg.norm(J)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("task", ["regression", "binary"])
def test_gradient_flow_equals_finite_differences(cell, task):
    m = model(cell, standardize=False) if task == "regression" else None
    rng = np.random.default_rng(3)
    X = rng.normal(size=(10, 2))
    if task == "binary":
        m = sr.Model(cell=cell, task="binary", n_inputs=2, n_hidden=3, seed=4)
        Y = (rng.random(10) > 0.5).astype(float)
    else:
        Y = rng.normal(size=10)
    Y[[2, 5]] = np.nan
    max_lag = 4
    got = diagnose.gradient_flow(m, X, Y, max_lag=max_lag)
    Xa, Ys, learn = m.cell_sequence(X, Y)
    states, _ = roll(m, Xa)
    S = m.dims.state_size
    total, count = np.zeros(max_lag + 1), np.zeros(max_lag + 1)

    def loss_at(t, s_from, start):
        _, preds = roll(m, Xa[start + 1 : t + 1], s_from)
        p = preds[-1, 0]
        if task == "regression":
            return 0.5 * (p - Ys[t, 0]) ** 2
        return -(Ys[t, 0] * np.log(p) + (1 - Ys[t, 0]) * np.log(1 - p))

    for t in range(len(X)):
        if not learn[t]:
            continue
        for k in range(min(max_lag, t) + 1):
            start = t - k  # perturb the state after row t - k, then run rows t-k+1 .. t
            g = np.zeros(S)
            for j in range(S):
                up, down = states[start].copy(), states[start].copy()
                up[j] += EPS
                down[j] -= EPS
                if k == 0:  # the readout alone: the prediction from the perturbed state
                    g[j] = (readout_loss(m, up, Xa[t], Ys[t], task) - readout_loss(m, down, Xa[t], Ys[t], task)) / (
                        2 * EPS
                    )
                else:
                    g[j] = (loss_at(t, up, start) - loss_at(t, down, start)) / (2 * EPS)
            total[k] += np.linalg.norm(g)
            count[k] += 1
    np.testing.assert_allclose(got, total / count, rtol=1e-6, atol=1e-9)


def readout_loss(m, s, x, y, task):
    """The loss of the readout on state ``s`` (the LSTM's c does not reach it)."""
    W = m.unflatten(m.flat_parameters)
    logit = W["readout.weight"][0] @ s[: m.n_hidden] + W["readout.bias"][0]
    if task == "regression":
        return 0.5 * (logit - y[0]) ** 2
    p = 1 / (1 + np.exp(-logit))
    return -(y[0] * np.log(p) + (1 - y[0]) * np.log(1 - p))


def test_a_gated_cell_remembers_longer_than_a_plain_rnn_at_init():
    """The curves mean something: at their initial weights on N(0, 1) inputs, the GRU's dependence on
    the input 20 steps back, relative to the newest input, is larger than the Elman RNN's."""
    X = np.random.default_rng(0).normal(size=(40, 1))
    ratio = {}
    for cell in ("rnn", "gru"):
        c = diagnose.input_sensitivity(sr.Model(cell=cell, n_inputs=1, n_hidden=16, seed=0), X)
        ratio[cell] = c[20] / c[0]
    assert ratio["gru"] > ratio["rnn"]


def test_command_writes_the_curves(tmp_path, capsys):
    diagnose.main(["--steps", "400", "--window", "20", "--hidden", "4", "--out", str(tmp_path)])
    lines = (tmp_path / "diagnose.csv").read_text().splitlines()
    assert lines[0].split(",") == ["lag"] + [f"{c}_input_sensitivity" for c in ("rnn", "gru", "lstm")] + [
        f"{c}_gradient_flow" for c in ("rnn", "gru", "lstm")
    ]
    assert len(lines) == 21 and all(float(v) > 0 for v in lines[1].split(",")[1:])
    assert "gru: sensitivity at lag 0" in capsys.readouterr().out


def _config(tmp_path, stream):
    cfg = tmp_path / "d.toml"
    cfg.write_text(
        f'[source]\ntype = "replay"\npath = "{stream}"\n[schema]\nfeatures = ["x0"]\ntarget = "y"\n'
        "[model]\nn_hidden = 3\n"
    )
    return cfg


def test_the_config_source_is_read_as_the_daemon_reads_it_one_key(tmp_path):
    """``--config``: the rows are the longest key's, in order, decoded by the daemon's decoder; a line the
    daemon would dead-letter is skipped and counted."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 1))
    Y = rng.standard_normal(30)
    keys = ["a" if i % 3 else "b" for i in range(30)]  # a: 20 rows, b: 10
    stream = tmp_path / "s.jsonl"
    datasets.write_stream(stream, X, Y, keys=keys)
    with open(stream, "a") as fh:
        fh.write('{"ts": 1, "key": "a", "value": {"x0": "not a number", "y": 1.0}}\nnot json\n')
    got_X, got_Y, task, n_hidden, n_bad = diagnose.rows_from_config(_config(tmp_path, stream))
    a = [i for i, k in enumerate(keys) if k == "a"]
    assert (got_X == X[a]).all() and (got_Y[:, 0] == Y[a]).all()
    assert (task, n_hidden, n_bad) == ("regression", 3, 2)


def test_the_command_line_diagnoses_a_config_and_refuses_an_unusable_one(tmp_path, capsys):
    from streamrnn import cli

    stream = tmp_path / "s.jsonl"
    datasets.write_stream(stream, np.linspace(0, 1, 60)[:, None], np.sin(np.arange(60.0)))
    out = tmp_path / "out"
    argv = ["diagnose", "--config", str(_config(tmp_path, stream)), "--cells", "gru", "--window", "10"]
    assert cli.main(argv + ["--out", str(out)]) == 0
    lines = (out / "diagnose.csv").read_text().splitlines()
    assert lines[0] == "lag,gru_input_sensitivity,gru_gradient_flow" and len(lines) == 11
    assert "60 rows of the longest key (0 records" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ts": 1, "key": "a", "value": {"q": 1}}\n')
    assert cli.main(["diagnose", "--config", str(_config(tmp_path, bad)), "--out", str(out)]) == 2
    assert "the source gave no usable record (1 bad)" in capsys.readouterr().err
