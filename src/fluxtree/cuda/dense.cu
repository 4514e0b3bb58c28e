/*
 * fluxtree/cuda/dense.cu -- the elementwise passes of the Dense layer around cuBLAS GEMMs.
 *
 * fluxtree.cuda runs the matrix products through cuBLAS (cupy.cublas.gemm, cupy.matmul) and
 * these kernels for the rest, on row-major (rows, cols) data, cols = out features; blocks of k
 * tangents are stored (k, rows, cols).  Suffix _f: float, _d: double.
 *
 *   ft_dense_bias_act     z := z + b, y := act(z)          the GEMM's epilogue (y may be z)
 *   ft_dense_delta        delta := dy act'(z)              backward, with the bias gradient's
 *                                                          column sums (in double)
 *   ft_dense_tangent      tz[j] += tb[j], ty[j] := act'(z) tz[j]
 *   ft_dense_rdelta       rdelta[j] := tdy[j] act'(z) + dy act''(z) tz[j]
 *                                                          tangent-backward, with column sums
 *
 * act'(z) and act''(z) are evaluated from z and y = act(z) (common.cuh); a caller that kept no
 * pre-activation passes y for z when the activation reads only y.
 *
 * Column sums are deterministic: blocks of 32 x FT_RED_ROWS threads, threadIdx.x along the
 * columns (coalesced), blockIdx.y splitting the rows into gridDim.y parts, blockIdx.z the
 * tangent block; each block writes its part to partial[(split K + k) cols + col] and
 * ft_sum_splits (reduce.cu) adds the parts in order.
 */
#include "common.cuh"

template <typename T>
__device__ void ft_dense_bias_act_run(T *z, const T *b, T *y, ft_i64 rows, ft_i64 cols,
                                      int act)
{
    const ft_i64 n = rows * cols;
    const ft_i64 stride = (ft_i64)gridDim.x * blockDim.x;
    ft_i64 i = (ft_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    ft_channel_iter it(i, stride, cols, 1);
    for (; i < n; i += stride, it.advance()) {
        T v = z[i];
        if (b != nullptr)
            v += b[it.c];
        if (y != z)
            z[i] = v;
        y[i] = ft_act(act, v);
    }
}

template <typename T>
__device__ void ft_dense_delta_run(const T *z, const T *y, const T *dy, T *delta,
                                   double *partial, ft_i64 K, ft_i64 rows, ft_i64 cols,
                                   int act)
{
    const ft_i64 col = (ft_i64)blockIdx.x * 32 + threadIdx.x;
    const ft_i64 k = blockIdx.z;
    const ft_i64 ko = k * rows * cols;
    double acc = 0.0;
    if (col < cols)
        for (ft_i64 r = (ft_i64)blockIdx.y * FT_RED_ROWS + threadIdx.y; r < rows;
             r += (ft_i64)gridDim.y * FT_RED_ROWS) {
            const ft_i64 i = r * cols + col;
            const T d = dy[ko + i] * ft_act_d1(act, z[i], y[i]);
            delta[ko + i] = d;
            acc += (double)d;
        }
    if (partial != nullptr)
        ft_column_partial<1>(&acc, partial, K, k, cols, col);
}

template <typename T>
__device__ void ft_dense_tangent_run(const T *z, const T *y, const T *tb, T *tz, T *ty,
                                     ft_i64 K, ft_i64 rows, ft_i64 cols, int act)
{
    const ft_i64 n = rows * cols;
    const ft_i64 stride = (ft_i64)gridDim.x * blockDim.x;
    const ft_i64 i0 = (ft_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i0 >= n)
        return;
    for (ft_i64 k = blockIdx.y; k < K; k += gridDim.y) {
        ft_channel_iter it(i0, stride, cols, 1);
        for (ft_i64 i = i0; i < n; i += stride, it.advance()) {
            T t = tz[k * n + i];
            if (tb != nullptr) {
                t += tb[k * cols + it.c];
                tz[k * n + i] = t;
            }
            if (ty != nullptr)
                ty[k * n + i] = ft_act_d1(act, z[i], y[i]) * t;
        }
    }
}

template <typename T>
__device__ void ft_dense_rdelta_run(const T *z, const T *y, const T *dy, const T *tdy,
                                    const T *tz, T *rdelta, double *partial, ft_i64 K,
                                    ft_i64 rows, ft_i64 cols, int act)
{
    const ft_i64 col = (ft_i64)blockIdx.x * 32 + threadIdx.x;
    const ft_i64 k = blockIdx.z;
    const ft_i64 ko = k * rows * cols;
    const bool curv = dy != nullptr && tz != nullptr && ft_act_has_d2(act);
    double acc = 0.0;
    if (col < cols)
        for (ft_i64 r = (ft_i64)blockIdx.y * FT_RED_ROWS + threadIdx.y; r < rows;
             r += (ft_i64)gridDim.y * FT_RED_ROWS) {
            const ft_i64 i = r * cols + col;
            T d = (T)0;
            if (tdy != nullptr)
                d = tdy[ko + i] * ft_act_d1(act, z[i], y[i]);
            if (curv)
                d += dy[i] * ft_act_d2(act, z[i], y[i]) * tz[ko + i];
            rdelta[ko + i] = d;
            acc += (double)d;
        }
    if (partial != nullptr)
        ft_column_partial<1>(&acc, partial, K, k, cols, col);
}

#define FT_DENSE_EXPORT(T, SFX)                                                               \
    extern "C" __global__ void ft_dense_bias_act_##SFX(T *z, const T *b, T *y, ft_i64 rows,  \
                                                       ft_i64 cols, int act)                  \
    {                                                                                         \
        ft_dense_bias_act_run<T>(z, b, y, rows, cols, act);                                   \
    }                                                                                         \
    extern "C" __global__ void ft_dense_delta_##SFX(const T *z, const T *y, const T *dy,      \
                                                    T *delta, double *partial, ft_i64 K,      \
                                                    ft_i64 rows, ft_i64 cols, int act)        \
    {                                                                                         \
        ft_dense_delta_run<T>(z, y, dy, delta, partial, K, rows, cols, act);                  \
    }                                                                                         \
    extern "C" __global__ void ft_dense_tangent_##SFX(const T *z, const T *y, const T *tb,    \
                                                      T *tz, T *ty, ft_i64 K, ft_i64 rows,    \
                                                      ft_i64 cols, int act)                   \
    {                                                                                         \
        ft_dense_tangent_run<T>(z, y, tb, tz, ty, K, rows, cols, act);                        \
    }                                                                                         \
    extern "C" __global__ void ft_dense_rdelta_##SFX(const T *z, const T *y, const T *dy,     \
                                                     const T *tdy, const T *tz, T *rdelta,    \
                                                     double *partial, ft_i64 K, ft_i64 rows,  \
                                                     ft_i64 cols, int act)                    \
    {                                                                                         \
        ft_dense_rdelta_run<T>(z, y, dy, tdy, tz, rdelta, partial, K, rows, cols, act);       \
    }

FT_DENSE_EXPORT(float, f)
FT_DENSE_EXPORT(double, d)
