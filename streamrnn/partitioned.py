"""Per-partition model state for a member of a consumer group (scale-out).

When several daemons share a Kafka consumer group, Kafka hands each one a set of partitions and
moves partitions between them when members join or leave. So that the state of a key can move
with its partition, :class:`PartitionedModel` keeps one :class:`~streamrnn.Model` per partition
(its per-key states, and in forecast mode its pending inputs) and saves, loads and releases them
partition by partition. Two modes:

``"independent"``
    Every partition has its own parameters and optimizer state too: partition ``p``'s model
    depends only on partition ``p``'s records, in offset order, so it is the same whichever member
    runs it, however often the partition moves, and the same as one daemon reading the whole
    topic: bit-identical.
``"shared"``
    The partitions of a member share one set of parameters and optimizer state (the member's);
    members exchange parameters and average them (see the daemon's ``[group]`` section). Per-key
    state still lives with its partition.

No I/O here: the daemon owns the checkpoint store and the parameter exchange.

Examples
--------
>>> import numpy as np
>>> pm = PartitionedModel(dict(cell="gru", n_inputs=1, n_hidden=3, seed=0))
>>> X, Y = np.ones((4, 1)), np.zeros((4, 1))
>>> preds, losses = pm.step_many(X, Y, keys=["a", "b", "a", "a"], streams=["t:0", "t:1", "t:0", "t:0"])
>>> sorted(pm.streams), pm.model("t:0").keys, pm.model("t:1").keys
(['t:0', 't:1'], ['a'], ['b'])
>>> arrays, meta = pm.state_arrays("t:1")
>>> pm.release("t:1"); pm.load("t:1", arrays, meta); pm.model("t:1").keys
['b']
"""

from __future__ import annotations

import numpy as np

from .checkpoint import CheckpointError
from .forecast import NextRecordForecaster
from .model import Model

MODES = ("independent", "shared")


class PartitionedModel:
    """One :class:`~streamrnn.Model` per stream partition (named like ``"topic:3"``).

    Parameters
    ----------
    model_config : dict
        Keyword arguments of :class:`~streamrnn.Model`; every partition starts from them (same seed,
        so the same initial parameters).
    mode : {"independent", "shared"}
        Parameters per partition, or one set per member shared by its partitions.
    forecast : bool
        Forecast mode (:class:`~streamrnn.forecast.NextRecordForecaster` per partition).
    """

    def __init__(self, model_config, mode="independent", forecast=False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.config = dict(model_config)
        self.mode = mode
        self.forecast = forecast
        # shared mode: the member's parameters, optimizer state and counters, which every
        # partition model of this member uses in place
        self.shared = Model(**self.config) if mode == "shared" else None
        self._parts = {}  # stream -> (Model, NextRecordForecaster or None)
        self._loading = None  # (stream, model, forecaster) a checkpoint is being read into
        self.n_outputs = self._template().n_outputs

    def _template(self):
        return self.shared if self.shared is not None else Model(**self.config)

    # ------------------------------------------------------------------ partitions
    @property
    def streams(self):
        """The partitions held, in the order they were first used or loaded."""
        return list(self._parts)

    def model(self, stream):
        """The model of ``stream`` (created from the configuration on first use)."""
        return self._part(stream)[0]

    def _part(self, stream):
        part = self._parts.get(stream)
        if part is None:
            part = self._parts[stream] = self._new()
        return part

    def _new(self):
        model = Model(**self.config)
        if self.shared is not None:
            self._share_parameters(model)
        return model, (NextRecordForecaster(model) if self.forecast else None)

    def _share_parameters(self, model):
        model.theta, model.opt_state, model.counters = self.shared.theta, self.shared.opt_state, self.shared.counters

    def release(self, stream):
        """Drop everything held for ``stream`` (after it was saved, or when it moves away)."""
        self._parts.pop(stream, None)

    @property
    def n_keys(self):
        """Keys held, over every partition's model."""
        return sum(len(m.keys) for m, _ in self._parts.values())

    @property
    def stats(self):
        """The models' counts, summed (shared mode: the member's, counted once)."""
        models = [self.shared] if self.shared is not None else [m for m, _ in self._parts.values()]
        total = {}
        for m in models:
            for k, v in m.stats.items():
                total[k] = total.get(k, 0) + v
        return total or {k: 0 for k in Model(**self.config).stats}

    # ------------------------------------------------------------------ learning
    def step_many(self, X, Y, keys, streams, resets=None):
        """``Model.step_many`` of each record on its partition's model, in record order; ``resets``
        (bool per record, or None) as ``Model.step_many`` takes them.

        Consecutive records of one partition go to its model in one compiled call. Returns the
        predictions ``(N, n_outputs)`` and losses ``(N,)``. All or nothing per call: a row the
        model refuses raises ValueError and nothing of the batch is applied (the rows are checked
        on every partition's model before any learns).
        """
        n = len(streams)
        runs, start = [], 0
        for i in range(1, n + 1):
            if i == n or streams[i] != streams[start]:
                runs.append((streams[start], start, i))
                start = i
        for stream, a, b in runs:  # validate everything first: all or nothing
            model = self._part(stream)[0]
            model.validate_rows(X[a:b], Y[a:b])
        preds = np.empty((n, self.n_outputs), np.dtype(self.config.get("dtype", "float64")))
        losses = np.empty(n, np.float64)
        for stream, a, b in runs:
            model, forecaster = self._part(stream)
            k = keys[a:b]
            if forecaster is not None:
                p, l = forecaster.process(X[a:b], Y[a:b], k)
            else:
                p, l = model.step_many(
                    X[a:b], Y[a:b], k, return_loss=True, resets=None if resets is None else resets[a:b]
                )
            preds[a:b] = p
            losses[a:b] = l
        return preds, losses

    # ------------------------------------------------------------------ persistence
    def state_arrays(self, stream):
        """``(arrays, meta)`` of one partition: its model (parameters included: in shared mode
        the member's at this moment) and, in forecast mode, its pending inputs."""
        model, forecaster = self._part(stream)
        arrays, meta = model.state_arrays()
        meta = {"model": meta}
        if forecaster is not None:
            f_arrays, f_meta = forecaster.state_arrays()
            arrays = {**arrays, **f_arrays}
            meta.update(f_meta)
        return arrays, meta

    def allocate_for_load(self, stream):
        """An ``allocate`` for :func:`streamrnn.checkpoint.load` of ``stream``'s state, reading
        per-key arrays straight into the model :meth:`load` then installs."""
        model, forecaster = self._new()
        self._loading = (stream, model, forecaster)
        return model.allocate_for_load

    def load(self, stream, arrays, meta, source="<state>", adopt_parameters=False):
        """Install a partition's saved state; CheckpointError (nothing changed) if it does not fit.

        Shared mode keeps the member's parameters and optimizer state, unless
        ``adopt_parameters`` (the member has none of its own yet): then the saved ones become the
        member's.
        """
        staged, self._loading = self._loading, None
        if staged is not None and staged[0] == stream:
            _, model, forecaster = staged
        else:
            model, forecaster = self._new()
        if self.shared is not None:  # load into the model's own arrays, then share or adopt
            model.theta, model.opt_state, model.counters = (
                np.empty_like(self.shared.theta),
                np.empty_like(self.shared.opt_state),
                np.empty_like(self.shared.counters),
            )
        if "model" not in meta:
            raise CheckpointError(f"{source}: no model state")
        model.load_state(arrays, meta["model"], source=source)
        if forecaster is not None:
            forecaster.load_state(arrays, meta, source=source)
        if self.shared is not None:
            if adopt_parameters:
                self.shared.theta[:] = model.theta
                self.shared.opt_state[:] = model.opt_state
                self.shared.counters[:] = model.counters
            self._share_parameters(model)
        self._parts[stream] = (model, forecaster)

    # ------------------------------------------------------------------ shared parameters
    @property
    def parameters(self):
        """Shared mode: the member's flat parameter vector (live; updated in place)."""
        if self.shared is None:
            raise ValueError("parameters are per partition in independent mode")
        return self.shared.theta

    def set_parameters(self, theta):
        """Shared mode: replace the member's parameters (e.g. by the group's average), in place,
        so every partition model sees them. Non-finite values are refused."""
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != self.parameters.shape:
            raise ValueError(f"parameters of shape {theta.shape}, expected {self.parameters.shape}")
        if not np.isfinite(theta).all():
            raise ValueError("parameters contain NaN or inf")
        self.parameters[:] = theta
