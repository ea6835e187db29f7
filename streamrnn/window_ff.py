"""``WindowFF``: the feed-forward baseline every recurrent learner is compared with."""

import math

import numpy as np

from .keyed_state import KeyedState, normalize_key
from .learners import window_ff as _kernel
from .learners.common import N_COUNTERS, STEPS, UPDATES
from .losses import TASK_IDS
from .optim import OPTIMIZER_IDS
from .validation import (
    DTYPES,
    check_inputs,
    check_seed,
    check_targets,
    check_task_outputs,
    choice,
    optimizer_settings,
    positive_int,
)


class WindowFF:
    """An MLP over the last ``window`` inputs of each key, learning online (test-then-train).

    Same streaming interface as :class:`streamrnn.Model` (``step``, ``step_many``
    with keys, ``stats``, ``state_bytes_per_key``), so it runs beside the
    recurrent learners on the same stream. Its memory of the past is exactly
    ``window`` steps: what it cannot learn, a recurrent model has to remember.

    >>> import numpy as np
    >>> ff = WindowFF(n_inputs=1, window=4, n_hidden=8, lr=0.01)
    >>> ff.step_many(np.ones((3, 1)), np.zeros(3)).shape
    (3, 1)
    """

    def __init__(
        self,
        n_inputs=1,
        window=10,
        n_hidden=32,
        n_outputs=1,
        task="regression",
        optimizer="adam",
        lr=1e-3,
        clip=None,
        seed=0,
        dtype="float64",
        max_keys=1024,
        betas=(0.9, 0.999),
        eps=1e-8,
        momentum=0.0,
        weight_decay=0.0,
    ):
        choice("task", task, tuple(TASK_IDS))
        choice("dtype", dtype, DTYPES)
        n_inputs, window = positive_int("n_inputs", n_inputs), positive_int("window", window)
        n_hidden, n_outputs = positive_int("n_hidden", n_hidden), positive_int("n_outputs", n_outputs)
        max_keys = positive_int("max_keys", max_keys)
        check_task_outputs(task, n_outputs)
        opt_config, self.hyper = optimizer_settings(optimizer, lr, clip, betas, eps, momentum, weight_decay)
        seed = check_seed(seed)
        self.config = dict(
            n_inputs=n_inputs,
            window=window,
            n_hidden=n_hidden,
            n_outputs=n_outputs,
            task=task,
            seed=seed,
            dtype=dtype,
            max_keys=max_keys,
            **opt_config,
        )
        self.n_inputs, self.n_outputs, self.n_hidden, self.window = n_inputs, n_outputs, n_hidden, window
        self.dtype = np.dtype(dtype)
        self._task, self._opt = TASK_IDS[task], OPTIMIZER_IDS[optimizer]
        fan_in = window * n_inputs
        rng = np.random.default_rng(seed)
        # nn.Linear's default init for both layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        first = rng.uniform(-1, 1, n_hidden * (fan_in + 1)) / math.sqrt(fan_in)
        second = rng.uniform(-1, 1, n_outputs * (n_hidden + 1)) / math.sqrt(n_hidden)
        self.theta = np.concatenate([first, second]).astype(self.dtype)
        self.n_params = self.theta.size
        self.opt_state = np.zeros((2, self.n_params), self.dtype)
        self.counters = np.zeros(N_COUNTERS, np.int64)
        self._keyed = KeyedState([("window", (window, n_inputs), self.dtype)], max_keys)
        self._ws = _kernel.make_workspace(n_hidden, n_outputs, self.n_params, self.dtype)

    @property
    def keys(self):
        """The keys held, least recently used first."""
        return self._keyed.keys

    @property
    def held_state_bytes(self):
        """Bytes of per-key arrays allocated now (rows grow with the keys seen, up to ``max_keys``)."""
        return sum(a.nbytes for a in self._keyed.arrays.values())

    @property
    def state_bytes_per_key(self):
        """Bytes of per-key state: the key's window of the last ``window`` inputs."""
        return self._keyed.bytes_per_key

    @property
    def stats(self):
        """Counts: ``steps`` (samples seen) and ``updates`` (optimizer steps taken)."""
        return {"steps": int(self.counters[STEPS]), "updates": int(self.counters[UPDATES])}

    def step(self, x, y=None, key=None):
        """One sample: :meth:`step_many` of a single row; returns its prediction (made before learning)."""
        return self.step_many(
            np.asarray(x)[None, :] if np.ndim(x) == 1 else x, None if y is None else [y], None if key is None else [key]
        )[0]

    def step_many(self, X, Y=None, keys=None, return_loss=False):
        """Predict for each sample, then learn from its target; see :meth:`streamrnn.Model.step_many`."""
        X = check_inputs(X, self.n_inputs, self.dtype)
        n_rows = X.shape[0]
        Y, has_y = check_targets(Y, n_rows, self._task, self.n_outputs, self.dtype)
        if keys is not None:
            if len(keys) != n_rows:
                raise ValueError(f"keys has {len(keys)} entries for {n_rows} samples")
            keys = [normalize_key(k) for k in keys]
        slots, reset = self._keyed.assign(keys, n_rows)
        out = np.empty((n_rows, self.n_outputs), self.dtype)
        losses = np.empty(n_rows, self.dtype)
        _kernel.window_ff_step_many(
            self._task,
            self._opt,
            self.n_hidden,
            self.n_outputs,
            self.theta,
            self.opt_state,
            self.hyper,
            self.counters,
            self._keyed.arrays["window"],
            X,
            Y,
            has_y,
            slots,
            reset,
            self._ws,
            out,
            losses,
        )
        return (out, losses) if return_loss else out
