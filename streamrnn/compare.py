"""Run several learners on one recorded stream and compare them honestly.

Every learner sees the same samples in the same order with the same cell and
hidden size. Online learners (``rtrl``, ``tbptt:k``, ``window:w``) predict each
sample before learning from it, so their metric over the stream is
prequential and their metric on the tail is out-of-sample too. The offline
learner (``bidir``, bidirectional full BPTT) is trained on the first part and
evaluated on the tail; it sees future inputs within a window, so it is not
causal: it bounds what hindsight buys, it is not a streaming competitor.

Reported per learner (mean ± std over seeds): the prequential metric, the
tail metric, steps/s, bytes of learner state per key, the learner state held
at 10 % and at 100 % of the stream (flat for every streaming learner) and the
process's peak resident memory while it ran. Beside the learners, the naive
baselines scored on the same samples (persistence: each key's last target; the
running mean of the key's targets), so the table shows at once whether a
learner learned anything.
"""

import csv
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .cells.dispatch import CELL_IDS
from .learners import registry
from .model import Model
from .optim import DEFAULT_LR
from .window_ff import WindowFF

METRICS = ("nmse", "mse", "logloss", "accuracy")


def parse_learner(spec):
    """``"rtrl"``, ``"snap1"``, ``"uoro"``, ``"tbptt:16"`` (or ``"tbptt:16:4"`` with a stride), ``"window:10"``,
    ``"bidir"``; the offline rows (:func:`_parse_offline`) parse to the kind ``"bidir"``. An online Model
    learner may end in ``@L``: ``L`` stacked layers (``"rtrl@2"``, ``"tbptt:16@2"``).

    >>> parse_learner("tbptt:16@2")
    ('tbptt', {'truncation': 16, 'n_layers': 2})
    """
    base, at, layers = spec.partition("@")
    if at:
        name, kw = parse_learner(base)
        if name not in registry.names() or not layers.isdigit() or int(layers) < 1:
            raise ValueError(f"unknown learner {spec!r}: @L (L stacked layers) follows an online Model learner")
        return name, {**kw, "n_layers": int(layers)}
    name, _, arg = spec.partition(":")
    if name in registry.names():
        if not registry.get(name).windowed and not arg:
            return name, {}
        if registry.get(name).windowed and arg:
            parts = arg.split(":")
            kw = {"truncation": int(parts[0])}
            if len(parts) > 1:
                kw["stride"] = int(parts[1])
            return name, kw
    if name == "window" and arg:
        return name, {"window": int(arg)}
    if name in OFFLINE:
        return _parse_offline(spec)
    raise ValueError(
        f"unknown learner {spec!r}: use rtrl, snap1, uoro, tbptt:K[:STRIDE] (each optionally @L, L stacked layers), "
        "window:W, bidir[:LENGTH[:sum|concat]], bidir-tied[:LENGTH[:sum|concat]] or unidir[:LENGTH]"
    )


OFFLINE = ("bidir", "bidir-tied", "unidir")


def _parse_offline(spec):
    """Offline full-BPTT rows over windows of LENGTH steps (default 50), all of the kind ``"bidir"``:
    ``bidir[:LENGTH[:MERGE]]`` bidirectional (merge ``concat``, the default, or ``sum``),
    ``bidir-tied[:LENGTH[:MERGE]]`` the same with the reverse direction sharing the forward weights
    (``tie_directions``), ``unidir[:LENGTH]`` one direction (what hindsight within a window adds is the gap)."""
    name, *args = spec.split(":")
    if len(args) > (1 if name == "unidir" else 2) or (args and not args[0].isdigit()):
        raise ValueError(
            f"unknown learner {spec!r}: use {name}[:LENGTH" + ("]" if name == "unidir" else "[:sum|concat]]")
        )
    kw = {"window": int(args[0])} if args else {}
    if len(args) == 2:
        if args[1] not in ("sum", "concat"):
            raise ValueError(f"unknown learner {spec!r}: the merge is sum or concat")
        kw["merge"] = args[1]
    if name == "bidir-tied":
        kw["tie_directions"] = True
    if name == "unidir":
        kw["bidirectional"] = False
    return "bidir", kw


def score(metric, task, preds, Y, has_y):
    """The metric over the samples with targets (lower is better, but accuracy).

    Parameters
    ----------
    metric : {"nmse", "mse", "logloss", "accuracy"}
    task : {"regression", "binary", "classification"}
    preds : ndarray (N, n_outputs)
        Predictions made before each sample was learned.
    Y : ndarray (N, width)
        Targets.
    has_y : ndarray of bool (N,)
        The samples that have a target.

    Returns
    -------
    float
    """
    if not has_y.any():
        return float("nan")
    p, y = preds[has_y], Y[has_y]
    if metric in ("mse", "nmse"):
        err = float(np.mean(np.sum((p - y) ** 2, axis=1)))
        return err / float(np.mean(np.sum((y - y.mean(axis=0)) ** 2, axis=1))) if metric == "nmse" else err
    labels = y[:, 0].astype(int)
    if task == "binary":
        probs = np.column_stack([1 - p[:, 0], p[:, 0]])
    else:
        probs = p
    if metric == "accuracy":
        return float(np.mean(np.argmax(probs, axis=1) == labels))
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-300, None))))


def _peak_rss_reset():
    """Reset the kernel's peak-RSS mark for this process (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _held_state_bytes(learner):
    return learner.held_state_bytes


@dataclass
class LearnerRun:
    """One learner's run over the stream with one seed: what a row of the table is made of.

    Attributes
    ----------
    learner : str
        Its spec, as :func:`parse_learner` reads it (or a naive baseline's name).
    seed : int
        The seed of its initialisation.
    prequential : float
        The metric over every labelled sample, each predicted before it was learned.
    tail : float
        The same over the samples after ``train_fraction`` of the stream.
    steps_per_s : float
        Samples per wall-clock second of the learner's own calls.
    state_bytes_per_key : int or None
        Bytes of per-key state by the learner's layout (None: the offline learner).
    state_bytes_at_10pct, state_bytes_at_end : int
        Per-key bytes allocated at 10 % of the stream and at its end.
    peak_rss_bytes : int
        Peak resident memory of the process after the run.
    curve : list of (int, float)
        (step, metric over the preceding chunk): the learning curve.
    """

    learner: str
    seed: int
    prequential: float
    tail: float
    steps_per_s: float
    state_bytes_per_key: int  # None for the offline learner
    state_bytes_at_10pct: int
    state_bytes_at_end: int
    peak_rss_bytes: int
    curve: list = field(default_factory=list)  # (step, metric over the preceding chunk)


def _online_learner(
    name,
    kw,
    n_inputs,
    n_outputs,
    task,
    cell,
    n_hidden,
    lr,
    optimizer,
    clip,
    seed,
    dtype,
    target_lags=0,
    standardize=True,
    baseline=None,
    head_lags=None,
):
    if name == "window":
        return WindowFF(
            n_inputs=n_inputs,
            window=kw["window"],
            n_hidden=n_hidden,
            n_outputs=n_outputs,
            task=task,
            optimizer=optimizer,
            lr=lr,
            clip=clip,
            seed=seed,
            dtype=dtype,
        )
    return Model(
        cell=cell,
        n_inputs=n_inputs,
        n_hidden=n_hidden,
        n_outputs=n_outputs,
        task=task,
        learner=name,
        optimizer=optimizer,
        lr=lr,
        clip=clip,
        seed=seed,
        dtype=dtype,
        target_lags=target_lags,
        standardize=standardize,
        baseline=baseline,
        head_lags=head_lags,
        **kw,
    )


NAIVE = ("persistence", "running mean")


def naive_predictions(Y, has_y, keys, task, n_outputs):
    """Test-then-train predictions of the naive baselines, per key, in arrival order:
    ``{"persistence": ..., "running mean": ...}`` (rows without a target hold the key's
    value as it stands). Regression: persistence predicts the key's last target, the running mean
    the mean of the key's targets so far; a key with no target yet gets the running mean of all
    targets so far (0 before any). Classification and binary: the running class frequency of
    the key (Laplace-smoothed: one pseudo-count per class) for both rows, since a hard repeat of the
    last label has an unbounded log loss; persistence then predicts the key's last label with the
    probability its own record of repeats gives (the Laplace-smoothed rate at which the key's label
    equalled the previous one)."""
    n = Y.shape[0]
    keys = [None] * n if keys is None else keys
    if task == "regression":
        w = Y.shape[1]
        pers, mean = np.empty((n, w)), np.empty((n, w))
        g_sum, g_n, last, sums = np.zeros(w), 0, {}, {}
        for i in range(n):
            k = keys[i]
            g_mean = g_sum / g_n if g_n else np.zeros(w)
            pers[i] = last.get(k, g_mean)
            s, c = sums.get(k, (None, 0))
            mean[i] = s / c if c else g_mean
            if has_y[i]:
                y = Y[i]
                last[k] = y
                sums[k] = (y.copy() if s is None else s + y, c + 1)
                g_sum = g_sum + y
                g_n += 1
        return {"persistence": pers, "running mean": mean}
    n_cls = 2 if task == "binary" else n_outputs
    freq, pers = np.empty((n, n_cls)), np.empty((n, n_cls))
    counts, last, repeats = {}, {}, {}
    for i in range(n):
        k = keys[i]
        c = counts.get(k)
        if c is None:
            c = counts[k] = np.ones(n_cls)
        freq[i] = c / c.sum()
        r_same, r_all = repeats.get(k, (1.0, 2.0))
        prev = last.get(k)
        if prev is None:
            pers[i] = freq[i]
        else:
            q = r_same / r_all
            pers[i] = (1.0 - q) / max(n_cls - 1, 1)
            pers[i, prev] = q
        if has_y[i]:
            label = int(Y[i, 0])
            c[label] += 1
            if prev is not None:
                repeats[k] = (r_same + (label == prev), r_all + 1)
            last[k] = label
    if task == "binary":
        freq, pers = freq[:, 1:], pers[:, 1:]
    return {"persistence": pers, "running mean": freq}


def _naive_runs(Y, has_y, keys, task, n_outputs, metric, tail_start, n_chunks):
    runs = []
    bounds = np.linspace(0, Y.shape[0], n_chunks + 1).astype(int)
    for name, preds in naive_predictions(Y, has_y, keys, task, n_outputs).items():
        curve = [
            (int(hi), score(metric, task, preds[lo:hi], Y[lo:hi], has_y[lo:hi]))
            for lo, hi in zip(bounds[:-1], bounds[1:])
        ]
        runs.append(
            LearnerRun(
                name,
                0,
                score(metric, task, preds, Y, has_y),
                score(metric, task, preds[tail_start:], Y[tail_start:], has_y[tail_start:]),
                float("nan"),
                None,
                None,
                None,
                None,
                curve,
            )
        )
    return runs


def _run_online(spec, X, Y, keys, has_y, tail_start, metric, task, n_chunks, progress, **model_kw):
    name, kw = parse_learner(spec)
    learner = _online_learner(name, kw, X.shape[1], model_kw.pop("n_outputs"), task, **model_kw)
    learner.step_many(X[:2], Y[:2], None if keys is None else keys[:2])  # compile outside the clock
    learner = type(learner)(**learner.config)
    _peak_rss_reset()
    n = X.shape[0]
    bounds = np.linspace(0, n, n_chunks + 1).astype(int)
    preds = np.empty((n, learner.n_outputs))
    curve, elapsed, held_10 = [], 0.0, None
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        start = time.perf_counter()
        preds[lo:hi] = learner.step_many(X[lo:hi], Y[lo:hi], None if keys is None else keys[lo:hi])
        elapsed += time.perf_counter() - start
        curve.append((int(hi), score(metric, task, preds[lo:hi], Y[lo:hi], has_y[lo:hi])))
        if held_10 is None and hi >= n // 10:
            held_10 = _held_state_bytes(learner)
        if progress is not None:
            progress.update(hi - lo)
    return learner, preds, curve, elapsed, held_10


def _run_bidir(spec, X, Y, has_y, tail_start, metric, task, cell, n_hidden, lr, seed, dtype, n_outputs, epochs):
    from . import bptt  # offline mode; imported here so streaming use never pays for it

    _, kw = parse_learner(spec)
    length = kw.get("window", 50)

    def windows(lo, hi):
        T = (hi - lo) // length
        Xw = X[lo : lo + T * length].reshape(T, length, -1).transpose(1, 0, 2)
        Yw = Y[lo : lo + T * length].reshape(T, length, -1).transpose(1, 0, 2)
        Yw = np.where(has_y[lo : lo + T * length].reshape(T, length).T[:, :, None], Yw, np.nan)
        return np.ascontiguousarray(Xw), np.ascontiguousarray(Yw)

    Xtr, Ytr = windows(0, tail_start)
    start = time.perf_counter()
    _peak_rss_reset()
    fitted = bptt.fit(
        Xtr,
        Ytr,
        cell=cell,
        n_hidden=n_hidden,
        bidirectional=kw.get("bidirectional", True),
        merge=kw.get("merge", "concat"),
        tie_directions=kw.get("tie_directions", False),
        task=task,
        lr=lr,
        epochs=epochs,
        seed=seed,
        dtype=dtype,
    )
    elapsed = time.perf_counter() - start
    Xte, Yte = windows(tail_start, X.shape[0])
    p = fitted.predict(Xte)
    preds_tail = p.transpose(1, 0, 2).reshape(-1, p.shape[-1])
    n_tail = preds_tail.shape[0]
    y_tail, h_tail = Y[tail_start : tail_start + n_tail], has_y[tail_start : tail_start + n_tail]
    tail = score(metric, task, preds_tail, y_tail, h_tail)
    steps = epochs * Xtr.shape[0] * Xtr.shape[1]
    # Offline: no per-key streaming state to report.
    return LearnerRun(
        spec, seed, float("nan"), tail, steps / elapsed, None, None, None, _peak_rss_bytes(), [(X.shape[0], tail)]
    )


def run(
    X,
    Y,
    keys=None,
    learners=("rtrl", "tbptt:16", "window:10"),
    cell="gru",
    n_hidden=16,
    task="regression",
    metric=None,
    lr=DEFAULT_LR,
    optimizer="adam",
    clip=None,
    seeds=(0,),
    train_fraction=0.8,
    dtype="float64",
    n_chunks=50,
    bidir_epochs=20,
    progress=True,
    target_lags=0,
    standardize=True,
    naive=True,
    baseline=None,
    head_lags=None,
):
    """Run every learner (for every seed) over the stream ``X, Y`` and collect the runs.

    Every online learner predicts each sample before learning from it (progressive validation);
    ``bidir`` trains offline on the first ``train_fraction`` of the stream and is scored on the rest.

    Parameters
    ----------
    X : array_like
        ``(N, n_inputs)`` inputs in arrival order.
    Y : array_like
        ``(N,)`` or ``(N, width)`` targets; NaN: a row without a target.
    keys : sequence or None
        The key of each row (per-key state); None: one stream.
    learners : sequence of str
        Specs as :func:`parse_learner` reads them, e.g. ``"rtrl"``, ``"tbptt:16"``, ``"window:10"``.
    cell : str
        The recurrent cell of every Model learner.
    n_hidden : int
        Hidden units (and the window baseline's hidden width).
    task : {"regression", "binary", "classification"}
    metric : {"nmse", "mse", "logloss", "accuracy"} or None
        None: NMSE for regression, log loss otherwise.
    lr, optimizer, clip, dtype
        As :class:`streamrnn.Model` takes them, for every learner.
    seeds : sequence of int
        One run per learner and seed.
    train_fraction : float
        Where the tail metric (and the offline learner's test part) starts.
    n_chunks : int
        Points of the learning curves.
    bidir_epochs : int
        Epochs of the offline bidirectional learner.
    progress : bool
        Show a progress bar (tqdm).
    target_lags, standardize, baseline, head_lags
        As :class:`streamrnn.Model` takes them (None: the Model's default), for every Model learner;
        ``window:W`` and ``bidir`` have none of them.
    naive : bool
        Also score the naive baselines (:func:`naive_predictions`: persistence and the running mean)
        on the same samples, as rows beside the learners.

    Returns
    -------
    Comparison
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    has_y = ~np.isnan(Y[:, 0])
    metric = metric or {"regression": "nmse", "classification": "logloss", "binary": "logloss"}[task]
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")
    n_outputs = Y.shape[1] if task == "regression" else (1 if task == "binary" else int(np.nanmax(Y)) + 1)
    tail_start = int(train_fraction * X.shape[0])
    for spec in learners:
        parse_learner(spec)
    bar = None
    if progress:
        from tqdm import tqdm

        online = sum(parse_learner(s)[0] != "bidir" for s in learners)
        bar = tqdm(total=online * len(seeds) * X.shape[0], unit="step", desc="compare", leave=False)
    runs = []
    try:
        for spec in learners:
            for seed in seeds:
                if parse_learner(spec)[0] == "bidir":
                    runs.append(
                        _run_bidir(
                            spec,
                            X,
                            Y,
                            has_y,
                            tail_start,
                            metric,
                            task,
                            cell,
                            n_hidden,
                            lr,
                            seed,
                            dtype,
                            n_outputs,
                            bidir_epochs,
                        )
                    )
                    continue
                learner, preds, curve, elapsed, held_10 = _run_online(
                    spec,
                    X,
                    Y,
                    keys,
                    has_y,
                    tail_start,
                    metric,
                    task,
                    n_chunks,
                    bar,
                    cell=cell,
                    n_hidden=n_hidden,
                    lr=lr,
                    optimizer=optimizer,
                    clip=clip,
                    seed=seed,
                    dtype=dtype,
                    n_outputs=n_outputs,
                    target_lags=target_lags,
                    standardize=standardize,
                    baseline=baseline,
                    head_lags=head_lags,
                )
                runs.append(
                    LearnerRun(
                        spec,
                        seed,
                        score(metric, task, preds, Y, has_y),
                        score(metric, task, preds[tail_start:], Y[tail_start:], has_y[tail_start:]),
                        X.shape[0] / elapsed,
                        learner.state_bytes_per_key,
                        held_10,
                        _held_state_bytes(learner),
                        _peak_rss_bytes(),
                        curve,
                    )
                )
    finally:
        if bar is not None:
            bar.close()
    if naive:
        runs.extend(_naive_runs(Y, has_y, keys, task, n_outputs, metric, tail_start, n_chunks))
    return Comparison(
        runs,
        metric,
        dict(
            cell=cell,
            n_hidden=n_hidden,
            task=task,
            lr=lr,
            optimizer=optimizer,
            n_steps=int(X.shape[0]),
            train_fraction=train_fraction,
            target_lags=target_lags,
            standardize=standardize,
            baseline=baseline,
            head_lags=head_lags,
        ),
    )


def gradient_alignment(model, X, Y):
    """Cosine similarity between ``model``'s per-step gradient and exact RTRL's, along its own online run.

    Feeds ``X, Y`` to ``model`` one sample at a time (it learns exactly as with
    ``step_many``) while an exact RTRL influence matrix is carried alongside under
    the same, changing weights; returns the cosine at every labelled step (the model must be
    built with ``standardize=False`` and ``target_lags=0``). Used
    for the approximations (``snap1``, ``uoro``); an exact learner gives 1.

    Parameters
    ----------
    model : streamrnn.Model
        The learner to measure (it learns from the stream).
    X : array_like (N, n_inputs)
    Y : array_like (N,) or (N, width)

    Returns
    -------
    ndarray
        The cosine at every labelled step.
    """
    from .learners.rtrl import rtrl_sample

    if model.config["clip"] is not None:
        raise ValueError("gradient_alignment needs clip=None (clipping rescales the gradient in place)")
    if registry.get(model.learner).windowed:
        raise ValueError(f"{model.learner.upper()} applies window gradients, not per-step ones")
    if model.config["standardize"] or model.config["target_lags"]:
        raise ValueError(
            "gradient_alignment needs standardize=False and target_lags=0 (the exact RTRL run "
            "alongside sees the raw rows)"
        )
    X, Yf, has_y, _ = model.validate_rows(X, Y)
    Y_rows = np.where(has_y[:, None], Yf, np.nan)
    dims = model.dims
    exact = registry.get("rtrl")  # the dense form, for every cell (also the element-wise ones)
    ws = exact.make_workspace(dims)
    keyed = exact.new_key_state(dims)
    pred = np.empty(model.n_outputs, model.dtype)
    cosines = []
    for t in range(X.shape[0]):
        theta = model.theta.copy()
        model.step_many(X[t : t + 1], Y_rows[t : t + 1])
        rtrl_sample(
            dims.cell,
            dims.task,
            dims.n_inputs,
            dims.n_hidden,
            dims.n_outputs,
            theta,
            X[t],
            Yf[t],
            has_y[t],
            keyed,
            0,
            t,
            ws,
            pred,
        )
        if has_y[t]:
            a, e = model.last_gradient(), ws.grad
            cosines.append(float(a @ e / (np.linalg.norm(a) * np.linalg.norm(e) + 1e-300)))
    return np.array(cosines)


def _mean_std(values):
    v = np.array([x for x in values if not math.isnan(x)], dtype=float)
    return (float("nan"), float("nan")) if v.size == 0 else (float(v.mean()), float(v.std()))


@dataclass
class Comparison:
    """Every :class:`LearnerRun` of one :func:`run`, with the metric's name and the setup it ran with.

    Attributes
    ----------
    runs : list of LearnerRun
    metric : str
        ``"nmse"``, ``"mse"``, ``"logloss"`` or ``"accuracy"``.
    setup : dict
        The arguments of :func:`run` that define the experiment (cell, size, rates, seeds, ...).
    """

    runs: list
    metric: str
    setup: dict

    def summary(self):
        """One row per learner: mean and std over seeds of every measured quantity."""
        rows = []
        for spec in dict.fromkeys(r.learner for r in self.runs):
            rs = [r for r in self.runs if r.learner == spec]
            row = {"learner": spec, "seeds": len(rs)}
            for name in ("prequential", "tail", "steps_per_s"):
                row[name], row[name + "_std"] = _mean_std([getattr(r, name) for r in rs])
            for name in ("state_bytes_per_key", "state_bytes_at_10pct", "state_bytes_at_end", "peak_rss_bytes"):
                values = [getattr(r, name) for r in rs if getattr(r, name) is not None]
                row[name] = max(values) if values else None
            row["naive"] = spec in NAIVE
            if spec in NAIVE:
                row["steps_per_s"] = row["steps_per_s_std"] = None
            rows.append(row)
        return rows

    def table(self):
        """The comparison as a text table, one line per learner (mean ± std over seeds): prequential and
        tail metric, steps/s, state bytes per key, state bytes held at 10 % of the stream and at its end,
        peak RSS."""
        m = self.metric
        rows = self.summary()
        w = max([12] + [len(r["learner"]) + 2 for r in rows])  # the learner column fits the longest spec
        head = (
            f"{'learner':<{w}}{'prequential ' + m:>24}{'tail ' + m:>24}{'steps/s':>10}"
            f"{'state B/key':>12}{'held @10%':>11}{'held @end':>11}{'peak RSS MiB':>13}"
        )
        lines = [head, "-" * len(head)]
        for r in rows:
            lines.append(
                f"{r['learner']:<{w}}{_pm(r['prequential'], r['prequential_std']):>24}"
                f"{_pm(r['tail'], r['tail_std']):>24}"
                f"{'-' if r['steps_per_s'] is None else format(r['steps_per_s'], '.0f'):>10}"
                f"{_or_dash(r['state_bytes_per_key']):>12}{_or_dash(r['state_bytes_at_10pct']):>11}"
                f"{_or_dash(r['state_bytes_at_end']):>11}"
                f"{'-' if r['peak_rss_bytes'] is None else format(r['peak_rss_bytes'] / 2**20, '.1f'):>13}"
            )
        return "\n".join(lines)

    def to_json(self):
        """The comparison as one JSON-serialisable dict: metric, setup, summary and every run."""
        return {
            "metric": self.metric,
            "setup": self.setup,
            "summary": self.summary(),
            "runs": [r.__dict__ for r in self.runs],
        }

    def write(self, out_dir, plot=True):
        """``comparison.json``, ``comparison.csv`` and (with matplotlib) ``learning_curves.png``.

        Parameters
        ----------
        out_dir : str
            The folder written (created if missing).
        plot : bool
            Also draw the learning curves (needs matplotlib).
        """
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "comparison.json"), "w") as fh:
            json.dump(self.to_json(), fh, indent=1)
        rows = self.summary()
        with open(os.path.join(out_dir, "comparison.csv"), "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        if plot:
            self.plot(os.path.join(out_dir, "learning_curves.png"))

    def plot(self, path):
        """Draw each learner's prequential-loss curve to the image file ``path`` (matplotlib, Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5))
        for spec in dict.fromkeys(r.learner for r in self.runs):
            curves = np.array([[v for _, v in r.curve] for r in self.runs if r.learner == spec])
            steps = [s for s, _ in next(r for r in self.runs if r.learner == spec).curve]
            mean = np.nanmean(curves, axis=0)
            (line,) = ax.plot(steps, mean, marker="o" if len(steps) == 1 else None, label=spec)
            if curves.shape[0] > 1:
                std = np.nanstd(curves, axis=0)
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel(self.metric)
        if self.metric in ("nmse", "mse"):
            ax.set_yscale("log")
        ax.set_title(f"{self.setup['cell']} n={self.setup['n_hidden']}, {self.setup['task']}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _or_dash(value):
    return "-" if value is None else str(value)


def _pm(mean, std):
    if math.isnan(mean):
        return "-"
    return f"{mean:.4g} ± {std:.2g}"


DATASETS = {
    "add_task": ("binary", lambda n, seed: _datasets().binary_add_task(n, seed=seed)),
    "mackey_glass": ("regression", lambda n, seed: _datasets().one_step_ahead(_datasets().mackey_glass(n + 1))),
    "narma10": ("regression", lambda n, seed: _datasets().narma10(n, seed=seed)),
}


def _datasets():
    from . import datasets

    return datasets


def _lead_lag(n_steps, seed=0, lag=2):
    """``x_t ~ N(0, 1)``, ``y_t = x_{t-lag} + x_{t+lag}`` (a missing term at either end is 0): half of each
    target lies in the future, so a causal predictor's NMSE is at best 0.5, a bidirectional one's 0 (but at
    window edges). Returns ``X`` (n_steps, 1) and ``Y`` (n_steps,)."""
    x = np.random.default_rng(seed).normal(size=n_steps)
    y = np.zeros(n_steps)
    y[lag:] += x[:-lag]
    y[:-lag] += x[lag:]
    return x[:, None], y


DATASETS["lead_lag"] = ("regression", _lead_lag)  # for the offline rows: the future helps


def build_parser(parser=None):
    """The ``streamrnn compare`` options, added to ``parser`` (a new parser if None).

    Returns
    -------
    argparse.ArgumentParser
    """
    import argparse

    p = parser or argparse.ArgumentParser(prog="streamrnn compare", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="add_task",
        help="generated stream to compare on (unless --stream is given)",
    )
    p.add_argument("--steps", type=int, default=30_000, help="stream length")
    p.add_argument("--save-stream", metavar="PATH", help="also write the generated stream as a recorded stream file")
    p.add_argument("--stream", metavar="PATH", help="a recorded stream file (JSON Lines) to compare on")
    p.add_argument("--features", help="with --stream: comma-separated feature fields")
    p.add_argument("--target", default="y", help="with --stream: the target field")
    p.add_argument("--key-field", help="with --stream: the field holding the entity key (default: the line's key)")
    p.add_argument(
        "--task",
        choices=("regression", "classification", "binary"),
        help="default: regression for --stream, the dataset's own otherwise",
    )
    p.add_argument(
        "--learners",
        default="rtrl,tbptt:4,window:9",
        help="comma-separated: rtrl, snap1, uoro, tbptt:K[:STRIDE] (each optionally @L: L stacked layers), "
        "window:W, bidir[:LENGTH[:sum|concat]], bidir-tied[:LENGTH[:sum|concat]], unidir[:LENGTH]",
    )
    p.add_argument("--cell", default="gru", choices=tuple(CELL_IDS))
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="every learner's rate (default: the Model's)")
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--clip", type=float, default=None)
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
    p.add_argument("--train-fraction", type=float, default=0.8, help="the tail after it is held out")
    p.add_argument("--out", default="compare-out", help="directory for comparison.json/.csv and the plot")
    p.add_argument(
        "--target-lags",
        type=int,
        default=0,
        metavar="K",
        help="target feedback: each key's last K targets as extra inputs of the Model learners",
    )
    p.add_argument(
        "--no-standardize",
        action="store_true",
        help="turn off the Model learners' online standardisation of inputs and targets",
    )
    p.add_argument(
        "--baseline",
        choices=("last",),
        default=None,
        help="the Model learners predict the change from each key's last target (needs --target-lags >= 1)",
    )
    p.add_argument(
        "--head-lags",
        type=int,
        default=None,
        metavar="K",
        help="the Model learners' linear head over each key's last K target changes (default: the Model's, 8 for "
        "regression; 0: off, to compare the learners alone)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None, args=None):
    """``streamrnn compare``: print the table, write JSON, CSV and the learning-curve plot.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).
    args : argparse.Namespace, optional
        Already parsed arguments (``streamrnn compare`` passes them).

    Returns
    -------
    int
        0.
    """
    args = args or build_parser().parse_args(argv)
    from .datasets import read_stream, write_stream

    keys = None
    if args.stream:
        if not args.features:
            raise SystemExit("streamrnn compare: --stream needs --features")
        X, Y, keys, skipped = read_stream(args.stream, args.features.split(","), args.target, args.key_field)
        if keys is not None and all(k is None for k in keys):
            keys = None
        task = args.task or "regression"
        print(f"read {len(X)} records from {args.stream} ({skipped} unusable lines skipped)")
    else:
        task, make = DATASETS[args.dataset]
        task = args.task or task
        X, Y = make(args.steps, 0)[:2]
        if args.save_stream:
            write_stream(args.save_stream, X, Y)
            print(f"wrote the {args.dataset} stream to {args.save_stream}")
    result = run(
        X,
        Y,
        keys=keys,
        learners=[s.strip() for s in args.learners.split(",") if s.strip()],
        cell=args.cell,
        n_hidden=args.hidden,
        task=task,
        lr=args.lr,
        optimizer=args.optimizer,
        clip=args.clip,
        seeds=tuple(range(args.seeds)),
        train_fraction=args.train_fraction,
        progress=not args.no_progress,
        target_lags=args.target_lags,
        standardize=not args.no_standardize,
        baseline=args.baseline,
        head_lags=args.head_lags,
    )
    print(result.table())
    result.write(args.out)
    print(
        json.dumps(
            {
                "benchmark": "compare",
                "dataset": args.stream or args.dataset,
                **result.to_json()["setup"],
                "summary": result.summary(),
            }
        )
    )
    print(f"wrote {os.path.join(args.out, 'comparison.json')}, comparison.csv, learning_curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
