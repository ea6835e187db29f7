"""Steps/s and memory per key of every online learner as the cell grows.

For n in {32, 128, 512} (8 inputs, one regression output, Adam, one key) and
each learner (exact RTRL where its influence matrix fits in --max-state-mib,
SnAp-1, UORO, TBPTT(k=16)), for a PyTorch cell or an element-wise one
(``--cell elstm`` or ``dlru``: exact RTRL in O(P)), prints steps/s of ``step_many``, the learner's
state per key by formula and as measured (bytes of the per-key arrays), and
the memory-bandwidth bound: bytes a step must touch (per-key state read and
written; parameters, gradient and Adam's two moments) over the copy bandwidth
measured in the same run. At large n these learners are memory-bound, so the
bound, not a flop count, says what the machine allows; ``of bound`` is the
ratio to it. Then one JSON line. BLAS and Numba are pinned to one thread.

    python scripts/bench_learners.py [--cell gru] [--sizes 32,128,512] [--seconds 1] [--dtype float64]
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import time

import numpy as np

import streamrnn as sr

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
ELEMENTWISE_GATES = {"ernn": 1, "egru": 3, "elstm": 4, "dlru": 1}
LEARNERS = {"rtrl": {}, "snap1": {}, "uoro": {}, "tbptt": {"truncation": 16}}


def state_formula(learner, cell, n, m, itemsize=8):
    """Bytes of learner state per key, from the algorithm's definition."""
    elementwise = cell in ELEMENTWISE_GATES
    G = ELEMENTWISE_GATES[cell] if elementwise else GATES[cell]
    S = 2 * n if cell in ("lstm", "elstm", "dlru") else n  # (h, c) or (h, s)
    P = G * n * (m + (1 if elementwise else n) + 2)
    if learner == "rtrl" and elementwise:
        return itemsize * S * (1 + P // n), "S(1+P/n)"
    if learner == "rtrl":
        return itemsize * S * (1 + P), "S(1+P)"
    if learner == "snap1":
        return itemsize * S * (1 + P // n), "S(1+P/n)"
    if learner == "uoro":
        return itemsize * (2 * S + P), "2S+P"
    k, C = 16, 2 * G * n
    return itemsize * (S + k * (m + S + C + 1)) + k + 8, "S+k(m+S+C+1)"


def copy_bandwidth(nbytes=256 * 2**20):
    """Bytes moved per second by a large array copy (read + write counted)."""
    a = np.ones(nbytes // 8)
    b = np.empty_like(a)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * nbytes / (time.perf_counter() - start))
    return best


def bytes_per_step(model):
    """Memory a step must stream: per-key state read and written, and per update the parameters read
    and written, the gradient written and read, Adam's two moments read and written (TBPTT updates
    once per stride)."""
    updates_per_step = 1.0 / model.stride if model.learner == "tbptt" else 1.0
    return 2 * model.state_bytes_per_key + updates_per_step * 8 * model.dtype.itemsize * model.n_params


def steps_per_second(model, seconds, m):
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(64, m)).astype(model.dtype), rng.normal(size=(64, 1)).astype(model.dtype)
    model.step_many(X[:2], Y[:2])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.step_many(X[:8], Y[:8])
        done += 8
    return done / (time.perf_counter() - start)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cell", default="gru", choices=tuple(GATES) + tuple(ELEMENTWISE_GATES))
    ap.add_argument("--sizes", default="32,128,512")
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--max-state-mib", type=float, default=2048, help="skip a learner whose state per key is larger")
    args = ap.parse_args(argv)
    m = args.inputs
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write)")
    head = (
        f"{'cell':<5}{'n':>5}{'learner':>8}{'P':>9}{'steps/s':>10}{'state/key':>12}{'formula':>14}"
        f"{'measured':>12}{'bound/s':>10}{'of bound':>9}"
    )
    print(head)
    print("-" * len(head))
    rows = []
    for n in map(int, args.sizes.split(",")):
        for learner, extra in LEARNERS.items():
            formula_bytes, formula = state_formula(learner, args.cell, n, m, np.dtype(args.dtype).itemsize)
            row = {
                "cell": args.cell,
                "n": n,
                "learner": learner,
                "state_bytes_formula": formula_bytes,
                "formula": formula,
            }
            if formula_bytes > args.max_state_mib * 2**20:
                row.update(steps_per_s=None, state_bytes_measured=None)
                print(f"{args.cell:<5}{n:>5}{learner:>8}{'':>9}{'(skipped)':>10}{formula_bytes:>12}{formula:>14}")
                rows.append(row)
                continue
            model = sr.Model(
                cell=args.cell,
                n_inputs=m,
                n_hidden=n,
                n_outputs=1,
                learner=learner,
                lr=1e-4,
                seed=0,
                dtype=args.dtype,
                **extra,
            )
            rate = steps_per_second(model, args.seconds, m)
            measured = model.held_state_bytes
            bound = bandwidth / bytes_per_step(model)
            row.update(
                params=model.n_params,
                steps_per_s=rate,
                state_bytes_measured=measured,
                bytes_per_step=bytes_per_step(model),
                bound_steps_per_s=bound,
                of_bound=rate / bound,
            )
            rows.append(row)
            print(
                f"{args.cell:<5}{n:>5}{learner:>8}{model.n_params:>9}{rate:>10.{0 if rate >= 10 else 2}f}"
                f"{formula_bytes:>12}{formula:>14}"
                f"{measured:>12}{bound:>10.0f}{rate / bound:>9.2f}",
                flush=True,
            )
    print(
        json.dumps(
            {"benchmark": "bench_learners", "dtype": args.dtype, "copy_bandwidth_bytes_per_s": bandwidth, "rows": rows}
        )
    )


if __name__ == "__main__":
    main()
