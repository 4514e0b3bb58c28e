/*
 * fluxtree/cuda/common.cuh -- what the CUDA kernels share: integer types, the activations with
 * their first and second derivatives, the index walks of the pack and elementwise kernels,
 * and the column sums.
 *
 * Compiled at run time by NVRTC (cupy.RawModule): no host header is included, only what NVRTC
 * provides built in (the CUDA math functions).  Everything here but the column sums is
 * __host__ __device__, so that the test suite can compile it for the CPU with nvcc and check
 * it there (activations against the C kernels, index walks against direct arithmetic).
 *
 * Activation codes, as include/fluxtree/act.h defines them:
 *   0 identity   x
 *   1 relu       x < 0 ? 0 : x
 *   2 tanh       tanh(x)
 *   3 sigmoid    1 / (1 + exp(-x))
 *   4 softplus   max(x, 0) + log1p(exp(-|x|))
 *   5 gelu       x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3) (tanh form); -0 below -30;
 *                float data evaluated in double, as on the CPU
 *   6 elu        x > 0 ? x : expm1(x)
 *   7 leakyrelu  x < 0 ? 0.01 x : x
 *   8 swish      x sigmoid(x)
 * Unknown codes act as the identity.  NaN propagates.
 *
 * Derivatives are evaluated from the pre-activation z and the output y = act(z), reading
 * whichever is cheaper: identity, relu, leakyrelu, tanh (1 - y^2), sigmoid (y (1 - y)),
 * softplus (1 - exp(-y)) and elu (y + 1 below 0) read only y; gelu and swish read only z
 * (ft_act_reads_z).  Piecewise functions take the left value at z = 0.
 */
#ifndef FLUXTREE_CUDA_COMMON_CUH
#define FLUXTREE_CUDA_COMMON_CUH

typedef long long ft_i64;

#define FT_HD __host__ __device__ __forceinline__

#define FT_ACT_IDENTITY 0
#define FT_ACT_RELU 1
#define FT_ACT_TANH 2
#define FT_ACT_SIGMOID 3
#define FT_ACT_SOFTPLUS 4
#define FT_ACT_GELU 5
#define FT_ACT_ELU 6
#define FT_ACT_LEAKYRELU 7
#define FT_ACT_SWISH 8

#define FT_LEAKY_SLOPE 0.01
#define FT_GELU_K 0.7978845608028654 /* sqrt(2/pi) */
#define FT_GELU_C 0.044715

/* ------------------------------------------------------------------ math by type */

FT_HD float ft_exp(float x) { return expf(x); }
FT_HD double ft_exp(double x) { return exp(x); }
FT_HD float ft_expm1(float x) { return expm1f(x); }
FT_HD double ft_expm1(double x) { return expm1(x); }
FT_HD float ft_log1p(float x) { return log1pf(x); }
FT_HD double ft_log1p(double x) { return log1p(x); }
FT_HD float ft_tanh(float x) { return tanhf(x); }
FT_HD double ft_tanh(double x) { return tanh(x); }
FT_HD float ft_abs(float x) { return fabsf(x); }
FT_HD double ft_abs(double x) { return fabs(x); }

FT_HD int ft_act_reads_z(int code) { return code == FT_ACT_GELU || code == FT_ACT_SWISH; }

/* act'' is identically zero for identity, relu and leakyrelu */
FT_HD int ft_act_has_d2(int code)
{
    return code == FT_ACT_TANH || code == FT_ACT_SIGMOID || code == FT_ACT_SOFTPLUS
           || code == FT_ACT_GELU || code == FT_ACT_ELU || code == FT_ACT_SWISH;
}

/* ------------------------------------------------------------------ activations */

template <typename T> FT_HD T ft_sigmoid(T x) { return (T)1 / ((T)1 + ft_exp(-x)); }

template <typename T> FT_HD T ft_softplus(T x)
{
    T y = (x > (T)0 ? x : (T)0) + ft_log1p(ft_exp(-ft_abs(x)));
    return x != x ? x : y;
}

FT_HD double ft_gelu(double x)
{
    double u = FT_GELU_K * (x + FT_GELU_C * x * x * x);
    double y = x / (1.0 + exp(-2.0 * u));
    return x < -30.0 ? -0.0 : y;                 /* exp(-2u) overflows: avoids -inf / inf */
}

template <typename T> FT_HD T ft_act(int code, T x)
{
    switch (code) {
    case FT_ACT_RELU: return x < (T)0 ? (T)0 : x;
    case FT_ACT_TANH: return ft_tanh(x);
    case FT_ACT_SIGMOID: return ft_sigmoid(x);
    case FT_ACT_SOFTPLUS: return ft_softplus(x);
    case FT_ACT_GELU: return (T)ft_gelu((double)x);
    case FT_ACT_ELU: return x > (T)0 ? x : ft_expm1(x);
    case FT_ACT_LEAKYRELU: return x < (T)0 ? (T)FT_LEAKY_SLOPE * x : x;
    case FT_ACT_SWISH: return x * ft_sigmoid(x);
    default: return x;
    }
}

/* gelu = z s, s = sigmoid(t), t = 2k (z + c z^3), w = t' = 2k (1 + 3c z^2):
 *   gelu'  = s + z s (1-s) w,   gelu'' = s (1-s) (2w + z (1-2s) w^2 + 12 k c z^2),
 * 1 - s computed as e s (e = exp(-t)) where it would cancel; beyond |z| = 30 the limits. */
FT_HD double ft_gelu_d(int order, double z)
{
    double z2 = z * z;
    double e = exp(-2.0 * FT_GELU_K * (z + FT_GELU_C * z * z2));
    double s = 1.0 / (1.0 + e);
    double q = e > 1.0 ? 1.0 - s : e * s;
    double w = 2.0 * FT_GELU_K * (1.0 + 3.0 * FT_GELU_C * z2);
    if (order == 1) {
        double d = s + z * s * q * w;
        d = z > 30.0 ? 1.0 : d;
        return z < -30.0 ? 0.0 : d;
    }
    double d = s * q * (2.0 * w + z * (q - s) * w * w + 12.0 * FT_GELU_K * FT_GELU_C * z2);
    return z > 30.0 || z < -30.0 ? 0.0 : d;
}

/* swish = z s, s = sigmoid(z): swish' = s (1 + z (1-s)), swish'' = s (1-s) (2 + z (1-2s));
 * the limits where exp(-z) overflows (z = +-inf would give inf * 0). */
template <typename T> FT_HD T ft_swish_d(int order, T z)
{
    const T big = sizeof(T) == 4 ? (T)100 : (T)710;
    T e = ft_exp(-z);
    T s = (T)1 / ((T)1 + e);
    T q = e > (T)1 ? (T)1 - s : e * s;
    if (order == 1) {
        T d = s * ((T)1 + z * q);
        d = z > big ? (T)1 : d;
        return z < -big ? (T)0 : d;
    }
    T d = s * q * ((T)2 + z * (q - s));
    return z > big || z < -big ? (T)0 : d;
}

/* act'(z) from z and y = act(z) */
template <typename T> FT_HD T ft_act_d1(int code, T z, T y)
{
    switch (code) {
    case FT_ACT_RELU: return y > (T)0 ? (T)1 : (T)0;
    case FT_ACT_TANH: return (T)1 - y * y;
    case FT_ACT_SIGMOID: return y * ((T)1 - y);
    case FT_ACT_SOFTPLUS: return -ft_expm1(-y);
    case FT_ACT_GELU: return (T)ft_gelu_d(1, (double)z);
    case FT_ACT_ELU: return y > (T)0 ? (T)1 : y + (T)1;
    case FT_ACT_LEAKYRELU: return y > (T)0 ? (T)1 : (T)FT_LEAKY_SLOPE;
    case FT_ACT_SWISH: return ft_swish_d(1, z);
    default: return (T)1;
    }
}

/* act''(z) from z and y = act(z) */
template <typename T> FT_HD T ft_act_d2(int code, T z, T y)
{
    switch (code) {
    case FT_ACT_TANH: return (T)-2 * y * ((T)1 - y * y);
    case FT_ACT_SIGMOID: return y * ((T)1 - y) * ((T)1 - (T)2 * y);
    case FT_ACT_SOFTPLUS: return -ft_expm1(-y) * ft_exp(-y);
    case FT_ACT_GELU: return (T)ft_gelu_d(2, (double)z);
    case FT_ACT_ELU: return y > (T)0 ? (T)0 : y + (T)1;
    case FT_ACT_SWISH: return ft_swish_d(2, z);
    default: return (T)0;                      /* identity, relu, leakyrelu */
    }
}

/* ------------------------------------------------------------------ segment search */

/* The segment j in [lo, hi] holding flat position i: the largest j with offsets[j] <= i
 * (segments of length zero are passed over, since the next one starts at the same offset).
 * Needs offsets[lo] <= i. */
FT_HD ft_i64 ft_find_segment(const ft_i64 *offsets, ft_i64 lo, ft_i64 hi, ft_i64 i)
{
    while (lo < hi) {
        ft_i64 mid = lo + (hi - lo + 1) / 2;
        if (offsets[mid] <= i)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* The work of thread t of block b (of nb blocks of nt threads) in the pack kernels (pack.cu,
 * which describes the table): visit(seg, k, f) for each work position i it owns, element k of
 * segment seg, at flat[f].  Block b owns chunks b, b + nb, ...; each position's segment is
 * searched in [first[c], first[c+1]], from the segment of the thread's previous position. */
template <class V>
FT_HD void ft_pack_walk(const ft_i64 *table, ft_i64 n, ft_i64 nchunks, ft_i64 chunk,
                        ft_i64 b, ft_i64 nb, ft_i64 t, ft_i64 nt, const V &visit)
{
    const ft_i64 *offsets = table + n;
    const ft_i64 *starts = table + 3 * n + 1;
    const ft_i64 *first = table + 4 * n + 1;
    const ft_i64 total = offsets[n];
    for (ft_i64 c = b; c < nchunks; c += nb) {
        const ft_i64 hi = first[c + 1];
        const ft_i64 end = (c + 1) * chunk < total ? (c + 1) * chunk : total;
        ft_i64 seg = first[c];
        for (ft_i64 i = c * chunk + t; i < end; i += nt) {
            seg = ft_find_segment(offsets, seg, hi, i);
            const ft_i64 k = i - offsets[seg];
            visit(seg, k, starts[seg] + k);
        }
    }
}

/* ------------------------------------------------------------------ index bookkeeping */

/* The channel c of flat index i = (n C + c) L + l of an (N, C, L) array, kept up to date as
 * i advances by a fixed stride, without a division per step.  An (rows, cols) matrix is the
 * case L = 1 (c is the column). */
struct ft_channel_iter {
    ft_i64 l, c, dl, dc, L, C;

    FT_HD ft_channel_iter(ft_i64 i, ft_i64 stride, ft_i64 C_, ft_i64 L_)
        : l(i % L_), c((i / L_) % C_), dl(stride % L_), dc((stride / L_) % C_), L(L_), C(C_) {}

    FT_HD void advance()
    {
        l += dl;
        const ft_i64 carry = l >= L ? 1 : 0;
        l -= carry * L;
        c += dc + carry;
        c = c >= C ? c - C : c;
    }
};

/* ------------------------------------------------------------------ column sums */

/* Rows of threads per block in the column-sum kernels: blocks are 32 x FT_RED_ROWS, threadIdx.x
 * along the columns. */
#define FT_RED_ROWS 8

/* The sums acc[e] (e < NS) over threadIdx.y of a 32 x FT_RED_ROWS block, written by the
 * threads of row 0 to partial[((blockIdx.y NS + e) K + k) cols + col]: the part of split
 * blockIdx.y, which ft_sum_splits (reduce.cu) adds to the others.  Every thread of the block
 * must call it. */
template <int NS>
__device__ __forceinline__ void ft_column_partial(const double *acc, double *partial, ft_i64 K,
                                                  ft_i64 k, ft_i64 cols, ft_i64 col)
{
    __shared__ double sh[NS][FT_RED_ROWS][32];
    for (int e = 0; e < NS; e++)
        sh[e][threadIdx.y][threadIdx.x] = acc[e];
    __syncthreads();
    if (threadIdx.y == 0 && col < cols)
        for (int e = 0; e < NS; e++) {
            double s = 0.0;
            for (int r = 0; r < FT_RED_ROWS; r++)
                s += sh[e][r][threadIdx.x];
            partial[(((ft_i64)blockIdx.y * NS + e) * K + k) * cols + col] = s;
        }
}

#endif /* FLUXTREE_CUDA_COMMON_CUH */
