"""Speed of online RTRL learning through ``Model.step_many``, with its baselines measured in the same run.

For cell in {rnn, gru, lstm} and n in {8, 16, 32, 64} (8 inputs, one regression
output, Adam) it prints:

- steps/s of ``step_many`` with RTRL learning (one key, every sample labelled);
- MAC/step: multiply-adds of the influence update's product ``W_hh M`` (G n · n · P);
- GMAC/s achieved on that product, the single-thread NumPy matmul rate for the
  same (G n x n)·(n x P) shape, and their ratio;
- steps/s of a straightforward NumPy implementation of the same RTRL step
  (checked to give the same predictions), and the speed-up over it.

Then one JSON line with every row. BLAS and Numba are pinned to one thread.

    python scripts/bench_step.py [--seconds 1.0] [--cells gru] [--sizes 8,32]
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


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


class NumpyRTRL:
    """RTRL written the obvious way in NumPy: dense immediate partials, vectorised gate algebra."""

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


def rate(fn, seconds, unit_count):
    """Calls of ``fn`` per second (times ``unit_count``), best of three timed windows."""
    fn()
    best = 0.0
    for _ in range(3):
        reps, start = 0, time.perf_counter()
        while True:
            fn()
            reps += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / 3:
                break
        best = max(best, reps * unit_count / elapsed)
    return best


def bench(cell, n, seconds, n_inputs=8):
    rng = np.random.default_rng(0)
    model = sr.Model(cell=cell, n_inputs=n_inputs, n_hidden=n, n_outputs=1, lr=1e-3, seed=0)
    P = model.n_params_cell
    G = GATES[cell]
    batch = 4096 if n <= 16 else 256
    X = rng.normal(size=(batch, n_inputs))
    Y = rng.normal(size=(batch, 1))

    # Same predictions from both implementations before timing: the baseline is the same step.
    baseline = NumpyRTRL(model)
    check = sr.Model(cell=cell, n_inputs=n_inputs, n_hidden=n, n_outputs=1, lr=1e-3, seed=0)
    ours = check.step_many(X[:20], Y[:20])
    theirs = np.array([baseline.step(x, y) for x, y in zip(X[:20], Y[:20])])
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-10)

    steps_per_s = rate(lambda: model.step_many(X, Y), seconds, batch)
    numpy_steps_per_s = rate(lambda: [baseline.step(x, y) for x, y in zip(X[:16], Y[:16])], seconds / 2, 16)
    W = rng.normal(size=(G * n, n))
    M = rng.normal(size=(n, P))
    D = np.empty((G * n, P))
    macs = G * n * n * P
    matmul_gmacs = rate(lambda: np.dot(W, M, out=D), seconds / 2, macs) / 1e9
    achieved = steps_per_s * macs / 1e9
    return {
        "cell": cell,
        "n": n,
        "inputs": n_inputs,
        "params_cell": P,
        "steps_per_s": steps_per_s,
        "mac_per_step": macs,
        "gmac_per_s": achieved,
        "numpy_matmul_gmac_per_s": matmul_gmacs,
        "ratio_to_matmul": achieved / matmul_gmacs,
        "numpy_rtrl_steps_per_s": numpy_steps_per_s,
        "speedup_over_numpy": steps_per_s / numpy_steps_per_s,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="timing budget per measurement")
    ap.add_argument("--cells", default="rnn,gru,lstm")
    ap.add_argument("--sizes", default="8,16,32,64")
    args = ap.parse_args(argv)
    rows = []
    header = (
        f"{'cell':<5}{'n':>4}{'P':>7}{'steps/s':>11}{'MAC/step':>11}{'GMAC/s':>8}"
        f"{'np matmul':>10}{'ratio':>7}{'np RTRL/s':>11}{'speedup':>9}"
    )
    print(header)
    print("-" * len(header))
    for cell in args.cells.split(","):
        for n in map(int, args.sizes.split(",")):
            r = bench(cell, n, args.seconds)
            rows.append(r)
            print(
                f"{cell:<5}{n:>4}{r['params_cell']:>7}{r['steps_per_s']:>11.0f}{r['mac_per_step']:>11}"
                f"{r['gmac_per_s']:>8.2f}{r['numpy_matmul_gmac_per_s']:>10.2f}{r['ratio_to_matmul']:>7.2f}"
                f"{r['numpy_rtrl_steps_per_s']:>11.0f}{r['speedup_over_numpy']:>8.1f}x",
                flush=True,
            )
    print(json.dumps({"benchmark": "bench_step", "rows": rows}))


if __name__ == "__main__":
    main()
