"""Model behaviour: determinism, per-key state, persistence, bad input, optimizers."""

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.optim import (
    ADAM,
    BETA1,
    BETA2,
    EPS,
    LR,
    MOMENTUM,
    N_HYPER,
    SGD,
    WEIGHT_DECAY,
    clip_grad_norm,
    optimizer_step,
)

from .helpers import CELLS, N_OUTPUTS, TASKS, random_sequence


def keyed_stream(n=300, n_inputs=3, task="regression", seed=0, n_keys=4):
    X, Y = random_sequence(task, n_steps=n, n_inputs=n_inputs, seed=seed, missing_every=7)
    keys = [f"k{i}" for i in np.random.default_rng(seed + 1).integers(0, n_keys, n)]
    return X, Y, keys


def model(cell="gru", task="regression", **kw):
    kw.setdefault("lr", 0.01)
    return sr.Model(cell=cell, n_inputs=3, n_hidden=6, n_outputs=N_OUTPUTS[task], task=task, **kw)


def same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    return all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("learner", ["rtrl", "tbptt"])
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("cell", CELLS)
def test_step_many_equals_step_by_step_bit_for_bit(cell, task, learner):
    X, Y, keys = keyed_stream(task=task)
    kw = dict(learner="tbptt", truncation=5, stride=2) if learner == "tbptt" else {}
    a, b = model(cell, task, clip=1.0, **kw), model(cell, task, clip=1.0, **kw)
    preds_a = a.step_many(X, Y, keys)
    preds_b = np.array([b.step(x, None if np.isnan(y[0]) else y, k) for x, y, k in zip(X, Y, keys)])
    assert np.array_equal(preds_a, preds_b)
    assert same_weights(a, b)
    for k in set(keys):
        assert np.array_equal(a.hidden_state(k), b.hidden_state(k))
    assert a.stats == b.stats and a.stats["steps"] == len(X)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_replay_is_deterministic(dtype):
    X, Y, keys = keyed_stream(n=500)
    runs = []
    for _ in range(2):
        m = model("lstm", dtype=dtype, seed=5)
        for start in range(0, 500, 64):  # batching must not matter either
            m.step_many(X[start : start + 64], Y[start : start + 64], keys[start : start + 64])
        runs.append(m)
    assert same_weights(*runs)
    one_batch = model("lstm", dtype=dtype, seed=5)
    one_batch.step_many(X, Y, keys)
    assert same_weights(runs[0], one_batch)


def test_keys_have_independent_states():
    X, Y, _ = keyed_stream(n=40)
    lone = model(lr=0.0)
    lone.step_many(X[:20])
    mixed = model(lr=0.0)
    mixed.step_many(np.concatenate([X[:20], X[20:]]), keys=["a"] * 20 + ["b"] * 20)
    assert np.array_equal(mixed.hidden_state("a"), lone.hidden_state())
    assert not np.array_equal(mixed.hidden_state("b"), lone.hidden_state())


def test_peek_changes_nothing():
    X, Y, keys = keyed_stream(n=50)
    m = model()
    m.step_many(X, Y, keys)
    state, weights, stats = m.hidden_state("k1"), m.get_weights(), m.stats
    p = m.peek(X[0], key="k1")
    assert np.array_equal(m.hidden_state("k1"), state) and m.stats == stats
    assert all(np.array_equal(weights[k], m.get_weights()[k]) for k in weights)
    assert np.array_equal(p, m.step(X[0], key="k1"))
    m.peek(X[0], key="never-seen")
    assert "never-seen" not in m.keys
    # An unknown key peeks from a zero state and is not registered. (Raw inputs: a fresh model
    # would not share m's standardisation statistics, which are global, not per key.)
    m = model(standardize=False)
    m.step_many(X, Y, keys)
    fresh = model(standardize=False)
    fresh.set_weights(m.get_weights())
    assert np.array_equal(m.peek(X[0], key="never-seen"), fresh.peek(X[0]))
    assert "never-seen" not in m.keys


def test_lru_eviction_bounds_keys_and_restarts_evicted_state():
    X = np.random.default_rng(0).normal(size=(10, 3))
    # raw inputs: the fresh model compared with has none of m's (global) standardisation statistics
    m = model(lr=0.0, max_keys=2, standardize=False)
    m.step_many(X[:3], keys=["a", "b", "a"])
    m.step(X[3], key="c")  # evicts b (least recently used)
    assert m.keys == ["a", "c"]
    fresh = model(lr=0.0, standardize=False)
    assert np.array_equal(m.step(X[4], key="b"), fresh.step(X[4]))  # b restarts from zero
    assert m.keys == ["c", "b"]
    # eviction and reuse of a slot inside one batch follows sequential semantics
    a, b = model(lr=0.0, max_keys=2), model(lr=0.0, max_keys=2)
    ks = ["a", "b", "c", "a", "b", "c", "a"]
    assert np.array_equal(a.step_many(X[:7], keys=ks), np.array([b.step(x, key=k) for x, k in zip(X, ks)]))
    assert a._H.shape[0] == 2


def test_forget_drops_one_key():
    X = np.random.default_rng(0).normal(size=(6, 3))
    m = model(lr=0.0)
    m.step_many(X[:3], keys=["a", "b", "c"])
    hc = m.hidden_state("c")
    m.forget("a")
    assert sorted(m.keys) == ["b", "c"] and np.array_equal(m.hidden_state("c"), hc)
    assert not m.hidden_state("a").any()


@pytest.mark.parametrize("learner", ["rtrl", "tbptt"])
@pytest.mark.parametrize("cell", CELLS)
def test_save_load_continues_bit_identically(cell, learner, tmp_path):
    X, Y, keys = keyed_stream(n=400)
    kw = dict(learner="tbptt", truncation=6, stride=3) if learner == "tbptt" else {}
    a = model(cell, clip=0.5, **kw)
    a.step_many(X[:200], Y[:200], keys[:200])
    a.save(tmp_path / "m.ckpt")
    b = sr.Model.load(tmp_path / "m.ckpt")
    assert b.config == a.config and b.keys == a.keys
    pa = a.step_many(X[200:], Y[200:], keys[200:])
    pb = b.step_many(X[200:], Y[200:], keys[200:])
    assert np.array_equal(pa, pb) and same_weights(a, b) and a.stats == b.stats


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    m = model()
    path = tmp_path / "m.ckpt"
    m.save(path)
    m.step(np.ones(3), y=[1.0, 0.0])
    m.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]
    assert same_weights(sr.Model.load(path), m)


def test_corrupted_truncated_and_foreign_files_are_refused(tmp_path):
    m = model()
    m.step(np.ones(3), y=[1.0, 0.0], key="a")
    path = tmp_path / "m.ckpt"
    m.save(path)
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    cases = {
        "flipped.ckpt": (bytes(flipped), "checksum mismatch"),
        "truncated.ckpt": (data[: len(data) - 100], "checksum mismatch"),
        "foreign.ckpt": (b"PK\x03\x04 not ours at all" * 4, "not a streamrnn checkpoint"),
        "empty.ckpt": (b"", "not a streamrnn checkpoint"),
        "future.ckpt": (data[:8] + (99).to_bytes(4, "little") + data[12:], "version 99"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(sr.CheckpointError, match=message):
            sr.Model.load(tmp_path / name)
    with pytest.raises(sr.CheckpointError, match="cannot read"):
        sr.Model.load(tmp_path / "missing.ckpt")
    other = model(cell="lstm")
    arrays, meta = m.state_arrays()
    with pytest.raises(sr.CheckpointError, match="another configuration"):
        other.load_state(arrays, meta)


def test_bad_samples_raise_and_leave_the_model_untouched():
    m = model()
    X, Y, keys = keyed_stream(n=20)
    m.step_many(X[:10], Y[:10], keys[:10])
    snapshot = m.get_weights(), m.stats, m.keys, m.hidden_state("k1")
    bad_X = X[10:].copy()
    bad_X[4, 1] = np.nan
    cases = [
        (dict(X=bad_X), r"X row 4 contains NaN or inf"),
        (dict(X=X[10:, :2]), r"X must have shape \(n_samples, 3\)"),
        (dict(X=np.full((2, 3), "a")), r"real numbers"),
        (dict(X=X[10:12], Y=[[1.0, np.inf], [0.0, 0.0]]), r"Y row 0 contains inf"),
        (dict(X=X[10:12], Y=[[1.0, np.nan], [0.0, 0.0]]), r"partly NaN"),
        (dict(X=X[10:12], Y=[[1.0], [0.0]]), r"Y row 0 has 1 values; expected 2"),
        (dict(X=X[10:12], Y=np.zeros((2, 1))), r"Y must have shape \(2, 2\)"),
        (dict(X=X[10:12], keys=["a", ("tuple",)]), r"key must be a str or an int"),
        (dict(X=X[10:12], keys=["a"]), r"keys has 1 entries for 2 samples"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            m.step_many(**kwargs)
        w, stats, keys_, h = snapshot
        assert m.stats == stats and m.keys == keys_
        assert all(np.array_equal(w[k], m.get_weights()[k]) for k in w)
        assert np.array_equal(m.hidden_state("k1"), h)
    c = model(task="classification")
    with pytest.raises(ValueError, match="not an integer in \\[0, 3\\)"):
        c.step(np.ones(3), y=3)
    with pytest.raises(ValueError, match="not an integer in \\[0, 3\\)"):
        c.step(np.ones(3), y=1.5)
    with pytest.raises(ValueError, match="not an integer in \\[0, 2\\)"):
        model(task="binary").step(np.ones(3), y=2)


def test_bad_arguments_raise_clear_errors():
    for kwargs, message in [
        (dict(cell="transformer"), "cell must be one of"),
        (dict(n_hidden=0), "n_hidden must be a positive integer"),
        (dict(lr=-1.0), "lr must be a finite number"),
        (dict(lr=float("nan")), "lr must be a finite number"),
        (dict(task="classification", n_outputs=1), "needs n_outputs >= 2"),
        (dict(task="binary", n_outputs=2), "binary task has one output"),
        (dict(dtype="float16"), "dtype must be one of"),
        (dict(learner="magic"), "learner must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            sr.Model(**kwargs)
    m = model()
    with pytest.raises(ValueError, match="shape"):
        m.set_weights({**m.get_weights(), "readout.bias": np.zeros(5)})
    with pytest.raises(ValueError, match="missing"):
        m.set_weights({"readout.bias": np.zeros(2)})
    with pytest.raises(ValueError, match="NaN or inf"):
        m.set_weights({**m.get_weights(), "bias_ih_l0": np.full(18, np.nan)})
    with pytest.raises(ValueError, match="method must be one of"):
        m.gradient(np.ones((3, 3)), np.ones((3, 2)), method="magic")


def test_set_weights_round_trip():
    a, b = model(seed=1), model(seed=2)
    assert not same_weights(a, b)
    b.set_weights(a.get_weights())
    assert same_weights(a, b)


def test_non_finite_loss_is_skipped_and_counted():
    # raw targets: standardisation would clip the target and the loss would stay finite
    m = model(optimizer="sgd", lr=0.1, standardize=False)
    before = m.get_weights()
    pred = m.step(np.ones(3), y=[1e300, 0.0])  # ½(ŷ − 1e300)² overflows to inf
    assert np.isfinite(pred).all()
    assert m.stats["skipped_nonfinite"] == 1 and m.stats["updates"] == 0 and m.stats["steps"] == 1
    assert all(np.array_equal(before[k], m.get_weights()[k]) for k in before)
    m.step(np.ones(3), y=[1.0, 0.0])
    assert m.stats["updates"] == 1 and all(np.isfinite(v).all() for v in m.get_weights().values())


def test_non_finite_state_rejects_the_sample():
    # raw inputs: standardisation would clip them and the pre-activation would stay finite
    m = model(cell="rnn", optimizer="sgd", lr=0.1, standardize=False)
    w = m.get_weights()
    w["weight_ih_l0"][:, 0] = 2.0
    w["weight_ih_l0"][:, 1] = -2.0
    m.set_weights(w)
    h_before = m.hidden_state()
    # 2e308 - 2e308 = inf - inf = NaN inside the pre-activation.
    pred = m.step([1e308, 1e308, 0.0], y=[0.0, 0.0])
    assert np.isnan(pred).all()
    assert m.stats == {
        "steps": 0,
        "updates": 0,
        "skipped_nonfinite": 0,
        "rejected_nonfinite_state": 1,
        "influence_resets": 0,
    }
    assert np.array_equal(m.hidden_state(), h_before)
    assert all(np.array_equal(w[k], m.get_weights()[k]) for k in w)


def numpy_adam(theta, grads, lr, b1, b2, eps, wd):
    """torch.optim.Adam's update, written out (amsgrad=False, maximize=False)."""
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for t, g in enumerate(grads, 1):
        g = g + wd * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v) / np.sqrt(1 - b2**t) + eps
        theta = theta - (lr / (1 - b1**t)) * m / denom
    return theta


def numpy_sgd(theta, grads, lr, momentum, wd):
    buf = None
    for g in grads:
        g = g + wd * theta
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = buf
        theta = theta - lr * g
    return theta


def test_optimizers_match_pytorch_formulas():
    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=50)
    grads = [rng.normal(size=50) for _ in range(20)]
    hyper = np.zeros(N_HYPER)
    hyper[[LR, BETA1, BETA2, EPS, MOMENTUM, WEIGHT_DECAY]] = 0.01, 0.8, 0.99, 1e-8, 0.9, 0.01
    for kind, expected in [
        (ADAM, numpy_adam(theta0, grads, 0.01, 0.8, 0.99, 1e-8, 0.01)),
        (SGD, numpy_sgd(theta0, grads, 0.01, 0.9, 0.01)),
    ]:
        theta, state = theta0.copy(), np.zeros((2, 50))
        for t, g in enumerate(grads, 1):
            optimizer_step(kind, theta, g.copy(), state, t, hyper)
        np.testing.assert_allclose(theta, expected, rtol=1e-13, atol=1e-15)


def test_clip_grad_norm_matches_pytorch():
    g = np.array([3.0, 4.0])
    clip_grad_norm(g, 1.0, 25.0)
    np.testing.assert_allclose(g, np.array([3.0, 4.0]) * (1.0 / (5.0 + 1e-6)), rtol=1e-15)
    g = np.array([0.3, 0.4])
    clip_grad_norm(g, 1.0, 0.25)
    assert np.array_equal(g, [0.3, 0.4])


@pytest.mark.parametrize("learner", ["rtrl", "tbptt"])
@pytest.mark.parametrize("cell", CELLS)
def test_load_reads_keys_into_place_and_continues_bit_identically(cell, learner, tmp_path):
    # checkpoint.load(allocate=model.allocate_for_load) reads the per-key arrays into memory the
    # model adopts (one copy of every key's state in memory, not two); new keys then grow it
    from streamrnn import checkpoint

    X, Y, keys = keyed_stream(n=400, n_keys=3)
    keys = keys[:200] + [f"new{i % 9}" if i % 2 else k for i, k in enumerate(keys[200:])]
    kw = dict(learner="tbptt", truncation=6, stride=3) if learner == "tbptt" else {}
    a = model(cell, clip=0.5, max_keys=8, **kw)
    a.step_many(X[:200], Y[:200], keys[:200])
    a.save(tmp_path / "m.ckpt")
    b = model(cell, clip=0.5, max_keys=8, **kw)
    arrays, meta = checkpoint.load(tmp_path / "m.ckpt", allocate=b.allocate_for_load)
    b.load_state(arrays, meta)
    per_key = [n for n in arrays if n.startswith("key.")]
    assert per_key and all(np.shares_memory(b._keyed.arrays[n[4:]], arrays[n]) for n in per_key)
    assert b.keys == a.keys
    pa = a.step_many(X[200:], Y[200:], keys[200:])
    pb = b.step_many(X[200:], Y[200:], keys[200:])
    assert np.array_equal(pa, pb) and same_weights(a, b) and a.stats == b.stats and b.keys == a.keys


def test_corrupt_checkpoint_read_into_place_leaves_the_model_unchanged(tmp_path):
    from streamrnn import checkpoint

    X, Y, keys = keyed_stream(n=100)
    a = model()
    a.step_many(X, Y, keys)
    path = tmp_path / "m.ckpt"
    a.save(path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 1  # inside the last per-key array
    path.write_bytes(bytes(data))
    b = model()
    b.step_many(X[:50], Y[:50], keys[:50])
    before = {k: b.hidden_state(k).copy() for k in b.keys}
    with pytest.raises(checkpoint.CheckpointError, match="checksum mismatch"):
        checkpoint.load(path, allocate=b.allocate_for_load)
    assert {k: b.hidden_state(k).tolist() for k in b.keys} == {k: v.tolist() for k, v in before.items()}
    c = model()
    c.step_many(X[:50], Y[:50], keys[:50])
    pb, pc = b.step_many(X[50:], Y[50:], keys[50:]), c.step_many(X[50:], Y[50:], keys[50:])
    assert np.array_equal(pb, pc) and same_weights(b, c)
