"""BatchNorm kernels over (B, C, S) arrays: y = act(gamma * (x - mean) / sqrt(var + eps) + beta)
and its derivatives (backward, tangent, tangent-backward).

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

The derivative kernels (second half of this file) take what the forward kernel used (x, the
mean and 1/sqrt(var + eps) of each channel, gamma, beta, the activation) and blocks of K
adjoints or tangents, (K, B, C, S), all K served by one pass over the data.  They recompute
the pre-activation u and act'(u) (act''(u)) rather than storing them, work in double
(reductions included) whatever the data's dtype, and split channels over threads as the
forward kernel does.
"""
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport calloc, free, malloc

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


# ------------------------------------------------------------------------------- derivatives

cdef extern from * nogil:
    r"""
    #include "fluxtree/act.h"
    FT_VECTORIZE_BEGIN
    #if defined(__GNUC__)
    #define FTBNG_INLINE static inline __attribute__((always_inline))
    #define FTBNG_FLATTEN __attribute__((flatten))  /* inline act.h whatever the unit's size */
    #define FTBNG_ALIGN __attribute__((aligned(64)))
    #else
    #define FTBNG_ALIGN
    #define FTBNG_INLINE static inline
    #define FTBNG_FLATTEN
    #endif
    /* Values per segment (the size of the per-element scratch vectors). */
    #define FTBNG_BLK 512

    /* Everything one derivative kernel call needs.  Data arrays hold float or double (one
     * dtype per call): x (N, C, L); dy, tx, tdy, out (K, N, C, L), except the dy of
     * tangent_backward, (N, C, L).  Per channel (length C): mu, s = 1/sqrt(var + eps),
     * gs = gamma s (or s), sh = beta (or 0); the pre-activation is recomputed as the forward
     * kernel computes it, u = (x - mu) gs + sh for double data and u = x scf + shf in float
     * arithmetic for float data.  Per (k, c): tg, tb, the parameter tangents (zeros when
     * absent), and the work arrays w, whose use each kernel documents. */
    typedef struct {
        ptrdiff_t N, C, L, K;
        int code, batch, sums, tstats;
        const void *x, *dy, *tx, *tdy;
        void *out;
        const double *ones, *zeros; /* FTBNG_BLK ones and zeros: act', act'' of the identity */
        const double *mu, *s, *gs, *sh;
        const float *scf, *shf;
        const double *tg, *tb;
        double *w[11];
    } ftbng_args;

    FTBNG_INLINE double ftbng_ld(const void *p, ptrdiff_t i, int isf)
    {
        return isf ? (double)((const float *)p)[i] : ((const double *)p)[i];
    }

    FTBNG_INLINE void ftbng_st(void *p, ptrdiff_t i, double v, int isf)
    {
        if (isf) ((float *)p)[i] = (float)v; else ((double *)p)[i] = v;
    }

    /* act'(u) into da and, with d2, act''(u) into dd, for n values: one loop per activation
     * (a constant code, so the derivative inlines and vectorizes); the only copy of the
     * activation code in these kernels. */
    #define FTBNG_DACT1(K_) case K_:                                                       \
        for (i = 0; i < n; i++) da[i] = ft_dact_d(K_, u[i]);                               \
        break;
    #define FTBNG_DACT2(K_) case K_:                                                       \
        for (i = 0; i < n; i++) { da[i] = ft_dact_d(K_, u[i]); dd[i] = ft_d2act_d(K_, u[i]); } \
        break;
    static FT_CLONES FTBNG_FLATTEN void ftbng_dact(int code, int d2, const double *restrict u,
                                                   double *restrict da, double *restrict dd,
                                                   ptrdiff_t n)
    {
        ptrdiff_t i;
        if (d2) {
            switch (code) {
            FTBNG_DACT2(1) FTBNG_DACT2(2) FTBNG_DACT2(3) FTBNG_DACT2(4)
            FTBNG_DACT2(5) FTBNG_DACT2(6) FTBNG_DACT2(7) FTBNG_DACT2(8)
            default: for (i = 0; i < n; i++) { da[i] = 1.0; dd[i] = 0.0; }
            }
        } else {
            switch (code) {
            FTBNG_DACT1(1) FTBNG_DACT1(2) FTBNG_DACT1(3) FTBNG_DACT1(4)
            FTBNG_DACT1(5) FTBNG_DACT1(6) FTBNG_DACT1(7) FTBNG_DACT1(8)
            default: for (i = 0; i < n; i++) da[i] = 1.0;
            }
        }
    }

    /* A segment: R runs of W contiguous values, run r starting at off + r * rs in (N, C, L)
     * and at r * W in the scratch vectors.  Row segments (L == 1, cs = 1) hold channels
     * cb .. cb + W - 1 of R rows, value j of a run having channel cb + j; channel segments
     * (cs = 0) hold values of channel cb only.  Loops run over r, then j. */
    #define FTBNG_SEG_ARGS const ftbng_args *a, ptrdiff_t off, ptrdiff_t R, ptrdiff_t W,     \
                           ptrdiff_t rs, ptrdiff_t cb, int cs, int isf
    #define FTBNG_SEG_PASS a, off, R, W, rs, cb, cs, isf
    /* BODY with o = the data index of value j of run r (plus `base`), e = its scratch index */
    #define FTBNG_EACH(base, BODY)                                                         \
        for (r = 0; r < R; r++) {                                                          \
            const ptrdiff_t o_ = (base) + off + r * rs, e_ = r * W;                        \
            for (j = 0; j < W; j++) {                                                      \
                const ptrdiff_t o = o_ + j, e = e_ + j;                                    \
                (void)o; BODY                                                              \
            }                                                                              \
        }
    /* Sums of E0, E1 (after the statements PRE) into A0, A1: per channel A[j] for row
     * segments, a vectorized sum added to A[0] for channel segments. */
    #define FTBNG_SUM2(base, A0, A1, PRE, E0, E1)                                          \
        if (cs) {                                                                          \
            FTBNG_EACH(base, PRE A0[j] += (E0); A1[j] += (E1);)                            \
        } else {                                                                           \
            double r0 = 0.0, r1 = 0.0;                                                     \
            for (r = 0; r < R; r++) {                                                      \
                const ptrdiff_t o_ = (base) + off + r * rs, e_ = r * W;                    \
                _Pragma("omp simd reduction(+:r0,r1)")                                     \
                for (j = 0; j < W; j++) {                                                  \
                    const ptrdiff_t o = o_ + j, e = e_ + j;                                \
                    (void)o; PRE r0 += (E0); r1 += (E1);                           \
                }                                                                          \
            }                                                                              \
            A0[0] += r0; A1[0] += r1;                                                      \
        }
    #define FTBNG_SUM3(base, A0, A1, A2, PRE, E0, E1, E2)                                  \
        if (cs) {                                                                          \
            FTBNG_EACH(base, PRE A0[j] += (E0); A1[j] += (E1); A2[j] += (E2);)             \
        } else {                                                                           \
            double r0 = 0.0, r1 = 0.0, r2 = 0.0;                                           \
            for (r = 0; r < R; r++) {                                                      \
                const ptrdiff_t o_ = (base) + off + r * rs, e_ = r * W;                    \
                _Pragma("omp simd reduction(+:r0,r1,r2)")                                  \
                for (j = 0; j < W; j++) {                                                  \
                    const ptrdiff_t o = o_ + j, e = e_ + j;                                \
                    (void)o; PRE r0 += (E0); r1 += (E1); r2 += (E2);               \
                }                                                                          \
            }                                                                              \
            A0[0] += r0; A1[0] += r1; A2[0] += r2;                                         \
        }

    /* Calls FN(a, off, R, W, rs, cb, cs, isf, ...) for the segments covering channels
     * [c0, c1), rows in order within each channel. */
    #define FTBNG_SEGMENTS(FN, ...)                                                        \
        if (a->L == 1) {                                                                   \
            ptrdiff_t n, cb, W, R;                                                         \
            for (cb = c0; cb < c1; cb += W) {                                              \
                W = c1 - cb < FTBNG_BLK ? c1 - cb : FTBNG_BLK;                             \
                for (n = 0; n < a->N; n += R) {                                            \
                    R = FTBNG_BLK / W < a->N - n ? FTBNG_BLK / W : a->N - n;               \
                    FN(a, n * a->C + cb, R, W, a->C, cb, 1, isf, __VA_ARGS__);             \
                }                                                                          \
            }                                                                              \
        } else {                                                                           \
            ptrdiff_t n, cb, l0, W, R;                                                     \
            for (cb = c0; cb < c1; cb++)                                                   \
                for (l0 = 0; l0 < a->L; l0 += W) {                                         \
                    W = a->L - l0 < FTBNG_BLK ? a->L - l0 : FTBNG_BLK;                     \
                    for (n = 0; n < a->N; n += R) {                                        \
                        R = FTBNG_BLK / W < a->N - n ? FTBNG_BLK / W : a->N - n;           \
                        FN(a, (n * a->C + cb) * a->L + l0, R, W, a->C * a->L, cb, 0, isf,  \
                           __VA_ARGS__);                                                   \
                    }                                                                      \
                }                                                                          \
        }

    /* Per-segment scratch; da, dd point to act'(u), act''(u) (the constant ones and zeros
     * for the identity). */
    typedef struct {
        FTBNG_ALIGN double xh[FTBNG_BLK];
        FTBNG_ALIGN double u[FTBNG_BLK];
        FTBNG_ALIGN double d1[FTBNG_BLK];
        FTBNG_ALIGN double d2[FTBNG_BLK];
        FTBNG_ALIGN double g[FTBNG_BLK];
        FTBNG_ALIGN double h[FTBNG_BLK];
        const double *da, *dd;
    } ftbng_buf;

    /* The normalized xh of the segment and, with d >= 1, act'(u) (d = 2: also act''(u)). */
    FTBNG_INLINE void ftbng_prep(FTBNG_SEG_ARGS, int d, ftbng_buf *restrict b)
    {
        const double *restrict mu = a->mu + cb, *restrict s = a->s + cb;
        const double *restrict gs = a->gs + cb, *restrict sh = a->sh + cb;
        const float *restrict scf = a->scf + cb, *restrict shf = a->shf + cb;
        const void *x = a->x;
        double *restrict xh = b->xh, *restrict u = b->u;
        ptrdiff_t r, j;
        if (a->code == 0 || d == 0) {
            FTBNG_EACH(0, xh[e] = (ftbng_ld(x, o, isf) - mu[j * cs]) * s[j * cs];)
            b->da = a->ones;
            b->dd = a->zeros;
            return;
        }
        if (isf) {
            FTBNG_EACH(0, const float xf = ((const float *)x)[o];
                          u[e] = (double)(xf * scf[j * cs] + shf[j * cs]);
                          xh[e] = ((double)xf - mu[j * cs]) * s[j * cs];)
        } else {
            FTBNG_EACH(0, const double xd = ((const double *)x)[o];
                          u[e] = (xd - mu[j * cs]) * gs[j * cs] + sh[j * cs];
                          xh[e] = (xd - mu[j * cs]) * s[j * cs];)
        }
        /* whole vectors only: a value's derivative then does not depend on its position
         * (vector body or scalar tail), so results do not depend on the thread count */
        for (j = R * W; j < ((R * W + 31) & ~(ptrdiff_t)31); j++)
            u[j] = 0.0;
        ftbng_dact(a->code, d == 2, u, b->d1, b->d2, (R * W + 31) & ~(ptrdiff_t)31);
        b->da = b->d1;
        b->dd = b->d2;
    }

    /* ---- backward.  Per block k and channel, with g = act'(u) dy:
     *   w[0] := sum g (d beta),  w[1] := sum g xh (d gamma)
     *   out := gs (g - batch (w[0] + xh w[1]) / m)
     * Test mode takes one pass.  In batch mode the first pass sums, keeping g in out unless
     * the activation is the identity (so act' is evaluated once), and the second writes
     * out := gs g + w[2] xh + w[3]. */
    FTBNG_INLINE void ftbng_bwd_first_seg(FTBNG_SEG_ARGS, ftbng_buf *restrict b)
    {
        const ptrdiff_t NCL = a->N * a->C * a->L;
        const void *dy = a->dy;
        void *out = a->out;
        const int sums = a->sums || a->batch, keep = out != NULL && (a->code != 0 || !a->batch);
        const double *restrict gs = a->gs + cb, *restrict xh, *restrict da;
        ptrdiff_t r, j, k;
        ftbng_prep(FTBNG_SEG_PASS, 1, b);
        xh = b->xh;
        da = b->da;
        for (k = 0; k < a->K; k++) {
            double *restrict s0 = a->w[0] + k * a->C + cb, *restrict s1 = a->w[1] + k * a->C + cb;
            if (!keep) {
                FTBNG_SUM2(k * NCL, s0, s1, const double g_ = ftbng_ld(dy, o, isf) * da[e];,
                           g_, g_ * xh[e])
            } else if (a->batch) {
                FTBNG_SUM2(k * NCL, s0, s1, const double g_ = ftbng_ld(dy, o, isf) * da[e];
                                            ftbng_st(out, o, g_, isf);,
                           g_, g_ * xh[e])
            } else if (sums) {
                FTBNG_SUM2(k * NCL, s0, s1, const double g_ = ftbng_ld(dy, o, isf) * da[e];
                                            ftbng_st(out, o, gs[j * cs] * g_, isf);,
                           g_, g_ * xh[e])
            } else {
                FTBNG_EACH(k * NCL, ftbng_st(out, o, gs[j * cs] * (ftbng_ld(dy, o, isf) * da[e]),
                                             isf);)
            }
        }
    }

    FTBNG_INLINE void ftbng_bwd_second_seg(FTBNG_SEG_ARGS, ftbng_buf *restrict b)
    {
        const ptrdiff_t NCL = a->N * a->C * a->L;
        const void *g = a->code != 0 ? a->out : a->dy;
        void *out = a->out;
        const double *restrict gs = a->gs + cb, *restrict xh = b->xh;
        ptrdiff_t r, j, k;
        ftbng_prep(FTBNG_SEG_PASS, 0, b);
        for (k = 0; k < a->K; k++) {
            const double *restrict p = a->w[2] + k * a->C + cb;
            const double *restrict q = a->w[3] + k * a->C + cb;
            FTBNG_EACH(k * NCL, ftbng_st(out, o, gs[j * cs] * ftbng_ld(g, o, isf)
                                                 + p[j * cs] * xh[e] + q[j * cs], isf);)
        }
    }

    FTBNG_INLINE void ftbng_backward_(const ftbng_args *a, ptrdiff_t c0, ptrdiff_t c1, int isf)
    {
        const ptrdiff_t C = a->C, K = a->K;
        const double m = (double)a->N * (double)a->L;
        ftbng_buf b;
        ptrdiff_t k, c;
        for (k = 0; k < K; k++)
            for (c = c0; c < c1; c++) { a->w[0][k * C + c] = 0.0; a->w[1][k * C + c] = 0.0; }
        FTBNG_SEGMENTS(ftbng_bwd_first_seg, &b)
        if (a->out == NULL || !a->batch)
            return;
        for (k = 0; k < K; k++)
            for (c = c0; c < c1; c++) {
                const double f = -a->gs[c] / m;
                a->w[2][k * C + c] = f * a->w[1][k * C + c];
                a->w[3][k * C + c] = f * a->w[0][k * C + c];
            }
        FTBNG_SEGMENTS(ftbng_bwd_second_seg, &b)
    }

    /* ---- tangent statistics: w[0] := mean(tx), w[1] := mean(xh tx) per (k, c) in batch
     * mode with tx, else 0 (unless given: `tstats`); then the coefficients of the tangent
     * of u, tu = gs tx + w[2] xh + w[3]: w[2] := tg - gs w[1], w[3] := tb - gs w[0]. */
    FTBNG_INLINE void ftbng_tstats_seg(FTBNG_SEG_ARGS, ftbng_buf *restrict b)
    {
        const ptrdiff_t NCL = a->N * a->C * a->L;
        const void *tx = a->tx;
        const double *restrict xh = b->xh;
        ptrdiff_t r, j, k;
        ftbng_prep(FTBNG_SEG_PASS, 0, b);
        for (k = 0; k < a->K; k++) {
            double *restrict s0 = a->w[0] + k * a->C + cb, *restrict s1 = a->w[1] + k * a->C + cb;
            FTBNG_SUM2(k * NCL, s0, s1, const double t_ = ftbng_ld(tx, o, isf);, t_, t_ * xh[e])
        }
    }

    FTBNG_INLINE void ftbng_tu_coefs(const ftbng_args *a, ptrdiff_t c0, ptrdiff_t c1, int isf,
                                     ftbng_buf *restrict b)
    {
        const ptrdiff_t C = a->C, K = a->K;
        const double m = (double)a->N * (double)a->L;
        ptrdiff_t k, c;
        if (!a->tstats) {
            for (k = 0; k < K; k++)
                for (c = c0; c < c1; c++) { a->w[0][k * C + c] = 0.0; a->w[1][k * C + c] = 0.0; }
            if (a->batch && a->tx != NULL) {
                FTBNG_SEGMENTS(ftbng_tstats_seg, b)
                for (k = 0; k < K; k++)
                    for (c = c0; c < c1; c++) {
                        a->w[0][k * C + c] /= m;
                        a->w[1][k * C + c] /= m;
                    }
            }
        }
        for (k = 0; k < K; k++)
            for (c = c0; c < c1; c++) {
                a->w[2][k * C + c] = a->tg[k * C + c] - a->gs[c] * a->w[1][k * C + c];
                a->w[3][k * C + c] = a->tb[k * C + c] - a->gs[c] * a->w[0][k * C + c];
            }
    }

    /* ---- tangent: out := act'(u) tu. */
    FTBNG_INLINE void ftbng_tan_seg(FTBNG_SEG_ARGS, ftbng_buf *restrict b)
    {
        const ptrdiff_t NCL = a->N * a->C * a->L;
        const void *tx = a->tx;
        void *out = a->out;
        const double *restrict gs = a->gs + cb, *restrict xh = b->xh, *restrict da;
        ptrdiff_t r, j, k;
        ftbng_prep(FTBNG_SEG_PASS, 1, b);
        da = b->da;
        for (k = 0; k < a->K; k++) {
            const double *restrict p = a->w[2] + k * a->C + cb;
            const double *restrict q = a->w[3] + k * a->C + cb;
            if (tx != NULL) {
                FTBNG_EACH(k * NCL, ftbng_st(out, o, da[e] * (gs[j * cs] * ftbng_ld(tx, o, isf)
                                                              + p[j * cs] * xh[e] + q[j * cs]),
                                             isf);)
            } else {
                FTBNG_EACH(k * NCL, ftbng_st(out, o, da[e] * (p[j * cs] * xh[e] + q[j * cs]),
                                             isf);)
            }
        }
    }

    FTBNG_INLINE void ftbng_tangent_(const ftbng_args *a, ptrdiff_t c0, ptrdiff_t c1, int isf)
    {
        ftbng_buf b;
        ftbng_tu_coefs(a, c0, c1, isf, &b);
        FTBNG_SEGMENTS(ftbng_tan_seg, &b)
    }

    /* ---- tangent_backward with dy (N, C, L).  g = act'(u) dy, h = act''(u) dy, tu as above,
     * Rg = act'(u) tdy + h tu.  Results per (k, c):
     *   w[4] := R d beta = sum Rg
     *   w[5] := R d gamma = sum Rg xh + s (sum g tx - batch (mt sum g + mxt sum g xh))
     *   out := gs Rg + w[6] g + w[10] tx + w[7] xh + w[8]   (w[10] per channel)
     * with w[6] = s (tg - batch gs mxt), w[7] = batch (2 s gs mxt dg - s tg dg - gs Rdg) / m,
     * w[8] = batch (s gs (mxt db + mt dg) - s tg db - gs Rdb) / m, w[10] = -batch s gs dg / m
     * (db = sum g, dg = sum g xh, kept in w[9]; w[6] holds sum g tx first).  Absent tx or
     * tdy count as zeros. */
    FTBNG_INLINE void ftbng_tb_gh(FTBNG_SEG_ARGS, ftbng_buf *restrict b)
    {
        const void *dy = a->dy;
        ptrdiff_t r, j;
        ftbng_prep(FTBNG_SEG_PASS, 2, b);
        {
            const double *restrict da = b->da, *restrict dd = b->dd;
            double *restrict g = b->g, *restrict h = b->h;
            FTBNG_EACH(0, const double d_ = ftbng_ld(dy, o, isf); g[e] = d_ * da[e];
                          h[e] = d_ * dd[e];)
        }
    }

    #define FTBNG_TB_LOCALS                                                                \
        const ptrdiff_t NCL = a->N * a->C * a->L;                                          \
        const void *tx = a->tx, *tdy = a->tdy;                                             \
        const double *restrict gs = a->gs + cb, *restrict xh = b->xh, *restrict da;       \
        const double *restrict g = b->g, *restrict h = b->h;                               \
        ptrdiff_t r, j, k;
    /* The loop M(TXE, TDYE) for present or absent (zero) tx and tdy. */
    #define FTBNG_TX_V ftbng_ld(tx, o, isf)
    #define FTBNG_TDY_V (ftbng_ld(tdy, o, isf) * da[e])
    #define FTBNG_TB_VARIANTS(M)                                                           \
        if (tx == NULL) {                                                                  \
            if (tdy == NULL) { M(0.0, 0.0) } else { M(0.0, FTBNG_TDY_V) }                  \
        } else {                                                                           \
            if (tdy == NULL) { M(FTBNG_TX_V, 0.0) } else { M(FTBNG_TX_V, FTBNG_TDY_V) }    \
        }
    #define FTBNG_RG(TXE, TDYE) ((TDYE) + h[e] * (gs[j * cs] * (TXE) + p[j * cs] * xh[e]      \
                                                  + q[j * cs]))
    #define FTBNG_TB_SUMS(TXE, TDYE)                                                       \
        FTBNG_SUM3(k * NCL, s0, s1, s2, const double rg_ = FTBNG_RG(TXE, TDYE);,           \
                   rg_, rg_ * xh[e], g[e] * (TXE))
    #define FTBNG_TB_OUT(TXE, TDYE)                                                        \
        FTBNG_EACH(k * NCL, ftbng_st(out, o, gs[j * cs] * FTBNG_RG(TXE, TDYE)              \
                                             + e1[j * cs] * g[e] + e2[j * cs] * (TXE)      \
                                             + e3[j * cs] * xh[e] + e4[j * cs], isf);)

    FTBNG_INLINE void ftbng_tb_sums_seg(FTBNG_SEG_ARGS, ftbng_buf *restrict b)
    {
        FTBNG_TB_LOCALS
        ftbng_tb_gh(FTBNG_SEG_PASS, b);
        da = b->da;
        {
            double *restrict s0 = a->w[9] + cb, *restrict s1 = a->w[9] + a->C + cb;
            FTBNG_SUM2(0, s0, s1, , g[e], g[e] * xh[e])
        }
        for (k = 0; k < a->K; k++) {
            const double *restrict p = a->w[2] + k * a->C + cb;
            const double *restrict q = a->w[3] + k * a->C + cb;
            double *restrict s0 = a->w[4] + k * a->C + cb, *restrict s1 = a->w[5] + k * a->C + cb;
            double *restrict s2 = a->w[6] + k * a->C + cb;
            FTBNG_TB_VARIANTS(FTBNG_TB_SUMS)
        }
    }

    FTBNG_INLINE void ftbng_tb_out_seg(FTBNG_SEG_ARGS, ftbng_buf *restrict b)
    {
        FTBNG_TB_LOCALS
        void *out = a->out;
        const double *restrict e2 = a->w[10] + cb;
        ftbng_tb_gh(FTBNG_SEG_PASS, b);
        da = b->da;
        for (k = 0; k < a->K; k++) {
            const double *restrict p = a->w[2] + k * a->C + cb;
            const double *restrict q = a->w[3] + k * a->C + cb;
            const double *restrict e1 = a->w[6] + k * a->C + cb;
            const double *restrict e3 = a->w[7] + k * a->C + cb;
            const double *restrict e4 = a->w[8] + k * a->C + cb;
            FTBNG_TB_VARIANTS(FTBNG_TB_OUT)
        }
    }

    FTBNG_INLINE void ftbng_tangent_backward_(const ftbng_args *a, ptrdiff_t c0, ptrdiff_t c1,
                                              int isf)
    {
        const ptrdiff_t C = a->C, K = a->K;
        const double m = (double)a->N * (double)a->L;
        double *restrict rdb = a->w[4], *restrict rdg = a->w[5], *restrict sgt = a->w[6];
        const double *restrict sg = a->w[9], *restrict sgx = a->w[9] + C;
        ftbng_buf b;
        ptrdiff_t k, c;
        ftbng_tu_coefs(a, c0, c1, isf, &b);
        for (c = c0; c < c1; c++) { a->w[9][c] = 0.0; a->w[9][C + c] = 0.0; }
        for (k = 0; k < K; k++)
            for (c = c0; c < c1; c++) {
                rdb[k * C + c] = 0.0; rdg[k * C + c] = 0.0; sgt[k * C + c] = 0.0;
            }
        FTBNG_SEGMENTS(ftbng_tb_sums_seg, &b)
        for (c = c0; c < c1; c++) {
            const double s = a->s[c], gs = a->gs[c], db = sg[c], dg = sgx[c];
            a->w[10][c] = a->batch ? -s * gs * dg / m : 0.0;
            for (k = 0; k < K; k++) {
                const ptrdiff_t i = k * C + c;
                const double mt = a->w[0][i], mxt = a->w[1][i], tg = a->tg[i];
                rdg[i] += s * (sgt[i] - (a->batch ? mt * db + mxt * dg : 0.0));
                if (a->batch) {
                    sgt[i] = s * (tg - gs * mxt);
                    a->w[7][i] = (2.0 * s * gs * mxt * dg - s * tg * dg - gs * rdg[i]) / m;
                    a->w[8][i] = (s * gs * (mxt * db + dg * mt) - s * tg * db - gs * rdb[i]) / m;
                } else {
                    sgt[i] = s * tg;
                    a->w[7][i] = 0.0;
                    a->w[8][i] = 0.0;
                }
            }
        }
        if (a->out != NULL) {
            FTBNG_SEGMENTS(ftbng_tb_out_seg, &b)
        }
    }

    /* The exported kernels: channels [c0, c1), one channel at a time when L > 1 (its data
     * then stays in cache between the passes). */
    #define FTBNG_EXPORT(NAME, SFX, ISF)                                                   \
        static FT_CLONES void ftbng_##NAME##_##SFX(const ftbng_args *a, ptrdiff_t c0,      \
                                                   ptrdiff_t c1)                           \
        {                                                                                  \
            ptrdiff_t c, e;                                                                \
            for (c = c0; c < c1; c = e) {                                                  \
                e = a->L > 1 ? c + 1 : c1;                                                 \
                ftbng_##NAME##_(a, c, e, ISF);                                             \
            }                                                                              \
        }
    FTBNG_EXPORT(backward, f, 1)
    FTBNG_EXPORT(backward, d, 0)
    FTBNG_EXPORT(tangent, f, 1)
    FTBNG_EXPORT(tangent, d, 0)
    FTBNG_EXPORT(tangent_backward, f, 1)
    FTBNG_EXPORT(tangent_backward, d, 0)
    FT_VECTORIZE_END
    """
    ctypedef struct ftbng_args:
        Py_ssize_t N, C, L, K
        int code, batch, sums, tstats
        const void *x
        const void *dy
        const void *tx
        const void *tdy
        void *out
        const double *ones
        const double *zeros
        const double *mu
        const double *s
        const double *gs
        const double *sh
        const float *scf
        const float *shf
        const double *tg
        const double *tb
        double *w[11]
    int FTBNG_BLK
    void ftbng_backward_f(const ftbng_args *a, Py_ssize_t c0, Py_ssize_t c1)
    void ftbng_backward_d(const ftbng_args *a, Py_ssize_t c0, Py_ssize_t c1)
    void ftbng_tangent_f(const ftbng_args *a, Py_ssize_t c0, Py_ssize_t c1)
    void ftbng_tangent_d(const ftbng_args *a, Py_ssize_t c0, Py_ssize_t c1)
    void ftbng_tangent_backward_f(const ftbng_args *a, Py_ssize_t c0, Py_ssize_t c1)
    void ftbng_tangent_backward_d(const ftbng_args *a, Py_ssize_t c0, Py_ssize_t c1)

ctypedef void (*ftbng_kernel)(const ftbng_args *a, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil

# The derivative kernels split channels over OpenMP threads above this many elements of the
# (K, N, C, L) blocks they read.
GRAD_PARALLEL_MIN_ELEMENTS = 65536
cdef Py_ssize_t _GRAD_PARALLEL_MIN_ELEMENTS = GRAD_PARALLEL_MIN_ELEMENTS


cdef void _run(ftbng_kernel f, const ftbng_args *a, int nthreads) noexcept nogil:
    """f over all channels, split over threads as batchnorm_forward_ptr splits them."""
    cdef Py_ssize_t C = a.C, nt = 1, chunk, i, c0, c1
    if a.K * a.N * C * a.L > _GRAD_PARALLEL_MIN_ELEMENTS and C > 1:
        nt = nthreads if nthreads > 0 else ft_act_max_threads()
        nt = min(nt, C)
    if nt <= 1:
        f(a, 0, C)
    elif a.L == 1:
        chunk = ((C + nt - 1) // nt + 15) // 16 * 16
        for i in prange(nt, num_threads=nt, schedule="static", chunksize=1):
            c0 = i * chunk
            c1 = min(C, c0 + chunk)
            if c1 > c0:
                f(a, c0, c1)
    else:
        for i in prange(C, num_threads=nt, schedule="static"):
            f(a, i, i + 1)


cdef class _Args:
    """An ftbng_args filled from the arrays of one call, with the work memory it points to."""
    cdef ftbng_args a
    cdef double *work
    cdef int typ

    def __dealloc__(self):
        free(self.work)

    cdef int setup(self, cnp.ndarray x, cnp.ndarray mean, cnp.ndarray invstd,
                   cnp.ndarray gamma, cnp.ndarray beta, int act, bint batch, Py_ssize_t K,
                   cnp.ndarray tgamma, cnp.ndarray tbeta) except -1:
        cdef Py_ssize_t C = cnp.PyArray_DIM(x, 1), KC, i, n
        cdef double *gs
        cdef double *sh
        cdef float *scf
        cdef float *shf
        cdef const double *mu = <const double *>cnp.PyArray_DATA(mean)
        cdef const double *s = <const double *>cnp.PyArray_DATA(invstd)
        self.typ = cnp.PyArray_TYPE(x)
        if self.typ != cnp.NPY_FLOAT and self.typ != cnp.NPY_DOUBLE:
            raise TypeError(f"Expected x of dtype float32 or float64, got {x.dtype}.")
        KC = max(K * C, 2 * C)
        n = 3 * C + 2 * FTBNG_BLK + 2 * K * C + 11 * KC
        self.work = <double *>calloc(n, sizeof(double))
        if self.work == NULL:
            raise MemoryError()
        self.a.N = cnp.PyArray_DIM(x, 0)
        self.a.C = C
        self.a.L = cnp.PyArray_DIM(x, 2)
        self.a.K = K
        self.a.code = act
        self.a.batch = batch and self.a.N * self.a.L > 0
        self.a.sums = 0
        self.a.tstats = 0
        self.a.x = cnp.PyArray_DATA(x)
        self.a.dy = self.a.tx = self.a.tdy = self.a.out = NULL
        self.a.mu = mu
        self.a.s = s
        gs = self.work
        sh = gs + C
        scf = <float *>(sh + C)
        shf = scf + C
        self.a.zeros = <double *>(shf + C)
        self.a.ones = self.a.zeros + FTBNG_BLK
        for i in range(FTBNG_BLK):
            (<double *>self.a.ones)[i] = 1.0
        if gamma is not None:
            _load(gamma, gs, C)
        else:
            for i in range(C):
                gs[i] = 1.0
        if beta is not None:
            _load(beta, sh, C)
        for i in range(C):
            gs[i] *= s[i]
            scf[i] = <float>gs[i]
            shf[i] = <float>(sh[i] - mu[i] * gs[i])
        self.a.gs = gs
        self.a.sh = sh
        self.a.scf = scf
        self.a.shf = shf
        self.a.tg = self.a.ones + FTBNG_BLK
        self.a.tb = self.a.tg + K * C
        if tgamma is not None:
            _load(tgamma, <double *>self.a.tg, K * C)
        if tbeta is not None:
            _load(tbeta, <double *>self.a.tb, K * C)
        for i in range(11):
            self.a.w[i] = <double *>self.a.tb + K * C + i * KC
        return 0

    cdef void run(self, ftbng_kernel f32, ftbng_kernel f64, int nthreads) noexcept:
        if self.a.C == 0:
            return
        with nogil:
            _run(f32 if self.typ == cnp.NPY_FLOAT else f64, &self.a, nthreads)


cdef inline void *_data(cnp.ndarray a) noexcept:
    return NULL if a is None else cnp.PyArray_DATA(a)


def batchnorm_backward(cnp.ndarray x not None, cnp.ndarray dy not None,
                       cnp.ndarray mean not None, cnp.ndarray invstd not None,
                       cnp.ndarray gamma, cnp.ndarray beta, int act, bint batch,
                       cnp.ndarray dx, cnp.ndarray dgamma=None, cnp.ndarray dbeta=None, *,
                       int nthreads=0):
    """dx := dL/dx, dgamma := sum g xh, dbeta := sum g (g = act'(u) dy), for K blocks of dy

    x (N, C, L) and mean, invstd (C,) float64 as batchnorm_forward used them; gamma, beta
    (C,) float32/float64 or None; ``batch``: the statistics are the batch's (training, or
    no running statistics), so dx includes their dependence on x.  dy and dx (K, N, C, L) of
    x's dtype; dgamma, dbeta (K, C) float64.  dx, dgamma, dbeta may be None (not wanted);
    dgamma and dbeta are these sums also without gamma and beta.
    """
    cdef _Args A = _Args()
    A.setup(x, mean, invstd, gamma, beta, act, batch, cnp.PyArray_DIM(dy, 0), None, None)
    A.a.dy = cnp.PyArray_DATA(dy)
    A.a.out = _data(dx)
    if dbeta is not None:
        A.a.w[0] = <double *>cnp.PyArray_DATA(dbeta)
        A.a.sums = 1
    if dgamma is not None:
        A.a.w[1] = <double *>cnp.PyArray_DATA(dgamma)
        A.a.sums = 1
    A.run(ftbng_backward_f, ftbng_backward_d, nthreads)


def batchnorm_tangent(cnp.ndarray x not None, cnp.ndarray mean not None,
                      cnp.ndarray invstd not None, cnp.ndarray gamma, cnp.ndarray beta, int act,
                      bint batch, cnp.ndarray tx, cnp.ndarray tgamma, cnp.ndarray tbeta,
                      cnp.ndarray ty not None, cnp.ndarray tstats=None, *, int nthreads=0):
    """ty := the tangent of y = act(u) along K tangents (tx, tgamma, tbeta)

    Arguments as batchnorm_backward's; tx, ty (K, N, C, L) of x's dtype, tgamma, tbeta
    (K, C) float32/float64; tx, tgamma, tbeta may be None (zero).  tstats, (2, K, C) float64
    or None, receives mean(tx) and mean(xh tx) per channel (zeros unless batch and tx):
    batchnorm_tangent_backward takes them to skip a pass over tx.
    """
    cdef _Args A = _Args()
    A.setup(x, mean, invstd, gamma, beta, act, batch, cnp.PyArray_DIM(ty, 0), tgamma, tbeta)
    A.a.tx = _data(tx)
    A.a.out = cnp.PyArray_DATA(ty)
    if tstats is not None:
        A.a.w[0] = <double *>cnp.PyArray_DATA(tstats)
        A.a.w[1] = A.a.w[0] + A.a.K * A.a.C
    A.run(ftbng_tangent_f, ftbng_tangent_d, nthreads)


def batchnorm_tangent_backward(cnp.ndarray x not None, cnp.ndarray dy,
                               cnp.ndarray mean not None, cnp.ndarray invstd not None,
                               cnp.ndarray gamma, cnp.ndarray beta,
                               int act, bint batch, cnp.ndarray tx, cnp.ndarray tgamma,
                               cnp.ndarray tbeta, cnp.ndarray tdy, cnp.ndarray rdx,
                               cnp.ndarray rdgamma=None, cnp.ndarray rdbeta=None,
                               cnp.ndarray tstats=None, *, int nthreads=0):
    """rdx, rdgamma, rdbeta := the tangents of batchnorm_backward's dx, dgamma, dbeta

    The tangent is taken along K tangents (tx, tgamma, tbeta) of the inputs and tdy of the
    output adjoint dy (the R-operator of the backward pass).  dy (N, C, L) or None (zero: the
    Gauss-Newton product, which is batchnorm_backward of tdy); tdy (K, N, C, L) or None;
    tstats: batchnorm_tangent's for the same tx, or None.  Outputs as batchnorm_backward's,
    with K blocks; K is their leading dimension.
    """
    cdef _Args A
    cdef cnp.ndarray first = rdx if rdx is not None else (rdgamma if rdgamma is not None
                                                          else rdbeta)
    if first is None:
        return
    if dy is None:
        if tdy is not None:
            batchnorm_backward(x, tdy, mean, invstd, gamma, beta, act, batch, rdx, rdgamma,
                               rdbeta, nthreads=nthreads)
        else:
            for a in (rdx, rdgamma, rdbeta):
                if a is not None:
                    a[...] = 0
        return
    A = _Args()
    A.setup(x, mean, invstd, gamma, beta, act, batch, cnp.PyArray_DIM(first, 0), tgamma,
            tbeta)
    A.a.dy = cnp.PyArray_DATA(dy)
    A.a.tx = _data(tx)
    A.a.tdy = _data(tdy)
    A.a.out = _data(rdx)
    if tstats is not None:
        A.a.w[0] = <double *>cnp.PyArray_DATA(tstats)
        A.a.w[1] = A.a.w[0] + A.a.K * A.a.C
        A.a.tstats = 1
    if rdbeta is not None:
        A.a.w[4] = <double *>cnp.PyArray_DATA(rdbeta)
    if rdgamma is not None:
        A.a.w[5] = <double *>cnp.PyArray_DATA(rdgamma)
    A.run(ftbng_tangent_backward_f, ftbng_tangent_backward_d, nthreads)
