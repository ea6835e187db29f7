"""``[daemon] processing_guarantee``: the default stays at-least-once; exactly-once is refused, with
the key named and exit status 2, wherever it cannot hold (issue 18). No broker needed."""

from __future__ import annotations

import pytest

from streamrnn.service import ConfigError, dump_config, validate_config

KAFKA = {"bootstrap": "127.0.0.1:1", "topic": "t"}


def eos(**over):
    cfg = {
        "source": {"type": "kafka", **KAFKA, "topic": "in", "group": "g"},
        "sink": {"type": "kafka", **KAFKA, "topic": "out"},
        "dead_letter": {"type": "kafka", **KAFKA, "topic": "dead"},
        "schema": {"features": ["a"], "target": "y"},
        "checkpoint": {"every_records": 100, "every_seconds": 5},
        "daemon": {"processing_guarantee": "exactly-once"},
    }
    for section, table in over.items():
        if table is None:
            cfg.pop(section, None)
        else:
            cfg[section] = {**cfg.get(section, {}), **table}
    return cfg


def test_the_default_is_at_least_once_and_unchanged():
    cfg = validate_config({"source": {"type": "jsonl", "path": "in.jsonl"}, "schema": {"features": ["a"]}})
    assert "processing_guarantee" not in cfg["daemon"]  # not filled: the normalised config is as before
    assert "topic" not in cfg["checkpoint"] and "transactional_id" not in cfg["daemon"]
    from streamrnn.service.loop import Daemon
    from streamrnn.service.single import SingleDaemon

    assert Daemon.__new__(Daemon, cfg).__class__ is SingleDaemon


def test_exactly_once_fills_its_defaults():
    cfg = validate_config(eos())
    assert cfg["daemon"]["processing_guarantee"] == "exactly-once"
    assert cfg["daemon"]["transactional_id"] == "streamrnn-g-in"
    assert cfg["daemon"]["transaction_timeout_seconds"] == 60.0
    assert cfg["checkpoint"]["topic"] == "g-checkpoints" and cfg["checkpoint"]["chunk_bytes"] == 512 * 1024
    from streamrnn.service.exactly_once import ExactlyOnceDaemon
    from streamrnn.service.loop import Daemon

    assert Daemon.__new__(Daemon, cfg).__class__ is ExactlyOnceDaemon


def test_exactly_once_in_a_group_is_a_member_with_its_own_transactional_id():
    cfg = validate_config(eos(group={"name": "g", "store": "kafka", "member": "m1"}))
    assert cfg["checkpoint"]["topic"] == "g-checkpoints" == cfg["group"]["store_topic"]
    from streamrnn.service.exactly_once_group import ExactlyOnceGroupDaemon
    from streamrnn.service.loop import Daemon

    assert Daemon.__new__(Daemon, cfg).__class__ is ExactlyOnceGroupDaemon
    cfg = validate_config(eos(group={"name": "g", "store": "kafka"}, source={"instance_id": "i1"}))
    assert cfg["source"]["instance_id"] == "i1"  # the member's name, as in any group


@pytest.mark.parametrize(
    "over, message",
    [
        (
            {"daemon": {"processing_guarantee": "once"}},
            "daemon.processing_guarantee: expected one of at-least-once, exactly-once",
        ),
        (
            {"source": {"type": "jsonl", "path": "in.jsonl"}},
            'daemon.processing_guarantee: "exactly-once" needs source.type = "kafka"',
        ),
        (
            {"sink": {"type": "jsonl", "path": "out.jsonl"}},
            'daemon.processing_guarantee: "exactly-once" needs sink.type = "kafka"',
        ),
        ({"sink": None}, 'daemon.processing_guarantee: "exactly-once" needs sink.type = "kafka"'),
        (
            {"dead_letter": {"type": "csv", "path": "d.csv"}},
            'daemon.processing_guarantee: "exactly-once" needs dead_letter.type = "kafka" or "none"',
        ),
        (
            {"group": {"name": "g", "member": "m"}},
            'group.store: daemon.processing_guarantee: "exactly-once" writes the per-partition checkpoints',
        ),
        (
            {"group": {"name": "g", "store": "kafka", "member": "m", "mode": "shared"}},
            'group.mode: daemon.processing_guarantee: "exactly-once" needs "independent"',
        ),
        (
            {"group": {"name": "g", "store": "kafka"}},
            'group.member: daemon.processing_guarantee: "exactly-once" needs a member name stable across restarts',
        ),
        (
            {"checkpoint": {"path": "x.ckpt"}},
            "checkpoint.path: with exactly-once the checkpoint is written in the Kafka transaction",
        ),
        ({"checkpoint": {"every_seconds": 0}}, "checkpoint.every_seconds: with exactly-once"),
        ({"checkpoint": {"every_seconds": 90}}, "checkpoint.every_seconds: with exactly-once"),
        (
            {"daemon": {"transaction_timeout_seconds": 0.5}},
            "daemon.transaction_timeout_seconds: expected a number from 1 to 900",
        ),
        ({"checkpoint": {"chunk_bytes": 10}}, "checkpoint.chunk_bytes: expected an integer from 1024"),
        ({"daemon": {"transactional_id": ""}}, "daemon.transactional_id: expected a non-empty string"),
    ],
)
def test_exactly_once_refusals_name_the_key(over, message):
    with pytest.raises(ConfigError) as err:
        validate_config(eos(**over))
    assert str(err.value).startswith(message.split(":")[0] + ":") and message in str(err.value)


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("daemon", "transactional_id", "x"),
        ("daemon", "transaction_timeout_seconds", 30),
        ("checkpoint", "topic", "ck"),
        ("checkpoint", "chunk_bytes", 4096),
    ],
)
def test_exactly_once_keys_are_refused_at_least_once(section, key, value):
    cfg = eos(daemon={"processing_guarantee": "at-least-once"})
    cfg[section][key] = value
    with pytest.raises(ConfigError, match=f'^{section}.{key}: only with daemon.processing_guarantee = "exactly-once"'):
        validate_config(cfg)


def test_the_cli_refuses_with_status_2_and_names_the_key(tmp_path, capsys):
    from streamrnn.cli import main

    path = tmp_path / "c.toml"
    path.write_text(dump_config(eos(sink={"type": "jsonl", "path": str(tmp_path / "o.jsonl")})))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert 'streamrnn: error: daemon.processing_guarantee: "exactly-once" needs sink.type = "kafka"' in err
