"""Derivatives: gradient and Hessian-vector products of an MLP loss, fluxtree against
PyTorch (``torch.func`` and double backward) and jitted JAX, float64.

Models (derivatives issue): ``Chain(Dense(64 => 128, tanh), Dense(128 => 128, tanh),
Dense(128 => 10))`` at batch 256 ("small") and ``784 => 256 => 256 => 10`` at batch 512
("large"); loss ``mse(m(x), y)``; everything differentiated with respect to the flat
parameter vector ``v`` (``f(v) = mse(re(v)(x), y)``), which is what scipy's optimisers see.

- ``gradient``: one gradient at ``v``.
- ``hvp``: one exact Hessian-vector product at a new point (forward, tangent, backward and
  tangent-backward sweeps: the full cost, as the anchors pay it).
- ``hvp_reuse``: one more product at a point already linearised (``Linearization.hvp``;
  scipy's trust-region methods ask for several per point).
- ``hvp_block8``: 8 products in one sweep (``v`` of shape (n, 8)).

Anchors: ``jax.jit(jax.grad(f))`` and ``jax.jit(jvp(grad(f)))`` (``jax_enable_x64``);
``torch.func.grad`` / ``torch.func.jvp(torch.func.grad(f))`` and autograd's double
backward (``create_graph=True``), torch pinned to the same thread count.
Targets: HVP <= 2x fluxtree's gradient; gradient and HVP faster than the fastest anchor;
a block of 8 <= 4x one HVP.  Threads follow ``common.py`` (one by default); run with
``FLUXTREE_BENCH_THREADS=2`` on an idle machine for the two-core figures of
``docs/performance.md``.
"""
from __future__ import annotations

from .common import THREADS, Benchmark, ft, jax, jnp, median_seconds, need_jax, need_torch, np, torch

#: name -> (layer widths, batch)
SIZES = {"small": ((64, 128, 128, 10), 256), "large": ((784, 256, 256, 10), 512)}


def build(name: str) -> tuple:
    """The fluxtree model, its flat vector and Restructure, data, and a direction."""
    widths, batch = SIZES[name]
    rng = np.random.default_rng(0)
    layers = [ft.Dense(a, b, ft.tanh if i < len(widths) - 2 else None, rng=rng, dtype=np.float64)
              for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))]
    model = ft.Chain(*layers)
    flat, re = ft.destructure(model)
    x = rng.standard_normal((batch, widths[0]))
    y = rng.standard_normal((batch, widths[-1]))
    u = rng.standard_normal(flat.size)
    return widths, model, flat, re, x, y, u


def fluxtree_loss(re: ft.Restructure, x: np.ndarray, y: np.ndarray):
    return lambda v: ft.losses.mse(re(v)(x), y)


def _jax_fns(widths, flat, re, x, y):
    jax.config.update("jax_enable_x64", True)
    shapes = [(p.shape, p.size) for p in ft.trainables(re(flat))]
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def f(v):
        h, off = xj, 0
        n_layers = len(widths) - 1
        for i in range(n_layers):
            (wshape, wn), (_, bn) = shapes[2 * i], shapes[2 * i + 1]
            W = v[off:off + wn].reshape(wshape)
            off += wn
            b = v[off:off + bn]
            off += bn
            h = h @ W.T + b
            if i < n_layers - 1:
                h = jnp.tanh(h)
        return jnp.mean((h - yj) ** 2)

    grad = jax.jit(jax.grad(f))
    hvp = jax.jit(lambda v, u: jax.jvp(jax.grad(f), (v,), (u,))[1])
    return grad, hvp


def _torch_fns(widths, flat, re, x, y):
    torch.set_num_threads(max(1, int(THREADS)))
    shapes = [p.shape for p in ft.trainables(re(flat))]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def f(v):
        h, off = xt, 0
        n_layers = len(widths) - 1
        for i in range(n_layers):
            wshape, bshape = shapes[2 * i], shapes[2 * i + 1]
            wn, bn = int(np.prod(wshape)), int(np.prod(bshape))
            W = v[off:off + wn].reshape(wshape)
            off += wn
            b = v[off:off + bn]
            off += bn
            h = torch.nn.functional.linear(h, W, b)
            if i < n_layers - 1:
                h = torch.tanh(h)
        return torch.mean((h - yt) ** 2)

    func_grad = torch.func.grad(f)

    def func_hvp(v, u):
        return torch.func.jvp(func_grad, (v,), (u,))[1]

    def double_backward(v, u):
        v = v.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(f(v), v, create_graph=True)
        (h,) = torch.autograd.grad(g, v, grad_outputs=u)
        return h

    return func_grad, func_hvp, double_backward


class MLPDerivatives(Benchmark):
    params = [list(SIZES)]
    param_names = ["size"]

    def setup(self, name: str) -> None:
        self.widths, self.model, self.flat, self.re, self.x, self.y, self.u = build(name)
        self.f = fluxtree_loss(self.re, self.x, self.y)
        self.lin = ft.linearize(self.f, self.flat)
        self.lin.hvp(self.u)
        self.U8 = np.random.default_rng(1).standard_normal((self.flat.size, 8))

    def time_fluxtree_gradient(self, name: str) -> None:
        ft.gradient(self.f, self.flat)

    def time_fluxtree_hvp(self, name: str) -> None:
        ft.hvp(self.f, self.flat, self.u)

    def time_fluxtree_hvp_reuse(self, name: str) -> None:
        self.lin.hvp(self.u)

    def time_fluxtree_hvp_block8(self, name: str) -> None:
        ft.hvp(self.f, self.flat, self.U8)

    def track_hvp_over_gradient(self, name: str) -> float:
        return (median_seconds(lambda: ft.hvp(self.f, self.flat, self.u))
                / median_seconds(lambda: ft.gradient(self.f, self.flat)))

    def track_block8_over_hvp(self, name: str) -> float:
        return (median_seconds(lambda: ft.hvp(self.f, self.flat, self.U8))
                / median_seconds(lambda: ft.hvp(self.f, self.flat, self.u)))


class MLPDerivativesJax(MLPDerivatives):
    def setup(self, name: str) -> None:
        need_jax()
        super().setup(name)
        self.jgrad, self.jhvp = _jax_fns(self.widths, self.flat, self.re, self.x, self.y)
        self.vj, self.uj = jnp.asarray(self.flat), jnp.asarray(self.u)
        self.jgrad(self.vj).block_until_ready()
        self.jhvp(self.vj, self.uj).block_until_ready()

    def time_jax_gradient(self, name: str) -> None:
        self.jgrad(self.vj).block_until_ready()

    def time_jax_hvp(self, name: str) -> None:
        self.jhvp(self.vj, self.uj).block_until_ready()

    def track_gradient_ratio_to_jax(self, name: str) -> float:
        return (median_seconds(lambda: ft.gradient(self.f, self.flat))
                / median_seconds(lambda: self.jgrad(self.vj).block_until_ready()))

    def track_hvp_ratio_to_jax(self, name: str) -> float:
        return (median_seconds(lambda: ft.hvp(self.f, self.flat, self.u))
                / median_seconds(lambda: self.jhvp(self.vj, self.uj).block_until_ready()))


class MLPDerivativesTorch(MLPDerivatives):
    def setup(self, name: str) -> None:
        need_torch()
        super().setup(name)
        self.tgrad, self.thvp, self.tdouble = _torch_fns(self.widths, self.flat, self.re,
                                                         self.x, self.y)
        self.vt, self.ut = torch.from_numpy(self.flat.copy()), torch.from_numpy(self.u)

    def time_torch_func_gradient(self, name: str) -> None:
        self.tgrad(self.vt)

    def time_torch_func_hvp(self, name: str) -> None:
        self.thvp(self.vt, self.ut)

    def time_torch_double_backward_hvp(self, name: str) -> None:
        self.tdouble(self.vt, self.ut)

    def track_hvp_ratio_to_torch(self, name: str) -> float:
        best = min(median_seconds(lambda: self.thvp(self.vt, self.ut)),
                   median_seconds(lambda: self.tdouble(self.vt, self.ut)))
        return median_seconds(lambda: ft.hvp(self.f, self.flat, self.u)) / best
