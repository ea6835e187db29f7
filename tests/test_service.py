"""The service package's pieces on their own: runner choice, missing extras, the CLI's --version."""

import logging
import sys

import pytest

import streamrnn
from streamrnn.extras import MissingExtra
from streamrnn.service import Daemon, GroupDaemon, Metrics, SingleDaemon, make_sink, make_source, validate_config


def _config(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"a": 1.0, "y": 0.5}\n')
    return validate_config(
        {
            "source": {"type": "jsonl", "path": str(tmp_path / "in.jsonl")},
            "schema": {"features": ["a"], "target": "y"},
            "model": {"n_hidden": 2},
            "daemon": {"progress": False},
        }
    )


def test_daemon_picks_the_single_runner_without_a_group(tmp_path):
    d = Daemon(_config(tmp_path))
    try:
        assert type(d) is SingleDaemon and isinstance(d, Daemon) and not isinstance(d, GroupDaemon)
    finally:
        d.close()


def test_kafka_connectors_name_the_extra_when_kafka_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "kafka", None)  # import kafka now raises ImportError
    with pytest.raises(MissingExtra, match=r"streamrnn\[kafka\]"):
        make_source({"type": "kafka", "bootstrap": "h:1", "topic": "t"})
    with pytest.raises(MissingExtra, match=r"streamrnn\[kafka\]"):
        make_sink({"type": "kafka", "bootstrap": "h:1", "topic": "t", "process": False})


def test_metrics_without_prometheus_client_name_the_extra_and_stay_off(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    caplog.set_level(logging.WARNING, logger="streamrnn.daemon")
    m = Metrics(9)
    assert not m.enabled
    assert "streamrnn[metrics]" in caplog.text and "metrics off" in caplog.text


def test_version_flag_prints_the_package_version(capsys):
    from streamrnn.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"streamrnn {streamrnn.__version__}\n"
