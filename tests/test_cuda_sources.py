"""The CUDA sources of fluxtree.cuda, checked without a GPU where possible.

Without a GPU: the sources include nothing NVRTC lacks; with ``nvcc`` on PATH every file
compiles (to PTX, then SASS through ptxas) and defines every kernel the loader names; the
``__host__ __device__`` parts of common.cuh (activations and their derivatives, the index walk
of the pack kernels, the channel iterator) are compiled for the CPU and checked against the C
kernels and direct arithmetic.  On a GPU (tests marked ``gpu``): every kernel against NumPy.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

from fluxtree import cuda
from fluxtree._kernels import _batchnorm, _dense

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
ARCH = "sm_80"
SOURCES = sorted(p.name for p in cuda.SOURCE_DIR.glob("*.cu"))
ACT_CODES = range(10)          # 0-8 and an unknown code (the identity)


def test_every_source_file_is_loaded():
    assert set(cuda.KERNELS.values()) == set(SOURCES)


@pytest.mark.parametrize("name", [*SOURCES, "common.cuh"])
def test_sources_include_only_common_cuh(name):
    """NVRTC has no host headers: a source may include common.cuh and nothing else."""
    text = (cuda.SOURCE_DIR / name).read_text()
    includes = re.findall(r"^\s*#\s*include\s*(\S+)", text, flags=re.MULTILINE)
    assert includes == ([] if name == "common.cuh" else ['"common.cuh"'])


HOST_NAMES = r"\b(NULL|INFINITY|NAN|HUGE_VALF?|printf|malloc|free|assert|size_t|u?int\d+_t|std::)"


@pytest.mark.parametrize("name", [*SOURCES, "common.cuh"])
def test_sources_use_no_names_from_host_headers(name):
    """NVRTC defines none of these (they come from stddef.h, math.h, stdint.h, ...)."""
    code = re.sub(r"/\*.*?\*/", "", (cuda.SOURCE_DIR / name).read_text(), flags=re.DOTALL)
    assert re.findall(HOST_NAMES, code) == []


def test_source_inlines_the_header():
    text = cuda.source("pack.cu")
    assert "#include" not in text
    assert "ft_find_segment" in text and "ft_pack(" in text


def test_unknown_kernel_is_a_value_error():
    with pytest.raises(ValueError, match="Unknown CUDA kernel 'ft_nope'"):
        cuda.kernel("ft_nope")


# ----------------------------------------------------------------------------- nvcc


def _nvcc(*args, cwd):
    run = subprocess.run([NVCC, *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.fixture(scope="module")
def ptx_dir(tmp_path_factory):
    """Every source as NVRTC sees it (cuda.source), compiled to PTX and through ptxas, one
    file at a time; warnings fail the test."""
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    out = tmp_path_factory.mktemp("ptx")
    for name in SOURCES:
        (out / name).write_text(cuda.source(name))
        ptx = name.replace(".cu", ".ptx")
        run = _nvcc(f"-arch={ARCH}", "-std=c++17", "--ptx", "-Werror", "all-warnings",
                    "-o", ptx, name, cwd=out)
        assert run.stderr.strip() == ""
        _nvcc(f"-arch={ARCH}", "--cubin", "-o", name.replace(".cu", ".cubin"), ptx, cwd=out)
    return out


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("name", SOURCES)
def test_compiles_and_defines_its_kernels(ptx_dir, name):
    ptx = (ptx_dir / name.replace(".cu", ".ptx")).read_text()
    entries = set(re.findall(r"^\.visible \.entry (\w+)\(", ptx, flags=re.MULTILINE))
    expected = {k for k, f in cuda.KERNELS.items() if f == name}
    assert entries == expected


HOST_DRIVER = r"""
#include <cstdio>
#include "common.cuh"

/* Records the visits of ft_pack_walk: counts per flat position, and checks seg and k. */
struct recorder {
    const ft_i64 *offsets, *starts;
    ft_i64 n;
    int *hits;
    int *bad;
    void operator()(ft_i64 seg, ft_i64 k, ft_i64 f) const
    {
        if (seg < 0 || seg >= n || k < 0 || k >= offsets[seg + 1] - offsets[seg]
            || f != starts[seg] + k)
            (*bad)++;
        else
            hits[f]++;
    }
};

static int act_table(void)
{
    static const double zs[] = {-800.0, -120.0, -40.0, -30.5, -29.5, -20.0, -5.0, -1.0, -0.3,
                                -1e-3, -1e-12, 0.0, 1e-12, 1e-3, 0.3, 1.0, 5.0, 20.0, 29.5,
                                30.5, 40.0, 120.0, 800.0, NAN, INFINITY, -INFINITY};
    for (int code = 0; code < 10; code++)
        for (unsigned i = 0; i < sizeof(zs) / sizeof(zs[0]); i++) {
            const double z = zs[i];
            const float zf = (float)z;
            const double y = ft_act<double>(code, z);
            const float yf = ft_act<float>(code, zf);
            printf("%d %.17g %.17g %.17g %.17g %.9g %.9g %.9g\n", code, z, y,
                   ft_act_d1<double>(code, z, y), ft_act_d2<double>(code, z, y), yf,
                   ft_act_d1<float>(code, zf, yf), ft_act_d2<float>(code, zf, yf));
        }
    return 0;
}

static int walk(void)
{
    ft_i64 len, n, nchunks, chunk, ntable, length, nb, nt;
    if (scanf("%lld %lld %lld %lld %lld", &n, &nchunks, &chunk, &ntable, &length) != 5)
        return 2;
    ft_i64 *table = new ft_i64[ntable];
    for (ft_i64 j = 0; j < ntable; j++)
        if (scanf("%lld", &table[j]) != 1)
            return 2;
    if (scanf("%lld %lld", &nb, &nt) != 2)
        return 2;
    len = length;
    int *hits = new int[len + 1]();
    int bad = 0;
    const recorder rec = {table + n, table + 3 * n + 1, n, hits, &bad};
    for (ft_i64 b = 0; b < nb; b++)
        for (ft_i64 t = 0; t < nt; t++)
            ft_pack_walk(table, n, nchunks, chunk, b, nb, t, nt, rec);
    printf("bad %d\n", bad);
    for (ft_i64 f = 0; f < len; f++)
        printf("%d\n", hits[f]);
    return 0;
}

static int iterate(void)
{
    /* ft_channel_iter against (i / L) % C for assorted shapes, strides and starts */
    int bad = 0;
    const ft_i64 Cs[] = {1, 2, 3, 7, 32, 33, 1000}, Ls[] = {1, 2, 5, 64, 257};
    const ft_i64 strides[] = {1, 3, 256, 1000, 65536 + 7, 32 * 132 * 256};
    for (ft_i64 C : Cs)
        for (ft_i64 L : Ls)
            for (ft_i64 s : strides)
                for (ft_i64 i0 = 0; i0 < 300; i0 += 37) {
                    ft_channel_iter it(i0, s, C, L);
                    for (ft_i64 i = i0, step = 0; step < 200; i += s, step++, it.advance())
                        bad += it.c != (i / L) % C;
                }
    printf("bad %d\n", bad);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    switch (argv[1][0]) {
    case 'a': return act_table();
    case 'w': return walk();
    case 'i': return iterate();
    }
    return 2;
}
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """common.cuh compiled for the CPU with nvcc, behind a small driver."""
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    out = tmp_path_factory.mktemp("host")
    (out / "driver.cu").write_text(HOST_DRIVER)
    _nvcc(f"-arch={ARCH}", "-std=c++17", "-O2", f"-I{cuda.SOURCE_DIR}", "-o", "driver",
          "driver.cu", cwd=out)

    def run(mode, stdin=""):
        res = subprocess.run([str(out / "driver"), mode], input=stdin, capture_output=True,
                             text=True, check=False)
        assert res.returncode == 0, res.stderr
        return res.stdout

    return run


@pytest.fixture(scope="module")
def act_table(host):
    rows = np.array([[float(v) for v in line.split()] for line in host("a").splitlines()])
    return {
        "code": rows[:, 0].astype(int), "z": rows[:, 1],
        "y": rows[:, 2], "d1": rows[:, 3], "d2": rows[:, 4],
        "yf": rows[:, 5], "d1f": rows[:, 6], "d2f": rows[:, 7],
    }


def _cpu(code, zs, **kw):
    return np.array([_dense.act_scalar(int(code), float(z), **kw) for z in zs])


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("code", ACT_CODES)
def test_activations_match_the_cpu_kernels(act_table, code):
    """Values everywhere (NaN propagates, infinities go to the limits); derivatives at
    finite points, evaluated from (z, y) here and from z on the CPU: equal up to rounding."""
    sel = act_table["code"] == code
    z = act_table["z"][sel]
    np.testing.assert_allclose(act_table["y"][sel], _cpu(code, z), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(act_table["yf"][sel], _cpu(code, z, single=True), rtol=1e-6,
                               atol=1e-37)
    sel &= np.isfinite(act_table["z"])
    z = act_table["z"][sel]
    np.testing.assert_allclose(act_table["d1"][sel], _cpu(code, z, derivative=True),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(act_table["d1f"][sel], act_table["d1"][sel], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("code", ACT_CODES)
def test_second_derivatives_match_central_differences(act_table, code):
    # finite points whose difference interval misses the kinks of relu, leakyrelu and elu at 0
    z = act_table["z"]
    h = 1e-5 * np.maximum(1.0, np.abs(z))
    sel = (act_table["code"] == code) & np.isfinite(z)
    if code in (1, 6, 7):
        sel &= np.abs(z) > h
    z, h = z[sel], h[sel]
    fd = (_cpu(code, z + h, derivative=True) - _cpu(code, z - h, derivative=True)) / (2 * h)
    np.testing.assert_allclose(act_table["d2"][sel], fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(act_table["d2f"][sel], act_table["d2"][sel], rtol=1e-5,
                               atol=1e-6)


def _walk(host, sizes, starts, length, nb, nt):
    sizes = np.asarray(sizes, np.int64)
    n = len(sizes)
    table, chunk, nchunks = cuda.pack_table(np.zeros(n, np.int64), sizes,
                                            np.ones(n, np.int64), np.asarray(starts, np.int64))
    stdin = f"{n} {nchunks} {chunk} {table.size} {length}\n" + " ".join(map(str, table)) \
        + f"\n{nb} {nt}\n"
    lines = host("w", stdin).splitlines()
    assert lines[0] == "bad 0"
    return np.array([int(v) for v in lines[1:]])


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("case", ["small", "large", "empty-segments", "gaps"])
def test_pack_walk_visits_every_element_once(host, case):
    rng = np.random.default_rng(7)
    if case == "small":           # many tiny segments, several per chunk
        sizes = rng.integers(1, 9, size=1000)
    elif case == "large":         # few segments, several chunks each
        sizes = [5000, 1, 7000, 2047, 2049]
    elif case == "empty-segments":
        sizes = [0, 3, 0, 0, 2500, 0, 1, 0]
    else:
        sizes = rng.integers(0, 50, size=200)
    sizes = np.asarray(sizes)
    if case == "gaps":            # segments placed apart, in reverse order
        ends = np.cumsum(sizes[::-1] + 3)
        starts = (ends - sizes[::-1])[::-1]
        length = int(ends[-1])
    else:
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        length = int(sizes.sum())
    covered = np.zeros(length, int)
    for s, n in zip(starts, sizes):
        covered[s:s + n] = 1
    for nb, nt in [(1, 256), (3, 7), (64, 32)]:   # grid-stride over chunks, odd thread counts
        np.testing.assert_array_equal(_walk(host, sizes, starts, length, nb, nt), covered)


@pytest.mark.slow
@needs_nvcc
def test_channel_iterator_tracks_the_channel(host):
    assert host("i").strip() == "bad 0"


def test_pack_table_layout():
    table, chunk, nchunks = cuda.pack_table(np.array([11, 22, 33]), np.array([2, 0, 3]),
                                            np.array([1, 2, 4]), np.array([10, 0, 12]))
    assert (chunk, nchunks) == (2048, 1)
    np.testing.assert_array_equal(table, [11, 22, 33, 0, 2, 2, 5, 1, 2, 4, 10, 0, 12, 0, 2])


def test_pack_table_chunk_map_bounds_the_search():
    sizes = np.array([3000, 0, 1, 9000, 500])
    table, chunk, nchunks = cuda.pack_table(np.zeros(5, np.int64), sizes, np.zeros(5, np.int64),
                                            np.zeros(5, np.int64))
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    first = table[4 * 5 + 1:]
    assert len(first) == nchunks + 1 == -(-sizes.sum() // chunk) + 1
    for i in range(0, int(sizes.sum()), 97):
        seg = np.searchsorted(offsets[:5], i, side="right") - 1
        c = i // chunk
        assert first[c] <= seg <= first[c + 1]


# ----------------------------------------------------------------------------- on a GPU

gpu = pytest.mark.gpu
DTYPES = ["float16", "float32", "float64", "complex64", "complex128"]


def _cast(x, dtype):
    """NumPy's cast, complex into real keeping the real part."""
    x = np.asarray(x)
    if x.dtype.kind == "c" and np.dtype(dtype).kind != "c":
        x = x.real
    return x.astype(dtype)


def _random(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


@gpu
@pytest.mark.parametrize("count", [1, 7, 1000])
def test_gpu_pack_and_scatter_against_numpy(count):
    import cupy as cp
    rng = np.random.default_rng(count)
    shapes = [tuple(rng.integers(0, 5, size=rng.integers(0, 3))) for _ in range(count)]
    dtypes = [DTYPES[i] for i in rng.integers(0, len(DTYPES), size=count)]
    host = [_random(rng, s, d) for s, d in zip(shapes, dtypes)]
    dev = [cp.asarray(h) for h in host]
    sizes = [h.size for h in host]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    out_dtype = np.result_type(*dtypes)
    flat = cuda.pack(dev, offsets, out_dtype)
    expect = np.concatenate([_cast(h.ravel(), out_dtype) for h in host]) if host else []
    np.testing.assert_array_equal(cp.asnumpy(flat), expect)
    for vdtype in DTYPES:
        v = _random(rng, offsets[-1], vdtype)
        outs = cuda.new_leaves(shapes, [np.dtype(d) for d in dtypes])
        cuda.scatter(cp.asarray(v), offsets[:-1], outs)
        for o, s, d, a, b in zip(outs, shapes, dtypes, offsets[:-1], offsets[1:]):
            np.testing.assert_array_equal(cp.asnumpy(o), _cast(v[a:b], d).reshape(s))


@gpu
def test_gpu_pack_plan_with_gaps_and_one_launch():
    import cupy as cp
    arrays = [cp.arange(3, dtype=cp.float32), cp.ones((2, 2), cp.float64)]
    plan = cuda.PackPlan(arrays, [5, 0], 9)
    out = cp.full(9, -1.0)
    plan.pack(out)
    np.testing.assert_array_equal(cp.asnumpy(out), [1, 1, 1, 1, -1, 0, 1, 2, -1])
    with pytest.raises(ValueError, match="does not fit"):
        cuda.PackPlan(arrays, [7, 0], 9)
    with pytest.raises(ValueError, match="C-contiguous"):
        cuda.PackPlan([cp.ones((3, 3))[:, 0]], [0], 3)


def test_block_layout_aligns_every_array():
    offsets, nbytes = cuda._block_layout([(2, 3), (), (0,), (5,)],
                                         [np.dtype("f4"), np.dtype("f8"), np.dtype("c16"),
                                          np.dtype("f2")])
    np.testing.assert_array_equal(offsets, [0, 256, 512, 512])
    assert nbytes == 768


@gpu
def test_gpu_plan_for_new_leaves_serves_every_block():
    import cupy as cp
    shapes, dtypes = [(2, 3), (), (4,)], [np.dtype("f4"), np.dtype("f8"), np.dtype("c8")]
    plan = cuda.PackPlan.for_new_leaves(shapes, dtypes, [0, 6, 7], 11)
    blocks = []
    for scale in (1.0, -2.0):
        v = cp.arange(11.0) * scale
        block, leaves = plan.new_leaves()
        blocks.append(block)
        plan.scatter(v, block)
        host = cp.asnumpy(v)
        np.testing.assert_array_equal(cp.asnumpy(leaves[0]), host[:6].reshape(2, 3))
        np.testing.assert_array_equal(cp.asnumpy(leaves[1]), host[6])
        np.testing.assert_array_equal(cp.asnumpy(leaves[2]), host[7:].astype(np.complex64))
        out = cp.zeros(11)
        np.testing.assert_array_equal(cp.asnumpy(plan.pack(out, block)), host)
    assert blocks[0].data.ptr != blocks[1].data.ptr
    with pytest.raises(ValueError, match="needs the block"):
        plan.scatter(cp.zeros(11))
    with pytest.raises(ValueError, match="needs a plan made by"):
        cuda.PackPlan([cp.zeros(2)], [0], 2).new_leaves()


def _np_act(code, z, order=0):
    z64 = np.asarray(z, np.float64)
    if order == 0:
        return np.vectorize(lambda v: _dense.act_scalar(code, v))(z64)
    if order == 1:
        return np.vectorize(lambda v: _dense.act_scalar(code, v, derivative=True))(z64)
    h = 1e-5 * np.maximum(1.0, np.abs(z64))
    return (_np_act(code, z64 + h, 1) - _np_act(code, z64 - h, 1)) / (2 * h)


TOL = {"float32": {"rtol": 2e-4, "atol": 2e-5}, "float64": {"rtol": 1e-10, "atol": 1e-12}}


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("code", range(9))
def test_gpu_dense_passes_against_numpy(dtype, code):
    import cupy as cp
    rng = np.random.default_rng(code)
    B, nin, nout, k = 37, 5, 41, 3
    x, W, b = (rng.standard_normal(s).astype(dtype) for s in ((B, nin), (nout, nin), (nout,)))
    xd, Wd, bd = cp.asarray(x), cp.asarray(W), cp.asarray(b)
    z = x.astype(np.float64) @ W.T.astype(np.float64) + b
    y = _np_act(code, z)
    out, pre = cp.empty((B, nout), dtype), cp.empty((B, nout), dtype)
    cuda.dense_forward(xd, Wd, bd, code, out, pre)
    np.testing.assert_allclose(cp.asnumpy(pre), z, **TOL[dtype])
    np.testing.assert_allclose(cp.asnumpy(out), y, **TOL[dtype])
    cpu_out = np.empty((B, nout), dtype)
    _dense.dense_forward(x, W, b, code, cpu_out)
    np.testing.assert_allclose(cp.asnumpy(out), cpu_out, **TOL[dtype])

    dy = rng.standard_normal((B, nout)).astype(dtype)
    delta = dy * _np_act(code, z, 1)
    d_delta, dx, dW, db = (cp.empty(s, dtype) for s in ((B, nout), (B, nin), (nout, nin), nout))
    cuda.dense_backward(xd, Wd, pre, out, cp.asarray(dy), code, d_delta, dx, dW, db)
    np.testing.assert_allclose(cp.asnumpy(d_delta), delta, **TOL[dtype])
    np.testing.assert_allclose(cp.asnumpy(dx), delta @ W, **TOL[dtype])
    np.testing.assert_allclose(cp.asnumpy(dW), delta.T @ x, **TOL[dtype])
    np.testing.assert_allclose(cp.asnumpy(db), delta.sum(0), **TOL[dtype])

    tx, tW, tb = (rng.standard_normal(s).astype(dtype)
                  for s in ((k, B, nin), (k, nout, nin), (k, nout)))
    tz = tx @ W.T + x @ tW.transpose(0, 2, 1) + tb[:, None, :]
    ty = _np_act(code, z, 1) * tz
    d_tz, d_ty = cp.empty((k, B, nout), dtype), cp.empty((k, B, nout), dtype)
    cuda.dense_tangent(xd, Wd, pre, out, code, cp.asarray(tx), cp.asarray(tW), cp.asarray(tb),
                       d_tz, d_ty)
    np.testing.assert_allclose(cp.asnumpy(d_tz), tz, **TOL[dtype])
    np.testing.assert_allclose(cp.asnumpy(d_ty), ty, **TOL[dtype])

    tdy = rng.standard_normal((k, B, nout)).astype(dtype)
    rdelta = tdy * _np_act(code, z, 1) + dy * _np_act(code, z, 2) * tz
    r, tdx, tdW, tdb = (cp.empty(s, dtype)
                        for s in ((k, B, nout), (k, B, nin), (k, nout, nin), (k, nout)))
    cuda.dense_tangent_backward(xd, Wd, pre, out, code, d_delta, cp.asarray(dy),
                                cp.asarray(tx), cp.asarray(tW), d_tz, cp.asarray(tdy), r, tdx,
                                tdW, tdb)
    # act'' of the reference by central differences
    tol = TOL[dtype] if dtype == "float32" else {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(cp.asnumpy(r), rdelta, **tol)
    np.testing.assert_allclose(cp.asnumpy(tdx), rdelta @ W + delta @ tW, **tol)
    np.testing.assert_allclose(cp.asnumpy(tdW),
                               rdelta.transpose(0, 2, 1) @ x + delta.T @ tx, **tol)
    np.testing.assert_allclose(cp.asnumpy(tdb), rdelta.sum(1), **tol)


def np_batchnorm(x, gamma, beta, mean, invstd, code):
    """y, u, xh of BatchNorm over (N, C, L) with the given statistics, in float64."""
    xh = (x - mean[:, None]) * invstd[:, None]
    u = xh * gamma[:, None] + beta[:, None]
    return _np_act(code, u), u, xh


def np_batchnorm_backward(x, dy, gamma, beta, mean, invstd, code, batch):
    """dx, dgamma, dbeta for cotangent blocks dy (K, N, C, L), in float64."""
    _, u, xh = np_batchnorm(x, gamma, beta, mean, invstd, code)
    g = dy * _np_act(code, u, 1)
    axes = (1, 3)
    db, dg = g.sum(axes), (g * xh).sum(axes)
    gs = (gamma * invstd)[:, None]
    dx = gs * g
    if batch:
        m = x.shape[0] * x.shape[2]
        dx = dx - gs / m * (db[:, None, :, None] + xh * dg[:, None, :, None])
    return dx, dg, db


def _stats(x, eps):
    mean = x.mean(axis=(0, 2))
    return mean, 1 / np.sqrt(x.var(axis=(0, 2)) + eps)


def test_numpy_batchnorm_backward_reference_matches_differences():
    """The reference of the GPU test below, checked here against central differences."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 5))
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    dy = rng.standard_normal((1, 4, 3, 5))
    eps, code = 1e-5, 3

    def loss(xv, g, bt):
        y = np_batchnorm(xv, g, bt, *_stats(xv, eps), code)[0]
        return float((y * dy[0]).sum())

    dx, dg, db = np_batchnorm_backward(x, dy, gamma, beta, *_stats(x, eps), code, True)
    h = 1e-6
    for arr, grad in ((x, dx[0]), (gamma, dg[0]), (beta, db[0])):
        for idx in [(0,), (1,), (2,)] if arr.ndim == 1 else [(0, 0, 0), (3, 2, 4), (1, 1, 2)]:
            e = np.zeros_like(arr)
            e[idx] = h
            args = [x, gamma, beta]
            which = 0 if arr is x else (1 if arr is gamma else 2)
            plus, minus = list(args), list(args)
            plus[which], minus[which] = arr + e, arr - e
            fd = (loss(*plus) - loss(*minus)) / (2 * h)
            assert abs(fd - grad[idx]) <= 1e-6 * max(1.0, abs(fd))


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(64, 5, 1), (3, 4, 300), (2, 40, 7)])
@pytest.mark.parametrize("code", [0, 2, 5])
def test_gpu_batchnorm_against_cpu_and_numpy(dtype, shape, code):
    import cupy as cp
    rng = np.random.default_rng(1)
    C = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    eps, mom = 1e-5, 0.1
    for training in (True, False):
        rm, rv = rng.standard_normal(C).astype(dtype), rng.random(C).astype(dtype) + 0.5
        cpu_rm, cpu_rv = rm.copy(), rv.copy()
        cpu_out = np.empty_like(x)
        _batchnorm.batchnorm_forward(x, gamma, beta, cpu_rm, cpu_rv, eps, mom, training, code,
                                     cpu_out)
        d_rm, d_rv = cp.asarray(rm), cp.asarray(rv)
        out = cp.empty(shape, dtype)
        mean, invstd = cp.empty(C), cp.empty(C)
        cuda.batchnorm_forward(cp.asarray(x), cp.asarray(gamma), cp.asarray(beta), d_rm, d_rv,
                               eps, mom, training, code, out, mean, invstd)
        np.testing.assert_allclose(cp.asnumpy(out), cpu_out, **TOL[dtype])
        np.testing.assert_allclose(cp.asnumpy(d_rm), cpu_rm, **TOL[dtype])
        np.testing.assert_allclose(cp.asnumpy(d_rv), cpu_rv, **TOL[dtype])

        x64 = x.astype(np.float64)
        m64, s64 = _stats(x64, eps) if training else (rm.astype(np.float64),
                                                      1 / np.sqrt(rv.astype(np.float64) + eps))
        np.testing.assert_allclose(cp.asnumpy(mean), m64, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(cp.asnumpy(invstd), s64, rtol=1e-10)

        K = 2
        dy = rng.standard_normal((K, *shape)).astype(dtype)
        dx, dg, db = np_batchnorm_backward(x64, dy, gamma.astype(np.float64),
                                           beta.astype(np.float64), m64, s64, code, training)
        d_dx, d_dg, d_db = cp.empty((K, *shape), dtype), cp.empty((K, C), dtype), \
            cp.empty((K, C), dtype)
        cuda.batchnorm_backward(cp.asarray(x), cp.asarray(dy), mean, invstd, cp.asarray(gamma),
                                cp.asarray(beta), code, training, d_dx, d_dg, d_db)
        tol = {"rtol": 1e-3, "atol": 1e-3} if dtype == "float32" else TOL[dtype]
        np.testing.assert_allclose(cp.asnumpy(d_dx), dx, **tol)
        np.testing.assert_allclose(cp.asnumpy(d_dg), dg, **tol)
        np.testing.assert_allclose(cp.asnumpy(d_db), db, **tol)


@gpu
@pytest.mark.parametrize("batch", [True, False])
def test_gpu_batchnorm_tangent_against_differences(batch):
    import cupy as cp
    rng = np.random.default_rng(5)
    shape, C, eps, code, K = (6, 3, 4), 3, 1e-5, 5, 2
    x = rng.standard_normal(shape)
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    tx, tg, tb = rng.standard_normal((K, *shape)), rng.standard_normal((K, C)), \
        rng.standard_normal((K, C))
    fixed = _stats(x, eps)

    def f(xv, g, bt):
        return np_batchnorm(xv, g, bt, *(_stats(xv, eps) if batch else fixed), code)[0]

    h = 1e-6
    expect = np.stack([(f(x + h * tx[j], gamma + h * tg[j], beta + h * tb[j])
                        - f(x - h * tx[j], gamma - h * tg[j], beta - h * tb[j])) / (2 * h)
                       for j in range(K)])
    ty = cp.empty((K, *shape))
    cuda.batchnorm_tangent(cp.asarray(x), cp.asarray(fixed[0]), cp.asarray(fixed[1]),
                           cp.asarray(gamma), cp.asarray(beta), code, batch, cp.asarray(tx),
                           cp.asarray(tg), cp.asarray(tb), ty)
    np.testing.assert_allclose(cp.asnumpy(ty), expect, rtol=1e-6, atol=1e-8)
