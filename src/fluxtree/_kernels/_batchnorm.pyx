"""BatchNorm forward kernel over (B, C, S) arrays: y = act(gamma * (x - mean) / sqrt(var + eps) + beta).

The Python layer validates and reshapes (B, C, *spatial) to C-contiguous (B, C, S); the kernel
assumes x and out of shape (B, C, S) and one dtype (float32 or float64), the per-channel
arrays of length C (gamma/beta/running stats float32 or float64 each, or None), mean_out and
invstd_out float64 of length C or None, and, when training, B * S >= 2.

Statistics are accumulated in double for both dtypes, in two passes (sum, then sum of squared
deviations).  The normalization is evaluated in double for float64 data,
``(x - mean) * scale + beta``, and as one float FMA ``x * scale + (beta - mean * scale)``
(coefficients computed in double) for float32 data.  Above PARALLEL_MIN_ELEMENTS the channels are split over OpenMP threads; every
channel is reduced by one thread in a fixed order, so results do not depend on the thread
count.
"""
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport free, malloc

from fluxtree._kernels._arrays cimport ready

cnp.import_array()

cdef extern from "fluxtree/act.h" nogil:
    int ft_act_max_threads()

cdef extern from *:
    """
    #include "fluxtree/act.h"
    FT_VECTORIZE_BEGIN
    /* Channels [c0, c1) of x (B, C, S): batch statistics when `batch` (else mean/var are
     * given), then invstd, scale = gamma * invstd (or invstd), shift = beta (or 0), then
     * y = act((x - mean) * scale + shift), the affine part in double. */
    #define FTBN_DEFINE(T, SFX)                                                              \\
    static FT_CLONES void ftbn_block_##SFX(                                                  \\
        int code, const T *restrict x, T *restrict y, ptrdiff_t B, ptrdiff_t C,              \\
        ptrdiff_t S, ptrdiff_t c0, ptrdiff_t c1, int batch, double eps,                      \\
        const double *restrict g, const double *restrict bt, double *restrict mean,          \\
        double *restrict var, double *restrict invstd, double *restrict scale,               \\
        double *restrict shift)                                                              \\
    {                                                                                        \\
        ptrdiff_t b, c, k;                                                                   \\
        const double m = (double)B * (double)S;                                              \\
        if (batch && S == 1) {                                                               \\
            for (c = c0; c < c1; c++) { mean[c] = 0.0; var[c] = 0.0; }                       \\
            for (b = 0; b < B; b++) {                                                        \\
                const T *restrict r = x + b * C;                                                      \\
                for (c = c0; c < c1; c++) mean[c] += (double)r[c];                           \\
            }                                                                                \\
            for (c = c0; c < c1; c++) mean[c] /= m;                                          \\
            for (b = 0; b < B; b++) {                                                        \\
                const T *restrict r = x + b * C;                                                      \\
                for (c = c0; c < c1; c++) {                                                  \\
                    double d = (double)r[c] - mean[c];                                       \\
                    var[c] += d * d;                                                         \\
                }                                                                            \\
            }                                                                                \\
            for (c = c0; c < c1; c++) var[c] /= m;                                           \\
        }                                                                                    \\
        for (c = c0; c < c1; c++) {                                                          \\
            if (batch && S > 1) {                                                            \\
                double s = 0.0, q = 0.0, mu;                                                 \\
                for (b = 0; b < B; b++) {                                                    \\
                    const T *restrict p = x + (b * C + c) * S;                                        \\
                    _Pragma("omp simd reduction(+:s)")                                       \\
                    for (k = 0; k < S; k++) s += (double)p[k];                               \\
                }                                                                            \\
                mu = s / m;                                                                  \\
                for (b = 0; b < B; b++) {                                                    \\
                    const T *restrict p = x + (b * C + c) * S;                                        \\
                    _Pragma("omp simd reduction(+:q)")                                       \\
                    for (k = 0; k < S; k++) {                                                \\
                        double d = (double)p[k] - mu;                                        \\
                        q += d * d;                                                          \\
                    }                                                                        \\
                }                                                                            \\
                mean[c] = mu;                                                                \\
                var[c] = q / m;                                                              \\
            }                                                                                \\
            invstd[c] = 1.0 / sqrt(var[c] + eps);                                            \\
            scale[c] = g != NULL ? g[c] * invstd[c] : invstd[c];                             \\
            shift[c] = bt != NULL ? bt[c] : 0.0;                                             \\
            if (S > 1) {                                                                     \\
                const double mu = mean[c], sc = scale[c], sh = shift[c];                     \\
                const float scf = (float)sc, shf = (float)(sh - mu * sc);                    \\
                (void)scf; (void)shf;                                                        \\
                for (b = 0; b < B; b++) {                                                    \\
                    const T *restrict p = x + (b * C + c) * S;                               \\
                    T *restrict q = y + (b * C + c) * S;                                     \\
                    FT_ACT_DISPATCH_##SFX(code, FTBN_LOOP_CHAN_##SFX)                        \\
                }                                                                            \\
            }                                                                                \\
        }                                                                                    \\
        if (S == 1) {                                                                        \\
            float *restrict scf = (float *)shift + 2 * C;    /* spare scratch: 2C doubles */  \\
            float *restrict shf = scf + C;                                                   \\
            for (c = c0; c < c1; c++) {                                                      \\
                scf[c] = (float)scale[c];                                                    \\
                shf[c] = (float)(shift[c] - mean[c] * scale[c]);                             \\
            }                                                                                \\
            for (b = 0; b < B; b++) {                                                        \\
                const T *restrict p = x + b * C;                                             \\
                T *restrict q = y + b * C;                                                   \\
                FT_ACT_DISPATCH_##SFX(code, FTBN_LOOP_ROW_##SFX)                             \\
            }                                                                                \\
        }                                                                                    \\
    }
    /* float data: y = act(x * scale + (shift - mean * scale)) in float (one FMA);
     * double data: y = act((x - mean) * scale + shift) in double */
    #define FTBN_LOOP_CHAN_f(F)                                                              \\
        for (k = 0; k < S; k++) q[k] = F(p[k] * scf + shf);
    #define FTBN_LOOP_CHAN_d(F)                                                              \\
        for (k = 0; k < S; k++) q[k] = F((p[k] - mu) * sc + sh);
    #define FTBN_LOOP_ROW_f(F)                                                               \\
        for (c = c0; c < c1; c++) q[c] = F(p[c] * scf[c] + shf[c]);
    #define FTBN_LOOP_ROW_d(F)                                                               \\
        for (c = c0; c < c1; c++) q[c] = F((p[c] - mean[c]) * scale[c] + shift[c]);
    FTBN_DEFINE(float, f)
    FTBN_DEFINE(double, d)
    FT_VECTORIZE_END
    """
    void ftbn_block_f(int code, const float *x, float *y, Py_ssize_t B, Py_ssize_t C,
                      Py_ssize_t S, Py_ssize_t c0, Py_ssize_t c1, int batch, double eps,
                      const double *g, const double *bt, double *mean, double *var,
                      double *invstd, double *scale, double *shift) nogil
    void ftbn_block_d(int code, const double *x, double *y, Py_ssize_t B, Py_ssize_t C,
                      Py_ssize_t S, Py_ssize_t c0, Py_ssize_t c1, int batch, double eps,
                      const double *g, const double *bt, double *mean, double *var,
                      double *invstd, double *scale, double *shift) nogil

# Channels are split over OpenMP threads above this many elements of x.
PARALLEL_MIN_ELEMENTS = 65536
cdef Py_ssize_t _PARALLEL_MIN_ELEMENTS = PARALLEL_MIN_ELEMENTS

ctypedef fused real:
    float
    double


cdef void batchnorm_forward_ptr(int act, const real *x, real *y, Py_ssize_t B, Py_ssize_t C,
                                Py_ssize_t S, bint batch, double eps, const double *g,
                                const double *bt, double *mean, double *var, double *invstd,
                                double *scale, double *shift, int nthreads) noexcept nogil:
    """y := act(g * (x - mean) * invstd + bt) over (B, C, S) (pointer form; g, bt may be NULL).

    With ``batch`` the biased batch statistics are written to mean/var, else mean/var are
    inputs; invstd and scale (length C) are outputs/scratch, shift is scratch of 3C doubles.  ``nthreads <= 0`` means
    OpenMP's maximum; threads are used only above PARALLEL_MIN_ELEMENTS.
    """
    cdef Py_ssize_t nt = 1, chunk, i, c0, c1
    if B * C * S > _PARALLEL_MIN_ELEMENTS and C > 1:
        nt = nthreads if nthreads > 0 else ft_act_max_threads()
        nt = min(nt, C)
    if nt <= 1:
        _block(act, x, y, B, C, S, 0, C, batch, eps, g, bt, mean, var, invstd, scale, shift)
        return
    if S == 1:
        # contiguous channel blocks, whole cache lines (16 floats) per thread
        chunk = ((C + nt - 1) // nt + 15) // 16 * 16
        for i in prange(nt, num_threads=nt, schedule="static", chunksize=1):
            c0 = i * chunk
            c1 = min(C, c0 + chunk)
            if c1 > c0:
                _block(act, x, y, B, C, S, c0, c1, batch, eps, g, bt, mean, var, invstd,
                       scale, shift)
    else:
        for i in prange(C, num_threads=nt, schedule="static"):
            _block(act, x, y, B, C, S, i, i + 1, batch, eps, g, bt, mean, var, invstd,
                   scale, shift)


cdef inline void _block(int act, const real *x, real *y, Py_ssize_t B, Py_ssize_t C,
                        Py_ssize_t S, Py_ssize_t c0, Py_ssize_t c1, bint batch, double eps,
                        const double *g, const double *bt, double *mean, double *var,
                        double *invstd, double *scale, double *shift) noexcept nogil:
    if real is float:
        ftbn_block_f(act, x, y, B, C, S, c0, c1, batch, eps, g, bt, mean, var, invstd, scale,
                     shift)
    else:
        ftbn_block_d(act, x, y, B, C, S, c0, c1, batch, eps, g, bt, mean, var, invstd, scale,
                     shift)


cdef inline void _load(cnp.ndarray a, double *dst, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    cdef const float *f
    cdef const double *d
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT:
        f = <const float *>cnp.PyArray_DATA(a)
        for i in range(n):
            dst[i] = f[i]
    else:
        d = <const double *>cnp.PyArray_DATA(a)
        for i in range(n):
            dst[i] = d[i]


cdef inline void _update(cnp.ndarray a, const double *stat, double w, double momentum,
                         Py_ssize_t n) noexcept:
    """a := (1 - momentum) * a + momentum * w * stat, in a's dtype"""
    cdef Py_ssize_t i
    cdef float *f
    cdef double *d
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT:
        f = <float *>cnp.PyArray_DATA(a)
        for i in range(n):
            f[i] = <float>((1.0 - momentum) * f[i] + momentum * w * stat[i])
    else:
        d = <double *>cnp.PyArray_DATA(a)
        for i in range(n):
            d[i] = (1.0 - momentum) * d[i] + momentum * w * stat[i]


def batchnorm_forward(cnp.ndarray x, cnp.ndarray gamma, cnp.ndarray beta,
                      cnp.ndarray running_mean, cnp.ndarray running_var, double eps,
                      double momentum, bint training, int act, cnp.ndarray out,
                      cnp.ndarray mean_out=None, cnp.ndarray invstd_out=None, *,
                      int nthreads=0):
    """out := act(gamma * (x - mean) / sqrt(var + eps) + beta); updates running stats when training"""
    cdef Py_ssize_t B = cnp.PyArray_DIM(x, 0), C = cnp.PyArray_DIM(x, 1)
    cdef Py_ssize_t S = cnp.PyArray_DIM(x, 2)
    cdef int typ = cnp.PyArray_TYPE(x)
    cdef bint batch = training or running_mean is None
    cdef double m = <double>B * <double>S
    cdef double *work
    cdef double *g = NULL
    cdef double *bt = NULL
    cdef double *mean
    cdef double *var
    cdef double *invstd
    cdef const void *xp = cnp.PyArray_DATA(x)
    cdef void *yp = cnp.PyArray_DATA(out)
    if typ != cnp.NPY_FLOAT and typ != cnp.NPY_DOUBLE:
        raise TypeError(f"Expected x of dtype float32 or float64, got {x.dtype}.")
    if C == 0:
        return
    work = <double *>malloc(9 * C * sizeof(double))
    if work == NULL:
        raise MemoryError()
    mean = work + 2 * C
    var = work + 3 * C
    invstd = work + 4 * C
    if mean_out is not None:
        mean = <double *>cnp.PyArray_DATA(mean_out)
    if invstd_out is not None:
        invstd = <double *>cnp.PyArray_DATA(invstd_out)
    if gamma is not None:
        g = work
        _load(gamma, g, C)
    if beta is not None:
        bt = work + C
        _load(beta, bt, C)
    if not batch:
        _load(running_mean, mean, C)
        _load(running_var, var, C)
    elif B * S == 0:
        for i in range(C):
            mean[i] = 0.0
            var[i] = 0.0
        batch = False
    if typ == cnp.NPY_FLOAT:
        with nogil:
            batchnorm_forward_ptr(act, <const float *>xp, <float *>yp, B, C, S, batch, eps, g,
                                  bt, mean, var, invstd, work + 5 * C, work + 6 * C, nthreads)
    else:
        with nogil:
            batchnorm_forward_ptr(act, <const double *>xp, <double *>yp, B, C, S, batch, eps,
                                  g, bt, mean, var, invstd, work + 5 * C, work + 6 * C,
                                  nthreads)
    if training and running_mean is not None and m > 1:
        _update(running_mean, mean, 1.0, momentum, C)
        _update(running_var, var, m / (m - 1.0), momentum, C)
    free(work)


def batchnorm_apply(object x, object gamma, object beta, object running_mean,
                    object running_var, double eps, double momentum, bint training, int act):
    """batchnorm_forward into a new array shaped like x, or None unless all is kernel-ready

    Ready means: x a native C-contiguous float32/float64 array of ndim >= 2, every parameter
    None or a 1-D array of x's dtype and length x.shape[1], and more than one value per
    channel when training; a None answer sends the layer to its general path."""
    cdef int typ, nd
    cdef Py_ssize_t C, S = 1, k
    cdef cnp.npy_intp dims[3]
    if type(x) is not cnp.ndarray:
        return None
    typ = cnp.PyArray_TYPE(<cnp.ndarray>x)
    nd = cnp.PyArray_NDIM(<cnp.ndarray>x)
    if (typ != cnp.NPY_FLOAT and typ != cnp.NPY_DOUBLE) or nd < 2 or not ready(x, typ, nd):
        return None
    C = cnp.PyArray_DIM(<cnp.ndarray>x, 1)
    for a in (gamma, beta, running_mean, running_var):
        if a is not None and (not ready(a, typ, 1) or cnp.PyArray_DIM(<cnp.ndarray>a, 0) != C):
            return None
    for k in range(2, nd):
        S *= cnp.PyArray_DIM(<cnp.ndarray>x, k)
    if training and cnp.PyArray_DIM(<cnp.ndarray>x, 0) * S <= 1:
        return None
    dims[0] = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
    dims[1] = C
    dims[2] = S
    x3 = x.reshape(dims[0], C, S)
    out = cnp.PyArray_EMPTY(nd, cnp.PyArray_DIMS(<cnp.ndarray>x), typ, 0)
    batchnorm_forward(x3, gamma, beta, running_mean, running_var, eps, momentum, training,
                      act, out.reshape(dims[0], C, S))
    return out
