"""Derivatives through layers, losses and Restructure: seed 000's example, finite differences,
JAX, ties, BatchNorm's modes and running statistics, Gauss-Newton, user layers."""
import warnings

import numpy as np
import pytest

import fluxtree as ft
from fluxtree import _tracing
from fluxtree.nn import BatchNorm, Chain, Dense, Dropout
from fluxtree.nn import testmode_ as to_test_mode

ACTIVATIONS = [None, ft.relu, ft.tanh, ft.sigmoid, ft.softplus, ft.gelu, ft.elu, ft.leakyrelu,
               ft.swish]


def fd_gradient(f, v, h=1e-6):
    g = np.zeros_like(v)
    for i in range(v.size):
        e = np.zeros_like(v)
        e[i] = h
        g[i] = (f(v + e) - f(v - e)) / (2 * h)
    return g


def fd_hvp(f, v, u, h=1e-5):
    grad = lambda w: ft.gradient(f, w)[0]  # noqa: E731
    return (grad(v + h * u) - grad(v - h * u)) / (2 * h)


def rel_err(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


def mlp(act=ft.tanh, bn=False, seed=0, widths=(3, 5, 4, 2)):
    rng = np.random.default_rng(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        layers.append(Dense(a, b, None if last else act, rng=rng, dtype=np.float64))
        if bn and not last:
            layers.append(BatchNorm(b))
    m = Chain(*layers)
    # BatchNorm parameters are float32 by default: make them float64 and non-trivial
    return ft.fmap(lambda a: a.astype(np.float64) + 0.1 * rng.standard_normal(a.shape)
                   if isinstance(a, np.ndarray) else a, m)


# ----------------------------------------------------------------------------- seed 000
def test_seed_nested_gradient_flat_gradient_and_hessian():
    rng = np.random.default_rng(1)
    model = Chain(Dense(2, 1, ft.tanh, rng=rng), Dense(1, 1, rng=rng))
    flat, rebuild = ft.destructure(model)
    assert flat.dtype == np.float32 and flat.shape == (5,)
    x = rng.random((16, 2), dtype=np.float32)
    grad = ft.gradient(lambda m: ft.losses.sum_abs2(m(x)), model)
    assert isinstance(grad, tuple) and len(grad) == 1
    layers = grad[0]["layers"]
    assert isinstance(layers, tuple) and len(layers) == 2
    assert set(layers[0]) == {"weight", "bias", "activation"} and layers[0]["activation"] is None
    assert layers[0]["weight"].shape == (1, 2) and layers[0]["weight"].dtype == np.float32

    def loss(v):
        return np.sum(rebuild(v)(x) ** 2)

    small = ft.gradient(loss, flat)
    assert isinstance(small, tuple) and small[0].shape == (5,) and small[0].dtype == np.float32
    g_nested, re_g = ft.destructure(grad)
    assert repr(re_g) == "Restructure(tuple, ..., 5)"
    np.testing.assert_allclose(g_nested, small[0], rtol=1e-5)

    H = ft.hessian(loss, flat)
    assert H.shape == (5, 5) and H.dtype == np.float32
    np.testing.assert_allclose(H, H.T, rtol=1e-4, atol=1e-4)
    cols = np.stack([ft.hvp(loss, flat, e) for e in np.eye(5, dtype=np.float32)], axis=1)
    np.testing.assert_allclose(H, cols, rtol=1e-5, atol=1e-5)
    # the float64 version agrees with finite differences of the gradient
    f64 = ft.f64(model)
    flat64, re64 = ft.destructure(f64)
    x64 = x.astype(np.float64)
    loss64 = lambda v: np.sum(re64(v)(x64) ** 2)  # noqa: E731
    H64 = ft.hessian(loss64, flat64)
    fd = np.stack([fd_hvp(loss64, flat64, e) for e in np.eye(5)], axis=1)
    assert rel_err(H64, fd) < 1e-6


# ----------------------------------------------------------------------------- first order
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: "identity" if a is None else a.name)
def test_dense_gradient_matches_finite_differences(act):
    m = mlp(act, seed=3)
    flat, re = ft.destructure(m)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 3)) + 0.3       # away from relu's kink at 0 (almost surely)
    y = rng.standard_normal((6, 2))
    f = lambda v: float(ft.losses.mse(re(v)(x), y))  # noqa: E731
    g = ft.gradient(lambda v: ft.losses.mse(re(v)(x), y), flat)[0]
    assert rel_err(g, fd_gradient(f, flat)) < 1e-6


@pytest.mark.parametrize("mode", ["train", "test"])
def test_batchnorm_chain_gradient_matches_finite_differences(mode):
    m = mlp(ft.tanh, bn=True, seed=5)
    if mode == "test":
        to_test_mode(m)
    flat, re = ft.destructure(m)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 3))
    y = rng.standard_normal((8, 2))
    with ft.nn.mode.frozen_stats():
        g = ft.autodiff.linearize(lambda v: ft.losses.mse(re(v)(x), y), flat).gradient()

    def f(v):
        with ft.nn.training(), ft.nn.mode.frozen_stats():
            return float(ft.losses.mse(re(v)(x), y))

    assert rel_err(g, fd_gradient(f, flat)) < 1e-6


def test_gradient_updates_running_statistics_and_hvp_does_not():
    m = mlp(ft.relu, bn=True, seed=7)
    bn = m[1]
    x = np.random.default_rng(8).standard_normal((10, 3))
    before = bn.running_mean.copy(), bn.running_var.copy()
    flat, re = ft.destructure(m)
    f = lambda v: ft.losses.sum_abs2(re(v)(x))  # noqa: E731
    ft.hvp(f, flat, np.ones_like(flat))
    ft.hessian(f, flat)
    ft.jvp(lambda v: re(v)(x), flat, np.ones_like(flat))
    np.testing.assert_array_equal(bn.running_mean, before[0])
    np.testing.assert_array_equal(bn.running_var, before[1])
    ft.gradient(lambda m: ft.losses.sum_abs2(m(x)), m)
    assert not np.array_equal(bn.running_mean, before[0])


def test_tied_dense_used_twice_sums_gradients():
    """Flux#1767: the same Dense in two places; the flat gradient is the sum of the uses."""
    rng = np.random.default_rng(9)
    d = Dense(3, 3, ft.tanh, rng=rng, dtype=np.float64)
    model = {"a": d, "b": d}
    flat, re = ft.destructure(model)
    assert flat.size == 12
    x = rng.standard_normal((4, 3))
    g_flat = ft.gradient(lambda v: np.sum(re(v)["b"](re(v)["a"](x))), flat)[0]
    g = ft.gradient(lambda m: np.sum(m["b"](m["a"](x))), model)[0]
    assert g["a"]["weight"] is g["b"]["weight"]
    np.testing.assert_allclose(g_flat, ft.destructure(g)[0], rtol=1e-12)
    f = lambda v: float(np.sum(re(v)["b"](re(v)["a"](x))))  # noqa: E731
    assert rel_err(g_flat, fd_gradient(f, flat)) < 1e-6


def test_dropout_in_gradient_uses_one_mask():
    d = Dropout(0.5, rng=np.random.default_rng(0))
    x = np.arange(1.0, 9.0).reshape(2, 4)
    val, (g,) = ft.value_and_gradient(lambda x: np.sum(d(x) * x), x)
    # y = mask * x * x  ->  dy/dx = 2 mask x, and the value is sum(mask x^2)
    mask = g / (2 * x)
    np.testing.assert_allclose(val, np.sum(mask * x * x))
    assert set(np.unique(mask)) <= {0.0, 2.0}


# ----------------------------------------------------------------------------- second order
@pytest.mark.parametrize("bn", [False, True])
def test_hvp_matches_finite_differences_and_is_symmetric(bn):
    m = mlp(ft.softplus, bn=bn, seed=11)
    flat, re = ft.destructure(m)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((7, 3))
    y = np.eye(2)[rng.integers(0, 2, 7)]
    f = lambda v: ft.losses.logitcrossentropy(re(v)(x), y)  # noqa: E731
    u, w = rng.standard_normal((2, flat.size))
    Hu = ft.hvp(f, flat, u)
    assert rel_err(Hu, fd_hvp(f, flat, u)) < 1e-6
    Hw = ft.hvp(f, flat, w)
    assert abs(w @ Hu - u @ Hw) <= 1e-10 * max(1.0, abs(w @ Hu))
    block = ft.hvp(f, flat, np.stack([u, w], axis=1))
    np.testing.assert_allclose(block, np.stack([Hu, Hw], axis=1), rtol=1e-10, atol=1e-12)


def test_hvp_matches_torch_func():
    """Against ``torch.func.jvp(torch.func.grad(f))`` (JAX runs in a child process in
    test_autodiff_ops.py: importing it here would make later forks warn)."""
    torch = pytest.importorskip("torch")
    m = mlp(ft.tanh, seed=13)
    flat, re = ft.destructure(m)
    rng = np.random.default_rng(14)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    shapes = [p.shape for p in ft.trainables(m)]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def ft_torch(v):
        h, off = xt, 0
        for i in range(3):
            n = int(np.prod(shapes[2 * i]))
            W = v[off:off + n].reshape(shapes[2 * i])
            off += n
            b = v[off:off + shapes[2 * i + 1][0]]
            off += b.numel()
            h = h @ W.T + b
            if i < 2:
                h = torch.tanh(h)
        return torch.mean((h - yt) ** 2)

    u = rng.standard_normal(flat.size)
    f = lambda v: ft.losses.mse(re(v)(x), y)  # noqa: E731
    vt, ut = torch.from_numpy(flat.copy()), torch.from_numpy(u)
    with warnings.catch_warnings():       # torch.func's first use warns about torch.jit
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = torch.func.jvp(torch.func.grad(ft_torch), (vt,), (ut,))[1].numpy()
        expected_grad = torch.func.grad(ft_torch)(vt).numpy()
    assert rel_err(ft.hvp(f, flat, u), expected) < 1e-8
    assert rel_err(ft.gradient(f, flat)[0], expected_grad) < 1e-10


def test_gauss_newton_is_positive_semidefinite():
    rng = np.random.default_rng(15)
    for seed in range(3):
        m = mlp(ft.tanh, bn=seed == 2, seed=seed)
        flat, re = ft.destructure(m)
        x = rng.standard_normal((6, 3))
        y = np.eye(2)[rng.integers(0, 2, 6)]
        lin = ft.linearize(lambda z: ft.losses.logitcrossentropy(z, y), flat,
                           inner=lambda v: re(v)(x))
        V = rng.standard_normal((flat.size, 4))
        G = V.T @ lin.gauss_newton_vp(V)
        assert np.min(np.linalg.eigvalsh((G + G.T) / 2)) > -1e-10


# ----------------------------------------------------------------------------- user layers
@ft.functor
class Scale:
    """A user layer with only first-order rules: y = x * s."""

    def __init__(self, s):
        self.s = s

    def __call__(self, x):
        if _tracing.any_traced(x, self.s):
            return _tracing.record(self, (x, self.s))
        return self.forward((x, self.s))[0]

    def forward(self, inputs):
        x, s = inputs
        return x * s, (x, s)

    def backward(self, saved, dy, needs):
        x, s = saved
        return dy * s, (dy * x).sum(axis=0)

    def tangent(self, saved, t):
        x, s = saved
        out = 0
        if t[0] is not None:
            out = out + t[0] * s
        if t[1] is not None:
            out = out + x * t[1][:, None, :]
        return out

    def __repr__(self):
        return "Scale()"


def test_user_layer_first_order_only():
    layer = Scale(np.array([2.0, 3.0]))
    x = np.array([[1.0, 1.0], [2.0, -1.0]])
    (g,) = ft.gradient(lambda m: np.sum(m(x) ** 2), layer)
    np.testing.assert_allclose(g["s"], 2 * np.sum(x * x, axis=0) * layer.s)
    flat, re = ft.destructure(layer)
    with pytest.raises(TypeError, match=r"Scale\(\) has no second-order rule"):
        ft.hvp(lambda v: np.sum(re(v)(x) ** 2), flat, np.ones(2))


def test_dropout_in_hvp_leaves_the_generator_and_repeats_its_mask():
    d = Dropout(0.5, rng=np.random.default_rng(3))
    x = np.linspace(0.5, 2.0, 12)
    state = d.rng.bit_generator.state
    f = lambda v: np.sum(d(v) ** 3)  # noqa: E731
    h1 = ft.hvp(f, x, np.ones_like(x))
    h2 = ft.hvp(f, x, np.ones_like(x))
    np.testing.assert_array_equal(h1, h2)
    assert d.rng.bit_generator.state == state
    assert np.count_nonzero(h1) < x.size           # some entries were dropped
    ft.gradient(f, x)                               # a training step draws: the state moves
    assert d.rng.bit_generator.state != state
