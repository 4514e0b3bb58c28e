"""Layers: ``Dense`` and ``BatchNorm`` forward against PyTorch CPU, jitted JAX and NumPy.

Cases (layers issue):

- ``DenseForward``: ``Dense(in => out, tanh)`` on float32 ``x`` of shape (batch, in), at
  (64 => 64, batch 32), (784 => 256, batch 128) and (1024 => 1024, batch 256).
- ``BatchNormForward``: ``BatchNorm(C)`` in training mode (``ft.trainmode_``; batch
  statistics, running statistics updated) on float32 ``x`` of shape (32, 64), (256, 1024)
  [batch 256, 1024 channels] and (64, 64, 32, 32) [NCHW].

Targets: fluxtree no slower than the fastest of torch, jax and NumPy at every size
(``track_ratio_to_best_anchor`` <= 1), and >= 1.5x faster than the fastest at the smallest
sizes, where per-call overhead dominates (ratio <= 1/1.5 at 64 => 64 batch 32 and at
BatchNorm (32, 64)).

Anchors (all in the same class as the fluxtree method, so every ratio comes from one machine
and one run):

- torch: ``F.linear`` + ``torch.tanh`` and an ``nn.Linear`` module + ``torch.tanh``, with
  autograd off (``torch.set_grad_enabled(False)`` in ``setup``, i.e. inside ``no_grad``);
  ``F.batch_norm(training=True)`` with running statistics and an ``nn.BatchNorm1d/2d``
  module in training mode.
- jax: ``jax.jit`` of ``jnp.tanh(x @ W.T + b)``; a jitted batch norm (mean and biased
  variance over every axis but 1, running statistics returned updated); inputs already on
  the device, ``block_until_ready`` on the result.
- NumPy: ``np.tanh(x @ W.T + b)``; the batch norm spelled out with ``mean``/``var``.

``time_fluxtree_kernel`` times the compiled kernel alone (``_dense.dense_forward`` /
``_batchnorm.batchnorm_forward`` into a preallocated ``out``), so that the layer's Python
overhead is ``time_fluxtree - time_fluxtree_kernel`` (allocation of ``out`` included).

Threads: ``common.py`` pins BLAS/OpenMP and XLA's CPU pool (the CPU affinity while jax
starts) to 1, and here torch too.  The ``*2T`` classes take the two largest sizes with 2
threads: threadpoolctl raises every
BLAS/OpenMP pool to 2 (fluxtree's gemm through SciPy's OpenBLAS and its OpenMP epilogue,
NumPy's OpenBLAS) and ``torch.set_num_threads(2)``.  XLA's pool is fixed when jax starts,
so jax runs only in the 1-thread classes.
"""
from __future__ import annotations

from .common import (
    THREADS,
    Benchmark,
    F,
    ft,
    jax,
    jnp,
    median_seconds,
    need_jax,
    need_torch,
    np,
    threadpool_limits,
    torch,
)

try:
    from fluxtree._kernels import _batchnorm, _dense
except Exception:  # pragma: no cover - private modules; only the diagnostic needs them
    _batchnorm = _dense = None

EPS = 1e-5
MOMENTUM = 0.1
TANH = 2                       # the kernels' activation code for tanh (act.h)

#: name -> (in, out, batch)
DENSE_SIZES = {
    "64x64_b32": (64, 64, 32),
    "784x256_b128": (784, 256, 128),
    "1024x1024_b256": (1024, 1024, 256),
}
#: name -> input shape (channels on axis 1)
BN_SIZES = {
    "32x64": (32, 64),
    "256x1024": (256, 1024),
    "64x64x32x32": (64, 64, 32, 32),
}
DENSE_LARGE = list(DENSE_SIZES)[-2:]
BN_LARGE = list(BN_SIZES)[-2:]


def _no_jax(*params):
    raise NotImplementedError("XLA's thread pool is fixed at start: jax runs only in the "
                              "1-thread classes")


def _need_kernels(*params):
    if _dense is None or _batchnorm is None:
        raise NotImplementedError("fluxtree._kernels is not importable")


# ----------------------------------------------------------------------------
# builders (shared with the scratch timing scripts)
# ----------------------------------------------------------------------------
def dense_case(size: str, seed: int = 0) -> dict:
    """The fluxtree layer, its input and the raw arrays for the anchors."""
    n_in, n_out, batch = DENSE_SIZES[size]
    rng = np.random.default_rng(seed)
    layer = ft.Dense(n_in, n_out, ft.tanh, rng=rng)
    w, b = layer.weight, rng.standard_normal(n_out).astype(np.float32) * 0.1
    layer = ft.Dense(w, b, ft.tanh)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    return {"layer": layer, "x": x, "w": w, "b": b,
            "out": np.empty((batch, n_out), np.float32)}


def bn_case(size: str, seed: int = 0) -> dict:
    """``trainmode_(BatchNorm(C))``, its input and the arrays for the anchors."""
    shape = BN_SIZES[size]
    c = shape[1]
    rng = np.random.default_rng(seed)
    layer = ft.trainmode_(ft.BatchNorm(c, eps=EPS, momentum=MOMENTUM))
    layer.gamma[...] = 1 + 0.1 * rng.standard_normal(c)
    layer.beta[...] = 0.1 * rng.standard_normal(c)
    x = (2 * rng.standard_normal(shape) + 0.5).astype(np.float32)
    return {"layer": layer, "x": x, "gamma": layer.gamma.copy(), "beta": layer.beta.copy(),
            "rm": np.zeros(c, np.float32), "rv": np.ones(c, np.float32),
            "x3": x.reshape(shape[0], c, -1), "out3": np.empty((shape[0], c, x[0, 0].size),
                                                                 np.float32)}


def numpy_dense(x, w, b):
    return np.tanh(x @ w.T + b)


def numpy_batchnorm(x, gamma, beta, rm, rv, eps=EPS, momentum=MOMENTUM):
    """Training-mode batch norm over every axis but 1; updates rm/rv in place."""
    axes = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    m = x.size // x.shape[1]
    rm *= 1 - momentum
    rm += momentum * mean
    rv *= 1 - momentum
    rv += (momentum * m / (m - 1)) * var
    scale = gamma / np.sqrt(var + eps)
    return (x - mean.reshape(shape)) * scale.reshape(shape) + beta.reshape(shape)


def jax_dense_fn():
    return jax.jit(lambda x, w, b: jnp.tanh(x @ w.T + b))


def jax_batchnorm_fn(eps=EPS, momentum=MOMENTUM):
    def bn(x, gamma, beta, rm, rv):
        axes = (0, *range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = x.mean(axis=axes)
        var = x.var(axis=axes)
        m = x.size // x.shape[1]
        y = ((x - mean.reshape(shape)) * jax.lax.rsqrt(var.reshape(shape) + eps)
             * gamma.reshape(shape) + beta.reshape(shape))
        return (y, (1 - momentum) * rm + momentum * mean,
                (1 - momentum) * rv + (momentum * m / (m - 1)) * var)
    return jax.jit(bn)


#: per-process memo of the set-up state (asv re-runs setup before every sample, asv#966)
_STATE: dict = {}


class _LayerCase(Benchmark):
    """Shared setup: build once per process, restore from ``_STATE`` afterwards."""

    uses_jax = True
    threads = 1

    def setup(self, size):
        key = (type(self).__name__, size)
        state = _STATE.get(key)
        if state is None:
            self._build(size)
            if torch is not None:
                self._torch_setup()
            if self.uses_jax and jax is not None:
                self._jax_setup()
            state = _STATE[key] = dict(self.__dict__)
        self.__dict__.update(state)
        self._threads()
        if torch is not None:
            self._grad = torch.is_grad_enabled()
            torch.set_grad_enabled(False)       # the same as running inside no_grad()

    def teardown(self, size):
        if torch is not None and hasattr(self, "_grad"):
            torch.set_grad_enabled(self._grad)

    def _threads(self):
        if torch is not None and THREADS != "0":
            torch.set_num_threads(int(THREADS))

    def _build(self, size):
        raise NotImplementedError

    def _torch_setup(self):
        raise NotImplementedError

    def _jax_setup(self):
        raise NotImplementedError

    # the callables, for the ratios --------------------------------------------------
    def _fluxtree(self):
        raise NotImplementedError

    def _anchor_fns(self):
        raise NotImplementedError

    def time_fluxtree(self, size):
        self._fluxtree()()

    def track_ratio_to_best_anchor(self, size):
        """fluxtree / fastest of torch, jax, NumPy (target <= 1; <= 1/1.5 at the smallest)."""
        best = min(median_seconds(fn) for fn in self._anchor_fns().values())
        return median_seconds(self._fluxtree()) / best

    track_ratio_to_best_anchor.unit = "ratio"

    def track_ratio_to_numpy(self, size):
        return median_seconds(self._fluxtree()) / median_seconds(self._anchor_fns()["numpy"])

    track_ratio_to_numpy.unit = "ratio"

    def track_kernel_share(self, size):
        """Kernel-alone time / layer-call time (1 - this is the Python layer's share)."""
        _need_kernels()
        return median_seconds(self._kernel) / median_seconds(self._fluxtree())

    track_kernel_share.unit = "ratio"


# ==========================================================================================
# Dense
# ==========================================================================================
class DenseForward(_LayerCase):
    """``Dense(in => out, tanh)(x)``, float32, one thread."""

    params = [list(DENSE_SIZES)]
    param_names = ["size"]

    def _build(self, size):
        self.__dict__.update(dense_case(size))

    def _torch_setup(self):
        self.tx, self.tw, self.tb = (torch.from_numpy(a) for a in (self.x, self.w, self.b))
        n_out, n_in = self.w.shape
        self.lin = torch.nn.Linear(n_in, n_out)
        with torch.no_grad():
            self.lin.weight.copy_(self.tw)
            self.lin.bias.copy_(self.tb)

    def _jax_setup(self):
        self.jx, self.jw, self.jb = (jax.device_put(a) for a in (self.x, self.w, self.b))
        self.jit_dense = jax_dense_fn()
        self.jit_dense(self.jx, self.jw, self.jb).block_until_ready()      # compile now

    def _fluxtree(self):
        layer, x = self.layer, self.x
        return lambda: layer(x)

    def _kernel(self):
        _dense.dense_forward(self.x, self.w, self.b, TANH, self.out)

    def _anchor_fns(self):
        fns = {"numpy": lambda: numpy_dense(self.x, self.w, self.b)}
        if torch is not None:
            fns["torch"] = lambda: torch.tanh(F.linear(self.tx, self.tw, self.tb))
            fns["torch_module"] = lambda: torch.tanh(self.lin(self.tx))
        if self.uses_jax and jax is not None:
            fns["jax"] = lambda: self.jit_dense(self.jx, self.jw, self.jb).block_until_ready()
        return fns

    def time_fluxtree_kernel(self, size):
        _dense.dense_forward(self.x, self.w, self.b, TANH, self.out)

    time_fluxtree_kernel.setup = _need_kernels

    def time_numpy(self, size):
        numpy_dense(self.x, self.w, self.b)

    def time_torch_functional(self, size):
        torch.tanh(F.linear(self.tx, self.tw, self.tb))

    time_torch_functional.setup = need_torch

    def time_torch_module(self, size):
        torch.tanh(self.lin(self.tx))

    time_torch_module.setup = need_torch

    def time_jax_jit(self, size):
        self.jit_dense(self.jx, self.jw, self.jb).block_until_ready()

    time_jax_jit.setup = need_jax


# ==========================================================================================
# BatchNorm
# ==========================================================================================
class BatchNormForward(_LayerCase):
    """``trainmode_(BatchNorm(C))(x)``, float32, one thread (running statistics updated)."""

    params = [list(BN_SIZES)]
    param_names = ["size"]

    def _build(self, size):
        self.__dict__.update(bn_case(size))

    def _torch_setup(self):
        self.tx = torch.from_numpy(self.x)
        self.tg, self.tbeta = torch.from_numpy(self.gamma), torch.from_numpy(self.beta)
        self.trm, self.trv = torch.from_numpy(self.rm.copy()), torch.from_numpy(self.rv.copy())
        c = self.x.shape[1]
        cls = torch.nn.BatchNorm1d if self.x.ndim <= 3 else torch.nn.BatchNorm2d
        self.tbn = cls(c, eps=EPS, momentum=MOMENTUM).train()
        with torch.no_grad():
            self.tbn.weight.copy_(self.tg)
            self.tbn.bias.copy_(self.tbeta)

    def _jax_setup(self):
        self.jargs = tuple(jax.device_put(a) for a in
                           (self.x, self.gamma, self.beta, self.rm, self.rv))
        self.jit_bn = jax_batchnorm_fn()
        jax.block_until_ready(self.jit_bn(*self.jargs))                    # compile now

    def _fluxtree(self):
        layer, x = self.layer, self.x
        return lambda: layer(x)

    def _kernel(self):
        layer = self.layer
        _batchnorm.batchnorm_forward(self.x3, layer.gamma, layer.beta, layer.running_mean,
                                     layer.running_var, EPS, MOMENTUM, True, 0, self.out3)

    def _torch_functional(self):
        F.batch_norm(self.tx, self.trm, self.trv, self.tg, self.tbeta, training=True,
                     momentum=MOMENTUM, eps=EPS)

    def _anchor_fns(self):
        np_rm, np_rv = self.rm.copy(), self.rv.copy()
        fns = {"numpy": lambda: numpy_batchnorm(self.x, self.gamma, self.beta, np_rm, np_rv)}
        if torch is not None:
            fns["torch"] = self._torch_functional
            fns["torch_module"] = lambda: self.tbn(self.tx)
        if self.uses_jax and jax is not None:
            fns["jax"] = lambda: jax.block_until_ready(self.jit_bn(*self.jargs))
        return fns

    def time_fluxtree_kernel(self, size):
        self._kernel()

    time_fluxtree_kernel.setup = _need_kernels

    def time_numpy(self, size):
        numpy_batchnorm(self.x, self.gamma, self.beta, self.rm, self.rv)

    def time_torch_functional(self, size):
        self._torch_functional()

    time_torch_functional.setup = need_torch

    def time_torch_module(self, size):
        self.tbn(self.tx)

    time_torch_module.setup = need_torch

    def time_jax_jit(self, size):
        jax.block_until_ready(self.jit_bn(*self.jargs))

    time_jax_jit.setup = need_jax


# ==========================================================================================
# two threads, the two largest sizes
# ==========================================================================================
class _TwoThreads:
    """Every BLAS/OpenMP pool (threadpoolctl) and torch at 2 threads; no jax."""

    uses_jax = False

    def _threads(self):
        self._limit = (threadpool_limits(limits=2)
                       if threadpool_limits is not None else None)
        if torch is not None:
            torch.set_num_threads(2)

    def teardown(self, size):
        _LayerCase.teardown(self, size)
        if torch is not None and THREADS != "0":
            torch.set_num_threads(int(THREADS))
        if getattr(self, "_limit", None) is not None:
            self._limit.restore_original_limits()

    def time_jax_jit(self, size):
        pass

    time_jax_jit.setup = _no_jax


class DenseForward2T(_TwoThreads, DenseForward):
    """``DenseForward`` at the two largest sizes with 2 threads."""

    params = [DENSE_LARGE]


class BatchNormForward2T(_TwoThreads, BatchNormForward):
    """``BatchNormForward`` at the two largest sizes with 2 threads."""

    params = [BN_LARGE]
