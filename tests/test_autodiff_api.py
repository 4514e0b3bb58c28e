"""The public derivative API: the structure of gradients (per argument, nested model trees,
ties, non-parameters), its errors, ``linearize`` (one recording, many products),
``gauss_newton_vp``, Dropout in and out of training, and a user op that brings its own rules.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

import fluxtree as ft
from fluxtree import _tracing
from fluxtree.nn import Dropout
from tests.helpers import Foo, NormLike, Point, TwoThirdsTrainA
from tests.test_autodiff_ops import (
    EXACT_TOL,
    FD_TOL,
    close,
    fd_gradient,
    fd_hvp,
    seeded,
)

XY = collections.namedtuple("XY", "x y")


@dataclasses.dataclass(frozen=True)
class Frozen:
    w: np.ndarray
    name: str


@ft.functor
class Affine:
    """``x @ w + b`` (``w`` of shape (in, out)), written with the supported array ops."""

    def __init__(self, w, b, act=None):
        self.w, self.b, self.act = w, b, act

    def __call__(self, x):
        y = x @ self.w + self.b
        return y if self.act is None else self.act(y)


# ------------------------------------------------------------------ gradient structure
def test_gradient_is_a_tuple_with_one_entry_per_argument():
    a, b, c = np.array([1.0, 2.0]), np.array([[3.0]]), np.array([4.0, 5.0, 6.0])
    g = ft.gradient(lambda a, b, c: np.sum(a) * b[0, 0] + ft.dot(c, c), a, b, c)
    assert isinstance(g, tuple) and len(g) == 3
    assert g[0].tolist() == [3.0, 3.0] and g[1].tolist() == [[3.0]]
    assert g[2].tolist() == [8.0, 10.0, 12.0]
    one = ft.gradient(lambda a: np.sum(a ** 2), a)
    assert isinstance(one, tuple) and len(one) == 1 and one[0].tolist() == [2.0, 4.0]


def test_non_parameters_get_none():
    x = np.array([1.0, 2.0])
    g = ft.gradient(lambda x, n, s, i, f, fn: np.sum(x * n) * f, x, 3, "name", np.arange(2),
                    2.0, np.tanh)
    assert g[0].tolist() == [6.0, 6.0]
    assert g[1:] == (None, None, None, None, None)
    assert ft.gradient(lambda b: 1.0, np.array([True, False])) == (None,)


def test_gradient_does_not_modify_or_copy_its_argument():
    x = np.array([1.0, 2.0])
    seen = []

    def f(v):
        seen.append(v.value)
        return np.sum(v ** 2)

    g = ft.gradient(f, x)[0]
    assert seen[0] is x and x.tolist() == [1.0, 2.0]
    assert not np.shares_memory(g, x)


def test_model_gradient_mirrors_fmapstructure():
    w, b, z = np.array([1.0, 2.0]), np.array([3.0]), np.array([4.0, 5.0])
    model = {
        "dense": Affine(np.array([[1.0], [2.0]]), np.array([0.5]), np.tanh),
        "tuple": (w, "tanh", 3),
        "list": [b, np.arange(3), None],
        "nt": XY(z, np.sin),
        "dc": Point(np.array([6.0]), 2.0),
        "frozen": Frozen(np.array([7.0, 8.0]), "f"),
        "foo": Foo(np.array([9.0]), None),
        "narrowed": NormLike(np.array([1.0]), np.array([2.0]), np.array([0.0]),
                             np.array([1.0]), None),
    }
    x = np.array([[1.0, -1.0], [0.5, 2.0]])

    def loss(m):
        return (np.sum(m["dense"](x)) + np.sum(m["tuple"][0] ** 2) + np.sum(m["list"][0] * 3.0)
                + ft.dot(m["nt"].x, m["nt"].x) + np.sum(m["dc"].x) * m["dc"].y
                + np.sum(m["frozen"].w) + np.sum(m["foo"].x ** 3)
                + np.sum(m["narrowed"].beta * m["narrowed"].gamma * m["narrowed"].mu))

    value, (g,) = ft.value_and_gradient(loss, model)
    assert value == pytest.approx(float(loss(model)), rel=1e-14)
    skeleton = ft.fmapstructure(lambda leaf: None, model)
    assert ft.fmapstructure(lambda leaf: None, g) == skeleton      # same containers and keys
    assert list(g) == list(model)
    assert g["dense"]["act"] is None and set(g["dense"]) == {"w", "b", "act"}
    assert g["tuple"][0].tolist() == [2.0, 4.0] and g["tuple"][1:] == (None, None)
    assert g["list"][0].tolist() == [3.0] and g["list"][1:] == [None, None]
    assert isinstance(g["nt"], dict) and g["nt"]["x"].tolist() == [8.0, 10.0]
    assert g["nt"]["y"] is None
    assert g["dc"] == {"x": pytest.approx(np.array([2.0])), "y": None}
    assert g["frozen"]["w"].tolist() == [1.0, 1.0] and g["frozen"]["name"] is None
    assert g["foo"]["x"].tolist() == [243.0] and g["foo"]["y"] is None
    # running statistics (children that trainable() leaves out) are not parameters
    assert g["narrowed"]["mu"] is None and g["narrowed"]["sigma2"] is None
    assert g["narrowed"]["beta"].tolist() == [0.0] and g["narrowed"]["gamma"].tolist() == [0.0]
    # the dense gradient against finite differences of the flat vector
    flat, re = ft.destructure(model)
    fd = fd_gradient(lambda v: loss(re(v)), flat)
    assert close(re.flatten(g), fd, FD_TOL)


def test_unused_parameters_and_non_trainable_children_get_none():
    m7 = TwoThirdsTrainA((np.sin, np.array([1.0, 2.0, 3.0])), (np.cos, np.array([4.0, 5.0, 6.0])),
                         (np.tan, np.array([7.0, 8.0, 9.0])))
    g = ft.gradient(lambda m: np.sum(m.a[1] ** 2) + np.sum(m.c[1] ** 2), m7)[0]
    assert g["a"][0] is None and g["a"][1].tolist() == [2.0, 4.0, 6.0]
    assert g["c"] == (None, None)            # a child, but not trainable: a constant
    assert "b" not in g                       # not a child at all
    model = {"used": np.array([1.0]), "unused": np.array([2.0])}
    g = ft.gradient(lambda m: np.sum(m["used"] * 5.0), model)[0]
    assert g["used"].tolist() == [5.0] and g["unused"] is None
    assert ft.gradient(lambda m: 1.0, model)[0] == {"used": None, "unused": None}


def test_model_without_parameters_gets_none():
    assert ft.gradient(lambda m: 2.0, {"a": "x", "b": (1, np.arange(2))}) == (None,)


def test_tied_parameter_gets_one_array_at_every_position_equal_to_the_sum_of_uses():
    w = np.array([1.0, 2.0])
    model = {"x": w, "y": np.array([3.0, 4.0]), "z": w, "deep": [(w,)]}

    def loss(m):
        return np.sum(m["x"] * 3.0) + np.sum(m["z"] ** 2) + np.sum(m["deep"][0][0] * m["y"])

    g = ft.gradient(loss, model)[0]
    expected = 3.0 + 2 * w + np.array([3.0, 4.0])
    assert g["x"] is g["z"] and g["x"] is g["deep"][0][0]
    assert g["x"].tolist() == expected.tolist()
    assert g["y"].tolist() == [1.0, 2.0]
    # unused at some of its positions: still the sum, still at every position
    g = ft.gradient(lambda m: np.sum(m["z"] * 13.0), model)[0]
    assert g["x"] is g["z"] and g["x"].tolist() == [13.0, 13.0]


def test_tied_parameter_inside_tied_layers():
    d = Affine(np.array([[1.0, 0.5], [-0.5, 1.0]]), np.array([0.1, -0.2]))
    model = {"a": d, "b": d, "head": np.array([1.0, -1.0])}
    x = np.array([[1.0, 2.0], [0.5, -1.0]])

    def loss(m):
        return np.sum(m["b"](np.tanh(m["a"](x))) * m["head"])

    g = ft.gradient(loss, model)[0]
    assert g["a"]["w"] is g["b"]["w"] and g["a"]["b"] is g["b"]["b"]
    flat, re = ft.destructure(model)
    assert len(flat) == 8
    fd = fd_gradient(lambda v: loss(re(v)), flat)
    assert close(re.flatten(g), fd, FD_TOL)


def test_gradient_dtype_follows_each_parameter():
    model = {"a": np.array([1.0, 2.0], np.float32), "b": np.array([3.0])}
    g = ft.gradient(lambda m: np.sum(m["a"] * m["b"]), model)[0]
    assert g["a"].dtype == np.float32 and g["b"].dtype == np.float64
    assert g["a"].tolist() == [3.0, 3.0] and g["b"].tolist() == [3.0]


def test_gradient_arrays_are_fresh_and_writable():
    x = np.array([1.0, 2.0])
    g1 = ft.gradient(lambda v: np.sum(v * 2.0), x)[0]
    g2 = ft.gradient(lambda v: np.sum(v * 2.0), x)[0]
    g1[0] = 100.0
    assert g2.tolist() == [2.0, 2.0] and g1.flags.writeable


# ------------------------------------------------------------------------------ errors
def test_non_scalar_output_is_a_value_error():
    x = np.array([1.0, 2.0])
    with pytest.raises(ValueError, match=r"must return a scalar, got shape \(2,\)"):
        ft.gradient(lambda v: v * 2.0, x)
    with pytest.raises(ValueError, match=r"must return a scalar, got shape \(2,\)"):
        ft.value_and_gradient(lambda v: v * 2.0, x)
    with pytest.raises(ValueError, match=r"must return a scalar, got shape \(2, 2\)"):
        ft.hvp(lambda v: v[:, None] * v, x, x)
    with pytest.raises(ValueError, match="must return a scalar"):
        ft.hessian(lambda v: v, x)
    with pytest.raises(ValueError, match="must return a scalar"):
        ft.gauss_newton_vp(lambda v: v, lambda z: z, x, x)
    with pytest.raises(ValueError, match=r"must return a scalar, got shape \(0,\)"):
        ft.gradient(lambda v: v[:0], x)


def test_complex_arguments_are_a_type_error():
    z = np.array([1.0 + 1.0j, 2.0])
    with pytest.raises(TypeError, match="argument 0 is complex"):
        ft.gradient(lambda v: np.sum(v), z)
    with pytest.raises(TypeError, match="argument 1 is complex"):
        ft.gradient(lambda a, v: np.sum(v), np.ones(1), z)
    with pytest.raises(TypeError, match=r"expected a real floating-point array, got dtype "
                                        r"complex128"):
        ft.hvp(lambda v: np.sum(v), z, np.ones(2))
    with pytest.raises(TypeError, match="complex128"):
        ft.jvp(lambda v: v, z, np.ones(2))
    with pytest.raises(TypeError, match=r"parameter at \[\"b\"\] of argument 0 has dtype "
                                        r"complex128"):
        ft.gradient(lambda m: 1.0, {"a": np.ones(1), "b": z})
    with pytest.raises(TypeError, match="expected a real vector, got dtype complex128"):
        ft.hvp(lambda v: np.sum(v ** 2), np.ones(2), z)


def test_nested_derivatives_are_a_type_error():
    x = np.array([1.0, 2.0])
    with pytest.raises(TypeError, match="nested derivatives are not supported"):
        ft.gradient(lambda v: np.sum(ft.gradient(lambda w: np.sum(w ** 2), v)[0]), x)
    with pytest.raises(TypeError, match="nested derivatives are not supported"):
        ft.gradient(lambda v: np.sum(ft.gradient(lambda w: np.sum(w * v), x)[0]), x)
    with pytest.raises(TypeError, match="nested derivatives are not supported"):
        ft.gradient(lambda v: np.sum(ft.hvp(lambda w: np.sum(w ** 3), v, x)), x)
    with pytest.raises(TypeError, match="nested derivatives are not supported"):
        ft.hvp(lambda v: np.sum(ft.jvp(lambda w: w ** 2, v, x)[1]), x, x)


def test_wrong_tangent_shapes_are_a_value_error():
    x = np.ones(3)
    with pytest.raises(ValueError, match=r"expected v of shape \(3,\) or \(3, 'k'\), got "
                                         r"\(2,\)"):
        ft.hvp(lambda v: np.sum(v ** 2), x, np.ones(2))
    with pytest.raises(ValueError, match=r"got \(2, 3\)"):
        ft.hvp(lambda v: np.sum(v ** 2), x, np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"expected v of shape \(3,\)"):
        ft.jvp(lambda v: v, x, np.ones(4))
    with pytest.raises(TypeError, match="expected a real vector, got dtype <U1"):
        ft.hvp(lambda v: np.sum(v ** 2), x, np.array(["a", "b", "c"]))


def test_point_of_hvp_must_be_an_array_of_numbers():
    with pytest.raises(TypeError, match="expected a real floating-point array, got dtype <U1"):
        ft.hvp(lambda v: v, np.array(["a"]), np.ones(1))


# ------------------------------------------------------------------------ jvp specifics
def test_jvp_of_a_block_has_a_trailing_k_axis():
    x = np.array([1.0, 2.0, 3.0])
    value, J = ft.jvp(lambda v: v[:2] * v[1:], x, np.eye(3))
    assert value.tolist() == [2.0, 6.0]
    assert J.tolist() == [[2.0, 1.0, 0.0], [0.0, 3.0, 2.0]]
    value, jv = ft.jvp(lambda v: np.sum(v ** 2), x, np.ones(3))
    assert np.ndim(value) == 0 and float(jv) == 12.0


# ------------------------------------------------------------------------------ linearize
class Counting:
    """``x * c`` as a user op that counts how often each of its rules runs."""

    def __init__(self, c):
        self.c = c
        self.calls = collections.Counter()

    def __call__(self, x):
        if _tracing.any_traced(x):
            return _tracing.record(self, (x,))
        return self.forward((x,))[0]

    def forward(self, inputs):
        self.calls["forward"] += 1
        return inputs[0] * self.c, None

    def backward(self, saved, d, needs):
        self.calls["backward"] += 1
        return (d * self.c,)

    def tangent(self, saved, t):
        self.calls["tangent"] += 1
        return t[0] * self.c

    def tangent_backward(self, saved, t, d, td, needs):
        self.calls["tangent_backward"] += 1
        return (None if td is None else td * self.c,)


def test_linearize_records_once_and_runs_backward_once():
    op = Counting(2.0)
    x = np.array([1.0, -2.0, 0.5])

    def f(v):
        return np.sum(np.sin(op(v)) * v)

    lin = ft.linearize(f, x)
    assert op.calls == {"forward": 1}
    assert lin.x is x
    assert lin.value == pytest.approx(float(f(x)), rel=1e-15)
    assert op.calls["forward"] == 2                   # the plain call just above
    g = lin.gradient()
    assert op.calls["backward"] == 1
    assert close(g, ft.gradient(f, x)[0], EXACT_TOL)
    assert lin.gradient().tolist() == g.tolist() and lin.gradient() is not g
    lin.hvp(np.ones(3))
    lin.hvp(np.ones((3, 2)))
    assert op.calls["backward"] == 2                  # 1 here, 1 in ft.gradient above
    assert op.calls["tangent"] == 2 and op.calls["tangent_backward"] == 2


def test_linearize_repeated_products_are_identical_and_independent():
    rng = seeded("repeat")
    x, u, v = rng.normal(size=(3, 5))

    def f(y):
        return np.sum(np.tanh(y) * y[::-1]) * ft.dot(y, y)

    lin = ft.linearize(f, x)
    hu1 = lin.hvp(u)
    hv = lin.hvp(v)
    g = lin.gradient()
    hu2 = lin.hvp(u)
    block = lin.hvp(np.stack([u, v], axis=1))
    assert hu1.tolist() == hu2.tolist()
    assert close(hv, ft.hvp(f, x, v), EXACT_TOL) and close(hu1, ft.hvp(f, x, u), EXACT_TOL)
    assert close(block, np.stack([hu1, hv], axis=1), EXACT_TOL)
    assert lin.gradient().tolist() == g.tolist()
    assert close(hu1, fd_hvp(f, x, u), FD_TOL)


def test_linearize_out_arguments():
    x = np.array([1.0, 2.0])

    def f(v):
        return np.sum(v ** 3)

    lin = ft.linearize(f, x)
    g_out = np.full(2, np.nan)
    assert lin.gradient(out=g_out) is g_out and g_out.tolist() == [3.0, 12.0]
    h_out = np.full(2, np.nan)
    assert lin.hvp(np.array([1.0, 1.0]), out=h_out) is h_out and h_out.tolist() == [6.0, 12.0]
    b_out = np.full((2, 2), np.nan)
    assert lin.hvp(np.eye(2), out=b_out) is b_out and b_out.tolist() == [[6.0, 0.0],
                                                                           [0.0, 12.0]]
    with pytest.raises(ValueError, match=r"out must have shape \(2,\), got \(3,\)"):
        lin.gradient(out=np.empty(3))
    with pytest.raises(ValueError, match=r"out must have shape \(2, 2\), got \(2,\)"):
        lin.hvp(np.eye(2), out=np.empty(2))
    # a function independent of x: zeros written into out
    lin0 = ft.linearize(lambda v: 5.0, x)
    assert lin0.value == 5.0
    assert lin0.gradient(out=np.full(2, np.nan)).tolist() == [0.0, 0.0]
    assert lin0.hvp(np.ones(2), out=np.full(2, np.nan)).tolist() == [0.0, 0.0]


def test_gauss_newton_vp_needs_inner():
    lin = ft.linearize(lambda v: np.sum(v ** 2), np.ones(2))
    with pytest.raises(ValueError, match=r"linearize\(loss, x, inner=model_fn\)"):
        lin.gauss_newton_vp(np.ones(2))


def test_linearize_gauss_newton_and_hessian_products_interleave():
    rng = seeded("gn-interleave")
    A = rng.normal(size=(4, 3))
    x, v = rng.normal(size=(2, 3))

    def model(y):
        return np.tanh(A @ y)

    def loss(z):
        return np.sum(z ** 2) * 0.5 + np.sum(z)

    lin = ft.linearize(loss, x, inner=model)
    gn1 = lin.gauss_newton_vp(v)
    hv = lin.hvp(v)
    g = lin.gradient()
    gn2 = lin.gauss_newton_vp(v)
    assert gn1.tolist() == gn2.tolist()
    assert close(gn1, ft.gauss_newton_vp(model, loss, x, v), EXACT_TOL)
    assert close(hv, ft.hvp(lambda y: loss(model(y)), x, v), EXACT_TOL)
    assert close(g, ft.gradient(lambda y: loss(model(y)), x)[0], EXACT_TOL)
    assert not close(gn1, hv, 1e-3)                  # the model's curvature is not dropped in H
    fresh = ft.linearize(loss, x, inner=model)
    assert close(fresh.gradient(), g, EXACT_TOL)      # gradient before any product


def test_gauss_newton_vp_equals_explicit_jacobian_product():
    rng = seeded("gn-explicit")
    A = rng.normal(size=(4, 3))
    x = rng.normal(size=3)
    V = rng.normal(size=(3, 2))

    def model(y):
        return np.sin(A @ y) * y[0]

    def loss(z):
        return np.sum(np.exp(z)) + ft.dot(z, z)

    _, J = ft.jvp(model, x, np.eye(3))                 # (4, 3)
    z = model(x)
    H_loss = ft.hessian(loss, z)
    expected = J.T @ H_loss @ J @ V
    assert close(ft.gauss_newton_vp(model, loss, x, V), expected, EXACT_TOL * 10)
    assert close(ft.gauss_newton_vp(model, loss, x, V[:, 0]), expected[:, 0], EXACT_TOL * 10)


# ----------------------------------------------------------------------------- Dropout
def dropout_mask(p, seed, shape):
    keep = np.random.default_rng(seed).random(shape) >= p
    return keep / (1 - p)


def test_dropout_in_gradient_uses_one_mask_for_value_and_gradient():
    x = np.arange(1.0, 13.0).reshape(3, 4)
    d = Dropout(0.5, rng=np.random.default_rng(7))
    value, (g,) = ft.value_and_gradient(lambda v: np.sum(d(v) * 3.0), x)
    mask = dropout_mask(0.5, 7, x.shape)
    assert g.tolist() == (3.0 * mask).tolist()
    assert value == pytest.approx(np.sum(g * x), rel=1e-15)
    assert 0 < np.count_nonzero(g) < x.size


def test_dropout_with_dims_shares_the_mask_along_other_axes():
    x = np.ones((4, 3))
    d = Dropout(0.5, dims=1, rng=np.random.default_rng(3))
    g = ft.gradient(lambda v: np.sum(d(v)), x)[0]
    mask = dropout_mask(0.5, 3, (1, 3))
    assert g.tolist() == np.broadcast_to(mask, (4, 3)).tolist()


def test_dropout_one_zeros_everything_and_zero_keeps_everything():
    x = np.array([1.0, 2.0])
    value, (g,) = ft.value_and_gradient(lambda v: np.sum(Dropout(1.0)(v) ** 2), x)
    assert value == 0.0 and g.tolist() == [0.0, 0.0]
    assert ft.hvp(lambda v: np.sum(Dropout(1.0)(v) ** 2), x, np.ones(2)).tolist() == [0.0, 0.0]
    value, (g,) = ft.value_and_gradient(lambda v: np.sum(Dropout(0.0)(v) ** 2), x)
    assert value == 5.0 and g.tolist() == [2.0, 4.0]


def test_dropout_inactive_is_the_identity_inside_every_derivative():
    x = np.array([1.0, -2.0, 3.0])
    d = Dropout(0.9, active=False)

    def f(v):
        return np.sum(d(v) ** 3)

    assert ft.gradient(f, x)[0].tolist() == (3 * x ** 2).tolist()
    assert ft.hvp(f, x, np.ones(3)).tolist() == (6 * x).tolist()
    assert ft.jvp(lambda v: d(v), x, np.ones(3))[1].tolist() == [1.0, 1.0, 1.0]
    ft.testmode_(d, False)                           # back to training mode
    assert d.active is True


def test_dropout_auto_mode_is_training_only_inside_derivatives():
    x = np.ones(50)
    d = Dropout(0.5, rng=np.random.default_rng(1))
    assert d(x).tolist() == x.tolist()                # a plain call: test mode
    g = ft.gradient(lambda v: np.sum(d(v)), x)[0]
    assert set(g.tolist()) == {0.0, 2.0}
    _, jv = ft.jvp(lambda v: d(v), x, np.ones(50))
    assert set(jv.tolist()) == {0.0, 2.0}
    assert d(x).tolist() == x.tolist()                # still test mode afterwards
    assert d.active is None and d.p == 0.5


def test_dropout_mask_is_fixed_within_one_linearization():
    x = np.arange(1.0, 9.0)
    d = Dropout(0.5, rng=np.random.default_rng(11))
    lin = ft.linearize(lambda v: np.sum(d(v) ** 2), x)
    mask = dropout_mask(0.5, 11, x.shape)
    g = lin.gradient()
    assert g.tolist() == (2 * mask ** 2 * x).tolist()
    assert lin.hvp(x).tolist() == g.tolist()          # f is quadratic: H x = gradient
    assert lin.hvp(np.eye(8)).tolist() == np.diag(2 * mask ** 2).tolist()


def test_dropout_in_a_model_has_no_parameters():
    m = {"drop": Dropout(0.5, rng=np.random.default_rng(0)), "w": np.ones(4)}
    g = ft.gradient(lambda m: np.sum(m["drop"](m["w"])), m)[0]
    assert g["drop"] == {"p": None, "dims": None, "active": None, "rng": None}
    assert g["w"].tolist() == dropout_mask(0.5, 0, (4,)).tolist()


# ------------------------------------------------------------------ a user op's rules
@ft.functor
class Scale:
    """``w * x`` element-wise, a user layer with forward and backward rules only."""

    def __init__(self, w):
        self.w = w

    def __call__(self, x):
        if _tracing.any_traced(x, self.w):
            return _tracing.record(self, (x, self.w))
        return self.forward((x, self.w))[0]

    def forward(self, inputs):
        x, w = inputs
        return x * w, (x, w)

    def backward(self, saved, d, needs):
        x, w = saved
        return (d * w if needs[0] else None, np.sum(d * x, axis=0) if needs[1] else None)


class ScaleJVP(Scale):
    """``Scale`` with its tangent rule (``w`` of shape (n,), ``x`` (batch, n))."""

    def tangent(self, saved, t):
        x, w = saved
        out = 0.0
        if t[0] is not None:
            out = out + t[0] * w
        if t[1] is not None:
            out = out + x * t[1][:, None, :]
        return out


class ScaleHVP(ScaleJVP):
    """``Scale`` with both second-order rules."""

    def tangent_backward(self, saved, t, d, td, needs):
        x, w = saved
        tx, tw = t
        k = next(a.shape[0] for a in (td, tx, tw) if a is not None)
        gx = np.zeros((k,) + x.shape) if needs[0] else None
        gw = np.zeros((k,) + w.shape) if needs[1] else None
        if td is not None:
            gx = None if gx is None else gx + td * w
            gw = None if gw is None else gw + np.sum(td * x, axis=1)
        if d is not None:
            if gx is not None and tw is not None:
                gx = gx + d * tw[:, None, :]
            if gw is not None and tx is not None:
                gw = gw + np.sum(d * tx, axis=1)
        return gx, gw


def test_user_op_with_forward_and_backward_supports_gradient():
    layer = Scale(np.array([1.0, 2.0, 3.0]))
    x = np.array([[1.0, 1.0, 1.0], [2.0, 0.0, -1.0]])
    g_model, g_x = ft.gradient(lambda m, x: np.sum(m(x) ** 2), layer, x)
    assert g_model == {"w": pytest.approx(2 * np.sum(x * x, axis=0) * layer.w)}
    assert g_x.tolist() == (2 * x * layer.w ** 2).tolist()


def test_user_op_without_second_order_rules_names_itself_in_hvp():
    layer = Scale(np.array([1.0, 2.0]))
    flat, re = ft.destructure(layer)
    x = np.array([[1.0, -1.0]])
    with pytest.raises(TypeError, match=r"Scale.* has no tangent rule, so Jacobian- and "
                                        r"Hessian-vector products"):
        ft.hvp(lambda v: np.sum(re(v)(x) ** 2), flat, np.ones(2))
    with pytest.raises(TypeError, match=r"Scale.* has no tangent rule"):
        ft.jvp(lambda v: re(v)(x), flat, np.ones(2))
    assert close(ft.gradient(lambda v: np.sum(re(v)(x) ** 2), flat)[0],
                 fd_gradient(lambda v: np.sum(re(v)(x) ** 2), flat), FD_TOL)


def test_user_op_with_all_four_rules_gives_exact_hessian_products():
    rng = seeded("user-op")
    layer = ScaleHVP(rng.normal(size=3))
    X = rng.normal(size=(4, 3))
    flat, re = ft.destructure(layer)

    def f(v):
        return np.sum(np.sin(re(v)(X)))

    V = rng.normal(size=(3, 2))
    assert close(ft.hvp(f, flat, V[:, 0]), fd_hvp(f, flat, V[:, 0]), FD_TOL)
    assert close(ft.hvp(f, flat, V), np.stack([ft.hvp(f, flat, V[:, j]) for j in range(2)], 1),
                 EXACT_TOL)

    def g(x):                                          # through the input
        return np.sum(np.sin(layer(x.reshape(4, 3))))

    x = X.ravel()
    assert close(ft.hvp(g, x, x), fd_hvp(g, x, x), FD_TOL)


def test_user_op_with_a_tangent_rule_only_supports_jvp_but_not_hvp():
    layer = ScaleJVP(np.array([1.0, 2.0]))
    flat, re = ft.destructure(layer)
    x = np.array([[1.0, -1.0], [0.5, 3.0]])
    value, jv = ft.jvp(lambda v: re(v)(x), flat, np.array([1.0, 0.0]))
    assert value.tolist() == (x * layer.w).tolist()
    assert jv.tolist() == [[1.0, 0.0], [0.5, 0.0]]
    with pytest.raises(TypeError, match=r"ScaleJVP.* has no second-order rule "
                                        r"\(tangent_backward\)"):
        ft.hvp(lambda v: np.sum(re(v)(x) ** 2), flat, np.ones(2))
