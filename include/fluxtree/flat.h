/*
 * fluxtree/flat.h -- plain C loops behind fluxtree._kernels._flat.
 *
 * Copies and casts between the five floating dtypes fluxtree flattens
 * (float16, float32, float64, complex64, complex128), from a strided or dense
 * source into a dense destination, either assigning (dst := cast(src)) or
 * accumulating (dst += cast(src)).  No NumPy or Python headers: the .pyx
 * extracts pointers, shapes and strides and hands them over as `ft_leaf`s.
 *
 * Value rules (the same as ndarray.astype / `out += a.astype(out.dtype)`):
 *   - real -> complex sets the imaginary part to 0 (and leaves it alone when
 *     accumulating); complex -> real keeps the real part;
 *   - float16 is converted in software, rounding to nearest even directly from
 *     float32/float64 (no double rounding), NaN and inf preserved;
 *   - float16 accumulation rounds the float32 sum, as NumPy's half addition.
 * Native byte order and element-aligned data are assumed.
 */
#ifndef FLUXTREE_FLAT_H
#define FLUXTREE_FLAT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
static inline int ft_max_threads(void) { return omp_get_max_threads(); }
#else
static inline int ft_max_threads(void) { return 1; }
#endif

typedef intptr_t ft_intp; /* same width as npy_intp */

/* dtype codes (not NumPy's type numbers) */
enum { FT_F16 = 0, FT_F32 = 1, FT_F64 = 2, FT_C64 = 3, FT_C128 = 4, FT_NTYPES = 5 };
#define FT_MAXDIMS 64                        /* NPY_MAXDIMS of NumPy 2 */
#define FT_PARALLEL_MIN_BYTES ((ft_intp)1 << 20)

static const ft_intp ft_itemsize[FT_NTYPES] = {2, 4, 8, 8, 16};

/* ------------------------------------------------------------------ float16 */

static inline float ft_h2f(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, bits;
    float f;
    if (e == 0) {                                   /* zero / subnormal: m * 2^-24, exact */
        f = (float)m * 5.9604644775390625e-08f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    } else if (e == 31) {                           /* inf / nan, payload kept */
        bits = sign | 0x7f800000u | (m << 13);
    } else {
        bits = sign | ((e + 112u) << 23) | (m << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

/* round-to-nearest-even from double; float -> double is exact, so this also
 * serves float32 sources without double rounding */
static inline uint16_t ft_d2h(double x)
{
    uint64_t b, sig, rem, half;
    uint16_t sign, val;
    int e, s;
    memcpy(&b, &x, 8);
    sign = (uint16_t)((b >> 48) & 0x8000u);
    b &= 0x7fffffffffffffffull;
    if (b >= 0x7ff0000000000000ull) {               /* inf / nan */
        if (b == 0x7ff0000000000000ull)
            return sign | 0x7c00u;
        return sign | 0x7e00u | (uint16_t)((b >> 42) & 0x1ffu);
    }
    e = (int)(b >> 52) - 1023;
    if (e >= 16)
        return sign | 0x7c00u;                      /* >= 2^16 always overflows */
    sig = b & 0x000fffffffffffffull;
    if (e >= -14) {                                 /* normal range; carry may give inf */
        val = (uint16_t)(((uint32_t)(e + 15) << 10) | (uint32_t)(sig >> 42));
        rem = sig & ((1ull << 42) - 1);
        half = 1ull << 41;
    } else {                                        /* subnormal half: units of 2^-24 */
        s = 28 - e;                                 /* >= 43 */
        if (s > 53)
            return sign;                            /* < 2^-25: rounds to zero */
        sig |= 1ull << 52;
        val = (uint16_t)(sig >> s);
        rem = sig & ((1ull << s) - 1);
        half = 1ull << (s - 1);
    }
    if (rem > half || (rem == half && (val & 1u)))
        val++;
    return sign | val;
}

static inline uint16_t ft_hadd(uint16_t a, uint16_t b)
{
    return ft_d2h((double)(ft_h2f(a) + ft_h2f(b)));
}

/* ------------------------------------------------------ typed cast loops */

/* dst[i] (:= or +=) cast(*(src + i*ss)), i < n; dst dense, ss in bytes */
typedef void (*ft_loop)(const char *src, ft_intp ss, char *dst, ft_intp n);

/* component conversions: H = float16 bits, F = float, D = double */
#define FT_CV_H_H(x) (x)
#define FT_CV_H_F(x) ft_h2f(x)
#define FT_CV_H_D(x) ((double)ft_h2f(x))
#define FT_CV_F_H(x) ft_d2h((double)(x))
#define FT_CV_F_F(x) (x)
#define FT_CV_F_D(x) ((double)(x))
#define FT_CV_D_H(x) ft_d2h(x)
#define FT_CV_D_F(x) ((float)(x))
#define FT_CV_D_D(x) (x)

#define FT_ST_SET(l, v) ((l) = (v))
#define FT_ST_ADD(l, v) ((l) += (v))
#define FT_ST_HADD(l, v) ((l) = ft_hadd((l), (v)))

/* one loop body; SN/DN = 1 (real) or 2 (complex) components per element */
#define FT_BODY(S, DN, SN, CONV, STORE, ADD)                                  \
    do {                                                                      \
        STORE(d[i * DN], CONV((S)[0]));                                       \
        if (DN == 2 && SN == 2)                                               \
            STORE(d[i * DN + 1], CONV((S)[SN - 1]));                          \
        else if (DN == 2 && !(ADD))                                           \
            d[i * DN + 1] = 0;                                                \
    } while (0)

#define FT_LOOP(NAME, ST, SN, DT, DN, CONV, STORE, ADD)                       \
    static void NAME(const char *src, ft_intp ss, char *dst, ft_intp n)       \
    {                                                                         \
        DT *d = (DT *)dst;                                                    \
        ft_intp i;                                                            \
        if (ss == (ft_intp)(SN * sizeof(ST))) {                               \
            const ST *s = (const ST *)src;                                    \
            for (i = 0; i < n; i++)                                           \
                FT_BODY(s + i * SN, DN, SN, CONV, STORE, ADD);                \
        } else {                                                              \
            for (i = 0; i < n; i++, src += ss)                                \
                FT_BODY((const ST *)src, DN, SN, CONV, STORE, ADD);           \
        }                                                                     \
    }

/* PAIR(src code, src comp type, src comps, src comp letter, dst ...):
 * defines ft_set_<s>_<d> and ft_add_<s>_<d> */
#define FT_PAIR(SC, ST, SN, SL, DC, DT, DN, DL, ADDST)                        \
    FT_LOOP(ft_set_##SC##_##DC, ST, SN, DT, DN, FT_CV_##SL##_##DL, FT_ST_SET, 0) \
    FT_LOOP(ft_add_##SC##_##DC, ST, SN, DT, DN, FT_CV_##SL##_##DL, ADDST, 1)

#define FT_ROW(SC, ST, SN, SL)                                                \
    FT_PAIR(SC, ST, SN, SL, h, uint16_t, 1, H, FT_ST_HADD)                   \
    FT_PAIR(SC, ST, SN, SL, f, float, 1, F, FT_ST_ADD)                       \
    FT_PAIR(SC, ST, SN, SL, d, double, 1, D, FT_ST_ADD)                      \
    FT_PAIR(SC, ST, SN, SL, cf, float, 2, F, FT_ST_ADD)                      \
    FT_PAIR(SC, ST, SN, SL, cd, double, 2, D, FT_ST_ADD)

FT_ROW(h, uint16_t, 1, H)
FT_ROW(f, float, 1, F)
FT_ROW(d, double, 1, D)
FT_ROW(cf, float, 2, F)
FT_ROW(cd, double, 2, D)

#define FT_TROW(K, SC)                                                        \
    {ft_##K##_##SC##_h, ft_##K##_##SC##_f, ft_##K##_##SC##_d,                 \
     ft_##K##_##SC##_cf, ft_##K##_##SC##_cd}
#define FT_TABLE(K)                                                           \
    {FT_TROW(K, h), FT_TROW(K, f), FT_TROW(K, d), FT_TROW(K, cf), FT_TROW(K, cd)}

/* ft_loops[add][src code][dst code] */
static const ft_loop ft_loops[2][FT_NTYPES][FT_NTYPES] = {FT_TABLE(set), FT_TABLE(add)};

/* ------------------------------------------------------------ leaf copies */

/* One array taking part in a call: `n` elements of a source in logical C
 * order go to a dense destination.  `shape == NULL` means the source is a
 * dense run; otherwise it is walked through shape/strides (bytes).  `pos` is
 * where element 0 sits on the axis along which the work is split between
 * threads (the offset in `out` for gather, the running total for scatter). */
typedef struct {
    const char *src;
    char *dst;
    const ft_intp *shape;
    const ft_intp *strides;
    ft_intp n;
    ft_intp pos;
    int ndim;
    int stype;
    int dtype;
} ft_leaf;

static inline void ft_move(ft_loop f, int plain, const char *src, ft_intp ss,
                           ft_intp ssize, char *dst, ft_intp n)
{
    if (plain && ss == ssize)
        memcpy(dst, src, (size_t)(n * ssize));
    else
        f(src, ss, dst, n);
}

/* elements [start, start + count) of leaf L (0 <= start, start + count <= n) */
static void ft_copy_leaf(const ft_leaf *L, ft_intp start, ft_intp count, int add)
{
    ft_intp shp[FT_MAXDIMS], str[FT_MAXDIMS], idx[FT_MAXDIMS];
    ft_intp ssize = ft_itemsize[L->stype], dsize = ft_itemsize[L->dtype];
    ft_intp inner, istr, col, r, m;
    ft_loop f = ft_loops[add][L->stype][L->dtype];
    int plain = !add && L->stype == L->dtype;
    char *dst = L->dst + start * dsize;
    const char *row;
    int nd = 0, k;

    if (count <= 0)
        return;
    if (L->shape == NULL) {
        ft_move(f, plain, L->src + start * ssize, ssize, ssize, dst, count);
        return;
    }
    /* drop unit axes, merge axes that are contiguous with the next one */
    for (k = 0; k < L->ndim; k++) {
        if (L->shape[k] == 1)
            continue;
        if (nd > 0 && str[nd - 1] == L->shape[k] * L->strides[k]) {
            shp[nd - 1] *= L->shape[k];
            str[nd - 1] = L->strides[k];
        } else {
            shp[nd] = L->shape[k];
            str[nd] = L->strides[k];
            nd++;
        }
    }
    if (nd == 0) {                                  /* a single element */
        ft_move(f, plain, L->src, ssize, ssize, dst, 1);
        return;
    }
    inner = shp[nd - 1];
    istr = str[nd - 1];
    /* odometer: multi-index of `start`, then row by row */
    r = start;
    col = r % inner;
    r /= inner;
    row = L->src;
    for (k = nd - 2; k >= 0; k--) {
        idx[k] = r % shp[k];
        r /= shp[k];
        row += idx[k] * str[k];
    }
    for (;;) {
        m = inner - col;
        if (m > count)
            m = count;
        ft_move(f, plain, row + col * istr, istr, ssize, dst, m);
        dst += m * dsize;
        count -= m;
        if (count == 0)
            return;
        col = 0;
        for (k = nd - 2; k >= 0; k--) {
            row += str[k];
            if (++idx[k] < shp[k])
                break;
            row -= shp[k] * str[k];
            idx[k] = 0;
        }
    }
}

/* Part `tid` of `nt` equal slices of the axis [lo, hi): every leaf's
 * intersection with the slice, in list order.  Slices never share a
 * destination element, so each element sees the same sequence of writes
 * (and the same summation order) as a serial run. */
static void ft_run_part(const ft_leaf *L, ft_intp nleaves, ft_intp lo, ft_intp hi,
                        int tid, int nt, int add)
{
    ft_intp span = hi - lo, q = span / nt, r = span % nt, a, b, j;
    ft_intp plo = lo + q * tid + (tid < r ? tid : r);
    ft_intp phi = plo + q + (tid < r ? 1 : 0);
    for (j = 0; j < nleaves; j++) {
        a = L[j].pos > plo ? L[j].pos : plo;
        b = L[j].pos + L[j].n < phi ? L[j].pos + L[j].n : phi;
        if (a < b)
            ft_copy_leaf(&L[j], a - L[j].pos, b - a, add);
    }
}

#endif /* FLUXTREE_FLAT_H */
