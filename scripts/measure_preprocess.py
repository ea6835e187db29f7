"""What online standardisation and target feedback buy: tail NMSE (last 2 000 of 12 000 steps),
GRU-16, exact RTRL, Adam lr 1e-3, progressive validation, plus the persistence forecast.

    NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python scripts/measure_preprocess.py
"""

import json
import sys
import time

import numpy as np

import streamrnn as sr
from streamrnn.datasets import mackey_glass, narma10, one_step_ahead

N, TAIL = 12_000, 2_000


def nmse(pred, y):
    return float(np.mean((pred[-TAIL:] - y[-TAIL:]) ** 2) / np.var(y[-TAIL:]))


def run(X, Y, **kw):
    m = sr.Model(cell="gru", n_inputs=X.shape[1], n_hidden=16, learner="rtrl", optimizer="adam", lr=1e-3, seed=0, **kw)
    t0 = time.perf_counter()
    out = m.step_many(X, Y[:, None])[:, 0]
    return nmse(out, Y), time.perf_counter() - t0


def main():
    Xm, Ym = one_step_ahead(mackey_glass(N + 1))  # standardised series
    Xr, Yr = Xm * 1000.0 + 5000.0, Ym * 1000.0 + 5000.0  # the same in raw units
    Xn, Yn = narma10(N)
    streams = {"mackey_glass": (Xm, Ym), "mackey_glass_raw": (Xr, Yr), "narma10": (Xn, Yn)}
    rows = []
    for name, (X, Y) in streams.items():
        persistence = nmse(np.concatenate([[Y[0]], Y[:-1]]), Y)
        rows.append((name, "persistence", None, None, persistence, 0.0))
        for std in (False, True):
            for k in (0, 1, 2):
                if name == "mackey_glass_raw" and not std and k:
                    continue
                score, secs = run(X, Y, standardize=std, target_lags=k)
                rows.append((name, "gru16-rtrl", std, k, score, secs))
                print(
                    f"{name:18s} standardize={std!s:5s} target_lags={k}  NMSE {score:.5g}  ({secs:.1f}s)",
                    file=sys.stderr,
                    flush=True,
                )
    print(f"{'stream':18s} {'model':12s} {'standardize':>11s} {'target_lags':>11s} {'tail NMSE':>11s} {'s':>6s}")
    for name, model, std, k, score, secs in rows:
        print(
            f"{name:18s} {model:12s} {str(std) if std is not None else '-':>11s} "
            f"{str(k) if k is not None else '-':>11s} {score:11.5g} {secs:6.1f}"
        )
    print(
        json.dumps(
            [{"stream": r[0], "model": r[1], "standardize": r[2], "target_lags": r[3], "nmse": r[4]} for r in rows]
        )
    )


if __name__ == "__main__":
    main()
