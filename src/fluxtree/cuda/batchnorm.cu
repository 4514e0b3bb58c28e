/*
 * fluxtree/cuda/batchnorm.cu -- BatchNorm over (N, C, L) arrays (channel axis 1, L the product
 * of the spatial sizes), forward, backward and tangent, with per-channel sums in double.
 *
 * Work vectors (double, length C each) in one array w:
 *   w[0] mean, w[1] invstd = 1 / sqrt(var + eps) (the variance until ft_bn_coefs),
 *   w[2] gs = gamma invstd (invstd without gamma), w[3] sh = beta (0 without beta),
 *   w[4], w[5] the float32 roundings of gs and sh - mean gs.
 * The pre-activation is u = (x - mean) gs + sh in double for double data, and one float FMA
 * u = x w[4] + w[5] for float data, as the CPU kernels compute it; xh = (x - mean) invstd.
 *
 * Kernels (suffix _f: float data, _d: double data):
 *   ft_bn_sums          per-channel sums of x, or of (x - mean)^2        (forward statistics)
 *   ft_bn_coefs         invstd, gs, sh from the statistics; running statistics updated
 *   ft_bn_apply         y := act(u)
 *   ft_bn_grad_sums     per (k, c): sum g, sum g xh with g = act'(u) dy[k]   (dbeta, dgamma)
 *   ft_bn_dx            dx[k] := gs g - batch gs / m (sum g + xh sum g xh)
 *   ft_bn_tangent_sums  per (k, c): sum tx[k], sum tx[k] xh
 *   ft_bn_tangent       ty[k] := act'(u) (gs tx + (tg - gs mxt) xh + tb - gs mt)
 *                       (mt, mxt the means of tx and tx xh in batch mode, else 0)
 * Blocks of k tangents or cotangents are stored (K, N, C, L); m = N L.
 *
 * The sums write one part per split of a channel's values to
 * partial[((split 2 + e) K + k) C + c] (e = 0, 1), reduced by ft_sum_splits (reduce.cu):
 * with L == 1 in blocks of 32 x FT_RED_ROWS (grid (ceil(C / 32), splits, K), threads along the
 * channels), with L > 1 in blocks of FT_BN_THREADS (grid (C, splits, K), threads along a
 * channel's runs of L values).
 */
#include "common.cuh"

#define FT_BN_THREADS 256

#define FT_BN_BATCH 0   /* w[1] holds the batch variance; running statistics are updated */
#define FT_BN_RUNNING 1 /* mean and invstd from the running statistics */
#define FT_BN_GIVEN 2   /* w[0], w[1] hold mean and invstd already */

struct ft_pair {
    double a, b;
};

__device__ __forceinline__ float ft_bn_u(float x, const double *w, ft_i64 C, ft_i64 c)
{
    return fmaf(x, (float)w[4 * C + c], (float)w[5 * C + c]);
}

__device__ __forceinline__ double ft_bn_u(double x, const double *w, ft_i64 C, ft_i64 c)
{
    return (x - w[c]) * w[2 * C + c] + w[3 * C + c];
}

__device__ __forceinline__ double ft_bn_xh(double x, const double *w, ft_i64 C, ft_i64 c)
{
    return (x - w[c]) * w[C + c];
}

/* Sums over n and l of f(k, i, c) = (a, b) per channel c and block k = blockIdx.z, written as
 * the part of split blockIdx.y (layout above).  Every thread of the block must call it. */
template <class F>
__device__ void ft_channel_sums(const F &f, ft_i64 N, ft_i64 C, ft_i64 L, ft_i64 K,
                                double *partial)
{
    const ft_i64 k = blockIdx.z, split = blockIdx.y, splits = gridDim.y;
    double acc[2] = {0.0, 0.0};
    if (L == 1) {
        const ft_i64 c = (ft_i64)blockIdx.x * 32 + threadIdx.x;
        if (c < C)
            for (ft_i64 n = split * FT_RED_ROWS + threadIdx.y; n < N;
                 n += splits * FT_RED_ROWS) {
                const ft_pair p = f(k, n * C + c, c);
                acc[0] += p.a;
                acc[1] += p.b;
            }
        ft_column_partial<2>(acc, partial, K, k, C, c);
        return;
    }
    const ft_i64 c = blockIdx.x;
    const ft_i64 m = N * L, stride = splits * FT_BN_THREADS;
    ft_i64 e = split * FT_BN_THREADS + threadIdx.x;
    if (e < m) {
        ft_i64 n = e / L, l = e % L;
        const ft_i64 dn = stride / L, dl = stride % L;
        for (; e < m; e += stride) {
            const ft_pair p = f(k, (n * C + c) * L + l, c);
            acc[0] += p.a;
            acc[1] += p.b;
            l += dl;
            if (l >= L) {
                l -= L;
                n++;
            }
            n += dn;
        }
    }
    __shared__ double sh[2][FT_BN_THREADS];
    sh[0][threadIdx.x] = acc[0];
    sh[1][threadIdx.x] = acc[1];
    __syncthreads();
    for (int h = FT_BN_THREADS / 2; h > 0; h /= 2) {
        if (threadIdx.x < h) {
            sh[0][threadIdx.x] += sh[0][threadIdx.x + h];
            sh[1][threadIdx.x] += sh[1][threadIdx.x + h];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0)
        for (int s = 0; s < 2; s++)
            partial[((split * 2 + s) * K + k) * C + c] = sh[s][0];
}

/* ---------------------------------------------------------------- forward */

/* (x, 0), or ((x - mean)^2, 0) when mean is given */
template <typename T> struct ft_bn_moment {
    const T *x;
    const double *mean;
    __device__ ft_pair operator()(ft_i64 k, ft_i64 i, ft_i64 c) const
    {
        const double v = (double)x[i];
        if (mean == nullptr)
            return ft_pair{v, 0.0};
        const double d = v - mean[c];
        return ft_pair{d * d, 0.0};
    }
};

template <typename T>
__device__ void ft_bn_coefs_run(double *w, ft_i64 C, const T *gamma, const T *beta, T *rmean,
                                T *rvar, double eps, double momentum, double m, int mode)
{
    for (ft_i64 c = (ft_i64)blockIdx.x * blockDim.x + threadIdx.x; c < C;
         c += (ft_i64)gridDim.x * blockDim.x) {
        double mean, invstd;
        if (mode == FT_BN_RUNNING) {
            mean = (double)rmean[c];
            invstd = 1.0 / sqrt((double)rvar[c] + eps);
        } else if (mode == FT_BN_BATCH) {
            const double var = w[C + c];
            mean = w[c];
            invstd = 1.0 / sqrt(var + eps);
            if (rmean != nullptr) {
                rmean[c] = (T)((1.0 - momentum) * (double)rmean[c] + momentum * mean);
                rvar[c] = (T)((1.0 - momentum) * (double)rvar[c]
                              + momentum * var * m / (m - 1.0));
            }
        } else {
            mean = w[c];
            invstd = w[C + c];
        }
        const double gs = gamma != nullptr ? (double)gamma[c] * invstd : invstd;
        const double sh = beta != nullptr ? (double)beta[c] : 0.0;
        w[c] = mean;
        w[C + c] = invstd;
        w[2 * C + c] = gs;
        w[3 * C + c] = sh;
        w[4 * C + c] = (double)(float)gs;
        w[5 * C + c] = (double)(float)(sh - mean * gs);
    }
}

template <typename T>
__device__ void ft_bn_apply_run(const T *x, T *y, const double *w, ft_i64 N, ft_i64 C,
                                ft_i64 L, int act)
{
    const ft_i64 n = N * C * L;
    const ft_i64 stride = (ft_i64)gridDim.x * blockDim.x;
    ft_i64 i = (ft_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    ft_channel_iter it(i, stride, C, L);
    for (; i < n; i += stride, it.advance())
        y[i] = ft_act(act, ft_bn_u(x[i], w, C, it.c));
}

/* ---------------------------------------------------------------- backward */

/* (g, g xh), g = act'(u) dy[k] */
template <typename T> struct ft_bn_grad_terms {
    const T *x, *dy;
    const double *w;
    ft_i64 C, NCL;
    int act;
    __device__ ft_pair operator()(ft_i64 k, ft_i64 i, ft_i64 c) const
    {
        const T u = ft_bn_u(x[i], w, C, c);
        const double g = (double)dy[k * NCL + i] * (double)ft_act_d1(act, u, ft_act(act, u));
        const double xh = ft_bn_xh((double)x[i], w, C, c);
        return ft_pair{g, g * xh};
    }
};

/* S = the reduced sums, S[k C + c] = sum g, S[(K + k) C + c] = sum g xh */
template <typename T>
__device__ void ft_bn_dx_run(const T *x, const T *dy, const double *w, const double *S,
                             T *dx, ft_i64 N, ft_i64 C, ft_i64 L, ft_i64 K, int act, int batch)
{
    const ft_i64 n = N * C * L;
    const double m = (double)N * (double)L;
    const ft_i64 stride = (ft_i64)gridDim.x * blockDim.x;
    const ft_i64 i0 = (ft_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i0 >= n)
        return;
    for (ft_i64 k = blockIdx.y; k < K; k += gridDim.y) {
        ft_channel_iter it(i0, stride, C, L);
        for (ft_i64 i = i0; i < n; i += stride, it.advance()) {
            const ft_i64 c = it.c;
            const T u = ft_bn_u(x[i], w, C, c);
            const double g = (double)dy[k * n + i] * (double)ft_act_d1(act, u, ft_act(act, u));
            const double gs = w[2 * C + c];
            double d = gs * g;
            if (batch) {
                const double xh = ft_bn_xh((double)x[i], w, C, c);
                d -= gs / m * (S[k * C + c] + xh * S[(K + k) * C + c]);
            }
            dx[k * n + i] = (T)d;
        }
    }
}

/* ---------------------------------------------------------------- tangent */

/* (tx[k], tx[k] xh) */
template <typename T> struct ft_bn_tangent_terms {
    const T *x, *tx;
    const double *w;
    ft_i64 C, NCL;
    __device__ ft_pair operator()(ft_i64 k, ft_i64 i, ft_i64 c) const
    {
        const double t = (double)tx[k * NCL + i];
        return ft_pair{t, t * ft_bn_xh((double)x[i], w, C, c)};
    }
};

/* M = the means of tx and tx xh, M[k C + c] = mt, M[(K + k) C + c] = mxt, or null (zero);
 * tx, tg (K, C) and tb (K, C) may be null (zero). */
template <typename T>
__device__ void ft_bn_tangent_run(const T *x, const double *w, const double *M, const T *tx,
                                  const T *tg, const T *tb, T *ty, ft_i64 N, ft_i64 C,
                                  ft_i64 L, ft_i64 K, int act)
{
    const ft_i64 n = N * C * L;
    const ft_i64 stride = (ft_i64)gridDim.x * blockDim.x;
    const ft_i64 i0 = (ft_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i0 >= n)
        return;
    for (ft_i64 k = blockIdx.y; k < K; k += gridDim.y) {
        ft_channel_iter it(i0, stride, C, L);
        for (ft_i64 i = i0; i < n; i += stride, it.advance()) {
            const ft_i64 c = it.c;
            const double gs = w[2 * C + c];
            const double mt = M != nullptr ? M[k * C + c] : 0.0;
            const double mxt = M != nullptr ? M[(K + k) * C + c] : 0.0;
            const double xh = ft_bn_xh((double)x[i], w, C, c);
            double tu = ((tg != nullptr ? (double)tg[k * C + c] : 0.0) - gs * mxt) * xh
                        + (tb != nullptr ? (double)tb[k * C + c] : 0.0) - gs * mt;
            if (tx != nullptr)
                tu += gs * (double)tx[k * n + i];
            const T u = ft_bn_u(x[i], w, C, c);
            ty[k * n + i] = (T)((double)ft_act_d1(act, u, ft_act(act, u)) * tu);
        }
    }
}

/* ---------------------------------------------------------------- exports */

#define FT_BN_EXPORT(T, SFX)                                                                  \
    extern "C" __global__ void ft_bn_sums_##SFX(const T *x, const double *mean, ft_i64 N,     \
                                                ft_i64 C, ft_i64 L, double *partial)          \
    {                                                                                         \
        ft_channel_sums(ft_bn_moment<T>{x, mean}, N, C, L, 1, partial);                       \
    }                                                                                         \
    extern "C" __global__ void ft_bn_coefs_##SFX(double *w, ft_i64 C, const T *gamma,         \
                                                 const T *beta, T *rmean, T *rvar,            \
                                                 double eps, double momentum, double m,       \
                                                 int mode)                                    \
    {                                                                                         \
        ft_bn_coefs_run<T>(w, C, gamma, beta, rmean, rvar, eps, momentum, m, mode);           \
    }                                                                                         \
    extern "C" __global__ void ft_bn_apply_##SFX(const T *x, T *y, const double *w, ft_i64 N, \
                                                 ft_i64 C, ft_i64 L, int act)                 \
    {                                                                                         \
        ft_bn_apply_run<T>(x, y, w, N, C, L, act);                                            \
    }                                                                                         \
    extern "C" __global__ void ft_bn_grad_sums_##SFX(const T *x, const T *dy, const double *w, \
                                                     ft_i64 N, ft_i64 C, ft_i64 L, ft_i64 K,  \
                                                     int act, double *partial)                \
    {                                                                                         \
        ft_channel_sums(ft_bn_grad_terms<T>{x, dy, w, C, N * C * L, act}, N, C, L, K,         \
                        partial);                                                             \
    }                                                                                         \
    extern "C" __global__ void ft_bn_dx_##SFX(const T *x, const T *dy, const double *w,       \
                                              const double *S, T *dx, ft_i64 N, ft_i64 C,     \
                                              ft_i64 L, ft_i64 K, int act, int batch)         \
    {                                                                                         \
        ft_bn_dx_run<T>(x, dy, w, S, dx, N, C, L, K, act, batch);                             \
    }                                                                                         \
    extern "C" __global__ void ft_bn_tangent_sums_##SFX(const T *x, const T *tx,              \
                                                        const double *w, ft_i64 N, ft_i64 C,  \
                                                        ft_i64 L, ft_i64 K, double *partial)  \
    {                                                                                         \
        ft_channel_sums(ft_bn_tangent_terms<T>{x, tx, w, C, N * C * L}, N, C, L, K, partial); \
    }                                                                                         \
    extern "C" __global__ void ft_bn_tangent_##SFX(const T *x, const double *w,               \
                                                   const double *M, const T *tx, const T *tg, \
                                                   const T *tb, T *ty, ft_i64 N, ft_i64 C,    \
                                                   ft_i64 L, ft_i64 K, int act)               \
    {                                                                                         \
        ft_bn_tangent_run<T>(x, w, M, tx, tg, tb, ty, N, C, L, K, act);                       \
    }

FT_BN_EXPORT(float, f)
FT_BN_EXPORT(double, d)
