"""Daemon throughput against a bare kafka-python loop doing the same I/O, on a real broker.

200 000 keyed JSON records are produced to a topic (2 partitions). In the same
run it measures:

- bare: a kafka-python consumer that polls, decodes each record, encodes an
  output record and produces it, keyed by the record's key, to an output topic,
  then flushes: the daemon's I/O with the same JSON codec (streamrnn.connectors.codec,
  orjson) and the same producer settings, and nothing else;
- daemon: ``streamrnn.service.Daemon`` on the same topic (its own consumer
  group) with a GRU of 8 hidden units learning with exact RTRL, writing its
  predictions to another output topic, checkpointing every 50 000 records,
  as configured by default: the Kafka sink in a child process;
- daemon, in-process sink: the same with ``[sink] process = false`` (kafka-python's
  send on the daemon's main thread, as in the bare loop);
- bare loop, decode only: consume and decode, no output; against it, the daemon
  reading the topic and writing its predictions to a JSON Lines file;
- file: the daemon reading the same records from a JSON Lines file and writing
  a JSON Lines file (no broker), with p50/p99 batch latency;
- exactly-once: the Kafka -> Kafka daemon with ``processing_guarantee = "exactly-once"`` at the
  default checkpoint cadence (one transaction per interval), in the same rounds; and, once after
  the rounds, the end-to-end latency a read_committed consumer of its output sees while records are
  produced at a steady rate (produce time -> the committed output becomes visible).

The ratio daemon / bare shows what the model and the bookkeeping cost on top
of the same I/O. Each side's CPU seconds per record are measured too, over all of its processes
(the daemon's sink process included), since the daemon produces from a second process on the
second core while the bare loop runs in one: the fair ratio of cost; Kafka->file / decode-only compares the daemon
with a loop that produces nothing (there the learning step alone, ~15 us a record
for this model, exceeds the loop's whole per-record time). The machine is shared
and noisy, so the five Kafka runs alternate (in rotating order) for --rounds
rounds (each on the whole topic, with a fresh consumer group) and each ratio is
the median of the per-round ratios.
Prints a table and one JSON line. Starts its own broker with scripts/kafka.sh
unless --bootstrap is given.

    python scripts/bench_daemon.py [--records 200000] [--rounds 3] [--order timestamp|arrival]
                                   [--bootstrap HOST:PORT]
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
import streamrnn
from streamrnn.connectors.codec import dumps, loads
from streamrnn.service import Daemon, validate_config

MODEL = dict(cell="gru", n_hidden=8, task="regression", learner="rtrl", optimizer="adam", lr=0.01, clip=1.0, seed=0)


def make_lines(n, n_keys=16, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n).round(6), rng.normal(size=n).round(6)
    return [
        json.dumps(
            {
                "key": f"k{i % n_keys}",
                "a": float(a[i]),
                "b": float(b[i]),
                "y": round(float(np.sin(a[i]) + 0.5 * b[i]), 6),
            },
            separators=(",", ":"),
        )
        for i in range(n)
    ]


def create_topics(bootstrap, names, partitions):
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names])
    admin.close()
    time.sleep(2.0)  # let the partitions get their leaders


def produce(bootstrap, topic, lines):
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024)
    for line in lines:
        p.send(topic, key=json.loads(line)["key"].encode(), value=line.encode())
    p.flush()
    p.close()


def bare_loop(bootstrap, topic, out_topic, n):
    """What any consumer of this topic pays: consume, decode, encode, produce (keyed); with
    ``out_topic`` None, consume and decode only."""
    from kafka import KafkaConsumer, KafkaProducer

    from streamrnn.connectors.kafka import await_offset_validation

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=5000,
    )
    producer = (
        KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5, batch_size=256 * 1024
        )
        if out_topic
        else None
    )
    seen = 0
    start = time.perf_counter()
    while seen < n:
        batch = consumer.poll(timeout_ms=500, max_records=5000)
        if not batch:  # the same kafka-python#3106 workaround as KafkaSource
            await_offset_validation(consumer)
        for tp, recs in batch.items():
            if producer is None:
                for r in recs:
                    loads(r.value)
            else:
                for r in recs:
                    v = loads(r.value)
                    out = {
                        "position": [tp.topic, tp.partition, r.offset],
                        "key": v["key"],
                        "prediction": v["a"],
                        "target": v["y"],
                        "loss": None,
                    }
                    producer.send(out_topic, key=v["key"].encode(), value=dumps(out))
            seen += len(recs)
    if producer is not None:
        producer.flush()
    elapsed = time.perf_counter() - start
    consumer.close()
    if producer is not None:
        producer.close()
    return seen / elapsed


def daemon_config(source, sink, n, ckpt):
    """The benchmarked daemon's raw config (at-least-once, a checkpoint file every 50 000 records)."""
    return {
        "source": source,
        "sink": sink,
        "schema": {"features": ["a", "b"], "target": "y", "key": "key"},
        "model": dict(MODEL),
        "checkpoint": {"path": ckpt, "every_records": 50_000, "every_seconds": 0},
        "daemon": {"batch_size": 5000, "max_records": n, "progress": False, "poll_timeout": 0.5},
    }


def run_daemon(source, sink, n, ckpt, raw=None):
    raw = raw or daemon_config(source, sink, n, ckpt)
    d = Daemon(validate_config(raw))
    start = time.perf_counter()
    stats = d.run()
    elapsed = time.perf_counter() - start
    lat = np.array(d.latencies) * 1e3
    return stats["records"] / elapsed, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), stats


# ---------------------------------------------------------------------------- exactly-once
EOS_RATE = 2000  # records/s produced while the read_committed latency is measured
EOS_SECONDS = 10


def exactly_once_config(raw):
    """``raw`` (the at-least-once daemon's config) in exactly-once mode at the default checkpoint
    cadence: the checkpoint in the transaction (checkpoint.topic), no checkpoint file."""
    raw = {**raw, "daemon": {**raw["daemon"], "processing_guarantee": "exactly-once"}}
    raw["checkpoint"] = {"topic": f"{raw['source']['group']}-ck"}  # every_records, every_seconds: defaults
    return raw


def eos_cadence():
    """The default checkpoint cadence (every_records, every_seconds) the exactly-once rows run at."""
    from streamrnn.service.config import CHECKPOINT

    return CHECKPOINT.key("every_records").default, CHECKPOINT.key("every_seconds").default


def eos_latency(bootstrap, rate=EOS_RATE, seconds=EOS_SECONDS):
    """End-to-end latency a read_committed consumer sees behind the exactly-once daemon: records are
    produced at ``rate`` for ``seconds`` to a fresh topic the daemon (a subprocess, as deployed)
    follows; each latency is the time from the record's send to its output's arrival at the consumer.
    Returns {"p50_ms", "p99_ms", "max_ms", "records"}."""
    import threading

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from streamrnn.service import dump_config

    stem = uuid.uuid4().hex[:8]
    topic, out = f"eos-lat-in-{stem}", f"eos-lat-out-{stem}"
    create_topics(bootstrap, [topic, out], partitions=2)
    source = {"type": "kafka", "bootstrap": bootstrap, "topic": topic, "group": f"eos-lat-{stem}"}
    raw = exactly_once_config(daemon_config(source, {"type": "kafka", "bootstrap": bootstrap, "topic": out}, 0, ""))
    work = tempfile.mkdtemp(prefix="bench-eos-")
    cfg_path = os.path.join(work, "eos.toml")
    with open(cfg_path, "w") as fh:
        fh.write(dump_config(raw))
    seen, stop = {}, threading.Event()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed")
    tps = [TopicPartition(out, p) for p in range(2)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)

    def read():
        while not stop.is_set():
            for recs in consumer.poll(timeout_ms=20).values():
                now = time.time()
                for r in recs:
                    seen[tuple(loads(r.value)["position"][1:])] = now

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamrnn", "run", cfg_path, "--no-progress"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    lines = make_lines(rate * seconds + 200, seed=1)
    try:
        for line in lines[:200]:  # warm-up: the daemon is up and its first transaction committed
            producer.send(topic, key=json.loads(line)["key"].encode(), value=line.encode())
        producer.flush()
        deadline = time.monotonic() + 120
        while len(seen) < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        sent, t0 = [], time.monotonic()
        for i, line in enumerate(lines[200:]):
            time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            sent.append((time.time(), producer.send(topic, key=json.loads(line)["key"].encode(), value=line.encode())))
        producer.flush()
        sends = {}
        for t, f in sent:
            md = f.get(timeout=60)
            sends[(md.partition, md.offset)] = t
        deadline = time.monotonic() + 60
        while not set(sends) <= set(seen) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(60)
        stop.set()
        reader.join(10)
        consumer.close()
        producer.close()
    lat = np.array([seen[k] - t for k, t in sends.items() if k in seen]) * 1e3
    if len(lat) < len(sends):
        raise RuntimeError(f"exactly-once latency: {len(sends) - len(lat)} of {len(sends)} outputs never arrived")
    return {
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "records": len(lat),
        "rate": rate,
    }


PHASE_TIMEOUT_S = 180
PHASES = ("bare", "daemon", "daemon-inproc", "bare-decode", "daemon-file", "daemon-eos")
# (name, numerator, denominator): the daemon against the bare loop doing the same I/O
RATIOS = (
    ("daemon/bare", "daemon", "bare"),
    ("in-process sink/bare", "daemon-inproc", "bare"),
    ("Kafka->file/decode-only", "daemon-file", "bare-decode"),
    ("exactly-once/at-least-once", "daemon-eos", "daemon"),
)


def cpu_seconds():
    """CPU seconds (user + system) of this process and of its children that have been waited for: a
    daemon's sink process counts once the daemon has closed it, a broker is no child."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def phase(args):
    """One measurement in this (fresh) process; prints one JSON line (rate, and CPU microseconds per
    record over all of the side's processes)."""
    if args.phase.startswith("bare"):
        out = args.out_topic if args.phase == "bare" else None
        c0 = cpu_seconds()
        rate = bare_loop(args.bootstrap, args.topic, out, args.records)
        print(json.dumps({"rate": rate, "cpu_us": (cpu_seconds() - c0) / args.records * 1e6}))
        return
    streamrnn.Model(n_inputs=2, **MODEL).step_many(np.zeros((2, 2)), np.zeros(2), ["a", "b"])  # load kernels
    if args.phase == "daemon-file":
        sink = {"type": "jsonl", "path": args.ckpt + ".out.jsonl"}
    else:
        sink = {
            "type": "kafka",
            "bootstrap": args.bootstrap,
            "topic": args.out_topic,
            "process": args.phase in ("daemon", "daemon-eos"),
        }
    source = {
        "type": "kafka",
        "bootstrap": args.bootstrap,
        "topic": args.topic,
        "group": args.group,
        "order": args.order,
    }
    raw = daemon_config(source, sink, args.records, args.ckpt)
    if args.phase == "daemon-eos":
        raw = exactly_once_config(raw)
    c0 = cpu_seconds()
    rate, p50, p99, _ = run_daemon(source, sink, args.records, args.ckpt, raw=raw)
    cpu_us = (cpu_seconds() - c0) / args.records * 1e6
    print(json.dumps({"rate": rate, "p50": p50, "p99": p99, "cpu_us": cpu_us}))


def run_phase(what, bootstrap, topic, out_topic, n, order, group="", ckpt=""):
    """Each measurement runs in its own process: no client state carries over between runs."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--phase",
        what,
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--out-topic",
        out_topic,
        "--records",
        str(n),
        "--order",
        order,
        "--group",
        group,
        "--ckpt",
        ckpt,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PHASE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"  {what}: no result within {PHASE_TIMEOUT_S} s (a stalled consumer); round skipped", flush=True)
        return None
    if done.returncode != 0:
        raise RuntimeError(f"{what} phase failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_broker(broker_dir):
    """Start a single-node Kafka broker with scripts/kafka.sh in ``broker_dir``; its bootstrap address."""
    run = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "kafka.sh"), "start", broker_dir],
        check=True,
        capture_output=True,
        text=True,
    )
    return run.stdout.strip().splitlines()[-1]


def stop_broker(broker_dir):
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "kafka.sh"), "stop", broker_dir], check=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3, help="alternating bare/daemon rounds (median ratio)")
    ap.add_argument("--bootstrap", help="an existing broker; default: start one with scripts/kafka.sh")
    ap.add_argument(
        "--order",
        default="timestamp",
        choices=("timestamp", "arrival"),
        help="the daemon's [source] order (default: the daemon's default)",
    )
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    for hidden in ("--topic", "--out-topic", "--group", "--ckpt"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase:
        return phase(args)
    n = args.records
    lines = make_lines(n)
    work = tempfile.mkdtemp(prefix="bench-daemon-")
    broker_dir = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker_dir = os.path.join(work, "kafka")
        bootstrap = start_broker(broker_dir)
    try:
        stem = uuid.uuid4().hex[:8]
        topic, out_bare, out_daemon = f"bench-in-{stem}", f"bench-bare-{stem}", f"bench-out-{stem}"
        create_topics(bootstrap, [topic, out_bare, out_daemon], partitions=2)
        produce(bootstrap, topic, lines)
        streamrnn.Model(n_inputs=2, **MODEL).step_many(np.zeros((2, 2)), np.zeros(2), ["a", "b"])  # compile
        rates = {what: [] for what in PHASES}
        cpus = {what: [] for what in PHASES}
        lat50, lat99 = [], []
        for rnd in range(args.rounds):
            runs = PHASES[rnd % len(PHASES) :] + PHASES[: rnd % len(PHASES)]
            got = {
                what: run_phase(
                    what,
                    bootstrap,
                    topic,
                    out_bare if what == "bare" else out_daemon,
                    n,
                    args.order,
                    group=f"{what}-{stem}-{rnd}",
                    ckpt=os.path.join(work, f"{what}-{rnd}.ckpt"),
                )
                for what in runs
            }
            if None in got.values():
                continue
            for what in PHASES:
                rates[what].append(got[what]["rate"])
                cpus[what].append(got[what]["cpu_us"])
            lat50.append(got["daemon"]["p50"])
            lat99.append(got["daemon"]["p99"])
            print(
                f"round {rnd + 1}: "
                + ", ".join(f"{what} {got[what]['rate']:.0f}" for what in PHASES)
                + " rec/s; "
                + ", ".join(f"{name} {got[a]['rate'] / got[b]['rate']:.2f}" for name, a, b in RATIOS),
                flush=True,
            )
        if not rates["bare"]:
            raise SystemExit("no round completed")
        per_round = {name: [x / y for x, y in zip(rates[a], rates[b])] for name, a, b in RATIOS}
        median_round = int(np.argsort(per_round["daemon/bare"])[len(lat50) // 2])  # the headline row
        k50, k99 = lat50[median_round], lat99[median_round]
        path = os.path.join(work, "in.jsonl")
        with open(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        c0 = cpu_seconds()
        file_rate, f50, f99, _ = run_daemon(
            {"type": "jsonl", "path": path},
            {"type": "jsonl", "path": os.path.join(work, "out.jsonl")},
            n,
            os.path.join(work, "file.ckpt"),
        )
        file_cpu = (cpu_seconds() - c0) / n * 1e6
        eos_lat = eos_latency(bootstrap)
    finally:
        if broker_dir is not None:
            stop_broker(broker_dir)
    median = {what: float(np.median(r)) for what, r in rates.items()}
    cpu = {what: float(np.median(c)) for what, c in cpus.items()}
    cpu_ratios = {name: cpu[a] / cpu[b] for name, a, b in RATIOS}
    rows = [
        ("bare loop: consume, decode, encode, produce", median["bare"], cpu["bare"], None, None),
        ("daemon, Kafka -> Kafka", median["daemon"], cpu["daemon"], k50, k99),
        ("  the same, sink in-process", median["daemon-inproc"], cpu["daemon-inproc"], None, None),
        ("bare loop: consume, decode", median["bare-decode"], cpu["bare-decode"], None, None),
        ("daemon, Kafka -> JSONL file", median["daemon-file"], cpu["daemon-file"], None, None),
        ("daemon, file -> file", file_rate, file_cpu, f50, f99),
        ("daemon, Kafka -> Kafka, exactly-once", median["daemon-eos"], cpu["daemon-eos"], None, None),
    ]
    print(
        f"{n} records, GRU n=8 RTRL, batches of up to 5000, source order {args.order!r}; medians of "
        f"{len(lat50)} rounds, the runs of a round in rotating order, each in a fresh process"
    )
    print(f"{'path':<46}{'records/s':>12}{'CPU us/rec':>12}{'p50 ms':>9}{'p99 ms':>9}")
    for name, rate, cpu_us, p50, p99 in rows:
        print(
            f"{name:<46}{rate:>12.0f}{cpu_us:>12.1f}{'' if p50 is None else f'{p50:.1f}':>9}"
            f"{'' if p99 is None else f'{p99:.1f}':>9}"
        )
    print("records/s ratios (median of the rounds) and CPU per record ratios (all processes of each side):")
    for name, _, _ in RATIOS:
        print(
            f"{name:<26} {np.median(per_round[name]):.2f}  (per round {', '.join(f'{r:.2f}' for r in per_round[name])})"
            f";  CPU per record {cpu_ratios[name]:.2f}"
        )
    every_records, every_seconds = eos_cadence()
    print(
        f"exactly-once at the default cadence (a transaction every {every_records} records or {every_seconds:g} s): "
        f"read_committed end-to-end latency at {eos_lat['rate']} records/s over {eos_lat['records']} records: "
        f"p50 {eos_lat['p50_ms']:.0f} ms, p99 {eos_lat['p99_ms']:.0f} ms, max {eos_lat['max_ms']:.0f} ms"
    )
    print(
        "targets: daemon CPU per record <= 1.3 x the bare loop's; sink in-process >= 0.75 of the bare loop's "
        "records/s; file -> file >= 100 000 records/s; exactly-once >= 0.8 of at-least-once records/s"
    )
    print(
        json.dumps(
            {
                "benchmark": "bench_daemon",
                "records": n,
                "order": args.order,
                "rounds": len(lat50),
                "median_records_per_s": median,
                "median_cpu_us_per_record": cpu,
                "cpu_ratios": cpu_ratios,
                "file_cpu_us_per_record": file_cpu,
                "ratios": {k: float(np.median(v)) for k, v in per_round.items()},
                "round_ratios": per_round,
                "daemon_batch_p50_ms": k50,
                "daemon_batch_p99_ms": k99,
                "file_records_per_s": file_rate,
                "file_batch_p50_ms": f50,
                "file_batch_p99_ms": f99,
                "eos_checkpoint_cadence": {"every_records": every_records, "every_seconds": every_seconds},
                "eos_read_committed_latency": eos_lat,
            }
        )
    )


if __name__ == "__main__":
    main()
