"""What the replayable (timestamp-merged) order of the Kafka source costs, on a real broker.

N small JSON records are produced to a topic with 2 partitions. In the same run, alternating for
--rounds rounds (each reader a fresh client from the beginning of the topic, no group):

- bare: a kafka-python consumer polling batches of 5000 (the I/O baseline: fetch and parse);
- arrival: ``KafkaSource(order="arrival")``, records handed out as the client returns them;
- timestamp: ``KafkaSource(order="timestamp")`` (the default), partitions merged by
  (timestamp, partition, offset), waiting for partitions with records on the broker.

Reports records/s and the per-round ratios timestamp / arrival and timestamp / bare (medians).
Prints a table and one JSON line. Starts its own broker with scripts/kafka.sh unless
--bootstrap is given.

    python scripts/bench_kafka_source.py [--records 200000] [--rounds 3] [--bootstrap HOST:PORT]
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import statistics
import tempfile
import time
import uuid

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
from bench_daemon import create_topics, start_broker, stop_broker

from streamrnn.connectors.kafka import KafkaSource


def produce(bootstrap, topic, n):
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=512 * 1024)
    for i in range(n):
        p.send(topic, key=f"k{i % 16}".encode(), value=f'{{"key":"k{i % 16}","a":{i % 997 / 997},"b":0.5}}'.encode())
    p.flush()
    p.close()


def read_bare(bootstrap, topic, n):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, max_poll_records=5000)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    start, got = time.perf_counter(), 0
    while got < n:
        got += sum(len(v) for v in c.poll(timeout_ms=500, max_records=5000).values())
    rate = n / (time.perf_counter() - start)
    c.close()
    return rate


def read_source(bootstrap, topic, n, order):
    src = KafkaSource(bootstrap, topic, group=None, order=order)
    start, got = time.perf_counter(), 0
    while got < n:
        got += len(src.poll(5000, 0.5))
    rate = n / (time.perf_counter() - start)
    src.close()
    return rate


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bootstrap", help="an existing broker; default: start one with scripts/kafka.sh")
    args = ap.parse_args(argv)
    broker_dir = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker_dir = tempfile.mkdtemp(prefix="bench-kafka-source-")
        bootstrap = start_broker(broker_dir)
    try:
        topic = f"bench-source-{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, [topic], partitions=2)
        produce(bootstrap, topic, args.records)
        rates = {"bare": [], "arrival": [], "timestamp": []}
        for r in range(args.rounds):
            rates["bare"].append(read_bare(bootstrap, topic, args.records))
            rates["arrival"].append(read_source(bootstrap, topic, args.records, "arrival"))
            rates["timestamp"].append(read_source(bootstrap, topic, args.records, "timestamp"))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} rec/s" for k, v in rates.items()), flush=True)
        vs_arrival = [t / a for t, a in zip(rates["timestamp"], rates["arrival"])]
        vs_bare = [t / b for t, b in zip(rates["timestamp"], rates["bare"])]
        print(f"{args.records} records, 2 partitions, median of {args.rounds} alternating rounds")
        print(f"{'reader':<34}{'records/s':>12}")
        for k, label in (
            ("bare", "bare kafka-python poll loop"),
            ("arrival", "KafkaSource order=arrival"),
            ("timestamp", "KafkaSource order=timestamp"),
        ):
            print(f"{label:<34}{statistics.median(rates[k]):>12.0f}")
        print(
            f"timestamp / arrival: {statistics.median(vs_arrival):.2f} (per round "
            f"{', '.join(f'{x:.2f}' for x in vs_arrival)}); timestamp / bare: {statistics.median(vs_bare):.2f}"
        )
        print(
            json.dumps(
                {
                    "benchmark": "bench_kafka_source",
                    "records": args.records,
                    "rounds": args.rounds,
                    **{f"{k}_records_per_s": statistics.median(v) for k, v in rates.items()},
                    "timestamp_over_arrival": statistics.median(vs_arrival),
                    "timestamp_over_bare": statistics.median(vs_bare),
                    "round_ratios_timestamp_over_arrival": vs_arrival,
                }
            )
        )
    finally:
        if broker_dir:
            stop_broker(broker_dir)


if __name__ == "__main__":
    main()
