"""Per-key learner state: arrays with a slot axis, a key -> slot map and LRU eviction.

A model's shared parameters live elsewhere; what each key (sensor, user,
sequence) owns — its recurrent state, influence matrix or window — lives
here, one slot per key, in arrays handed whole to compiled kernels.
"""

from collections import OrderedDict

import numpy as np

from .checkpoint import CheckpointError

NORMAL_KEY_TYPES = frozenset({str, int, type(None)})  # the types normalize_key returns (bool is not int)


def normalize_key(key):
    """Keys are str or int (None is the default stream); anything else is a bad record."""
    if key is None or isinstance(key, str):
        return key
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return int(key)
    raise ValueError(f"key must be a str or an int, got {type(key).__name__}: {key!r}")


def encode_key(key):
    """A key as a checkpoint's metadata stores it: ``["n", None]``, ``["s", str]`` or ``["i", int]``."""
    return ["n", None] if key is None else (["s", key] if isinstance(key, str) else ["i", key])


# Address space reserved per KeyedState for rows not yet used (see KeyedState): untouched pages of a
# zero-filled allocation are not resident, so this costs no memory until keys arrive.
RESERVE_BYTES = 2**31


class KeyedState:
    """Arrays named by ``layout`` [(name, shape, dtype)], one row per key, at most ``max_keys`` rows.

    Rows are allocated as keys arrive (capacity doubles up to ``max_keys``); a
    new key beyond that evicts the least recently used key, whose row is then
    zeroed by the kernel before first use (the ``reset`` flag).

    Each array is a view of the leading rows of a zero-filled reservation of up
    to ``max_keys`` rows (bounded by ``RESERVE_BYTES``). The kernel maps a large
    zero-filled allocation lazily, so rows cost resident memory only once a key
    writes them, and growing within the reservation moves nothing: no second copy
    of every key's state at the moment of growth, which for 100 000 keys would
    double the peak memory.

    ``generation`` counts the times the arrays were replaced (grown, restored): a caller that keeps
    references to them (the Model's one-sample path) rebuilds those when it changes.
    """

    generation = 0  # (a class default: states pickled before it existed)

    def __init__(self, layout, max_keys):
        self.layout = list(layout)
        self.max_keys = max_keys
        self.slots = OrderedDict()  # key -> slot, least recently used first
        self._reserved = OrderedDict((name, np.zeros((0,) + tuple(shape), dt)) for name, shape, dt in self.layout)
        self.arrays = OrderedDict((name, arr[:0]) for name, arr in self._reserved.items())
        self._staged = {}  # name -> reservation a checkpoint is being read into

    @property
    def keys(self):
        """The keys held, least recently used first."""
        return list(self.slots)

    @property
    def bytes_per_key(self):
        """Bytes one key's rows take, over every array of the layout."""
        return sum(int(np.prod(shape)) * np.dtype(dt).itemsize for _, shape, dt in self.layout)

    def row(self, name, key):
        """The array ``name`` of ``key``, or None if the key holds no state."""
        slot = self.slots.get(key)
        return None if slot is None else self.arrays[name][slot]

    def _reservation_rows(self, n_slots):
        return min(self.max_keys, max(n_slots, RESERVE_BYTES // max(self.bytes_per_key, 1)))

    def allocate(self, name, shape, dtype):
        """Where to read the saved array ``name`` (``key.<layout name>``) of a checkpoint: the
        leading rows of a fresh zero-filled reservation, which :meth:`restore` then adopts
        instead of copying (so restoring 100 000 keys holds their state once, not twice).
        None for any other array, or one that does not fit the layout."""
        layout = {f"key.{n}": (tuple(shp), np.dtype(dt)) for n, shp, dt in self.layout}
        if (
            name not in layout
            or layout[name] != (tuple(shape[1:]), np.dtype(dtype))
            or not shape
            or shape[0] > self.max_keys
        ):
            return None
        reservation = np.zeros((self._reservation_rows(shape[0]),) + tuple(shape[1:]), dtype)
        self._staged[name[len("key.") :]] = reservation
        return reservation[: shape[0]]

    def ensure_capacity(self, n_slots):
        """Grow the arrays to hold at least ``n_slots`` rows (doubling, at most ``max_keys``); rows that
        exist keep their values.
        """
        cap = next(iter(self.arrays.values())).shape[0]
        if n_slots <= cap:
            return
        new_cap = min(self.max_keys, max(n_slots, 2 * cap, 1))
        if new_cap > next(iter(self._reserved.values())).shape[0]:
            rows = self._reservation_rows(new_cap)
            for name, arr in self._reserved.items():
                grown = np.zeros((rows,) + arr.shape[1:], arr.dtype)
                grown[:cap] = arr[:cap]
                self._reserved[name] = grown
        for name, arr in self._reserved.items():
            self.arrays[name] = arr[:new_cap]
        self.generation += 1

    def assign_one(self, key):
        """``(slot, new)`` of one record of ``key`` (normalised): its slot (a new key takes the next
        free one, or the least recently used key's beyond ``max_keys``) and whether it starts from a
        zero state. The key becomes the most recently used."""
        slots_of = self.slots
        slot = slots_of.get(key)
        if slot is not None:
            slots_of.move_to_end(key)
            return slot, False
        if len(slots_of) < self.max_keys:
            slot = len(slots_of)
            self.ensure_capacity(slot + 1)
        else:
            _, slot = slots_of.popitem(last=False)
        slots_of[key] = slot
        return slot, True

    def assign(self, keys, n_rows):
        """Slot per record (LRU eviction) and whether it starts from a zero state.

        ``keys`` are normalised (or None: every record is the default stream). A
        key evicted and reused within one batch is handled by the ``reset`` flag,
        so the compiled loop sees exactly the sequential semantics.
        """
        slots_of = self.slots
        if keys is None:
            keys = (None,) * n_rows
        if n_rows:
            try:  # every key already holds a slot (a stream's steady state): no Python step per record
                slots = np.array(list(map(slots_of.__getitem__, keys)), np.int64)
            except KeyError:
                pass
            else:
                # the same LRU order as moving each record's key to the end in turn: the batch's keys
                # last, in the order of their last records
                for key in reversed(list(dict.fromkeys(reversed(keys)))):
                    slots_of.move_to_end(key)
                return slots, np.zeros(n_rows, np.bool_)
        reset = np.zeros(n_rows, np.bool_)
        slots = np.empty(n_rows, np.int64)
        assign_one = self.assign_one
        for i, key in enumerate(keys):
            slots[i], reset[i] = assign_one(key)
        return slots, reset

    def read(self, key):
        """Copies of every array ``key`` (normalised) owns, by name, or None if it holds no state."""
        slot = self.slots.get(key)
        if slot is None:
            return None
        return {name: np.array(arr[slot]) for name, arr in self.arrays.items()}  # 0-d stays an array

    def write(self, key, state):
        """Give ``key`` (normalised) the arrays of ``state`` (as :meth:`read` returns them), taking a
        slot as if it had arrived; ``ValueError`` and nothing changed if a name, shape or value does
        not fit."""
        layout = self.layout
        if set(state) != {name for name, _, _ in layout}:
            raise ValueError(f"restore_key_state: expected arrays {[n for n, _, _ in layout]}, got {sorted(state)}")
        values = {}
        for name, shape, dt in layout:
            arr = np.asarray(state[name])
            if arr.shape != tuple(shape):
                raise ValueError(f"restore_key_state: {name} has shape {arr.shape}, expected {tuple(shape)}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ValueError(f"restore_key_state: {name} contains NaN or inf")
            values[name] = arr.astype(dt, copy=False)
        slots, _ = self.assign([key], 1)
        for name, arr in self.arrays.items():
            arr[slots[0]] = values[name]

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
        """``(keys, arrays)`` in LRU order, keys JSON-encodable, arrays prefixed ``key.``.

        The rows are first put in LRU order in place (slot ``i`` becomes the ``i``-th least
        recently used key), so the arrays returned are views of the live state, not a copy of
        every key's state: serialise them before the next step.
        """
        order = np.fromiter(self.slots.values(), np.int64, len(self.slots))
        self._permute_rows(order)
        for rank, key in enumerate(self.slots):
            self.slots[key] = rank
        n_keys = len(order)
        return [encode_key(k) for k in self.slots], {f"key.{n}": a[:n_keys] for n, a in self.arrays.items()}

    def _permute_rows(self, order):
        """Row ``i`` of every array <- row ``order[i]``, in place, one cycle of the permutation at a
        time (one spare row per array)."""
        spare = {name: np.empty_like(arr[0]) for name, arr in self.arrays.items()} if len(order) else {}
        done = order == np.arange(len(order))
        for start in np.flatnonzero(~done):
            if done[start]:
                continue
            for name, arr in self.arrays.items():
                spare[name][...] = arr[start]
            i = start
            while order[i] != start:
                for arr in self.arrays.values():
                    arr[i] = arr[order[i]]
                done[i] = True
                i = order[i]
            for name, arr in self.arrays.items():
                arr[i] = spare[name]
            done[i] = True

    def restore(self, encoded_keys, arrays, source):
        """Adopt the keys and their rows from a checkpoint (``key.NAME`` arrays, checked against the
        layout and ``max_keys`` first: CheckpointError naming ``source``); arrays read in place are
        adopted without a copy.
        """
        keys = [None if tag == "n" else value for tag, value in encoded_keys]
        n_keys = len(keys)
        for name, shape, _ in self.layout:
            got = arrays.get(f"key.{name}")
            if got is None or got.shape != (n_keys,) + tuple(shape):
                raise CheckpointError(f"{source}: array 'key.{name}' missing or of the wrong shape")
        if n_keys > self.max_keys:
            raise CheckpointError(f"{source}: {n_keys} keys saved, more than max_keys={self.max_keys}")
        staged, self._staged = self._staged, {}
        self.slots = OrderedDict((key, slot) for slot, key in enumerate(keys))
        self.generation += 1
        if all(arrays[f"key.{name}"].base is staged.get(name) is not None for name in self.arrays):
            for name in self.arrays:  # read in place by allocate(): adopt, no copy
                self._reserved[name] = staged[name]
                self.arrays[name] = staged[name][:n_keys]
            return
        for name in self.arrays:
            self._reserved[name] = self._reserved[name][:0]
            self.arrays[name] = self._reserved[name]
        self.ensure_capacity(n_keys)
        for name, arr in self.arrays.items():
            arr[:n_keys] = arrays[f"key.{name}"]
