"""Flat layer: ``destructure`` and ``Restructure`` against torch, jax and NumPy.

Cases (flat-layer issue; sizes in ``common.py``):

(a) ``FlatSmall``: 1,000 arrays of 64 float32, as a list or a dict.
    Targets: ``destructure`` >= 3x faster than the fastest torch/jax spelling (time ratio
    <= 1/3) and faster than ``np.concatenate``; ``re(v)`` (rebuild with copies)
    <= 250 ns per leaf; ``re.flatten(tree, out=buf)`` <= 60 ns per leaf.
(b) ``FlatLarge``: 10 arrays of 10 M float32 (400 MB).
(c) ``FlatMixed``: 10 arrays of 5 M, float32/float64 alternating, into a float64 vector
    (400 MB) and back.
    Target for (b) and (c): >= 0.9x the best copy bandwidth measured in the same run
    (``np.copyto`` of a vector-sized buffer, torch ``copy_`` and ``torch.cat(out=)``),
    bandwidth counting the bytes read plus the bytes written.

Threads: ``common.py`` pins OpenMP/BLAS to 1 (``OMP_NUM_THREADS=1``).  The flat kernels'
default (``nthreads=0``) is ``min(2, omp_get_max_threads())``, so under the pin the
library default runs them on one thread.  ``FlatLarge2T`` / ``FlatMixed2T`` raise the
OpenMP limit to 2 (threadpoolctl, and ``torch.set_num_threads(2)``, which shares the same
libgomp) so that fluxtree's unchanged default uses 2 threads, and compare it with torch's
2-thread ``copy_``/``cat`` and the single-threaded ``np.copyto``.  jax runs only in the
1-thread classes, with XLA's CPU pool pinned to one thread by ``common.py`` (the CPU
affinity while jax starts).

Anchors sit in the same class as the fluxtree methods, so every ratio comes from one
machine and one run; ``track_*`` methods report ns per leaf, GB/s and the ratios.
Leaves are 1-D, so the NumPy floor (``np.concatenate`` / ``np.split``) needs no reshape.
"""
from __future__ import annotations

from .common import (
    Benchmark,
    _flatten_dense_tensors,
    _unflatten_dense_tensors,
    flat_large_tree,
    flat_leaves,
    flat_mixed_tree,
    flat_small_tree,
    ft,
    jax,
    median_seconds,
    need_jax,
    need_torch,
    np,
    parameters_to_vector,
    ravel_pytree,
    threadpool_limits,
    torch,
    vector_to_parameters,
)


def _best(fns):
    """The median time (seconds) of the fastest of the available ``fns`` (None skipped)."""
    fns = [fn for fn in fns if fn is not None]
    if not fns:
        raise NotImplementedError("no anchor is installed")
    return min(median_seconds(fn) for fn in fns)


def _split_points(leaves):
    return np.cumsum([a.size for a in leaves])[:-1]


#: per-process memo of the set-up state, see ``_FlatCase.setup``
_STATE: dict = {}


class _FlatCase(Benchmark):
    """Shared setup: the model ``x``, a gradient tree ``g`` of the same structure, the
    vector ``v = destructure(x)[0]``, a preallocated ``buf``, and the torch mirrors.

    The installed asv_runner re-runs ``setup`` before every timed call (asv#966).  Nothing
    here mutates the state that a later call reads (``buf`` is only written, the tensors
    that ``vector_to_parameters`` rebinds are never read), so the state is built once per
    process and restored from ``_STATE`` afterwards: the 400 MB trees and the jax
    compilations would otherwise be redone for every sample.
    """

    uses_jax = False

    def setup(self, *params):
        key = (type(self).__name__, params)
        state = _STATE.get(key)
        if state is None:
            self._build(*params)
            if self.uses_jax and jax is not None:
                self._jax_setup()
            state = _STATE[key] = dict(self.__dict__)
        self.__dict__.update(state)

    def _build(self, *params):
        raise NotImplementedError

    def _setup_tree(self, x, g):
        self.x, self.g = x, g
        self.leaves = flat_leaves(x)
        self.gleaves = flat_leaves(g)
        self.n_leaves = len(self.leaves)
        self.dtypes = [a.dtype for a in self.leaves]
        self.v, self.re = ft.destructure(x)
        self.buf = np.empty_like(self.v)
        self.split_at = _split_points(self.leaves)
        self.bounds = [0, *self.split_at.tolist(), self.v.size]
        self.leaf_bytes = sum(a.nbytes for a in self.leaves)
        if torch is not None:
            # torch mirrors share memory with the NumPy leaves (no extra copies)
            self.ts = [torch.from_numpy(a) for a in self.leaves]
            self.tviews = [t.view(-1) for t in self.ts]
            self.tg = [torch.from_numpy(a).view(-1) for a in self.gleaves]
            self.tvec = torch.from_numpy(self.v)
            self.tbuf = torch.from_numpy(self.buf)
            # vector_to_parameters rebinds .data: give it its own tensors (never touched)
            self.tparams = [torch.empty_like(t) for t in self.ts]
            self.tdst = [torch.empty_like(t) for t in self.ts]    # copy_ targets

    # -- fluxtree ----------------------------------------------------------------------
    def time_fluxtree_destructure(self, *p):
        ft.destructure(self.x)

    def time_fluxtree_rebuild(self, *p):
        self.re(self.v)

    def time_fluxtree_rebuild_nocopy(self, *p):
        self.re(self.v, copy=False)

    def time_fluxtree_flatten_model_out(self, *p):
        self.re.flatten(self.x, out=self.buf)

    def time_fluxtree_flatten_grads_out(self, *p):
        self.re.flatten(self.g, out=self.buf)

    # -- NumPy (the floor) -------------------------------------------------------------
    def time_numpy_concatenate(self, *p):
        np.concatenate(flat_leaves(self.x), dtype=self.v.dtype)

    def time_numpy_concatenate_out(self, *p):
        np.concatenate(flat_leaves(self.g), out=self.buf)

    # -- torch -------------------------------------------------------------------------
    def time_torch_parameters_to_vector(self, *p):
        parameters_to_vector(self.ts)

    time_torch_parameters_to_vector.setup = need_torch

    def time_torch_cat(self, *p):
        torch.cat([t.view(-1) for t in self.ts])

    time_torch_cat.setup = need_torch

    def time_torch_cat_out(self, *p):
        torch.cat(self.tg, out=self.tbuf)

    time_torch_cat_out.setup = need_torch

    def time_torch_flatten_dense_tensors(self, *p):
        _flatten_dense_tensors(self.ts)

    time_torch_flatten_dense_tensors.setup = need_torch

    def time_torch_vector_to_parameters(self, *p):
        vector_to_parameters(self.tvec, self.tparams)

    time_torch_vector_to_parameters.setup = need_torch

    def time_torch_unflatten_dense_tensors(self, *p):
        _unflatten_dense_tensors(self.tvec, self.ts)

    time_torch_unflatten_dense_tensors.setup = need_torch

    # -- the anchors' fastest spellings, as callables (for the track_* ratios) ----------
    def _torch_from_scratch(self):
        if torch is None:
            return []
        return [lambda: parameters_to_vector(self.ts),
                lambda: torch.cat([t.view(-1) for t in self.ts]),
                lambda: _flatten_dense_tensors(self.ts)]

    def _jax_setup(self):
        """jax arrays of the model and the compiled ravel/unravel (x64 for float64)."""
        if any(a.dtype == np.float64 for a in self.leaves):
            jax.config.update("jax_enable_x64", True)
        self.jx = jax.tree_util.tree_map(jax.numpy.asarray, self.x)
        jflat, self.unravel = ravel_pytree(self.jx)
        self.jflat = jflat.block_until_ready()
        self.jit_ravel = jax.jit(lambda t: ravel_pytree(t)[0])
        self.jit_unravel = jax.jit(self.unravel)
        self.jit_ravel(self.jx).block_until_ready()          # compile now
        jax.block_until_ready(self.jit_unravel(self.jflat))

    def _jax_ravel(self):
        ravel_pytree(self.jx)[0].block_until_ready()

    def _jax_jit_ravel(self):
        self.jit_ravel(self.jx).block_until_ready()

    def _jax_unravel(self):
        jax.block_until_ready(self.unravel(self.jflat))

    def _jax_jit_unravel(self):
        jax.block_until_ready(self.jit_unravel(self.jflat))


class _WithJax:
    """The jax anchors (ravel/unravel, eager and ``jax.jit``), with ``block_until_ready``."""

    uses_jax = True

    def time_jax_ravel_pytree(self, *p):
        self._jax_ravel()

    def time_jax_jit_ravel(self, *p):
        self._jax_jit_ravel()

    def time_jax_unravel(self, *p):
        self._jax_unravel()

    def time_jax_jit_unravel(self, *p):
        self._jax_jit_unravel()

    for _m in (time_jax_ravel_pytree, time_jax_jit_ravel, time_jax_unravel,
               time_jax_jit_unravel):
        _m.setup = need_jax
    del _m


# ==========================================================================================
# (a) 1,000 arrays of 64 float32
# ==========================================================================================
class FlatSmall(_WithJax, _FlatCase):
    """(a) 1,000 float32 arrays of 64 elements (list or dict): per-leaf overhead."""

    params = [["list", "dict"]]
    param_names = ["tree"]

    def _build(self, tree):
        self._setup_tree(flat_small_tree(tree), flat_small_tree(tree, seed=1))

    # rebuild anchors with copies (one copy of the vector, then views, like re(v))
    def time_numpy_split_copy(self, tree):
        np.split(self.v.copy(), self.split_at)

    def time_numpy_split(self, tree):
        np.split(self.v, self.split_at)

    def time_torch_unflatten_dense_tensors_copy(self, tree):
        _unflatten_dense_tensors(self.tvec.clone(), self.ts)

    time_torch_unflatten_dense_tensors_copy.setup = need_torch

    # -- ns per leaf and ratios, measured in-process (median of repeats) ----------------
    def _ns_per_leaf(self, fn):
        return 1e9 * median_seconds(fn) / self.n_leaves

    def track_fluxtree_destructure_ns_per_leaf(self, tree):
        return self._ns_per_leaf(lambda: ft.destructure(self.x))

    def track_fluxtree_rebuild_ns_per_leaf(self, tree):
        """Target: <= 250 ns per leaf."""
        return self._ns_per_leaf(lambda: self.re(self.v))

    def track_fluxtree_rebuild_nocopy_ns_per_leaf(self, tree):
        return self._ns_per_leaf(lambda: self.re(self.v, copy=False))

    def track_fluxtree_flatten_model_ns_per_leaf(self, tree):
        """Target: <= 60 ns per leaf."""
        return self._ns_per_leaf(lambda: self.re.flatten(self.x, out=self.buf))

    def track_fluxtree_flatten_grads_ns_per_leaf(self, tree):
        """Target: <= 60 ns per leaf."""
        return self._ns_per_leaf(lambda: self.re.flatten(self.g, out=self.buf))

    for _m in (track_fluxtree_destructure_ns_per_leaf, track_fluxtree_rebuild_ns_per_leaf,
               track_fluxtree_rebuild_nocopy_ns_per_leaf,
               track_fluxtree_flatten_model_ns_per_leaf,
               track_fluxtree_flatten_grads_ns_per_leaf):
        _m.unit = "ns/leaf"
    del _m

    def track_destructure_ratio_to_best_torch_jax(self, tree):
        """destructure / fastest from-scratch torch or jax flatten (target <= 1/3)."""
        fns = self._torch_from_scratch()
        if jax is not None:
            fns += [self._jax_ravel, self._jax_jit_ravel]
        return median_seconds(lambda: ft.destructure(self.x)) / _best(fns)

    def track_destructure_ratio_to_numpy(self, tree):
        """destructure / np.concatenate of the leaves (target < 1)."""
        best = _best([lambda: np.concatenate(flat_leaves(self.x))])
        return median_seconds(lambda: ft.destructure(self.x)) / best

    def track_rebuild_ratio_to_best_anchor(self, tree):
        """re(v) / fastest copying rebuild: torch clone+unflatten, jax unravel, NumPy."""
        fns = [lambda: np.split(self.v.copy(), self.split_at)]
        if torch is not None:
            fns.append(lambda: _unflatten_dense_tensors(self.tvec.clone(), self.ts))
        if jax is not None:
            fns += [self._jax_unravel, self._jax_jit_unravel]
        return median_seconds(lambda: self.re(self.v)) / _best(fns)

    def track_flatten_ratio_to_best_anchor(self, tree):
        """re.flatten(g, out=buf) / fastest packing into a preallocated buffer."""
        fns = [lambda: np.concatenate(flat_leaves(self.g), out=self.buf)]
        if torch is not None:
            fns.append(lambda: torch.cat(self.tg, out=self.tbuf))
        return median_seconds(lambda: self.re.flatten(self.g, out=self.buf)) / _best(fns)

    for _m in (track_destructure_ratio_to_best_torch_jax, track_destructure_ratio_to_numpy,
               track_rebuild_ratio_to_best_anchor, track_flatten_ratio_to_best_anchor):
        _m.unit = "ratio"
    del _m


# ==========================================================================================
# (b) and (c): large leaves, bandwidth
# ==========================================================================================
class _Bandwidth(_FlatCase):
    """Large leaves: copy-bandwidth anchors and GB/s (bytes read + bytes written)."""

    def _setup_large(self, x, g):
        self._setup_tree(x, g)
        self.src = np.full_like(self.v, 1)        # np.copyto(buf, src): vector-sized copy
        if torch is not None:
            self.tsrc = torch.from_numpy(self.src)

    # -- bandwidth anchors -------------------------------------------------------------
    def time_numpy_copyto(self, *p):
        np.copyto(self.buf, self.src)

    def time_torch_copy_(self, *p):
        self.tbuf.copy_(self.tsrc)

    time_torch_copy_.setup = need_torch

    def time_torch_leafwise_copy_(self, *p):
        """Scatter back into the existing tensors (casting), torch's in-place rebuild."""
        tvec = self.tvec
        for t, a, b in zip(self.tdst, self.bounds, self.bounds[1:]):
            t.copy_(tvec[a:b])

    time_torch_leafwise_copy_.setup = need_torch

    def time_numpy_rebuild_copy(self, *p):
        v = self.v
        [v[a:b].astype(d) for d, a, b in zip(self.dtypes, self.bounds, self.bounds[1:])]

    # -- GB/s and ratios ---------------------------------------------------------------
    def _copy_fns(self):
        fns = [lambda: np.copyto(self.buf, self.src)]
        if torch is not None:
            fns += [lambda: self.tbuf.copy_(self.tsrc),
                    lambda: torch.cat(self.tg, out=self.tbuf)]
        return fns

    def _best_copy_gbps(self):
        # torch.cat moves the leaves' bytes, the copies twice the vector's
        best = min(median_seconds(fn) / self._bytes(i) for i, fn in enumerate(self._copy_fns()))
        return 1e-9 / best

    def _bytes(self, i):
        return 2 * self.v.nbytes if i < 2 else self.leaf_bytes + self.v.nbytes

    def _fluxtree(self):
        """(callable, bytes moved) of each fluxtree operation."""
        moved = self.leaf_bytes + self.v.nbytes
        return {"destructure": (lambda: ft.destructure(self.x), moved),
                "rebuild": (lambda: self.re(self.v), moved),
                "flatten_model": (lambda: self.re.flatten(self.x, out=self.buf), moved),
                "flatten_grads": (lambda: self.re.flatten(self.g, out=self.buf), moved)}

    def _gbps(self, op):
        fn, moved = self._fluxtree()[op]
        return 1e-9 * moved / median_seconds(fn)

    def track_best_copy_gbps(self, *p):
        return self._best_copy_gbps()

    def track_fluxtree_destructure_gbps(self, *p):
        return self._gbps("destructure")

    def track_fluxtree_rebuild_gbps(self, *p):
        return self._gbps("rebuild")

    def track_fluxtree_flatten_model_gbps(self, *p):
        return self._gbps("flatten_model")

    def track_fluxtree_flatten_grads_gbps(self, *p):
        return self._gbps("flatten_grads")

    for _m in (track_best_copy_gbps, track_fluxtree_destructure_gbps,
               track_fluxtree_rebuild_gbps, track_fluxtree_flatten_model_gbps,
               track_fluxtree_flatten_grads_gbps):
        _m.unit = "GB/s"
    del _m

    def track_destructure_ratio_to_best_copy(self, *p):
        """destructure GB/s / best copy GB/s (target >= 0.9)."""
        return self._gbps("destructure") / self._best_copy_gbps()

    def track_rebuild_ratio_to_best_copy(self, *p):
        """re(v) GB/s / best copy GB/s (target >= 0.9)."""
        return self._gbps("rebuild") / self._best_copy_gbps()

    def track_flatten_model_ratio_to_best_copy(self, *p):
        """re.flatten(model, out=buf) GB/s / best copy GB/s (target >= 0.9)."""
        return self._gbps("flatten_model") / self._best_copy_gbps()

    def track_flatten_grads_ratio_to_best_copy(self, *p):
        """re.flatten(grads, out=buf) GB/s / best copy GB/s (target >= 0.9)."""
        return self._gbps("flatten_grads") / self._best_copy_gbps()

    for _m in (track_destructure_ratio_to_best_copy, track_rebuild_ratio_to_best_copy,
               track_flatten_model_ratio_to_best_copy, track_flatten_grads_ratio_to_best_copy):
        _m.unit = "ratio"
    del _m


class _TwoThreads:
    """Raise the OpenMP limit to 2 for fluxtree's default and torch (one shared libgomp)."""

    def _two_threads(self):
        self._limit = (threadpool_limits(limits=2, user_api="openmp")
                       if threadpool_limits is not None else None)
        if torch is not None:
            self._torch_threads = torch.get_num_threads()
            torch.set_num_threads(2)

    def teardown(self, *p):
        if torch is not None and hasattr(self, "_torch_threads"):
            torch.set_num_threads(self._torch_threads)
        if getattr(self, "_limit", None) is not None:
            self._limit.restore_original_limits()


class FlatLarge(_WithJax, _Bandwidth):
    """(b) 10 float32 arrays of 10 M elements (400 MB), one thread."""

    def _build(self):
        self._setup_large(flat_large_tree(), flat_large_tree(seed=1))


class FlatLarge2T(_TwoThreads, _Bandwidth):
    """(b) with 2 OpenMP threads: fluxtree's default nthreads, torch at 2 threads."""

    _build = FlatLarge._build

    def setup(self):
        _Bandwidth.setup(self)
        self._two_threads()


class FlatMixed(_WithJax, _Bandwidth):
    """(c) 10 arrays of 5 M, float32/float64 alternating, to a float64 vector and back.

    ``vector_to_parameters`` and ``_unflatten_dense_tensors`` hand back float64 views
    (no cast back); the casting torch rebuild is ``time_torch_leafwise_copy_``.
    """

    def _build(self):
        self._setup_large(flat_mixed_tree(), flat_mixed_tree(seed=1))


class FlatMixed2T(_TwoThreads, _Bandwidth):
    """(c) with 2 OpenMP threads: fluxtree's default nthreads, torch at 2 threads."""

    _build = FlatMixed._build

    def setup(self):
        _Bandwidth.setup(self)
        self._two_threads()

