"""Model's public surface for adapters (validate_rows, apply_rows, peek_into, predict_from_state,
key_state / restore_key_state, last_gradient, dims) and the learner registry: exact behaviour."""

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.cells.dispatch import CELL_IDS
from streamrnn.learners import registry

from .helpers import N_OUTPUTS, random_sequence
from .test_model import keyed_stream, model, same_weights

LEARNERS = [("rtrl", {}), ("snap1", {}), ("uoro", {}), ("tbptt", {"truncation": 4, "stride": 2})]


def clone(m):
    arrays, meta = m.state_arrays()
    return sr.Model.from_state({k: v.copy() for k, v in arrays.items()}, meta)


@pytest.mark.parametrize("cell", ["gru", "lstm", "egru"])
@pytest.mark.parametrize("learner,extra", LEARNERS)
def test_validate_then_apply_rows_equals_step_many_bit_for_bit(cell, learner, extra):
    X, Y, keys = keyed_stream()
    a, b = model(cell, learner=learner, **extra), model(cell, learner=learner, **extra)
    preds_a, losses_a = a.step_many(X, Y, keys, return_loss=True)
    rows = b.validate_rows(X, Y, keys)
    out, losses = np.empty_like(preds_a), np.empty_like(losses_a)
    b.apply_rows(*rows, out, losses)
    assert np.array_equal(preds_a, out) and np.array_equal(losses_a, losses, equal_nan=True)
    assert same_weights(a, b) and a.stats == b.stats


def test_validate_rows_checks_like_step_many_and_changes_nothing():
    m = model()
    before = m.theta.copy()
    with pytest.raises(ValueError, match="keys has 1 entries for 2 samples"):
        m.validate_rows(np.zeros((2, 3)), keys=["a"])
    with pytest.raises(ValueError, match="key must be a str or an int"):
        m.validate_rows(np.zeros((1, 3)), keys=[1.5])
    with pytest.raises(ValueError):
        m.validate_rows(np.zeros((1, 4)))
    rows = m.validate_rows(np.zeros(3), [[1.0, 2.0]], keys=[np.int64(3)])
    assert rows.X.shape == (1, 3) and rows.Y.shape == (1, 2) and rows.has_y.tolist() == [True]
    assert rows.keys == [3] and type(rows.keys[0]) is int
    assert np.array_equal(m.theta, before) and m.keys == [] and m.stats["steps"] == 0


@pytest.mark.parametrize("cell", ["gru", "lstm", "dlru"])
@pytest.mark.parametrize("learner,extra", LEARNERS)
def test_key_state_read_restore_continues_bit_identically(cell, learner, extra):
    X, Y, keys = keyed_stream(n=120)
    a = model(cell, learner=learner, **extra)
    a.step_many(X[:80], Y[:80], keys[:80])
    saved = {k: a.key_state(k) for k in a.keys}
    b = clone(a)
    for k in list(b.keys):
        b.forget(k)
    assert b.keys == [] and b.key_state(keys[0]) is None
    for k, state in saved.items():
        b.restore_key_state(k, state)
    for state in saved.values():  # b holds copies: changing the read arrays changes nothing
        for arr in state.values():
            arr[...] = 0
    pa, la = a.step_many(X[80:], Y[80:], keys[80:], return_loss=True)
    pb, lb = b.step_many(X[80:], Y[80:], keys[80:], return_loss=True)
    assert np.array_equal(pa, pb) and np.array_equal(la, lb, equal_nan=True) and same_weights(a, b)
    assert sorted(saved["k0"]) == sorted(name for name, _, _ in a._keyed.layout)


def test_restore_key_state_refuses_what_does_not_fit_and_changes_nothing():
    m = model()
    m.step_many(np.ones((2, 3)), keys=["a", "b"])
    good = m.key_state("a")
    before = {k: m.key_state(k) for k in m.keys}
    bad_shape = {**good, "influence": good["influence"][:, :-1]}
    non_finite = {**good, "hidden": np.full_like(good["hidden"], np.nan)}
    for state, message in [
        ({"hidden": good["hidden"]}, "expected arrays"),
        (bad_shape, "has shape"),
        (non_finite, "NaN or inf"),
    ]:
        with pytest.raises(ValueError, match=message):
            m.restore_key_state("c", state)
    assert m.keys == ["a", "b"]
    assert all(np.array_equal(before[k][n], m.key_state(k)[n]) for k in before for n in before[k])


def test_restore_key_state_evicts_the_least_recent_key_when_full():
    m = model(max_keys=2)
    m.step_many(np.ones((2, 3)), keys=["a", "b"])
    m.restore_key_state("c", m.key_state("a"))
    assert m.keys == ["b", "c"]


@pytest.mark.parametrize("task", ["regression", "classification", "binary"])
def test_peek_into_and_predict_from_state_are_peek_and_step(task):
    X, Y = random_sequence(task, n_steps=10)
    # raw inputs: predict_from_state is the raw cell and readout, fed X[5] as is
    m = model(task=task, standardize=False)
    m.step_many(X[:5], Y[:5], keys=["a"] * 5)
    out = np.empty(N_OUTPUTS[task])
    for key in ("a", None, "unseen"):
        assert np.array_equal(m.peek_into(X[5], key, out), m.peek(X[5], key=key))
    s, s_next = m.hidden_state("a"), np.empty(m.dims.state_size)
    first = m.predict_from_state(X[5], s, out, next_state=s_next).copy()
    assert np.array_equal(s, m.hidden_state("a"))  # nothing changed
    assert np.array_equal(m.step(X[5], key="a"), first)  # the prediction step makes first
    probe = sr.Model(**{**m.config, "lr": 0.0})
    probe.set_weights(m.get_weights())
    probe.restore_key_state("a", m.key_state("a"))
    assert np.array_equal(m.predict_from_state(X[6], m.hidden_state("a"), out), probe.peek(X[6], key="a"))


@pytest.mark.parametrize("learner,extra", LEARNERS)
def test_last_gradient_is_the_update_that_was_applied(learner, extra):
    X, Y = random_sequence("regression", n_steps=8, missing_every=0)
    # raw targets: every labelled row is learned (standardisation learns from the third target on)
    m = model(learner=learner, optimizer="sgd", lr=0.5, standardize=False, **extra)
    before = m.theta.copy()
    m.step_many(X[:2], Y[:2])  # TBPTT(4, 2): one window update at step 2
    g = m.last_gradient()
    if learner != "tbptt":  # the per-step learners updated twice; undo the last one
        before = m.theta + 0.5 * g
        m.theta[:] = before
        m.step_many(X[2:3], Y[2:3])
        g = m.last_gradient()
    assert np.allclose(m.theta, before - 0.5 * g, rtol=0, atol=1e-15)
    g[:] = 0  # a copy
    assert np.abs(m.last_gradient()).sum() > 0


def test_dims_describe_the_model():
    m = sr.Model(cell="lstm", n_inputs=3, n_hidden=4, n_outputs=3, task="classification", seed=7)
    d = m.dims
    assert (d.cell, d.n_inputs, d.n_hidden, d.n_outputs, d.state_size, d.target_width) == (
        CELL_IDS["lstm"],
        3,
        4,
        3,
        8,
        1,
    )
    assert (d.n_params_cell, d.n_params, d.seed, d.dtype) == (m.n_params_cell, m.n_params, 7, np.dtype("float64"))


def test_registry_lists_and_resolves_learners():
    assert registry.names() == ("rtrl", "snap1", "uoro", "tbptt") == sr.model.LEARNERS
    for name in registry.names():
        spec = registry.get(name)
        assert spec.name == name and spec.key_state._fields[0] == "hidden"
        assert spec.windowed == (name == "tbptt")
    for cell in ("ernn", "egru", "elstm", "dlru"):
        assert registry.resolve("rtrl", CELL_IDS[cell]) is registry.get("snap1")
    for cell in ("rnn", "gru", "lstm"):
        assert registry.resolve("rtrl", CELL_IDS[cell]) is registry.get("rtrl")
    assert registry.resolve("uoro", CELL_IDS["egru"]) is registry.get("uoro")
    with pytest.raises(ValueError, match="learner must be one of"):
        registry.get("magic")
    m = sr.Model(cell="egru", n_inputs=2, n_hidden=3)  # exact RTRL on the per-unit layout
    assert m.learner == "rtrl" and m.config["learner"] == "rtrl"
    assert m._keyed.arrays["influence"].shape[1:] == registry.get("snap1").key_layout(m.dims)[1][1]


def test_workspaces_are_named():
    m = model(learner="uoro")
    ws = registry.get("uoro").make_workspace(m.dims)
    assert ws.seed == m.config["seed"] and ws.grad.shape == (m.n_params,)
    t = registry.get("tbptt").make_workspace(m.dims._replace(truncation=5, stride=3))
    assert t.stride == 3 and t.grad.shape == t.step_grad.shape == (m.n_params,)
