"""River estimators: river's own checks, plus exact behaviour against independent computations."""

import copy
import math
import pickle

import numpy as np
import pytest
from river import datasets, evaluate, metrics, preprocessing
from river.checks import yield_checks

import streamrnn as sr
from streamrnn.river import RNNClassifier, RNNForecaster, RNNRegressor


# ---------------------------------------------------------------------------- river's checks
def _river_checks():
    for cls in (RNNRegressor, RNNClassifier, RNNForecaster):
        for i, params in enumerate(cls._unit_test_params()):
            model = cls(**params)
            skips = model._unit_test_skips()
            for j, check in enumerate(yield_checks(model)):
                if check.__name__ in skips:
                    continue
                yield pytest.param(model, check, id=f"{cls.__name__}{i}-{j:02d}-{check.__name__}")


@pytest.mark.parametrize("estimator, check", list(_river_checks()))
def test_river_check(estimator, check):
    check(copy.deepcopy(estimator).clone())


# ---------------------------------------------------------------------------- helpers
def _stream(n, seed=0):
    """Dicts whose features appear mid-stream (c at t=5, d at t=9) and sometimes go missing."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        x = {"b": float(rng.normal()), "a": float(rng.normal())}
        if t >= 5:
            x["c"] = float(rng.normal())
        if t >= 9 and t % 3:
            x["d"] = float(rng.normal())
        if t % 4 == 0:
            del x["a"]
        out.append((x, float(np.sin(t / 3.0) + 0.1 * rng.normal())))
    return out


def _mapped(x, order):
    return np.array([x.get(name, 0.0) for name in order])


PARAMS = dict(cell="gru", n_hidden=5, lr=0.03, clip=1.0, seed=3)


# ---------------------------------------------------------------------------- regressor
def test_regressor_matches_model_bit_for_bit_and_predict_is_pure():
    reg = RNNRegressor(n_inputs=3, **PARAMS)
    m = sr.Model(n_inputs=3, n_outputs=1, task="regression", target_lags=1, baseline="last", **PARAMS)  # the defaults
    # registration by first appearance: b at t=0 (a is dropped then), a at t=1, c at t=5; d (t=10) finds no free slot
    order = ["b", "a", "c"]
    for t, (x, y) in enumerate(_stream(40)):
        if t > 0:
            before = pickle.dumps(reg)
            p = reg.predict_one(x)
            assert pickle.dumps(reg) == before  # predict_one changes nothing
            known = {k: v for k, v in x.items() if k in reg.features}
            assert p == m.peek(_mapped(known, order))[0]
        reg.learn_one(x, y)
        m.step(_mapped(x, order), [y])
    assert reg.features == order
    for name, w in m.get_weights().items():
        np.testing.assert_array_equal(reg.model.get_weights()[name], w)
    np.testing.assert_array_equal(reg.model.hidden_state(), m.hidden_state())


def _beside(reg, m, n=40, order=("b", "a", "c")):
    """Feed ``_stream(n)`` to the estimator and to the Model it should equal (features registered in
    ``order``), asserting every prediction equal."""
    for t, (x, y) in enumerate(_stream(n)):
        if t > 0:
            known = {k: v for k, v in x.items() if k in reg.features}
            assert reg.predict_one(x) == m.peek(_mapped(known, list(order)))[0]
        reg.learn_one(x, y)
        m.step(_mapped(x, list(order)), [y])


def test_regressor_with_readout_skip_matches_model_bit_for_bit():
    """ŷ = W_out h + S x + b through the estimator: the same predictions and weights as the Model."""
    reg = RNNRegressor(n_inputs=3, readout_skip=True, **PARAMS)
    m = sr.Model(
        n_inputs=3, n_outputs=1, task="regression", readout_skip=True, target_lags=1, baseline="last", **PARAMS
    )
    _beside(reg, m)
    w = reg.model.get_weights()
    assert np.abs(w["readout.skip_weight"]).max() > 0  # the skip path learned
    for name, v in m.get_weights().items():
        np.testing.assert_array_equal(w[name], v)
    twin = pickle.loads(pickle.dumps(reg))
    x = {"a": 0.3, "b": -1.0, "c": 2.0}
    assert twin.predict_one(x) == reg.predict_one(x) and twin.clone().readout_skip


def test_a_stacked_regressor_matches_a_stacked_model_bit_for_bit():
    """``n_layers=2`` through the estimator: the Model's stack (PyTorch's ``_l1`` parameters), the same
    predictions and weights as a Model built with the estimator's defaults."""
    reg = RNNRegressor(n_inputs=3, n_layers=2, **PARAMS)
    m = sr.Model(n_inputs=3, n_outputs=1, task="regression", target_lags=1, baseline="last", n_layers=2, **PARAMS)
    _beside(reg, m)
    w = reg.model.get_weights()
    assert "weight_hh_l1" in w
    for name, v in m.get_weights().items():
        np.testing.assert_array_equal(w[name], v)


def test_dict_order_never_matters():
    reg, reg2 = RNNRegressor(n_inputs=4, **PARAMS), RNNRegressor(n_inputs=4, **PARAMS)
    for x, y in _stream(30):
        reg.learn_one(x, y)
        reg2.learn_one(dict(reversed(list(x.items()))), y)
    assert reg2.features == reg.features == ["b", "a", "c", "d"]
    np.testing.assert_array_equal(reg.model.theta, reg2.model.theta)


def test_feature_width_missing_and_bad_values():
    reg = RNNRegressor(n_inputs=2, n_hidden=3)
    reg.learn_one({"z": 1.0, "y": 2.0, "x": 3.0, "when": "monday"}, 1.0)
    assert reg.features == ["x", "y"]  # sorted within the sample, width 2; z and the str ignored
    theta = reg.model.theta.copy()
    h = reg.model.hidden_state()
    with pytest.raises(ValueError):
        reg.learn_one({"x": float("nan")}, 1.0)
    with pytest.raises(ValueError):
        reg.learn_one({"x": "oops"}, 1.0)
    np.testing.assert_array_equal(reg.model.theta, theta)  # nothing changed
    np.testing.assert_array_equal(reg.model.hidden_state(), h)
    # missing and None read as 0; unknown features never change a prediction
    assert (
        reg.predict_one({"y": 2.0})
        == reg.predict_one({"x": 0.0, "y": 2.0, "q": 5.0})
        == reg.predict_one({"x": None, "y": 2.0})
    )
    assert reg.predict_one({"y": 2.0}) == reg.model.peek([0.0, 2.0])[0]


def test_per_key_states_are_independent_and_bounded():
    reg = RNNRegressor(n_inputs=2, key="id", max_keys=2, **PARAMS)
    m = sr.Model(n_inputs=2, max_keys=2, target_lags=1, baseline="last", **PARAMS)
    rows = [({"id": k, "u": 0.1 * t, "v": -0.2 * t}, math.cos(t)) for t, k in enumerate("abababab")]
    for x, y in rows:
        reg.learn_one(x, y)
        m.step([x["u"], x["v"]], [y], key=x["id"])
    assert reg.features == ["u", "v"] and reg.model.keys == ["a", "b"]
    ha = reg.model.hidden_state("a")
    reg.learn_one({"id": "b", "u": 1.0, "v": 1.0}, 0.5)  # learning on b moves b only
    np.testing.assert_array_equal(reg.model.hidden_state("a"), ha)
    assert not np.array_equal(reg.model.hidden_state("b"), m.hidden_state("b"))
    m.step([1.0, 1.0], [0.5], key="b")
    np.testing.assert_array_equal(reg.model.hidden_state("b"), m.hidden_state("b"))
    np.testing.assert_array_equal(reg.model.theta, m.theta)
    reg.learn_one({"id": "c", "u": 0.0, "v": 0.0}, 0.0)  # evicts a (least recently used)
    assert reg.model.keys == ["b", "c"]
    # a key seen only at predict time predicts from a zero state and an empty lag buffer
    z = copy.deepcopy(reg.model)
    z.restore_key_state("new", {name: np.zeros_like(v) for name, v in z.key_state("b").items()})
    assert reg.predict_one({"id": "new", "u": 0.3, "v": 0.0}) == z.peek([0.3, 0.0], key="new")[0]


def test_pickle_and_clone_continue_bit_identically():
    data = _stream(40)
    reg = RNNRegressor(n_inputs=4, **PARAMS)
    for x, y in data[:20]:
        reg.learn_one(x, y)
    twin = pickle.loads(pickle.dumps(reg))
    fresh = reg.clone()
    assert fresh.features == [] and fresh._core is None
    for x, y in data[20:]:
        assert reg.predict_one(x) == twin.predict_one(x)
        reg.learn_one(x, y)
        twin.learn_one(x, y)
    np.testing.assert_array_equal(reg.model.theta, twin.model.theta)
    np.testing.assert_array_equal(reg.model.opt_state, twin.model.opt_state)


def test_pipeline_with_scalers_equals_manual_scaling():
    data = list(datasets.TrumpApproval().take(120))
    pipe = preprocessing.TargetStandardScaler(preprocessing.StandardScaler() | RNNRegressor(n_hidden=4, seed=2))
    metric = evaluate.progressive_val_score(data, pipe, metrics.MAE())
    # by hand: river's feature scaler, the target scaled with a sample std (ddof=1), our bare regressor
    xs, reg = preprocessing.StandardScaler(), RNNRegressor(n_hidden=4, seed=2)
    seen, err = [], 0.0
    for x, y in data:
        mean = float(np.mean(seen)) if seen else 0.0
        sd = float(np.std(seen, ddof=1)) if len(seen) > 1 else 0.0
        err += abs(y - (reg.predict_one(xs.transform_one(x)) * sd + mean))
        xs.learn_one(x)
        seen.append(y)
        mean = float(np.mean(seen))
        sd = float(np.std(seen, ddof=1)) if len(seen) > 1 else 0.0
        reg.learn_one(xs.transform_one(x), (y - mean) / sd if sd > 0 else 0.0)
    assert math.isclose(metric.get(), err / len(data), rel_tol=1e-6)


# ---------------------------------------------------------------------------- classifier
def test_binary_classifier_keys_and_probabilities():
    clf = RNNClassifier(n_hidden=3, n_inputs=4, seed=1)
    p = clf.predict_proba_one({"a": 1.0})
    assert set(p) == {False, True} and p[True] + p[False] == 1.0
    m = sr.Model(n_inputs=4, n_hidden=3, n_outputs=1, task="binary", lr=0.01, clip=1.0, seed=1)
    assert p[True] == m.peek([0.0, 0, 0, 0])[0]  # "a" is not registered by predict_one
    for x, y in datasets.Phishing().take(50):
        p = clf.predict_proba_one(x)
        assert set(p) == {False, True} and math.isclose(sum(p.values()), 1.0)
        clf.learn_one(x, y)
    with pytest.raises(ValueError):
        clf.learn_one({"a": 1.0}, "spam")


def test_multiclass_new_class_mid_stream():
    clf = RNNClassifier(n_hidden=4, n_inputs=2, n_classes=3, seed=0)
    m = sr.Model(n_inputs=2, n_hidden=4, n_outputs=3, task="classification", lr=0.01, clip=None, seed=0)
    assert clf.predict_proba_one({"u": 1.0}) == {}
    labels = ["x", "y"] * 5 + ["z"] + ["x", "y", "z"] * 3 + ["w", "x"]
    idx = {"x": 0, "y": 1, "z": 2}
    for t, lab in enumerate(labels):
        x = {"u": math.sin(t), "v": math.cos(t)}
        if t:
            p = clf.predict_proba_one(x)
            full = m.peek([x["u"], x["v"]])
            known = sorted(set(labels[:t]) & set(idx), key=idx.get)
            assert list(p) == known
            assert math.isclose(sum(p.values()), 1.0)
            for lab2 in known:
                assert math.isclose(p[lab2], full[idx[lab2]] / sum(full[idx[k]] for k in known), rel_tol=1e-12)
        clf.learn_one(x, lab)
        m.step([x["u"], x["v"]], [idx[lab]] if lab in idx else None)
    assert clf.classes == ["x", "y", "z"] and clf.n_dropped_labels == 1  # "w": no free output
    np.testing.assert_array_equal(clf.model.theta, m.theta)
    assert clf.predict_one({"u": 0.0, "v": 1.0}) in {"x", "y", "z"}


# ---------------------------------------------------------------------------- forecaster
def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _gru_numpy(w, x, h):
    """PyTorch's GRU equations, written independently of the compiled cell."""
    n = h.shape[0]
    gi = w["weight_ih_l0"] @ x + w["bias_ih_l0"]
    gh = w["weight_hh_l0"] @ h + w["bias_hh_l0"]
    r = _sigmoid(gi[:n] + gh[:n])
    z = _sigmoid(gi[n : 2 * n] + gh[n : 2 * n])
    c = np.tanh(gi[2 * n :] + r * gh[2 * n :])
    return (1 - z) * c + z * h


def _frozen_twin(model):
    """A copy of ``model`` whose steps do not learn (lr 0: Adam's update is exactly 0)."""
    cfg = dict(model.config)
    twin = sr.Model(**{k: v for k, v in cfg.items() if k in sr.Model.__init__.__code__.co_varnames} | {"lr": 0.0})
    twin.set_weights(model.get_weights())
    for key in model.keys:
        twin.restore_key_state(key, model.key_state(key))
    return twin


@pytest.mark.parametrize("readout_skip", [False, True])
def test_forecast_is_recursive_and_pure(readout_skip):
    """forecast(h) feeds its own forecasts back as lag 1: the same as stepping a frozen copy of the
    Model with each forecast as the observed target (standardize off, so no statistics move)."""
    series = [float(v) for _, v in datasets.AirlinePassengers().take(40)]
    fc = RNNForecaster(
        n_hidden=4, n_inputs=1, lr=0.02, seed=5, readout_skip=readout_skip, standardize=False, target_lags=2
    )
    for t, y in enumerate(series):
        fc.learn_one(y / 100.0, {"trend": t / 40.0, "month": "ignored"})
    state = pickle.dumps(fc)
    xs = [{"trend": (40 + h) / 40.0} for h in range(6)]
    got = fc.forecast(6, xs)
    assert pickle.dumps(fc) == state  # forecasting changes nothing
    assert fc.forecast(6, xs) == got
    assert readout_skip == ("readout.skip_weight" in fc.model.get_weights())
    twin = _frozen_twin(fc.model)
    want = []
    for x in xs:
        p = float(twin.peek([x["trend"]])[0])
        want.append(p)
        twin.step([x["trend"]], [p])
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_forecast_one_step_is_the_next_learn_prediction_with_standardisation():
    series = [100.0 + 20 * math.sin(t / 3.0) for t in range(50)]
    fc = RNNForecaster(n_hidden=4, n_inputs=1, seed=1, key="id")
    m = sr.Model(n_inputs=1, n_hidden=4, lr=0.01, clip=1.0, seed=1, target_lags=1, baseline="last")
    for t, y in enumerate(series):
        x = {"id": "a", "trend": t / 50.0}
        if t > 0:
            assert fc.forecast(1, [x])[0] == m.peek([t / 50.0], key="a")[0]
        fc.learn_one(y, x)
        m.step([t / 50.0], [y], key="a")
    np.testing.assert_array_equal(fc.model.theta, m.theta)
    f = fc.forecast(3, [{"id": "a", "trend": 1.0}])
    assert len(f) == 3 and 60 < f[0] < 140 and f[1] != f[0]  # in the series' units; recursive


def test_forecaster_learns_like_model_with_target_feedback():
    series = [math.sin(t / 4.0) * 3 + 10 for t in range(30)]
    fc = RNNForecaster(n_hidden=3, lr=0.05, seed=2, standardize=False)
    m = sr.Model(n_inputs=1, n_hidden=3, lr=0.05, clip=1.0, seed=2, standardize=False, target_lags=1)
    for y in series:
        fc.learn_one(y)
        m.step([0.0], [y])  # no exogenous feature: one input that reads 0
    np.testing.assert_array_equal(fc.model.theta, m.theta)
    np.testing.assert_array_equal(fc.model.hidden_state(), m.hidden_state())
    # one step ahead equals Model.peek: the last observation is in the lag buffer
    assert fc.forecast(1)[0] == m.peek([0.0])[0]
    with pytest.raises(ValueError, match="target_lags >= 1"):
        RNNForecaster(target_lags=0)


def test_forecaster_keys_are_bounded():
    fc = RNNForecaster(n_hidden=2, n_inputs=1, key="id", max_keys=2)
    for t, k in enumerate(["a", "b", "c", "a"]):
        fc.learn_one(float(t), {"id": k, "v": 1.0})
    assert fc.model.keys == ["c", "a"]  # the last observations live (and go) with the state
    assert len(fc.forecast(3, [{"id": "a", "v": 1.0}])) == 3


def test_regressor_and_classifier_see_the_previous_target():
    """predict_one after learn_one(x, y) uses y: the same x after different targets predicts differently,
    exactly as Model.peek with the target fed back."""
    for make, model_kw, ys in [
        (lambda: RNNRegressor(n_inputs=2, key="k", **PARAMS), dict(task="regression", baseline="last"), [1.0, -3.0]),
        (lambda: RNNClassifier(n_inputs=2, key="k", target_lags=1, **PARAMS), dict(task="binary"), [True, False]),
        (
            lambda: RNNClassifier(n_inputs=2, n_classes=3, key="k", target_lags=1, **PARAMS),
            dict(task="classification", n_outputs=3),
            ["x", "y"],
        ),
    ]:
        preds = []
        for y in ys:
            est = make()
            m = sr.Model(n_inputs=2, target_lags=1, **model_kw, **PARAMS)
            rows = [
                ({"k": "a", "u": 0.5, "v": -0.1}, ys[0]),
                ({"k": "a", "u": 0.4, "v": 0.0}, ys[1]),
                ({"k": "a", "u": -0.2, "v": 0.3}, y),
            ]
            for x, target in rows:
                est.learn_one(x, target)
                label = float(target) if model_kw["task"] != "classification" else float(ys.index(target))
                m.step([x["u"], x["v"]], [label], key="a")
            x = {"k": "a", "u": 0.1, "v": 0.1}
            if model_kw["task"] == "regression":
                p = est.predict_one(x)
                assert p == m.peek([0.1, 0.1], key="a")[0]
            else:
                proba = est.predict_proba_one(x)
                p = proba[True] if model_kw["task"] == "binary" else proba[ys[0]]
                want = m.peek([0.1, 0.1], key="a")
                assert p == pytest.approx(
                    want[0] if model_kw["task"] == "binary" else want[0] / want[:2].sum(), rel=1e-12
                )
            preds.append(p)
        assert preds[0] != preds[1]


def test_a_missing_river_names_the_extra(monkeypatch):
    import importlib
    import sys

    from streamrnn.extras import MissingExtra

    monkeypatch.setitem(sys.modules, "river", None)  # import river now fails
    monkeypatch.delitem(sys.modules, "streamrnn.river", raising=False)
    with pytest.raises(
        MissingExtra, match=r"streamrnn\.river needs the 'river' package: pip install 'streamrnn\[river\]'"
    ):
        importlib.import_module("streamrnn.river")
