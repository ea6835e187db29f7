"""Sequence boundaries in streams: ``Model.step_many(..., resets=R)`` starts a key afresh."""

import copy

import numpy as np
import pytest

import streamrnn as sr


def stream(n=120, n_keys=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    Y = np.sin(np.cumsum(X[:, :1], axis=0)) + 0.1 * rng.normal(size=(n, 1))
    Y[rng.random(n) < 0.15] = np.nan
    keys = [f"k{i}" for i in rng.integers(0, n_keys, n)]
    return X, Y, keys


CONFIGS = [
    dict(learner="rtrl"),
    dict(learner="rtrl", target_lags=2, baseline="last"),
    dict(learner="snap1", cell="lstm"),
    dict(learner="uoro"),
    dict(learner="tbptt", truncation=4, stride=2),
    dict(learner="rtrl", optimizer="race"),
    dict(learner="rtrl", task="binary", standardize=False),
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_a_reset_is_forgetting_the_key_then_continuing(kw):
    """Rows 0..59, then a reset of key k0 at row 60 and rows 60..119: bit-identical, predictions and
    every array, to the same model that forgets k0 after row 59 (a fresh key) and runs the rest."""
    X, Y, keys = stream()
    kw = dict(n_inputs=2, n_hidden=3, seed=5, lr=3e-3, **kw)
    if kw.get("task") == "binary":
        Y = np.where(np.isnan(Y), np.nan, (Y > 0).astype(float))
    first = keys.index("k0", 60)
    resets = np.zeros(120, bool)
    resets[first] = True
    a = sr.Model(**kw)
    out_a = a.step_many(X, Y, keys, resets=resets)
    b = sr.Model(**kw)
    out_b = [b.step_many(X[:first], Y[:first], keys[:first])]
    b.forget("k0")
    out_b.append(b.step_many(X[first:], Y[first:], keys[first:]))
    assert np.array_equal(out_a, np.concatenate(out_b))
    assert np.array_equal(a.theta, b.theta)
    for key in ("k0", "k1"):
        sa, sb = a.key_state(key), b.key_state(key)
        assert sa.keys() == sb.keys() and all(np.array_equal(sa[n], sb[n]) for n in sa)


def test_the_state_right_after_a_reset_is_a_fresh_keys():
    X, Y, keys = stream(80, n_keys=1)
    m = sr.Model(n_inputs=2, n_hidden=4, seed=1, target_lags=1, baseline="last")
    m.step_many(X[:60], Y[:60], keys[:60])
    twin = copy.deepcopy(m)
    pred = m.peek(X[60], key="k0", reset=True)
    assert np.array_equal(pred, twin.peek(X[60], key="never-seen"))  # peek(reset=True): a fresh key's
    assert np.array_equal(pred, m.step_many(X[60:61], Y[60:61], ["k0"], resets=[True])[0])
    twin.step_many(X[60:61], Y[60:61], ["fresh"])
    got, want = m.key_state("k0"), twin.key_state("fresh")
    assert all(np.array_equal(got[n], want[n]) for n in got)
    assert not np.array_equal(m.peek(X[61], key="k0"), m.peek(X[61], key="k0", reset=True))


def test_resets_are_checked():
    m = sr.Model(n_inputs=1, n_hidden=2)
    for bad in ([True], [0, 2], ["yes", "no"], [[True], [False]]):
        with pytest.raises(ValueError, match="resets"):
            m.step_many(np.zeros((2, 1)), resets=bad)
    assert m.stats["steps"] == 0
    m.step_many(np.zeros((2, 1)), resets=[1, 0])
    m.step_many(np.zeros((2, 1)), resets=np.array([False, True]))


def test_online_sequence_classification_learns_with_resets():
    """Episodes of 5 N(0, 1) inputs; the label, given on the last row only, is the sign of the
    first input. Memory is needed (the last input says nothing: a no-memory model's log loss is
    log 2 = 0.693); with a reset at every episode start the GRU learns it."""
    rng = np.random.default_rng(0)
    n_ep, L = 3000, 5
    X = rng.normal(size=(n_ep * L, 1))
    Y = np.full(n_ep * L, np.nan)
    Y[L - 1 :: L] = (X[::L, 0] > 0).astype(float)
    resets = np.zeros(n_ep * L, bool)
    resets[::L] = True
    m = sr.Model(task="binary", n_inputs=1, n_hidden=8, seed=0, lr=1e-2)
    p = m.step_many(X, Y, resets=resets)[L - 1 :: L, 0]
    y = Y[L - 1 :: L]
    tail = slice(-500, None)
    p_tail = np.clip(p[tail], 1e-12, 1 - 1e-12)
    log_loss = -np.mean(y[tail] * np.log(p_tail) + (1 - y[tail]) * np.log(1 - p_tail))
    accuracy = np.mean((p[tail] > 0.5) == (y[tail] > 0.5))
    assert accuracy > 0.95 and log_loss < 0.25  # no-memory floor: 0.5 and 0.693


def test_river_reset_feature_is_step_many_resets():
    """RNNRegressor(reset="new"): the feature is not an input, and a truthy value starts the entity
    afresh, as Model.step_many(resets=...) does; predict_one then predicts from a fresh state."""
    from streamrnn.river import RNNRegressor

    X, Y, keys = stream(90)
    Y = np.nan_to_num(Y, nan=0.25)  # river: every learn_one has its label
    resets = np.zeros(90, bool)
    resets[[0, 30, 31, 64]] = True
    est = RNNRegressor(n_inputs=2, n_hidden=3, seed=2, key="who", reset="new")
    preds = []
    for i in range(90):
        x = {"a": X[i, 0], "b": X[i, 1], "who": keys[i], "new": bool(resets[i])}
        preds.append(est.predict_one(x))
        est.learn_one(x, Y[i, 0])
    assert est.features == ["a", "b"]
    m = sr.Model(n_inputs=2, n_hidden=3, seed=2, lr=0.01, clip=1.0, target_lags=1, baseline="last")
    want = m.step_many(X, Y, keys, resets=resets)[:, 0]
    np.testing.assert_array_equal(np.array(preds), want)


# ---------------------------------------------------------------- the daemon's [schema] reset
DAEMON_MODEL = dict(cell="gru", n_hidden=3, lr=0.01, seed=1)


def _daemon_config(tmp_path, src, kind="jsonl", **schema):
    return {
        "source": {"type": kind, "path": str(src)},
        "sink": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")},
        "dead_letter": {"type": "jsonl", "path": str(tmp_path / "dead.jsonl")},
        "schema": {"features": ["a"], "target": "y", "key": "k", "reset": "start", **schema},
        "model": dict(DAEMON_MODEL),
        "daemon": {"batch_size": 7, "progress": False},
    }


def _read(path):
    import json

    with open(path) as fh:
        return [json.loads(line) for line in fh]


def test_the_daemon_resets_where_the_reset_field_is_truthy(tmp_path):
    """Predictions through the daemon equal ``Model.step_many(resets=...)`` on the same rows (and differ
    from the same rows without boundaries); every spelling of true and false is read as such, and a
    value that is neither is a dead letter that changes nothing."""
    import json

    from streamrnn.service import Daemon, validate_config

    rng = np.random.default_rng(4)
    spellings = [True, 1, 2.5, "true", "1", "yes", "TRUE"], [False, 0, 0.0, "false", "0", "no", "", None]
    lines, X, Y, keys, resets = [], [], [], [], []
    for i in range(60):
        key, start = f"k{i % 2}", i % 2 == 0 and (i // 2) % 5 == 0  # each key: an episode every 5 rows
        pool = spellings[0] if start else spellings[1]
        a, y = float(rng.standard_normal()), float(rng.standard_normal())
        rec = {"k": key, "a": a, "y": y}
        if pool[i % len(pool)] is not None:
            rec["start"] = pool[i % len(pool)]
        lines.append(json.dumps(rec))
        X.append([a]), Y.append([y]), keys.append(key), resets.append(start)
    lines.insert(31, json.dumps({"k": "k0", "a": 0.5, "y": 1.0, "start": "maybe"}))
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    d = Daemon(validate_config(_daemon_config(tmp_path, src)))
    d.run()
    got = np.array([o["prediction"] for o in _read(tmp_path / "out.jsonl")])
    dead = _read(tmp_path / "dead.jsonl")
    assert len(dead) == 1 and dead[0]["reason"] == "field 'start': expected a boolean (true/false, 1/0), got 'maybe'"
    want = sr.Model(n_inputs=1, **DAEMON_MODEL).step_many(np.array(X), np.array(Y), keys, resets=resets)[:, 0]
    unbounded = sr.Model(n_inputs=1, **DAEMON_MODEL).step_many(np.array(X), np.array(Y), keys)[:, 0]
    assert np.array_equal(got, want)
    assert not np.allclose(got, unbounded)


def test_a_csv_stream_with_a_reset_column_and_the_header_check(tmp_path):
    from streamrnn import cli
    from streamrnn.service import Daemon, validate_config

    (tmp_path / "in.csv").write_text("k,a,y,start\nx,0.1,0.2,1\nx,0.3,0.4,0\nx,0.5,0.6,true\n")
    d = Daemon(validate_config(_daemon_config(tmp_path, tmp_path / "in.csv", kind="csv")))
    d.run()
    got = [o["prediction"] for o in _read(tmp_path / "out.jsonl")]
    X, Y = np.array([[0.1], [0.3], [0.5]]), np.array([[0.2], [0.4], [0.6]])
    want = sr.Model(n_inputs=1, **DAEMON_MODEL).step_many(X, Y, ["x"] * 3, resets=[True, False, True])[:, 0]
    assert got == want.tolist()
    (tmp_path / "no_reset.csv").write_text("k,a,y\nx,0.1,0.2\n")
    cfg = _daemon_config(tmp_path, tmp_path / "no_reset.csv", kind="csv")
    toml = tmp_path / "c.toml"  # the CLI reads TOML; a header without the reset column: exit 2 at start
    toml.write_text(
        "\n".join(
            f"[{sec}]\n" + "\n".join(f"{k} = {_toml_value(v)}" for k, v in body.items()) for sec, body in cfg.items()
        )
    )
    assert cli.main(["run", str(toml), "--no-progress"]) == 2


def _toml_value(v):
    import json

    return json.dumps(v) if not isinstance(v, bool) else str(v).lower()


def test_reset_is_refused_in_forecast_mode_and_must_name_a_field():
    from streamrnn.service import ConfigError, validate_config

    base = {"source": {"type": "jsonl", "path": "in.jsonl"}, "schema": {"features": ["a"], "target": "y"}}
    with pytest.raises(ConfigError, match="schema.reset: not available in forecast mode"):
        validate_config({**base, "schema": {**base["schema"], "reset": "start", "forecast": True}})
    with pytest.raises(ConfigError, match="schema.reset"):
        validate_config({**base, "schema": {**base["schema"], "reset": ""}})


def test_partitioned_models_take_resets_per_partition():
    """Group mode: each partition's rows go to its model with their own flags."""
    from streamrnn.partitioned import PartitionedModel

    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((8, 1)), rng.standard_normal((8, 1))
    keys, streams = ["a"] * 8, ["t:0", "t:1"] * 4
    resets = [True, False, False, True, False, False, True, True]
    pm = PartitionedModel(dict(n_inputs=1, **DAEMON_MODEL))
    preds, _ = pm.step_many(X, Y, keys, streams, resets)
    for part in (0, 1):
        rows = [i for i, s in enumerate(streams) if s == f"t:{part}"]
        want = sr.Model(n_inputs=1, **DAEMON_MODEL).step_many(
            X[rows], Y[rows], ["a"] * 4, resets=[resets[i] for i in rows]
        )
        assert np.array_equal(preds[rows], want)
