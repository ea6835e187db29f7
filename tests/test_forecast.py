"""Forecast mode: the target of a record is a field of the next record of the same key."""

import json
import math

import numpy as np
import pytest

import streamrnn
from streamrnn.checkpoint import CheckpointError
from streamrnn.forecast import NextRecordForecaster
from streamrnn.service import ConfigError, Daemon, load_checkpoint, validate_config
from tests.test_daemon import Boom, CrashingSink, assert_same_weights, read_jsonl

LEARNERS = [("rtrl", {}), ("snap1", {}), ("uoro", {}), ("tbptt", {"truncation": 4})]


def keyed_series(n=300, n_keys=5, seed=0, gaps=7):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    V = rng.normal(size=(n, 1))
    V[::gaps] = np.nan  # records without the target field
    keys = [f"k{i}" for i in rng.integers(0, n_keys, n)]
    return X, V, keys


def naive_forecast(model, X, V, keys):
    """The definition, one record at a time with the public API: step the key's previous input
    with this record's target, then peek the forecast for the next record."""
    pending, preds, losses = {}, [], []
    for x, v, k in zip(X, V, keys):
        if k in pending:
            _, loss = model.step_many(pending[k][None], v[None], [k], return_loss=True)
            losses.append(loss[0])
        else:
            losses.append(np.nan)
        preds.append(model.peek(x, key=k))
        pending[k] = x
    return np.array(preds), np.array(losses)


@pytest.mark.parametrize("learner,extra", LEARNERS)
def test_forecaster_equals_the_definition_whatever_the_batching(learner, extra):
    X, V, keys = keyed_series()
    kw = dict(cell="lstm", n_inputs=2, n_hidden=4, learner=learner, lr=0.01, seed=1, **extra)
    ref = streamrnn.Model(**kw)
    ref_preds, ref_losses = naive_forecast(ref, X, V, keys)
    for batch in (1, 37, len(keys)):
        model = streamrnn.Model(**kw)
        fc = NextRecordForecaster(model)
        parts = [
            fc.process(X[a : a + batch], V[a : a + batch], keys[a : a + batch]) for a in range(0, len(keys), batch)
        ]
        preds = np.concatenate([p for p, _ in parts])
        losses = np.concatenate([l for _, l in parts])
        assert np.array_equal(preds, ref_preds)
        assert np.array_equal(losses, ref_losses, equal_nan=True)
        assert np.array_equal(model.theta, ref.theta)
    # first record of each key resolves nothing; a record without target learns nothing
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    assert all(math.isnan(ref_losses[i]) for i in first.values())
    n_learned = sum(1 for i, k in enumerate(keys) if i not in first.values() and not math.isnan(V[i, 0]))
    assert int(np.isfinite(ref_losses).sum()) == n_learned
    if learner != "tbptt":  # TBPTT updates once per window of targets; standardisation (on by
        assert ref.stats["updates"] == n_learned - 2  # default) learns once the target scale is known


def test_forecaster_single_key_is_one_step_ahead_regression():
    """One key: forecasting field v of the next record is Model.step on pairs (x_t, v_{t+1})."""
    X, V, _ = keyed_series(gaps=10**9)
    keys = ["s"] * len(X)
    a = streamrnn.Model(cell="gru", n_inputs=2, n_hidden=3, lr=0.02, seed=4)
    preds, losses = NextRecordForecaster(a).process(X, V, keys)
    b = streamrnn.Model(cell="gru", n_inputs=2, n_hidden=3, lr=0.02, seed=4)
    b_preds, b_losses = b.step_many(X[:-1], V[1:], keys[:-1], return_loss=True)
    assert np.array_equal(losses[1:], b_losses)
    assert np.array_equal(a.theta, b.theta)
    # each forecast is the prediction b made for the same input, before learning its target
    assert np.array_equal(preds[:-1], b_preds)


def test_forecaster_bounds_pending_inputs_and_round_trips_state():
    X, V, keys = keyed_series(n=200, n_keys=9)
    kw = dict(cell="gru", n_inputs=2, n_hidden=3, lr=0.01, seed=2, max_keys=4)
    a = streamrnn.Model(**kw)
    fa = NextRecordForecaster(a)
    fa.process(X[:120], V[:120], keys[:120])
    assert len(fa.pending) <= 4
    arrays, meta = a.state_arrays()
    f_arrays, f_meta = fa.state_arrays()
    b = streamrnn.Model.from_state(arrays, meta)
    fb = NextRecordForecaster(b)
    fb.load_state(f_arrays, f_meta)
    pa, la = fa.process(X[120:], V[120:], keys[120:])
    pb, lb = fb.process(X[120:], V[120:], keys[120:])
    assert np.array_equal(pa, pb) and np.array_equal(la, lb, equal_nan=True)
    assert np.array_equal(a.theta, b.theta)
    with pytest.raises(CheckpointError, match="forecast"):
        fb.load_state({}, {})


def test_forecaster_rejects_a_bad_batch_without_changing_anything():
    X, V, keys = keyed_series(n=20)
    model = streamrnn.Model(cell="rnn", n_inputs=2, n_hidden=3, seed=0)
    fc = NextRecordForecaster(model)
    fc.process(X[:10], V[:10], keys[:10])
    theta, pending = model.theta.copy(), dict(fc.pending)
    bad = X[10:].copy()
    bad[5, 1] = np.inf
    with pytest.raises(ValueError):
        fc.process(bad, V[10:], keys[10:])
    assert np.array_equal(model.theta, theta) and fc.pending.keys() == pending.keys()


# ----------------------------------------------------------------------------- through the daemon
MODEL = dict(cell="gru", n_hidden=4, task="regression", learner="rtrl", optimizer="adam", lr=0.01, clip=1.0, seed=3)


def _config(tmp_path, src, every=50):
    return {
        "source": {"type": "jsonl", "path": str(src)},
        "sink": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")},
        "dead_letter": {"type": "jsonl", "path": str(tmp_path / "dead.jsonl")},
        "schema": {"features": ["t", "level"], "target": "next", "key": "key", "forecast": True},
        "model": dict(MODEL),
        "checkpoint": {"path": str(tmp_path / "d.ckpt"), "every_records": every, "every_seconds": 0},
        "daemon": {"batch_size": 37, "poll_timeout": 0.05, "progress": False},
    }


@pytest.fixture
def readings(tmp_path):
    """Readings of 4 sensors; some records lack the target (null), some are damaged."""
    rng = np.random.default_rng(0)
    lines, good, level = [], [], {}
    for i in range(400):
        key = f"s{rng.integers(0, 4)}"
        level[key] = 0.9 * level.get(key, 0.0) + float(rng.normal(scale=0.3))
        if i % 13 == 12:
            lines.append('{"key": "s0", "t": 0.5,')  # damaged: a dead letter
            continue
        target = None if i % 9 == 4 else round(level[key], 6)
        lines.append(json.dumps({"key": key, "t": round(i / 400, 6), "level": round(level[key], 6), "next": target}))
        good.append((i, key, [round(i / 400, 6), round(level[key], 6)], math.nan if target is None else target))
    path = tmp_path / "readings.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, good


def test_daemon_forecast_mode_matches_the_forecaster(tmp_path, readings):
    src, good = readings
    d = Daemon(validate_config(_config(tmp_path, src)))
    stats = d.run()
    assert stats["applied"] == len(good) and stats["dead_letters"] == 400 - len(good)
    ref = streamrnn.Model(n_inputs=2, **MODEL)
    X = np.array([g[2] for g in good])
    V = np.array([[g[3]] for g in good])
    keys = [g[1] for g in good]
    preds, losses = naive_forecast(ref, X, V, keys)
    assert_same_weights(d.model.get_weights(), ref.get_weights())
    outs = read_jsonl(tmp_path / "out.jsonl")
    assert [o["position"][1] for o in outs] == [g[0] for g in good]
    assert [o["prediction"] for o in outs] == preds[:, 0].tolist()
    for o, g, l in zip(outs, good, losses.tolist()):
        assert o["target"] == (None if math.isnan(g[3]) else g[3])
        assert o["loss"] == (None if math.isnan(l) else l)
    resolved = [o for o in outs if o["loss"] is not None]
    assert len(resolved) - 2 == ref.stats["updates"] > 300  # the first two targets set the scale
    assert stats["loss_count"] == len(resolved)
    assert math.isclose(stats["loss_sum"], math.fsum(o["loss"] for o in resolved), rel_tol=1e-12)
    arrays, meta, _ = load_checkpoint(str(tmp_path / "d.ckpt"))
    assert sorted(v for _, v in meta["forecast_keys"]) == sorted(set(keys))


def test_daemon_forecast_mode_crash_and_restart_is_exactly_once(tmp_path, readings):
    src, good = readings
    d = Daemon(validate_config(_config(tmp_path, src, every=60)), sink=CrashingSink(str(tmp_path / "out.jsonl"), 5))
    with pytest.raises(Boom):
        d.run()
    d2 = Daemon(validate_config(_config(tmp_path, src, every=60)))
    assert d2.stats["resumed_from"] is not None and len(d2.forecaster.pending) > 0
    d2.run()
    ref = streamrnn.Model(n_inputs=2, **MODEL)
    preds, _ = naive_forecast(
        ref, np.array([g[2] for g in good]), np.array([[g[3]] for g in good]), [g[1] for g in good]
    )
    assert_same_weights(d2.model.get_weights(), ref.get_weights())
    by_pos = {}
    for o in read_jsonl(tmp_path / "out.jsonl"):
        assert by_pos.setdefault(o["position"][1], o) == o  # duplicates are identical
    assert sorted(by_pos) == [g[0] for g in good]
    assert [by_pos[g[0]]["prediction"] for g in good] == preds[:, 0].tolist()


def test_forecast_checkpoint_is_not_loaded_in_the_other_mode(tmp_path, readings):
    src, _ = readings
    Daemon(validate_config(_config(tmp_path, src))).run()
    plain = _config(tmp_path, src)
    plain["schema"]["forecast"] = False
    d = Daemon(validate_config(plain))  # plain mode ignores the pending inputs: same model state
    assert d.stats["resumed_from"] is not None
    d.close()
    fresh = tmp_path / "other"
    fresh.mkdir()
    cfg = _config(fresh, src)
    Daemon(validate_config(dict(cfg, schema=dict(cfg["schema"], forecast=False)))).run()
    with pytest.raises(CheckpointError, match="forecast"):
        Daemon(validate_config(cfg))


@pytest.mark.parametrize(
    "schema,key", [({"forecast": "yes"}, "schema.forecast"), ({"forecast": True, "target": None}, "schema.target")]
)
def test_forecast_config_errors(tmp_path, readings, schema, key):
    src, _ = readings
    cfg = _config(tmp_path, src)
    cfg["schema"].update(schema)
    if cfg["schema"].get("target") is None:
        del cfg["schema"]["target"]
    with pytest.raises(ConfigError, match=key):
        validate_config(cfg)
