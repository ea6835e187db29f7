"""Per-partition model state and the checkpoint directory store, without a broker."""

from __future__ import annotations

import numpy as np
import pytest

import streamrnn
from streamrnn.checkpoint import CheckpointError
from streamrnn.connectors.checkpoint_store import DirectoryStore
from streamrnn.partitioned import PartitionedModel
from streamrnn.service import ConfigError, validate_config

CONFIG = dict(cell="gru", n_inputs=2, n_hidden=3, lr=0.02, seed=4)


def _stream(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    Y = np.sin(X[:, :1]) + 0.3 * X[:, 1:]
    keys = [f"k{int(i)}" for i in rng.integers(5, size=n)]
    streams = [f"t:{int(i)}" for i in rng.integers(3, size=n)]
    return X, Y, keys, streams


def _reference(X, Y, keys, streams, stream):
    idx = [i for i, s in enumerate(streams) if s == stream]
    m = streamrnn.Model(**CONFIG)
    preds, losses = m.step_many(X[idx], Y[idx], [keys[i] for i in idx], return_loss=True)
    return m, idx, preds, losses


def test_independent_partitions_equal_one_model_per_partition_bit_for_bit():
    X, Y, keys, streams = _stream()
    pm = PartitionedModel(CONFIG)
    preds, losses = np.empty((len(X), 1)), np.empty(len(X))
    for a in range(0, len(X), 37):  # batches that cut across partitions
        p, l = pm.step_many(X[a : a + 37], Y[a : a + 37], keys[a : a + 37], streams[a : a + 37])
        preds[a : a + 37], losses[a : a + 37] = p, l
    for stream in ("t:0", "t:1", "t:2"):
        ref, idx, rp, rl = _reference(X, Y, keys, streams, stream)
        assert np.array_equal(pm.model(stream).theta, ref.theta)
        assert np.array_equal(pm.model(stream).opt_state, ref.opt_state)
        assert pm.model(stream).keys == ref.keys
        assert np.array_equal(preds[idx], rp) and np.array_equal(losses[idx], rl)


def test_save_release_load_continues_bit_identically():
    X, Y, keys, streams = _stream(seed=1)
    a, b = PartitionedModel(CONFIG), PartitionedModel(CONFIG)
    a.step_many(X, Y, keys, streams)
    b.step_many(X[:150], Y[:150], keys[:150], streams[:150])
    for stream in b.streams:  # move every partition to a new holder
        arrays, meta = b.state_arrays(stream)
        arrays = {k: v.copy() for k, v in arrays.items()}
        b.release(stream)
        c = PartitionedModel(CONFIG)
        c.load(stream, arrays, meta)
        b._parts[stream] = c._parts[stream]
    b.step_many(X[150:], Y[150:], keys[150:], streams[150:])
    for stream in a.streams:
        sa, _ = a.state_arrays(stream)
        sb, _ = b.state_arrays(stream)
        for name in sa:
            assert np.array_equal(sa[name], sb[name]), (stream, name)


def test_shared_mode_partitions_use_the_members_parameters_and_keep_their_own_keys():
    X, Y, keys, streams = _stream(seed=2)
    # raw inputs: the standardisation statistics are per partition's Model, the reference's global
    config = dict(CONFIG, standardize=False)
    pm = PartitionedModel(config, mode="shared")
    pm.step_many(X, Y, keys, streams)
    # one parameter vector updated by every record in arrival order, each key's state held per
    # partition: one model over all records with the key made unique per partition
    ref = streamrnn.Model(**config)
    ref.step_many(X, Y, [f"{s}/{k}" for s, k in zip(streams, keys)])
    assert np.array_equal(pm.parameters, ref.theta)
    for stream in pm.streams:
        assert pm.model(stream).theta is pm.parameters
        assert sorted(pm.model(stream).keys) == sorted({keys[i] for i in range(len(X)) if streams[i] == stream})
    # loading keeps the member's parameters unless told to adopt the saved ones
    arrays, meta = pm.state_arrays("t:0")
    arrays = {k: v.copy() for k, v in arrays.items()}
    other = PartitionedModel(config, mode="shared")
    before = other.parameters.copy()
    other.load("t:0", arrays, meta)
    assert np.array_equal(other.parameters, before) and other.model("t:0").keys == pm.model("t:0").keys
    other.load("t:0", arrays, meta, adopt_parameters=True)
    assert np.array_equal(other.parameters, pm.parameters)
    assert other.model("t:0").theta is other.parameters
    with pytest.raises(ValueError, match="NaN or inf"):
        other.set_parameters(np.full_like(before, np.nan))


def test_a_refused_row_applies_nothing_on_any_partition():
    pm = PartitionedModel(CONFIG)
    pm.step_many(np.ones((2, 2)), np.ones((2, 1)), ["a", "b"], ["t:0", "t:1"])
    before = {s: pm.model(s).theta.copy() for s in pm.streams}
    X = np.ones((3, 2))
    X[2, 0] = np.inf
    with pytest.raises(ValueError):
        pm.step_many(X, np.ones((3, 1)), ["a", "b", "a"], ["t:0", "t:1", "t:0"])
    for s, theta in before.items():
        assert np.array_equal(pm.model(s).theta, theta)


def test_load_refuses_another_configuration():
    pm = PartitionedModel(CONFIG)
    pm.step_many(np.ones((1, 2)), np.ones((1, 1)), ["a"], ["t:0"])
    arrays, meta = pm.state_arrays("t:0")
    other = PartitionedModel({**CONFIG, "n_hidden": 4})
    with pytest.raises(CheckpointError, match="another configuration"):
        other.load("t:0", arrays, meta, source="x")
    assert other.streams == []


def test_directory_store_generations_and_refusal_to_overwrite_another_writer(tmp_path):
    store = DirectoryStore(tmp_path / "store")
    pm = PartitionedModel(CONFIG)
    pm.step_many(np.ones((3, 2)), np.ones((3, 1)), ["a", "b", "a"], ["t:0", "t:0", "t:1"])
    arrays, meta = pm.state_arrays("t:0")
    assert store.newest_token("t:0") is None
    t1 = store.save("t:0", arrays, {**meta, "positions": {"t:0": 5}})
    t2 = store.save("t:0", arrays, {**meta, "positions": {"t:0": 9}}, expect=t1)
    assert t1 and t2 and t1 != t2 and store.newest_token("t:0") == t2
    assert store.newest_meta("t:0")["positions"] == {"t:0": 9}
    assert [w for w, _ in store.generations("t:0")] == [store.file("t:0"), store.file("t:0") + ".prev"]
    # a member still holding the checkpoint of t1 (it lost the partition without noticing) is refused
    assert store.save("t:0", arrays, {**meta, "positions": {"t:0": 12}}, expect=t1) is None
    assert store.save("t:0", arrays, {**meta, "positions": {"t:0": 12}}) is None
    assert store.newest_meta("t:0")["positions"] == {"t:0": 9}
    _, load = store.generations("t:0")[1]
    assert load(None)[1]["positions"] == {"t:0": 5}
    # a newest file with an unreadable header has no token: whoever resumed past it may replace it
    with open(store.file("t:0"), "r+b") as fh:
        fh.write(b"garbage!")
    assert store.newest_token("t:0") is None
    assert store.save("t:0", arrays, {**meta, "positions": {"t:0": 5}}, expect=None)
    assert store.save("t:1", arrays, {**meta, "positions": {"t:1": 1}})
    assert store.streams() == ["t:0", "t:1"]
    assert store.generations("t:2") == [] and store.newest_meta("t:2") is None


def test_group_config_is_checked_with_clear_messages(tmp_path):
    base = {
        "source": {"type": "kafka", "bootstrap": "h:1", "topic": "t"},
        "schema": {"features": ["a"], "target": "y"},
        "model": {"n_hidden": 2},
        "checkpoint": {"path": str(tmp_path)},
    }
    cfg = validate_config({**base, "group": {"name": "g"}})
    assert cfg["source"]["group"] == "g" and cfg["group"]["mode"] == "independent"
    assert cfg["group"]["store_topic"] == "g-checkpoints" and cfg["source"]["order"] == "arrival"
    assert validate_config(base)["group"] is None
    for group, extra, message in (
        ({"mode": "both"}, {}, "group.mode: expected one of independent, shared"),
        ({"store": "s3"}, {}, "group.store"),
        ({"publish_every": 0}, {}, "group.publish_every"),
        ({"stale_seconds": 0}, {}, "group.stale_seconds"),
        ({"bogus": 1}, {}, "group.bogus: unknown key"),
        ({"name": "a"}, {"source": {**base["source"], "group": "b"}}, "differs from source.group"),
        ({}, {"checkpoint": {}}, "checkpoint.path: missing"),
        ({}, {"source": {"type": "jsonl", "path": "x"}}, "scale-out needs source.type"),
    ):
        with pytest.raises(ConfigError, match=message):
            validate_config({**base, **extra, "group": group})


def test_forecast_mode_keeps_pending_inputs_per_partition():
    from streamrnn.forecast import NextRecordForecaster

    X, Y, keys, streams = _stream(seed=3)
    pm = PartitionedModel(CONFIG, forecast=True)
    preds, losses = pm.step_many(X, Y, keys, streams)
    for stream in pm.streams:
        idx = [i for i, s in enumerate(streams) if s == stream]
        ref = NextRecordForecaster(streamrnn.Model(**CONFIG))
        rp, rl = ref.process(X[idx], Y[idx], [keys[i] for i in idx])
        assert np.array_equal(preds[idx], rp) and np.array_equal(losses[idx], rl, equal_nan=True)
        arrays, meta = pm.state_arrays(stream)
        assert np.array_equal(arrays["forecast.pending_inputs"], ref.state_arrays()[0]["forecast.pending_inputs"])


def test_run_group_option_joins_the_named_group(tmp_path):
    from streamrnn.service import load_config

    path = tmp_path / "c.toml"
    path.write_text(
        '[source]\ntype = "kafka"\nbootstrap = "h:1"\ntopic = "t"\ngroup = "old"\n'
        '[schema]\nfeatures = ["a"]\n[checkpoint]\npath = "store"\n'
    )
    cfg = load_config(path, group="sensors")
    assert cfg["group"]["name"] == cfg["source"]["group"] == "sensors"
    assert cfg["checkpoint"]["path"] == str(tmp_path / "store")
    assert load_config(path)["group"] is None
