"""``KeyedState.assign``: slots, resets and LRU order against an LRU cache written out record by record."""

from collections import OrderedDict

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamrnn.keyed_state import KeyedState


def reference_assign(lru, max_keys, keys):
    """One record at a time (a batch whose keys all hold a slot takes another path in ``assign``): a
    held key moves to the end; a new key takes the next slot, or the least recently used key's slot
    when ``max_keys`` are held, and starts from zero."""
    slots, resets = [], []
    for key in keys:
        if key in lru:
            lru.move_to_end(key)
            slots.append(lru[key])
            resets.append(False)
            continue
        slot = len(lru) if len(lru) < max_keys else lru.popitem(last=False)[1]
        lru[key] = slot
        slots.append(slot)
        resets.append(True)
    return slots, resets


@settings(max_examples=200, deadline=None)
@given(
    max_keys=st.integers(1, 5),
    # a batch: keys, or the number of rows of a batch without keys (the default stream, key None)
    batches=st.lists(st.one_of(st.lists(st.sampled_from(["a", "b", "c", 0, 1])), st.integers(0, 3)), max_size=6),
)
def test_assign_follows_the_record_by_record_lru(max_keys, batches):
    state = KeyedState([("h", (2,), np.float64)], max_keys)
    lru = OrderedDict()
    for keys in batches:
        if isinstance(keys, int):
            slots, resets = state.assign(None, keys)
            keys = [None] * keys
        else:
            slots, resets = state.assign(keys, len(keys))
        want_slots, want_resets = reference_assign(lru, max_keys, keys)
        assert slots.tolist() == want_slots
        assert resets.tolist() == want_resets
        assert list(state.slots.items()) == list(lru.items())  # the same keys, slots and LRU order


def test_a_batch_of_held_keys_reorders_them_by_their_last_record():
    state = KeyedState([("h", (1,), np.float64)], 4)
    state.assign(["a", "b", "c", "d"], 4)
    slots, resets = state.assign(["c", "a", "c", "b", "a"], 5)
    assert slots.tolist() == [2, 0, 2, 1, 0] and not resets.any()
    assert list(state.slots) == ["d", "c", "b", "a"]
