"""API contracts a careless caller meets (issue 16, item 13): None targets, missing labels, keys."""

import math

import numpy as np
import pytest

import streamrnn as sr
from streamrnn.river import RNNClassifier, RNNRegressor


def test_none_marks_a_row_without_a_target_in_a_list():
    X = np.random.default_rng(0).normal(size=(4, 1))
    a = sr.Model(n_inputs=1, n_hidden=3, seed=1).step_many(X, [None, 0.5, None, [0.25]])
    b = sr.Model(n_inputs=1, n_hidden=3, seed=1).step_many(X, [[np.nan], [0.5], [np.nan], [0.25]])
    assert np.array_equal(a, b)
    two = sr.Model(n_inputs=1, n_hidden=3, n_outputs=2)
    assert two.step_many(X[:2], [None, [1.0, 2.0]]).shape == (2, 2)
    with pytest.raises(ValueError, match="Y row 0 has 1 values; expected 2"):
        two.step_many(X[:2], [0.5, [1.0, 2.0]])


@pytest.mark.parametrize("keys", ["ab", b"ab"])
def test_a_string_is_not_a_sequence_of_keys(keys):
    m = sr.Model(n_inputs=1, n_hidden=2)
    with pytest.raises(ValueError, match="one key per row"):
        m.step_many(np.zeros((2, 1)), keys=keys)
    assert m.keys == []


def test_regressor_without_a_target_advances_the_state_and_learns_nothing():
    rows = [{"u": math.sin(t)} for t in range(6)]
    a, b = RNNRegressor(n_inputs=1, n_hidden=3, seed=0), RNNRegressor(n_inputs=1, n_hidden=3, seed=0)
    for i, x in enumerate(rows):
        a.learn_one(x, None if i == 2 else float(i))
        b.learn_one(x, math.nan if i == 2 else float(i))
    assert a.predict_one({"u": 0.3}) == b.predict_one({"u": 0.3})
    m = sr.Model(n_inputs=1, n_hidden=3, seed=0, lr=0.01, clip=1.0, target_lags=1, baseline="last")
    m.step_many(np.array([[x["u"]] for x in rows]), [None if i == 2 else float(i) for i in range(6)])
    assert a.predict_one({"u": 0.3}) == float(m.peek([0.3])[0])
    for bad in (math.inf, -math.inf, "3", True):
        with pytest.raises(ValueError, match="target must be"):
            a.learn_one(rows[0], bad)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_classifier_missing_labels_are_not_classes(n_classes):
    clf = RNNClassifier(n_inputs=1, n_hidden=3, n_classes=n_classes, seed=0)
    labels = [True, None, False, math.nan] if n_classes == 2 else ["a", None, "b", math.nan, "c"]
    for i, y in enumerate(labels):
        clf.learn_one({"u": float(i)}, y)
    p = clf.predict_proba_one({"u": 1.0})
    assert set(p) == ({False, True} if n_classes == 2 else {"a", "b", "c"})
    assert math.isclose(sum(p.values()), 1.0)
    assert clf.model.stats["steps"] == len(labels)  # the unlabelled samples advanced the state
    assert clf.model.stats["updates"] == len(labels) - 2
