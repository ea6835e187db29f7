"""Arrays borrowed for the length of one compiled call, without reference counts.

Every array Numba handles carries a pointer to its ``MemInfo``, and every view, slice, field read
of a tuple and call that passes an array on increments and later decrements that count with an
atomic instruction, which also orders the memory accesses around it. A record of a small cell
makes a few hundred such views (per-unit rows, column blocks, the workspace's fields): measured
2026-12-03 with ``perf`` on GRU-8 exact RTRL, the two atomic instructions of ``NRT_incref`` and
``NRT_decref`` took 30 % of the step.

:func:`borrowed` returns the same array with no ``MemInfo`` (and no parent object). Its views then
carry none either, and Numba's reference counting of them is a test of a null pointer. That is
safe exactly when the borrowed array does not outlive the array it came from: the record loops
take their arguments from the Model, which holds them for the whole call, and return none of them.
So a loop borrows its array arguments once at its top, and nothing it borrows leaves the call.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _borrowable(ty):
    if isinstance(ty, types.Array):
        return True
    if isinstance(ty, types.BaseTuple):
        return all(_borrowable(t) for t in ty.types)
    return isinstance(ty, (types.Number, types.Boolean, types.NoneType))  # nothing to count


def _borrow_value(context, builder, ty, value):
    if isinstance(ty, types.Array):
        array = cgutils.create_struct_proxy(ty)(context, builder, value=value)
        array.meminfo = ir.Constant(array.meminfo.type, None)
        array.parent = ir.Constant(array.parent.type, None)
        return array._getvalue()
    if isinstance(ty, types.BaseTuple):
        out = value
        for i, t in enumerate(ty.types):
            out = builder.insert_value(out, _borrow_value(context, builder, t, builder.extract_value(value, i)), i)
        return out
    return value


@intrinsic
def borrowed(typingctx, value):
    """``value`` (an array, or a tuple or namedtuple of arrays and numbers) with every array in it
    borrowed: the same data, shape and strides, and no reference count (see the module). The
    result must not outlive ``value``'s arrays, nor be returned from compiled code."""
    if not _borrowable(value):
        return None
    sig = value(value)

    def codegen(context, builder, signature, args):
        return _borrow_value(context, builder, signature.args[0], args[0])

    return sig, codegen
