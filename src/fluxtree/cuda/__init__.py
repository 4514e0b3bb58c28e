"""CUDA kernels for CuPy arrays: packing, Dense and BatchNorm, compiled at first use.

The sources are the ``*.cu`` files next to this module (with ``common.cuh``, which each one
includes); no compiled GPU code ships with the package.  The first call that needs a kernel
compiles its file with NVRTC through ``cupy.RawModule`` (CuPy caches the result on disk), so
importing this module never touches CuPy or a GPU.

The functions take CuPy arrays and assume valid input, as the CPU kernels in
``fluxtree._kernels`` do: C-contiguous arrays of the shapes stated, one floating dtype
(float32 or float64) per call except where packing converts, outputs not overlapping inputs.
Their signatures mirror the CPU kernels', so a layer calls one or the other by the backend of
its input.  Matrix products go through cuBLAS (``cupy.cublas.gemm``, ``cupy.matmul``); the
kernels do the rest, with per-column and per-channel sums accumulated in double and reduced
in a fixed order (results do not depend on scheduling).

``KERNELS`` maps every kernel name to its source file; ``source(filename)`` is the program
text handed to NVRTC (``common.cuh`` inlined, so CuPy's cache key covers it).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["KERNELS", "SOURCE_DIR", "PackPlan", "batchnorm_backward", "batchnorm_forward",
           "batchnorm_tangent", "dense_backward", "dense_forward", "dense_tangent",
           "dense_tangent_backward", "kernel", "new_leaves", "pack", "pack_table", "scatter", "source"]

SOURCE_DIR = Path(__file__).resolve().parent

_HEADER = "common.cuh"
_INCLUDE = f'#include "{_HEADER}"'


def _names(prefixes: Sequence[str], suffixes: Sequence[str] = ("_f", "_d")) -> list[str]:
    return [p + s for p in prefixes for s in suffixes]


#: kernel name -> the source file that defines it
KERNELS: dict[str, str] = {
    **{name: "pack.cu" for name in ("ft_pack", "ft_scatter")},
    **{name: "reduce.cu" for name in _names(["ft_sum_splits"])},
    **{name: "dense.cu" for name in _names(
        ["ft_dense_bias_act", "ft_dense_delta", "ft_dense_tangent", "ft_dense_rdelta"])},
    **{name: "batchnorm.cu" for name in _names(
        ["ft_bn_sums", "ft_bn_coefs", "ft_bn_apply", "ft_bn_grad_sums", "ft_bn_dx",
         "ft_bn_tangent_sums", "ft_bn_tangent"])},
}

#: dtype codes of the pack kernels (FT_DT_* in pack.cu)
_PACK_CODES = {np.dtype(t): code for code, t in enumerate(("f2", "f4", "f8", "c8", "c16"))}
#: kernel name suffix by data dtype
_SUFFIX = {np.dtype(np.float32): "_f", np.dtype(np.float64): "_d"}
#: activations whose second derivative is not identically zero (common.cuh)
_HAS_D2 = frozenset((2, 3, 4, 5, 6, 8))

_THREADS = 256
_RED_ROWS = 8                  # FT_RED_ROWS in common.cuh
_MIN_CHUNK = 2048              # elements per chunk of the pack kernels, at least
_MAX_CHUNKS = 8192             # chunks per pack, at most (the chunk map's length)
_MAX_GRID_YZ = 65535


def source(filename: str) -> str:
    """The program text of ``filename`` as NVRTC compiles it: the file with ``common.cuh``
    in place of its ``#include``."""
    text = (SOURCE_DIR / filename).read_text()
    if _INCLUDE in text:
        text = text.replace(_INCLUDE, (SOURCE_DIR / _HEADER).read_text(), 1)
    return text


def _cupy() -> Any:
    try:
        import cupy
    except ImportError as e:
        raise ImportError("fluxtree.cuda needs CuPy (pip install cupy-cuda13x).") from e
    return cupy


@functools.cache
def _module(filename: str) -> Any:
    return _cupy().RawModule(code=source(filename), options=("-std=c++17",))


@functools.cache
def kernel(name: str) -> Any:
    """The compiled kernel ``name`` (a ``cupy.RawKernel``), its file compiled on first use."""
    if name not in KERNELS:
        raise ValueError(f"Unknown CUDA kernel {name!r}; expected one of {sorted(KERNELS)}.")
    return _module(KERNELS[name]).get_function(name)


@functools.cache
def _sm_count(device_id: int) -> int:
    return int(_cupy().cuda.Device(device_id).attributes["MultiProcessorCount"])


def _sms() -> int:
    return _sm_count(_cupy().cuda.Device().id)


def _suffix(a: Any, what: str) -> str:
    sfx = _SUFFIX.get(np.dtype(a.dtype))
    if sfx is None:
        raise TypeError(f"Expected {what} of dtype float32 or float64, got {a.dtype}.")
    return sfx


def _blocks(n: int) -> int:
    """Blocks of _THREADS for a grid-stride loop over n elements."""
    return max(1, min(-(-n // _THREADS), 32 * _sms()))


def _check_blocks(k: int) -> None:
    if k > _MAX_GRID_YZ:
        raise ValueError(f"Expected at most {_MAX_GRID_YZ} tangent blocks per call, got {k}.")


def _sum_splits(partial: Any, n: int, splits: int, pstride: int, scale: float, out: Any) -> None:
    """out[j] := scale * sum_s partial[s * pstride + j] for j < n (out float32 or float64)."""
    kernel("ft_sum_splits" + _suffix(out, "out"))(
        (_blocks(n),), (_THREADS,),
        (partial, np.int64(n), np.int64(splits), np.int64(pstride), np.float64(scale), out))


# --------------------------------------------------------------------------- packing

def pack_table(ptrs: np.ndarray, sizes: np.ndarray, codes: np.ndarray,
               starts: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The int64 table of the pack kernels (its layout is described in pack.cu) for segments
    with the given data pointers, sizes, dtype codes and flat starts, with the chunk size and
    the number of chunks."""
    n = len(sizes)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    total = int(offsets[n])
    chunk = max(_MIN_CHUNK, -(-total // _MAX_CHUNKS))
    nchunks = -(-total // chunk)
    positions = np.minimum(np.arange(nchunks + 1, dtype=np.int64) * chunk, max(total - 1, 0))
    first = np.searchsorted(offsets[:n], positions, side="right") - 1
    parts = (ptrs, offsets, codes, starts, first)
    return np.concatenate([np.asarray(p, np.int64) for p in parts]), chunk, nchunks


def _block_layout(shapes: Sequence[tuple[int, ...]],
                  dtypes: Sequence[np.dtype]) -> tuple[np.ndarray, int]:
    """Byte offsets of arrays of these shapes and dtypes in one block (each 256-byte
    aligned), and the block's size."""
    nbytes = np.array([int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize
                       for s, d in zip(shapes, dtypes)], np.int64)
    starts = np.zeros(len(nbytes) + 1, np.int64)
    np.cumsum((nbytes + 255) // 256 * 256, out=starts[1:])
    return starts[:-1], int(starts[-1])


def _views(block: Any, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[np.dtype],
           offsets: np.ndarray) -> list:
    cp = _cupy()
    return [cp.ndarray(s, d, memptr=block.data + int(o)) for s, d, o in zip(shapes, dtypes, offsets)]


def _codes(dtypes: Sequence[np.dtype]) -> np.ndarray:
    codes = np.empty(len(dtypes), np.int64)
    for j, d in enumerate(dtypes):
        code = _PACK_CODES.get(np.dtype(d))
        if code is None:
            raise TypeError(f"Expected arrays of dtype float16, float32, float64, complex64 or "
                            f"complex128, got {d} at position {j}.")
        codes[j] = code
    return codes


class PackPlan:
    """The device table of a list of C-contiguous arrays (float16/32/64, complex64/128):
    ``pack`` copies them into a flat vector and ``scatter`` copies a vector back into them,
    each in one kernel launch, converting dtypes.

    Array ``j`` lives at ``flat[starts[j]:starts[j] + arrays[j].size]`` of a vector of
    ``length`` elements (host integers); ``pack`` leaves the positions no array covers as they
    were.  The table is copied to the device once, so a plan serves every pack or scatter of
    the same arrays.  ``PackPlan.for_new_leaves`` makes a plan for arrays not yet allocated,
    reused for every new set of them.
    """

    def __init__(self, arrays: Sequence[Any], starts: Sequence[int] | np.ndarray,
                 length: int) -> None:
        for j, a in enumerate(arrays):
            if not a.flags.c_contiguous:
                raise ValueError(f"Expected C-contiguous arrays, got strides {a.strides} at "
                                 f"position {j}.")
        ptrs = np.array([a.data.ptr for a in arrays], np.int64)
        self._setup(ptrs, [a.size for a in arrays], _codes([a.dtype for a in arrays]), starts,
                    length)
        self.arrays = list(arrays)          # keeps the memory the table points to alive
        self.block: tuple | None = None

    @classmethod
    def for_new_leaves(cls, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[np.dtype],
                       starts: Sequence[int] | np.ndarray, length: int) -> PackPlan:
        """A plan for fresh arrays of these shapes and dtypes, made by ``new_leaves`` as views
        of one block; its table holds their offsets in the block, so it serves every block."""
        plan = cls.__new__(cls)
        offsets, nbytes = _block_layout(shapes, dtypes)
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        plan._setup(offsets, sizes, _codes(dtypes), starts, length)
        plan.arrays = []
        plan.block = (list(shapes), list(dtypes), offsets, nbytes)
        return plan

    def _setup(self, ptrs: np.ndarray, sizes: Sequence[int], codes: np.ndarray,
               starts: Sequence[int] | np.ndarray, length: int) -> None:
        n = len(sizes)
        starts = np.ascontiguousarray(starts, dtype=np.int64)
        if starts.shape != (n,):
            raise ValueError(f"Expected {n} starts, got shape {starts.shape}.")
        for j, (start, size) in enumerate(zip(starts, sizes)):
            if start < 0 or start + size > length:
                raise ValueError(f"Array {j} of {size} elements at {start} does not fit in a "
                                 f"vector of length {length}.")
        self.length = int(length)
        self.n = n
        self.total = int(sum(sizes))
        table, self.chunk, self.nchunks = pack_table(ptrs, np.asarray(sizes, np.int64), codes,
                                                     starts)
        self.table = _cupy().asarray(table)

    def new_leaves(self) -> tuple[Any, list]:
        """A new block (uint8 CuPy array) and the uninitialised arrays in it, for a plan made
        by ``for_new_leaves``."""
        if self.block is None:
            raise ValueError("new_leaves needs a plan made by PackPlan.for_new_leaves.")
        shapes, dtypes, offsets, nbytes = self.block
        block = _cupy().empty(nbytes, np.uint8)
        return block, _views(block, shapes, dtypes, offsets)

    def _run(self, name: str, flat: Any, block: Any | None) -> None:
        code = _PACK_CODES.get(np.dtype(flat.dtype))
        if code is None or flat.ndim != 1 or flat.shape[0] != self.length \
                or not flat.flags.c_contiguous:
            raise ValueError(f"Expected a contiguous float or complex vector of length "
                             f"{self.length}, got dtype {flat.dtype} and shape {flat.shape}.")
        if (block is None) != (self.block is None):
            raise ValueError("A plan made by PackPlan.for_new_leaves needs the block its arrays "
                             "live in (and only such a plan takes one).")
        if self.total == 0:
            return
        base = 0 if block is None else block.data.ptr
        kernel(name)((min(self.nchunks, 2 ** 31 - 1),), (_THREADS,),
                     (self.table, np.int64(self.n), np.int64(self.nchunks),
                      np.int64(self.chunk), np.int64(base), flat, np.int32(code)))

    def pack(self, out: Any, block: Any | None = None) -> Any:
        """out[starts[j]:...] := ravel(arrays[j]) cast to out's dtype; returns out (block: the
        block of a ``for_new_leaves`` plan's arrays)"""
        self._run("ft_pack", out, block)
        return out

    def scatter(self, v: Any, block: Any | None = None) -> None:
        """arrays[j][...] := v[starts[j]:...] cast to each array's dtype, complex into real
        keeping the real part (block: the block of a ``for_new_leaves`` plan's arrays)"""
        self._run("ft_scatter", v, block)


def pack(arrays: Sequence[Any], offsets: np.ndarray, dtype: Any) -> Any:
    """A new vector of ``dtype`` and length ``offsets[-1]`` holding ``arrays[j]`` (C order) at
    ``offsets[j]``, in one launch (arrays that are not C-contiguous are copied first)."""
    cp = _cupy()
    arrays = [a if a.flags.c_contiguous else cp.ascontiguousarray(a) for a in arrays]
    length = int(offsets[-1])
    return PackPlan(arrays, offsets[:-1], length).pack(cp.empty(length, dtype))


def scatter(v: Any, starts: Sequence[int] | np.ndarray, outs: Sequence[Any]) -> None:
    """outs[j][...] := v[starts[j]:starts[j] + outs[j].size] cast, in one launch (outs
    C-contiguous)."""
    PackPlan(outs, starts, v.shape[0]).scatter(v)


def new_leaves(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[np.dtype]) -> list:
    """Uninitialised C-contiguous arrays of the given shapes and dtypes, as views of one
    device allocation (each 256-byte aligned)."""
    offsets, nbytes = _block_layout(shapes, dtypes)
    return _views(_cupy().empty(nbytes, np.uint8), shapes, dtypes, offsets)


# --------------------------------------------------------------------------- Dense

def _gemm(ta: str, tb: str, a: Any, b: Any, out: Any, beta: float = 0.0) -> None:
    """out := op(a) . op(b) + beta out (cuBLAS), with empty products handled here."""
    m, n = out.shape
    k = a.shape[1] if ta == "N" else a.shape[0]
    if m == 0 or n == 0:
        return
    if k == 0:
        if beta == 0.0:
            out.fill(0)
        return
    from cupy import cublas  # a submodule that `import cupy` may not load

    cublas.gemm(ta, tb, a, b, out=out, alpha=1.0, beta=beta)


def _column_launch(rows: int, cols: int, k: int) -> tuple[tuple, tuple, int]:
    """Grid, block and number of row splits for the column-sum kernels."""
    _check_blocks(k)
    gx = -(-cols // 32)
    splits = max(1, min(-(-4 * _sms() // max(gx * k, 1)), -(-rows // _RED_ROWS), _MAX_GRID_YZ))
    return (gx, splits, k), (32, _RED_ROWS, 1), splits


def _column_sums(name: str, arrays: tuple, act: int, rows: int, cols: int, k: int,
                 out: Any | None) -> None:
    """Run a column-sum kernel, ``name(*arrays, partial, K, rows, cols, act)``, and reduce its
    sums into out (k, cols) when given (partial NULL otherwise: no sums)."""
    grid, block, splits = _column_launch(rows, cols, k)
    partial = _cupy().empty(splits * k * cols, np.float64) if out is not None else None
    kernel(name)(grid, block, (*arrays, partial, np.int64(k), np.int64(rows), np.int64(cols),
                               np.int32(act)))
    if out is not None:
        _sum_splits(partial, k * cols, splits, k * cols, 1.0, out)


def dense_forward(x: Any, W: Any, b: Any | None, act: int, out: Any, pre: Any | None = None) -> None:
    """out := act(x . W^T + b); pre := x . W^T + b when given (one gemm, one fused pass)"""
    sfx = _suffix(out, "out")
    z = pre if pre is not None else out
    _gemm("N", "T", x, W, z)
    rows, cols = z.shape
    if rows * cols == 0:
        return
    kernel("ft_dense_bias_act" + sfx)(
        (_blocks(rows * cols),), (_THREADS,),
        (z, b, out, np.int64(rows), np.int64(cols), np.int32(act)))


def dense_backward(x: Any, W: Any, z: Any | None, y: Any, dy: Any, act: int, delta: Any,
                   dx: Any | None, dW: Any | None, db: Any | None) -> None:
    """delta := dy * act'(z); dx := delta . W, dW := delta^T . x, db := column sums of delta
    (dx, dW, db may be None; delta may be dy itself; z may be None when act reads only y)"""
    sfx = _suffix(dy, "dy")
    rows, cols = dy.shape
    if rows * cols:
        _column_sums("ft_dense_delta" + sfx, (y if z is None else z, y, dy, delta), act,
                     rows, cols, 1, db)
    elif db is not None:
        db.fill(0)
    if dx is not None:
        _gemm("N", "N", delta, W, dx)
    if dW is not None:
        _gemm("T", "N", delta, x, dW)


def dense_tangent(x: Any, W: Any, z: Any | None, y: Any, act: int, tx: Any | None,
                  tW: Any | None, tb: Any | None, tz: Any, ty: Any | None) -> None:
    """tz[j] := tx[j] . W^T + x . tW[j]^T + tb[j]; ty[j] := act'(z) * tz[j] (k blocks j;
    tx, tW, tb may be None, one at least given; ty None: tz only; ty may be tz for act 0)"""
    sfx = _suffix(tz, "tz")
    cp = _cupy()
    k, rows, cols = tz.shape
    nin = W.shape[1]
    _check_blocks(k)
    if tz.size == 0:
        return
    fresh = True
    if tx is not None:
        _gemm("N", "T", tx.reshape(k * rows, nin), W, tz.reshape(k * rows, cols))
        fresh = False
    if tW is not None:
        prod = cp.matmul(x, tW.transpose(0, 2, 1))
        if fresh:
            tz[...] = prod
        else:
            tz += prod
        fresh = False
    if fresh:
        tz.fill(0)
    if tb is None and ty is None:
        return
    kernel("ft_dense_tangent" + sfx)(
        (_blocks(rows * cols), min(k, _MAX_GRID_YZ)), (_THREADS,),
        (y if z is None else z, y, tb, tz, ty, np.int64(k), np.int64(rows), np.int64(cols),
         np.int32(act)))


def dense_tangent_backward(x: Any, W: Any, z: Any | None, y: Any, act: int, delta: Any | None,
                           dy: Any | None, tx: Any | None, tW: Any | None, tz: Any | None,
                           tdy: Any | None, rdelta: Any, tdx: Any | None, tdW: Any | None,
                           tdb: Any | None) -> None:
    """rdelta[j] := tdy[j] * act'(z) + dy * act''(z) * tz[j]; tdx[j] := rdelta[j] . W +
    delta . tW[j]; tdW[j] := rdelta[j]^T . x + delta^T . tx[j]; tdb[j] := column sums of
    rdelta[j] (None factors drop their terms; None outputs are skipped)"""
    sfx = _suffix(rdelta, "rdelta")
    cp = _cupy()
    k, rows, cols = rdelta.shape
    nin = W.shape[1]
    have_r = tdy is not None or (dy is not None and tz is not None and act in _HAS_D2)
    if rdelta.size:
        _column_sums("ft_dense_rdelta" + sfx, (y if z is None else z, y, dy, tdy, tz, rdelta),
                     act, rows, cols, k, tdb)
    elif tdb is not None:
        tdb.fill(0)
    if tdx is not None:
        if have_r:
            _gemm("N", "N", rdelta.reshape(k * rows, cols), W, tdx.reshape(k * rows, nin))
        else:
            tdx.fill(0)
        if delta is not None and tW is not None and tdx.size:
            tdx += cp.matmul(delta, tW)
    if tdW is not None:
        if have_r and tdW.size:
            cp.matmul(rdelta.transpose(0, 2, 1), x, out=tdW)
        else:
            tdW.fill(0)
        if delta is not None and tx is not None and tdW.size:
            tdW += cp.matmul(delta.T, tx)


# --------------------------------------------------------------------------- BatchNorm

_BN_BATCH, _BN_RUNNING, _BN_GIVEN = 0, 1, 2


def _channel_launch(N: int, C: int, L: int, K: int) -> tuple[tuple, tuple, int]:
    """Grid, block and number of splits for the per-channel sums over (N, C, L)."""
    _check_blocks(K)
    if L == 1:
        gx, block, most = -(-C // 32), (32, _RED_ROWS, 1), -(-N // _RED_ROWS)
    else:
        gx, block, most = C, (_THREADS, 1, 1), -(-(N * L) // _THREADS)
    splits = max(1, min(-(-4 * _sms() // max(gx * K, 1)), most, _MAX_GRID_YZ))
    return (gx, splits, K), block, splits


def _channel_sums(name: str, args: tuple, N: int, C: int, L: int, K: int, scale: float) -> Any:
    """Run a per-channel sum kernel (args before its partial) and return the reduced sums,
    a float64 vector (2, K, C) flattened, times scale."""
    cp = _cupy()
    grid, block, splits = _channel_launch(N, C, L, K)
    partial = cp.empty(splits * 2 * K * C, np.float64)
    kernel(name)(grid, block, (*args, partial))
    sums = cp.empty(2 * K * C, np.float64)
    _sum_splits(partial, 2 * K * C, splits, 2 * K * C, scale, sums)
    return sums


def _bn_coefs(w: Any, sfx: str, gamma: Any | None, beta: Any | None, rmean: Any | None,
              rvar: Any | None, eps: float, momentum: float, m: int, mode: int) -> None:
    C = w.shape[0] // 6
    kernel("ft_bn_coefs" + sfx)(
        (max(1, -(-C // _THREADS)),), (_THREADS,),
        (w, np.int64(C), gamma, beta, rmean, rvar, np.float64(eps), np.float64(momentum),
         np.float64(m), np.int32(mode)))


def _bn_given(mean: Any, invstd: Any, sfx: str, gamma: Any | None, beta: Any | None) -> Any:
    C = mean.shape[0]
    w = _cupy().empty(6 * C, np.float64)
    w[:C] = mean
    w[C:2 * C] = invstd
    _bn_coefs(w, sfx, gamma, beta, None, None, 0.0, 0.0, 0, _BN_GIVEN)
    return w


def batchnorm_forward(x: Any, gamma: Any | None, beta: Any | None, running_mean: Any | None,
                      running_var: Any | None, eps: float, momentum: float, training: bool,
                      act: int, out: Any, mean_out: Any | None = None,
                      invstd_out: Any | None = None) -> None:
    """out := act(gamma * (x - mean) / sqrt(var + eps) + beta) over x (N, C, L); batch
    statistics when training or without running statistics (then, when training, rm :=
    (1-momentum) rm + momentum mean, rv := (1-momentum) rv + momentum m/(m-1) var), else the
    running ones; mean_out, invstd_out (float64, C) receive the statistics used"""
    sfx = _suffix(x, "x")
    cp = _cupy()
    N, C, L = x.shape
    m = N * L
    w = cp.empty(6 * C, np.float64)
    if training or running_mean is None:
        n, c, l_ = np.int64(N), np.int64(C), np.int64(L)
        w[:C] = _channel_sums("ft_bn_sums" + sfx, (x, None, n, c, l_), N, C, L, 1, 1.0 / m)[:C]
        w[C:2 * C] = _channel_sums("ft_bn_sums" + sfx, (x, w, n, c, l_), N, C, L, 1,
                                   1.0 / m)[:C]
        stats = (running_mean, running_var) if training else (None, None)
        _bn_coefs(w, sfx, gamma, beta, *stats, eps, momentum, m, _BN_BATCH)
    else:
        _bn_coefs(w, sfx, gamma, beta, running_mean, running_var, eps, momentum, m, _BN_RUNNING)
    if x.size:
        kernel("ft_bn_apply" + sfx)(
            (_blocks(x.size),), (_THREADS,),
            (x, out, w, np.int64(N), np.int64(C), np.int64(L), np.int32(act)))
    if mean_out is not None:
        mean_out[...] = w[:C]
    if invstd_out is not None:
        invstd_out[...] = w[C:2 * C]


def batchnorm_backward(x: Any, dy: Any, mean: Any, invstd: Any, gamma: Any | None,
                       beta: Any | None, act: int, batch: bool, dx: Any | None,
                       dgamma: Any | None = None, dbeta: Any | None = None) -> None:
    """dx := dL/dx, dgamma := sum act'(u) dy xh, dbeta := sum act'(u) dy for K blocks of dy
    (K, N, C, L); mean, invstd (float64, C) as the forward pass used them; batch: the forward
    used batch statistics (dx then includes their dependence on x)"""
    sfx = _suffix(x, "x")
    N, C, L = x.shape
    K = dy.shape[0]
    w = _bn_given(mean, invstd, sfx, gamma, beta)
    sums = None
    if batch or dgamma is not None or dbeta is not None:
        sums = _channel_sums("ft_bn_grad_sums" + sfx,
                             (x, dy, w, np.int64(N), np.int64(C), np.int64(L), np.int64(K),
                              np.int32(act)), N, C, L, K, 1.0)
        if dbeta is not None:
            dbeta[...] = sums[:K * C].reshape(dbeta.shape)
        if dgamma is not None:
            dgamma[...] = sums[K * C:].reshape(dgamma.shape)
    if dx is not None and dx.size:
        kernel("ft_bn_dx" + sfx)(
            (_blocks(N * C * L), min(K, _MAX_GRID_YZ)), (_THREADS,),
            (x, dy, w, sums, dx, np.int64(N), np.int64(C), np.int64(L), np.int64(K),
             np.int32(act), np.int32(bool(batch))))


def batchnorm_tangent(x: Any, mean: Any, invstd: Any, gamma: Any | None, beta: Any | None,
                      act: int, batch: bool, tx: Any | None, tgamma: Any | None,
                      tbeta: Any | None, ty: Any) -> None:
    """ty := the tangent of y for K tangents (tx (K, N, C, L), tgamma, tbeta (K, C)), each
    None for zero; batch: the statistics depend on x (their tangents are included)"""
    sfx = _suffix(x, "x")
    N, C, L = x.shape
    K = ty.shape[0]
    _check_blocks(K)
    if ty.size == 0:
        return
    w = _bn_given(mean, invstd, sfx, gamma, beta)
    means = None
    if batch and tx is not None:
        means = _channel_sums("ft_bn_tangent_sums" + sfx,
                              (x, tx, w, np.int64(N), np.int64(C), np.int64(L), np.int64(K)),
                              N, C, L, K, 1.0 / (N * L))
    kernel("ft_bn_tangent" + sfx)(
        (_blocks(N * C * L), min(K, _MAX_GRID_YZ)), (_THREADS,),
        (x, w, means, tx, tgamma, tbeta, ty, np.int64(N), np.int64(C), np.int64(L),
         np.int64(K), np.int32(act)))
