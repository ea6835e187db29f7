"""Speed of streamrnn's GRU-8 regressor through the river API, next to river's own regressors, in the same run.

Quality is measured by ``scripts/bench_quality.py`` (every model at its defaults, with the naive
baselines, on river's bundled sets and the generated streams); this script measures only speed. The
protocol switch and the learning-rate sweep it used to have are gone: every model here is built with its
defaults, ours with only ``n_hidden=8`` set (the size the speed target is stated for).

Protocol
  Streams: the lagged-regression views of two series, features {"lag1": s[t-1], ..., "lagk": s[t-k]},
  target s[t]:
    airline       river's AirlinePassengers, first differences, k = 12 (132 samples);
    mackey-glass  streamrnn.datasets.mackey_glass (tau=17, the first 1000 steps dropped), k = 1
                  (--mg-samples samples, 5000).
  samples/s of each model in ``preprocessing.StandardScaler() | model`` (river's documented pipeline),
  wall clock over one progressive validation (``evaluate.progressive_val_score``, MAE; scaler, metric and
  river's loop included; the 132-sample airline stream repeated to >= 2 000 samples so the clock
  measures more than start-up); AMF with seed 0. The pipeline's own ceiling is a no-op regressor
  (``dummy.StatisticRegressor(stats.Mean())``) in the same pipeline.

Speed target (>= 20 000 samples/s for GRU-8 through the river API)
  The bare estimator: ``predict_one`` + ``learn_one`` on pre-scaled dicts (scaling outside the clock), the
  stream repeated to >= 20 000 samples; the headline is the smaller of the two streams' figures, each the
  best of 5 passes (the median is in the JSON too; on a shared machine slower passes time other
  processes). In the same interleaved passes: the same estimator without the linear head (``head_lags=0``:
  what the head costs), with ``optimizer="race"`` (what the learning-rate race costs), and
  ``Model.step_many`` on the same rows (the compiled kernel alone, no per-sample
  Python), so api / step_many is what the river layer costs. BLAS and Numba pinned
  to one thread; the 1-minute load average at the start and end is in the JSON.

Before/after (``--baseline-tree DIR``, e.g. ``git worktree add --detach /tmp/base main``)
  After each of our passes, the same pass runs in a subprocess importing ``streamrnn`` from DIR, so
  the two trees are timed alternately under the same load; the table adds the baseline's best passes
  and the JSON its passes and the median over passes of ours / baseline.

    PYTHONPATH=. python scripts/bench_river.py [--quick] [--mg-samples 5000] [--json-only] [--baseline-tree DIR]
"""

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse
import json
import subprocess
import sys
import time
from collections import deque

import numpy as np
from river import (
    datasets,
    dummy,
    evaluate,
    forest,
    linear_model,
    metrics,
    neighbors,
    preprocessing,
    stats,
)

from streamrnn import datasets as generators
from streamrnn.river import RNNRegressor

OURS = {"n_hidden": 8}  # everything else at the estimator's defaults
LABEL = "streamrnn RNNRegressor(n_hidden=8)"
TARGET = 20_000


def lagged(series, k):
    """[(x, y)]: x = {"lag1": s_{t-1}, ..., "lagk": s_{t-k}}, y = s_t."""
    window, out = deque(maxlen=k), []
    for s in series:
        if len(window) == k:
            out.append(({f"lag{i + 1}": window[-1 - i] for i in range(k)}, float(s)))
        window.append(float(s))
    return out


def make_streams(mg_samples):
    air = np.array([y for _, y in datasets.AirlinePassengers()], float)
    mg = generators.mackey_glass(mg_samples + 1, washout=1000)
    return {"airline": lagged(np.diff(air), 12), "mackey-glass": lagged(mg, 1)}


MODELS = {
    LABEL: lambda: RNNRegressor(**OURS),
    "river LinearRegression": lambda: linear_model.LinearRegression(),
    "river KNNRegressor": lambda: neighbors.KNNRegressor(),
    "river AMFRegressor": lambda: forest.AMFRegressor(seed=0),
    "no-op regressor (the pipeline's ceiling)": lambda: dummy.StatisticRegressor(stats.Mean()),
}


def pipeline_speed(data, make, min_samples=2000):
    """Samples/s of one progressive validation; a short stream is repeated to ``min_samples`` first."""
    data = data * -(-min_samples // len(data))
    t0 = time.perf_counter()
    evaluate.progressive_val_score(data, preprocessing.StandardScaler() | make(), metrics.MAE())
    return len(data) / (time.perf_counter() - t0)


# Variants timed in the same interleaved passes as the default: what the linear head costs, and what the
# learning-rate race (``optimizer="race"``: three Adam rates advanced together) costs.
VARIANTS = {
    "api": {},
    "api_no_head": {"head_lags": 0},
    "api_race": {"optimizer": "race"},
}


BASELINE_ROWS = {
    "api": "bare predict_one+learn_one",
    "api_no_head": "bare, head_lags=0",
    "api_race": "bare, optimizer='race'",
    "step_many": "Model.step_many, same rows",
}


def bare_speed(data, min_samples=20_000, repeats=5, between=None):
    """Samples/s of the bare estimator through the river API (predict_one + learn_one on pre-scaled dicts),
    for each of ``VARIANTS``, and of ``Model.step_many`` on the same rows, over ``repeats`` interleaved
    passes: the best, the median (``<name>_median``) and every pass (``passes``). ``between()``, if
    given, runs after each pass (the baseline tree's pass, interleaved)."""
    scaler, rows = preprocessing.StandardScaler(), []
    for x, y in data:
        scaler.learn_one(x)
        rows.append((scaler.transform_one(x), y))
    rows = rows * -(-min_samples // len(rows))
    regs = {name: RNNRegressor(**OURS, **extra) for name, extra in VARIANTS.items()}
    for x, y in rows[:50]:  # compile outside the clock
        for r in regs.values():
            r.predict_one(x)
            r.learn_one(x, y)
    model = RNNRegressor(**OURS).model
    width = model.n_inputs
    X = np.zeros((len(rows), width))
    for i, (x, _) in enumerate(rows):
        for j, name in enumerate(regs["api"].features[:width]):
            X[i, j] = x.get(name, 0.0)
    Y = np.array([[y] for _, y in rows])
    model.step_many(X[:50], Y[:50])
    passes = {name: [] for name in (*VARIANTS, "step_many")}
    for _ in range(repeats):
        for name, r in regs.items():
            t0 = time.perf_counter()
            for x, y in rows:
                r.predict_one(x)
                r.learn_one(x, y)
            passes[name].append(len(rows) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        model.step_many(X, Y)
        passes["step_many"].append(len(rows) / (time.perf_counter() - t0))
        if between is not None:
            between()
    out = {name: max(v) for name, v in passes.items()}
    out.update({f"{name}_median": float(np.median(v)) for name, v in passes.items()})
    out["passes"] = passes
    return out


def bare_in_tree(tree, stream, mg_samples):
    """One pass of :func:`bare_speed` on ``stream`` in a subprocess importing ``streamrnn`` from ``tree``
    (this script, the same pinning), for a before/after comparison in the same run."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    cmd = [sys.executable, os.path.abspath(__file__), "--bare-only", stream, "--mg-samples", str(mg_samples)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    ap.add_argument("--mg-samples", type=int, default=5000)
    ap.add_argument("--quick", action="store_true", help="1000 Mackey-Glass samples, 3 passes")
    ap.add_argument("--json-only", action="store_true")
    ap.add_argument(
        "--baseline-tree", help="directory holding another streamrnn/: its bare passes run interleaved with ours"
    )
    ap.add_argument("--bare-only", metavar="STREAM", help=argparse.SUPPRESS)  # one bare pass (--baseline-tree)
    args = ap.parse_args(argv)
    mg_samples = 1000 if args.quick else args.mg_samples
    repeats = 3 if args.quick else 5
    streams = make_streams(mg_samples)
    if args.bare_only:
        print(json.dumps(bare_speed(streams[args.bare_only], repeats=1)))
        return
    pipeline_speed(streams["airline"][:20], MODELS[LABEL], 20)  # compile outside every clock
    load_start = os.getloadavg()[0]
    rows, result = [], {"bench": "river", "ours": OURS, "streams": {}}
    for name, data in streams.items():
        pipe = {label: pipeline_speed(data, make) for label, make in MODELS.items()}
        base = []
        between = None
        if args.baseline_tree:

            def between(name=name, base=base):
                base.append(bare_in_tree(args.baseline_tree, name, mg_samples))

        speed = bare_speed(data, repeats=repeats, between=between)
        for label, sps in pipe.items():
            rows.append((name, f"{label}, StandardScaler | model", sps))
        rows.append((name, f"{LABEL}: bare predict_one+learn_one", speed["api"]))
        rows.append((name, f"{LABEL}: bare, head_lags=0 (no linear head)", speed["api_no_head"]))
        rows.append((name, f"{LABEL}: bare, optimizer='race' (3 Adam rates)", speed["api_race"]))
        rows.append((name, f"{LABEL}: Model.step_many, same rows", speed["step_many"]))
        if base:
            base_best = {v: max(b[v] for b in base) for v in speed["passes"]}
            for v, label in BASELINE_ROWS.items():
                rows.append((name, f"baseline tree: {label}", base_best[v]))
            ratios = {
                v: float(np.median([ours / b[v] for ours, b in zip(speed["passes"][v], base)])) for v in speed["passes"]
            }
        result["streams"][name] = {
            "n_samples": len(data),
            "lags": len(data[0][0]),
            "samples_per_s_pipeline": pipe,
            "gru8_river_api_samples_per_s": speed["api"],
            "gru8_river_api_samples_per_s_median": speed["api_median"],
            "gru8_river_api_no_head_samples_per_s": speed["api_no_head"],
            "gru8_river_api_race_samples_per_s": speed["api_race"],
            "gru8_step_many_samples_per_s": speed["step_many"],
            "gru8_step_many_samples_per_s_median": speed["step_many_median"],
            "river_api_to_step_many_ratio": speed["api"] / speed["step_many"],
            "passes": speed["passes"],
        }
        if base:
            result["streams"][name]["baseline_tree"] = {
                "best": base_best,
                "median": {v: float(np.median([b[v] for b in base])) for v in speed["passes"]},
                "passes": {v: [b[v] for b in base] for v in speed["passes"]},
                "ours_over_baseline_median_of_pass_ratios": ratios,
            }
    if not args.json_only:
        print(f"{'stream':<14} {'model':<72} {'samples/s':>10}")
        for name, label, sps in rows:
            print(f"{name:<14} {label:<72} {sps:10.0f}")
    result["gru8_river_api_samples_per_s"] = min(v["gru8_river_api_samples_per_s"] for v in result["streams"].values())
    result["target_samples_per_s"] = TARGET
    result["target_speed_met"] = result["gru8_river_api_samples_per_s"] >= TARGET
    result["load_average_1min_start_end"] = [load_start, os.getloadavg()[0]]
    if args.baseline_tree:
        result["baseline_tree"] = os.path.abspath(args.baseline_tree)
    if not args.json_only:
        print(
            f"GRU-8 through the river API: {result['gru8_river_api_samples_per_s']:.0f} samples/s "
            f"(target >= {TARGET}: {'met' if result['target_speed_met'] else 'NOT met'}). "
            "Quality: scripts/bench_quality.py"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
