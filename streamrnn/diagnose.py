"""Gradient-flow diagnostics: how far back a cell remembers, and where gradients vanish or explode.

Two curves, both at a model's current weights, over a sequence run from a zero recurrent state:

- :func:`input_sensitivity`: ``‖∂h_{T−1} / ∂x_{T−1−k}‖_F`` for ``k = 0 … T−1``, how much the last
  hidden output still depends on the input ``k`` steps back (a vanishing curve: the cell forgets);
- :func:`gradient_flow`: ``‖∂L_t / ∂s_{t−k}‖`` for ``k = 0 … max_lag``, averaged over the labelled
  rows ``t``, the size of a loss's gradient as it travels back through the recurrent state (what
  BPTT propagates and RTRL carries forward; growing: exploding gradients, the reason for ``clip``).

``x`` is the cell's input as the Model feeds it: the features standardised with the current
statistics (:meth:`streamrnn.Model.cell_sequence`); the target-feedback columns are left out. ``h``
is what the readout sees (the first ``n_hidden`` state entries; the LSTM's ``h``, not ``c``; the top
layer's of a stack, whose ``s`` is every layer's state). Everything is reverse mode through the
cells' own backward kernels (:func:`streamrnn.cells.stack.stack_backward`, which also forms the
input gradient ``W_ih^T da_ih`` a layer passes down, :func:`streamrnn.cells.common.ih_transpose_product`):
one backward pass per hidden unit for the sensitivity, one per labelled row for the flow. Meant for
analysis, not for the hot path.

Examples
--------
>>> import numpy as np, streamrnn as sr
>>> from streamrnn import diagnose
>>> m = sr.Model(cell="gru", n_inputs=1, n_hidden=4, seed=0)
>>> curve = diagnose.input_sensitivity(m, np.random.default_rng(0).normal(size=(30, 1)))
>>> curve.shape, bool(curve[0] > curve[-1])
((30,), True)
"""

from __future__ import annotations

import time

import numpy as np

from .cells.dispatch import cache_size, n_gates, state_size
from .cells.stack import stack_backward, stack_forward
from .learners.common import readout_step

__all__ = ["input_sensitivity", "gradient_flow", "Trace"]


class Trace:
    """One sequence run forward from a zero state: the cell's inputs, every state and cache.

    Parameters
    ----------
    model : streamrnn.Model
        Whose weights (a race: its leader's) and input transformation are used; nothing changes.
    X : array_like (T, n_inputs)
        The sequence.
    Y : array_like or None
        Its targets (for the gradient-flow curve).
    key : str, int or None
        Whose target-feedback buffer the inputs are transformed with (None: a fresh key's).
    """

    def __init__(self, model, X, Y=None, key=None):
        self.model = model
        self.X, self.Y, self.learn = model.cell_sequence(X, Y, key)
        d = model.dims
        self.dims = d
        self.theta = np.ascontiguousarray(model.flat_parameters, np.float64)
        self.X = np.ascontiguousarray(self.X, np.float64)
        self.Y = np.ascontiguousarray(self.Y, np.float64)
        T = self.X.shape[0]
        self.states = np.zeros((T + 1, d.state_size))
        self.caches = np.zeros((T, d.n_layers * cache_size(d.cell, d.n_hidden)))
        self.top = (d.n_layers - 1) * state_size(d.cell, d.n_hidden)  # the readout's h in the state
        for t in range(T):
            stack_forward(
                d.cell,
                self.theta,
                d.n_inputs,
                d.n_hidden,
                self.X[t],
                self.states[t],
                self.states[t + 1],
                self.caches[t],
            )
        rows = n_gates(d.cell) * d.n_hidden
        self._da_ih, self._da_hh = np.empty(rows), np.empty(rows)
        self._grad = np.zeros(d.n_params)
        self._dx = np.zeros(max(d.n_inputs, d.n_hidden))

    def back(self, t, g_new, g_prev):
        """``g_prev = (∂s_t/∂s_{t−1})ᵀ g_new``; returns ``(∂s_t/∂x_t)ᵀ g_new`` (n_cell_inputs,; a view of
        scratch, valid until the next call). ``g_new`` is scratch for a stack."""
        d = self.dims
        stack_backward(
            d.cell,
            self.theta,
            d.n_inputs,
            d.n_hidden,
            self.X[t],
            self.states[t],
            self.states[t + 1],
            self.caches[t],
            g_new,
            g_prev,
            self._grad,
            self._da_ih,
            self._da_hh,
            self._dx,
            True,
        )
        return self._dx[: d.n_inputs]


def input_sensitivity(model, X, key=None) -> np.ndarray:
    """``‖∂h_{T−1} / ∂x_{T−1−k}‖_F`` for ``k = 0 … T−1`` (see the module docstring).

    Parameters
    ----------
    model : streamrnn.Model
        At its current weights (a race: its leader's).
    X : array_like (T, n_inputs)
        The sequence, run from a zero recurrent state.
    key : str, int or None
        Whose target-feedback buffer the inputs are transformed with (None: a fresh key's).

    Returns
    -------
    ndarray (T,)
        Entry ``k``: the Frobenius norm of the ``n_hidden × n_inputs`` Jacobian of the last hidden
        output with respect to the features ``k`` steps before it.
    """
    tr = Trace(model, X, key=key)
    d, T, m = tr.dims, tr.X.shape[0], model.n_inputs
    S = d.state_size
    sq = np.zeros(T)
    g, g_prev = np.zeros(S), np.zeros(S)
    for unit in range(d.n_hidden):  # one reverse pass per row of the Jacobian
        g[:] = 0.0
        g[tr.top + unit] = 1.0
        for t in range(T - 1, -1, -1):
            dx = tr.back(t, g, g_prev)
            sq[T - 1 - t] += float(dx[:m] @ dx[:m])
            g, g_prev = g_prev, g
    return np.sqrt(sq)


def gradient_flow(model, X, Y, max_lag=50, key=None) -> np.ndarray:
    """``‖∂L_t / ∂s_{t−k}‖`` for ``k = 0 … max_lag``, the mean over the labelled rows ``t ≥ k``
    (NaN where no row reaches lag ``k``); ``L_t`` is the row's loss in the learner's units.

    Parameters
    ----------
    model : streamrnn.Model
    X, Y : array_like
        The sequence (run from a zero state) and its targets (NaN or None: no target).
    max_lag : int
        Longest lag measured.
    key : str, int or None
        As for :func:`input_sensitivity`.
    """
    tr = Trace(model, X, Y, key=key)
    d, T = tr.dims, tr.X.shape[0]
    S, n = d.state_size, d.n_hidden
    total, count = np.zeros(max_lag + 1), np.zeros(max_lag + 1)
    logits, pred, dlogits = np.zeros(d.n_outputs), np.zeros(d.n_outputs), np.zeros(d.n_outputs)
    scratch, g_h = np.zeros(d.n_params), np.zeros(n)
    g, g_prev = np.zeros(S), np.zeros(S)
    for t in range(T):
        if not tr.learn[t]:
            continue
        h = tr.states[t + 1, tr.top :]
        readout_step(
            d.task,
            tr.theta,
            d.n_params_cell,
            n,
            d.n_outputs,
            h,
            tr.X[t],
            tr.Y[t],
            True,
            logits,
            pred,
            dlogits,
            scratch,
            g_h,
        )
        g[:] = 0.0
        g[tr.top : tr.top + n] = g_h
        for k in range(min(max_lag, t) + 1):
            total[k] += float(np.sqrt(g @ g))
            count[k] += 1
            if k < min(max_lag, t):
                tr.back(t - k, g, g_prev)
                g, g_prev = g_prev, g
    with np.errstate(invalid="ignore"):
        return total / count


# ---------------------------------------------------------------------------------------------- command
def curves(X, Y, task, cells=("rnn", "gru", "lstm"), n_hidden=16, window=50, max_lag=None, seed=0, **model_kw):
    """Per cell: a Model trained test-then-train on all rows but the last ``window``, then both curves
    on those last rows. Returns ``{cell: (sensitivity (window,), flow (max_lag + 1,))}``.

    Parameters
    ----------
    X : array_like (N, n_inputs)
        The stream's inputs, in order (one sequence).
    Y : array_like (N,) or (N, width)
        Its targets; NaN: no target.
    task : {"regression", "binary", "classification"}
    cells : sequence of str
        The cells to compare.
    n_hidden : int
        Hidden units of each.
    window : int
        The last rows the curves are measured on (the model learns from the rows before them).
    max_lag : int or None
        Longest lag of the gradient-flow curve (None: ``window - 1``).
    seed : int
        Seed of every model.
    **model_kw
        Other :class:`streamrnn.Model` keywords.

    Returns
    -------
    dict
        ``{cell: (input sensitivity (window,), gradient flow (max_lag + 1,))}``.
    """
    from .model import Model

    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    if X.ndim == 1:
        X = X[:, None]
    window = min(window, len(X))
    max_lag = window - 1 if max_lag is None else max_lag
    out = {}
    for cell in cells:
        m = Model(cell=cell, n_inputs=X.shape[1], n_hidden=n_hidden, task=task, seed=seed, **model_kw)
        if len(X) > window:
            m.step_many(X[:-window], Y[:-window])
        out[cell] = (input_sensitivity(m, X[-window:]), gradient_flow(m, X[-window:], Y[-window:], max_lag=max_lag))
    return out


def write_curves(result, out_dir):
    """``diagnose.csv`` (lag, then each cell's two curves) and, with matplotlib, ``diagnose.png``.

    Parameters
    ----------
    result : dict
        What :func:`curves` returns.
    out_dir : str
        The folder written (created if missing).

    Returns
    -------
    list of str
        The files written.
    """
    import csv
    import os

    os.makedirs(out_dir, exist_ok=True)
    cells = list(result)
    n = max(max(len(s), len(f)) for s, f in result.values())
    csv_path = os.path.join(out_dir, "diagnose.csv")
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["lag"] + [f"{c}_input_sensitivity" for c in cells] + [f"{c}_gradient_flow" for c in cells])
        for k in range(n):
            row = [k]
            row += [f"{result[c][0][k]:.6g}" if k < len(result[c][0]) else "" for c in cells]
            row += [f"{result[c][1][k]:.6g}" if k < len(result[c][1]) else "" for c in cells]
            w.writerow(row)
    paths = [csv_path]
    try:
        import matplotlib
    except ImportError:
        return paths
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for c in cells:
        s, f = result[c]
        axes[0].semilogy(np.arange(len(s)), np.maximum(s, 1e-300), label=c)
        axes[1].semilogy(np.arange(len(f)), np.maximum(f, 1e-300), label=c)
    axes[0].set(title="input sensitivity ‖∂h_T / ∂x_{T−k}‖", xlabel="k (steps back)")
    axes[1].set(title="gradient flow ‖∂L_t / ∂s_{t−k}‖ (mean over t)", xlabel="k (steps back)")
    for ax in axes:
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    png = os.path.join(out_dir, "diagnose.png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return paths + [png]


def rows_from_config(path, max_records=0, idle_seconds=5.0):
    """The rows of a daemon config's source, read and decoded as the daemon would (its connector and
    its :class:`~streamrnn.service.Decoder`), of one key: ``(X, Y, task, n_hidden, n_bad)``.

    The curves are of one sequence, so on a keyed stream the rows are those of the key with the most
    rows (the first such key on a tie).

    A file or replay source is read to its end; a Kafka topic until ``idle_seconds`` pass without a
    record. ``max_records`` > 0 stops after that many records. Records the daemon would dead-letter
    are skipped and counted (``n_bad``). ``task`` and ``n_hidden`` are the config's [model] ones.
    ConfigError if the config is not valid or no record is usable.
    """
    import inspect

    from .model import Model
    from .service import BadRecord, ConfigError, Decoder, load_config, make_source

    cfg = load_config(path)
    decoder = Decoder(cfg["schema"], cfg["model"], cfg["daemon"]["max_record_bytes"])
    section = {**cfg["source"], "speed": 0.0} if cfg["source"]["type"] == "replay" else cfg["source"]
    source = make_source(section, cfg["daemon"]["max_record_bytes"])
    rows, n_bad, n_read, idle_since = {}, 0, 0, time.monotonic()
    try:
        while not max_records or n_read < max_records:
            records = source.poll(1000 if not max_records else min(1000, max_records - n_read), timeout=0.2)
            if records:
                idle_since = time.monotonic()
            elif getattr(source, "exhausted", False) or time.monotonic() - idle_since > idle_seconds:
                break
            for record in records:
                n_read += 1
                try:
                    x, y, key, _ = decoder.decode(record)
                except BadRecord:
                    n_bad += 1
                    continue
                rows.setdefault(key, []).append((x, y))
    finally:
        source.close()
    if not rows:
        raise ConfigError(f"{path}: the source gave no usable record ({n_bad} bad)")
    longest = max(rows.values(), key=len)
    X, Y = [x for x, _ in longest], [y for _, y in longest]
    defaults = inspect.signature(Model).parameters  # [model] holds Model's keywords; absent: Model's default
    model = {name: cfg["model"].get(name, defaults[name].default) for name in ("task", "n_hidden")}
    Y = np.array(Y, np.float64).reshape(len(Y), -1)
    return np.array(X, np.float64), Y, model["task"], model["n_hidden"], n_bad


def build_parser(parser=None):
    """The ``streamrnn diagnose`` options, added to ``parser`` (a new parser if None).

    Returns
    -------
    argparse.ArgumentParser
    """
    import argparse

    from .compare import DATASETS

    p = parser or argparse.ArgumentParser(prog="streamrnn diagnose", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="add_task", help="generated stream (no --stream)")
    p.add_argument("--steps", type=int, default=5_000, help="generated stream length")
    p.add_argument("--stream", metavar="PATH", help="a recorded stream file (JSON Lines)")
    p.add_argument(
        "--config",
        metavar="TOML",
        help="a daemon config: its source, read and decoded as the daemon does (schema features, target), "
        "and its [model] task and n_hidden",
    )
    p.add_argument("--max-records", type=int, default=0, help="with --config: read at most this many records")
    p.add_argument("--features", help="with --stream: comma-separated feature fields")
    p.add_argument("--target", default="y", help="with --stream: the target field")
    p.add_argument("--task", choices=("regression", "classification", "binary"), help="default: the stream's")
    p.add_argument("--cells", default="rnn,gru,lstm", help="comma-separated cells to draw")
    p.add_argument("--hidden", type=int, default=None, help="hidden units (default: the config's, else 16)")
    p.add_argument("--window", type=int, default=50, help="the last rows the curves are measured on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="diagnose-out", help="directory for diagnose.csv and diagnose.png")
    return p


def main(argv=None, args=None):
    """``streamrnn diagnose``: train each cell on the stream, then write both curves (CSV, PNG).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).
    args : argparse.Namespace, optional
        Already parsed arguments (``streamrnn diagnose`` passes them).

    Returns
    -------
    int
        0.
    """
    from .compare import DATASETS
    from .datasets import read_stream

    args = args or build_parser().parse_args(argv)
    hidden = 16
    if args.config:
        X, Y, task, hidden, n_bad = rows_from_config(args.config, args.max_records)
        task = args.task or task
        print(f"{args.config}: {len(X)} rows of the longest key ({n_bad} records the daemon would dead-letter skipped)")
    elif args.stream:
        if not args.features:
            raise SystemExit("streamrnn diagnose: --stream needs --features")
        X, Y, _, _ = read_stream(args.stream, args.features.split(","), args.target)
        task = args.task or "regression"
    else:
        task, make = DATASETS[args.dataset]
        task = args.task or task
        X, Y = make(args.steps, args.seed)[:2]
    hidden = args.hidden or hidden
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    result = curves(X, Y, task, cells, n_hidden=hidden, window=args.window, seed=args.seed)
    for c, (s, f) in result.items():
        far = next((k for k in range(len(s)) if s[k] < 1e-3 * s[0]), None)
        print(
            f"{c:>6}: sensitivity at lag 0 {s[0]:.3g}, lag 10 {s[min(10, len(s) - 1)]:.3g}; "
            f"below 1e-3 of lag 0 from lag {far if far is not None else '>' + str(len(s) - 1)}; "
            f"gradient at lag 0 {f[0]:.3g}, lag 10 {f[min(10, len(f) - 1)]:.3g}"
        )
    for path in write_curves(result, args.out):
        print(f"wrote {path}")
    return 0
