"""Offline minibatch training with full (optionally bidirectional) BPTT.

Data are time-major: ``X`` of shape ``(time_steps, n_samples, n_inputs)``.
The network is::

    X -> [feed-forward layers "ff_in"] -> recurrent stack (n_layers, 1 or 2 directions)
      -> merge ("sum" or "concat" of the directions) -> [feed-forward layers "ff_out"] -> readout

Layer ``l > 0`` reads both directions of layer ``l - 1`` concatenated, as
``torch.nn.GRU(bidirectional=True)``; ``merge`` only applies to the last
layer's output. The reverse direction runs from ``t = T-1`` down to 0 from a
zero state. ``output="many_to_many"`` predicts at every step (``Y`` has shape
``(T, n_samples[, n_outputs])``); ``"many_to_one"`` predicts once per sequence
from the final states, PyTorch's ``h_n`` of the last layer: the forward
direction after ``t = T-1`` and the reverse direction after ``t = 0``
(``Y`` of shape ``(n_samples[, n_outputs])``).

``output="seq2seq"`` is an encoder-decoder (asynchronous sequence to
sequence): ``X`` of shape ``(T_in, n_samples, n_inputs)`` is read by the
stack above (the encoder, no readout of its own) and a unidirectional decoder
of ``n_layers`` layers, with its own cell parameters (``weight_ih_l0_dec``,
``weight_hh_l0_dec``, ...), runs ``T_out`` steps, ``Y`` of shape
``(T_out, n_samples[, n_outputs])``; ``T_out`` need not equal ``T_in``. The
decoder's layer ``l`` starts from the encoder's layer ``l`` final state (for
LSTM both ``h`` and ``c``): the forward direction's state after ``t = T_in-1``,
plus, when the encoder is bidirectional, the reverse direction's state after
``t = 0`` (the two are summed, whatever ``merge`` says). Its input at step
``t`` is its previous output: in training (``loss``, ``gradient``, ``fit``) the
previous true target (teacher forcing), zeros at ``t = 0``; in ``predict`` its
own previous prediction (free running). Targets are coded as the readout
reads them: the value (regression), the one-hot vector of the class
(classification; free running: of the most probable class), 0 or 1 (binary;
free running: ``P(y = 1) > 0.5``). ``ff_out`` layers and the readout map the
decoder's top layer to the outputs.

``tie_directions=True`` (bidirectional only) gives each layer's reverse
direction the forward direction's weights: there are no ``_reverse``
parameters, and the gradients of the two directions add up in the shared ones.

Loss: the per-step losses of :mod:`streamrnn.losses`, summed over time steps
(as ``Model.gradient`` does) and averaged over samples. Parameters carry
PyTorch's names: ``weight_ih_l0``, ``weight_hh_l0_reverse``, ``ff_in.0.weight``,
``ff_out.0.bias``, ``readout.weight``, ...

Examples
--------
>>> import numpy as np
>>> import streamrnn.bptt as bptt
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(6, 32, 2))
>>> Y = X.sum(axis=0)                       # many-to-one: sum of each sequence
>>> m = bptt.fit(X, Y, cell="gru", n_hidden=4, bidirectional=True, output="many_to_one",
...              epochs=3, batch_size=8, lr=1e-2)
>>> m.predict(X).shape
(32, 2)
>>> len(m.history["train"])
3
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import checkpoint, parameters
from .cells.dispatch import CELL_IDS, ELEMENTWISE, n_gates
from .learners.bptt_batch import allocate, batch_loss, stack_backward, stack_forward
from .losses import BINARY, CLASSIFICATION, REGRESSION, TASK_IDS
from .optim import OPTIMIZER_IDS, clip_grad_norm, optimizer_step, squared_norm, state_shape
from .validation import optimizer_settings

__all__ = ["fit", "OfflineModel"]

_ACTS = ("tanh", "relu")
_OUTPUTS = ("many_to_many", "many_to_one", "seq2seq")

ArrayLike = Any  # what np.asarray accepts


def _act(name, z):
    return np.tanh(z) if name == "tanh" else np.maximum(z, 0.0)


def _act_grad(name, a):
    """Derivative from the activation's output ``a``."""
    return 1.0 - a * a if name == "tanh" else (a > 0.0).astype(a.dtype)


class OfflineModel:
    """A recurrent network trained offline with full BPTT; see the module docstring.

    Built by :func:`fit`, or directly (then the weights are PyTorch-style random), with the
    keywords of :func:`fit` that describe the network, and ``output_steps``: for seq2seq,
    how many steps :meth:`predict` runs by default (:func:`fit` sets it to ``T_out``)."""

    def __init__(
        self,
        cell="gru",
        n_inputs=1,
        n_hidden=16,
        n_outputs=1,
        n_layers=1,
        bidirectional=False,
        merge="sum",
        output="many_to_many",
        task="regression",
        hidden_layers_before=(),
        hidden_layers_after=(),
        activation="tanh",
        seed=0,
        dtype="float64",
        tie_directions=False,
        output_steps=None,
    ):
        if cell not in CELL_IDS:
            raise ValueError(f"cell must be one of {sorted(CELL_IDS)}; got {cell!r}")
        if task not in TASK_IDS:
            raise ValueError(f"task must be one of {sorted(TASK_IDS)}; got {task!r}")
        if merge not in ("sum", "concat"):
            raise ValueError(f"merge must be 'sum' or 'concat'; got {merge!r}")
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {_OUTPUTS}; got {output!r}")
        if tie_directions and not bidirectional:
            raise ValueError("tie_directions=True needs bidirectional=True")
        if output_steps is not None and int(output_steps) < 1:
            raise ValueError(f"output_steps must be a positive integer; got {output_steps}")
        if activation not in _ACTS:
            raise ValueError(f"activation must be one of {_ACTS}; got {activation!r}")
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32'; got {dtype!r}")
        for name, v in (
            ("n_inputs", n_inputs),
            ("n_hidden", n_hidden),
            ("n_outputs", n_outputs),
            ("n_layers", n_layers),
        ):
            if int(v) < 1:
                raise ValueError(f"{name} must be a positive integer; got {v}")
        if task == BINARY and int(n_outputs) != 1:
            raise ValueError("task='binary' needs n_outputs=1")
        self.cell, self.task, self.merge, self.output, self.activation = cell, task, merge, output, activation
        self.n_inputs, self.n_hidden, self.n_outputs = int(n_inputs), int(n_hidden), int(n_outputs)
        self.n_layers, self.bidirectional = int(n_layers), bool(bidirectional)
        self.tie_directions = bool(tie_directions)
        self.output_steps = None if output_steps is None else int(output_steps)
        self.hidden_layers_before = tuple(int(h) for h in hidden_layers_before)
        self.hidden_layers_after = tuple(int(h) for h in hidden_layers_after)
        self.dtype = np.dtype(dtype)
        self._cell, self._task = CELL_IDS[cell], TASK_IDS[task]
        self.history = {"train": [], "validation": []}
        layout, bounds = self._layout()
        self._blocks = parameters.blocks(layout)
        self.n_params = sum(s for *_, s in self._blocks)
        self._pos = {name: (p, s, shape) for name, shape, p, s in self._blocks}
        D = 2 if self.bidirectional else 1
        rev = "" if self.tie_directions else "_reverse"
        self._offs = np.array(
            [self._pos[f"weight_ih_l{l}" + (rev if d else "")][0] for l in range(self.n_layers) for d in range(D)],
            dtype=np.int64,
        )
        if self.output == "seq2seq":
            self._offs_dec = np.array(
                [self._pos[f"weight_ih_l{l}_dec"][0] for l in range(self.n_layers)], dtype=np.int64
            )
        rng = np.random.default_rng(seed)
        self.theta = np.empty(self.n_params, self.dtype)
        for (_, _, p, s), bound in zip(self._blocks, bounds):
            self.theta[p : p + s] = rng.uniform(-bound, bound, s)

    # ------------------------------------------------------------------ layout
    def _layout(self):
        """(name, shape) of every block in flat order, and its PyTorch init bound."""
        out, bounds = [], []
        width = self.n_inputs
        for i, h in enumerate(self.hidden_layers_before):
            b = 1.0 / math.sqrt(width)
            out += [(f"ff_in.{i}.weight", (h, width)), (f"ff_in.{i}.bias", (h,))]
            bounds += [b, b]
            width = h
        G, n = n_gates(self._cell), self.n_hidden
        D = 2 if self.bidirectional else 1
        b = 1.0 / math.sqrt(n)
        hh = (G * n,) if self._cell in ELEMENTWISE else (G * n, n)

        def cell_blocks(sfx, m):
            return [
                (f"weight_ih_{sfx}", (G * n, m)),
                (f"weight_hh_{sfx}", hh),
                (f"bias_ih_{sfx}", (G * n,)),
                (f"bias_hh_{sfx}", (G * n,)),
            ]

        for l in range(self.n_layers):
            m = width if l == 0 else D * n
            for d in range(1 if self.tie_directions else D):
                out += cell_blocks(f"l{l}" + ("_reverse" if d else ""), m)
                bounds += [b] * 4
        if self.output == "seq2seq":  # the decoder reads the coded previous target
            for l in range(self.n_layers):
                out += cell_blocks(f"l{l}_dec", self.n_outputs if l == 0 else n)
                bounds += [b] * 4
            width = n
        else:
            width = D * n if self.merge == "concat" else n
        for i, h in enumerate(self.hidden_layers_after):
            b = 1.0 / math.sqrt(width)
            out += [(f"ff_out.{i}.weight", (h, width)), (f"ff_out.{i}.bias", (h,))]
            bounds += [b, b]
            width = h
        b = 1.0 / math.sqrt(width)
        out += [("readout.weight", (self.n_outputs, width)), ("readout.bias", (self.n_outputs,))]
        bounds += [b, b]
        return out, bounds

    def _view(self, theta, name):
        p, s, shape = self._pos[name]
        return theta[p : p + s].reshape(shape)

    def get_weights(self):
        """Copies of the parameters, a dict of arrays with PyTorch-style names and shapes."""
        return parameters.unflatten(self.theta, self._blocks)

    def set_weights(self, weights):
        """Replace every parameter; ``weights`` must hold exactly the names of ``get_weights()``."""
        self.theta[:] = parameters.flatten(weights, self._blocks, self.n_params, self.dtype)

    # ------------------------------------------------------------------ input checks
    def _check_X(self, X):
        X = np.asarray(X)
        if X.ndim != 3:
            raise ValueError(f"X must have shape (time_steps, n_samples, n_inputs); got shape {X.shape}")
        if X.shape[2] != self.n_inputs:
            raise ValueError(f"X has {X.shape[2]} inputs per step; the model expects n_inputs={self.n_inputs}")
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(f"X needs at least one time step and one sample; got shape {X.shape}")
        X = np.ascontiguousarray(X, dtype=self.dtype)
        if not np.isfinite(X).all():
            raise ValueError("X contains NaN or inf")
        return X

    def _check_Y(self, Y, X):
        T, B = X.shape[:2]
        Y = np.asarray(Y, dtype=self.dtype)
        width = self.n_outputs if self._task == REGRESSION else 1
        if self.output == "seq2seq":
            if Y.ndim not in (2, 3) or Y.shape[0] < 1:
                raise ValueError(
                    f"Y must have shape (T_out, {B}, {width}) (or (T_out, {B}) for one value) for "
                    f"output='seq2seq', task={self.task!r}; got shape {Y.shape}"
                )
            lead = (Y.shape[0], B)
        else:
            lead = (T, B) if self.output == "many_to_many" else (B,)
        if Y.shape == lead:
            Y = Y.reshape(lead + (1,))
        if Y.shape != lead + (width,):
            raise ValueError(
                f"Y must have shape {lead + (width,)} (or {lead} for one value) for "
                f"output={self.output!r}, task={self.task!r}; got shape {Y.shape}"
            )
        if not np.isfinite(Y).all():
            raise ValueError("Y contains NaN or inf")
        if self._task == CLASSIFICATION:
            if (Y != np.round(Y)).any() or Y.min() < 0 or Y.max() >= self.n_outputs:
                raise ValueError(f"classification targets must be integers in [0, {self.n_outputs})")
        elif self._task == BINARY and not np.isin(Y, (0.0, 1.0)).all():
            raise ValueError("binary targets must be 0 or 1")
        return np.ascontiguousarray(Y)

    # ------------------------------------------------------------------ forward / backward
    def _ff_in(self, theta, X):
        acts_in = [X]
        h = X
        for i in range(len(self.hidden_layers_before)):
            W, b = self._view(theta, f"ff_in.{i}.weight"), self._view(theta, f"ff_in.{i}.bias")
            h = np.ascontiguousarray(_act(self.activation, h @ W.T + b))
            acts_in.append(h)
        return acts_in

    def _ff_in_backward(self, theta, grad, acts_in, g):
        for i in range(len(self.hidden_layers_before) - 1, -1, -1):
            dpre = g * _act_grad(self.activation, acts_in[i + 1])
            W = self._view(theta, f"ff_in.{i}.weight")
            self._view(grad, f"ff_in.{i}.weight")[:] += np.tensordot(dpre, acts_in[i], axes=([0, 1], [0, 1]))
            self._view(grad, f"ff_in.{i}.bias")[:] += dpre.reshape(-1, dpre.shape[-1]).sum(0)
            g = dpre @ W

    def _head(self, theta, feats):
        """``ff_out`` layers and the readout: (logits, the activations they read)."""
        acts_out = [feats]
        h2 = feats
        for i in range(len(self.hidden_layers_after)):
            W, b = self._view(theta, f"ff_out.{i}.weight"), self._view(theta, f"ff_out.{i}.bias")
            h2 = _act(self.activation, h2 @ W.T + b)
            acts_out.append(h2)
        logits = h2 @ self._view(theta, "readout.weight").T + self._view(theta, "readout.bias")
        return logits, acts_out

    def _head_backward(self, theta, grad, dz, acts_out):
        """Add the head's gradient to ``grad``; return dL/d(features) given ``dz = dL/dlogits``."""
        Wo = self._view(theta, "readout.weight")
        gsl = self._view(grad, "readout.weight")
        gsl += np.tensordot(dz, acts_out[-1], axes=(list(range(dz.ndim - 1)), list(range(dz.ndim - 1))))
        self._view(grad, "readout.bias")[:] += dz.reshape(-1, self.n_outputs).sum(0)
        g = dz @ Wo
        for i in range(len(self.hidden_layers_after) - 1, -1, -1):
            a = acts_out[i + 1]
            dpre = g * _act_grad(self.activation, a)
            W = self._view(theta, f"ff_out.{i}.weight")
            ax = list(range(dpre.ndim - 1))
            self._view(grad, f"ff_out.{i}.weight")[:] += np.tensordot(dpre, acts_out[i], axes=(ax, ax))
            self._view(grad, f"ff_out.{i}.bias")[:] += dpre.reshape(-1, dpre.shape[-1]).sum(0)
            g = dpre @ W
        return g

    def _encode(self, theta, X):
        acts_in = self._ff_in(theta, X)
        T, B = X.shape[:2]
        n, D = self.n_hidden, 2 if self.bidirectional else 1
        states, caches, outputs = allocate(self._cell, self.n_layers, D, n, T, B, self.dtype)
        stack_forward(self._cell, self.n_layers, D, n, theta, self._offs, acts_in[-1], states, caches, outputs)
        return acts_in, states, caches, outputs

    def _decoder_start(self, states):
        """The decoder's initial states (L, 1, B, S): each encoder layer's final state, directions summed."""
        S0 = states[:, :1, -1].copy()  # a copy: the sum below must not write into the encoder's states
        if self.bidirectional:
            S0 += states[:, 1:2, -1]
        return S0

    def _code(self, Y):
        """Targets (..., 1 or n_outputs) as the decoder reads them (..., n_outputs)."""
        if self._task == CLASSIFICATION:
            return np.eye(self.n_outputs, dtype=self.dtype)[Y[..., 0].astype(np.int64)]
        return Y

    def _code_prediction(self, logits):
        """The decoder's free-running input: its own prediction, coded as :meth:`_code` codes targets."""
        if self._task == CLASSIFICATION:
            return self._code(np.argmax(logits, axis=-1)[..., None])
        if self._task == BINARY:
            return (logits > 0.0).astype(self.dtype)
        return np.ascontiguousarray(logits)

    def _decode(self, theta, S0, U):
        """Run the decoder over the inputs ``U`` (T_out, B, n_outputs) from the states ``S0``."""
        T_out, B = U.shape[:2]
        dec = allocate(self._cell, self.n_layers, 1, self.n_hidden, T_out, B, self.dtype)
        stack_forward(self._cell, self.n_layers, 1, self.n_hidden, theta, self._offs_dec, U, *dec, S0)
        return dec

    def _free_run(self, theta, X, n_steps):
        """seq2seq logits (n_steps, B, n_outputs), each decoder step reading the previous prediction."""
        B = X.shape[1]
        S = self._decoder_start(self._encode(theta, X)[1])
        u = np.zeros((1, B, self.n_outputs), self.dtype)
        logits = np.empty((n_steps, B, self.n_outputs), self.dtype)
        for t in range(n_steps):
            states, _, outputs = self._decode(theta, S, u)
            S = np.ascontiguousarray(states[:, :, 1])
            logits[t] = self._head(theta, outputs[-1])[0][0]
            u = np.ascontiguousarray(self._code_prediction(logits[t : t + 1]))
        return logits

    def _forward(self, theta, X, Y=None):
        n, D = self.n_hidden, 2 if self.bidirectional else 1
        acts_in, states, caches, outputs = self._encode(theta, X)
        dec = None
        if self.output == "seq2seq":  # teacher forcing: the previous true target, zeros first
            U = np.zeros(Y.shape[:2] + (self.n_outputs,), self.dtype)
            U[1:] = self._code(Y[:-1])
            S0 = self._decoder_start(states)
            dec = (U, S0) + self._decode(theta, S0, U)
            feats = dec[-1][-1]
        else:
            top = outputs[-1]  # (T, B, D n)
            if self.output == "many_to_one":
                feats = top[-1].copy()
                if D == 2:
                    feats[:, n:] = top[0, :, n:]
            else:
                feats = top
            if D == 2 and self.merge == "sum":
                feats = feats[..., :n] + feats[..., n:]
        logits, acts_out = self._head(theta, feats)
        return logits, (acts_in, states, caches, outputs, acts_out, dec)

    def _loss_grad(self, theta, X, Y, want_grad=True):
        """Return (loss, flat gradient or None): loss = mean over samples of Σ_t L_t."""
        B = X.shape[1]
        logits, (acts_in, states, caches, outputs, acts_out, dec) = self._forward(theta, X, Y)
        flat_logits = np.ascontiguousarray(logits.reshape(-1, self.n_outputs))
        dlog = np.empty_like(flat_logits)
        loss = batch_loss(self._task, flat_logits, Y.reshape(-1, Y.shape[-1]), dlog) / B
        if not want_grad:
            return loss, None
        grad = np.zeros_like(theta)
        dz = dlog.reshape(logits.shape) / B
        g = self._head_backward(theta, grad, dz, acts_out)
        n, D, L = self.n_hidden, 2 if self.bidirectional else 1, self.n_layers
        T = X.shape[0]
        G_top = np.zeros((T, B, D * n), self.dtype)
        G_ST = None
        if self.output == "seq2seq":
            U, S0, d_states, d_caches, d_outputs = dec
            G_S0 = np.zeros(S0.shape, self.dtype)
            G_U = np.zeros(U.shape, self.dtype)
            G_dec = np.ascontiguousarray(g)
            stack_backward(
                self._cell,
                L,
                1,
                n,
                theta,
                self._offs_dec,
                U,
                d_states,
                d_caches,
                d_outputs,
                G_dec,
                grad,
                G_U,
                G_S0=G_S0,
            )
            G_ST = np.ascontiguousarray(np.repeat(G_S0, D, axis=1))  # each direction's final state fed S0
        else:
            if D == 2 and self.merge == "sum":
                g = np.concatenate([g, g], axis=-1)
            if self.output == "many_to_one":
                G_top[-1, :, :n] = g[:, :n]
                if D == 2:
                    G_top[0, :, n:] = g[:, n:]
            else:
                G_top[:] = g
        h = acts_in[-1]
        G_X = np.zeros(h.shape, self.dtype)
        stack_backward(self._cell, L, D, n, theta, self._offs, h, states, caches, outputs, G_top, grad, G_X, G_ST=G_ST)
        self._ff_in_backward(theta, grad, acts_in, G_X)
        return loss, grad

    # ------------------------------------------------------------------ public
    def predict(self, X, n_steps=None):
        """Predictions for time-major ``X`` (T, n_samples, n_inputs).

        Parameters
        ----------
        X : array_like, shape (T, n_samples, n_inputs)
            The input sequences.
        n_steps : int, optional
            seq2seq only: how many output steps the decoder runs (free running, each step
            reading its own previous prediction); default ``output_steps``, the ``T_out`` of
            the targets the model was fitted on.

        Returns
        -------
        numpy.ndarray
            ``(T, n_samples, n_outputs)`` many-to-many, ``(n_samples, n_outputs)`` many-to-one,
            ``(n_steps, n_samples, n_outputs)`` seq2seq: regression values, class probabilities
            (classification) or ``P(y = 1)`` (binary).
        """
        X = self._check_X(X)
        if self.output == "seq2seq":
            n_steps = self.output_steps if n_steps is None else n_steps
            if n_steps is None or int(n_steps) < 1:
                raise ValueError(f"seq2seq predict needs n_steps >= 1 (or a fitted output_steps); got {n_steps}")
            logits = self._free_run(self.theta, X, int(n_steps))
        else:
            if n_steps is not None:
                raise ValueError(f"n_steps is for output='seq2seq'; this model has output={self.output!r}")
            logits, _ = self._forward(self.theta, X)
        if self._task == REGRESSION:
            return logits
        if self._task == BINARY:
            return 1.0 / (1.0 + np.exp(-logits))
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def loss(self, X, Y):
        """Mean over samples of the summed per-step loss (seq2seq: with teacher forcing).

        Parameters
        ----------
        X : ndarray (T, n_samples, n_inputs)
        Y : ndarray
            ``(T, n_samples[, n_outputs])`` (many to many), ``(n_samples[, n_outputs])`` (many to one) or
            ``(T_out, n_samples[, n_outputs])`` (seq2seq).

        Returns
        -------
        float
        """
        X = self._check_X(X)
        return float(self._loss_grad(self.theta, X, self._check_Y(Y, X), want_grad=False)[0])

    def gradient(self, X, Y):
        """Gradient of :meth:`loss` at the current weights, keyed like ``get_weights()``.

        Parameters
        ----------
        X, Y
            As :meth:`loss` takes them.

        Returns
        -------
        dict of str to ndarray
            One array per parameter, shaped as in ``get_weights()``.
        """
        X = self._check_X(X)
        return parameters.unflatten(self._loss_grad(self.theta, X, self._check_Y(Y, X))[1], self._blocks)

    def _config(self):
        return {
            "cell": self.cell,
            "n_inputs": self.n_inputs,
            "n_hidden": self.n_hidden,
            "n_outputs": self.n_outputs,
            "n_layers": self.n_layers,
            "bidirectional": self.bidirectional,
            "merge": self.merge,
            "output": self.output,
            "task": self.task,
            "hidden_layers_before": list(self.hidden_layers_before),
            "hidden_layers_after": list(self.hidden_layers_after),
            "activation": self.activation,
            "dtype": self.dtype.name,
            "tie_directions": self.tie_directions,
            "output_steps": self.output_steps,
        }

    def save(self, path):
        """Write config, weights and history atomically (:mod:`streamrnn.checkpoint`)."""
        meta = {"kind": "streamrnn.bptt.OfflineModel", "config": self._config(), "history": self.history}
        checkpoint.save(path, self.get_weights(), meta)

    @classmethod
    def load(cls, path):
        """The :class:`OfflineModel` saved by :meth:`save` at ``path`` (weights, config, training history);
        CheckpointError if the file is not one.
        """
        arrays, meta = checkpoint.load(path)
        if meta.get("kind") != "streamrnn.bptt.OfflineModel":
            raise checkpoint.CheckpointError(f"{path}: not an offline BPTT model")
        m = cls(**meta["config"])
        m.set_weights(arrays)
        m.history = {k: list(v) for k, v in meta.get("history", {}).items()}
        return m

    def __repr__(self):
        return (
            f"OfflineModel(cell={self.cell!r}, n_hidden={self.n_hidden}, n_layers={self.n_layers}, "
            f"bidirectional={self.bidirectional}, merge={self.merge!r}, output={self.output!r})"
        )


def fit(
    X: ArrayLike,
    Y: ArrayLike,
    cell: str = "gru",
    n_hidden: int = 16,
    n_layers: int = 1,
    bidirectional: bool = False,
    merge: str = "sum",
    tie_directions: bool = False,
    output: str = "many_to_many",
    task: str = "regression",
    n_outputs: int | None = None,
    hidden_layers_before: Sequence[int] = (),
    hidden_layers_after: Sequence[int] = (),
    activation: str = "tanh",
    optimizer: str = "adam",
    lr: float = 1e-3,
    clip: float | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    shuffle: bool = True,
    validation: float = 0.1,
    patience: int | None = None,
    seed: int = 0,
    dtype: str = "float64",
    verbose: bool = False,
) -> "OfflineModel":
    """Train an :class:`OfflineModel` on time-major ``X`` (T, n_samples, n_inputs) and targets ``Y``.

    The validation split is the last ``validation`` fraction of the samples (before
    any shuffling, as Keras does); ``validation=0`` trains on everything. Each epoch
    shuffles the training samples (``shuffle``, seeded by ``seed``) and takes one
    optimizer step per minibatch on the mean loss, after clipping the gradient's
    global norm to ``clip``. With ``patience``, training stops once the validation
    loss has not improved for ``patience`` epochs and the best weights are restored.

    Parameters
    ----------
    X : array_like, shape (T, n_samples, n_inputs)
        Input sequences, time-major (``T_in`` steps for seq2seq).
    Y : array_like
        Targets: ``(T, n_samples[, n_outputs])`` many-to-many, ``(n_samples[, n_outputs])``
        many-to-one, ``(T_out, n_samples[, n_outputs])`` seq2seq (``T_out`` of its own);
        class indices (classification) or 0/1 (binary) in a single column.
    cell : str, default "gru"
        ``"rnn"``, ``"gru"``, ``"lstm"`` or an element-wise cell.
    n_hidden, n_layers : int
        Units per direction and layer; number of stacked layers (the decoder has as many).
    bidirectional : bool, default False
        Add a reverse direction to every (encoder) layer.
    merge : {"sum", "concat"}
        How the last layer's two directions are combined (not used by seq2seq).
    tie_directions : bool, default False
        Bidirectional only: the reverse direction shares the forward direction's weights
        (no ``_reverse`` parameters; the gradients of both directions are summed).
    output : {"many_to_many", "many_to_one", "seq2seq"}
        A prediction per step, one per sequence, or an encoder-decoder (module docstring):
        the decoder is trained with teacher forcing and predicts free running.
    task : {"regression", "classification", "binary"}
        The per-step loss.
    n_outputs : int, optional
        Defaults to Y's width (regression), max class + 1 (classification), 1 (binary).
    hidden_layers_before, hidden_layers_after : sequence of int
        Widths of the feed-forward layers before the recurrent stack and before the readout.
    activation : {"tanh", "relu"}
        Their activation.
    optimizer, lr, clip : str, float, float or None
        Optimizer (``"adam"`` or ``"sgd"``), learning rate, global gradient-norm clip.
    epochs, batch_size, shuffle, validation, patience : see above.
    seed : int
        Seeds the initial weights and the shuffling.
    dtype : {"float64", "float32"}
    verbose : bool
        Print the losses of every epoch.

    Returns
    -------
    OfflineModel
        The fitted model; ``history`` holds the per-epoch train and validation losses.
    """
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"X must have shape (time_steps, n_samples, n_inputs); got shape {X.shape}")
    if optimizer not in OPTIMIZER_IDS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_IDS)}; got {optimizer!r}")
    if not 0.0 <= validation < 1.0:
        raise ValueError(f"validation must be in [0, 1); got {validation}")
    if int(epochs) < 1 or int(batch_size) < 1:
        raise ValueError("epochs and batch_size must be positive integers")
    if n_outputs is None:
        Ya = np.asarray(Y, dtype=float)
        if task == "classification":
            if not np.isfinite(Ya).all():
                raise ValueError("Y contains NaN or inf")
            n_outputs = int(Ya.max()) + 1
        elif task == "binary":
            n_outputs = 1
        else:
            lead = 1 if output == "many_to_one" else 2
            n_outputs = 1 if Ya.ndim == lead else Ya.shape[-1]
    m = OfflineModel(
        cell=cell,
        n_inputs=X.shape[2],
        n_hidden=n_hidden,
        n_outputs=n_outputs,
        n_layers=n_layers,
        bidirectional=bidirectional,
        merge=merge,
        output=output,
        task=task,
        hidden_layers_before=hidden_layers_before,
        hidden_layers_after=hidden_layers_after,
        activation=activation,
        seed=seed,
        dtype=dtype,
        tie_directions=tie_directions,
    )
    X = m._check_X(X)
    Y = m._check_Y(Y, X)
    if output == "seq2seq":
        m.output_steps = Y.shape[0]  # what predict runs by default
    N = X.shape[1]
    n_val = int(round(validation * N))
    if n_val >= N:
        raise ValueError(f"validation={validation} leaves no training samples out of {N}")
    n_tr = N - n_val
    timed = output != "many_to_one"  # Y's samples on axis 1
    Xtr, Ytr = X[:, :n_tr], (Y[:, :n_tr] if timed else Y[:n_tr])
    Xva, Yva = X[:, n_tr:], (Y[:, n_tr:] if timed else Y[n_tr:])
    rng = np.random.default_rng(seed)
    kind = OPTIMIZER_IDS[optimizer]
    _, hyper = optimizer_settings(optimizer, lr, None, (0.9, 0.999), 1e-8, 0.0, 0.0)  # clipped below, per batch
    opt_state = np.zeros(state_shape(optimizer, m.n_params), m.dtype)
    step = 0
    best, best_theta, since = np.inf, m.theta.copy(), 0
    for epoch in range(int(epochs)):
        order = rng.permutation(n_tr) if shuffle else np.arange(n_tr)
        total = 0.0
        for s in range(0, n_tr, int(batch_size)):
            idx = order[s : s + int(batch_size)]
            xb = np.ascontiguousarray(Xtr[:, idx])
            yb = np.ascontiguousarray(Ytr[:, idx] if timed else Ytr[idx])
            loss, grad = m._loss_grad(m.theta, xb, yb)
            sq = squared_norm(grad)
            if not (np.isfinite(loss) and np.isfinite(sq)):
                continue
            if clip is not None:
                clip_grad_norm(grad, float(clip), sq)
            step += 1
            optimizer_step(kind, m.theta, grad, opt_state, step, hyper)
            total += loss * len(idx)
        m.history["train"].append(total / n_tr)
        if n_val:
            vl = float(m._loss_grad(m.theta, Xva, Yva, want_grad=False)[0])
            m.history["validation"].append(vl)
            if vl < best:
                best, best_theta, since = vl, m.theta.copy(), 0
            else:
                since += 1
        if verbose:
            va = f", validation {m.history['validation'][-1]:.6g}" if n_val else ""
            print(f"epoch {epoch + 1}: train {m.history['train'][-1]:.6g}{va}")
        if patience is not None and n_val and since >= int(patience):
            m.theta[:] = best_theta
            break
    return m


def load(path):
    """Load a model written by :meth:`OfflineModel.save`."""
    return OfflineModel.load(path)
