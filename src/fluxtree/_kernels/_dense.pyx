"""Dense (fully connected) layer kernels, batch first: the forward pass out = act(x . W^T + b),
its backward (vector-Jacobian) pass, the tangent (Jacobian-vector) pass for a block of k
tangents and the tangent of the backward pass (the R-operator, for Hessian-vector products).

The Python layer validates; the kernels assume x (B, in), W (out_features, in), b
(out_features,) or None, out/y and pre/z (B, out_features), tangent blocks with a leading
axis k, all C-contiguous ndarrays of one dtype, float32 or float64, outputs not overlapping
the inputs except where a docstring allows it.  Activation codes are those of
``include/fluxtree/act.h`` (0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 softplus, 5 gelu (tanh
form), 6 elu, 7 leakyrelu, 8 swish).  The derivative kernels read the pre-activation z only
for the codes in ``PRE_CODES`` (gelu, swish); for the others they use the output y, and z may
be y itself (so the forward pass need not keep z).
"""
cimport numpy as cnp
from cython.parallel cimport prange
from cython cimport floating
from libc.string cimport memset

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
    float ft_d2act_f(int code, float z)
    double ft_d2act_d(int code, double z)
    int ft_act_reads_z(int code)
    int ft_act_has_d2(int code)
    void ft_dact_mul_f(int code, const float *z, const float *y, float *dy, float *delta,
                       float *db, Py_ssize_t rows, Py_ssize_t cols)
    void ft_dact_mul_d(int code, const double *z, const double *y, double *dy, double *delta,
                       double *db, Py_ssize_t rows, Py_ssize_t cols)
    void ft_tangent_act_f(int code, const float *z, const float *y, const float *tb, float *tz,
                          float *ty, Py_ssize_t k, Py_ssize_t rows, Py_ssize_t cols, int init)
    void ft_tangent_act_d(int code, const double *z, const double *y, const double *tb,
                          double *tz, double *ty, Py_ssize_t k, Py_ssize_t rows,
                          Py_ssize_t cols, int init)
    void ft_rdelta_f(int code, const float *z, const float *y, const float *dy,
                     const float *tdy, const float *tz, float *r, float *tdb, Py_ssize_t k,
                     Py_ssize_t rows, Py_ssize_t cols)
    void ft_rdelta_d(int code, const double *z, const double *y, const double *dy,
                     const double *tdy, const double *tz, double *r, double *tdb, Py_ssize_t k,
                     Py_ssize_t rows, Py_ssize_t cols)
    void ft_act_eval_f(int code, int order, const float *z, float *out, Py_ssize_t n)
    void ft_act_eval_d(int code, int order, const double *z, double *out, Py_ssize_t n)

# With nthreads > 1, the bias + activation pass runs on OpenMP threads above this many bytes
# of output (the default, nthreads=0, keeps it serial: see dense_forward_ptr).
PARALLEL_MIN_BYTES = 256 * 1024
cdef Py_ssize_t _PARALLEL_MIN_BYTES = PARALLEL_MIN_BYTES

#: activation codes whose derivatives read the pre-activation z (the others read y)
PRE_CODES = frozenset(c for c in range(9) if ft_act_reads_z(c))
#: activation codes whose second derivative is not identically zero
D2_CODES = frozenset(c for c in range(9) if ft_act_has_d2(c))


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


cdef inline void _gemm0(char ta, char tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                        const floating *A, Py_ssize_t lda, const floating *B, Py_ssize_t ldb,
                        floating beta, floating *C) noexcept nogil:
    """C := op(A) . op(B) + beta * C for a dense (m, n) C; with k == 0, C := beta * C (beta 0
    or 1), and nothing when C is empty (BLAS rejects the zero leading dimensions)."""
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        if beta == 0:
            memset(C, 0, <size_t>(m * n) * sizeof(floating))
        return
    gemm(ta, tb, <blas_int>m, <blas_int>n, <blas_int>k, 1, A, <blas_int>lda, B, <blas_int>ldb,
         beta, C, <blas_int>n)


cdef void dense_backward_ptr(const floating *x, const floating *W, const floating *z,
                             const floating *y, floating *dy, int act, floating *delta,
                             floating *dx, floating *dW, floating *db, Py_ssize_t B,
                             Py_ssize_t nin, Py_ssize_t nout) noexcept nogil:
    """delta := dy * act'(z); dx := delta . W, dW := delta^T . x, db := sum over rows of delta
    (pointer form; dx, dW, db may be NULL, delta may be dy)."""
    if B > 0 and nout > 0:
        if floating is float:
            ft_dact_mul_f(act, z, y, dy, delta, db, B, nout)
        else:
            ft_dact_mul_d(act, z, y, dy, delta, db, B, nout)
    elif db != NULL:
        memset(db, 0, <size_t>nout * sizeof(floating))
    if dx != NULL:
        _gemm0(c'n', c'n', B, nin, nout, delta, nout, W, nin, 0, dx)
    if dW != NULL:
        _gemm0(c't', c'n', nout, nin, B, delta, nout, x, nin, 0, dW)


cdef void dense_tangent_ptr(const floating *x, const floating *W, const floating *z,
                            const floating *y, int act, const floating *tx, const floating *tW,
                            const floating *tb, floating *tz, floating *ty, Py_ssize_t k,
                            Py_ssize_t B, Py_ssize_t nin, Py_ssize_t nout) noexcept nogil:
    """tz[j] := tx[j] . W^T + x . tW[j]^T + tb[j], ty[j] := act'(z) * tz[j] for the k blocks j
    (pointer form; tx, tW, tb NULL: no such term; ty NULL: tz only; ty may be tz: in place)."""
    cdef Py_ssize_t j
    cdef int init = 1
    if tx != NULL:                      # all k blocks in one gemm: (k B, in) . (in, out)
        _gemm0(c'n', c't', k * B, nout, nin, tx, nin, W, nin, 0, tz)
        init = 0
    if tW != NULL:                      # x . tW[j]^T lands in (B, k, out) order: one per block
        for j in range(k):
            _gemm0(c'n', c't', B, nout, nin, x, nin, tW + j * nout * nin, nin,
                   <floating>(0 if init else 1), tz + j * B * nout)
        init = 0
    if k > 0 and B > 0 and nout > 0:
        if floating is float:
            ft_tangent_act_f(act, z, y, tb, tz, ty, k, B, nout, init)
        else:
            ft_tangent_act_d(act, z, y, tb, tz, ty, k, B, nout, init)


cdef void dense_tangent_backward_ptr(const floating *x, const floating *W, const floating *z,
                                     const floating *y, int act, const floating *delta,
                                     const floating *dy, const floating *tx,
                                     const floating *tW, const floating *tz,
                                     const floating *tdy, floating *rdelta, floating *tdx,
                                     floating *tdW, floating *tdb, Py_ssize_t k, Py_ssize_t B,
                                     Py_ssize_t nin, Py_ssize_t nout) noexcept nogil:
    """rdelta[j] := tdy[j] * act'(z) + dy * act''(z) * tz[j]; tdx[j] := rdelta[j] . W +
    delta . tW[j], tdW[j] := rdelta[j]^T . x + delta^T . tx[j], tdb[j] := sum over rows of
    rdelta[j] (pointer form; a NULL factor drops its term, a NULL output is skipped; rdelta
    may be tz, or tdy for act 0)."""
    cdef Py_ssize_t j
    cdef floating beta
    cdef bint have_r = tdy != NULL or (dy != NULL and tz != NULL and ft_act_has_d2(act))
    cdef bint have_d = delta != NULL
    if k > 0 and B > 0 and nout > 0:
        if floating is float:
            ft_rdelta_f(act, z, y, dy, tdy, tz, rdelta, tdb, k, B, nout)
        else:
            ft_rdelta_d(act, z, y, dy, tdy, tz, rdelta, tdb, k, B, nout)
    elif tdb != NULL:
        memset(tdb, 0, <size_t>(k * nout) * sizeof(floating))
    if tdx != NULL:
        beta = 0
        if have_r:                      # all k blocks in one gemm: (k B, out) . (out, in)
            _gemm0(c'n', c'n', k * B, nin, nout, rdelta, nout, W, nin, 0, tdx)
            beta = 1
        if have_d and tW != NULL:
            for j in range(k):
                _gemm0(c'n', c'n', B, nin, nout, delta, nout, tW + j * nout * nin, nin, beta,
                       tdx + j * B * nin)
            beta = 1
        if beta == 0:
            memset(tdx, 0, <size_t>(k * B * nin) * sizeof(floating))
    if tdW != NULL:
        for j in range(k):
            beta = 0
            if have_r:
                _gemm0(c't', c'n', nout, nin, B, rdelta + j * B * nout, nout, x, nin, 0,
                       tdW + j * nout * nin)
                beta = 1
            if have_d and tx != NULL:
                _gemm0(c't', c'n', nout, nin, B, delta, nout, tx + j * B * nin, nin, beta,
                       tdW + j * nout * nin)
                beta = 1
            if beta == 0:
                memset(tdW + j * nout * nin, 0, <size_t>(nout * nin) * sizeof(floating))


cdef inline void *_data(cnp.ndarray a) noexcept:
    return NULL if a is None else cnp.PyArray_DATA(a)


def dense_backward(cnp.ndarray x, cnp.ndarray W, cnp.ndarray z, cnp.ndarray y,
                   cnp.ndarray dy, int act, cnp.ndarray delta, cnp.ndarray dx, cnp.ndarray dW,
                   cnp.ndarray db):
    """delta := dy * act'(z); dx := delta . W, dW := delta^T . x, db := column sums of delta
    (dx, dW, db may be None; delta may be dy itself: in place)"""
    cdef Py_ssize_t B = cnp.PyArray_DIM(dy, 0), nout = cnp.PyArray_DIM(dy, 1)
    cdef Py_ssize_t nin = cnp.PyArray_DIM(W, 1)
    cdef int typ = cnp.PyArray_TYPE(dy)
    cdef void *xp = _data(x)
    cdef void *wp = _data(W)
    cdef void *zp = _data(z)
    cdef void *yp = _data(y)
    cdef void *gp = _data(dy)
    cdef void *dp = _data(delta)
    cdef void *dxp = _data(dx)
    cdef void *dwp = _data(dW)
    cdef void *dbp = _data(db)
    if typ == cnp.NPY_FLOAT:
        with nogil:
            dense_backward_ptr(<const float *>xp, <const float *>wp, <const float *>zp,
                               <const float *>yp, <float *>gp, act, <float *>dp, <float *>dxp,
                               <float *>dwp, <float *>dbp, B, nin, nout)
    elif typ == cnp.NPY_DOUBLE:
        with nogil:
            dense_backward_ptr(<const double *>xp, <const double *>wp, <const double *>zp,
                               <const double *>yp, <double *>gp, act, <double *>dp,
                               <double *>dxp, <double *>dwp, <double *>dbp, B, nin, nout)
    else:
        raise TypeError(f"Expected dy of dtype float32 or float64, got {dy.dtype}.")


def dense_tangent(cnp.ndarray x, cnp.ndarray W, cnp.ndarray z, cnp.ndarray y, int act,
                  cnp.ndarray tx, cnp.ndarray tW, cnp.ndarray tb, cnp.ndarray tz,
                  cnp.ndarray ty):
    """tz[j] := tx[j] . W^T + x . tW[j]^T + tb[j]; ty[j] := act'(z) * tz[j] (k blocks j;
    tx, tW, tb may be None, one at least given; ty None: tz only; ty may be tz: in place)"""
    cdef Py_ssize_t k = cnp.PyArray_DIM(tz, 0), B = cnp.PyArray_DIM(tz, 1)
    cdef Py_ssize_t nout = cnp.PyArray_DIM(tz, 2), nin = cnp.PyArray_DIM(W, 1)
    cdef int typ = cnp.PyArray_TYPE(tz)
    cdef void *xp = _data(x)
    cdef void *wp = _data(W)
    cdef void *zp = _data(z)
    cdef void *yp = _data(y)
    cdef void *txp = _data(tx)
    cdef void *twp = _data(tW)
    cdef void *tbp = _data(tb)
    cdef void *tzp = _data(tz)
    cdef void *typ_ = _data(ty)
    if typ == cnp.NPY_FLOAT:
        with nogil:
            dense_tangent_ptr(<const float *>xp, <const float *>wp, <const float *>zp,
                              <const float *>yp, act, <const float *>txp, <const float *>twp,
                              <const float *>tbp, <float *>tzp, <float *>typ_, k, B, nin, nout)
    elif typ == cnp.NPY_DOUBLE:
        with nogil:
            dense_tangent_ptr(<const double *>xp, <const double *>wp, <const double *>zp,
                              <const double *>yp, act, <const double *>txp,
                              <const double *>twp, <const double *>tbp, <double *>tzp,
                              <double *>typ_, k, B, nin, nout)
    else:
        raise TypeError(f"Expected tz of dtype float32 or float64, got {tz.dtype}.")


def dense_tangent_backward(cnp.ndarray x, cnp.ndarray W, cnp.ndarray z, cnp.ndarray y, int act,
                           cnp.ndarray delta, cnp.ndarray dy, cnp.ndarray tx, cnp.ndarray tW,
                           cnp.ndarray tz, cnp.ndarray tdy, cnp.ndarray rdelta,
                           cnp.ndarray tdx, cnp.ndarray tdW, cnp.ndarray tdb):
    """rdelta[j] := tdy[j] * act'(z) + dy * act''(z) * tz[j]; tdx[j] := rdelta[j] . W +
    delta . tW[j]; tdW[j] := rdelta[j]^T . x + delta^T . tx[j]; tdb[j] := column sums of
    rdelta[j] (None factors drop their terms; None outputs are skipped; rdelta may be tz,
    or tdy for act 0: in place)"""
    cdef Py_ssize_t k = cnp.PyArray_DIM(rdelta, 0), B = cnp.PyArray_DIM(rdelta, 1)
    cdef Py_ssize_t nout = cnp.PyArray_DIM(rdelta, 2), nin = cnp.PyArray_DIM(W, 1)
    cdef int typ = cnp.PyArray_TYPE(rdelta)
    cdef void *xp = _data(x)
    cdef void *wp = _data(W)
    cdef void *zp = _data(z)
    cdef void *yp = _data(y)
    cdef void *dp = _data(delta)
    cdef void *gp = _data(dy)
    cdef void *txp = _data(tx)
    cdef void *twp = _data(tW)
    cdef void *tzp = _data(tz)
    cdef void *tgp = _data(tdy)
    cdef void *rp = _data(rdelta)
    cdef void *txo = _data(tdx)
    cdef void *two = _data(tdW)
    cdef void *tbo = _data(tdb)
    if typ == cnp.NPY_FLOAT:
        with nogil:
            dense_tangent_backward_ptr(
                <const float *>xp, <const float *>wp, <const float *>zp, <const float *>yp, act,
                <const float *>dp, <const float *>gp, <const float *>txp, <const float *>twp,
                <const float *>tzp, <const float *>tgp, <float *>rp, <float *>txo,
                <float *>two, <float *>tbo, k, B, nin, nout)
    elif typ == cnp.NPY_DOUBLE:
        with nogil:
            dense_tangent_backward_ptr(
                <const double *>xp, <const double *>wp, <const double *>zp, <const double *>yp,
                act, <const double *>dp, <const double *>gp, <const double *>txp,
                <const double *>twp, <const double *>tzp, <const double *>tgp, <double *>rp,
                <double *>txo, <double *>two, <double *>tbo, k, B, nin, nout)
    else:
        raise TypeError(f"Expected rdelta of dtype float32 or float64, got {rdelta.dtype}.")


def act_eval(int code, cnp.ndarray z, int order, cnp.ndarray out):
    """out := act(z), act'(z) or act''(z) elementwise for order 0, 1, 2 (z and out contiguous
    and of one shape and dtype; out may be z)"""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(z)
    cdef int typ = cnp.PyArray_TYPE(out)
    cdef void *zp = cnp.PyArray_DATA(z)
    cdef void *op = cnp.PyArray_DATA(out)
    if order < 0 or order > 2:
        raise ValueError(f"Expected order 0, 1 or 2, got {order}.")
    if typ == cnp.NPY_FLOAT:
        with nogil:
            ft_act_eval_f(code, order, <const float *>zp, <float *>op, n)
    elif typ == cnp.NPY_DOUBLE:
        with nogil:
            ft_act_eval_d(code, order, <const double *>zp, <double *>op, n)
    else:
        raise TypeError(f"Expected out of dtype float32 or float64, got {out.dtype}.")


def act_scalar(int act, double z, *, bint derivative=False, int order=0, bint single=False):
    """act(z), or its derivative of ``order`` 1 or 2 (derivative=True: order 1), through the C
    scalar API of act.h; single=True rounds z to float32 and uses the float functions.  For
    tests and debugging."""
    if derivative:
        order = 1
    if order < 0 or order > 2:
        raise ValueError(f"Expected order 0, 1 or 2, got {order}.")
    if single:
        if order == 2:
            return ft_d2act_f(act, <float>z)
        return ft_dact_f(act, <float>z) if order == 1 else ft_act_f(act, <float>z)
    if order == 2:
        return ft_d2act_d(act, z)
    return ft_dact_d(act, z) if order == 1 else ft_act_d(act, z)


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
