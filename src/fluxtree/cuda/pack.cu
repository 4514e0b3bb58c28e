/*
 * fluxtree/cuda/pack.cu -- many device arrays into one flat vector, and back, in one launch.
 *
 * The arrays ("segments") are described by one int64 table on the device, written by the
 * host in one copy (fluxtree.cuda.PackPlan):
 *
 *   table[0 : n]                   data pointers of the n segments (C-contiguous arrays), or
 *                                  their byte offsets from the address `base` (an argument)
 *   table[n : 2n+1]                offsets: the work positions of segment j are
 *                                  offsets[j] <= i < offsets[j+1] (its size, cumulated)
 *   table[2n+1 : 3n+1]             dtype codes of the segments (FT_DT_* below)
 *   table[3n+1 : 4n+1]             starts: element k of segment j is flat[starts[j] + k]
 *   table[4n+1 : 4n+2+nchunks]     chunk map: first[c] is the segment holding work position
 *                                  min(c * chunk, total - 1)
 *
 * The work positions i in [0, total), total = offsets[n], are cut into chunks of `chunk`;
 * block b handles chunks b, b + gridDim.x, ...  Each position finds its segment by a binary
 * search restricted to [first[c], first[c+1]] (one or two probes for large arrays) and starting
 * from the segment of the thread's previous position.  With starts = offsets the segments
 * tile the flat vector; other starts pack into, or scatter from, parts of it.
 *
 * Values are converted on the way through double (real, imag): real to complex sets imag = 0,
 * complex to real keeps the real part, float64 to float32/float16 rounds to nearest even, as
 * NumPy's astype.
 */
#include "common.cuh"

#define FT_DT_F16 0
#define FT_DT_F32 1
#define FT_DT_F64 2
#define FT_DT_C64 3
#define FT_DT_C128 4

struct ft_val {
    double re, im;
};

/* Element k of an array of dtype `code`.  Complex numbers are read as two scalars, so an
 * array needs only the alignment of its scalar type. */
__device__ __forceinline__ ft_val ft_load(const void *p, ft_i64 k, int code)
{
    ft_val v;
    v.im = 0.0;
    switch (code) {
    case FT_DT_F16: {
        unsigned short h = ((const unsigned short *)p)[k];
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
        v.re = f;
        break;
    }
    case FT_DT_F32: v.re = ((const float *)p)[k]; break;
    case FT_DT_C64:
        v.re = ((const float *)p)[2 * k];
        v.im = ((const float *)p)[2 * k + 1];
        break;
    case FT_DT_C128:
        v.re = ((const double *)p)[2 * k];
        v.im = ((const double *)p)[2 * k + 1];
        break;
    default: v.re = ((const double *)p)[k]; break;
    }
    return v;
}

__device__ __forceinline__ void ft_store(void *p, ft_i64 k, int code, ft_val v)
{
    switch (code) {
    case FT_DT_F16: {
        unsigned short h;
        asm("cvt.rn.f16.f64 %0, %1;" : "=h"(h) : "d"(v.re));
        ((unsigned short *)p)[k] = h;
        break;
    }
    case FT_DT_F32: ((float *)p)[k] = (float)v.re; break;
    case FT_DT_C64:
        ((float *)p)[2 * k] = (float)v.re;
        ((float *)p)[2 * k + 1] = (float)v.im;
        break;
    case FT_DT_C128:
        ((double *)p)[2 * k] = v.re;
        ((double *)p)[2 * k + 1] = v.im;
        break;
    default: ((double *)p)[k] = v.re; break;
    }
}

/* Copies one element: flat[f] = element k of a segment (pack), or the reverse (scatter). */
template <bool TO_FLAT> struct ft_copy {
    const ft_i64 *ptrs, *codes;
    ft_i64 base;
    void *flat;
    int flat_code;
    __device__ void operator()(ft_i64 seg, ft_i64 k, ft_i64 f) const
    {
        void *leaf = (void *)(base + ptrs[seg]);
        const int code = (int)codes[seg];
        if (TO_FLAT)
            ft_store(flat, f, flat_code, ft_load(leaf, k, code));
        else
            ft_store(leaf, k, code, ft_load(flat, f, flat_code));
    }
};

template <bool TO_FLAT>
__device__ void ft_pack_run(const ft_i64 *table, ft_i64 n, ft_i64 nchunks, ft_i64 chunk,
                            ft_i64 base, void *flat, int flat_code)
{
    const ft_copy<TO_FLAT> copy = {table, table + 2 * n + 1, base, flat, flat_code};
    ft_pack_walk(table, n, nchunks, chunk, blockIdx.x, gridDim.x, threadIdx.x, blockDim.x, copy);
}

/* flat[starts[j] + k] = segments[j][k], cast to flat's dtype (segment j at base + ptrs[j]) */
extern "C" __global__ void ft_pack(const ft_i64 *table, ft_i64 n, ft_i64 nchunks, ft_i64 chunk,
                                   ft_i64 base, void *flat, int flat_code)
{
    ft_pack_run<true>(table, n, nchunks, chunk, base, flat, flat_code);
}

/* segments[j][k] = flat[starts[j] + k], cast to each segment's dtype */
extern "C" __global__ void ft_scatter(const ft_i64 *table, ft_i64 n, ft_i64 nchunks,
                                      ft_i64 chunk, ft_i64 base, void *flat, int flat_code)
{
    ft_pack_run<false>(table, n, nchunks, chunk, base, flat, flat_code);
}
