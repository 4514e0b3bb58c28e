"""Dense (fully connected) layer forward kernel: out = act(x . W^T + b), batch first.

The Python layer validates; the kernel assumes x (B, in), W (out_features, in), b
(out_features,) or None, out (B, out_features) and pre (B, out_features) or None, all
C-contiguous ndarrays of one dtype, float32 or float64, with out and pre distinct and not
overlapping the inputs.  Activation codes are those of ``include/fluxtree/act.h`` (0 identity,
1 relu, 2 tanh, 3 sigmoid, 4 softplus, 5 gelu (tanh form), 6 elu, 7 leakyrelu, 8 swish).
"""
cimport numpy as cnp
from cython.parallel cimport prange
from cython cimport floating

from fluxtree._kernels._blas cimport blas_int, gemm

from fluxtree._kernels._arrays cimport ready

cnp.import_array()

cdef extern from "fluxtree/act.h" nogil:
    float ft_act_f(int code, float z)
    double ft_act_d(int code, double z)
    float ft_dact_f(int code, float z)
    double ft_dact_d(int code, double z)
    void ft_bias_act_inplace_f(int code, float *y, const float *b, Py_ssize_t rows,
                               Py_ssize_t cols)
    void ft_bias_act_inplace_d(int code, double *y, const double *b, Py_ssize_t rows,
                               Py_ssize_t cols)
    void ft_bias_act_pre_f(int code, float *z, const float *b, float *y, Py_ssize_t rows,
                           Py_ssize_t cols)
    void ft_bias_act_pre_d(int code, double *z, const double *b, double *y, Py_ssize_t rows,
                           Py_ssize_t cols)

# With nthreads > 1, the bias + activation pass runs on OpenMP threads above this many bytes
# of output (the default, nthreads=0, keeps it serial: see dense_forward_ptr).
PARALLEL_MIN_BYTES = 256 * 1024
cdef Py_ssize_t _PARALLEL_MIN_BYTES = PARALLEL_MIN_BYTES


cdef inline void _epilogue(int act, floating *z, const floating *b, floating *y,
                           Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    if floating is float:
        if z == y:
            ft_bias_act_inplace_f(act, y, b, rows, cols)
        else:
            ft_bias_act_pre_f(act, z, b, y, rows, cols)
    else:
        if z == y:
            ft_bias_act_inplace_d(act, y, b, rows, cols)
        else:
            ft_bias_act_pre_d(act, z, b, y, rows, cols)


cdef void dense_forward_ptr(const floating *x, const floating *W, const floating *b, int act,
                            floating *out, floating *pre, Py_ssize_t B, Py_ssize_t nin,
                            Py_ssize_t nout, int nthreads) noexcept nogil:
    """out := act(x . W^T + b); with pre != NULL also pre := x . W^T + b (pointer form).

    The bias + activation pass is serial unless ``nthreads > 1`` (and the output exceeds
    PARALLEL_MIN_BYTES): right after a threaded gemm, OpenBLAS's workers are still spinning,
    and an OpenMP team on the same cores made 1024->1024 (batch 256) 3x slower on 2 cores.
    """
    cdef floating *z = pre if pre != NULL else out
    cdef Py_ssize_t i, nt, chunk, r0, r1
    if B <= 0 or nout <= 0:
        return
    if nin > 0:
        gemm(c'n', c't', <blas_int>B, <blas_int>nout, <blas_int>nin, 1, x, <blas_int>nin,
             W, <blas_int>nin, 0, z, <blas_int>nout)
    else:
        for i in range(B * nout):
            z[i] = 0
    if act == 0 and b == NULL and z == out:
        return
    nt = 1
    if nthreads > 1 and B * nout * <Py_ssize_t>sizeof(floating) > _PARALLEL_MIN_BYTES:
        nt = min(nthreads, B)
    if nt <= 1:
        _epilogue(act, z, b, out, B, nout)
        return
    chunk = (B + nt - 1) // nt
    for i in prange(nt, num_threads=nt, schedule="static", chunksize=1):
        r0 = i * chunk
        r1 = min(B, r0 + chunk)
        if r1 > r0:
            _epilogue(act, z + r0 * nout, b, out + r0 * nout, r1 - r0, nout)


def dense_forward(cnp.ndarray x, cnp.ndarray W, cnp.ndarray b, int act, cnp.ndarray out,
                  cnp.ndarray pre=None, *, int nthreads=0):
    """out := act(x . W^T + b); pre := x . W^T + b when given (one gemm, one fused pass)"""
    cdef Py_ssize_t B = cnp.PyArray_DIM(x, 0), nin = cnp.PyArray_DIM(x, 1)
    cdef Py_ssize_t nout = cnp.PyArray_DIM(W, 0)
    cdef int typ = cnp.PyArray_TYPE(out)
    cdef void *xp = cnp.PyArray_DATA(x)
    cdef void *wp = cnp.PyArray_DATA(W)
    cdef void *op = cnp.PyArray_DATA(out)
    cdef void *bp = NULL
    cdef void *pp = NULL
    if b is not None:
        bp = cnp.PyArray_DATA(b)
    if pre is not None:
        pp = cnp.PyArray_DATA(pre)
    if typ == cnp.NPY_FLOAT:
        with nogil:
            dense_forward_ptr(<const float *>xp, <const float *>wp, <const float *>bp, act,
                              <float *>op, <float *>pp, B, nin, nout, nthreads)
    elif typ == cnp.NPY_DOUBLE:
        with nogil:
            dense_forward_ptr(<const double *>xp, <const double *>wp, <const double *>bp, act,
                              <double *>op, <double *>pp, B, nin, nout, nthreads)
    else:
        raise TypeError(f"Expected out of dtype float32 or float64, got {out.dtype}.")


def act_scalar(int act, double z, *, bint derivative=False, bint single=False):
    """act(z) (or d act/dz with derivative=True), through the C scalar API of act.h; single=True
    rounds z to float32 and uses the float functions.  For tests and debugging."""
    if single:
        return ft_dact_f(act, <float>z) if derivative else ft_act_f(act, <float>z)
    return ft_dact_d(act, z) if derivative else ft_act_d(act, z)


def dense_apply(object x, object W, object b, int act):
    """act(x . W^T + b) as a new array, or None unless every operand is kernel-ready

    The layer's fast path: the checks (type, dtype, shapes, contiguity, byte order) run in
    C and a None answer sends the caller to its general path, which converts and
    validates."""
    cdef int typ
    cdef Py_ssize_t B, nout
    cdef cnp.npy_intp dims[2]
    if type(W) is not cnp.ndarray:
        return None
    typ = cnp.PyArray_TYPE(<cnp.ndarray>W)
    if (typ != cnp.NPY_FLOAT and typ != cnp.NPY_DOUBLE) or not ready(W, typ, 2):
        return None
    if not ready(x, typ, 2) or cnp.PyArray_DIM(<cnp.ndarray>x, 1) != cnp.PyArray_DIM(<cnp.ndarray>W, 1):
        return None
    nout = cnp.PyArray_DIM(<cnp.ndarray>W, 0)
    if b is not None and (not ready(b, typ, 1) or cnp.PyArray_DIM(<cnp.ndarray>b, 0) != nout):
        return None
    B = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
    dims[0] = B
    dims[1] = nout
    out = cnp.PyArray_EMPTY(2, dims, typ, 0)
    dense_forward(x, W, b, act, out)
    return out
