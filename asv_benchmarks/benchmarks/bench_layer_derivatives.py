"""Layers, forward + backward: ``Dense`` and ``BatchNorm`` against PyTorch, jitted JAX and
NumPy, float32, at the sizes of ``bench_layers.py``.

Each case computes the output and the gradients with respect to the input and every
parameter for a given output cotangent ``dy``:

- fluxtree: the layer's op rules (``forward`` then ``backward``), what the tape runs;
- torch: the functional layer and ``torch.autograd.grad(y, inputs, dy)``;
- jax: ``jax.jit`` of ``jax.vjp`` applied to ``dy``;
- NumPy: the backward formulas spelled out.

Dense uses ``tanh``; BatchNorm runs in training mode (batch statistics; its running
statistics are left alone: ``frozen_stats``, torch without running buffers).
Target (derivatives issue): fluxtree no slower than the fastest anchor at every size.
"""
from __future__ import annotations

from .bench_layers import BN_SIZES, DENSE_SIZES, EPS
from .common import Benchmark, F, ft, jax, jnp, need_jax, need_torch, np, torch

NEEDS = (True, True, True)


def _dense_setup(name: str) -> tuple:
    n_in, n_out, batch = DENSE_SIZES[name]
    rng = np.random.default_rng(0)
    layer = ft.Dense(n_in, n_out, ft.tanh, rng=rng)
    x = rng.standard_normal((batch, n_in), dtype=np.float32)
    dy = rng.standard_normal((batch, n_out), dtype=np.float32)
    return layer, x, dy


def _bn_setup(name: str) -> tuple:
    shape = BN_SIZES[name]
    rng = np.random.default_rng(0)
    layer = ft.BatchNorm(shape[1], active=True)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    return layer, x, dy


class DenseForwardBackward(Benchmark):
    params = [list(DENSE_SIZES)]
    param_names = ["size"]

    def setup(self, name: str) -> None:
        self.layer, self.x, self.dy = _dense_setup(name)
        self.inputs = (self.x, self.layer.weight, self.layer.bias)

    def time_fluxtree(self, name: str) -> None:
        y, saved = self.layer.forward(self.inputs)
        self.layer.backward(saved, self.dy, NEEDS)

    def time_numpy(self, name: str) -> None:
        W, b = self.layer.weight, self.layer.bias
        y = np.tanh(self.x @ W.T + b)
        delta = self.dy * (1 - y * y)
        delta @ W, delta.T @ self.x, delta.sum(axis=0)


def _torch_setup(case: Benchmark, name: str) -> None:
    """The case's inputs as torch leaf tensors that require gradients, and ``dy``."""
    need_torch()
    super(type(case), case).setup(name)
    torch.set_num_threads(1)
    case.t = [torch.from_numpy(a.copy()).requires_grad_(True) for a in case.inputs]
    case.tdy = torch.from_numpy(case.dy)


class DenseForwardBackwardTorch(DenseForwardBackward):
    def setup(self, name: str) -> None:
        _torch_setup(self, name)

    def time_torch(self, name: str) -> None:
        x, W, b = self.t
        y = torch.tanh(F.linear(x, W, b))
        torch.autograd.grad(y, (x, W, b), self.tdy)


class DenseForwardBackwardJax(DenseForwardBackward):
    def setup(self, name: str) -> None:
        need_jax()
        super().setup(name)

        def f(x, W, b):
            return jnp.tanh(x @ W.T + b)

        def fb(x, W, b, dy):
            y, vjp = jax.vjp(f, x, W, b)
            return y, vjp(dy)

        self.fb = jax.jit(fb)
        self.j = [jnp.asarray(a) for a in (*self.inputs, self.dy)]
        jax.block_until_ready(self.fb(*self.j))

    def time_jax(self, name: str) -> None:
        jax.block_until_ready(self.fb(*self.j))


class BatchNormForwardBackward(Benchmark):
    params = [list(BN_SIZES)]
    param_names = ["shape"]

    def setup(self, name: str) -> None:
        self.layer, self.x, self.dy = _bn_setup(name)
        self.inputs = (self.x, self.layer.gamma, self.layer.beta)
        self.frozen = ft.nn.mode.frozen_stats()
        self.frozen.__enter__()

    def teardown(self, name: str) -> None:
        self.frozen.__exit__(None, None, None)

    def time_fluxtree(self, name: str) -> None:
        y, saved = self.layer.forward(self.inputs)
        self.layer.backward(saved, self.dy, NEEDS)

    def time_numpy(self, name: str) -> None:
        x, g, dy = self.x, self.layer.gamma, self.dy
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = x.mean(axis=axes, keepdims=True)
        xc = x - mean
        inv = 1 / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + EPS)
        xh = xc * inv
        y = xh * g.reshape(shape) + self.layer.beta.reshape(shape)
        dxh = dy * g.reshape(shape)
        dx = inv * (dxh - dxh.mean(axis=axes, keepdims=True)
                    - xh * (dxh * xh).mean(axis=axes, keepdims=True))
        y, dx, (dy * xh).sum(axis=axes), dy.sum(axis=axes)


class BatchNormForwardBackwardTorch(BatchNormForwardBackward):
    def setup(self, name: str) -> None:
        _torch_setup(self, name)

    def time_torch(self, name: str) -> None:
        x, g, b = self.t
        y = F.batch_norm(x, None, None, g, b, training=True, eps=EPS)
        torch.autograd.grad(y, (x, g, b), self.tdy)


class BatchNormForwardBackwardJax(BatchNormForwardBackward):
    def setup(self, name: str) -> None:
        need_jax()
        super().setup(name)
        nd = self.x.ndim
        axes = (0,) + tuple(range(2, nd))
        shape = (1, -1) + (1,) * (nd - 2)

        def f(x, g, b):
            mean = x.mean(axis=axes, keepdims=True)
            var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
            return (x - mean) / jnp.sqrt(var + EPS) * g.reshape(shape) + b.reshape(shape)

        def fb(x, g, b, dy):
            y, vjp = jax.vjp(f, x, g, b)
            return y, vjp(dy)

        self.fb = jax.jit(fb)
        self.j = [jnp.asarray(a) for a in (*self.inputs, self.dy)]
        jax.block_until_ready(self.fb(*self.j))

    def time_jax(self, name: str) -> None:
        jax.block_until_ready(self.fb(*self.j))
