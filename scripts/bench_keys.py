"""Resident memory of the daemon holding 100 000 keys, against the state it must hold.

Generates a keyed JSON Lines stream: ``--keys`` distinct keys (default 100 000),
each with 2 or 3 records (``--records-per-key`` on average), all interleaved in
a random order, with ``--inputs`` features and a target. Then, each in a fresh
process so that one run's memory does not count in another's:

- model: the baseline, ``Model.step_many`` fed the same records in batches of
  ``--batch`` (JSON decoded in the loop, no sink): the memory the learner itself needs;
- daemon: ``streamrnn.service.Daemon``, JSONL file source -> JSONL file sink,
  ``[model] max_keys`` = the number of keys, no checkpoint; with
  ``--checkpoint`` it writes one at the end (the peak then includes its
  serialisation), and a third process, restart, starts the daemon again from
  that checkpoint (its base is before the checkpoint is read; the stream is
  already consumed, so the peak is the cost of loading the keys' state).

For each it reports resident memory (``VmRSS``) once the process is ready (imports
done, kernels compiled, no key yet: "base"), at the end ("final"), and the peak
(``VmHWM``), plus the learner state per key by formula (S (1 + P/n) values for
RTRL of an element-wise cell, exact in O(P)) and as measured (bytes of the
per-key arrays; and (final - base) / keys, which adds the key map). Prints a
table and one JSON line. BLAS and Numba are pinned to one thread.

    python scripts/bench_keys.py [--keys 100000] [--cell elstm] [--hidden 16] [--dtype float32] [--checkpoint]
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

MIB = 2**20
GIB = 2**30


def memory_status(pid="self"):
    """``(VmRSS, VmHWM)`` in bytes from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) * 1024
    return out["VmRSS"], out["VmHWM"]


def write_stream(path, n_keys, per_key, n_inputs, seed=0):
    """``n_keys`` keys with 2 or 3 records each (``per_key`` on average), interleaved at random;
    returns the number of records."""
    rng = np.random.default_rng(seed)
    counts = 2 + (rng.random(n_keys) < per_key - 2)
    order = rng.permutation(np.repeat(np.arange(n_keys), counts))
    X = rng.normal(size=(order.size, n_inputs)).round(5)
    y = np.tanh(X[:, 0] + 0.5 * X[:, 1] * X[:, -1]).round(5)
    names = [f"x{i}" for i in range(n_inputs)]
    with open(path, "w") as fh:
        for start in range(0, order.size, 10_000):
            fh.write(
                "".join(
                    json.dumps(
                        {"key": f"k{order[i]:07d}", **dict(zip(names, X[i].tolist())), "y": float(y[i])},
                        separators=(",", ":"),
                    )
                    + "\n"
                    for i in range(start, min(start + 10_000, order.size))
                )
            )
    return int(order.size)


def state_formula(model):
    """Bytes of per-key learner state from the algorithm: S state values plus the influence matrix,
    S x (P/n) values when each unit tracks only its own parameters (SnAp-1, and exact RTRL for the
    element-wise cells), S x P for exact RTRL of the other cells."""
    from streamrnn.cells.dispatch import ELEMENTWISE

    S, P = model.dims.state_size, model.n_params_cell
    per_unit = model.learner == "snap1" or model.dims.cell in ELEMENTWISE
    return model.dtype.itemsize * S * (1 + (P // model.n_hidden if per_unit else P))


def model_config(args, n_keys):
    return dict(
        cell=args.cell,
        n_inputs=args.inputs,
        n_hidden=args.hidden,
        dtype=args.dtype,
        learner=args.learner,
        max_keys=n_keys,
        lr=1e-3,
        seed=0,
    )


def child(what, spec):
    """Run one measured process: report memory before and after feeding the stream."""
    import streamrnn as sr
    from streamrnn.service import Daemon, validate_config

    warm = sr.Model(**spec["model"])  # compile (or load) the kernels: part of the base
    warm.step_many(np.zeros((2, spec["model"]["n_inputs"])), np.zeros((2, 1)), ["a", "b"])
    del warm
    features = [f"x{i}" for i in range(spec["model"]["n_inputs"])]
    base, _ = memory_status()
    if what in ("daemon", "restart"):
        raw = {
            "source": {"type": "jsonl", "path": spec["stream"]},
            "sink": {"type": "jsonl", "path": spec["sink"], "mode": "w"},
            "schema": {"features": features, "target": "y", "key": "key"},
            "model": dict(spec["model"]),
            "daemon": {"batch_size": spec["batch"], "progress": False, "log_every_seconds": 0.0},
        }
        if spec["checkpoint"]:
            raw["checkpoint"] = {"path": spec["checkpoint"], "every_records": 0, "every_seconds": 0.0}
        daemon = Daemon(validate_config(raw))
        model = daemon.model
    else:
        model = sr.Model(**spec["model"])
    if what != "restart":
        base, _ = memory_status()
    start = time.perf_counter()
    if what in ("daemon", "restart"):
        resumed = daemon.stats["records"]  # records a checkpoint already holds
        records = daemon.run()["records"] - resumed
    else:
        records = 0
        with open(spec["stream"]) as fh:
            while True:
                lines = [line for _, line in zip(range(spec["batch"]), fh)]
                if not lines:
                    break
                rows = [json.loads(line) for line in lines]
                model.step_many(
                    np.array([[r[f] for f in features] for r in rows]),
                    np.array([[r["y"]] for r in rows]),
                    [r["key"] for r in rows],
                )
                records += len(rows)
    elapsed = time.perf_counter() - start
    final, peak = memory_status()
    print(
        json.dumps(
            {
                "base": base,
                "final": final,
                "peak": peak,
                "records": records,
                "seconds": elapsed,
                "keys": len(model.keys),
                "bytes_per_key": model.state_bytes_per_key,
                "formula": state_formula(model),
                "params": model.n_params,
            }
        ),
        flush=True,
    )


def measure(what, spec, work):
    """Run ``child(what)`` in a fresh process, sampling its resident memory meanwhile."""
    path = os.path.join(work, f"{what}.json")
    with open(path, "w") as fh:
        json.dump(spec, fh)
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", what, path], stdout=subprocess.PIPE, text=True
    )
    sampled = [0]

    def sample():
        while proc.poll() is None:
            try:
                sampled[0] = max(sampled[0], memory_status(proc.pid)[0])
            except (OSError, KeyError):
                break
            time.sleep(0.05)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"{what} run failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["sampled_peak"] = sampled[0]
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--records-per-key", type=float, default=2.5, help="between 2 and 3")
    ap.add_argument("--cell", default="elstm")
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--learner", default="rtrl", choices=("rtrl", "snap1"))
    ap.add_argument("--batch", type=int, default=500, help="records per step_many call (the daemon's batch_size)")
    ap.add_argument("--checkpoint", action="store_true", help="the daemon also writes a checkpoint at the end")
    ap.add_argument("--workdir", help="where the stream and predictions go (default: a temporary directory)")
    ap.add_argument("--child", nargs=2, metavar=("WHAT", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        with open(args.child[1]) as fh:
            return child(args.child[0], json.load(fh))
    if not 2 <= args.records_per_key <= 3:
        ap.error("--records-per-key must be between 2 and 3")
    work = args.workdir or tempfile.mkdtemp(prefix="bench-keys-")
    os.makedirs(work, exist_ok=True)
    stream = os.path.join(work, "stream.jsonl")
    t0 = time.perf_counter()
    n_records = write_stream(stream, args.keys, args.records_per_key, args.inputs)
    print(
        f"stream: {n_records} records, {args.keys} keys, {os.path.getsize(stream) / MIB:.0f} MiB "
        f"({time.perf_counter() - t0:.1f} s to write) in {work}",
        flush=True,
    )
    spec = {
        "model": model_config(args, args.keys),
        "stream": stream,
        "sink": os.path.join(work, "predictions.jsonl"),
        "batch": args.batch,
        "checkpoint": os.path.join(work, "daemon.ckpt") if args.checkpoint else None,
    }
    for stale in (spec["checkpoint"], f"{spec['checkpoint']}.prev") if args.checkpoint else ():
        if os.path.exists(stale):
            os.unlink(stale)  # the daemon would resume from it
    import streamrnn as sr  # compile the kernels into Numba's cache once, so that

    sr.Model(**spec["model"]).step_many(np.zeros((1, args.inputs)), np.zeros((1, 1)))  # no run's base has the compiler
    runs = {what: measure(what, spec, work) for what in ("model", "daemon") + (("restart",) if args.checkpoint else ())}

    head = (
        f"{'run':<8}{'keys':>8}{'records':>9}{'rec/s':>9}{'base MiB':>10}{'final MiB':>10}{'peak MiB':>10}"
        f"{'B/key formula':>15}{'B/key arrays':>14}{'B/key RSS':>11}"
    )
    print(f"{args.cell}-{args.hidden}, {args.inputs} inputs, {args.dtype}, learner {args.learner}")
    print(head)
    print("-" * len(head))
    rows = []
    for what, r in runs.items():
        per_key_rss = (r["final"] - r["base"]) / max(r["keys"], 1)
        peak = max(r["peak"], r["sampled_peak"])
        rows.append(dict(run=what, **r, rss_bytes_per_key=per_key_rss, peak_bytes=peak, under_1_gib=bool(peak < GIB)))
        print(
            f"{what:<8}{r['keys']:>8}{r['records']:>9}"
            f"{r['records'] / max(r['seconds'], 1e-9):>9.0f}{r['base'] / MIB:>10.0f}"
            f"{r['final'] / MIB:>10.0f}{peak / MIB:>10.0f}{r['formula']:>15}{r['bytes_per_key']:>14}"
            f"{per_key_rss:>11.0f}"
        )
    for row in rows[1:]:
        print(
            f"{row['run']} peak {row['peak_bytes'] / MIB:.0f} MiB: {'under' if row['under_1_gib'] else 'OVER'} 1 GiB"
            + {
                "daemon": " (with a final checkpoint)" if args.checkpoint else "",
                "restart": " (loading the checkpoint)",
            }[row["run"]]
        )
    print(
        json.dumps(
            {
                "benchmark": "bench_keys",
                "cell": args.cell,
                "n_hidden": args.hidden,
                "n_inputs": args.inputs,
                "dtype": args.dtype,
                "learner": args.learner,
                "keys": args.keys,
                "records": n_records,
                "checkpoint": args.checkpoint,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
