"""Checks of a Model checkpoint's header against a configuration, before anything is allocated.

A checkpoint is trusted data (see :mod:`streamrnn.checkpoint`), so what a file says is checked
before it is believed: the metadata's structure, the saved keys (well-formed, unique, at most
``max_keys``; two equal keys would share a slot), each array's name, dtype and shape against the
model the configuration builds, and the memory that model needs. After reading, the parameters,
optimizer state and recurrent states must be finite. Every fault is a CheckpointError.

These functions are the ``check`` of :func:`streamrnn.checkpoint.load` (``check(layout, meta)``):

>>> import numpy as np, streamrnn as sr
>>> from streamrnn import checkpoint
>>> m = sr.Model(n_inputs=2, n_hidden=3)
>>> arrays, meta = m.state_arrays()
>>> meta["keys"] = [["s", "a"], ["s", "a"]]
>>> data = checkpoint.dumps(arrays, meta)
>>> checkpoint.loads(data, "x.ckpt", check=check_model_file)
Traceback (most recent call last):
...
streamrnn.checkpoint.CheckpointError: x.ckpt: saved keys: the key 'a' appears more than once
"""

from __future__ import annotations

import numpy as np

from .checkpoint import CheckpointError

_KIND = "streamrnn.Model"


def check_keys(encoded, what="saved keys", max_keys=None):
    """The decoded keys of a checkpoint's ``[[tag, value], ...]`` list; CheckpointError unless each is
    ``["n", None]``, ``["s", str]`` or ``["i", int]``, all distinct, and at most ``max_keys``."""
    if not isinstance(encoded, list):
        raise CheckpointError(f"{what}: not a list")
    if max_keys is not None and len(encoded) > max_keys:
        raise CheckpointError(f"{what}: {len(encoded)} keys saved, more than max_keys={max_keys}")
    keys = []
    for i, entry in enumerate(encoded):
        if not isinstance(entry, list) or len(entry) != 2:
            raise CheckpointError(f"{what}: entry {i} is not a [tag, value] pair")
        tag, value = entry
        if tag == "n" and value is None:
            keys.append(None)
        elif tag == "s" and isinstance(value, str):
            keys.append(value)
        elif tag == "i" and isinstance(value, int) and not isinstance(value, bool):
            keys.append(value)
        else:
            raise CheckpointError(f"{what}: entry {i} is not a valid key: {str(entry)[:80]}")
    if len(set(keys)) != len(keys):
        seen, dup = set(), None
        for k in keys:
            if k in seen:
                dup = k
                break
            seen.add(k)
        raise CheckpointError(f"{what}: the key {dup!r} appears more than once")
    return keys


def model_layout(model):
    """name -> (shape, dtype) of a Model's checkpoint arrays; per-key arrays have shape
    ``(0, ...)`` (their rows are the saved keys). ``model`` should hold no keys yet (the daemon's
    fresh model), or this sorts its rows (cheap, no copy)."""
    arrays, _ = model.state_arrays()
    out = {}
    for name, arr in arrays.items():
        shape = (0,) + arr.shape[1:] if name.startswith("key.") else arr.shape
        out[name] = (shape, arr.dtype)
    return out


def check_model_header(layout, meta, model, hint="", extra=None):
    """A Model's saved ``meta`` (``{"kind", "config", "keys"}``) and the file's array ``layout``
    against ``model`` (built from the configuration it will be restored into); ``extra``: name ->
    (shape, dtype) of other arrays the file must hold. CheckpointError (``hint`` appended when the
    configurations differ)."""
    from .model import _OLD_DEFAULTS

    if not isinstance(meta, dict) or meta.get("kind") != _KIND or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"not a streamrnn Model checkpoint{hint}")
    saved = {**_OLD_DEFAULTS, **meta["config"]}
    if saved != model.config:
        raise CheckpointError(
            f"the saved model has another configuration ({meta['config']}) than this one ({model.config}){hint}"
        )
    keys = check_keys(meta.get("keys"), max_keys=model.max_keys)
    expected = {
        name: ((len(keys),) + shape[1:] if name.startswith("key.") else shape, dtype)
        for name, (shape, dtype) in model_layout(model).items()
    }
    expected.update(extra or {})
    check_layout(layout, expected)  # the same configuration: a fault of the file, not of the config
    return keys


_STRICT = ("theta", "opt_state", "counters")  # and every per-key array (key.*): what sizes the model


def _family(name):
    return name.split(".", 1)[0] if "." in name else name


def check_layout(layout, expected, hint=""):
    """The file's arrays against ``expected`` (name -> (shape, dtype)); CheckpointError naming the
    first that differs. Exact for the parameters, the optimizer state, the counters and the per-key
    arrays (what sizes the model and its key slots) and any ``extra``; the other arrays (the
    preprocessing statistics, a race's scores) are the model's to check, which accepts older
    layouts of them: here they need only belong to a family the model has (``standardize.``, ...)."""
    strict = {n for n in expected if n in _STRICT or n.startswith("key.") or n.startswith("forecast.")}
    families = {_family(n) for n in expected}
    for name in layout:
        if name not in expected and (name.startswith("key.") or _family(name) not in families):
            raise CheckpointError(f"unexpected array {name!r}{hint}")
    for name in expected:
        if name in strict and name not in layout:
            raise CheckpointError(f"missing array {name!r}{hint}")
    for name in strict:
        shape, dtype = expected[name]
        got_shape, got_dtype = layout[name]
        if name.startswith("key.") and got_shape[:1] != shape[:1] and got_shape[1:] == tuple(shape[1:]):
            raise CheckpointError(
                f"saved keys: {shape[0]} rows of keys, but {got_shape[0]} rows of per-key state{hint}"
            )
        if tuple(got_shape) != tuple(shape) or np.dtype(got_dtype) != np.dtype(dtype).newbyteorder("<"):
            raise CheckpointError(
                f"array {name!r} is {np.dtype(got_dtype).name}{list(got_shape)}, "
                f"expected {np.dtype(dtype).name}{list(shape)}{hint}"
            )


def check_finite(arrays, source):
    """CheckpointError unless the parameters, optimizer state and recurrent states are finite
    (targets of a TBPTT window may be NaN: no target)."""
    for name, arr in arrays.items():
        if arr.dtype.kind != "f":
            continue
        if name in ("theta", "opt_state") or name.endswith(("hidden", "influence")):
            if not np.isfinite(arr).all():
                raise CheckpointError(f"{source}: array {name!r} holds NaN or infinite values")


def check_model_file(layout, meta):
    """The ``check`` of ``Model.load``: the saved configuration is one the Model accepts, its memory
    (with the saved keys) fits the machine, and the arrays are the ones it has (shapes, dtypes)."""
    from .memory import MemoryLimitError, check_memory
    from .model import _OLD_DEFAULTS, Model

    if meta.get("kind") != _KIND or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"not a streamrnn Model (kind {str(meta.get('kind'))[:40]!r})")
    config = {**_OLD_DEFAULTS, **meta["config"]}
    keys = meta.get("keys")
    try:
        check_memory(config, n_keys=len(keys) if isinstance(keys, list) else None, what="the saved model")
    except MemoryLimitError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        model = Model(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the saved model configuration is not valid: {exc}") from None
    check_model_header(layout, meta, model)
