"""Shared setup for the fluxtree asv benchmarks: thread pinning, profile switch, trees.

Threads are pinned to 1 before NumPy is imported (the env vars) and again through
threadpoolctl, so BLAS/OpenMP pools cannot add noise or change the ratios between
runs.  ``FLUXTREE_BENCH_THREADS=N`` overrides the pin (``0`` leaves the pools alone).
XLA's CPU thread pool (jax) ignores both, so jax is imported and its backend started here,
once, with the process confined to ``N`` CPUs (``fluxtree.cli._anchors.import_jax_pinned``).

The optional anchors (torch, jax, optree, threadpoolctl) are imported here once; each is
``None`` when missing, and ``need_torch`` / ``need_jax`` / ``need_optree`` (used as a
benchmark's ``setup``) raise NotImplementedError, which asv reports as "skipped".

``FLUXTREE_BENCH_PROFILE`` selects the sizes and the statistics:

- ``regular`` (default): the sizes of the tree-layer issue (1,000 layers, 10,000 leaves)
  and asv's default repeats.  Use it for every number that is reported or compared.
- ``fast``: a tenth of the sizes and few repeats, for checking that benchmarks run.
"""
from __future__ import annotations

import os

#: the thread pin as given ("0": leave every pool alone)
THREADS = os.environ.get("FLUXTREE_BENCH_THREADS", "1")
if THREADS != "0":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ.setdefault(_var, THREADS)
# jax (an optional anchor) must not probe for accelerators
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import timeit  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - the env vars above still apply
    threadpool_limits = None

#: kept alive for the whole process: the limit lasts as long as this object
_POOL_LIMIT = (threadpool_limits(limits=int(THREADS))
               if threadpool_limits is not None and THREADS != "0" else None)

import fluxtree as ft  # noqa: E402

PROFILE = os.environ.get("FLUXTREE_BENCH_PROFILE", "regular")
if PROFILE not in ("fast", "regular"):
    raise ValueError(
        f"FLUXTREE_BENCH_PROFILE must be 'fast' or 'regular', got {PROFILE!r}.")

#: sizes of the issue (regular) or a tenth of them (fast)
N_LAYERS = 1000 if PROFILE == "regular" else 100
N_WIDE = 10_000 if PROFILE == "regular" else 1000


class Benchmark:
    """Base class: asv timing attributes per profile."""

    timeout = 300
    if PROFILE == "fast":
        repeat = (1, 3, 1.0)
        number = 0          # let asv pick the loop count
        warmup_time = 0.05
    # regular: asv defaults (repeat (1, 10, 20.0), sample_time 0.01, warmup_time -1)


# ----------------------------------------------------------------------------
# optional anchors: imported once here, None when missing
# ----------------------------------------------------------------------------
def optional_import(name: str) -> Any:
    """The module ``name``, or raise NotImplementedError (asv reports "skipped")."""
    import importlib
    try:
        return importlib.import_module(name)
    except Exception as e:  # ImportError, or a jax that fails to initialise
        raise NotImplementedError(f"{name} is not installed or failed to import: {e}")


try:
    import optree
except ImportError:  # pragma: no cover - optree is in the [bench] extra
    optree = None

# torch before jax: its pools must not start inside jax's CPU-affinity window below
try:
    import torch
    import torch.nn.functional as F
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
    from torch.nn.utils import parameters_to_vector, vector_to_parameters
except Exception:  # pragma: no cover - torch is an optional anchor
    torch = F = None
    _flatten_dense_tensors = _unflatten_dense_tensors = None
    parameters_to_vector = vector_to_parameters = None


try:
    import importlib

    from fluxtree.cli._anchors import import_jax_pinned
    jax = import_jax_pinned(int(THREADS))
    importlib.import_module("jax.flatten_util")
    importlib.import_module("jax.tree_util")
    jnp = jax.numpy
    jax_tree_util = jax.tree_util
    ravel_pytree = jax.flatten_util.ravel_pytree
except Exception:  # pragma: no cover - jax is an optional anchor
    jax = jnp = jax_tree_util = ravel_pytree = None


def need_torch(*params) -> None:
    """A benchmark ``setup``: skip unless torch is installed."""
    if torch is None:
        raise NotImplementedError("torch is not installed")


def need_jax(*params) -> None:
    """A benchmark ``setup``: skip unless jax is installed."""
    if jax is None:
        raise NotImplementedError("jax is not installed")


def need_optree(*params) -> None:
    """A benchmark ``setup``: skip unless optree is installed."""
    if optree is None:
        raise NotImplementedError("optree is not installed")


# ----------------------------------------------------------------------------
# trees
# ----------------------------------------------------------------------------
def _leaf(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A small float32 array; every call gives a distinct object (no identity-cache hits)."""
    return np.full(shape, seed % 97, dtype=np.float32)


def mlp_dict_tree(n_layers: int = N_LAYERS, width: int = 8) -> dict:
    """``{"layers": [{"weight": (w, w), "bias": (w,)}, ...]}``: 2 leaves per layer.

    Nodes: 1 + 1 + n_layers dicts/lists, 2 * n_layers array leaves.
    """
    return {"layers": [{"weight": _leaf((width, width), i), "bias": _leaf((width,), i)}
                       for i in range(n_layers)]}


@ft.functor
class Dense:
    """A layer as a fluxtree record: children ``weight`` and ``bias``."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        self.weight = weight
        self.bias = bias


@ft.functor
class Chain:
    """A model as a fluxtree record holding a list of layers."""

    def __init__(self, layers: list) -> None:
        self.layers = layers


def mlp_record_tree(n_layers: int = N_LAYERS, width: int = 8) -> Chain:
    """``Chain([Dense(weight, bias), ...])``: the shape of ``mlp_dict_tree`` with records.

    optree and jax cannot traverse fluxtree records; anchor it with ``mlp_dict_tree``.
    """
    return Chain([Dense(_leaf((width, width), i), _leaf((width,), i))
                  for i in range(n_layers)])


def wide_leaf_tree(n: int = N_WIDE, per_dict: int = 100) -> list:
    """A list of ``n // per_dict`` dicts of ``per_dict`` small arrays: ``n`` leaves."""
    if n % per_dict:
        raise ValueError(f"n must be a multiple of per_dict={per_dict}, got n={n}.")
    keys = [f"p{j}" for j in range(per_dict)]
    return [{k: _leaf((2,), i * per_dict + j) for j, k in enumerate(keys)}
            for i in range(n // per_dict)]


#: name -> (builder of the benchmarked tree, builder of the same-shape tree for anchors)
TREES: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "mlp_dict": (mlp_dict_tree, mlp_dict_tree),
    "mlp_record": (mlp_record_tree, mlp_dict_tree),
    "wide": (wide_leaf_tree, wide_leaf_tree),
}


def count_leaves(x: Any) -> int:
    return len(ft.fleaves(x))


def count_nodes(x: Any) -> int:
    return len(ft.fcollect(x))


# ----------------------------------------------------------------------------
# the plain-Python anchor
# ----------------------------------------------------------------------------
def py_map(f: Callable[[Any], Any], x: Any) -> Any:
    """A plain recursive map over dicts, lists and tuples (everything else a leaf)."""
    t = type(x)
    if t is dict:
        return {k: py_map(f, v) for k, v in x.items()}
    if t is list:
        return [py_map(f, v) for v in x]
    if t is tuple:
        return tuple([py_map(f, v) for v in x])
    return f(x)


def py_map2(f: Callable[[Any, Any], Any], x: Any, y: Any) -> Any:
    """``py_map`` over two trees of the same structure (dicts paired by key)."""
    t = type(x)
    if t is dict:
        return {k: py_map2(f, v, y[k]) for k, v in x.items()}
    if t is list:
        return [py_map2(f, a, b) for a, b in zip(x, y)]
    if t is tuple:
        return tuple([py_map2(f, a, b) for a, b in zip(x, y)])
    return f(x, y)


def py_leaves(x: Any) -> list:
    """The leaves of ``x`` in order, by plain recursion over dicts, lists and tuples."""
    out: list = []
    append = out.append

    def rec(v: Any) -> None:
        t = type(v)
        if t is dict:
            for c in v.values():
                rec(c)
        elif t is list or t is tuple:
            for c in v:
                rec(c)
        else:
            append(v)

    rec(x)
    return out


def identity(a: Any) -> Any:
    return a


def first(a: Any, b: Any) -> Any:
    return a


# ----------------------------------------------------------------------------
# in-process timing for track_* methods
# ----------------------------------------------------------------------------
def median_seconds(fn: Callable[[], Any], repeat: int | None = None,
                   min_time: float = 0.01) -> float:
    """Median over ``repeat`` samples of the per-call time of ``fn`` (seconds).

    Each sample loops ``fn`` for about ``min_time`` seconds (one warm-up call sizes it).
    """
    if repeat is None:
        repeat = 21 if PROFILE == "regular" else 3
    timer = timeit.Timer(fn)
    once = max(timer.timeit(number=1), 1e-7)
    number = max(1, int(min_time / once))
    times = sorted(t / number for t in timer.repeat(repeat=repeat, number=number))
    return times[len(times) // 2]


# ----------------------------------------------------------------------------
# flat layer (bench_flat.py): parameter trees for destructure / Restructure
# ----------------------------------------------------------------------------
#: (a) many small leaves: 1,000 arrays of 64 float32 (fast: 100)
N_FLAT_SMALL = 1000 if PROFILE == "regular" else 100
FLAT_SMALL_SIZE = 64
#: (b) few large leaves: 10 arrays of 10 M float32 (fast: 1 M), 400 MB in all
N_FLAT_LARGE = 10
FLAT_LARGE_SIZE = 10_000_000 if PROFILE == "regular" else 1_000_000
#: (c) mixed dtypes: 10 arrays of 5 M, float32 and float64 alternating (fast: 500 k);
#: the float64 vector has as many bytes as (b)'s float32 one
FLAT_MIXED_SIZE = 5_000_000 if PROFILE == "regular" else 500_000


def flat_small_tree(container: str = "list", n: int = N_FLAT_SMALL,
                    size: int = FLAT_SMALL_SIZE, seed: int = 0) -> Any:
    """``n`` float32 arrays of ``size`` elements, as a list or a dict ``{"p0": ..., ...}``."""
    leaves = [np.full(size, (seed + i) % 97, dtype=np.float32) for i in range(n)]
    if container == "list":
        return leaves
    if container == "dict":
        return {f"p{i}": a for i, a in enumerate(leaves)}
    raise ValueError(f"container must be 'list' or 'dict', got {container!r}.")


def flat_large_tree(n: int = N_FLAT_LARGE, size: int = FLAT_LARGE_SIZE,
                    seed: int = 0) -> list:
    """A list of ``n`` float32 arrays of ``size`` elements each."""
    return [np.full(size, (seed + i) % 97, dtype=np.float32) for i in range(n)]


def flat_mixed_tree(n: int = N_FLAT_LARGE, size: int = FLAT_MIXED_SIZE,
                    seed: int = 0) -> list:
    """A list of ``n`` arrays of ``size`` elements, float32 and float64 alternating."""
    return [np.full(size, (seed + i) % 97, dtype=np.float32 if i % 2 == 0 else np.float64)
            for i in range(n)]


def flat_leaves(tree: Any) -> list:
    """The leaves of a ``flat_*_tree`` (a list, or a dict's values) in order."""
    return list(tree.values()) if isinstance(tree, dict) else list(tree)
