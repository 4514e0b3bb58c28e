"""f16 / f32 / f64: SPEC Part B §3.4 translated with Part A, plus ties and leaves.

Left out on purpose:

* ``bf16``: NumPy has no bfloat16 dtype, and fluxtree does not provide the function.
* ``f32(x32') === x32'`` (Julia's ``Adjoint`` wrapper): NumPy has no lazy wrapper types; a
  transpose is a plain array view, and the analogous check (a view already of the target
  dtype comes back as the same object) is ``test_view_of_target_dtype_is_same_object``.
* "Differentiable": the gradient through ``f32`` belongs to the autodiff layer, not here.
* ``BatchNorm`` / ``LayerNorm`` are stand-ins (``Norm`` with ``_f16_keeps_f32 = True``,
  ``LayerNormLike`` without it), since the layers live in another module.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

import fluxtree as ft
from fluxtree.precision import f16, f32, f64


@ft.functor
class Dense:
    """A minimal Dense in Part A's layout: ``weight`` (out, in), ``x @ weight.T + bias``."""

    def __init__(self, weight, bias, act=None):
        self.weight, self.bias, self.act = weight, bias, act

    def __call__(self, x):
        y = x @ self.weight.T
        if self.bias is not False:
            y = y + self.bias
        return y if self.act is None else self.act(y)


def dense(n_in, n_out, act=None, bias=True, dtype=np.float32):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n_out, n_in)).astype(dtype)
    return Dense(w, np.zeros(n_out, dtype=dtype) if bias else False, act)


@ft.functor
class Chain:
    def __init__(self, layers):
        self.layers = layers

    def __getitem__(self, i):
        return self.layers[i]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


@ft.functor
class Norm:
    """A stand-in for BatchNorm: asks ``f16`` to keep it in float32."""

    _f16_keeps_f32 = True

    def __init__(self, scale, shift, mean, var, eps=1e-5, momentum=0.1, inner=None):
        self.scale, self.shift, self.mean, self.var = scale, shift, mean, var
        self.eps, self.momentum, self.inner = eps, momentum, inner


def norm(n):
    return Norm(np.ones(n), np.zeros(n), np.zeros(n), np.ones(n))


@ft.functor
class LayerNormLike:
    def __init__(self, scale, shift, eps=1e-5):
        self.scale, self.shift, self.eps = scale, shift, eps


def relu(x):
    return np.maximum(x, 0)


def array_leaves(x):
    return [v for v in ft.fleaves(x) if isinstance(v, np.ndarray)]


# ---------------------------------------------------------------------------
# SPEC §3.4 test cases
# ---------------------------------------------------------------------------
def test_chain_f32_f64_round_trip():
    m = Chain([dense(10, 5, relu, bias=False), dense(5, 2)])
    assert m[0].weight.dtype == np.float32
    assert m(np.random.default_rng(1).random((3, 10)).astype(np.float32)).dtype == np.float32
    m64 = f64(m)
    assert type(m64) is Chain and m64 is not m and m64[0] is not m[0]
    assert m64[0].weight.dtype == np.float64 and m64[1].bias.dtype == np.float64
    assert m64[0].bias is False
    assert m64(np.ones((3, 10), dtype=np.float32)).dtype == np.float64
    m32 = f32(m64)
    assert m32[0].weight.dtype == np.float32
    np.testing.assert_array_equal(m32[1].weight, m[1].weight)


def test_f32_of_float32_is_same_object():
    x32 = np.ones((2, 3), dtype=np.float32)
    assert f32(x32) is x32


def test_view_of_target_dtype_is_same_object():
    x32t = np.ones((2, 3), dtype=np.float32).T
    assert f32(x32t) is x32t
    assert f32({"w": x32t})["w"] is x32t


def test_f32_of_int_array_is_same_object():
    i64 = np.arange(4)
    assert f32(i64) is i64
    assert f16(i64) is i64 and f64(i64) is i64


def test_f32_complex():
    c32 = np.ones((2, 2), dtype=np.complex64)
    c64 = np.ones((2, 2), dtype=np.complex128)
    assert f32(c32) is c32
    got = f32(c64)
    assert isinstance(got, np.ndarray) and got.dtype == np.complex64 and got.shape == (2, 2)
    assert f64(c32).dtype == np.complex128 and f64(c64) is c64


def test_f16_complex_becomes_complex64():
    # Julia gives ComplexF16; NumPy's smallest complex dtype is complex64
    c64 = np.ones((2, 2), dtype=np.complex128)
    c32 = np.ones((2, 2), dtype=np.complex64)
    got = f16({"a": c64, "b": c32})
    assert got["a"].dtype == np.complex64 and got["b"].dtype == np.complex64
    assert got["b"] is c32


def test_f16_integer_arrays_untouched():
    # Julia: Complex{Int} arrays; NumPy has no complex integers, so plain integers
    P = collections.namedtuple("P", "a b")
    x = P(np.ones((2, 2), dtype=np.int64), np.ones((2, 2), dtype=np.int32))
    got = f16(x)
    assert got == x and type(got) is P
    assert got.a is x.a and got.b is x.b


def test_bias_false_stays_false():
    m = f64(dense(3, 2, bias=False))
    assert m.bias is False
    assert f16(False) is False and f32(False) is False


def test_f16_keeps_norm_in_float32():
    got = f16(norm(3))
    assert type(got) is Norm
    assert {a.dtype for a in array_leaves(got)} == {np.dtype(np.float32)}
    assert got.eps == 1e-5 and got.momentum == 0.1


def test_f16_converts_layer_norm_fully():
    got = f16(LayerNormLike(np.ones(3), np.zeros(3)))
    assert {a.dtype for a in array_leaves(got)} == {np.dtype(np.float16)}
    assert got.eps == 1e-5 and type(got.eps) is float


def test_f32_top_level_array():
    got = f32(np.ones(3))
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert f16(np.ones(3)).dtype == np.float16
    assert f64(np.ones(3, dtype=np.float16)).dtype == np.float64


# ---------------------------------------------------------------------------
# dtype table, scalars and other leaves
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("fn, real, cplx", [
    (f16, np.float16, np.complex64),
    (f32, np.float32, np.complex64),
    (f64, np.float64, np.complex128),
])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.longdouble,
                                   np.complex64, np.complex128, np.clongdouble,
                                   np.int8, np.uint16, np.int64, np.bool_, np.str_, object])
def test_dtype_table(fn, real, cplx, dtype):
    x = np.zeros((2, 3), dtype=dtype)
    got = fn({"x": x})["x"]
    kind = np.dtype(dtype).kind
    if kind == "f":
        assert got.dtype == real and got.shape == (2, 3)
    elif kind == "c":
        assert got.dtype == cplx and got.shape == (2, 3)
    else:
        assert got is x
    if got.dtype == x.dtype:
        assert got is x


def test_scalars_not_converted():
    tree = {"eps": 1e-5, "p": np.float64(0.5), "k": np.int64(3), "z": 1j,
            "h": np.float16(1.0), "n": None, "name": "dense", "f": relu}
    for fn in (f16, f32, f64):
        got = fn(tree)
        for k, v in tree.items():
            assert got[k] is v, k


def test_values_kept_and_copies_made():
    x = np.array([[1.5, -2.25], [96.0, 0.1]])
    got = f32(x)
    assert got is not x and not np.shares_memory(got, x)
    np.testing.assert_array_equal(got, x.astype(np.float32))
    assert x.dtype == np.float64          # the input is not modified


def test_ties_kept():
    w = np.ones((2, 2))
    i = np.arange(3)
    tree = {"enc": Dense(w, np.zeros(2)), "dec": Dense(w, np.zeros(2)), "idx": [i, i],
            "same": [w]}
    for fn in (f16, f32, f64):
        got = fn(tree)
        assert got["enc"].weight is got["dec"].weight is got["same"][0]
        assert got["idx"][0] is got["idx"][1] is i


def test_shared_nodes_kept():
    layer = dense(2, 2, dtype=np.float64)
    got = f32([layer, layer])
    assert got[0] is got[1] and got[0] is not layer
    assert got[0].weight.dtype == np.float32


def test_f16_mixed_model():
    m = Chain([dense(4, 3, dtype=np.float64), norm(3), dense(3, 2, dtype=np.float64)])
    got = f16(m)
    assert got[0].weight.dtype == np.float16 and got[2].bias.dtype == np.float16
    assert {a.dtype for a in array_leaves(got[1])} == {np.dtype(np.float32)}


def test_f16_keeps_whole_subtree_of_norm():
    n = Norm(np.ones(2), np.zeros(2), np.zeros(2), np.ones(2),
             inner={"w": np.ones(2), "layer": dense(2, 2, dtype=np.float64)})
    got = f16({"n": n, "after": np.ones(2)})
    assert got["n"].inner["w"].dtype == np.float32
    assert got["n"].inner["layer"].weight.dtype == np.float32
    assert got["after"].dtype == np.float16


def test_f16_tie_across_norm_and_dense():
    w = np.ones(3)
    m = {"norm": Norm(w, np.zeros(3), np.zeros(3), np.ones(3)), "bias": w}
    got = f16(m)
    assert got["norm"].scale is got["bias"]           # converted once, by the first use
    assert got["bias"].dtype == np.float32
    m2 = {"bias": w, "norm": Norm(w, np.zeros(3), np.zeros(3), np.ones(3))}
    got2 = f16(m2)
    assert got2["norm"].scale is got2["bias"] and got2["bias"].dtype == np.float16


def test_f16_keeps_f32_must_be_true():
    @ft.functor
    class Half:
        _f16_keeps_f32 = 1                              # only the value True counts

        def __init__(self, w):
            self.w = w

    assert f16(Half(np.ones(2))).w.dtype == np.float16


def test_f16_on_norm_subclass_and_dataclass():
    @dataclasses.dataclass
    class DNorm:
        _f16_keeps_f32 = True
        w: np.ndarray

    class SubNorm(Norm):
        pass

    assert f16(DNorm(np.ones(2))).w.dtype == np.float32
    assert f16([SubNorm(np.ones(2), np.zeros(2), np.zeros(2), np.ones(2))])[0].scale.dtype \
        == np.float32


def test_structure_and_types_kept():
    P = collections.namedtuple("P", "x y")
    tree = {"t": (np.ones(1), 2), "l": [np.ones(1)], "p": P(np.ones(1), "s"), "e": ()}
    got = f32(tree)
    assert list(got) == list(tree)
    assert type(got["t"]) is tuple and type(got["l"]) is list and type(got["p"]) is P
    assert got["p"].y == "s" and got["e"] == ()
    assert ft.fmapstructure(lambda v: getattr(v, "dtype", v), got) == {
        "t": (np.dtype(np.float32), 2), "l": [np.dtype(np.float32)],
        "p": {"x": np.dtype(np.float32), "y": "s"}, "e": ()}


def test_cycle_is_value_error():
    cyc: list = [np.ones(1)]
    cyc.append(cyc)
    with pytest.raises(ValueError, match="cycl"):
        f32(cyc)


def test_exported():
    assert ft.f16 is f16 and ft.f32 is f32 and ft.f64 is f64


def test_backend_arrays(xp):
    x = xp.ones((2, 3), dtype=xp.float64)
    i = xp.arange(3)
    got = f32({"x": x, "i": i, "t": [x]})
    assert isinstance(got["x"], type(x)) and got["x"].dtype == np.float32
    assert got["i"] is i and got["t"][0] is got["x"]
    assert f16(x).dtype == np.float16 and f64(x) is x
