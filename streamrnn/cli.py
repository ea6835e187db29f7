"""Command line: ``streamrnn run CONFIG.toml [--group NAME] | status CONFIG.toml | demo | replay FILE |
record | compare``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def _load(path, group=None):
    from .service import load_config

    return load_config(path, group=group)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _run(cfg, args):
    """Run the daemon of a validated config; 0 once its final checkpoint is durable.

    A stop request (SIGTERM, SIGINT) is honoured from the moment the daemon is being built (one
    arriving before it exists stops it at once, after its first checkpoint), and ignored once the
    run is over: a signal storm that outlasts the final checkpoint cannot turn the exit status 0
    into -15 (the interpreter restores the default handlers while it shuts down)."""
    from .service import Daemon

    if getattr(args, "max_records", None):
        cfg["daemon"]["max_records"] = args.max_records
    if getattr(args, "no_progress", False):
        cfg["daemon"]["progress"] = False
    if getattr(args, "metrics_port", None) is not None:
        cfg["daemon"]["metrics_port"] = args.metrics_port
    early = []
    # main() restores these (or, for the command line itself, ignores the signals) once this returns
    args.signal_handlers = {
        sig: signal.signal(sig, lambda signum, frame: early.append(signum)) for sig in _STOP_SIGNALS
    }
    d = Daemon(cfg)
    d.install_signal_handlers()
    if early:
        d.stop()
    d.run()
    print(d.summary(), flush=True)
    return 0


def cmd_run(args):
    """``streamrnn run CONFIG``: run the daemon the config describes (exit status of :func:`_run`)."""
    return _run(_load(args.config, group=args.group), args)


def cmd_status(args):
    """Members, partitions, keys, lag and checkpoint age of a consumer group."""
    import json

    from .scaleout import format_status, group_status
    from .service import ConfigError

    cfg = _load(args.config, group=args.group)
    if not cfg.get("group"):
        raise ConfigError("group: missing (give the config a [group] section or --group NAME)")
    from streamrnn.connectors.kafka.errors import retry_retriable

    # right after a broker starts its group coordinator is not there yet (retriable errors)
    status = retry_retriable(
        lambda: group_status(cfg), cfg["source"]["bootstrap"], f"reading the status of group {cfg['group']['name']!r}"
    )
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def cmd_demo(args):
    """``streamrnn demo``: the bundled example config on the bundled recorded stream, with outputs
    and checkpoints in a directory of the caller's choice (no Kafka needed).
    """
    import tomllib

    from .service import validate_config

    with open(os.path.join(DATA_DIR, "example.toml"), "rb") as fh:
        raw = tomllib.load(fh)
    out = os.path.abspath(args.out_dir)
    os.makedirs(out, exist_ok=True)
    raw["source"]["path"] = os.path.join(DATA_DIR, raw["source"]["path"])
    for sec in ("sink", "dead_letter", "checkpoint"):
        raw[sec]["path"] = os.path.join(out, os.path.basename(raw[sec]["path"]))
    if not args.resume:
        for p in (
            raw["sink"]["path"],
            raw["dead_letter"]["path"],
            raw["checkpoint"]["path"],
            raw["checkpoint"]["path"] + ".prev",
        ):
            if os.path.exists(p):
                os.unlink(p)
    return _run(validate_config(raw), args)


def _check_seconds(option, value, key):
    """A command-line duration checked as the config's ``key`` is (finite, in its range)."""
    from .service import ConfigError

    if not key.valid(value):
        raise ConfigError(f"{option}: expected {key.expected()}, got {value!r}")


def cmd_replay(args):
    """Feed a recorded stream into the model (with a config) or into a Kafka topic."""
    from .service.config import SOURCE

    _check_seconds("--speed", args.speed, SOURCE.key("speed"))
    if args.to_topic:
        from streamrnn.connectors.kafka import KafkaSink
        from streamrnn.connectors.replay import ReplaySource

        src = ReplaySource(args.file, speed=args.speed)
        sink = KafkaSink(args.bootstrap, args.to_topic, raw=True)
        n = 0
        while True:
            recs = src.poll(5000)
            if not recs:
                break
            sink.write_raw([(r.key, r.value) for r in recs])
            n += len(recs)
        sink.flush()
        sink.close()
        src.close()
        print(f"replayed {n} records from {args.file} into topic {args.to_topic}")
        return 0
    if not args.config:
        print("streamrnn replay: give --config CONFIG.toml (schema and model) or --to-topic", file=sys.stderr)
        return 2
    cfg = _load(args.config)
    cfg["source"] = {"type": "replay", "path": os.path.abspath(args.file), "speed": args.speed}
    return _run(cfg, args)


def cmd_record(args):
    """Copy a Kafka topic (or a JSONL/CSV file) into a recorded stream file.

    A value that is not a JSON object is recorded as its text (a replay gives the daemon the same
    verdict as the original); one the source could not read (a line longer than 1 MiB, a malformed
    CSV row or one of the wrong width, invalid UTF-8) is skipped with a warning naming its position
    and reason, and counted."""
    from streamrnn.connectors.base import Unreadable
    from streamrnn.connectors.codec import JSONDecodeError, dumps, loads

    from .service.config import DAY, Key

    _check_seconds("--idle-timeout", args.idle_timeout, Key("idle_timeout", "number", "", minimum=0, maximum=DAY))
    if args.topic:
        from streamrnn.connectors.kafka import KafkaSource

        src = KafkaSource(args.bootstrap, args.topic, group=None)
    else:
        from streamrnn.connectors.file import CsvSource, JsonLinesSource

        src = (CsvSource if args.file.endswith(".csv") else JsonLinesSource)(args.file)
    n = skipped = 0
    idle_since = time.monotonic()
    try:
        with open(args.out, "w", encoding="utf-8") as fh:
            while not args.max_records or n < args.max_records:
                limit = 5000 if not args.max_records else min(5000, args.max_records - n)
                recs = src.poll(limit, 0.5)
                if not recs:
                    if getattr(src, "exhausted", False) or time.monotonic() - idle_since > args.idle_timeout:
                        break
                    continue
                idle_since = time.monotonic()
                for r in recs:
                    value = r.value
                    if type(value) is Unreadable:
                        print(
                            f"streamrnn record: skipped the record at {list(r.position)}: {value.reason}",
                            file=sys.stderr,
                        )
                        skipped += 1
                        continue
                    if isinstance(value, (bytes, bytearray)):
                        value = value.decode("utf-8", errors="replace")
                    if isinstance(value, str):
                        try:
                            parsed = loads(value)  # the daemon's parser: what it rejects stays text
                        except JSONDecodeError:
                            parsed = None
                        if isinstance(parsed, dict):  # a replayed string is parsed again: the same verdict
                            value = parsed
                    key = r.key.decode("utf-8", errors="replace") if isinstance(r.key, (bytes, bytearray)) else r.key
                    ts = r.timestamp if r.timestamp is not None else time.time()
                    line = {"ts": ts, "key": key, "value": value, "position": list(r.position)}
                    fh.write(dumps(line).decode() + "\n")
                    n += 1
    finally:
        src.close()
    print(f"recorded {n} records into {args.out}" + (f" ({skipped} unreadable, skipped)" if skipped else ""))
    return 0


def build_parser():
    """The ``streamrnn`` command line: one subcommand per ``cmd_*`` function of this module.

    Returns
    -------
    argparse.ArgumentParser
    """
    from . import __version__

    p = argparse.ArgumentParser(prog="streamrnn", description="Streaming online learning with recurrent cells.")
    p.add_argument("--version", action="version", version=f"streamrnn {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level (periodic progress lines)")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--max-records", type=int, default=0, help="stop after this many records")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
        sp.add_argument("--metrics-port", type=int, default=None, help="Prometheus endpoint port (0 = off)")

    r = sub.add_parser("run", help="run the daemon with a TOML config")
    r.add_argument("config")
    r.add_argument(
        "--group",
        help="join this Kafka consumer group as one of its members (scale-out: the "
        "config's [group] section, created if absent, with this name)",
    )
    common(r)
    r.set_defaults(func=cmd_run)

    st = sub.add_parser("status", help="members, partitions, keys, lag and checkpoint age of a consumer group")
    st.add_argument("config")
    st.add_argument("--group", help="the consumer group (default: the config's group.name)")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(func=cmd_status)

    d = sub.add_parser("demo", help="run the bundled recorded stream; outputs go to --out-dir")
    d.add_argument("--out-dir", default=".", help="where predictions, dead letters and the checkpoint go")
    d.add_argument(
        "--resume", action="store_true", help="continue from the demo checkpoint in --out-dir (default: start afresh)"
    )
    common(d)
    d.set_defaults(func=cmd_demo)

    rp = sub.add_parser("replay", help="replay a recorded stream into the model (--config) or a topic")
    rp.add_argument("file")
    rp.add_argument("--config", help="TOML config whose schema/model/sinks to use (its source is replaced)")
    rp.add_argument("--speed", type=float, default=0.0, help="0 = as fast as possible, else recorded pace x speed")
    rp.add_argument("--to-topic", help="produce the recorded values to this Kafka topic instead")
    rp.add_argument("--bootstrap", default="127.0.0.1:9092")
    common(rp)
    rp.set_defaults(func=cmd_replay)

    rc = sub.add_parser("record", help="copy a Kafka topic or a file into a recorded stream file")
    g = rc.add_mutually_exclusive_group(required=True)
    g.add_argument("--topic")
    g.add_argument("--file")
    rc.add_argument("--bootstrap", default="127.0.0.1:9092")
    rc.add_argument("--out", required=True)
    rc.add_argument("--max-records", type=int, default=0)
    rc.add_argument("--idle-timeout", type=float, default=5.0, help="stop after this long without records")
    rc.set_defaults(func=cmd_record)

    from .compare import build_parser as compare_parser
    from .compare import main as compare_main

    cp = sub.add_parser("compare", help="run several learners on one stream: table, JSON/CSV, plot")
    compare_parser(cp)
    cp.set_defaults(func=lambda args: compare_main(args=args))

    from .diagnose import build_parser as diagnose_parser
    from .diagnose import main as diagnose_main

    dg = sub.add_parser(
        "diagnose", help="how far back each cell remembers: input-sensitivity and gradient-flow curves (CSV, PNG)"
    )
    diagnose_parser(dg)
    dg.set_defaults(func=lambda args: diagnose_main(args=args))
    return p


def main(argv=None):
    """Run the ``streamrnn`` command line.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name (default: ``sys.argv[1:]``), e.g.
        ``["run", "config.toml", "--group", "sensors"]``. ``--version`` prints
        ``streamrnn <version>`` and exits.

    Returns
    -------
    int
        The exit status: 0 on success, 2 when the config, a checkpoint, the source or a sink cannot be
        used (the error is printed to stderr as ``streamrnn: error: ...``).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from streamrnn.connectors.base import SinkError, SourceError

    from .checkpoint import CheckpointError
    from .service import ConfigError

    try:
        return args.func(args)
    except (ConfigError, CheckpointError, SourceError) as exc:
        print(f"streamrnn: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except SinkError as exc:
        print(
            f"streamrnn: error: {exc}; nothing after the last checkpoint was committed: "
            "a restart once the sink can be written writes it again",
            file=sys.stderr,
            flush=True,
        )
        return 2
    finally:
        # The daemon is done (its final checkpoint durable, or it failed): as the command line, no
        # late signal may change the exit status; called from Python (argv given), the caller's
        # handlers come back.
        for sig, previous in getattr(args, "signal_handlers", {}).items():
            signal.signal(sig, signal.SIG_IGN if argv is None else previous)


if __name__ == "__main__":
    sys.exit(main())
