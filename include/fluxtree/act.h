/*
 * fluxtree/act.h -- activation functions and their first and second derivatives, shared
 * by the Dense and BatchNorm kernels.
 *
 * Activation codes (the `act` argument of every kernel):
 *   0 identity   x
 *   1 relu       max(x, 0)
 *   2 tanh       tanh(x)
 *   3 sigmoid    1 / (1 + exp(-x))
 *   4 softplus   log1p(exp(x)), computed as max(x, 0) + log1p(exp(-|x|))
 *   5 gelu       0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (tanh form, as NNlib/Flux),
 *                evaluated as x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), the same function
 *                without the cancellation of 1 + tanh(u) for negative u
 *   6 elu        x > 0 ? x : expm1(x)          (alpha = 1)
 *   7 leakyrelu  x > 0 ? x : 0.01 x
 *   8 swish      x * sigmoid(x)
 * Unknown codes act as the identity.
 *
 * Evaluated with branch-free polynomial kernels that GCC vectorizes: ft_*_v in double
 * (relative error a few ulp of double) and ft_*_vf in float arithmetic for float data (a few
 * ulp of float).  NaN propagates, +-inf map to the limits.
 *
 * Derivatives come from the pre-activation z and the output y = act(z) together
 * (ft_<name>_d1_v(z, y), ft_<name>_d2_v(z, y)): all but gelu and swish read only y (tanh' =
 * 1 - y^2, sigmoid' = y (1 - y), softplus' = -expm1(-y), elu' = y + 1 for z <= 0), so a
 * caller that kept no pre-activation may pass y for z; ft_act_reads_z(code) says which read
 * z, ft_act_has_d2(code) which have a second derivative that is not identically zero.
 *
 * Scalar API (for kernels that need one value at a time):
 *   ft_act_d(code, z), ft_act_f(code, z)     activation
 *   ft_dact_d(code, z), ft_dact_f(code, z)   its first derivative d act / dz (at z = 0 relu,
 *                                            leakyrelu and elu take the left derivative)
 *   ft_d2act_d(code, z), ft_d2act_f(code, z) its second derivative (0 for the piecewise-linear
 *                                            relu and leakyrelu; elu's left value at z = 0)
 * Array API (the Dense kernels), row-major (rows, cols), b may be NULL, suffix f or d; blocks
 * of k tangents are (k, rows, cols):
 *   ft_bias_act_inplace_f(code, y, b, rows, cols):   y[i, j] = act(y[i, j] + b[j])
 *   ft_bias_act_pre_f(code, z, b, y, rows, cols):    z[i, j] += b[j]; y[i, j] = act(z[i, j])
 *   ft_dact_mul_f(code, z, y, dy, delta, db, rows, cols):   delta = dy act'(z), db = column
 *                                                    sums of delta (db may be NULL)
 *   ft_tangent_act_f(code, z, y, tb, tz, ty, k, rows, cols, init):   tz[l] += tb[l],
 *                                                    ty[l] = act'(z) tz[l]
 *   ft_rdelta_f(code, z, y, dy, tdy, tz, r, tdb, k, rows, cols):   r[l] = tdy[l] act'(z) +
 *                                                    dy act''(z) tz[l], tdb[l] = sums of r[l]
 *   ft_act_eval_f(code, order, z, out, n):           out = act, act' or act'' of z (order 0-2)
 * On GCC/x86-64 Linux the array loops are compiled for AVX-512, AVX2 and baseline x86-64 and
 * picked at load time (target_clones); elsewhere they are plain -O3 loops.
 */
#ifndef FLUXTREE_ACT_H
#define FLUXTREE_ACT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
static inline int ft_act_max_threads(void) { return omp_get_max_threads(); }
#else
static inline int ft_act_max_threads(void) { return 1; }
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(FLUXTREE_NO_CLONES)
#define FT_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), unused))
#elif defined(__GNUC__)
#define FT_CLONES __attribute__((unused))
#else
#define FT_CLONES
#endif

/* The element kernels are forced inline: in the large dispatching loops below GCC's growth
 * limits otherwise leave calls in the loops, which then neither vectorize nor run fast. */
#if defined(__GNUC__)
#define FT_INLINE static inline __attribute__((always_inline))
#else
#define FT_INLINE static inline
#endif

/* The selects below (clamps, NaN passes, small-argument branches) are if-converted, and the
 * loops vectorized, only when floating-point operations may be evaluated speculatively, that
 * is without -ftrapping-math; nothing here reads the floating-point exception flags.  Kernels
 * that inline these functions should sit between the same pair of macros. */
#if defined(__GNUC__) && !defined(__clang__)
#define FT_VECTORIZE_BEGIN _Pragma("GCC push_options") _Pragma("GCC optimize(\"no-trapping-math\")")
#define FT_VECTORIZE_END _Pragma("GCC pop_options")
#else
#define FT_VECTORIZE_BEGIN
#define FT_VECTORIZE_END
#endif

FT_VECTORIZE_BEGIN

enum {
    FT_ACT_IDENTITY = 0, FT_ACT_RELU = 1, FT_ACT_TANH = 2, FT_ACT_SIGMOID = 3,
    FT_ACT_SOFTPLUS = 4, FT_ACT_GELU = 5, FT_ACT_ELU = 6, FT_ACT_LEAKYRELU = 7,
    FT_ACT_SWISH = 8, FT_ACT_NCODES = 9
};

#define FT_LEAKY_SLOPE 0.01
#define FT_GELU_K 0.7978845608028654 /* sqrt(2/pi) */
#define FT_GELU_C 0.044715

/* ---------------------------------------------------------- vectorizable kernels */

FT_INLINE int64_t ft_bits_(double x) { int64_t i; memcpy(&i, &x, 8); return i; }
FT_INLINE double ft_from_bits_(int64_t i) { double x; memcpy(&x, &i, 8); return x; }

/* ---- double kernels: relative error a few ulp of double */

/* exp(x): Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, Taylor polynomial of degree 13,
 * then scaling by 2^n in two steps so that subnormal results and n = 1024 are exact. */
FT_INLINE double ft_exp_v(double x)
{
    const double magic = 6755399441055744.0;           /* 1.5 * 2^52: rounds to an integer */
    const double ln2_hi = 6.93147180369123816490e-01;  /* low 32 bits zero: n * ln2_hi exact */
    const double ln2_lo = 1.90821492927058770002e-10;
    double xc = x > 709.8 ? 709.8 : x;
    xc = xc < -746.0 ? -746.0 : xc;
    double t = xc * 1.4426950408889634 + magic;
    double n = t - magic;
    double r = (xc - n * ln2_hi) - n * ln2_lo;
    double p = 1.0 / 6227020800.0;                      /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* n = n1 + n2 with both halves in the normal exponent range */
    double t1 = n * 0.5 + magic;
    int64_t ni = ft_bits_(t) - ft_bits_(magic);
    int64_t n1 = ft_bits_(t1) - ft_bits_(magic);
    int64_t n2 = ni - n1;
    double y = p * ft_from_bits_((n1 + 1023) << 52) * ft_from_bits_((n2 + 1023) << 52);
    y = x > 709.8 ? INFINITY : y;
    y = x < -746.0 ? 0.0 : y;
    return x != x ? x : y;
}

/* expm1(x): Taylor series below |x| = 1/4 (no cancellation), exp(x) - 1 above. */
FT_INLINE double ft_expm1_v(double x)
{
    double p = 1.0 / 6227020800.0;
    p = p * x + 1.0 / 479001600.0;
    p = p * x + 1.0 / 39916800.0;
    p = p * x + 1.0 / 3628800.0;
    p = p * x + 1.0 / 362880.0;
    p = p * x + 1.0 / 40320.0;
    p = p * x + 1.0 / 5040.0;
    p = p * x + 1.0 / 720.0;
    p = p * x + 1.0 / 120.0;
    p = p * x + 1.0 / 24.0;
    p = p * x + 1.0 / 6.0;
    p = p * x + 0.5;
    double small = x + (x * x) * p;
    double big = ft_exp_v(x) - 1.0;
    return fabs(x) < 0.25 ? small : big;
}

/* log(u) for finite u > 0 (normal range): u = 2^e m, m in [sqrt(1/2), sqrt(2)),
 * log m = 2 atanh(s), s = (m - 1)/(m + 1), |s| < 0.1716, odd series to s^21. */
FT_INLINE double ft_log_v(double u)
{
    int64_t bits = ft_bits_(u);
    int32_t hi = (int32_t)(bits >> 32);
    double ed = (double)((hi >> 20) - 1023);        /* int32 -> double converts in SIMD */
    double m = ft_from_bits_((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);
    int big = m > 1.4142135623730951;
    double mh = 0.5 * m;
    double ep = ed + 1.0;
    m = big ? mh : m;
    ed = big ? ep : ed;
    double s = (m - 1.0) / (m + 1.0);
    double s2 = s * s;
    double p = 1.0 / 21.0;
    p = p * s2 + 1.0 / 19.0;
    p = p * s2 + 1.0 / 17.0;
    p = p * s2 + 1.0 / 15.0;
    p = p * s2 + 1.0 / 13.0;
    p = p * s2 + 1.0 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
    double l = 2.0 * s + 2.0 * s * s2 * p;
    return ed * 6.93147180369123816490e-01 + (l + ed * 1.90821492927058770002e-10);
}

/* log1p(t) for t in [0, 1] (Goldberg's correction of log(1 + t)). */
FT_INLINE double ft_log1p01_v(double t)
{
    double u = 1.0 + t;
    double d = u - 1.0;
    double l = ft_log_v(u) * (t / (d == 0.0 ? 1.0 : d));
    return d == 0.0 ? t : l;
}

FT_INLINE double ft_identity_v(double x) { return x; }
FT_INLINE double ft_relu_v(double x) { return x < 0.0 ? 0.0 : x; }
FT_INLINE double ft_leakyrelu_v(double x) { return x < 0.0 ? FT_LEAKY_SLOPE * x : x; }

/* tanh(x) = e / (e + 2), e = expm1(2|x|), with expm1 on [0, 40] in one path:
 * 2|x| = n ln2 + r, expm1(r) = r + r^2 P(r) (Taylor to r^13), expm1 = 2^n expm1(r) + (2^n - 1),
 * which does not cancel for n >= 0 (half the work of ft_expm1_v's two branches). */
FT_INLINE double ft_tanh_v(double x)
{
    const double magic = 6755399441055744.0;
    const double ln2_hi = 6.93147180369123816490e-01;
    const double ln2_lo = 1.90821492927058770002e-10;
    double a = fabs(x);
    a = a < 20.0 ? a : 20.0;                     /* tanh(20) rounds to 1 */
    double u = 2.0 * a;
    double t = u * 1.4426950408889634 + magic;
    double n = t - magic;
    double r = (u - n * ln2_hi) - n * ln2_lo;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    double em1r = r + (r * r) * p;
    double s = ft_from_bits_((ft_bits_(t) - ft_bits_(magic) + 1023) << 52);   /* 2^n, n <= 58 */
    double e = s * em1r + (s - 1.0);
    double y = copysign(e / (e + 2.0), x);
    return x != x ? x : y;
}

FT_INLINE double ft_sigmoid_v(double x) { return 1.0 / (1.0 + ft_exp_v(-x)); }
FT_INLINE double ft_swish_v(double x) { return x * ft_sigmoid_v(x); }

FT_INLINE double ft_softplus_v(double x)
{
    double y = (x > 0.0 ? x : 0.0) + ft_log1p01_v(ft_exp_v(-fabs(x)));
    return x != x ? x : y;
}

FT_INLINE double ft_gelu_v(double x)
{
    double u = FT_GELU_K * (x + FT_GELU_C * x * x * x);
    double y = x / (1.0 + ft_exp_v(-2.0 * u));
    return x < -30.0 ? -0.0 : y;                 /* exp(-2u) overflows: avoids -inf / inf */
}

FT_INLINE double ft_elu_v(double x) { return x > 0.0 ? x : ft_expm1_v(x); }

/* ---- float kernels, in float arithmetic: relative error a few ulp of float */

FT_INLINE int32_t ft_fbits_(float x) { int32_t i; memcpy(&i, &x, 4); return i; }
FT_INLINE float ft_from_fbits_(int32_t i) { float x; memcpy(&x, &i, 4); return x; }

FT_INLINE float ft_exp_vf(float x)
{
    const float magic = 12582912.0f;                    /* 1.5 * 2^23 */
    const float ln2_hi = 0.693359375f;                  /* 9 significant bits: n * ln2_hi exact */
    const float ln2_lo = -2.12194440e-4f;
    float xc = x > 88.8f ? 88.8f : x;
    xc = xc < -104.0f ? -104.0f : xc;
    float t = xc * 1.44269504f + magic;
    float n = t - magic;
    float r = (xc - n * ln2_hi) - n * ln2_lo;
    float p = 1.0f / 40320.0f;
    p = p * r + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    float t1 = n * 0.5f + magic;
    int32_t ni = ft_fbits_(t) - ft_fbits_(magic);
    int32_t n1 = ft_fbits_(t1) - ft_fbits_(magic);
    int32_t n2 = ni - n1;
    float y = p * ft_from_fbits_((n1 + 127) << 23) * ft_from_fbits_((n2 + 127) << 23);
    y = x > 88.8f ? INFINITY : y;
    y = x < -104.0f ? 0.0f : y;
    return x != x ? x : y;
}

FT_INLINE float ft_expm1_vf(float x)
{
    float p = 1.0f / 40320.0f;
    p = p * x + 1.0f / 5040.0f;
    p = p * x + 1.0f / 720.0f;
    p = p * x + 1.0f / 120.0f;
    p = p * x + 1.0f / 24.0f;
    p = p * x + 1.0f / 6.0f;
    p = p * x + 0.5f;
    float small = x + (x * x) * p;
    float big = ft_exp_vf(x) - 1.0f;
    return fabsf(x) < 0.25f ? small : big;
}

FT_INLINE float ft_log_vf(float u)
{
    int32_t bits = ft_fbits_(u);
    float ed = (float)((bits >> 23) - 127);
    float m = ft_from_fbits_((bits & 0x007fffff) | 0x3f800000);
    int big = m > 1.41421356f;
    float mh = 0.5f * m;
    float ep = ed + 1.0f;
    m = big ? mh : m;
    ed = big ? ep : ed;
    float s = (m - 1.0f) / (m + 1.0f);
    float s2 = s * s;
    float p = 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    float l = 2.0f * s + 2.0f * s * s2 * p;
    return ed * 0.693147181f + l;
}

FT_INLINE float ft_log1p01_vf(float t)
{
    float u = 1.0f + t;
    float d = u - 1.0f;
    float l = ft_log_vf(u) * (t / (d == 0.0f ? 1.0f : d));
    return d == 0.0f ? t : l;
}

FT_INLINE float ft_identity_vf(float x) { return x; }
FT_INLINE float ft_relu_vf(float x) { return x < 0.0f ? 0.0f : x; }
FT_INLINE float ft_leakyrelu_vf(float x) { return x < 0.0f ? (float)FT_LEAKY_SLOPE * x : x; }

/* tanh as a rational function of odd degree 13 over even degree 6 on [-7.9053, 7.9053],
 * where float32 tanh reaches +-1 (the minimax fit used by Eigen and XLA; about 2 ulp):
 * one division and no exp, so the loop vectorizes cheaply. */
FT_INLINE float ft_tanh_vf(float x)
{
    const float clamp = 7.90531110763549805f;
    float c = x < -clamp ? -clamp : (x > clamp ? clamp : x);
    float x2 = c * c;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * c;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    float y = fabsf(x) < 0.0004f ? x : p / q;
    return x != x ? x : y;
}

FT_INLINE float ft_sigmoid_vf(float x) { return 1.0f / (1.0f + ft_exp_vf(-x)); }
FT_INLINE float ft_swish_vf(float x) { return x * ft_sigmoid_vf(x); }

FT_INLINE float ft_softplus_vf(float x)
{
    float y = (x > 0.0f ? x : 0.0f) + ft_log1p01_vf(ft_exp_vf(-fabsf(x)));
    return x != x ? x : y;
}

FT_INLINE float ft_gelu_vf(float x)
{
    /* in double: the float rounding of u would be amplified by exp for large |x| */
    return (float)ft_gelu_v((double)x);
}

FT_INLINE float ft_elu_vf(float x) { return x > 0.0f ? x : ft_expm1_vf(x); }

/* ---- derivatives, from the pre-activation z and the output y = act(z)
 *
 * ft_<name>_d1_v(z, y) = act'(z) and ft_<name>_d2_v(z, y) = act''(z) in double (_vf: float).
 * Each reads whichever of z and y gives the result more cheaply: identity, relu, leakyrelu,
 * tanh (1 - y^2), sigmoid (y (1 - y)), softplus (sigmoid(z) = -expm1(-y)) and elu (y + 1 for
 * z <= 0) read only y, so a caller that kept no pre-activation may pass y for z; gelu and swish
 * read only z (ft_act_reads_z).  Piecewise functions take the left value at z = 0.  Where
 * 1 - s of a sigmoid value s would cancel it is computed as e s, e = exp(-t). */

FT_INLINE int ft_act_reads_z(int code) { return code == FT_ACT_GELU || code == FT_ACT_SWISH; }

/* act'' is identically zero for the piecewise-linear activations */
FT_INLINE int ft_act_has_d2(int code)
{
    return code == FT_ACT_TANH || code == FT_ACT_SIGMOID || code == FT_ACT_SOFTPLUS
           || code == FT_ACT_GELU || code == FT_ACT_ELU || code == FT_ACT_SWISH;
}

FT_INLINE double ft_identity_d1_v(double z, double y) { (void)z; (void)y; return 1.0; }
FT_INLINE double ft_identity_d2_v(double z, double y) { (void)z; (void)y; return 0.0; }
FT_INLINE double ft_relu_d1_v(double z, double y) { (void)z; return y > 0.0 ? 1.0 : 0.0; }
FT_INLINE double ft_relu_d2_v(double z, double y) { (void)z; (void)y; return 0.0; }
FT_INLINE double ft_leakyrelu_d1_v(double z, double y)
{
    (void)z;
    return y > 0.0 ? 1.0 : FT_LEAKY_SLOPE;
}
FT_INLINE double ft_leakyrelu_d2_v(double z, double y) { (void)z; (void)y; return 0.0; }
FT_INLINE double ft_tanh_d1_v(double z, double y) { (void)z; return 1.0 - y * y; }
FT_INLINE double ft_tanh_d2_v(double z, double y) { (void)z; return -2.0 * y * (1.0 - y * y); }
FT_INLINE double ft_sigmoid_d1_v(double z, double y) { (void)z; return y * (1.0 - y); }
FT_INLINE double ft_sigmoid_d2_v(double z, double y)
{
    (void)z;
    return y * (1.0 - y) * (1.0 - 2.0 * y);
}
/* softplus' = s = sigmoid(z) = 1 - exp(-y), softplus'' = s (1 - s) = s exp(-y) */
FT_INLINE double ft_softplus_d1_v(double z, double y) { (void)z; return -ft_expm1_v(-y); }
FT_INLINE double ft_softplus_d2_v(double z, double y)
{
    (void)z;
    return -ft_expm1_v(-y) * ft_exp_v(-y);
}
FT_INLINE double ft_elu_d1_v(double z, double y) { (void)z; return y > 0.0 ? 1.0 : y + 1.0; }
FT_INLINE double ft_elu_d2_v(double z, double y) { (void)z; return y > 0.0 ? 0.0 : y + 1.0; }

/* gelu = z s, s = sigmoid(t), t = 2u = 2k (z + c z^3), w = t' = 2k (1 + 3c z^2):
 * gelu' = s + z s (1-s) w,  gelu'' = s (1-s) (2w + z (1-2s) w^2 + 12 k c z^2);
 * beyond |z| = 30 the limits (w overflows for huge |z|). */
#define FT_GELU_PARTS_(T, EXP, Z)                                                           \
    T z2 = (Z) * (Z);                                                                       \
    T e = EXP((T)(-2.0 * FT_GELU_K) * ((Z) + (T)FT_GELU_C * (Z) * z2));                     \
    T s = (T)1 / ((T)1 + e);                                                                \
    T q = e > (T)1 ? (T)1 - s : e * s;                                                      \
    T w = (T)(2.0 * FT_GELU_K) * ((T)1 + (T)(3.0 * FT_GELU_C) * z2);
FT_INLINE double ft_gelu_d1_v(double z, double y)
{
    (void)y;
    FT_GELU_PARTS_(double, ft_exp_v, z)
    double d = s + z * s * q * w;
    d = z > 30.0 ? 1.0 : d;
    return z < -30.0 ? 0.0 : d;
}
FT_INLINE double ft_gelu_d2_v(double z, double y)
{
    (void)y;
    FT_GELU_PARTS_(double, ft_exp_v, z)
    double d = s * q * (2.0 * w + z * (q - s) * w * w + 12.0 * FT_GELU_K * FT_GELU_C * z2);
    return z > 30.0 || z < -30.0 ? 0.0 : d;
}

/* swish = z s, s = sigmoid(z): swish' = s (1 + z (1-s)), swish'' = s (1-s) (2 + z (1-2s)) */
#define FT_SWISH_PARTS_(T, EXP, Z)                                                          \
    T e = EXP(-(Z));                                                                        \
    T s = (T)1 / ((T)1 + e);                                                                \
    T q = e > (T)1 ? (T)1 - s : e * s;
FT_INLINE double ft_swish_d1_v(double z, double y)
{
    (void)y;
    FT_SWISH_PARTS_(double, ft_exp_v, z)
    double d = s * (1.0 + z * q);
    d = z > 710.0 ? 1.0 : d;                     /* z = +-inf: inf * 0 */
    return z < -710.0 ? 0.0 : d;
}
FT_INLINE double ft_swish_d2_v(double z, double y)
{
    (void)y;
    FT_SWISH_PARTS_(double, ft_exp_v, z)
    double d = s * q * (2.0 + z * (q - s));
    return z > 710.0 || z < -710.0 ? 0.0 : d;
}

FT_INLINE float ft_identity_d1_vf(float z, float y) { (void)z; (void)y; return 1.0f; }
FT_INLINE float ft_identity_d2_vf(float z, float y) { (void)z; (void)y; return 0.0f; }
FT_INLINE float ft_relu_d1_vf(float z, float y) { (void)z; return y > 0.0f ? 1.0f : 0.0f; }
FT_INLINE float ft_relu_d2_vf(float z, float y) { (void)z; (void)y; return 0.0f; }
FT_INLINE float ft_leakyrelu_d1_vf(float z, float y)
{
    (void)z;
    return y > 0.0f ? 1.0f : (float)FT_LEAKY_SLOPE;
}
FT_INLINE float ft_leakyrelu_d2_vf(float z, float y) { (void)z; (void)y; return 0.0f; }
FT_INLINE float ft_tanh_d1_vf(float z, float y) { (void)z; return 1.0f - y * y; }
FT_INLINE float ft_tanh_d2_vf(float z, float y) { (void)z; return -2.0f * y * (1.0f - y * y); }
FT_INLINE float ft_sigmoid_d1_vf(float z, float y) { (void)z; return y * (1.0f - y); }
FT_INLINE float ft_sigmoid_d2_vf(float z, float y)
{
    (void)z;
    return y * (1.0f - y) * (1.0f - 2.0f * y);
}
FT_INLINE float ft_softplus_d1_vf(float z, float y) { (void)z; return -ft_expm1_vf(-y); }
FT_INLINE float ft_softplus_d2_vf(float z, float y)
{
    (void)z;
    return -ft_expm1_vf(-y) * ft_exp_vf(-y);
}
FT_INLINE float ft_elu_d1_vf(float z, float y) { (void)z; return y > 0.0f ? 1.0f : y + 1.0f; }
FT_INLINE float ft_elu_d2_vf(float z, float y) { (void)z; return y > 0.0f ? 0.0f : y + 1.0f; }
/* in double, as the forward: the rounding of t would be amplified by exp */
FT_INLINE float ft_gelu_d1_vf(float z, float y)
{
    return (float)ft_gelu_d1_v((double)z, (double)y);
}
FT_INLINE float ft_gelu_d2_vf(float z, float y)
{
    return (float)ft_gelu_d2_v((double)z, (double)y);
}
FT_INLINE float ft_swish_d1_vf(float z, float y)
{
    (void)y;
    FT_SWISH_PARTS_(float, ft_exp_vf, z)
    float d = s * (1.0f + z * q);
    d = z > 100.0f ? 1.0f : d;
    return z < -100.0f ? 0.0f : d;
}
FT_INLINE float ft_swish_d2_vf(float z, float y)
{
    (void)y;
    FT_SWISH_PARTS_(float, ft_exp_vf, z)
    float d = s * q * (2.0f + z * (q - s));
    return z > 100.0f || z < -100.0f ? 0.0f : d;
}

/* Expands LOOP(name, SFX) once per activation (SFX: _v double, _vf float), the loop body
 * calling ft_<name>SFX, ft_<name>_d1SFX or ft_<name>_d2SFX, so that the switch stays outside
 * the loops. */
#define FT_DACT_DISPATCH_(code, LOOP, SFX)                            \
    switch (code) {                                                   \
    case FT_ACT_RELU: LOOP(relu, SFX); break;                         \
    case FT_ACT_TANH: LOOP(tanh, SFX); break;                         \
    case FT_ACT_SIGMOID: LOOP(sigmoid, SFX); break;                   \
    case FT_ACT_SOFTPLUS: LOOP(softplus, SFX); break;                 \
    case FT_ACT_GELU: LOOP(gelu, SFX); break;                         \
    case FT_ACT_ELU: LOOP(elu, SFX); break;                           \
    case FT_ACT_LEAKYRELU: LOOP(leakyrelu, SFX); break;               \
    case FT_ACT_SWISH: LOOP(swish, SFX); break;                       \
    default: LOOP(identity, SFX); break;                              \
    }


/* ------------------------------------------------------------------ scalar API */

static inline double ft_act_d(int code, double z)
{
    switch (code) {
    case FT_ACT_RELU: return ft_relu_v(z);
    case FT_ACT_TANH: return ft_tanh_v(z);
    case FT_ACT_SIGMOID: return ft_sigmoid_v(z);
    case FT_ACT_SOFTPLUS: return ft_softplus_v(z);
    case FT_ACT_GELU: return ft_gelu_v(z);
    case FT_ACT_ELU: return ft_elu_v(z);
    case FT_ACT_LEAKYRELU: return ft_leakyrelu_v(z);
    case FT_ACT_SWISH: return ft_swish_v(z);
    default: return z;
    }
}

static inline float ft_act_f(int code, float z)
{
    switch (code) {
    case FT_ACT_RELU: return ft_relu_vf(z);
    case FT_ACT_TANH: return ft_tanh_vf(z);
    case FT_ACT_SIGMOID: return ft_sigmoid_vf(z);
    case FT_ACT_SOFTPLUS: return ft_softplus_vf(z);
    case FT_ACT_GELU: return ft_gelu_vf(z);
    case FT_ACT_ELU: return ft_elu_vf(z);
    case FT_ACT_LEAKYRELU: return ft_leakyrelu_vf(z);
    case FT_ACT_SWISH: return ft_swish_vf(z);
    default: return z;
    }
}

#define FT_RETURN_D1_(A, SFX) return ft_##A##_d1##SFX(z, ft_##A##SFX(z))
#define FT_RETURN_D2_(A, SFX) return ft_##A##_d2##SFX(z, ft_##A##SFX(z))

static inline double ft_dact_d(int code, double z) { FT_DACT_DISPATCH_(code, FT_RETURN_D1_, _v) }
static inline float ft_dact_f(int code, float z) { return (float)ft_dact_d(code, (double)z); }
static inline double ft_d2act_d(int code, double z) { FT_DACT_DISPATCH_(code, FT_RETURN_D2_, _v) }
static inline float ft_d2act_f(int code, float z) { return (float)ft_d2act_d(code, (double)z); }

/* Expands LOOP(F) once per activation, F being the vectorizable kernel (suffix _v: double,
 * _vf: float), so that the switch stays outside the loops. */
#define FT_ACT_DISPATCH_(code, LOOP, SFX)                             \
    switch (code) {                                                   \
    case FT_ACT_RELU: LOOP(ft_relu##SFX); break;                      \
    case FT_ACT_TANH: LOOP(ft_tanh##SFX); break;                      \
    case FT_ACT_SIGMOID: LOOP(ft_sigmoid##SFX); break;                \
    case FT_ACT_SOFTPLUS: LOOP(ft_softplus##SFX); break;              \
    case FT_ACT_GELU: LOOP(ft_gelu##SFX); break;                      \
    case FT_ACT_ELU: LOOP(ft_elu##SFX); break;                        \
    case FT_ACT_LEAKYRELU: LOOP(ft_leakyrelu##SFX); break;            \
    case FT_ACT_SWISH: LOOP(ft_swish##SFX); break;                    \
    default: LOOP(ft_identity##SFX); break;                           \
    }
#define FT_ACT_DISPATCH_d(code, LOOP) FT_ACT_DISPATCH_(code, LOOP, _v)
#define FT_ACT_DISPATCH_f(code, LOOP) FT_ACT_DISPATCH_(code, LOOP, _vf)

/* ------------------------------------------------------------------ array API */

/* One in-place and one two-output epilogue per dtype; z + b is rounded to T (as the stored
 * pre-activation) before the activation in both forms. */
#define FT_DEFINE_BIAS_ACT(T, SFX)                                                           \
    static FT_CLONES void ft_bias_act_inplace_##SFX(int code, T *y, const T *b,              \
                                                    ptrdiff_t rows, ptrdiff_t cols)          \
    {                                                                                        \
        ptrdiff_t i, j;                                                                      \
        for (i = 0; i < rows; i++) {                                                         \
            T *yr = y + i * cols;                                                            \
            if (b == NULL) {                                                                 \
                FT_ACT_DISPATCH_##SFX(code, FT_LOOP_INPLACE_)                                      \
            } else {                                                                         \
                FT_ACT_DISPATCH_##SFX(code, FT_LOOP_INPLACE_B_)                                    \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    static FT_CLONES void ft_bias_act_pre_##SFX(int code, T *restrict z, const T *restrict b, \
                                                T *restrict y, ptrdiff_t rows, ptrdiff_t cols) \
    {                                                                                        \
        ptrdiff_t i, j;                                                                      \
        for (i = 0; i < rows; i++) {                                                         \
            T *restrict zr = z + i * cols;                                                   \
            T *restrict yr = y + i * cols;                                                   \
            if (b != NULL)                                                                   \
                for (j = 0; j < cols; j++) zr[j] += b[j];                                    \
            FT_ACT_DISPATCH_##SFX(code, FT_LOOP_PRE_)                                              \
        }                                                                                    \
    }
#define FT_LOOP_INPLACE_(F) for (j = 0; j < cols; j++) yr[j] = F(yr[j]);
#define FT_LOOP_INPLACE_B_(F) for (j = 0; j < cols; j++) yr[j] = F(yr[j] + b[j]);
#define FT_LOOP_PRE_(F) for (j = 0; j < cols; j++) yr[j] = F(zr[j]);

/* y[i, j] = act(y[i, j] + b[j])   (b may be NULL) */
/* z[i, j] += b[j]; y[i, j] = act(z[i, j])   (b may be NULL; z, y distinct) */
FT_DEFINE_BIAS_ACT(float, f)
FT_DEFINE_BIAS_ACT(double, d)

/* The derivative passes of the Dense backward, tangent and tangent-backward kernels.  Blocks
 * of k tangents are stored (k, rows, cols); a row of act'(z) (and of dy act''(z)) is evaluated
 * once into a stack buffer of FT_CHUNK values and applied to all k blocks. */
#define FT_CHUNK 256

#define FT_LOOP_DMUL_(A, S) for (j = 0; j < cols; j++) dr[j] = gr[j] * ft_##A##_d1##S(zr[j], yr[j]);
#define FT_LOOP_DMUL_INPLACE_(A, S) for (j = 0; j < cols; j++) dr[j] *= ft_##A##_d1##S(zr[j], yr[j]);
#define FT_LOOP_D1_(A, S) for (j = 0; j < n; j++) d1[j] = ft_##A##_d1##S(zr[j], yr[j]);
#define FT_LOOP_H_(A, S) for (j = 0; j < n; j++) h[j] = gr[j] * ft_##A##_d2##S(zr[j], yr[j]);
#define FT_LOOP_EVAL_(A, S)                                                                   \
    if (out == z) {                                                                          \
        ft_elem_t *restrict o = out;                                                         \
        if (order == 0) for (i = 0; i < n; i++) o[i] = ft_##A##S(o[i]);                      \
        else if (order == 1) for (i = 0; i < n; i++) o[i] = ft_##A##_d1##S(o[i], ft_##A##S(o[i])); \
        else for (i = 0; i < n; i++) o[i] = ft_##A##_d2##S(o[i], ft_##A##S(o[i]));           \
    } else {                                                                                 \
        const ft_elem_t *restrict zi = z;                                                    \
        ft_elem_t *restrict o = out;                                                         \
        if (order == 0) for (i = 0; i < n; i++) o[i] = ft_##A##S(zi[i]);                     \
        else if (order == 1) for (i = 0; i < n; i++) o[i] = ft_##A##_d1##S(zi[i], ft_##A##S(zi[i])); \
        else for (i = 0; i < n; i++) o[i] = ft_##A##_d2##S(zi[i], ft_##A##S(zi[i]));         \
    }

#define FT_DEFINE_DACT(T, SFX, VS)                                                           \
    /* delta = dy act'(z), row-major (rows, cols), delta may be dy (in place; identity: a   \
     * copy or nothing); with db != NULL also db[j] = sum_i delta[i, j] */                   \
    static FT_CLONES void ft_dact_mul_##SFX(int code, const T *z, const T *y, T *dy, T *delta, \
                                            T *restrict db, ptrdiff_t rows, ptrdiff_t cols)  \
    {                                                                                        \
        ptrdiff_t i, j;                                                                      \
        if (db != NULL)                                                                      \
            for (j = 0; j < cols; j++) db[j] = 0;                                            \
        for (i = 0; i < rows; i++) {                                                         \
            const T *restrict zr = z + i * cols;                                             \
            const T *restrict yr = y + i * cols;                                             \
            T *restrict dr = delta + i * cols;                                               \
            if (code == FT_ACT_IDENTITY) {                                                   \
                if (delta != dy) memcpy(dr, dy + i * cols, (size_t)cols * sizeof(T));        \
            } else if (delta == dy) {                                                        \
                FT_DACT_DISPATCH_(code, FT_LOOP_DMUL_INPLACE_, VS)                           \
            } else {                                                                         \
                const T *restrict gr = dy + i * cols;                                        \
                FT_DACT_DISPATCH_(code, FT_LOOP_DMUL_, VS)                                   \
            }                                                                                \
            if (db != NULL)                                                                  \
                for (j = 0; j < cols; j++) db[j] += dr[j];                                   \
        }                                                                                    \
    }                                                                                        \
    /* for each block l: tz[l] += tb[l] (broadcast over rows; with init, tz[l] = tb[l], or 0 \
     * without tb), then ty[l] = act'(z) tz[l]; ty NULL: tz only; ty may be tz (in place) */  \
    static FT_CLONES void ft_tangent_act_##SFX(int code, const T *z, const T *y, const T *tb,  \
                                               T *tz, T *ty, ptrdiff_t k, ptrdiff_t rows,    \
                                               ptrdiff_t cols, int init)                     \
    {                                                                                        \
        T d1[FT_CHUNK];                                                                      \
        ptrdiff_t i, j, l, c0, n;                                                            \
        int mul = ty != NULL && !(ty == tz && code == FT_ACT_IDENTITY);                      \
        for (i = 0; i < rows; i++)                                                           \
            for (c0 = 0; c0 < cols; c0 += FT_CHUNK) {                                        \
                const T *restrict zr = z + i * cols + c0;                                    \
                const T *restrict yr = y + i * cols + c0;                                    \
                n = cols - c0 < FT_CHUNK ? cols - c0 : FT_CHUNK;                             \
                if (mul) {                                                                   \
                    FT_DACT_DISPATCH_(code, FT_LOOP_D1_, VS)                                 \
                }                                                                            \
                for (l = 0; l < k; l++) {                                                    \
                    T *restrict tzr = tz + (l * rows + i) * cols + c0;                       \
                    const T *restrict tbr = tb == NULL ? NULL : tb + l * cols + c0;          \
                    if (init && tbr != NULL)                                                 \
                        memcpy(tzr, tbr, (size_t)n * sizeof(T));                             \
                    else if (init)                                                           \
                        memset(tzr, 0, (size_t)n * sizeof(T));                               \
                    else if (tbr != NULL)                                                    \
                        for (j = 0; j < n; j++) tzr[j] += tbr[j];                            \
                    if (mul && ty == tz) {                                                   \
                        for (j = 0; j < n; j++) tzr[j] *= d1[j];                             \
                    } else if (mul) {                                                        \
                        T *restrict tyr = ty + (l * rows + i) * cols + c0;                   \
                        for (j = 0; j < n; j++) tyr[j] = d1[j] * tzr[j];                     \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
    }                                                                                        \
    /* for each block l: r[l] = tdy[l] act'(z) + dy act''(z) tz[l] (a NULL tdy, or dy or tz: \
     * that term is zero; tz is read only when dy != NULL and act'' is not identically 0),   \
     * with tdb != NULL tdb[l, j] = sum_i r[l, i, j]; r may be tz (in place), or tdy itself   \
     * for the identity */                                                                  \
    static FT_CLONES void ft_rdelta_##SFX(int code, const T *z, const T *y, const T *dy,      \
                                          const T *tdy, const T *tz, T *r, T *restrict tdb,  \
                                          ptrdiff_t k, ptrdiff_t rows, ptrdiff_t cols)       \
    {                                                                                        \
        T d1[FT_CHUNK], h[FT_CHUNK];                                                         \
        ptrdiff_t i, j, l, c0, n;                                                            \
        int use_h = dy != NULL && tz != NULL && ft_act_has_d2(code);                         \
        int use_t = tdy != NULL;                                                             \
        if (tdb != NULL)                                                                     \
            memset(tdb, 0, (size_t)(k * cols) * sizeof(T));                                  \
        for (i = 0; i < rows; i++)                                                           \
            for (c0 = 0; c0 < cols; c0 += FT_CHUNK) {                                        \
                const T *restrict zr = z + i * cols + c0;                                    \
                const T *restrict yr = y + i * cols + c0;                                    \
                n = cols - c0 < FT_CHUNK ? cols - c0 : FT_CHUNK;                             \
                if (use_t && code != FT_ACT_IDENTITY) {                                      \
                    FT_DACT_DISPATCH_(code, FT_LOOP_D1_, VS)                                 \
                }                                                                            \
                if (use_h) {                                                                 \
                    const T *restrict gr = dy + i * cols + c0;                               \
                    FT_DACT_DISPATCH_(code, FT_LOOP_H_, VS)                                  \
                }                                                                            \
                for (l = 0; l < k; l++) {                                                    \
                    ptrdiff_t off = (l * rows + i) * cols + c0;                              \
                    T *rr = r + off;                                                         \
                    if (use_t && use_h && rr == tz + off) {                                  \
                        T *restrict ro = rr;                                                 \
                        const T *restrict ta = tdy + off;                                    \
                        for (j = 0; j < n; j++) ro[j] = ta[j] * d1[j] + h[j] * ro[j];        \
                    } else if (use_t && use_h) {                                             \
                        T *restrict ro = rr;                                                 \
                        const T *restrict ta = tdy + off;                                    \
                        const T *restrict tzr = tz + off;                                    \
                        for (j = 0; j < n; j++) ro[j] = ta[j] * d1[j] + h[j] * tzr[j];       \
                    } else if (use_t && code == FT_ACT_IDENTITY) {                           \
                        if (rr != tdy + off) memcpy(rr, tdy + off, (size_t)n * sizeof(T));   \
                    } else if (use_t) {                                                      \
                        T *restrict ro = rr;                                                 \
                        const T *restrict ta = tdy + off;                                    \
                        for (j = 0; j < n; j++) ro[j] = ta[j] * d1[j];                       \
                    } else if (use_h && rr == tz + off) {                                    \
                        T *restrict ro = rr;                                                 \
                        for (j = 0; j < n; j++) ro[j] *= h[j];                               \
                    } else if (use_h) {                                                      \
                        T *restrict ro = rr;                                                 \
                        const T *restrict tzr = tz + off;                                    \
                        for (j = 0; j < n; j++) ro[j] = h[j] * tzr[j];                       \
                    } else {                                                                 \
                        memset(rr, 0, (size_t)n * sizeof(T));                                \
                    }                                                                        \
                    if (tdb != NULL) {                                                       \
                        T *restrict tdbr = tdb + l * cols + c0;                              \
                        for (j = 0; j < n; j++) tdbr[j] += rr[j];                            \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
    }                                                                                        \
    /* out[i] = act(z[i]), act'(z[i]) or act''(z[i]) for order 0, 1, 2; out may be z */      \
    static FT_CLONES void ft_act_eval_##SFX(int code, int order, const T *z, T *out,          \
                                            ptrdiff_t n)                                     \
    {                                                                                        \
        typedef T ft_elem_t;                                                                 \
        ptrdiff_t i;                                                                         \
        FT_DACT_DISPATCH_(code, FT_LOOP_EVAL_, VS)                                           \
    }

FT_DEFINE_DACT(float, f, _vf)
FT_DEFINE_DACT(double, d, _v)

FT_VECTORIZE_END

#endif /* FLUXTREE_ACT_H */
