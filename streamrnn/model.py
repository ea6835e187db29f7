"""``Model``: a recurrent cell, a linear readout, a loss, a learner and an optimizer.

The Model owns every array (parameters, optimizer state, per-key recurrent
state and influence matrices, scratch) and hands them to compiled kernels; it
does no arithmetic per sample in Python.
"""
import math

import numpy as np

from . import checkpoint
from .cells.common import n_cell_params
from .cells.dispatch import CELL_IDS, ELEMENTWISE, cache_size, n_gates, recurrent_width, state_size
from .keyed_state import KeyedState, normalize_key
from .learners import rtrl as _rtrl
from .learners import snap1 as _snap1
from .learners import tbptt as _tbptt
from .learners import uoro as _uoro
from .learners.bptt import bptt_sequence_gradient
from .learners.common import (INFLUENCE_RESETS, N_COUNTERS, REJECTED_STATE, SKIPPED_NONFINITE, STEPS, UPDATES,
                               predict_from_state)
from .losses import TASK_IDS
from .optim import OPTIMIZER_IDS
from .preprocess import Preprocessor
from .validation import (DTYPES, check_inputs, check_seed, check_targets, check_task_outputs, choice,
                         optimizer_settings, positive_int, target_width)

__all__ = ["Model"]

LEARNERS = ("rtrl", "snap1", "uoro", "tbptt")
GRADIENT_METHODS = ("rtrl", "snap1", "uoro", "bptt", "tbptt")
_INFLUENCE_LEARNERS = ("rtrl", "snap1")


def _per_unit(method, cell_id):
    """Whether ``method`` runs on SnAp-1's per-unit influence: SnAp-1 itself, and exact RTRL for the
    element-wise cells, whose influence matrix has no other non-zero entries (O(P) instead of O(nP))."""
    return method == "snap1" or cell_id in ELEMENTWISE
_FORMAT_KIND = "streamrnn.Model"
# What a checkpoint written before an option existed implies for it.
_OLD_DEFAULTS = {"readout_skip": False, "target_lags": 0, "standardize": False}


class Model:
    """A recurrent model that predicts, then learns, one sample at a time.

    Parameters
    ----------
    cell : {"rnn", "gru", "lstm", "ernn", "egru", "elstm", "dlru"}
        Recurrent cell, with PyTorch's equations, gate order and parameter names.
        The ``e`` cells are element-wise: one recurrent weight per gate row, on
        its own unit (``weight_hh_l0`` of shape (G·n,)); exact RTRL for them
        costs O(P) per step, like SnAp-1, and is what ``"rtrl"`` runs.
        ``"dlru"`` is a diagonal linear recurrent unit with a tanh readout,
        ``s' = σ(ν) ⊙ s + W_ih x + b_ih + b_hh``, ``h' = tanh(s')``, with the
        decay logits ν in ``weight_hh_l0`` (n,); element-wise as well.
    n_inputs, n_hidden, n_outputs : int
        Input width, hidden units, readout width (number of classes for
        ``task="classification"``, 1 for ``"binary"``).
    task : {"regression", "classification", "binary"}
        Per-step loss: ½‖ŷ − y‖², softmax cross-entropy, or logistic loss.
    learner : {"rtrl", "snap1", "uoro", "tbptt"}
        How gradients are obtained online. ``"rtrl"`` is exact Real-Time
        Recurrent Learning: O(S·P) memory per key, constant in stream length,
        O(G n² P) time per step. ``"snap1"`` is SnAp-1: each unit tracks only
        its own parameters' influence, O(S·P/n) memory and O(P) time per step,
        approximate (exact when the recurrent weights are diagonal). ``"uoro"``
        is UORO: an unbiased rank-one estimate of the influence matrix,
        O(S + P) memory and O(P) time per step, noisy.
        ``"tbptt"`` is truncated BPTT: every ``stride`` steps of a key, the
        losses of those steps are backpropagated through the last
        ``truncation`` steps; O(truncation·(S + inputs)) memory per key.
    truncation, stride : int, only for ``learner="tbptt"``
        Window length k and update stride h (1 <= h <= k; default h = k).
    optimizer : {"adam", "sgd"}
    lr : float
    clip : float or None
        Global gradient-norm clipping per update (as ``clip_grad_norm_``).
    seed : int
        Seeds PyTorch-style initialisation, U(−1/√n, 1/√n) for every parameter.
    dtype : {"float64", "float32"}
    max_keys : int
        Most keys holding a recurrent state at once. A new key beyond that evicts
        the least recently used key, whose state is dropped (it restarts from
        zero if it comes back). Memory grows with the keys actually seen.
    betas, eps, momentum, weight_decay : optimizer hyper-parameters (PyTorch meaning).
    readout_skip : bool
        Let the readout also see the step's input: ``ŷ = W_out h + S x + b_out``
        with ``S = readout.skip_weight`` (n_outputs, n_inputs), which starts at
        zero (so the model starts as the same-seed model without it). The
        recurrent net then learns what a linear model of ``x`` leaves over.
        ``S x`` does not depend on ``h``, so every learner's gradient for ``S``
        is exact and local in time.
    target_lags : int >= 0
        Target feedback (NARX): the key's last ``k`` targets are appended to its inputs
        (:mod:`streamrnn.narx`): the cell sees ``[x, lag_1 … lag_k, observed_1 … observed_k]``,
        ``n_inputs + k·(w + 1)`` columns, ``w`` = n_outputs (regression; classification, the
        label one-hot) or 1 (binary). ``weight_ih_l0`` (and ``readout.skip_weight``) have that
        many columns; ``n_inputs`` stays the width of the features you pass. Per-key, reset with
        the hidden state, checkpointed.
    standardize : bool
        Online standardisation (:mod:`streamrnn.standardize`, :mod:`streamrnn.preprocess`):
        running mean/variance of every input and regression target, winsorised against outlier
        bursts, global (shared by all keys), checkpointed. The network sees standardised inputs
        and learns standardised targets; predictions and reported losses are in the target's units.

    Predictions are ŷ for regression, class probabilities for classification
    and P(y = 1) for binary, always as an array of ``n_outputs`` values.

    Examples
    --------
    >>> import numpy as np, streamrnn as sr
    >>> m = sr.Model(cell="gru", n_inputs=2, n_hidden=4, n_outputs=1, lr=0.01, seed=1)
    >>> m.step([0.5, -1.0], y=[0.25]).shape
    (1,)
    >>> m.step_many(np.zeros((3, 2)), keys=["a", "b", "a"]).shape
    (3, 1)
    >>> sorted(m.keys, key=str)
    [None, 'a', 'b']
    """

    def __init__(self, cell="gru", n_inputs=1, n_hidden=16, n_outputs=1, task="regression",
                 learner="rtrl", optimizer="adam", lr=1e-3, clip=None, seed=0, dtype="float64",
                 max_keys=1024, betas=(0.9, 0.999), eps=1e-8, momentum=0.0, weight_decay=0.0,
                 truncation=None, stride=None, readout_skip=False, target_lags=0, standardize=True):
        choice("cell", cell, tuple(CELL_IDS))
        choice("task", task, tuple(TASK_IDS))
        choice("learner", learner, LEARNERS)
        choice("dtype", dtype, DTYPES)
        n_inputs = positive_int("n_inputs", n_inputs)
        n_hidden = positive_int("n_hidden", n_hidden)
        n_outputs = positive_int("n_outputs", n_outputs)
        max_keys = positive_int("max_keys", max_keys)
        if learner == "tbptt":
            if truncation is None:
                raise ValueError("learner='tbptt' needs truncation=k (a positive integer)")
            truncation = positive_int("truncation", truncation)
            stride = truncation if stride is None else positive_int("stride", stride)
            if stride > truncation:
                raise ValueError(f"stride must be <= truncation; got stride={stride}, truncation={truncation}")
        elif truncation is not None or stride is not None:
            raise ValueError(f"truncation and stride apply to learner='tbptt' only, not {learner!r}")
        check_task_outputs(task, n_outputs)
        opt_config, self.hyper = optimizer_settings(optimizer, lr, clip, betas, eps, momentum, weight_decay)
        seed = check_seed(seed)
        if isinstance(target_lags, bool) or not isinstance(target_lags, (int, np.integer)) or target_lags < 0:
            raise ValueError(f"target_lags must be an integer >= 0; got {target_lags!r}")
        target_lags = int(target_lags)

        self.config = dict(cell=cell, n_inputs=n_inputs, n_hidden=n_hidden, n_outputs=n_outputs,
                           task=task, learner=learner, seed=seed, dtype=dtype, max_keys=max_keys,
                           truncation=truncation, stride=stride, readout_skip=bool(readout_skip),
                           target_lags=target_lags, standardize=bool(standardize), **opt_config)
        self._cell = CELL_IDS[cell]
        self._task = TASK_IDS[task]
        self._opt = OPTIMIZER_IDS[optimizer]
        self.dtype = np.dtype(dtype)
        self.n_inputs, self.n_hidden, self.n_outputs = n_inputs, n_hidden, n_outputs
        self.max_keys = max_keys
        self._pre = Preprocessor(self._task, n_inputs, n_outputs, target_lags, standardize, self.dtype)
        self.n_cell_inputs = n_cell_inputs = self._pre.n_cell_inputs   # n_inputs + the target-feedback columns
        self._gates = n_gates(self._cell)
        self._state_size = state_size(self._cell, n_hidden)
        self._rec = recurrent_width(self._cell, n_hidden)
        self.n_params_cell = n_cell_params(self._gates, n_cell_inputs, n_hidden, self._rec)
        self.readout_skip = bool(readout_skip)
        self.n_params = self.n_params_cell + n_outputs * (n_hidden + 1 + (n_cell_inputs if self.readout_skip else 0))

        self.theta = self._initial_parameters(int(seed))
        self.opt_state = np.zeros((2, self.n_params), self.dtype)
        self.counters = np.zeros(N_COUNTERS, np.int64)
        self.learner, self.truncation, self.stride = learner, truncation, stride
        self._keyed = KeyedState(self._per_key_layout(), max_keys)
        if learner in _INFLUENCE_LEARNERS:
            self._ws = self._influence_workspace(learner)
        elif learner == "uoro":
            self._ws = _uoro.make_workspace(self._cell, n_cell_inputs, n_hidden, n_outputs, self.n_params_cell,
                                            self.n_params, self.dtype)
        else:
            self._ws = _tbptt.make_workspace(self._cell, n_cell_inputs, n_hidden, n_outputs, self.n_params, self.dtype)

    # ------------------------------------------------------------------ layout
    def _layout(self):
        """(name, shape) of each parameter block, in the order of the flat vector."""
        G, n, m, o = self._gates, self.n_hidden, self.n_cell_inputs, self.n_outputs
        hh_shape = (G * n,) if self._cell in ELEMENTWISE else (G * n, n)
        blocks = [("weight_ih_l0", (G * n, m)), ("weight_hh_l0", hh_shape),
                  ("bias_ih_l0", (G * n,)), ("bias_hh_l0", (G * n,)),
                  ("readout.weight", (o, n)), ("readout.bias", (o,))]
        return (blocks + [("readout.skip_weight", (o, m))]) if self.readout_skip else blocks

    def _influence_workspace(self, method):
        """Scratch of one RTRL ("rtrl") or SnAp-1 ("snap1") step for this model."""
        if _per_unit(method, self._cell):
            return _snap1.make_workspace(self._cell, self.n_cell_inputs, self.n_hidden, self.n_outputs, self.n_params,
                                         self.dtype)
        return _rtrl.make_workspace(self._cell, self.n_cell_inputs, self.n_hidden, self.n_outputs, self.n_params_cell,
                                    self.n_params, self.dtype)

    def _initial_parameters(self, seed):
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.n_hidden)   # PyTorch's RNN init; nn.Linear(n, o) has the same bound
        n_skip = self.n_outputs * self.n_cell_inputs if self.readout_skip else 0
        theta = np.zeros(self.n_params, self.dtype)
        theta[:self.n_params - n_skip] = rng.uniform(-bound, bound, self.n_params - n_skip)
        return theta

    def get_weights(self):
        """Copies of the parameters as a dict of arrays with PyTorch's names and shapes."""
        out, pos = {}, 0
        for name, shape in self._layout():
            size = int(np.prod(shape))
            out[name] = self.theta[pos:pos + size].reshape(shape).copy()
            pos += size
        return out

    def set_weights(self, weights):
        """Replace every parameter; ``weights`` must hold exactly the names of ``get_weights()``."""
        layout = self._layout()
        expected = {name for name, _ in layout}
        if set(weights) != expected:
            missing, extra = expected - set(weights), set(weights) - expected
            raise ValueError(f"set_weights: missing {sorted(missing)}, unexpected {sorted(extra)}")
        new = np.empty_like(self.theta)
        pos = 0
        for name, shape in layout:
            arr = np.asarray(weights[name], dtype=np.float64)
            if arr.shape != shape:
                raise ValueError(f"set_weights: {name} has shape {arr.shape}, expected {shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"set_weights: {name} contains NaN or inf")
            new[pos:pos + arr.size] = arr.ravel()
            pos += arr.size
        self.theta[:] = new

    # ------------------------------------------------------------------ input checks
    def _inputs(self, X):
        return check_inputs(X, self.n_inputs, self.dtype)

    def _targets(self, Y, n_rows):
        return check_targets(Y, n_rows, self._task, self.n_outputs, self.dtype)

    # ------------------------------------------------------------------ per-key state
    def _per_key_layout(self):
        """(name, shape, dtype) of each array a key owns: the learner's, then target feedback's."""
        learner = self._learner_layout()
        self._learner_arrays = [name for name, _, _ in learner]
        return learner + self._pre.per_key_layout()

    def _learner_layout(self):
        """(name, shape, dtype) of each array a key owns for the chosen learner."""
        S, dt = self._state_size, self.dtype
        if self.learner in _INFLUENCE_LEARNERS:
            width = (_snap1.influence_width(self._cell, self.n_cell_inputs, self.n_hidden)
                     if _per_unit(self.learner, self._cell) else self.n_params_cell)
            return [("hidden", (S,), dt), ("influence", (S, width), dt)]
        if self.learner == "uoro":
            return [("hidden", (S,), dt), ("uoro_state", (S,), dt), ("uoro_params", (self.n_params_cell,), dt)]
        k = self.truncation
        return [("hidden", (S,), dt), ("window_inputs", (k, self.n_cell_inputs), dt), ("window_states", (k, S), dt),
                ("window_caches", (k, cache_size(self._cell, self.n_hidden)), dt),
                ("window_targets", (k, target_width(self._task, self.n_outputs)), dt), ("window_has_target", (k,), np.dtype(np.bool_)),
                ("window_count", (), np.dtype(np.int64))]

    @property
    def _H(self):
        return self._keyed.arrays["hidden"]

    @property
    def keys(self):
        """Keys holding a state, least recently used first."""
        return self._keyed.keys

    def forget(self, key=None):
        """Drop the recurrent state of ``key`` (it restarts from zero if it comes back)."""
        self._keyed.forget(normalize_key(key))

    @property
    def state_bytes_per_key(self):
        """Bytes of learner state held per key (state plus influence matrix, or the TBPTT window)."""
        return self._keyed.bytes_per_key

    # ------------------------------------------------------------------ streaming
    def step(self, x, y=None, key=None):
        """Predict for one sample, then learn from ``y`` if given; returns the prediction."""
        return self.step_many(np.asarray(x)[None, :] if np.ndim(x) == 1 else x,
                              None if y is None else [y], None if key is None else [key])[0]

    def step_many(self, X, Y=None, keys=None, return_loss=False):
        """Test-then-train over many samples in arrival order, in one compiled call.

        ``X`` is ``(n_samples, n_inputs)``; ``Y`` holds a target per sample (NaN or
        None where there is none); ``keys`` a key per sample, each key with its
        own recurrent state. Returns the predictions made before each sample's
        update, ``(n_samples, n_outputs)``; with ``return_loss`` also the loss per
        sample (NaN where no target). Bad samples raise ``ValueError`` and nothing
        in the batch is applied.
        """
        X = self._inputs(X)
        n_rows = X.shape[0]
        Y, has_y = self._targets(Y, n_rows)
        if keys is not None and len(keys) != n_rows:
            raise ValueError(f"keys has {len(keys)} entries for {n_rows} samples")
        if keys is not None:
            keys = [normalize_key(k) for k in keys]   # validate all before any state changes
        out = np.empty((n_rows, self.n_outputs), self.dtype)
        losses = np.empty(n_rows, self.dtype)
        self._apply(X, Y, has_y, keys, out, losses)
        return (out, losses) if return_loss else out

    @property
    def _gradient_buffer(self):
        """The workspace array holding the gradient of the last labelled step (before clipping
        if ``clip`` is None); used by analysis tools, not part of the stable API."""
        return self._ws[{"rtrl": 6, "snap1": 6, "uoro": 12, "tbptt": 11}[self.learner]]

    def _apply(self, X, Y, has_y, keys, out, losses):
        """Run validated rows through the learner: ``X`` (N, n_inputs) and ``Y`` (N, width) C-contiguous
        in this model's dtype, ``has_y`` bool (N,), ``keys`` normalised or None; predictions go to
        ``out`` (N, n_outputs), losses to ``losses`` (N,). The one path every caller shares
        (``step_many``, and the river estimators' preallocated one-sample path)."""
        slots, reset = self._keyed.assign(keys, X.shape[0])
        pre = self._pre
        if pre.active:     # standardise, append target feedback (changes nothing the learner owns)
            Y_raw, has_y_raw = Y, has_y
            X, Y, has_y, y_ls = pre.prepare(X, Y, has_y, slots, reset, self._keyed.arrays)
        common = (self._opt, self.n_cell_inputs, self.n_hidden, self.n_outputs,
                  self.theta, self.opt_state, self.hyper, self.counters)
        per_key = [self._keyed.arrays[name] for name in self._learner_arrays]
        if self.learner in _INFLUENCE_LEARNERS:
            step_many = _snap1.snap1_step_many if _per_unit(self.learner, self._cell) else _rtrl.rtrl_step_many
            step_many(self._cell, self._task, *common, *per_key, X, Y, has_y, slots, reset, self._ws, out, losses)
        elif self.learner == "uoro":
            _uoro.uoro_step_many(self._cell, self._task, *common, self.config["seed"], *per_key,
                                 X, Y, has_y, slots, reset, self._ws, out, losses)
        else:
            _tbptt.tbptt_step_many(self._cell, self._task, *common, *per_key, self.stride,
                                   X, Y, has_y, slots, reset, self._ws, out, losses)
        if pre.active:     # predictions and losses back in the target's units
            pre.finish(Y_raw, has_y_raw, y_ls, out, losses)

    def peek(self, x, key=None):
        """The prediction ``step(x, key=key)`` would return, changing nothing."""
        X = self._inputs(x)
        if X.shape[0] != 1:
            raise ValueError("peek takes one sample")
        key = normalize_key(key)
        s = self._keyed.row("hidden", key)
        if s is None:
            s = np.zeros(self._state_size, self.dtype)
        x = X[0]
        if self._pre.active:   # on copies of the statistics and of the key's lag buffer
            lags = (self._keyed.row("lag_values", key), self._keyed.row("lag_observed", key)) if self._pre.k else ()
            x, y_ls = self._pre.peek_row(X, *lags)
        pred = np.empty(self.n_outputs, self.dtype)
        predict_from_state(self._cell, self._task, self.n_cell_inputs, self.n_hidden, self.n_outputs,
                           self.theta, self.n_params_cell, x, s, pred)
        if self._pre.finishes:
            pred[:] = y_ls[0, 0] + y_ls[1, 0] * pred
        return pred

    def hidden_state(self, key=None):
        """A copy of the recurrent state of ``key`` (zeros if it has none)."""
        s = self._keyed.row("hidden", normalize_key(key))
        return np.zeros(self._state_size, self.dtype) if s is None else s.copy()

    @property
    def stats(self):
        """Counts of applied steps, updates, skipped non-finite updates, rejected samples
        (non-finite state: nothing changed) and influence matrices zeroed after overflow."""
        c = self.counters
        return {"steps": int(c[STEPS]), "updates": int(c[UPDATES]),
                "skipped_nonfinite": int(c[SKIPPED_NONFINITE]), "rejected_nonfinite_state": int(c[REJECTED_STATE]),
                "influence_resets": int(c[INFLUENCE_RESETS])}

    # ------------------------------------------------------------------ offline gradients
    def gradient(self, X, Y, method="rtrl", truncation=None, stride=None, seed=None):
        """``Σ_t dL_t/dθ`` over one sequence from a zero state, at the current weights, no update.

        ``method`` is ``"rtrl"``, ``"snap1"`` or ``"uoro"`` (approximations; UORO's
        random signs from ``seed``, default the model's), ``"bptt"`` or ``"tbptt"`` (window ``truncation``,
        default this model's, and ``stride``, default the truncation: the sum of
        the gradients TBPTT would apply, the last partial stride included). The
        result is keyed like ``get_weights()``.
        """
        if method not in GRADIENT_METHODS:
            raise ValueError(f"method must be one of {GRADIENT_METHODS}; got {method!r}")
        if method == "tbptt":
            k = truncation if truncation is not None else self.truncation
            if k is None or int(k) < 1:
                raise ValueError("method='tbptt' needs truncation=k (a positive integer)")
            h = int(k) if stride is None else int(stride)
            if not 1 <= h <= int(k):
                raise ValueError(f"stride must be in [1, truncation]; got {stride}")
        X = self._inputs(X)
        Y, has_y = self._targets(Y, X.shape[0])
        if self._pre.active:   # a fresh key's inputs and standardised targets; statistics not committed
            X, Y, has_y, _ = self._pre.transform_sequence(X, Y, has_y)
        grad = np.zeros(self.n_params, self.dtype)
        args = (self._cell, self._task, self.n_cell_inputs, self.n_hidden, self.n_outputs, self.theta)
        if method in _INFLUENCE_LEARNERS:
            sequence_gradient = (_snap1.snap1_sequence_gradient if _per_unit(method, self._cell)
                                 else _rtrl.rtrl_sequence_gradient)
            sequence_gradient(*args, X, Y, has_y, self._influence_workspace(method), grad)
        elif method == "uoro":
            ws = _uoro.make_workspace(self._cell, self.n_cell_inputs, self.n_hidden, self.n_outputs,
                                      self.n_params_cell, self.n_params, self.dtype)
            _uoro.uoro_sequence_gradient(*args, X, Y, has_y, self.config["seed"] if seed is None else int(seed),
                                         ws, grad)
        elif method == "tbptt":
            ws = _tbptt.make_workspace(self._cell, self.n_cell_inputs, self.n_hidden, self.n_outputs,
                                       self.n_params, self.dtype)
            _tbptt.tbptt_sequence_gradient(*args, X, Y, has_y, int(k), h, ws, grad)
        else:
            bptt_sequence_gradient(*args, self.n_params_cell, X, Y, has_y,
                                   np.zeros(self._state_size, self.dtype), grad)
        return self._unflatten(grad)

    def _unflatten(self, flat):
        out, pos = {}, 0
        for name, shape in self._layout():
            size = int(np.prod(shape))
            out[name] = flat[pos:pos + size].reshape(shape).copy()
            pos += size
        return out

    # ------------------------------------------------------------------ persistence
    def state_arrays(self):
        """Everything needed to continue bit-identically, as ``(arrays, meta)``."""
        keys, per_key = self._keyed.export()
        arrays = {"theta": self.theta, "opt_state": self.opt_state, "counters": self.counters, **per_key,
                  **self._pre.state_arrays()}
        meta = {"kind": _FORMAT_KIND, "config": self.config, "keys": keys}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays, meta, source="<state>"):
        if meta.get("kind") != _FORMAT_KIND:
            raise checkpoint.CheckpointError(f"{source}: not a streamrnn Model (kind {meta.get('kind')!r})")
        model = cls(**{**_OLD_DEFAULTS, **meta["config"]})
        model.load_state(arrays, meta, source)
        return model

    def allocate_for_load(self, name, shape, dtype):
        """Destination of array ``name`` of a checkpoint about to be restored into this model
        (``checkpoint.load(path, allocate=model.allocate_for_load)``): per-key arrays are read
        straight into memory that :meth:`load_state` then adopts, so restoring many keys holds
        their state once; None for the rest (read into new arrays)."""
        return self._keyed.allocate(name, shape, dtype)

    def load_state(self, arrays, meta, source="<state>"):
        """Restore from ``state_arrays()`` output; the configuration must match this model's."""
        saved = meta.get("config")
        if isinstance(saved, dict):
            saved = {**_OLD_DEFAULTS, **saved}   # files from before the options existed
        if meta.get("kind") != _FORMAT_KIND or saved != self.config:
            raise checkpoint.CheckpointError(
                f"{source}: the saved model has another configuration ({meta.get('config')}) "
                f"than this one ({self.config})")
        for name, shape in (("theta", self.theta.shape), ("opt_state", self.opt_state.shape),
                            ("counters", self.counters.shape)):
            if name not in arrays or arrays[name].shape != shape:
                raise checkpoint.CheckpointError(f"{source}: array {name!r} missing or of the wrong shape")
        self._pre.check_state(arrays, source, checkpoint.CheckpointError)
        self._keyed.restore(meta["keys"], arrays, source)
        self._pre.load_state(arrays)
        self.theta[:] = arrays["theta"]
        self.opt_state[:] = arrays["opt_state"]
        self.counters[:] = arrays["counters"]

    def save(self, path):
        """Write the whole model atomically (temp file, fsync, rename) with a checksum."""
        checkpoint.save(path, *self.state_arrays())

    @classmethod
    def load(cls, path):
        """Read a file written by :meth:`save`; a corrupt or foreign file raises ``CheckpointError``."""
        arrays, meta = checkpoint.load(path)
        return cls.from_state(arrays, meta, source=str(path))

    def __repr__(self):
        c = self.config
        return (f"Model(cell={c['cell']!r}, n_inputs={c['n_inputs']}, n_hidden={c['n_hidden']}, "
                f"n_outputs={c['n_outputs']}, task={c['task']!r}, learner={c['learner']!r}, "
                f"optimizer={c['optimizer']!r}, lr={c['lr']}, dtype={c['dtype']!r})")
