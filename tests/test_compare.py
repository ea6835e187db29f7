"""streamrnn.compare: learners side by side on one stream, numbers equal to running them directly."""

import json

import numpy as np
import pytest

import streamrnn as sr
from streamrnn import compare
from streamrnn.datasets import binary_add_task
from streamrnn.window_ff import WindowFF


def test_parse_learner():
    assert compare.parse_learner("rtrl") == ("rtrl", {})
    assert compare.parse_learner("snap1") == ("snap1", {})
    assert compare.parse_learner("uoro") == ("uoro", {})
    assert compare.parse_learner("tbptt:16") == ("tbptt", {"truncation": 16})
    assert compare.parse_learner("tbptt:16:4") == ("tbptt", {"truncation": 16, "stride": 4})
    assert compare.parse_learner("window:9") == ("window", {"window": 9})
    assert compare.parse_learner("rtrl@2") == ("rtrl", {"n_layers": 2})
    assert compare.parse_learner("tbptt:16:4@3") == ("tbptt", {"truncation": 16, "stride": 4, "n_layers": 3})
    for bad in ("tbptt", "window", "magic", "rtrl:3", "window:9@2", "bidir@2", "rtrl@0", "rtrl@x", "rtrl@"):
        with pytest.raises(ValueError, match="unknown learner"):
            compare.parse_learner(bad)


def test_a_stacked_row_is_the_stacked_model_run_directly():
    X, Y = binary_add_task(600, seed=1)
    result = compare.run(
        X, Y, learners=["rtrl@2"], n_hidden=3, task="binary", seeds=(0,), n_chunks=5, progress=False, naive=False
    )
    (row,) = result.summary()
    m = sr.Model(n_inputs=1, n_hidden=3, task="binary", n_layers=2, seed=0)
    p = m.step_many(X, Y)
    assert row["prequential"] == compare.score("logloss", "binary", p, Y[:, None], np.ones(len(Y), bool))
    assert row["state_bytes_per_key"] == m.state_bytes_per_key


def test_scores():
    Y = np.array([[1.0], [2.0], [3.0], [np.nan]])
    P = np.array([[1.5], [2.0], [2.0], [9.0]])
    has = ~np.isnan(Y[:, 0])
    assert compare.score("mse", "regression", P, Y, has) == pytest.approx((0.25 + 0 + 1) / 3)
    assert compare.score("nmse", "regression", P, Y, has) == pytest.approx((1.25 / 3) / (2 / 3))
    Yb = np.array([[1.0], [0.0]])
    Pb = np.array([[0.8], [0.4]])
    assert compare.score("logloss", "binary", Pb, Yb, np.ones(2, bool)) == pytest.approx(
        -(np.log(0.8) + np.log(0.6)) / 2
    )
    assert compare.score("accuracy", "binary", Pb, Yb, np.ones(2, bool)) == 1.0


def test_run_reports_what_the_learners_do(tmp_path):
    X, Y = binary_add_task(3000, seed=3)
    result = compare.run(
        X,
        Y,
        learners=["rtrl", "tbptt:5:2", "window:4"],
        cell="gru",
        n_hidden=6,
        task="binary",
        lr=3e-3,
        seeds=(0, 1),
        n_chunks=10,
        progress=False,
    )
    rows = {r["learner"]: r for r in result.summary()}
    # The prequential numbers are those of the learners run directly on the stream.
    for spec, make in [
        ("rtrl", lambda s: sr.Model(cell="gru", n_inputs=1, n_hidden=6, task="binary", lr=3e-3, seed=s)),
        (
            "tbptt:5:2",
            lambda s: sr.Model(
                cell="gru",
                n_inputs=1,
                n_hidden=6,
                task="binary",
                lr=3e-3,
                seed=s,
                learner="tbptt",
                truncation=5,
                stride=2,
            ),
        ),
        ("window:4", lambda s: WindowFF(window=4, n_hidden=6, task="binary", lr=3e-3, seed=s)),
    ]:
        direct = []
        for seed in (0, 1):
            losses = make(seed).step_many(X, Y, return_loss=True)[1]
            direct.append(losses.mean())
        assert rows[spec]["prequential"] == pytest.approx(np.mean(direct), rel=1e-12)
        assert rows[spec]["prequential_std"] == pytest.approx(np.std(direct), rel=1e-9, abs=1e-15)
        # Learner state does not grow with the stream.
        assert (
            rows[spec]["state_bytes_at_10pct"] == rows[spec]["state_bytes_at_end"] == rows[spec]["state_bytes_per_key"]
        )
        assert rows[spec]["steps_per_s"] > 0 and rows[spec]["peak_rss_bytes"] > 0
    # RTRL: S (1 + P) floats, P = 3·6·(1 + 6 + 2); TBPTT: state + 5 steps of (x, s, cache, y) + flags + count.
    assert rows["rtrl"]["state_bytes_per_key"] == 8 * 6 * (1 + 162)
    assert rows["tbptt:5:2"]["state_bytes_per_key"] == 8 * (6 + 5 * (1 + 6 + 36 + 1)) + 5 + 8
    assert rows["window:4"]["state_bytes_per_key"] == 8 * 4
    result.write(tmp_path)
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert [r["learner"] for r in saved["summary"]] == ["rtrl", "tbptt:5:2", "window:4", "persistence", "running mean"]
    assert (tmp_path / "comparison.csv").read_text().splitlines()[0].startswith("learner,seeds,prequential")
    assert (tmp_path / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tbptt:5:2" in result.table()


def test_gradient_alignment_measures_the_approximation_without_changing_training():
    from streamrnn.datasets import mackey_glass, one_step_ahead

    X, Y = one_step_ahead(mackey_glass(401))
    cos = {}
    for learner in ("rtrl", "snap1", "uoro"):
        m = sr.Model(cell="rnn", n_inputs=1, n_hidden=8, learner=learner, lr=1e-3, seed=2, standardize=False)
        cos[learner] = compare.gradient_alignment(m, X, Y)
        reference = sr.Model(cell="rnn", n_inputs=1, n_hidden=8, learner=learner, lr=1e-3, seed=2, standardize=False)
        reference.step_many(X, Y)
        assert np.array_equal(m.theta, reference.theta)  # the analysis run is the ordinary run
    assert len(cos["rtrl"]) == 400
    np.testing.assert_allclose(cos["rtrl"], 1.0, atol=1e-12)
    assert 0.3 < cos["snap1"].mean() < 0.999
    assert cos["uoro"].mean() < cos["snap1"].mean()
    with pytest.raises(ValueError, match="clip=None"):
        compare.gradient_alignment(sr.Model(clip=1.0), X, Y)
    with pytest.raises(ValueError, match="standardize=False"):
        compare.gradient_alignment(sr.Model(), X, Y)


def test_offline_bidirectional_learner_is_trained_on_the_head_and_scored_on_the_tail():
    from streamrnn.datasets import mackey_glass, one_step_ahead

    X, Y = one_step_ahead(mackey_glass(1201))
    result = compare.run(
        X, Y, learners=["bidir:40"], cell="gru", n_hidden=6, task="regression", lr=1e-2, bidir_epochs=3, progress=False
    )
    row, persistence, mean = result.summary()
    assert (row["learner"], persistence["learner"], mean["learner"]) == ("bidir:40", "persistence", "running mean")
    fitted = sr.bptt.fit(
        np.ascontiguousarray(X[:960].reshape(24, 40, 1).transpose(1, 0, 2)),
        np.ascontiguousarray(Y[:960].reshape(24, 40, 1).transpose(1, 0, 2)),
        cell="gru",
        n_hidden=6,
        bidirectional=True,
        merge="concat",
        task="regression",
        lr=1e-2,
        epochs=3,
        seed=0,
    )
    p = fitted.predict(np.ascontiguousarray(X[960:1200].reshape(6, 40, 1).transpose(1, 0, 2)))
    p = p.transpose(1, 0, 2).reshape(-1, 1)
    y = Y[960:1200, None]
    assert row["tail"] == pytest.approx(np.mean((p - y) ** 2) / np.mean((y - y.mean()) ** 2), rel=1e-12)
    assert row["state_bytes_per_key"] is None and "bidir:40" in result.table()


def test_generated_streams_round_trip_through_a_recorded_stream_file(tmp_path):
    from streamrnn.datasets import adding_problem, read_stream, write_stream

    X, Y, keys = adding_problem(5, length=8, seed=1)
    path = tmp_path / "adding.jsonl"
    names = write_stream(path, X, Y, keys)
    assert names == ["x0", "x1"]
    X2, Y2, keys2, skipped = read_stream(path, names, "y")
    assert skipped == 0 and keys2 == keys
    assert np.array_equal(X2, X) and np.array_equal(np.isnan(Y2), np.isnan(Y))
    assert np.array_equal(Y2[~np.isnan(Y2)], Y[~np.isnan(Y)])
    with open(path, "a") as fh:
        fh.write('{"ts": 1, "key": 1, "value": {"x0": "bad", "x1": 0}}\nnot json\n')
    assert read_stream(path, names, "y")[3] == 2


def _naive_reference(Y, keys):
    """Persistence and running mean written out plainly: per key the last target / the mean of its
    targets so far; a key's first record gets the mean of all targets so far (0 before any)."""
    last, hist, seen = {}, {}, []
    pers, mean = [], []
    for y, k in zip(Y[:, 0].tolist(), keys):
        g = sum(seen) / len(seen) if seen else 0.0
        pers.append(last.get(k, g))
        mean.append(sum(hist[k]) / len(hist[k]) if hist.get(k) else g)
        if y == y:
            last[k] = y
            hist.setdefault(k, []).append(y)
            seen.append(y)
    return np.array(pers)[:, None], np.array(mean)[:, None]


def test_naive_rows_are_the_persistence_and_running_mean_forecasts(tmp_path):
    rng = np.random.default_rng(4)
    n = 400
    keys = [f"k{i % 3}" for i in range(n)]
    level = np.cumsum(rng.normal(size=n))
    X = rng.normal(size=(n, 2))
    Y = (level + 0.1 * rng.normal(size=n))[:, None]
    Y[::7] = np.nan  # rows without a target hold the key's values
    result = compare.run(
        X,
        Y,
        keys=keys,
        learners=["rtrl"],
        n_hidden=3,
        seeds=(0,),
        n_chunks=4,
        progress=False,
        metric="mse",
        target_lags=1,
        standardize=False,
    )
    rows = {r["learner"]: r for r in result.summary()}
    has = ~np.isnan(Y[:, 0])
    tail = int(0.8 * n)
    for name, P in zip(("persistence", "running mean"), _naive_reference(Y, keys)):
        err = (P[has] - Y[has]) ** 2
        assert rows[name]["prequential"] == pytest.approx(err.mean(), rel=1e-12)
        err_tail = (P[tail:][has[tail:]] - Y[tail:][has[tail:]]) ** 2
        assert rows[name]["tail"] == pytest.approx(err_tail.mean(), rel=1e-12)
        assert rows[name]["naive"] and rows[name]["steps_per_s"] is None
    # the Model learner got target_lags and standardize
    direct = sr.Model(cell="gru", n_inputs=2, n_hidden=3, seed=0, target_lags=1, standardize=False)
    preds = direct.step_many(X, Y, keys)
    assert rows["rtrl"]["prequential"] == pytest.approx(np.mean((preds[has] - Y[has]) ** 2), rel=1e-12)
    assert result.setup["target_lags"] == 1 and result.setup["standardize"] is False
    table = result.table()
    assert "persistence" in table and "running mean" in table


def test_cli_options_reach_the_model(tmp_path, capsys):
    assert (
        compare.main(
            [
                "--dataset",
                "narma10",
                "--steps",
                "300",
                "--learners",
                "rtrl",
                "--hidden",
                "3",
                "--target-lags",
                "2",
                "--no-standardize",
                "--no-progress",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("{"))
    out = json.loads(line)
    assert out["target_lags"] == 2 and out["standardize"] is False and out["baseline"] is None
    assert [r["learner"] for r in out["summary"]] == ["rtrl", "persistence", "running mean"]
