/*
 * fluxtree/cuda/reduce.cu -- the last step of the deterministic per-column and per-channel
 * sums: the kernels that reduce write one part per split of the rows, and
 *
 *   ft_sum_splits_{f,d}(partial, n, splits, pstride, scale, out):
 *       out[j] := scale * sum over s < splits of partial[s pstride + j],   j < n,
 *
 * adds them in a fixed order (so results do not depend on scheduling) in double, storing to
 * float (_f) or double (_d).
 */
#include "common.cuh"

template <typename T>
__device__ void ft_sum_splits_run(const double *partial, ft_i64 n, ft_i64 splits,
                                  ft_i64 pstride, double scale, T *out)
{
    for (ft_i64 j = (ft_i64)blockIdx.x * blockDim.x + threadIdx.x; j < n;
         j += (ft_i64)gridDim.x * blockDim.x) {
        double s = 0.0;
        for (ft_i64 p = 0; p < splits; p++)
            s += partial[p * pstride + j];
        out[j] = (T)(scale * s);
    }
}

extern "C" __global__ void ft_sum_splits_f(const double *partial, ft_i64 n, ft_i64 splits,
                                           ft_i64 pstride, double scale, float *out)
{
    ft_sum_splits_run<float>(partial, n, splits, pstride, scale, out);
}

extern "C" __global__ void ft_sum_splits_d(const double *partial, ft_i64 n, ft_i64 splits,
                                           ft_i64 pstride, double scale, double *out)
{
    ft_sum_splits_run<double>(partial, n, splits, pstride, scale, out);
}
