"""The destructure / Restructure / trainable / isnumeric examples of seed 000 (the Russian
Engee/Flux manual page "Плоские и вложенные структуры"), translated with SPEC Part A:
``Dense.weight`` is ``(out, in)`` and flat vectors follow C order, NamedTuples become
namedtuples or dicts, ``nothing`` is ``None``, ``Float32[...]`` is ``np.float32``.
The autodiff parts of the page (``gradient(loss, flat)``, the Hessian) belong to the
autodiff layer; here the structural gradient is computed by hand and packed.
"""
from __future__ import annotations

import collections

import numpy as np
import pytest

import fluxtree as ft
from tests.helpers import Chain, DenseAct, assert_tree_equal, chain_apply

XY = collections.namedtuple("XY", "x y")

# The flat vector printed on the page: Float32[0.863101, 1.2454957, 0.0, -1.6345707, 0.0]
W1 = np.array([[0.863101, 1.2454957]], np.float32)     # Dense(2 => 1, tanh): (out, in)
W2 = np.array([[-1.6345707]], np.float32)              # Dense(1 => 1)


def seed_model(dtype=np.float32):
    """``Chain(Dense(2=>1, tanh), Dense(1=>1))`` with the page's parameters."""
    return Chain((DenseAct(W1.astype(dtype), np.zeros(1, dtype), np.tanh),
                  DenseAct(W2.astype(dtype), np.zeros(1, dtype))))


def test_seed_destructure_chain_gives_five_float32_parameters_in_order():
    model = seed_model()
    flat, rebuild = ft.destructure(model)
    assert flat.dtype == np.float32
    assert flat.shape == (5,)
    np.testing.assert_array_equal(flat, np.array([0.863101, 1.2454957, 0.0, -1.6345707, 0.0],
                                                 np.float32))
    assert len(rebuild) == 5
    assert repr(rebuild) == "Restructure(Chain, ..., 5)"


def test_seed_destructure_order_is_weight_c_order_bias_weight_bias():
    w1 = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)       # Dense(3 => 2)
    model = Chain((DenseAct(w1, np.array([7.0, 8.0], np.float32), np.tanh),
                   DenseAct(np.array([[9.0, 10.0]], np.float32), np.array([11.0], np.float32))))
    flat, re = ft.destructure(model)
    np.testing.assert_array_equal(flat, np.arange(1, 12, dtype=np.float32))
    assert [str(p) for p in re.paths] == ["layers[0].weight", "layers[0].bias",
                                          "layers[1].weight", "layers[1].bias"]


def test_seed_rebuild_zeros_same_structure_zero_parameters_same_activations():
    model = seed_model()
    flat, rebuild = ft.destructure(model)
    new = rebuild(np.zeros(5))                      # zeros(5) is Float64 in Julia
    assert type(new) is Chain
    assert type(new.layers) is tuple and len(new.layers) == 2
    for old, layer in zip(model.layers, new.layers):
        assert type(layer) is DenseAct
        assert layer.weight.shape == old.weight.shape
        assert layer.bias.shape == old.bias.shape
        assert layer.weight.dtype == np.float32 and layer.bias.dtype == np.float32
        assert not layer.weight.any() and not layer.bias.any()      # all zero
        assert layer.activation is old.activation
        assert layer.weight is not old.weight
    assert new.layers[0].activation is np.tanh
    assert new.layers[1].activation is None
    # the original is untouched
    np.testing.assert_array_equal(model.layers[0].weight, W1)
    np.testing.assert_array_equal(ft.destructure(model)[0], flat)


def test_seed_rebuild_of_flat_is_the_model_again():
    model = seed_model()
    flat, rebuild = ft.destructure(model)
    assert_tree_equal(rebuild(flat), model)
    x = np.random.default_rng(0).random((16, 2), dtype=np.float32)    # batch first
    np.testing.assert_array_equal(chain_apply(rebuild(flat), x), chain_apply(model, x))


def _hand_gradient(model, x):
    """The structural gradient of ``sum(abs2, m(x))`` for the two-layer seed chain."""
    d1, d2 = model.layers
    h = np.tanh(x @ d1.weight.T + d1.bias)
    y = h @ d2.weight.T + d2.bias
    dy = 2 * y
    dh = dy @ d2.weight
    dz = dh * (1 - h ** 2)
    g1 = {"weight": dz.T @ x, "bias": dz.sum(0), "activation": None}
    g2 = {"weight": dy.T @ h, "bias": dy.sum(0), "activation": None}
    return ({"layers": (g1, g2)},)                  # ((layers = (..., ...),),)


def test_seed_destructure_of_a_gradient_tree_works():
    """``Flux.destructure(grad)``: a gradient (dicts/tuples, None for the activations)
    flattens to the same 5 numbers, ``Restructure(Tuple, ..., 5)``."""
    model = seed_model()
    x = np.random.default_rng(1).random((16, 2), dtype=np.float32)
    grad = _hand_gradient(model, x)
    gflat, gre = ft.destructure(grad)
    assert repr(gre) == "Restructure(tuple, ..., 5)"
    assert gflat.dtype == np.float32
    g1, g2 = grad[0]["layers"]
    expected = np.concatenate([g1["weight"].ravel(), g1["bias"], g2["weight"].ravel(),
                               g2["bias"]])
    np.testing.assert_array_equal(gflat, expected)
    # the model's own Restructure packs the same gradient to the same vector
    _, rebuild = ft.destructure(model)
    np.testing.assert_array_equal(rebuild.flatten(grad[0]), expected)
    # and rebuilding the gradient gives the gradient back, None where it was None
    back = gre(gflat)
    assert back[0]["layers"][0]["activation"] is None
    assert_tree_equal(back, grad)


def test_seed_flat_gradient_matches_the_structural_gradient_numerically():
    """``gradient(loss, flat)`` has "the same numbers" as the structural gradient: checked
    with central differences of ``loss(v) = sum(abs2, rebuild(v)(x))``."""
    model = seed_model(np.float64)
    x = np.random.default_rng(2).random((16, 2))
    flat, rebuild = ft.destructure(model)

    def loss(v):
        return float(np.sum(chain_apply(rebuild(v), x) ** 2))

    eps = 1e-6
    numeric = np.array([(loss(flat + eps * e) - loss(flat - eps * e)) / (2 * eps)
                        for e in np.eye(5)])
    packed = rebuild.flatten(_hand_gradient(model, x)[0])
    np.testing.assert_allclose(packed, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("container", ["namedtuple", "dict"])
def test_seed_docstring_complex_example(container):
    """``v, re = destructure((x=[1.0, 2.0], y=(sin, [3.0 + 4.0im])))``."""
    x, y = np.array([1.0, 2.0]), (np.sin, np.array([3.0 + 4.0j]))
    model = XY(x, y) if container == "namedtuple" else {"x": x, "y": y}
    v, re = ft.destructure(model)
    assert v.dtype == np.complex128
    np.testing.assert_array_equal(v, np.array([1, 2, 3 + 4j]))
    assert repr(re) == f"Restructure({'XY' if container == 'namedtuple' else 'dict'}, ..., 3)"
    out = re(np.array([3, 5, 7 + 11j]))
    assert type(out) is type(model)
    ox = out.x if container == "namedtuple" else out["x"]
    oy = out.y if container == "namedtuple" else out["y"]
    assert ox.dtype == np.float64                       # projected: real parts only
    np.testing.assert_array_equal(ox, [3.0, 5.0])
    assert type(oy) is tuple
    assert oy[0] is np.sin
    assert oy[1].dtype == np.complex128
    np.testing.assert_array_equal(oy[1], [7 + 11j])


def test_seed_docstring_rebuild_from_a_python_list():
    v, re = ft.destructure({"x": np.array([1.0, 2.0]), "y": (np.sin, np.array([3.0 + 4.0j]))})
    out = re([3, 5, 7 + 11j])
    np.testing.assert_array_equal(out["x"], [3.0, 5.0])
    np.testing.assert_array_equal(out["y"][1], [7 + 11j])


def test_seed_mixed_precision_is_promoted_and_restored():
    """"Different numeric types are promoted to make the vector and usually restored by
    Restructure" (ProjectTo: restoring float precision)."""
    model = {"a": np.array([1.5], np.float16), "b": np.array([2.5], np.float32),
             "c": np.array([3.5], np.float64)}
    v, re = ft.destructure(model)
    assert v.dtype == np.float64
    out = re(v + 1)
    assert [out[k].dtype for k in "abc"] == [np.float16, np.float32, np.float64]
    np.testing.assert_array_equal([out[k][0] for k in "abc"], [2.5, 3.5, 4.5])


# ----------------------------------------------------------------------------------------
# trainable
# ----------------------------------------------------------------------------------------
def test_seed_trainable_defaults_to_children():
    d = DenseAct(np.ones((1, 2)), np.zeros(1), np.tanh)
    tr = ft.trainable(d)
    assert list(tr) == ["weight", "bias", "activation"]
    assert tr["weight"] is d.weight and tr["activation"] is np.tanh
    assert ft.trainable((1, 2)) == (1, 2)
    assert ft.trainable(np.ones(2)) == ()


def test_seed_trainable_overload_hides_some_numeric_arrays():
    """Overloading ``trainable`` makes optimisers ignore some fields that would otherwise
    hold trainable parameters (a subset of the children)."""

    @ft.functor
    class Layer:
        def __init__(self, w, frozen):
            self.w, self.frozen = w, frozen

        def trainable(self):
            return {"w": self.w}

    layer = Layer(np.ones(2), np.full(3, 7.0))
    tr = ft.trainable(layer)
    assert list(tr) == ["w"] and tr["w"] is layer.w
    v, re = ft.destructure(layer)
    np.testing.assert_array_equal(v, [1.0, 1.0])
    new = re(np.array([4.0, 5.0]))
    np.testing.assert_array_equal(new.w, [4.0, 5.0])
    assert new.frozen is layer.frozen
    assert [p is layer.w for p in ft.trainables(layer)] == [True]


def test_seed_functions_and_integers_are_always_ignored():
    """"Fields holding functions or integers, e.g. sizes, are always ignored anyway"."""

    @ft.functor
    class Conv:
        def __init__(self, w, stride, act, size):
            self.w, self.stride, self.act, self.size = w, stride, act, size

    c = Conv(np.ones(3), 2, np.tanh, np.array([3, 3]))
    v, re = ft.destructure(c)
    assert len(re) == 3
    new = re(np.zeros(3))
    assert new.stride == 2 and new.act is np.tanh and new.size is c.size


# ----------------------------------------------------------------------------------------
# isnumeric
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("x", [
    np.array([1.0, 2.0]), np.zeros((2, 3), np.float32), np.array([1 + 2j]),
    np.ones(2, np.float16), np.ones(2, np.complex64), np.array(3.0), np.zeros(0),
    np.arange(6.0)[::2],
])
def test_seed_isnumeric_true_for_non_integer_arrays(x):
    assert ft.isnumeric(x) is True


@pytest.mark.parametrize("x", [
    np.array([1, 2]), np.array([True, False]), np.array([1], np.uint8), 1.0, 1, True,
    np.float64(1.0), np.complex128(1j), "abc", None, np.sin, [1.0, 2.0], (1.0,),
    np.array(["a"]), np.array([1.0], dtype=object),
])
def test_seed_isnumeric_false_for_everything_else(x):
    assert ft.isnumeric(x) is False
