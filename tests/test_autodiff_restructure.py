"""Derivatives through ``Restructure``: SPEC Part B §2.6 cases 17-22 and 31 translated with
Part A (0-based indices, C order, dicts for NamedTuples), the tie rule of Part A 7, the
seed's 5-parameter model (nested gradient, flat gradient, Hessian), mixed precision, Hessian
products against finite differences and JAX, and the Gauss-Newton product.

Models are written with the supported array operations (``Dense`` and its kernels are tested
with the layers); ``Linear`` keeps SPEC's ``(out, in)`` weight and computes ``x @ weight.T``
as a broadcast product and a sum, since traced values have no ``.T``.
"""
from __future__ import annotations

import numpy as np

import fluxtree as ft
from tests.helpers import FooTrainYX, TwoThirdsTrainA
from tests.test_autodiff_ops import (
    EXACT_TOL,
    FD_TOL,
    ORACLE_TOL,
    close,
    fd_gradient,
    fd_hvp,
    jax_oracle,
    seeded,
)


def arr(*xs, dtype=np.float64):
    return np.array(xs, dtype)


def grad_flat(f, v):
    g = ft.gradient(f, np.asarray(v, np.float64))
    assert isinstance(g, tuple) and len(g) == 1
    return g[0]


def tanh_any(y):
    """tanh for NumPy, traced and JAX values alike."""
    if isinstance(y, (np.ndarray, ft.autodiff.Tracked)):
        return np.tanh(y)
    import jax.numpy as jnp

    return jnp.tanh(y)


@ft.functor
class Chain:
    def __init__(self, layers):
        self.layers = tuple(layers)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


@ft.functor("weight", "bias", "activation")
class Linear:
    """``act(x @ weight.T + bias)`` with ``weight`` of shape (out, in), batch first."""

    def __init__(self, weight, bias, activation=None):
        self.weight, self.bias, self.activation = weight, bias, activation

    def __call__(self, x):
        y = (x[:, None, :] * self.weight[None, :, :]).sum(axis=-1) + self.bias
        return y if self.activation is None else self.activation(y)


# ----------------------------------------------------------------- §2.6 cases 17-22
def test_case17_rebuild_gradients_of_tied_model():
    m1 = arr(1, 2, 3)
    m4 = {"x": m1, "y": m1, "z": arr(4, 5, 6)}
    v, re4 = ft.destructure(m4)
    assert v.tolist() == [1, 2, 3, 4, 5, 6]
    assert grad_flat(lambda w: re4(w)["x"][0], v).tolist() == [1, 0, 0, 0, 0, 0]
    assert grad_flat(lambda w: re4(w)["y"][1], v).tolist() == [0, 1, 0, 0, 0, 0]

    def f(w):
        m = re4(w)
        return m["x"][0] + 2 * m["y"][1] + 3 * m["z"][2]

    assert grad_flat(f, v).tolist() == [1, 2, 0, 0, 0, 3]


def test_case18_only_trainable_children_are_differentiated():
    m7 = TwoThirdsTrainA((np.sin, arr(1, 2, 3)), (np.cos, arr(4, 5, 6)), (np.tan, arr(7, 8, 9)))
    v, re7 = ft.destructure(m7)
    assert grad_flat(lambda w: re7(w).a[1][2], v).tolist() == [0, 0, 1]
    assert grad_flat(lambda w: re7(w).b[1][1], v).tolist() == [0, 0, 0]
    assert grad_flat(lambda w: re7(w).c[1][0], v).tolist() == [0, 0, 0]


def test_case19_nested_model_with_trainable_order():
    m1 = arr(1, 2, 3)
    m8 = [FooTrainYX(m1, m1), {"a": True, "b": FooTrainYX(arr(4), False), "c": ()},
          [arr(5)]]
    v8, re8 = ft.destructure(m8)
    assert v8.tolist() == [1, 2, 3, 4, 5]
    assert grad_flat(lambda w: np.sum(ft.abs2(re8(w)[0].y)), v8).tolist() == [2, 4, 6, 0, 0]
    assert grad_flat(lambda w: sum(re8(w)[2])[0] ** 2, v8).tolist() == [0, 0, 0, 0, 10]


def test_case20_float32_matrix_in_c_order_with_float64_flat_vector():
    m1 = arr(1, 2, 3)
    mat = np.array([[4, 6], [5, 7]], np.float32)
    m9 = {"a": m1, "b": mat, "c": [mat, m1]}
    flat, re9 = ft.destructure(m9)
    assert flat.dtype == np.float64 and flat.tolist() == [1, 2, 3, 4, 6, 5, 7]
    v = np.arange(1.0, 8.0)
    g = grad_flat(lambda w: np.sum(ft.abs2(re9(w)["c"][0])), v)
    assert g.dtype == np.float64 and g.tolist() == [0, 0, 0, 8, 10, 12, 14]
    assert re9(v)["b"].dtype == np.float32
    # second order through the float32 leaf: the tangent is cast to float32 there
    Hm = ft.hessian(lambda w: np.sum(re9(w)["b"] ** 3) + np.sum(re9(w)["a"] ** 2), v)
    assert Hm.dtype == np.float64
    assert np.allclose(Hm, np.diag([2, 2, 2, 24, 30, 36, 42]), rtol=1e-6, atol=0)


def test_case21_gradient_of_unused_parameters_is_zero_in_the_flat_vector():
    v, re = ft.destructure({"x": arr(1, 2), "y": arr(3, 4, 5)})
    z = np.zeros(5)

    def f(w):
        m = re(w)
        return 5 * np.sum(m["x"]) + 7 * np.sum(m["y"])

    assert grad_flat(f, z).tolist() == [5, 5, 7, 7, 7]
    assert grad_flat(lambda w: np.sum(re(w)["x"]), z).tolist() == [1, 1, 0, 0, 0]


def test_case22_tied_accumulation():
    sh = arr(7, 7)
    v, re = ft.destructure({"x": sh, "y": arr(3, 4), "z": sh})
    assert v.tolist() == [7, 7, 3, 4]
    r = re(arr(1, 10, 100, 1000))
    assert r["x"].tolist() == [1, 10] and r["y"].tolist() == [100, 1000] and r["x"] is r["z"]

    def f1(w):
        m = re(w)
        return 3 * np.sum(m["x"]) + 13 * np.sum(m["z"])

    def f2(w):
        m = re(w)
        return 4 * (np.sum(m["x"]) + np.sum(m["z"]))

    def f3(w):
        m = re(w)
        return 4 * (np.sum(m["x"]) + np.sum(m["y"])) + 13 * np.sum(m["z"])

    assert grad_flat(f1, v).tolist() == [16, 16, 0, 0]
    assert grad_flat(f2, v).tolist() == [8, 8, 0, 0]
    assert grad_flat(f3, v).tolist() == [17, 17, 4, 4]


def test_case31_tied_layer_flat_gradient_sums_the_structural_one():
    rng = seeded("case31")
    d = Linear(rng.normal(size=(2, 2)), rng.normal(size=2))

    @ft.functor
    class Twice:
        def __init__(self, a, b):
            self.a, self.b = a, b

        def __call__(self, x):
            return self.b(self.a(x))

    model = Twice(d, d)
    x = rng.normal(size=(3, 2))
    p, re = ft.destructure(model)
    assert len(p) == 6
    flat_g = grad_flat(lambda q: np.sum(re(q)(x)), p)
    g = ft.gradient(lambda m: np.sum(m(x)), model)[0]
    assert g["a"]["weight"] is g["b"]["weight"]      # one array, the sum over both uses
    expected = np.concatenate([g["a"]["weight"].ravel(), g["a"]["bias"]])
    assert close(flat_g, expected, EXACT_TOL)
    assert close(flat_g, fd_gradient(lambda q: np.sum(re(q)(x)), p), FD_TOL)


# --------------------------------------------------------------------- Part A 7: ties
def test_tie_rule_never_doubled_never_dropped():
    w = arr(1, 2)
    model = {"first": w, "other": arr(3), "again": (w, [w])}
    flat, re = ft.destructure(model)
    assert flat.tolist() == [1, 2, 3]

    def loss(m):
        return (np.sum(m["first"] ** 2) + np.sum(m["again"][0] * m["other"])
                + np.sum(m["again"][1][0]))

    g_flat = grad_flat(lambda v: loss(re(v)), flat)
    expected_w = 2 * w + 3.0 + 1.0
    assert g_flat.tolist() == expected_w.tolist() + [3.0]
    g = ft.gradient(loss, model)[0]
    assert g["first"] is g["again"][0] and g["first"] is g["again"][1][0]
    assert g["first"].tolist() == expected_w.tolist()
    assert re.flatten(g).tolist() == g_flat.tolist()        # one object: counted once
    assert ft.destructure(g)[0].tolist() == g_flat.tolist()


# ----------------------------------------------------------------------- the seed model
def seed_model(dtype=np.float64):
    return Chain([Linear(np.array([[0.863101, 1.2454957]], dtype), np.zeros(1, dtype), tanh_any),
                  Linear(np.array([[-1.6345707]], dtype), np.zeros(1, dtype))])


def seed_input(dtype=np.float64):
    return seeded("seed-x").random((16, 2)).astype(dtype)


def test_seed_nested_gradient_equals_flat_gradient_up_to_layout():
    model, x = seed_model(), seed_input()
    g = ft.gradient(lambda m: np.sum(ft.abs2(m(x))), model)
    assert len(g) == 1
    layers = g[0]["layers"]
    assert isinstance(layers, tuple) and len(layers) == 2
    assert set(layers[0]) == {"weight", "bias", "activation"} and layers[0]["activation"] is None
    assert layers[0]["weight"].shape == (1, 2) and layers[1]["weight"].shape == (1, 1)
    flat, rebuild = ft.destructure(model)
    assert len(flat) == 5

    def loss(v):
        return np.sum(ft.abs2(rebuild(v)(x)))

    small = ft.gradient(loss, flat)[0]
    assert ft.destructure(g)[0].tolist() == small.tolist()
    assert rebuild.flatten(g[0]).tolist() == small.tolist()
    assert close(small, fd_gradient(loss, flat), FD_TOL)


def test_seed_hessian_equals_stacked_hvps_and_finite_differences():
    model, x = seed_model(), seed_input()
    flat, rebuild = ft.destructure(model)

    def loss(v):
        return np.sum(ft.abs2(rebuild(v)(x)))

    Hm = ft.hessian(loss, flat)
    assert Hm.shape == (5, 5)
    columns = np.stack([ft.hvp(loss, flat, e) for e in np.eye(5)], axis=1)
    assert close(Hm, columns, EXACT_TOL) and close(Hm, Hm.T, EXACT_TOL)
    fd = np.stack([fd_hvp(loss, flat, e) for e in np.eye(5)], axis=1)
    assert close(Hm, fd, FD_TOL)
    assert (np.diag(Hm) < 0).any() and np.abs(Hm - np.diag(np.diag(Hm))).max() > 1


def test_seed_model_in_float32():
    model, x = seed_model(np.float32), seed_input(np.float32)
    flat, rebuild = ft.destructure(model)
    assert flat.dtype == np.float32

    def loss(v):
        return np.sum(ft.abs2(rebuild(v)(x)))

    g32 = ft.gradient(loss, flat)[0]
    assert g32.dtype == np.float32
    flat64, rebuild64 = ft.destructure(seed_model())
    g64 = ft.gradient(lambda v: np.sum(ft.abs2(rebuild64(v)(x.astype(np.float64)))), flat64)[0]
    assert np.allclose(g32, g64, rtol=1e-4, atol=1e-4)
    H32 = ft.hessian(loss, flat)
    assert H32.dtype == np.float32 and np.allclose(H32, H32.T, rtol=1e-5, atol=1e-5)


def seed_jax_reference() -> dict[str, np.ndarray]:
    """``jax.jvp(jax.grad(loss))`` of the seed model on a block of 3 vectors (run by
    ``jax_oracle`` in a child process)."""
    import jax
    import jax.numpy as jnp

    model, x = seed_model(), seed_input()
    flat, rebuild = ft.destructure(model)
    lay = rebuild.layout

    def loss_jax(v):
        leaves = [v[int(a):int(b)].reshape(s)
                  for a, b, s in zip(lay.offsets[:-1], lay.offsets[1:], lay.shapes)]
        return jnp.sum(jnp.square(rebuild.with_leaves(leaves)(x)))

    V = seeded("seed-V").normal(size=(5, 3))
    hv = [np.asarray(jax.jvp(jax.grad(loss_jax), (flat,), (V[:, j],))[1]) for j in range(3)]
    return {"HV": np.stack(hv, axis=1)}


def test_seed_hvp_matches_jax():
    expected = jax_oracle("tests.test_autodiff_restructure", "seed_jax_reference")["HV"]
    assert expected.dtype == np.float64
    model, x = seed_model(), seed_input()
    flat, rebuild = ft.destructure(model)

    def loss(v):
        return np.sum(ft.abs2(rebuild(v)(x)))

    V = seeded("seed-V").normal(size=(5, 3))
    assert close(ft.hvp(loss, flat, V), expected, ORACLE_TOL)


# ------------------------------------------------------------ Hessians through re(v)
def mlp(rng, sizes, act=tanh_any):
    layers = [Linear(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.1,
                     act if j < len(sizes) - 2 else None)
              for j, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))]
    return Chain(layers)


def test_hvp_block_and_symmetry_through_re_with_ties_and_mixed_precision():
    rng = seeded("mixed")
    model = mlp(rng, [3, 4, 2])
    shared = model.layers[0].bias
    model = {"net": model, "scale": rng.normal(size=2).astype(np.float32), "again": shared}
    x = rng.normal(size=(5, 3))
    flat, re = ft.destructure(model)
    assert flat.dtype == np.float64 and len(flat) == 4 * 3 + 4 + 2 * 4 + 2 + 2

    def loss(v):
        m = re(v)
        y = m["net"](x) * m["scale"]
        return np.mean(ft.abs2(y)) + ft.dot(m["again"], m["again"])

    V = rng.normal(size=(len(flat), 3))
    HV = ft.hvp(loss, flat, V)
    for j in range(3):
        assert close(HV[:, j], ft.hvp(loss, flat, V[:, j]), EXACT_TOL)
    # the float32 leaf computes in float32: symmetry and finite differences to its precision
    u, w = V[:, 0], V[:, 1]
    uHw, wHu = u @ ft.hvp(loss, flat, w), w @ ft.hvp(loss, flat, u)
    assert abs(uHw - wHu) <= 1e-6 * max(abs(uHw), 1.0)
    fd = fd_hvp(loss, flat, u, h=1e-3)
    assert close(HV[:, 0], fd, 1e-4)


def test_hvp_through_re_matches_finite_differences_in_float64():
    rng = seeded("f64-mlp")
    model = mlp(rng, [3, 5, 4, 2])
    x, t = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    flat, re = ft.destructure(model)

    def loss(v):
        return np.mean(ft.abs2(re(v)(x) - t))

    for seed in range(3):
        v = np.random.default_rng(seed).normal(size=flat.shape)
        assert close(ft.hvp(loss, flat, v), fd_hvp(loss, flat, v), FD_TOL)
    Hm = ft.hessian(loss, flat)
    assert close(Hm @ v, ft.hvp(loss, flat, v), EXACT_TOL) and close(Hm, Hm.T, EXACT_TOL)
    u = np.random.default_rng(9).normal(size=flat.shape)
    uHv, vHu = u @ ft.hvp(loss, flat, v), v @ ft.hvp(loss, flat, u)
    assert abs(uHv - vHu) <= 1e-12 * max(abs(uHv), 1.0)


def test_nested_gradient_flattened_equals_flat_gradient():
    rng = seeded("nested-vs-flat")
    net = mlp(rng, [2, 3, 1])
    model = {"net": net, "tied": net.layers[1].weight, "fn": np.sin, "n": 3}
    x = rng.normal(size=(4, 2))

    def loss(m):
        return np.sum(m["net"](x)) * 2.0 + np.sum(m["tied"] ** 2)

    flat, re = ft.destructure(model)
    g = ft.gradient(loss, model)[0]
    g_flat = ft.gradient(lambda v: loss(re(v)), flat)[0]
    assert close(re.flatten(g), g_flat, EXACT_TOL)
    assert close(ft.destructure(g)[0], g_flat, EXACT_TOL)
    assert g["fn"] is None and g["n"] is None
    assert g["tied"] is g["net"]["layers"][1]["weight"]


# --------------------------------------------------------------------- Gauss-Newton
def test_gauss_newton_is_positive_semidefinite_on_random_nets():
    for seed in range(4):
        rng = np.random.default_rng(seed)
        net = mlp(rng, [3, 6, 6, 2])
        x, t = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
        flat, re = ft.destructure(net)

        def model_fn(v):
            return re(v)(x)

        def loss(y):
            return np.mean(ft.abs2(y - t))

        n = len(flat)
        V = rng.normal(size=(n, 5))
        GV = ft.gauss_newton_vp(model_fn, loss, flat, V)
        assert GV.shape == (n, 5)
        assert np.all(np.einsum("ij,ij->j", V, GV) >= -1e-12)
        G = ft.gauss_newton_vp(model_fn, loss, flat, np.eye(n))
        assert close(G, G.T, EXACT_TOL)
        assert np.linalg.eigvalsh((G + G.T) / 2).min() >= -1e-10
        Hm = ft.hessian(lambda v: loss(model_fn(v)), flat)
        assert np.linalg.eigvalsh(Hm).min() < -1e-6 or not close(G, Hm, 1e-6)


def test_gauss_newton_equals_hessian_when_the_model_is_linear_in_its_parameters():
    rng = seeded("gn-linear")
    model = Linear(rng.normal(size=(2, 3)), rng.normal(size=2))
    x, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    flat, re = ft.destructure(model)

    def model_fn(v):
        return re(v)(x)

    def loss(y):
        return np.sum(np.exp(y - t)) + np.mean(ft.abs2(y))

    n = len(flat)
    G = ft.gauss_newton_vp(model_fn, loss, flat, np.eye(n))
    Hm = ft.hessian(lambda v: loss(model_fn(v)), flat)
    assert close(G, Hm, EXACT_TOL)
    v = rng.normal(size=n)
    assert close(ft.gauss_newton_vp(model_fn, loss, flat, v), Hm @ v, EXACT_TOL)


def test_restructure_with_unused_parameters_in_second_order():
    v, re = ft.destructure({"x": arr(1, 2), "y": arr(3)})

    def f(w):
        return np.sum(re(w)["x"] ** 3)

    assert ft.hessian(f, v).tolist() == [[6, 0, 0], [0, 12, 0], [0, 0, 0]]
    assert ft.hvp(lambda w: np.sum(re(w)["y"]), v, np.ones(3)).tolist() == [0, 0, 0]
    _, jv = ft.jvp(lambda w: re(w)["y"] * 2.0, v, arr(1, 1, 5))
    assert jv.tolist() == [10.0]


def test_tied_zero_dimensional_parameter():
    a = np.array(0.5)
    flat, re = ft.destructure({"k0": a, "k1": a, "w": arr(1, 2)})
    assert flat.tolist() == [0.5, 1, 2]

    def loss(m):
        return -2.0 * m["k0"] + m["k1"] ** 3 + np.sum(m["w"] * m["k0"])

    def f(v):
        return loss(re(v))

    assert grad_flat(f, flat).tolist() == [-2 + 3 * 0.25 + 3, 0.5, 0.5]
    assert ft.hessian(f, flat).tolist() == [[3.0, 1, 1], [1, 0, 0], [1, 0, 0]]
    g = ft.gradient(loss, re.model)[0]
    assert g["k0"] is g["k1"] and isinstance(g["k0"], np.ndarray) and g["k0"].shape == ()
    assert float(g["k0"]) == -2 + 3 * 0.25 + 3
