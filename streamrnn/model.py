"""``Model``: a recurrent cell, a linear readout, a loss, a learner and an optimizer.

The Model owns every array (parameters, optimizer state, per-key recurrent
state and influence matrices, scratch) and hands them to compiled kernels; it
does no arithmetic per sample in Python.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import checkpoint, parameters, race, rls
from .cells.dispatch import CELL_IDS, ELEMENTWISE, n_gates, recurrent_width, state_size
from .cells.stack import stack_params
from .keyed_state import NORMAL_KEY_TYPES, KeyedState, normalize_key
from .learners import registry
from .learners.bptt import bptt_sequence_gradient
from .learners.common import (
    INFLUENCE_RESETS,
    N_COUNTERS,
    REJECTED_STATE,
    SKIPPED_NONFINITE,
    STEPS,
    UPDATES,
    predict_from_state,
)
from .learners.registry import ModelDims
from .losses import TASK_IDS
from .onesample import OneSamplePath, peek_one
from .optim import DEFAULT_LR, OPTIMIZER_IDS, state_shape
from .preprocess import Preprocessor
from .race import Race, member_layout
from .validation import (
    DTYPES,
    RACE,
    check_inputs,
    check_resets,
    check_seed,
    check_targets,
    check_task_outputs,
    choice,
    optimizer_settings,
    positive_int,
    target_width,
)

__all__ = ["Model", "ValidatedRows", "ModelDims"]

LEARNERS = registry.names()
# "bptt" is offline only (it stores the whole sequence), so it is a gradient method but no learner.
GRADIENT_METHODS = LEARNERS + ("bptt",)
_FORMAT_KIND = "streamrnn.Model"
# What a checkpoint written before an option existed implies for it.
_OLD_DEFAULTS = {
    "readout_skip": False,
    "target_lags": 0,
    "standardize": False,
    "baseline": None,
    "head_lags": 0,
    "n_layers": 1,
}

ArrayLike = Any  # what np.asarray accepts
Key = str | int | None


class ValidatedRows(NamedTuple):
    """Rows checked by :meth:`Model.validate_rows`, ready for :meth:`Model.apply_rows`."""

    X: np.ndarray  # (N, n_inputs), C-contiguous, the model's dtype
    Y: np.ndarray  # (N, target width), NaN where there is no target
    has_y: np.ndarray  # (N,) bool
    keys: list | None  # N normalised keys, or None: every row is the default key


class Model:
    """A recurrent model that predicts, then learns, one sample at a time.

    Parameters
    ----------
    cell : {"gru", "rnn", "lstm", "ernn", "egru", "elstm", "dlru"}
        Recurrent cell, with PyTorch's equations, gate order and parameter names.
        The ``e`` cells are element-wise: one recurrent weight per gate row, on
        its own unit (``weight_hh_l0`` of shape (G·n,)); exact RTRL for them
        costs O(P) per step, like SnAp-1, and is what ``"rtrl"`` runs.
        ``"dlru"`` is a diagonal linear recurrent unit with a tanh readout,
        ``s' = σ(ν) ⊙ s + W_ih x + b_ih + b_hh``, ``h' = tanh(s')``, with the
        decay logits ν in ``weight_hh_l0`` (n,); element-wise as well.
    n_inputs : int
        Input width (the features of a row).
    n_hidden : int
        Hidden units.
    n_outputs : int
        Readout width (number of classes for ``task="classification"``, 1 for ``"binary"``).
    n_layers : int
        Stacked recurrent layers (:mod:`streamrnn.cells.stack`), as PyTorch's ``num_layers``: layer
        ``l > 0`` reads layer ``l - 1``'s hidden output of the same step, has ``n_hidden`` units
        and parameters ``weight_ih_l<l>`` (G·n, n), ``weight_hh_l<l>``, ``bias_ih_l<l>``,
        ``bias_hh_l<l>``; the readout reads the top layer (``readout_skip`` the input). A key's
        recurrent state is every layer's, bottom first (``L·S`` values). Learners ``"rtrl"`` (exact
        through the stack: the influence of layer k's parameters on every layer l >= k, also for
        the element-wise cells, which then run the dense form) and ``"tbptt"``; ``"snap1"`` and
        ``"uoro"`` refuse ``n_layers > 1``.
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
    truncation : int or None
        TBPTT's window length k (``learner="tbptt"`` only).
    stride : int or None
        TBPTT's update stride h (1 <= h <= k; default h = k).
    optimizer : {"adam", "sgd", "adam_hd", "cocob", "mechanic", "race"}
        See :mod:`streamrnn.optim`.
        ``"race"`` needs no learning rate to be tuned: K = ``len(optim.RACE_FACTORS)`` Adam members
        at rates ``lr × RACE_FACTORS`` (0.3, 1, 3), the same seed and initial weights, each with its
        own parameters, Adam state, counters, workspace and per-key learner state, run over every
        batch (K times the cost of ``"adam"``); each row reports the prediction and loss of the
        member whose discounted prequential loss (half-life ``RACE_HALF_LIFE`` labelled rows, the
        race's scores, checkpointed) was lowest before that row (:func:`streamrnn.optim.race_select`).
        Preprocessing runs once per batch and feeds every member. Under a race, ``theta`` is
        (K, P) (row k is member k; ``n_params`` is P), ``opt_state`` (K, 2, P), ``counters``
        (K, ·), and each learner array of a key is held per member as ``member<k>.<name>``
        (``key_state``, checkpoints). Everything that reads one model reads the current leader,
        ``argmin(race_scores)`` (ties to the lower index): ``peek``, ``get_weights``,
        ``gradient``, ``last_gradient``, ``hidden_state``, ``predict_from_state``, ``stats``;
        ``set_weights`` sets every member. ``momentum`` (an SGD setting) is refused.
    lr : float
        Learning rate (of every member's base rate under a race). The default, 7e-4, was chosen on
        tuning streams as the rate closest to the best fixed rate on all of them
        (``scripts/study_lr.py --default-lr``; :data:`streamrnn.optim.DEFAULT_LR`).
    clip : float or None
        Global gradient-norm clipping per update (as ``clip_grad_norm_``).
    seed : int
        Seeds PyTorch-style initialisation, U(−1/√n, 1/√n) for every parameter.
    dtype : {"float64", "float32"}
        Parameters' and states' floating-point type.
    max_keys : int
        Most keys holding a recurrent state at once. A new key beyond that evicts
        the least recently used key, whose state is dropped (it restarts from
        zero if it comes back). Memory grows with the keys actually seen.
    betas : tuple of float
        Adam's moment decays (PyTorch's meaning).
    eps : float
        Adam's denominator term.
    momentum : float
        SGD's momentum.
    weight_decay : float
        L2 weight decay (PyTorch's meaning).
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
    baseline : {None, "last"}
        ``"last"`` (regression, with ``standardize`` and ``target_lags >= 1``): the network predicts
        the change from the key's last target, ``ŷ = y_last + s_Δ · f`` with ``s_Δ`` the running
        scale of the changes (persistence is its baseline); a key's first target is predicted as
        the level, as without it (:mod:`streamrnn.preprocess`).
    head_lags : int >= 0 or None
        The fast linear head (:mod:`streamrnn.rls`, regression with ``standardize``): recursive
        least squares with forgetting on ``[x, the key's last target, its last K changes, flags,
        1]``, beside the network, and a second online least-squares fit that combines the two
        predictions. It learns from a few dozen rows where the network needs thousands, and never
        touches the network's parameters or gradient. None (default): 8 where it applies, else 0.
        The key's lag buffer then holds ``max(target_lags, K + 1)`` targets; the head's ``P``,
        ``W`` and combiner are global (shared by all keys) and checkpointed.

    Notes
    -----
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

    def __init__(
        self,
        cell: str = "gru",
        n_inputs: int = 1,
        n_hidden: int = 16,
        n_outputs: int = 1,
        task: str = "regression",
        learner: str = "rtrl",
        optimizer: str = "adam",
        lr: float = DEFAULT_LR,
        clip: float | None = None,
        seed: int = 0,
        dtype: str = "float64",
        max_keys: int = 1024,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        truncation: int | None = None,
        stride: int | None = None,
        readout_skip: bool = False,
        target_lags: int = 0,
        standardize: bool = True,
        baseline: str | None = None,
        head_lags: int | None = None,
        n_layers: int = 1,
    ) -> None:
        choice("cell", cell, tuple(CELL_IDS))
        choice("task", task, tuple(TASK_IDS))
        choice("learner", learner, registry.names())
        choice("dtype", dtype, DTYPES)
        n_inputs = positive_int("n_inputs", n_inputs)
        n_hidden = positive_int("n_hidden", n_hidden)
        n_outputs = positive_int("n_outputs", n_outputs)
        max_keys = positive_int("max_keys", max_keys)
        n_layers = positive_int("n_layers", n_layers)
        registry.resolve(learner, CELL_IDS[cell], n_layers)  # refuses a learner that does not run stacks
        if registry.get(learner).windowed:
            if truncation is None:
                raise ValueError(f"learner={learner!r} needs truncation=k (a positive integer)")
            truncation = positive_int("truncation", truncation)
            stride = truncation if stride is None else positive_int("stride", stride)
            if stride > truncation:
                raise ValueError(f"stride must be <= truncation; got stride={stride}, truncation={truncation}")
        elif truncation is not None or stride is not None:
            windowed = " or ".join(f"learner={name!r}" for name in registry.names() if registry.get(name).windowed)
            raise ValueError(f"truncation and stride apply to {windowed} only, not {learner!r}")
        check_task_outputs(task, n_outputs)
        opt_config, self.hyper = optimizer_settings(
            optimizer, lr, clip, betas, eps, momentum, weight_decay, allow_race=True
        )
        seed = check_seed(seed)
        if isinstance(target_lags, bool) or not isinstance(target_lags, (int, np.integer)) or target_lags < 0:
            raise ValueError(f"target_lags must be an integer >= 0; got {target_lags!r}")
        target_lags = int(target_lags)
        if head_lags is None:  # the linear head wherever it applies
            head_lags = rls.HEAD_LAGS if (task == "regression" and standardize) else 0
        if isinstance(head_lags, bool) or not isinstance(head_lags, (int, np.integer)) or head_lags < 0:
            raise ValueError(f"head_lags must be an integer >= 0 or None; got {head_lags!r}")
        head_lags = int(head_lags)

        self.config = dict(
            cell=cell,
            n_inputs=n_inputs,
            n_hidden=n_hidden,
            n_outputs=n_outputs,
            task=task,
            n_layers=n_layers,
            learner=learner,
            seed=seed,
            dtype=dtype,
            max_keys=max_keys,
            truncation=truncation,
            stride=stride,
            readout_skip=bool(readout_skip),
            target_lags=target_lags,
            standardize=bool(standardize),
            baseline=baseline,
            head_lags=head_lags,
            **opt_config,
        )
        self._cell = CELL_IDS[cell]
        self._task = TASK_IDS[task]
        self.race = optimizer == RACE
        self._opt = OPTIMIZER_IDS["adam" if self.race else optimizer]  # a race's members are Adam
        self.dtype = np.dtype(dtype)
        self.n_inputs, self.n_hidden, self.n_outputs = n_inputs, n_hidden, n_outputs
        self.n_layers = n_layers
        self.max_keys = max_keys
        self._pre = Preprocessor(
            self._task,
            n_inputs,
            n_outputs,
            target_lags,
            standardize,
            self.dtype,
            baseline=baseline,
            head_lags=head_lags,
        )
        self.n_cell_inputs = n_cell_inputs = self._pre.n_cell_inputs  # n_inputs + the target-feedback columns
        self._gates = n_gates(self._cell)
        self._state_size = n_layers * state_size(self._cell, n_hidden)  # a stack's composite state
        self._rec = recurrent_width(self._cell, n_hidden)
        self.n_params_cell = int(stack_params(self._cell, n_cell_inputs, n_hidden, n_layers))
        self.readout_skip = bool(readout_skip)
        self.n_params = self.n_params_cell + n_outputs * (n_hidden + 1 + (n_cell_inputs if self.readout_skip else 0))

        self.theta = self._initial_parameters(int(seed))
        self.opt_state = np.zeros(state_shape("adam" if self.race else optimizer, self.n_params), self.dtype)
        self.counters = np.zeros(N_COUNTERS, np.int64)
        self.n_members = Race.n_members if self.race else 1
        if self.race:  # member k: row k of theta, opt_state, counters, hyper (see streamrnn.race)
            self.theta, self.opt_state, self.counters, self.hyper = Race.stack(
                self.theta, self.opt_state, self.counters, self.hyper, self.config["lr"]
            )
        self.learner, self.truncation, self.stride = learner, truncation, stride
        self._dims = ModelDims(
            self._cell,
            self._task,
            n_cell_inputs,
            n_hidden,
            n_outputs,
            self._state_size,
            target_width(self._task, n_outputs),
            self.n_params_cell,
            self.n_params,
            self.dtype,
            seed,
            truncation,
            stride,
            n_layers,
        )
        self._spec = registry.resolve(learner, self._cell, n_layers)  # whose arrays and kernels run the learner
        learner_layout = self._spec.key_layout(self._dims)
        if self.race:
            learner_layout = member_layout(learner_layout, self.n_members)
        self._n_learner_arrays = len(learner_layout)  # the learner's arrays come first
        self._keyed = KeyedState(learner_layout + self._pre.per_key_layout(), max_keys)
        self._race = Race(self._spec, self._dims) if self.race else None
        if self.race:
            self._ws = None
        else:
            self._ws = self._spec.make_workspace(self._dims)
            self._ws_fields = tuple(self._ws)  # as step_many takes it (see learners.registry)
        self._zero_state = np.zeros(self._state_size, self.dtype)  # the state of a key not seen yet (read only)

    def __getstate__(self):
        # The spec holds compiled kernels: pickle the learner by name and look it up again on load.
        state = dict(self.__dict__)
        del state["_spec"]
        state.pop("_peek_buffers", None)  # peek's scratch, not state
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._spec = registry.resolve(self.learner, self._cell, self.config.get("n_layers", 1))

    @property
    def dims(self) -> ModelDims:
        """Sizes, ids and settings of this model, as learner kernels and analysis tools take them.

        >>> import streamrnn as sr
        >>> d = sr.Model(cell="lstm", n_inputs=3, n_hidden=4).dims
        >>> d.state_size, d.n_params_cell, d.n_params
        (8, 144, 149)
        """
        return self._dims

    # ------------------------------------------------------------------ race
    @property
    def race_leader(self) -> int:
        """The member a race reports now: ``argmin(race_scores)``, ties to the lower index (0 if no race)."""
        return self._race.leader if self.race else 0

    @property
    def race_scores(self) -> np.ndarray:
        """A race's members' discounted prequential losses (live; see :mod:`streamrnn.race`)."""
        return self._race.scores

    def _theta(self):
        """The flat parameters of the model as one model: a race's leader's row of ``theta``."""
        return self.theta[self.race_leader] if self.race else self.theta

    @property
    def flat_parameters(self) -> np.ndarray:
        """The flat parameter vector (P,) of the model as one model, live (a view): ``theta``, or under a
        race the current leader's row of ``theta`` (which member that is changes as the race goes on).
        For analysis tools that run kernels on one model's parameters (``compare``, ``diagnose``)."""
        return self._theta()

    def _hidden_name(self):
        return f"member{self.race_leader}.hidden" if self.race else "hidden"

    # ------------------------------------------------------------------ layout
    def _layout(self):
        """The parameter blocks ``(name, shape, offset, size)``, in the order of the flat vector."""
        G, n, m, o = self._gates, self.n_hidden, self.n_cell_inputs, self.n_outputs
        hh_shape = (G * n,) if self._cell in ELEMENTWISE else (G * n, n)
        layout = []
        for layer in range(self.n_layers):  # PyTorch's names; layer l > 0 reads the n outputs below
            layout += [
                (f"weight_ih_l{layer}", (G * n, m if layer == 0 else n)),
                (f"weight_hh_l{layer}", hh_shape),
                (f"bias_ih_l{layer}", (G * n,)),
                (f"bias_hh_l{layer}", (G * n,)),
            ]
        layout += [("readout.weight", (o, n)), ("readout.bias", (o,))]
        return parameters.blocks(layout + [("readout.skip_weight", (o, m))] if self.readout_skip else layout)

    def _initial_parameters(self, seed):
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.n_hidden)  # PyTorch's RNN init; nn.Linear(n, o) has the same bound
        n_skip = self.n_outputs * self.n_cell_inputs if self.readout_skip else 0
        theta = np.zeros(self.n_params, self.dtype)
        theta[: self.n_params - n_skip] = rng.uniform(-bound, bound, self.n_params - n_skip)
        return theta

    def get_weights(self) -> dict[str, np.ndarray]:
        """Copies of the parameters as a dict of arrays with PyTorch's names and shapes."""
        return self.unflatten(self._theta())

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """A flat (P,) vector in this model's parameter order (``flat_parameters``, a gradient a kernel
        formed) as copies keyed like :meth:`get_weights`."""
        return parameters.unflatten(flat, self._layout())

    def set_weights(self, weights: Mapping[str, ArrayLike]) -> None:
        """Replace every parameter; ``weights`` must hold exactly the names of ``get_weights()``."""
        self.theta[:] = parameters.flatten(weights, self._layout(), self.n_params, self.dtype)  # a race: every member

    # ------------------------------------------------------------------ input checks
    def _inputs(self, X):
        return check_inputs(X, self.n_inputs, self.dtype)

    def _targets(self, Y, n_rows):
        return check_targets(Y, n_rows, self._task, self.n_outputs, self.dtype)

    def validate_rows(
        self, X: ArrayLike, Y: ArrayLike | None = None, keys: Sequence[Key] | None = None
    ) -> ValidatedRows:
        """Check rows as :meth:`step_many` does, changing nothing; ``ValueError`` on the first bad one.

        Parameters
        ----------
        X : array_like, (N, n_inputs) or (n_inputs,)
            Inputs; every entry finite.
        Y : array_like or None
            A target per row (NaN or None where there is none): (N, n_outputs) for
            regression, class indices (N,) for classification, 0/1 for binary.
        keys : sequence of str or int (or None entries), optional
            The key of each row.

        Returns
        -------
        ValidatedRows
            ``(X, Y, has_y, keys)`` in the model's dtype and layout, for :meth:`apply_rows`.

        Examples
        --------
        >>> import streamrnn as sr
        >>> m = sr.Model(n_inputs=2, n_hidden=3)
        >>> rows = m.validate_rows([[1.0, 2.0], [3.0, 4.0]], [[0.5], None], keys=["a", 7])
        >>> rows.X.shape, rows.has_y.tolist(), rows.keys
        ((2, 2), [True, False], ['a', 7])
        >>> m.validate_rows([[1.0, float("nan")]])
        Traceback (most recent call last):
        ...
        ValueError: X row 0 contains NaN or inf (or overflows float64)
        """
        X = self._inputs(X)
        n_rows = X.shape[0]
        Y, has_y = self._targets(Y, n_rows)
        if keys is not None:
            if isinstance(keys, (str, bytes)):
                raise ValueError(f"keys must be a sequence with one key per row, not a {type(keys).__name__}")
            if len(keys) != n_rows:
                raise ValueError(f"keys has {len(keys)} entries for {n_rows} samples")
            if set(map(type, keys)) <= NORMAL_KEY_TYPES:  # normal already (the common case): no call per key
                keys = list(keys)
            else:
                keys = [normalize_key(k) for k in keys]
        return ValidatedRows(X, Y, has_y, keys)

    # ------------------------------------------------------------------ per-key state
    @property
    def _H(self):
        return self._keyed.arrays[self._hidden_name()]

    def key_state(self, key: Key = None) -> dict[str, np.ndarray] | None:
        """Copies of every array ``key`` owns (its state, and its influence matrix or window), or None
        if it holds no state. :meth:`restore_key_state` puts them back.

        The names are the learner's per-key layout (``"hidden"`` first), as in a checkpoint's
        ``key.<name>`` arrays; under ``optimizer="race"`` every member's learner arrays,
        ``member<k>.<name>`` (``member0.hidden`` first), then the shared target-feedback buffers.

        Examples
        --------
        >>> import numpy as np, streamrnn as sr
        >>> m = sr.Model(cell="gru", n_inputs=1, n_hidden=2)
        >>> m.key_state("a") is None
        True
        >>> _ = m.step([1.0], y=[0.5], key="a")
        >>> sorted(m.key_state("a"))  # the lag buffer holds the head's last targets (head_lags)
        ['hidden', 'influence', 'lag_observed', 'lag_values']
        """
        return self._keyed.read(normalize_key(key))

    def restore_key_state(self, key: Key, state: Mapping[str, ArrayLike]) -> None:
        """Give ``key`` the arrays of ``state`` (from :meth:`key_state`), so it continues exactly
        as the key it was read from. The key takes a slot as if it had arrived (the least recently
        used key is evicted if all ``max_keys`` are taken). Raises ``ValueError`` and changes
        nothing if a name, shape or value does not fit.

        Examples
        --------
        >>> import numpy as np, streamrnn as sr
        >>> m = sr.Model(cell="gru", n_inputs=1, n_hidden=2, lr=0.0)
        >>> _ = m.step_many(np.ones((3, 1)), keys=["a"] * 3)
        >>> m.restore_key_state("b", m.key_state("a"))
        >>> bool((m.peek([0.5], key="a") == m.peek([0.5], key="b")).all())
        True
        """
        self._keyed.write(normalize_key(key), state)

    @property
    def keys(self) -> list:
        """Keys holding a state, least recently used first."""
        return self._keyed.keys

    def forget(self, key: Key = None) -> None:
        """Drop the recurrent state of ``key`` (it restarts from zero if it comes back)."""
        self._keyed.forget(normalize_key(key))

    @property
    def held_state_bytes(self) -> int:
        """Bytes of per-key arrays allocated now (rows grow with the keys seen, up to ``max_keys``)."""
        return sum(a.nbytes for a in self._keyed.arrays.values())

    @property
    def state_bytes_per_key(self) -> int:
        """Bytes of state held per key: the learner's (state plus influence matrix, or the TBPTT window)
        and, with target feedback or the linear head, the key's buffer of last targets."""
        return self._keyed.bytes_per_key

    # ------------------------------------------------------------------ streaming
    def step(self, x: ArrayLike, y: ArrayLike | None = None, key: Key = None, reset: bool = False) -> np.ndarray:
        """Predict for one sample, then learn from ``y`` if given; returns the prediction. ``reset``:
        the sample starts a new sequence of ``key`` (see :meth:`step_many`)."""
        return self.step_many(
            np.asarray(x)[None, :] if np.ndim(x) == 1 else x,
            None if y is None else [y],
            None if key is None else [key],
            resets=[reset] if reset else None,
        )[0]

    def step_many(
        self,
        X: ArrayLike,
        Y: ArrayLike | None = None,
        keys: Sequence[Key] | None = None,
        return_loss: bool = False,
        resets: ArrayLike | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Test-then-train over many samples in arrival order, in one compiled call.

        ``X`` is ``(n_samples, n_inputs)``; ``Y`` holds a target per sample (NaN or
        None where there is none); ``keys`` a key per sample, each key with its
        own recurrent state. ``resets`` (bool per sample) marks the samples that start a new
        sequence of their key (a session, a trip, a batch of a process): the key's hidden state,
        influence matrix (or TBPTT window) and target-feedback buffer are zeroed before the
        sample, exactly as for a key never seen; the parameters and statistics are kept. A label
        given only on a sequence's last sample makes it sequence-to-one. Returns the predictions
        made before each sample's update, ``(n_samples, n_outputs)``; with ``return_loss`` also the
        loss per sample (NaN where no target). Bad samples raise ``ValueError`` and nothing in the
        batch is applied.

        >>> import numpy as np, streamrnn as sr
        >>> m = sr.Model(n_inputs=1, n_hidden=2, lr=0.0)
        >>> out = m.step_many(np.ones((4, 1)), keys=["a"] * 4, resets=[False, False, True, False])
        >>> bool((out[2] == out[0]).all()), bool((out[3] == out[1]).all())  # row 2 starts afresh
        (True, True)
        """
        rows = self.validate_rows(X, Y, keys)  # all rows checked before any state changes
        n_rows = rows.X.shape[0]
        resets = check_resets(resets, n_rows)
        out = np.empty((n_rows, self.n_outputs), self.dtype)
        losses = np.empty(n_rows, self.dtype)
        self.apply_rows(*rows, out, losses, resets=resets)
        return (out, losses) if return_loss else out

    def apply_rows(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        has_y: np.ndarray,
        keys: list | None,
        out: np.ndarray,
        losses: np.ndarray,
        resets: np.ndarray | None = None,
    ) -> None:
        """Test-then-train over rows already validated, into the caller's buffers.

        The path :meth:`step_many` takes after :meth:`validate_rows`, without allocating: adapters
        that check their own inputs (the river estimators' one-sample path) fill preallocated
        buffers and call this, and get bit-identical results.

        Parameters
        ----------
        X, Y, has_y, keys
            As :meth:`validate_rows` returns them: ``X`` (N, n_inputs) and ``Y`` (N, target width)
            C-contiguous in this model's dtype, ``has_y`` bool (N,), ``keys`` normalised or None.
            Nothing is checked here.
        out : ndarray (N, n_outputs)
            Receives the prediction made before each row's update.
        losses : ndarray (N,)
            Receives each row's loss (NaN where there was no target or no update).
        resets : ndarray of bool (N,) or None
            Rows that start a new sequence of their key (:meth:`step_many`); not checked here.

        Examples
        --------
        >>> import numpy as np, streamrnn as sr
        >>> m = sr.Model(n_inputs=2, n_hidden=3, seed=0)
        >>> out, losses = np.empty((1, 1)), np.empty(1)
        >>> m.apply_rows(*m.validate_rows([[0.1, 0.2]], [[1.0]]), out, losses)
        >>> twin = sr.Model(n_inputs=2, n_hidden=3, seed=0)
        >>> bool((twin.step([0.1, 0.2], y=[1.0]) == out[0]).all())
        True
        """
        slots, reset = self._keyed.assign(keys, X.shape[0])
        if resets is not None:
            reset |= resets
        rows = self._pre.scratch(X.shape[0]) if self._pre.active else None
        for kernel, args in self._learn_calls(X, Y, has_y, slots, reset, out, losses, rows):
            kernel(*args)

    def _learn_calls(self, X, Y, has_y, slots, reset, out, losses, rows):
        """The compiled calls that apply rows whose slots are assigned (:meth:`apply_rows`), in order, as
        ``(kernel, args)``: standardise and append the target feedback into ``rows`` (scratch from
        ``Preprocessor.scratch`` or ``rows_scratch``; None without preprocessing), the learner (every
        member's, and the pick, under a race), then the head and the way back to the target's units.
        :mod:`streamrnn.onesample` binds the same calls once for its one-row buffers."""
        pre = self._pre
        Y_raw, has_y_raw, y_ls = Y, has_y, None
        calls = []
        if pre.active:  # standardise, append target feedback (changes nothing the learner owns)
            views, Z = rows
            calls.append(pre.prepare_call(X, Y, has_y, slots, reset, self._keyed.arrays, views, Z))
            X, Y, has_y, y_ls = views
        if self.race:  # once preprocessed, for every member
            calls += self._race.kernel_calls(
                self, slots, reset, X, Y, has_y, Y_raw, has_y_raw, y_ls if pre.finishes_race else None, out, losses
            )
            if pre.head_lags:  # the race picked in standardised units; the head and the combiner follow
                calls.append(pre.finish_call(Y_raw, has_y_raw, y_ls, out, losses, views, Z))
            return calls
        per_key = tuple(self._keyed.arrays.values())
        if pre.active:
            per_key = per_key[: self._n_learner_arrays]
        args = (
            self._cell,
            self._task,
            self._opt,
            self.n_cell_inputs,
            self.n_hidden,
            self.n_outputs,
            self.theta,
            self.opt_state,
            self.hyper,
            self.counters,
            per_key,
            X,
            Y,
            has_y,
            slots,
            reset,
            self._ws_fields,
            out,
            losses,
        )
        calls.append((self._spec.step_many, args))
        finish = pre.finish_call(Y_raw, has_y_raw, y_ls, out, losses, views, Z) if pre.active else None
        if finish is not None:  # predictions and losses back in the target's units
            calls.append(finish)
        return calls

    def one_sample(self) -> OneSamplePath:
        """A path that steps this model one sample at a time with its compiled calls bound once: for
        adapters that call the model per sample (the river estimators). It owns the one-row
        buffers the caller fills; its :meth:`~streamrnn.onesample.OneSamplePath.learn` and
        :meth:`~streamrnn.onesample.OneSamplePath.peek` are :meth:`apply_rows` and :meth:`peek_into`
        of that row, bit for bit, without the per-call cost of resolving some 80 argument types.

        >>> import streamrnn as sr
        >>> path = sr.Model(n_inputs=2, n_hidden=3).one_sample()
        >>> path.x.shape, path.y.shape, path.pred.shape
        ((1, 2), (1, 1), (1,))
        """
        return OneSamplePath(self)

    def last_gradient(self) -> np.ndarray:
        """A copy of the flat gradient the learner formed at its last labelled step (TBPTT: its last
        window update), as the optimizer received it: clipped in place when ``clip`` is set.
        Analysis tools compare learners with it (:func:`streamrnn.compare.gradient_alignment`).

        Examples
        --------
        >>> import streamrnn as sr
        >>> m = sr.Model(n_inputs=1, n_hidden=2, lr=0.0, standardize=False)  # raw: the first target is learned
        >>> _ = m.step([1.0], y=[2.0])
        >>> g = m.last_gradient()
        >>> g.shape == (m.n_params,), bool(abs(g).sum() > 0)
        (True, True)
        """
        ws = self._race.workspaces[self.race_leader] if self.race else self._ws
        return ws.grad.copy()

    def peek(self, x: ArrayLike, key: Key = None, reset: bool = False) -> np.ndarray:
        """The prediction ``step(x, key=key, reset=reset)`` would return, changing nothing."""
        X = self._inputs(x)
        if X.shape[0] != 1:
            raise ValueError("peek takes one sample")
        pred = np.empty(self.n_outputs, self.dtype)
        return self.peek_into(X[0], normalize_key(key), pred, reset=bool(reset))

    def peek_into(self, x: np.ndarray, key: Key, out: np.ndarray, reset: bool = False) -> np.ndarray:
        """:meth:`peek` for an input already validated, into the caller's buffer; returns ``out``.

        ``x`` is (n_inputs,) in this model's dtype, ``key`` normalised (str, int or None), ``out``
        (n_outputs,). ``reset``: as if the sample started a new sequence of ``key`` (from a fresh
        key's state). Nothing is checked and nothing changes (the adapters' prediction path). One
        compiled call, :func:`streamrnn.onesample.peek_one` (:meth:`one_sample` binds it once).

        >>> import numpy as np, streamrnn as sr
        >>> m = sr.Model(n_inputs=2, n_hidden=3)
        >>> out = np.empty(1)
        >>> bool((m.peek_into(np.array([0.5, 1.0]), None, out) == m.peek([0.5, 1.0])).all())
        True
        """
        if getattr(self, "_peek_buffers", None) is None:  # scratch, not state: not pickled
            self._peek_buffers = (self._pre.peek_scratch(), np.empty(1, np.int64))
        buffers, sel = self._peek_buffers
        sel[0] = -1 if reset else self._keyed.slots.get(key, -1)
        kernel, args = self._peek_call(x, sel, out, buffers, self.race_leader)
        kernel(*args)
        return out

    def _peek_call(self, x, sel, out, buffers, member):
        """The compiled call of a prediction (:func:`streamrnn.onesample.peek_one`) of row ``x``
        (n_inputs,) from slot ``sel[0]`` (-1: a fresh key's state) into ``out``, with the scratch
        ``buffers`` (``Preprocessor.peek_scratch``) and the parameters and states of race member
        ``member`` (0 without a race): ``(kernel, args)``."""
        pre = self._pre
        xs, ys, lv, lo, y0, has0, slot0, reset0, rows, ds, z, head_out = buffers
        if pre.depth:
            lags = (self._keyed.arrays["lag_values"], self._keyed.arrays["lag_observed"])
        else:
            lags = pre._no_lags
            lv, lo = lags
        W, mix_c = (
            (pre.head[1], pre.head[3]) if pre.head_lags else (np.zeros((0, pre.width_y)), np.zeros((pre.width_y, 2)))
        )
        hidden = self._keyed.arrays[f"member{member}.hidden" if self.race else "hidden"]
        args = (
            pre.active,
            bool(pre.head_lags),
            pre.finishes,
            pre._cfg,
            x,
            pre.x_stats,
            pre.y_stats,
            pre.d_stats,
            *lags,
            sel,
            xs,
            ys,
            ds,
            lv,
            lo,
            y0,
            has0,
            slot0,
            reset0,
            *rows,
            z,
            head_out,
            W,
            mix_c,
            self._cell,
            self._task,
            self.n_cell_inputs,
            self.n_hidden,
            self.n_outputs,
            self.theta[member] if self.race else self.theta,
            self.n_params_cell,
            hidden,
            self._zero_state,
            out,
        )
        return peek_one, args

    def forecast(self, X: ArrayLike, key: Key = None, reset: bool = False) -> np.ndarray:
        """Recursive forecast: the predictions for the next ``len(X)`` rows of ``key`` (inputs ``X``,
        (h, n_inputs)), each fed back as the next row's target through target feedback
        (``target_lags``), from copies of the key's state (``reset``: of a fresh key's, as for a new
        sequence). Changes nothing.

        >>> import numpy as np, streamrnn as sr
        >>> m = sr.Model(n_inputs=1, n_hidden=3, target_lags=1, seed=0)
        >>> _ = m.step_many(np.zeros((20, 1)), np.sin(np.arange(20.0))[:, None], keys=["a"] * 20)
        >>> f = m.forecast(np.zeros((3, 1)), key="a")
        >>> f.shape, bool((f[0] == m.peek([0.0], key="a")).all())
        ((3, 1), True)
        """
        X = self._inputs(X)
        key = normalize_key(key)
        pre = self._pre
        s = None if reset else self._keyed.row(self._hidden_name(), key)
        s = self._zero_state.copy() if s is None else s.copy()
        s_next = np.empty_like(s)
        if pre.depth:
            rows = (None, None) if reset else (self._keyed.row("lag_values", key), self._keyed.row("lag_observed", key))
            lags = tuple(
                np.zeros(shape, dt) if r is None else r.copy() for r, (_, shape, dt) in zip(rows, pre.per_key_layout())
            )
        out = np.empty((X.shape[0], self.n_outputs), self.dtype)
        for t in range(X.shape[0]):
            x = X[t]
            if pre.active:
                x, y_ls = pre.peek_row(X[t : t + 1], *(lags if pre.depth else ()))
            self.predict_from_state(x, s, out[t], s_next)
            if pre.active:
                pre.peek_finish(out[t], y_ls)
            if pre.depth:
                pre.feed_back(*lags, out[t])
            s, s_next = s_next, s
        return out

    def predict_from_state(
        self, x: np.ndarray, state: np.ndarray, out: np.ndarray, next_state: np.ndarray | None = None
    ) -> np.ndarray:
        """The prediction one more sample ``x`` would get from recurrent state ``state``, into ``out``;
        with ``next_state`` (S,) also the state it would reach. Returns ``out``; changes nothing.

        ``x`` is the cell's input, (``n_cell_inputs``,): with ``standardize`` or ``target_lags`` the
        caller transforms it (this is the raw cell and readout); ``out`` (n_outputs,), ``state`` (S,)
        as :meth:`hidden_state` returns it.
        Running it forward from a copy of a key's state gives recursive forecasts.

        >>> import numpy as np, streamrnn as sr
        >>> m = sr.Model(n_inputs=1, n_hidden=2, lr=0.0, standardize=False)  # x goes to the cell as is
        >>> s, s_next, out = m.hidden_state(), np.empty(2), np.empty(1)
        >>> first = m.predict_from_state(np.ones(1), s, out, next_state=s_next).copy()
        >>> bool((m.step([1.0]) == first).all()), bool((m.hidden_state() == s_next).all())
        (True, True)
        """
        predict_from_state(
            self._cell,
            self._task,
            self.n_cell_inputs,
            self.n_hidden,
            self.n_outputs,
            self._theta(),
            self.n_params_cell,
            x,
            state,
            out,
            next_state,
        )
        return out

    def hidden_state(self, key: Key = None) -> np.ndarray:
        """A copy of the recurrent state of ``key`` (zeros if it has none)."""
        s = self._keyed.row(self._hidden_name(), normalize_key(key))
        return np.zeros(self._state_size, self.dtype) if s is None else s.copy()

    @property
    def stats(self) -> dict[str, int]:
        """Counts of applied steps, updates, skipped non-finite updates, rejected samples
        (non-finite state: nothing changed) and influence matrices zeroed after overflow."""
        c = self.counters[self.race_leader] if self.race else self.counters
        return {
            "steps": int(c[STEPS]),
            "updates": int(c[UPDATES]),
            "skipped_nonfinite": int(c[SKIPPED_NONFINITE]),
            "rejected_nonfinite_state": int(c[REJECTED_STATE]),
            "influence_resets": int(c[INFLUENCE_RESETS]),
        }

    # ------------------------------------------------------------------ offline gradients
    def gradient(
        self,
        X: ArrayLike,
        Y: ArrayLike,
        method: str = "rtrl",
        truncation: int | None = None,
        stride: int | None = None,
        seed: int | None = None,
    ) -> dict[str, np.ndarray]:
        """``Σ_t dL_t/dθ`` over one sequence from a zero state, at the current weights, no update.

        ``method`` is ``"rtrl"``, ``"snap1"`` or ``"uoro"`` (approximations; UORO's
        random signs from ``seed``, default the model's), ``"bptt"`` or ``"tbptt"`` (window ``truncation``,
        default this model's, and ``stride``, default the truncation: the sum of
        the gradients TBPTT would apply, the last partial stride included). The
        result is keyed like ``get_weights()``.
        """
        if method not in GRADIENT_METHODS:
            raise ValueError(f"method must be one of {GRADIENT_METHODS}; got {method!r}")
        dims = self._dims._replace(seed=self._dims.seed if seed is None else int(seed))
        spec = None if method == "bptt" else registry.resolve(method, self._cell, self.n_layers)
        if spec is not None and spec.windowed:
            k = truncation if truncation is not None else self.truncation
            if k is None or int(k) < 1:
                raise ValueError(f"method={method!r} needs truncation=k (a positive integer)")
            h = int(k) if stride is None else int(stride)
            if not 1 <= h <= int(k):
                raise ValueError(f"stride must be in [1, truncation]; got {stride}")
            dims = dims._replace(truncation=int(k), stride=h)
        X = self._inputs(X)
        Y, has_y = self._targets(Y, X.shape[0])
        if self._pre.active:  # a fresh key's inputs and standardised targets; statistics not committed
            X, Y, has_y, _ = self._pre.transform_sequence(X, Y, has_y)
        grad = np.zeros(self.n_params, self.dtype)
        args = (self._cell, self._task, self.n_cell_inputs, self.n_hidden, self.n_outputs, self._theta())
        if spec is None:
            bptt_sequence_gradient(*args, self.n_params_cell, X, Y, has_y, self._zero_state, grad)
        else:
            spec.sequence_gradient(*args, X, Y, has_y, spec.new_key_state(dims), spec.make_workspace(dims), grad)
        return self.unflatten(grad)

    def cell_sequence(
        self, X: ArrayLike, Y: ArrayLike | None = None, key: Key = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What the learner would be given for the rows ``X`` (targets ``Y``) run as one sequence: the
        cell's inputs ``(T, n_cell_inputs)`` (standardised with the current statistics, the target
        feedback from ``key``'s lag buffer, None or an unknown key: a fresh one's), the learner's
        targets and which rows it would learn from. The statistics advance along the sequence on
        copies; nothing changes. For analysis tools (:mod:`streamrnn.diagnose`).

        >>> import numpy as np, streamrnn as sr
        >>> m = sr.Model(n_inputs=2, n_hidden=3, target_lags=1)
        >>> Xa, Ys, learn = m.cell_sequence(np.ones((4, 2)), np.arange(4.0))
        >>> Xa.shape, learn.tolist()  # 2 inputs, one lag and its flag; the first 2 targets set the scale
        ((4, 4), [False, False, True, True])
        """
        X = self._inputs(X)
        Y, has_y = self._targets(Y, X.shape[0])
        pre = self._pre
        if not pre.active:
            return X, Y, has_y
        lag_row = None
        if pre.depth:
            key = normalize_key(key)
            rows = (self._keyed.row("lag_values", key), self._keyed.row("lag_observed", key))
            lag_row = None if rows[0] is None else rows
        Xa, Ys, has_learn, _ = pre.transform_sequence(X, Y, has_y, lag_row)
        return Xa, Ys, has_learn

    # ------------------------------------------------------------------ persistence
    def state_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything needed to continue bit-identically, as ``(arrays, meta)``."""
        keys, per_key = self._keyed.export()
        arrays = {
            "theta": self.theta,
            "opt_state": self.opt_state,
            "counters": self.counters,
            **per_key,
            **self._pre.state_arrays(),
            **({race.SCORES: self.race_scores} if self.race else {}),
        }
        config = self.config
        if config["n_layers"] == 1:  # one layer: the file is byte for byte what it was before stacks
            config = {k: v for k, v in config.items() if k != "n_layers"}
        meta = {"kind": _FORMAT_KIND, "config": config, "keys": keys}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], source: str = "<state>") -> Model:
        """The Model whose state :meth:`state_arrays` gave as ``(arrays, meta)``; options a state written
        before they existed take their old defaults. CheckpointError (naming ``source``) if it is not
        a Model's state or does not fit its config.
        """
        if meta.get("kind") != _FORMAT_KIND:
            raise checkpoint.CheckpointError(f"{source}: not a streamrnn Model (kind {meta.get('kind')!r})")
        model = cls(**{**_OLD_DEFAULTS, **meta["config"]})
        model.load_state(arrays, meta, source)
        return model

    def allocate_for_load(self, name: str, shape: tuple, dtype: Any) -> np.ndarray | None:
        """Destination of array ``name`` of a checkpoint about to be restored into this model
        (``checkpoint.load(path, allocate=model.allocate_for_load)``): per-key arrays are read
        straight into memory that :meth:`load_state` then adopts, so restoring many keys holds
        their state once; None for the rest (read into new arrays)."""
        return self._keyed.allocate(name, shape, dtype)

    def load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], source: str = "<state>") -> None:
        """Restore from ``state_arrays()`` output; the configuration must match this model's."""
        saved = meta.get("config")
        if isinstance(saved, dict):
            saved = {**_OLD_DEFAULTS, **saved}  # files from before the options existed
        if meta.get("kind") != _FORMAT_KIND or saved != self.config:
            raise checkpoint.CheckpointError(
                f"{source}: the saved model has another configuration ({meta.get('config')}) "
                f"than this one ({self.config})"
            )
        for name, shape in (
            ("theta", self.theta.shape),
            ("opt_state", self.opt_state.shape),
            ("counters", self.counters.shape),
        ):
            if name not in arrays or arrays[name].shape != shape:
                raise checkpoint.CheckpointError(f"{source}: array {name!r} missing or of the wrong shape")
        if self.race:
            self._race.check_state(arrays, source, checkpoint.CheckpointError)
        self._pre.check_state(arrays, source, checkpoint.CheckpointError)
        self._keyed.restore(meta["keys"], arrays, source)
        self._pre.load_state(arrays)
        self.theta[:] = arrays["theta"]
        self.opt_state[:] = arrays["opt_state"]
        self.counters[:] = arrays["counters"]
        if self.race:
            self.race_scores[:] = arrays[race.SCORES]

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole model atomically (temp file, fsync, rename) with a checksum."""
        checkpoint.save(path, *self.state_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        """Read a file written by :meth:`save`; a corrupt or foreign file raises ``CheckpointError``."""
        # -- hardening (#16 items 3, 7; streamrnn/state_checks.py): the header is checked (memory,
        # configuration, shapes, unique keys) before anything is allocated, and theta after reading
        from .state_checks import check_finite, check_model_file

        arrays, meta = checkpoint.load(path, check=check_model_file)
        check_finite(arrays, str(path))
        # -- end hardening
        return cls.from_state(arrays, meta, source=str(path))

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Model(cell={c['cell']!r}, n_inputs={c['n_inputs']}, n_hidden={c['n_hidden']}, "
            f"n_outputs={c['n_outputs']}, task={c['task']!r}, "
            + (f"n_layers={c['n_layers']}, " if c["n_layers"] > 1 else "")
            + f"learner={c['learner']!r}, "
            f"optimizer={c['optimizer']!r}, lr={c['lr']}, dtype={c['dtype']!r})"
        )
