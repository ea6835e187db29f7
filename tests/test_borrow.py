"""``cells.borrow.borrowed``: the same arrays without a reference count, for the length of one call."""

from collections import namedtuple

import numpy as np
import pytest
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.core.runtime import _nrt_python, rtsys
from numba.extending import intrinsic

import streamrnn as sr
from streamrnn.cells.borrow import borrowed

Pair = namedtuple("Pair", ["values", "count"])


@intrinsic
def _counted(typingctx, a):
    """True when the array ``a`` carries a MemInfo (a reference count)."""
    if not isinstance(a, types.Array):
        return None

    def codegen(context, builder, signature, args):
        array = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=args[0])
        null = ir.Constant(array.meminfo.type, None)
        return builder.icmp_unsigned("!=", array.meminfo, null)

    return types.boolean(a), codegen


@njit
def _meminfo_flags(a):
    b = borrowed(a)
    return _counted(a), _counted(b), _counted(b[1:3]), _counted(b.reshape((2, 2))), _counted(b.T)


def test_a_borrowed_array_and_its_views_carry_no_reference_count():
    assert _meminfo_flags(np.zeros(4)) == (True, False, False, False, False)


@njit
def _write_through(pair):
    values, count = borrowed(pair)
    values[1:3] += count
    return values.sum(), values.shape[0], count


def test_a_borrowed_tuple_holds_the_same_memory_and_numbers():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    total, size, count = _write_through(Pair(a, 10))
    assert (total, size, count) == (30.0, 4, 10)
    np.testing.assert_array_equal(a, [1.0, 12.0, 13.0, 4.0])  # written in the caller's array


@njit
def _borrow_list(x):
    return borrowed(x)


def test_a_value_with_a_reference_count_it_could_not_drop_is_refused():
    from numba.typed import List

    lst = List()
    lst.append(1.0)
    with pytest.raises(TypingError):
        _borrow_list(lst)


def test_the_record_loops_neither_leak_nor_free_a_meminfo():
    """The step loops borrow their arguments: after many calls every MemInfo Numba made was freed
    once (a borrowed array that was freed would be a double free; one kept would be a leak)."""
    rng = np.random.default_rng(0)
    models = [
        sr.Model(cell="gru", n_inputs=3, n_hidden=4, seed=0),
        sr.Model(cell="lstm", n_inputs=3, n_hidden=4, seed=0, learner="tbptt", truncation=4),
    ]
    X, Y = rng.normal(size=(16, 3)), rng.normal(size=(16, 1))
    for m in models:
        m.step_many(X, Y, keys=["a", "b"] * 8)
    _nrt_python.memsys_enable_stats()
    try:
        before = rtsys.get_allocation_stats()
        for _ in range(20):
            for m in models:
                m.step_many(X, Y, keys=["a", "b"] * 8)
        after = rtsys.get_allocation_stats()
    finally:
        _nrt_python.memsys_disable_stats()
    assert after.mi_alloc - before.mi_alloc == after.mi_free - before.mi_free
    assert after.alloc - before.alloc == after.free - before.free
