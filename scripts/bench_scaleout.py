"""Throughput of 1, 2 and 3 daemons in one consumer group on a 6-partition topic, real broker.

For each member count k, a fresh consumer group of k ``streamrnn run --group`` processes
(independent mode, directory checkpoint store, a GRU of 8 hidden units learning with exact RTRL,
predictions produced to an output topic) reads the same preloaded topic of --records keyed JSON
records. Throughput is measured in steady state: the output topic's end offsets are sampled and
the rate is taken from the moment the group is stable with all k members holding partitions (and
at least 10 % of the records are answered) until 90 % are, so process start-up and the
rebalances of members joining one after the other are not counted. It also reports, over that
window, the CPU the members used (from /proc/PID/stat, their Kafka sink processes included) and
how busy the whole machine was (from /proc/stat): the single-member profile the README's scaling
estimate comes from. Prints a table and one JSON line; starts its own broker
with scripts/kafka.sh unless --bootstrap is given.

    python scripts/bench_scaleout.py [--records 300000] [--members 1,2,3] [--bootstrap HOST:PORT]
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
from bench_daemon import MODEL, create_topics, make_lines, produce, start_broker, stop_broker

from streamrnn.service import dump_config

PARTITIONS = 6
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid):
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid):
    """User + system CPU seconds of a process, its threads and its child processes (a member's
    Kafka sink runs in one)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat(int(entry))
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def machine_busy():
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def outputs_so_far(consumer, tps):
    return sum(consumer.end_offsets(tps).values())


def group_stable(admin, group, k):
    """Whether the group is Stable with k members, each holding partitions."""
    from kafka.errors import KafkaError

    try:
        g = admin.describe_groups([group]).get(group, {})
    except KafkaError:  # e.g. no coordinator yet on a broker that just started
        return False
    members = g.get("members", [])
    return (
        g.get("group_state") == "Stable"
        and len(members) == k
        and all(
            isinstance(m.get("member_assignment"), dict) and m["member_assignment"].get("assigned_partitions")
            for m in members
        )
    )


def run_group(bootstrap, topic, k, n, work):
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    stem = uuid.uuid4().hex[:8]
    out_topic, group = f"scale-out-{k}-{stem}", f"scale-{k}-{stem}"
    create_topics(bootstrap, [out_topic], partitions=PARTITIONS)
    procs = []
    env = dict(os.environ, PYTHONPATH=ROOT)
    for i in range(k):
        cfg = {
            "source": {"type": "kafka", "bootstrap": bootstrap, "topic": topic, "max_poll_records": 5000},
            "sink": {"type": "kafka", "bootstrap": bootstrap, "topic": out_topic},
            "schema": {"features": ["a", "b"], "target": "y", "key": "key"},
            "model": {**MODEL, "n_inputs": 2},
            "checkpoint": {"path": os.path.join(work, f"store-{k}"), "every_records": 50_000, "every_seconds": 0},
            "daemon": {"batch_size": 5000, "poll_timeout": 0.5, "progress": False},
            "group": {"mode": "independent", "member": f"m{i}"},
        }
        path = os.path.join(work, f"k{k}-m{i}.toml")
        with open(path, "w") as fh:
            fh.write(dump_config(cfg))
        log = open(os.path.join(work, f"k{k}-m{i}.log"), "wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "streamrnn", "run", path, "--group", group, "--no-progress"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    stable = False
    tps = [TopicPartition(out_topic, p) for p in range(PARTITIONS)]
    lo, hi = int(0.1 * n), int(0.9 * n)
    start = end = None
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            done = outputs_so_far(consumer, tps)
            if not stable:
                stable = group_stable(admin, group, k)
                if stable and done >= hi:
                    raise RuntimeError(
                        f"{k} members: the group was stable only after {done} of {n} records; give more --records"
                    )
            if start is None and stable and done >= lo:
                start = (time.monotonic(), done, sum(cpu_seconds(p.pid) for p in procs), machine_busy())
            if start is not None and done >= hi:
                end = (time.monotonic(), done, sum(cpu_seconds(p.pid) for p in procs), machine_busy())
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a member exited early; see the logs in {work}")
            time.sleep(0.05)
        if end is None:
            raise RuntimeError(f"{k} members did not answer {hi} records within 600 s; logs in {work}")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        consumer.close()
        admin.close()
    wall = end[0] - start[0]
    busy = (end[3][0] - start[3][0]) / max(1, end[3][1] - start[3][1]) * os.cpu_count()
    return {
        "members": k,
        "records_per_s": (end[1] - start[1]) / wall,
        "member_cpu_cores": (end[2] - start[2]) / wall,
        "machine_busy_cores": busy,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--members", default="1,2,3", help="comma-separated member counts")
    ap.add_argument("--bootstrap", help="an existing broker; default: start one with scripts/kafka.sh")
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.members.split(",")]
    work = tempfile.mkdtemp(prefix="bench-scaleout-")
    broker_dir, bootstrap = None, args.bootstrap
    if bootstrap is None:
        broker_dir = os.path.join(work, "kafka")
        bootstrap = start_broker(broker_dir)
    try:
        topic = f"scale-in-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, [topic], partitions=PARTITIONS)
        produce(bootstrap, topic, make_lines(args.records, n_keys=60))
        rows = [run_group(bootstrap, topic, k, args.records, work) for k in counts]
    finally:
        if broker_dir is not None:
            stop_broker(broker_dir)
    base = rows[0]["records_per_s"]
    print(
        f"{args.records} records, {PARTITIONS} partitions, GRU n=8 RTRL, independent mode; {os.cpu_count()} cores, "
        f"broker on the same machine; steady state (group stable, up to 90 % of the records answered)"
    )
    print(f"{'members':>8}{'records/s':>12}{'speed-up':>10}{'member CPU cores':>18}{'machine busy cores':>20}")
    for r in rows:
        print(
            f"{r['members']:>8}{r['records_per_s']:>12.0f}{r['records_per_s'] / base:>10.2f}"
            f"{r['member_cpu_cores']:>18.2f}{r['machine_busy_cores']:>20.2f}"
        )
    print(
        json.dumps(
            {
                "benchmark": "bench_scaleout",
                "records": args.records,
                "partitions": PARTITIONS,
                "cores": os.cpu_count(),
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
