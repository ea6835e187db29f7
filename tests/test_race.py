"""``Model(optimizer="race")``: K Adam members at rates lr * RACE_FACTORS, each row reported by the member
whose discounted prequential loss was lowest before it. Checked against the race written out here in
NumPy over K independently constructed single-rate Adam Models on the same stream."""

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.checkpoint import CheckpointError
from streamrnn.optim import RACE_FACTORS, race_decay, race_rates

K = len(RACE_FACTORS)


def config(**kw):
    base = dict(
        cell="gru",
        n_inputs=2,
        n_hidden=4,
        n_outputs=1,
        task="regression",
        learner="rtrl",
        lr=0.02,
        clip=1.0,
        seed=3,
        dtype="float64",
        standardize=True,
        target_lags=1,
        head_lags=0,  # the race alone; with the linear head after it: tests/test_rls_head.py
    )
    base.update(kw)
    return base


def stream(n, task="regression", n_keys=1, seed=0, n_outputs=1):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    X = np.stack([np.sin(t / 7.0), np.cos(t / 3.0)], axis=1) * 3.0 + 10.0 + 0.1 * rng.standard_normal((n, 2))
    if task == "regression":
        Y = (np.roll(X[:, :1], -1, axis=0) * 2.0 - 5.0).astype(float)
        Y[rng.random(n) < 0.15] = np.nan  # rows without target
        Y = Y.tolist()
    elif task == "classification":
        Y = (X[:, 0] > 10.0).astype(float) + (X[:, 1] > 10.0)
        Y[rng.random(n) < 0.15] = np.nan
    else:
        Y = (X[:, 0] > 10.0).astype(float)
        Y[rng.random(n) < 0.15] = np.nan
    keys = [int(k) for k in rng.integers(0, n_keys, n)] if n_keys > 1 else None
    return X, Y, keys


class ReferenceRace:
    """The race in NumPy over K independent single-rate Adam Models."""

    def __init__(self, **cfg):
        lr = cfg.pop("lr")
        self.members = [sr.Model(optimizer="adam", lr=rate, **cfg) for rate in race_rates(lr)]
        self.scores = np.zeros(K)
        self.decay = race_decay()

    def step_many(self, X, Y=None, keys=None):
        outs, losses = zip(*(m.step_many(X, Y, keys, return_loss=True) for m in self.members), strict=True)
        outs, losses = np.stack(outs), np.stack(losses)
        picks = np.empty(len(X), np.int64)
        for t in range(len(X)):
            picks[t] = int(np.argmin(self.scores))  # first minimum: ties to the lower index
            finite = np.isfinite(losses[:, t])
            if finite.any():
                self.scores = self.decay * self.scores + np.where(finite, losses[:, t], np.inf)
        rows = np.arange(len(X))
        return outs[picks, rows], losses[picks, rows], picks

    @property
    def leader(self):
        return self.members[int(np.argmin(self.scores))]


def batches(n, sizes):
    out, i, j = [], 0, 0
    while i < n:
        size = sizes[j % len(sizes)]
        out.append(slice(i, min(n, i + size)))
        i += size
        j += 1
    return out


def feed(model, X, Y, keys, sizes):
    outs, losses = [], []
    for sl in batches(len(X), sizes):
        o, loss = model.step_many(X[sl], Y[sl], None if keys is None else keys[sl], return_loss=True)
        outs.append(o)
        losses.append(loss)
    return np.concatenate(outs), np.concatenate(losses)


@pytest.mark.parametrize(
    "task,n_outputs,extra",
    [
        ("regression", 1, {}),
        ("regression", 1, dict(standardize=False, target_lags=0)),
        ("classification", 3, {}),
        ("binary", 1, dict(learner="tbptt", truncation=4)),
        ("regression", 1, dict(cell="lstm", learner="snap1", readout_skip=True)),
        ("regression", 1, dict(dtype="float32", learner="uoro")),
    ],
)
def test_race_equals_numpy_race_over_independent_models(task, n_outputs, extra):
    cfg = config(task=task, n_outputs=n_outputs, max_keys=2, **extra)
    X, Y, keys = stream(600, task, n_keys=3)
    race, ref = sr.Model(optimizer="race", **cfg), ReferenceRace(**cfg)
    seen = set()
    for sl in batches(len(X), [1, 7, 50, 1, 1, 120, 33]):
        leader_before = race.race_leader
        ref_leader_before = int(np.argmin(ref.scores))
        assert leader_before == ref_leader_before
        o, loss = race.step_many(X[sl], Y[sl], keys[sl], return_loss=True)
        o_ref, loss_ref, picks = ref.step_many(X[sl], Y[sl], keys[sl])
        assert picks[0] == leader_before
        seen.update(picks.tolist())
        np.testing.assert_array_equal(o, o_ref)
        np.testing.assert_array_equal(loss, loss_ref)
        np.testing.assert_array_equal(race.race_scores, ref.scores)
    assert len(seen) >= 2, "the stream should make the lead change at least once"
    # everything that reads one model reads the leader
    lead = ref.leader
    for name, w in lead.get_weights().items():
        np.testing.assert_array_equal(race.get_weights()[name], w)
    for k, m in enumerate(ref.members):
        np.testing.assert_array_equal(race.theta[k], m.theta)
        np.testing.assert_array_equal(race.opt_state[k], m.opt_state)
    np.testing.assert_array_equal(race.last_gradient(), lead.last_gradient())
    assert race.stats == lead.stats
    assert race.keys == lead.keys
    for key in race.keys:
        np.testing.assert_array_equal(race.peek(X[0], key=key), lead.peek(X[0], key=key))
        np.testing.assert_array_equal(race.hidden_state(key), lead.hidden_state(key))
        state = race.key_state(key)
        for k, m in enumerate(ref.members):
            for name, arr in m.key_state(key).items():
                np.testing.assert_array_equal(state[name if name.startswith("lag_") else f"member{k}.{name}"], arr)
    np.testing.assert_array_equal(race.peek(X[0], key=12345), lead.peek(X[0], key=12345))
    Yg = np.nan_to_num(np.asarray(Y[:20], dtype=float))
    for name, g in lead.gradient(X[:20], Yg).items():
        np.testing.assert_array_equal(race.gradient(X[:20], Yg)[name], g)


def test_batch_splits_give_identical_results():
    cfg = config(max_keys=2)
    X, Y, keys = stream(500, n_keys=3, seed=1)
    runs = []
    for sizes in ([500], [1], [3, 17, 1, 64], [250]):
        m = sr.Model(optimizer="race", **cfg)
        out, loss = feed(m, X, Y, keys, sizes)
        runs.append((out, loss, m.race_scores.copy(), m.theta.copy(), m.opt_state.copy(), m.counters.copy()))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_save_load_mid_stream_continues_bit_identically(tmp_path):
    cfg = config(max_keys=2)
    X, Y, keys = stream(600, n_keys=3, seed=2)
    a = sr.Model(optimizer="race", **cfg)
    feed(a, X[:300], Y[:300], keys[:300], [40])
    a.save(tmp_path / "race.ckpt")
    b = sr.Model.load(tmp_path / "race.ckpt")
    assert b.race and b.config == a.config
    np.testing.assert_array_equal(b.race_scores, a.race_scores)
    c = sr.Model(optimizer="race", **cfg)  # load_state into a fresh model through allocate_for_load
    from streamrnn import checkpoint

    arrays, meta = checkpoint.load(tmp_path / "race.ckpt", allocate=c.allocate_for_load)
    c.load_state(arrays, meta)
    rest = (X[300:], Y[300:], keys[300:], [1, 25, 70])
    out_a, loss_a = feed(a, *rest)
    for m in (b, c):
        out, loss = feed(m, *rest)
        np.testing.assert_array_equal(out, out_a)
        np.testing.assert_array_equal(loss, loss_a)
        np.testing.assert_array_equal(m.theta, a.theta)
        np.testing.assert_array_equal(m.race_scores, a.race_scores)


def test_checkpoint_mismatch_and_bad_scores_are_refused(tmp_path):
    cfg = config()
    X, Y, _ = stream(50)
    race = sr.Model(optimizer="race", **cfg)
    race.step_many(X, Y)
    adam = sr.Model(optimizer="adam", **cfg)
    arrays, meta = race.state_arrays()
    with pytest.raises(CheckpointError, match="another configuration"):
        adam.load_state(arrays, meta)
    with pytest.raises(CheckpointError, match="another configuration"):
        race.load_state(*adam.state_arrays())
    fresh = sr.Model(optimizer="race", **cfg)
    bad = dict(arrays)
    bad["race.scores"] = np.array([np.nan, 0.0, 0.0])
    with pytest.raises(CheckpointError, match="race.scores"):
        fresh.load_state(bad, meta)
    del bad["race.scores"]
    with pytest.raises(CheckpointError, match="race.scores"):
        fresh.load_state(bad, meta)
    np.testing.assert_array_equal(fresh.race_scores, np.zeros(K))


def test_lr_zero_all_members_identical_and_exact():
    cfg = config(lr=0.0)
    X, Y, keys = stream(200, n_keys=2)
    race, adam = sr.Model(optimizer="race", **cfg), sr.Model(optimizer="adam", **cfg)
    o, loss = race.step_many(X, Y, keys, return_loss=True)
    o_ref, loss_ref = adam.step_many(X, Y, keys, return_loss=True)
    np.testing.assert_array_equal(o, o_ref)
    np.testing.assert_array_equal(loss, loss_ref)
    assert race.race_leader == 0 and np.all(race.race_scores == race.race_scores[0])
    for k in range(K):
        np.testing.assert_array_equal(race.theta[k], adam.theta)
    Yg = np.nan_to_num(np.asarray(Y[:30], dtype=float))
    for method in ("rtrl", "bptt"):
        for name, g in adam.gradient(X[:30], Yg, method=method).items():
            np.testing.assert_array_equal(race.gradient(X[:30], Yg, method=method)[name], g)
    np.testing.assert_array_equal(race.last_gradient(), adam.last_gradient())
    # RTRL == BPTT at the race's leader, as for any model
    g_rtrl, g_bptt = race.gradient(X[:30], Yg, method="rtrl"), race.gradient(X[:30], Yg, method="bptt")
    for name in g_rtrl:
        np.testing.assert_allclose(g_rtrl[name], g_bptt[name], rtol=1e-9, atol=1e-12)


def test_set_weights_sets_every_member_and_key_state_round_trips():
    cfg = config()
    X, Y, keys = stream(120, n_keys=2)
    race = sr.Model(optimizer="race", **cfg)
    race.step_many(X, Y, keys)
    w = {name: np.full_like(a, 0.01) for name, a in race.get_weights().items()}
    race.set_weights(w)
    for k in range(K):
        np.testing.assert_array_equal(race.theta[k], np.full(race.n_params, 0.01))
    state = race.key_state(keys[0])
    assert {f"member{k}.hidden" for k in range(K)} <= set(state)
    race.restore_key_state("copy", state)
    np.testing.assert_array_equal(race.peek(X[0], key="copy"), race.peek(X[0], key=keys[0]))
    bad = {name: arr for name, arr in state.items() if name != "member1.hidden"}
    with pytest.raises(ValueError, match="restore_key_state"):
        race.restore_key_state("other", bad)


def test_race_shapes_and_default_stays_adam():
    m = sr.Model(n_inputs=2, n_hidden=3)
    assert m.config["optimizer"] == "adam" and not m.race and m.theta.shape == (m.n_params,)
    r = sr.Model(n_inputs=2, n_hidden=3, optimizer="race", lr=1e-3)
    assert r.theta.shape == (K, r.n_params) and r.opt_state.shape[0] == K and r.counters.shape[0] == K
    np.testing.assert_array_equal(r.theta[0], m.theta)  # same seed, same initial weights
    np.testing.assert_allclose(r.hyper[:, 0], [1e-3 * f for f in RACE_FACTORS])
    assert "race" in repr(r)


def test_race_one_sample_apply_rows_path_matches_step_many():
    cfg = config()
    X, Y, _ = stream(150)
    a, b = sr.Model(optimizer="race", **cfg), sr.Model(optimizer="race", **cfg)
    out, losses = np.empty((1, 1)), np.empty(1)
    got = []
    for i in range(len(X)):
        a.apply_rows(*a.validate_rows(X[i : i + 1], [Y[i]]), out, losses)
        got.append(out[0, 0])
    np.testing.assert_array_equal(np.array(got), b.step_many(X, Y)[:, 0])


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(momentum=0.9), "momentum"),
        (dict(optimizer="racing"), "race"),
        (dict(lr=-1.0), "lr"),
        (dict(lr=float("nan")), "lr"),
    ],
)
def test_bad_race_configs_are_refused(kw, match):
    args = dict(n_inputs=1, n_hidden=2, optimizer="race")
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        sr.Model(**args)


def test_partitioned_shared_mode_runs_a_race_on_shared_member_arrays():
    from streamrnn.partitioned import PartitionedModel

    cfg = config(optimizer="race")
    X, Y, _ = stream(200, seed=4)
    Y = np.asarray(Y, dtype=float)
    parts, plain = PartitionedModel(cfg, mode="shared"), sr.Model(**cfg)
    for sl in batches(len(X), [30, 1, 60]):
        p, loss = parts.step_many(X[sl], Y[sl], [None] * len(X[sl]), ["t:0"] * len(X[sl]))
        p_ref, loss_ref = plain.step_many(X[sl], Y[sl], return_loss=True)
        np.testing.assert_array_equal(p, p_ref)
        np.testing.assert_array_equal(loss, loss_ref)
    assert parts.model("t:0").theta is parts.shared.theta
    np.testing.assert_array_equal(parts.parameters, plain.theta)
    parts.step_many(X[:5], Y[:5], [None] * 5, ["t:1"] * 5)  # a second partition moves the shared rows
    assert parts.model("t:1").theta is parts.shared.theta
    assert not np.array_equal(parts.parameters, plain.theta)


def test_flat_parameters_is_the_leaders_row_and_optimizers_elsewhere_refuse_race():
    cfg = config()
    X, Y, _ = stream(300, seed=5)
    race = sr.Model(optimizer="race", **cfg)
    race.step_many(X, Y)
    assert race.flat_parameters.shape == (race.n_params,)
    np.testing.assert_array_equal(race.flat_parameters, race.theta[race.race_leader])
    adam = sr.Model(optimizer="adam", **cfg)
    assert adam.flat_parameters is adam.theta
    from streamrnn.validation import optimizer_settings

    with pytest.raises(ValueError, match="optimizer must be one of"):
        optimizer_settings("race", 1e-3, None, (0.9, 0.999), 1e-8, 0.0, 0.0)


def test_pickle_and_deepcopy_continue_identically():
    import copy
    import pickle

    cfg = config()
    X, Y, keys = stream(300, n_keys=2, seed=6)
    a = sr.Model(optimizer="race", **cfg)
    a.step_many(X[:150], Y[:150], keys[:150])
    b, c = pickle.loads(pickle.dumps(a)), copy.deepcopy(a)
    out_a = a.step_many(X[150:], Y[150:], keys[150:])
    for m in (b, c):
        np.testing.assert_array_equal(m.step_many(X[150:], Y[150:], keys[150:]), out_a)
        np.testing.assert_array_equal(m.theta, a.theta)
        np.testing.assert_array_equal(m.race_scores, a.race_scores)


def test_partitioned_shared_mode_save_and_load_continue_identically():
    from streamrnn.partitioned import PartitionedModel

    cfg = config(optimizer="race")
    X, Y, _ = stream(240, seed=7)
    Y = np.asarray(Y, dtype=float)
    a = PartitionedModel(cfg, mode="shared")
    a.step_many(X[:120], Y[:120], [None] * 120, ["t:0"] * 120)
    arrays, meta = a.state_arrays("t:0")
    arrays = {k: np.array(v) for k, v in arrays.items()}
    b = PartitionedModel(cfg, mode="shared")
    b.load("t:0", arrays, meta, adopt_parameters=True)
    p_a, l_a = a.step_many(X[120:], Y[120:], [None] * 120, ["t:0"] * 120)
    p_b, l_b = b.step_many(X[120:], Y[120:], [None] * 120, ["t:0"] * 120)
    np.testing.assert_array_equal(p_a, p_b)
    np.testing.assert_array_equal(l_a, l_b)
    np.testing.assert_array_equal(a.parameters, b.parameters)
