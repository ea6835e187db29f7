"""Speed of exact online RTRL through ``Model.step_many``, against a same-shape NumPy matmul measured in the same run.

Part 1, the influence update at the GEMM limit. For cell in {rnn, gru, lstm}, n in
{8, 16, 32, 64} (8 inputs, one regression output, the Model's defaults otherwise:
Adam, standardisation on) and each dtype it prints steps/s of ``step_many`` with
RTRL learning (one key, every sample labelled) and two multiply-add counts per step:

- ``necessary``: what the mathematics needs for M' = J M + I with J formed first,
  n²P for rnn and gru, 2n²P for lstm (P the cell's parameters);
- ``implemented``: what the kernel does: forming J (R G n² for R state rows and G gates),
  the product J M_h and the gradient g_h · M (n P more); the earlier kernel did G n²P
  (``W_hh M``) plus the same gradient.

Each count is turned into GMAC/s and divided by the rate of the single-thread NumPy
``(n x n) @ (n x P)`` product in the same dtype, measured in the same run next to it.
With two dtypes it also prints float32 steps/s over float64 steps/s.

Part 2, small cells: steps/s of GRU n=8 and LSTM n=8 (defaults, exact RTRL). With
``--baseline-tree DIR`` the same measurement runs, interleaved round by round, in a
subprocess importing ``streamrnn`` from DIR (for example an export of the previous
commit), so before and after come from one run on one machine state.

Then one JSON line with every row. BLAS and Numba are pinned to one thread (set
before NumPy is imported); every rate is per CPU-second of the measuring thread, best of
five windows (the machine may be shared; wall-clock would count other processes' work).
With ``--numpy-rtrl`` also the steps/s of a straightforward NumPy RTRL step (checked
against the kernel's predictions on raw inputs).

    python scripts/bench_step.py [--seconds 1.0] [--cells gru,lstm] [--sizes 8,32,64]
        [--dtypes float64,float32] [--small-rounds 3] [--baseline-tree /tmp/base]
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import subprocess
import sys
import time

import numpy as np

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
ROWS = {"rnn": 1, "gru": 1, "lstm": 2}  # state rows per unit: J M_h is (R n x n)(n x P)
SMALL = (("gru", 8), ("lstm", 8))


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


class NumpyRTRL:
    """RTRL written the obvious way in NumPy: dense immediate partials, vectorised gate algebra.
    For a model built with ``standardize=False`` (it sees the raw inputs)."""

    def __init__(self, model):
        self.cell = model.config["cell"]
        self.m, self.n, self.o = model.n_inputs, model.n_hidden, model.n_outputs
        w = model.get_weights()
        self.W_ih, self.W_hh = w["weight_ih_l0"].copy(), w["weight_hh_l0"].copy()
        self.b_ih, self.b_hh = w["bias_ih_l0"].copy(), w["bias_hh_l0"].copy()
        self.W_out, self.b_out = w["readout.weight"].copy(), w["readout.bias"].copy()
        self.params = [self.W_ih, self.W_hh, self.b_ih, self.b_hh, self.W_out, self.b_out]
        self.Pc = model.n_params_cell
        S = 2 * self.n if self.cell == "lstm" else self.n
        self.h = np.zeros(self.n)
        self.c = np.zeros(self.n)
        self.M = np.zeros((S, self.Pc))
        self.eye = np.eye(GATES[self.cell] * self.n)
        self.adam_m = [np.zeros_like(p) for p in self.params]
        self.adam_v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def immediate(self, x, h, with_ih=True, with_hh=True):
        """d(W_ih x + b_ih)/dθ and/or d(W_hh h + b_hh)/dθ, dense (G n x P)."""
        e = self.eye
        blocks = [np.kron(e, x) * with_ih, np.kron(e, h) * with_hh, e * with_ih, e * with_hh]
        return np.hstack(blocks)

    def step(self, x, y, lr=1e-3):
        n, h = self.n, self.h
        gi = self.W_ih @ x + self.b_ih
        gh = self.W_hh @ h + self.b_hh
        Mh = self.M[:n]
        if self.cell == "rnn":
            h_new = np.tanh(gi + gh)
            dA = self.W_hh @ Mh + self.immediate(x, h)
            self.M = (1 - h_new**2)[:, None] * dA
        elif self.cell == "gru":
            r = sigmoid(gi[:n] + gh[:n])
            z = sigmoid(gi[n : 2 * n] + gh[n : 2 * n])
            hn = gh[2 * n :]
            nn = np.tanh(gi[2 * n :] + r * hn)
            h_new = (1 - z) * nn + z * h
            d_hh = self.W_hh @ Mh + self.immediate(x, h, with_ih=False)
            d_ih = self.immediate(x, h, with_hh=False)
            dr = (r * (1 - r))[:, None] * (d_hh[:n] + d_ih[:n])
            dz = (z * (1 - z))[:, None] * (d_hh[n : 2 * n] + d_ih[n : 2 * n])
            dn = (1 - nn**2)[:, None] * (d_ih[2 * n :] + r[:, None] * d_hh[2 * n :] + hn[:, None] * dr)
            self.M = (1 - z)[:, None] * dn + (h - nn)[:, None] * dz + z[:, None] * Mh
        else:
            a = gi + gh
            i, f, o = sigmoid(a[:n]), sigmoid(a[n : 2 * n]), sigmoid(a[3 * n :])
            g = np.tanh(a[2 * n : 3 * n])
            c_new = f * self.c + i * g
            tc = np.tanh(c_new)
            h_new = o * tc
            dA = self.W_hh @ Mh + self.immediate(x, h)
            di = (i * (1 - i))[:, None] * dA[:n]
            df = (f * (1 - f))[:, None] * dA[n : 2 * n]
            dg = (1 - g**2)[:, None] * dA[2 * n : 3 * n]
            do = (o * (1 - o))[:, None] * dA[3 * n :]
            dc = f[:, None] * self.M[n:] + self.c[:, None] * df + i[:, None] * dg + g[:, None] * di
            dh = (o * (1 - tc**2))[:, None] * dc + tc[:, None] * do
            self.M = np.vstack([dh, dc])
            self.c = c_new
        self.h = h_new
        yhat = self.W_out @ h_new + self.b_out
        dy = yhat - y
        g_h = self.W_out.T @ dy
        g_cell = g_h @ self.M[:n]
        grads = np.split(g_cell, np.cumsum([p.size for p in self.params[:3]]))
        grads = [gr.reshape(p.shape) for gr, p in zip(grads, self.params[:4])]
        grads += [np.outer(dy, h_new), dy]
        self.t += 1
        for p, gr, m1, m2 in zip(self.params, grads, self.adam_m, self.adam_v):
            m1 *= 0.9
            m1 += 0.1 * gr
            m2 *= 0.999
            m2 += 0.001 * gr * gr
            p -= (lr / (1 - 0.9**self.t)) * m1 / (np.sqrt(m2) / np.sqrt(1 - 0.999**self.t) + 1e-8)
        return yhat


def rate(fn, seconds, unit_count, windows=5):
    """Calls of ``fn`` per CPU-second of this thread (times ``unit_count``), the best of ``windows``
    timed windows. CPU time, not wall-clock: on a shared machine a thread that waits for a core
    would otherwise count the other processes' work as its own (everything here runs on one thread)."""
    fn()
    best = 0.0
    for _ in range(windows):
        reps, start = 0, time.thread_time()
        while True:
            fn()
            reps += 1
            elapsed = time.thread_time() - start
            if elapsed >= seconds / windows:
                break
        best = max(best, reps * unit_count / elapsed)
    return best


def necessary_macs(cell, n, P):
    """Multiply-adds M' = J M + I needs with J formed first: R n² P (R = 1 for rnn/gru, 2 for lstm)."""
    return ROWS[cell] * n * n * P


def implemented_macs(cell, n, P):
    """What the kernel does: forming J from W_hh (R G n²), the product J M_h ((R n x n)(n x P)) and
    the gradient g_h · M_new: for rnn and gru one more row of the product ((g_h J) M_h, n P, with
    g_h J at n²), for lstm n P multiply-adds in the pass over M."""
    R, G = ROWS[cell], GATES[cell]
    grad = n * P + (n * n if R == 1 else 0)
    return R * n * n * P + R * G * n * n + grad


def model_steps_per_s(sr, cell, n, dtype, seconds, n_inputs=8):
    rng = np.random.default_rng(0)
    model = sr.Model(cell=cell, n_inputs=n_inputs, n_hidden=n, n_outputs=1, seed=0, dtype=dtype)
    X = rng.normal(size=(4096, n_inputs))
    Y = rng.normal(size=(4096, 1))
    model.step_many(X[:8], Y[:8])  # compiles or loads the cached kernels
    start = time.thread_time()
    model.step_many(X[:8], Y[:8])
    per_step = max(time.thread_time() - start, 1e-6) / 8
    batch = int(min(4096, max(8, 0.02 / per_step)))  # calls of about 20 ms
    Xb, Yb = X[:batch], Y[:batch]
    return model, rate(lambda: model.step_many(Xb, Yb), seconds, batch)


def matmul_gmacs(n, P, dtype, seconds):
    """Single-thread NumPy (n x n) @ (n x P) in ``dtype``, GMAC/s."""
    rng = np.random.default_rng(1)
    A = rng.normal(size=(n, n)).astype(dtype)
    B = rng.normal(size=(n, P)).astype(dtype)
    C = np.empty((n, P), dtype)
    return rate(lambda: np.dot(A, B, out=C), seconds, n * n * P) / 1e9


def check_against_numpy(sr, cell, n, n_inputs=8):
    """The kernel's RTRL step and the NumPy one give the same predictions (raw inputs, float64)."""
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(20, n_inputs)), rng.normal(size=(20, 1))
    model = sr.Model(cell=cell, n_inputs=n_inputs, n_hidden=n, n_outputs=1, seed=0, standardize=False)
    baseline = NumpyRTRL(model)
    ours = model.step_many(X, Y)
    theirs = np.array([baseline.step(x, y) for x, y in zip(X, Y)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-10)
    return baseline, X, Y


def bench(sr, cell, n, dtype, seconds, numpy_rtrl):
    model, steps = model_steps_per_s(sr, cell, n, dtype, seconds)
    P = model.n_params_cell
    ref = matmul_gmacs(n, P, dtype, seconds / 2)
    nec, imp = necessary_macs(cell, n, P), implemented_macs(cell, n, P)
    row = {
        "cell": cell,
        "n": n,
        "dtype": dtype,
        "params_cell": P,
        "steps_per_s": steps,
        "necessary_mac_per_step": nec,
        "implemented_mac_per_step": imp,
        "necessary_gmac_per_s": steps * nec / 1e9,
        "implemented_gmac_per_s": steps * imp / 1e9,
        "numpy_matmul_shape": [n, n, P],
        "numpy_matmul_gmac_per_s": ref,
        "necessary_ratio_to_matmul": steps * nec / 1e9 / ref,
        "implemented_ratio_to_matmul": steps * imp / 1e9 / ref,
    }
    if numpy_rtrl and dtype == "float64":
        baseline, X, Y = check_against_numpy(sr, cell, n)
        row["numpy_rtrl_steps_per_s"] = rate(
            lambda: [baseline.step(x, y) for x, y in zip(X[:8], Y[:8])], seconds / 2, 8
        )
    return row


def small_cells(seconds):
    """Steps/s of GRU-8 and LSTM-8 (defaults, exact RTRL) with the ``streamrnn`` this process imports."""
    import streamrnn as sr

    return {f"{cell}-{n}": model_steps_per_s(sr, cell, n, "float64", seconds)[1] for cell, n in SMALL}


def small_in_tree(tree, seconds):
    """:func:`small_cells` in a subprocess importing ``streamrnn`` from ``tree`` (same pinning)."""
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]); "
        "import bench_step, streamrnn; assert streamrnn.__file__.startswith(sys.argv[1]), streamrnn.__file__; "
        "print(json.dumps(bench_step.small_cells(float(sys.argv[3]))))"
    )
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH="")
    out = subprocess.run(
        [sys.executable, "-c", code, os.path.abspath(tree), here, str(seconds)],
        env=env,
        cwd="/",
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="timing budget per measurement")
    ap.add_argument("--cells", default="rnn,gru,lstm")
    ap.add_argument("--sizes", default="8,16,32,64")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--small-rounds", type=int, default=3, help="rounds of the GRU-8/LSTM-8 measurement (0: skip)")
    ap.add_argument("--baseline-tree", help="directory holding another streamrnn/ to measure the small cells with")
    ap.add_argument("--numpy-rtrl", action="store_true", help="also time a plain NumPy RTRL step (float64)")
    args = ap.parse_args(argv)
    import streamrnn as sr

    print(f"streamrnn from {os.path.dirname(sr.__file__)}; BLAS and Numba pinned to one thread")
    dtypes = args.dtypes.split(",")
    rows = []
    head = (
        f"{'cell':<5}{'n':>4}{'dtype':>8}{'P':>7}{'steps/s':>10}{'counted':>12}{'MAC/step':>11}{'GMAC/s':>8}"
        f"{'np matmul':>10}{'ratio':>7}"
    )
    print("\ninfluence update: MAC rate over the same-shape single-thread NumPy (n x n)@(n x P) rate")
    print(head)
    print("-" * len(head))
    for cell in args.cells.split(","):
        for n in map(int, args.sizes.split(",")):
            for dtype in dtypes:
                r = bench(sr, cell, n, dtype, args.seconds, args.numpy_rtrl)
                rows.append(r)
                for which in ("necessary", "implemented"):
                    lead = (
                        f"{cell:<5}{n:>4}{dtype:>8}{r['params_cell']:>7}{r['steps_per_s']:>10.0f}"
                        if which == "necessary"
                        else " " * 34
                    )
                    print(
                        f"{lead}{which:>12}{r[which + '_mac_per_step']:>11}{r[which + '_gmac_per_s']:>8.2f}"
                        f"{r['numpy_matmul_gmac_per_s']:>10.2f}{r[which + '_ratio_to_matmul']:>7.2f}"
                        + (
                            f"   numpy RTRL {r['numpy_rtrl_steps_per_s']:.0f}/s"
                            if which == "necessary" and "numpy_rtrl_steps_per_s" in r
                            else ""
                        ),
                        flush=True,
                    )
    speedups = []
    if "float32" in dtypes and "float64" in dtypes:
        print("\nfloat32 over float64 (steps/s)")
        by = {(r["cell"], r["n"], r["dtype"]): r for r in rows}
        for cell in args.cells.split(","):
            for n in map(int, args.sizes.split(",")):
                s = by[(cell, n, "float32")]["steps_per_s"] / by[(cell, n, "float64")]["steps_per_s"]
                speedups.append({"cell": cell, "n": n, "float32_over_float64": s})
                print(f"{cell:<5}{n:>4}{s:>8.2f}x")

    small = []
    if args.small_rounds > 0:
        print(
            "\nsmall cells, exact RTRL, model defaults, steps/s"
            + (" (this tree / baseline tree)" if args.baseline_tree else "")
        )
        for k in range(args.small_rounds):
            mine = small_cells(args.seconds)
            entry = {"round": k, "this_tree": mine}
            line = f"round {k}: " + "  ".join(f"{name} {v:>8.0f}" for name, v in mine.items())
            if args.baseline_tree:
                base = small_in_tree(args.baseline_tree, args.seconds)
                entry["baseline_tree"] = base
                line += "   |  baseline: " + "  ".join(f"{name} {v:>8.0f}" for name, v in base.items())
                line += "   |  ratio: " + "  ".join(f"{name} {mine[name] / base[name]:.2f}" for name in mine)
            small.append(entry)
            print(line, flush=True)
    print(
        json.dumps(
            {
                "benchmark": "bench_step",
                "rows": rows,
                "float32_over_float64": speedups,
                "small_cells": small,
                "baseline_tree": args.baseline_tree,
            }
        )
    )


if __name__ == "__main__":
    main()
