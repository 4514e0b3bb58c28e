"""The anchors of ``fluxtree bench``: the same scipy fit fed by PyTorch or by JAX.

Each anchor builds the MLP of a spec as a function of one flat parameter vector laid out
as fluxtree's ``destructure`` lays it out (per layer: the weight (out, in) row by row, then
the bias), with the same loss (mean logit cross-entropy).  ``fun`` and ``jac`` at one point
share one value-and-gradient evaluation (the last point is cached by value, as scipy users
do with ``jac=True``); ``hessp`` is the framework's forward-over-reverse product:
``torch.func.jvp(torch.func.grad(f))`` and ``jax.jit`` of ``jax.jvp(jax.grad(f))``, which
recompute the forward pass on every call since neither framework can keep it.

Threads: torch gets ``torch.set_num_threads``; XLA sizes its pool from the CPU affinity
when its backend starts, so jax is imported with the process confined to ``threads`` CPUs
(unless it was imported before).  JAX runs with ``jax_enable_x64`` for float64.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.optimize

from ..optimize import METHODS
from ..optimize._threads import blas_pools

__all__ = ["Feed", "make"]


def _layers(spec: dict[str, Any]) -> list[tuple[int, int]]:
    sizes = [spec["inputs"], *spec["hidden"], spec["outputs"]]
    return [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]


class Feed:
    """fun, jac, hessp (and hess) of one framework, with call counters and a scipy driver."""

    def __init__(self, name: str, x0: np.ndarray, value_and_grad: Callable, hvp: Callable,
                 hessian: Callable, threads: int | None) -> None:
        self.name = name
        self.x0 = x0
        self._vg = value_and_grad
        self._hvp = hvp
        self._hessian = hessian
        self.threads = threads
        self._key: np.ndarray | None = None
        self._val = 0.0
        self._grad = np.empty(0)
        self.nfev = self.njev = self.nhev = 0

    def _at(self, x: np.ndarray) -> None:
        if self._key is None or not np.array_equal(self._key, x):
            self._val, self._grad = self._vg(x)
            self._key = np.array(x)

    def fun(self, x: np.ndarray) -> float:
        self.nfev += 1
        self._at(x)
        return self._val

    def jac(self, x: np.ndarray) -> np.ndarray:
        self.njev += 1
        self._at(x)
        return self._grad.copy()

    def hessp(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        self.nhev += 1
        return self._hvp(x, p)

    def hess(self, x: np.ndarray) -> np.ndarray:
        self.nhev += x.size
        return self._hessian(x)

    def minimize(self, method: str, options: dict, callback: Callable) -> dict[str, Any]:
        """Run scipy from ``x0``; wall time, final x and loss, counts."""
        uses = METHODS[method]
        kwargs: dict[str, Any] = {}
        if "jac" in uses:
            kwargs["jac"] = self.jac
        if "hessp" in uses:
            kwargs["hessp"] = self.hessp
        if "hess" in uses:
            kwargs["hess"] = self.hess
        self.nfev = self.njev = self.nhev = 0
        self._key = None
        t0 = time.perf_counter()
        with blas_pools(self.threads):
            res = scipy.optimize.minimize(self.fun, self.x0.copy(), method=method,
                                          options=options, callback=callback, **kwargs)
        elapsed = time.perf_counter() - t0
        return {"time": elapsed, "x": res.x, "loss": float(res.fun), "fun": self.nfev,
                "jac": self.njev, "hessp": self.nhev}


# ----------------------------------------------------------------------------
# PyTorch
# ----------------------------------------------------------------------------
def _torch(spec: dict[str, Any], x0: np.ndarray, X: np.ndarray, Y: np.ndarray,
           dtype: np.dtype, threads: int | None) -> Feed:
    import torch
    import torch.nn.functional as F
    if threads is not None:
        torch.set_num_threads(threads)
    acts: dict[str, Callable] = {
        "identity": lambda z: z, "relu": torch.relu, "tanh": torch.tanh,
        "sigmoid": torch.sigmoid, "softplus": F.softplus,
        "gelu": lambda z: F.gelu(z, approximate="tanh"), "elu": F.elu,
        "leakyrelu": lambda z: F.leaky_relu(z, 0.01), "swish": F.silu}
    act = acts[spec["activation"]]
    layers = _layers(spec)
    Xt, Yt = torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.ascontiguousarray(Y))

    def loss(theta: Any) -> Any:
        h, off = Xt, 0
        for i, (n_out, n_in) in enumerate(layers):
            W = theta[off:off + n_out * n_in].view(n_out, n_in)
            off += n_out * n_in
            b = theta[off:off + n_out]
            off += n_out
            h = torch.addmm(b, h, W.T)
            if i < len(layers) - 1:
                h = act(h)
        return -(Yt * torch.log_softmax(h, dim=1)).sum(dim=1).mean()

    grad_and_value = torch.func.grad_and_value(loss)
    grad = torch.func.grad(loss)

    def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        g, v = grad_and_value(torch.from_numpy(np.asarray(x, dtype)))
        return float(v), g.numpy().astype(np.float64)

    def hvp(x: np.ndarray, p: np.ndarray) -> np.ndarray:
        out = torch.func.jvp(grad, (torch.from_numpy(np.asarray(x, dtype)),),
                             (torch.from_numpy(np.asarray(p, dtype)),))
        return out[1].numpy().astype(np.float64)

    def hessian(x: np.ndarray) -> np.ndarray:
        return torch.func.hessian(loss)(torch.from_numpy(np.asarray(x, dtype))).numpy().astype(
            np.float64)

    value_and_grad(x0)                      # first-call set-up before any clock starts
    hvp(x0, x0)
    return Feed("torch", x0, value_and_grad, hvp, hessian, threads)


# ----------------------------------------------------------------------------
# JAX
# ----------------------------------------------------------------------------
def import_jax_pinned(threads: int | None) -> Any:
    """Import jax and start its CPU backend with XLA's pool sized to ``threads`` CPUs.

    XLA sizes its pool from the CPU affinity when the backend starts (it ignores
    ``OMP_NUM_THREADS`` and, in jax 0.10, ``XLA_FLAGS``), so the process is confined to
    ``threads`` CPUs while jax starts, then the affinity is restored.  The asv suite uses
    this too.
    """
    if "jax" in sys.modules:
        return sys.modules["jax"]
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    cpus = os.sched_getaffinity(0) if threads and hasattr(os, "sched_setaffinity") else None
    if cpus is not None and len(cpus) > (threads or 0):
        os.sched_setaffinity(0, set(sorted(cpus)[:threads]))
    else:
        cpus = None
    try:
        import jax
        import jax.numpy as jnp
        jax.jit(lambda a: a @ a.T + 1)(jnp.ones((8, 8), jnp.float32)).block_until_ready()
    finally:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
    return jax


def _jax(spec: dict[str, Any], x0: np.ndarray, X: np.ndarray, Y: np.ndarray,
         dtype: np.dtype, threads: int | None) -> Feed:
    jax = import_jax_pinned(threads)
    if dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    acts: dict[str, Callable] = {
        "identity": lambda z: z, "relu": jax.nn.relu, "tanh": jnp.tanh,
        "sigmoid": jax.nn.sigmoid, "softplus": jax.nn.softplus,
        "gelu": lambda z: jax.nn.gelu(z, approximate=True), "elu": jax.nn.elu,
        "leakyrelu": lambda z: jax.nn.leaky_relu(z, 0.01), "swish": jax.nn.silu}
    act = acts[spec["activation"]]
    layers = _layers(spec)
    Xj, Yj = jnp.asarray(X), jnp.asarray(Y)

    def loss(theta: Any) -> Any:
        h, off = Xj, 0
        for i, (n_out, n_in) in enumerate(layers):
            W = theta[off:off + n_out * n_in].reshape(n_out, n_in)
            off += n_out * n_in
            b = theta[off:off + n_out]
            off += n_out
            h = h @ W.T + b
            if i < len(layers) - 1:
                h = act(h)
        return -jnp.mean(jnp.sum(Yj * jax.nn.log_softmax(h, axis=1), axis=1))

    vg = jax.jit(jax.value_and_grad(loss))
    hv = jax.jit(lambda x, p: jax.jvp(jax.grad(loss), (x,), (p,))[1])
    hs = jax.jit(jax.hessian(loss))

    def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        v, g = vg(jnp.asarray(np.asarray(x, dtype)))
        return float(v), np.array(g, dtype=np.float64)

    def hvp(x: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.array(hv(jnp.asarray(np.asarray(x, dtype)), jnp.asarray(np.asarray(p, dtype))),
                        dtype=np.float64)

    def hessian(x: np.ndarray) -> np.ndarray:
        return np.array(hs(jnp.asarray(np.asarray(x, dtype))), dtype=np.float64)

    value_and_grad(x0)                      # compile before any clock starts
    hvp(x0, x0)
    return Feed("jax", x0, value_and_grad, hvp, hessian, threads)


def make(backend: str, spec: dict[str, Any], X: np.ndarray, Y: np.ndarray, dtype: np.dtype,
         *, x0: np.ndarray, threads: int | None = None) -> Feed:
    """The ``Feed`` of ``backend`` ('torch' or 'jax'); ImportError when it is missing."""
    if spec.get("batchnorm"):
        raise ValueError("the anchors build plain MLPs (Dense layers only), not BatchNorm.")
    build = {"torch": _torch, "jax": _jax}[backend]
    return build(spec, np.asarray(x0, np.float64), np.asarray(X, dtype), np.asarray(Y, dtype),
                 np.dtype(dtype), threads)
