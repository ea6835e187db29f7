"""Per-key learner state: arrays with a slot axis, a key -> slot map and LRU eviction.

A model's shared parameters live elsewhere; what each key (sensor, user,
sequence) owns — its recurrent state, influence matrix or window — lives
here, one slot per key, in arrays handed whole to compiled kernels.
"""
from collections import OrderedDict

import numpy as np

from .checkpoint import CheckpointError


def normalize_key(key):
    """Keys are str or int (None is the default stream); anything else is a bad record."""
    if key is None or isinstance(key, str):
        return key
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return int(key)
    raise ValueError(f"key must be a str or an int, got {type(key).__name__}: {key!r}")


def _encode_key(key):
    return ["n", None] if key is None else (["s", key] if isinstance(key, str) else ["i", key])


class KeyedState:
    """Arrays named by ``layout`` [(name, shape, dtype)], one row per key, at most ``max_keys`` rows.

    Rows are allocated as keys arrive (capacity doubles up to ``max_keys``); a
    new key beyond that evicts the least recently used key, whose row is then
    zeroed by the kernel before first use (the ``reset`` flag).
    """

    def __init__(self, layout, max_keys):
        self.layout = list(layout)
        self.max_keys = max_keys
        self.slots = OrderedDict()       # key -> slot, least recently used first
        self.arrays = OrderedDict((name, np.zeros((0,) + tuple(shape), dt)) for name, shape, dt in self.layout)

    @property
    def keys(self):
        return list(self.slots)

    @property
    def bytes_per_key(self):
        return sum(int(np.prod(shape)) * np.dtype(dt).itemsize for _, shape, dt in self.layout)

    def row(self, name, key):
        """The array ``name`` of ``key``, or None if the key holds no state."""
        slot = self.slots.get(key)
        return None if slot is None else self.arrays[name][slot]

    def ensure_capacity(self, n_slots):
        cap = next(iter(self.arrays.values())).shape[0]
        if n_slots <= cap:
            return
        new_cap = min(self.max_keys, max(n_slots, 2 * cap, 1))
        for name, arr in self.arrays.items():
            grown = np.zeros((new_cap,) + arr.shape[1:], arr.dtype)
            grown[:cap] = arr
            self.arrays[name] = grown

    def assign(self, keys, n_rows):
        """Slot per record (LRU eviction) and whether it starts from a zero state.

        ``keys`` are normalised (or None: every record is the default stream). A
        key evicted and reused within one batch is handled by the ``reset`` flag,
        so the compiled loop sees exactly the sequential semantics.
        """
        slots_of = self.slots
        reset = np.zeros(n_rows, np.bool_)
        slots = np.empty(n_rows, np.int64)
        for i, key in enumerate((None,) * n_rows if keys is None else keys):
            slot = slots_of.get(key)
            if slot is None:
                if len(slots_of) < self.max_keys:
                    slot = len(slots_of)
                    self.ensure_capacity(slot + 1)
                else:
                    _, slot = slots_of.popitem(last=False)
                reset[i] = True
                slots_of[key] = slot
            else:
                slots_of.move_to_end(key)
            slots[i] = slot
        return slots, reset

    def forget(self, key):
        """Drop ``key``'s state; slots stay dense (the last slot moves into the freed one)."""
        if key not in self.slots:
            return
        slot = self.slots.pop(key)
        last = len(self.slots)
        if slot != last:
            mover = next(k for k, s in self.slots.items() if s == last)
            self.slots[mover] = slot
            for arr in self.arrays.values():
                arr[slot] = arr[last]

    def export(self):
        """``(keys, arrays)`` in LRU order, keys JSON-encodable, arrays prefixed ``key.``."""
        order = list(self.slots.items())
        idx = np.array([s for _, s in order], np.int64)
        return [_encode_key(k) for k, _ in order], {f"key.{n}": a[idx] for n, a in self.arrays.items()}

    def restore(self, encoded_keys, arrays, source):
        keys = [None if tag == "n" else value for tag, value in encoded_keys]
        n_keys = len(keys)
        for name, shape, _ in self.layout:
            got = arrays.get(f"key.{name}")
            if got is None or got.shape != (n_keys,) + tuple(shape):
                raise CheckpointError(f"{source}: array 'key.{name}' missing or of the wrong shape")
        if n_keys > self.max_keys:
            raise CheckpointError(f"{source}: {n_keys} keys saved, more than max_keys={self.max_keys}")
        self.slots = OrderedDict((key, slot) for slot, key in enumerate(keys))
        for name in self.arrays:
            self.arrays[name] = self.arrays[name][:0]
        self.ensure_capacity(n_keys)
        for name, arr in self.arrays.items():
            arr[:n_keys] = arrays[f"key.{name}"]
