"""A BLAS GEMM on a column block of a row-major matrix, callable from compiled code.

``np.dot`` in Numba takes whole contiguous arrays (a strided view is first copied). The influence
update wants ``D = J M[:, c0:c0 + w]`` for column blocks of M, so that its result stays in cache
while the same block of M is rewritten from it. :func:`gemm_block` calls the ``xgemm`` Numba's own
``np.dot`` uses (``numba_xxgemm`` of its helper library, SciPy's BLAS), with M's row stride as the
leading dimension, so no copy is made. Compiled code that uses it caches as ``np.dot``'s does.
"""

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.linalg import ensure_blas, get_blas_kind

_char = ir.IntType(8)
_intp = ir.IntType(64)
_void_p = ir.IntType(8).as_pointer()


@intrinsic
def _xgemm(typingctx, m, n, k, a, a_off, lda, b, ldb, c, ldc):
    """Column-major ``C[:m, :n] = A[:m, :k] B[:k, :n]`` (BLAS ``xgemm`` with no transposes, alpha 1,
    beta 0) on the data of arrays ``a`` (from element ``a_off``), ``b`` and ``c`` with leading
    dimensions ``lda``, ``ldb``, ``ldc``; returns BLAS's status (0 on success)."""
    ensure_blas()
    arrays = (a, b, c)
    if not all(isinstance(t, types.Array) and t.layout == "C" for t in arrays) or not (a.dtype == b.dtype == c.dtype):
        return None
    dtype = a.dtype
    kind = get_blas_kind(dtype, "gemm_block")
    sig = types.int32(m, n, k, a, a_off, lda, b, ldb, c, ldc)

    def codegen(context, builder, signature, args):
        vm, vn, vk, va, va_off, vlda, vb, vldb, vc, vldc = args
        A = context.make_array(signature.args[3])(context, builder, va)
        B = context.make_array(signature.args[6])(context, builder, vb)
        C = context.make_array(signature.args[8])(context, builder, vc)
        data_a = builder.bitcast(builder.gep(A.data, [va_off]), _void_p)
        alpha = cgutils.alloca_once_value(builder, context.get_constant_generic(builder, dtype, 1.0))
        beta = cgutils.alloca_once_value(builder, context.get_constant_generic(builder, dtype, 0.0))
        fnty = ir.FunctionType(
            ir.IntType(32),
            [
                _char,
                _char,
                _char,
                _intp,
                _intp,
                _intp,
                _void_p,
                _void_p,
                _intp,
                _void_p,
                _intp,
                _void_p,
                _void_p,
                _intp,
            ],
        )
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        notrans = ir.Constant(_char, ord("n"))

        def as_intp(v):
            return builder.sext(v, _intp) if v.type.width < 64 else v

        return builder.call(
            fn,
            (
                ir.Constant(_char, ord(kind)),
                notrans,
                notrans,
                as_intp(vm),
                as_intp(vn),
                as_intp(vk),
                builder.bitcast(alpha, _void_p),
                data_a,
                as_intp(vlda),
                builder.bitcast(B.data, _void_p),
                as_intp(vldb),
                builder.bitcast(beta, _void_p),
                builder.bitcast(C.data, _void_p),
                as_intp(vldc),
            ),
        )

    return sig, codegen


@njit(cache=True, error_model="numpy")
def gemm_block(J, M, c0, w, D):
    """``D[:, :w] = J @ M[:K, c0:c0 + w]`` (K = J's columns) by BLAS, reading M in place.

    All three arrays are C-contiguous: in BLAS's column-major terms this is
    ``D^T = M_block^T J^T`` with M's row length as the leading dimension of ``M_block^T``."""
    if w > 0:
        status = _xgemm(w, J.shape[0], J.shape[1], M, c0, M.shape[1], J, J.shape[1], D, D.shape[1])
        if status != 0:
            raise RuntimeError("BLAS xgemm is not available (SciPy's BLAS is required)")
