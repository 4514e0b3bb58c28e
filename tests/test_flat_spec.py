"""SPEC Part B §2.6 (Optimisers.jl destructure/trainables test cases) translated with Part A,
and the Part A rules of the flat layer: §1 C order, §5 parameters, §6 promotion and
projection, §7 ties, §8 dicts; plus the Python-side API (copy=False views, flatten/out).

Julia's 1-based ``KeyPath(:b, 1, "c")`` is ``KeyPath("b", 0, "c")`` here, ``reverse(1:9)``
is ``np.arange(9, 0, -1)``, NamedTuples are namedtuples, ``nothing`` is ``None``.
Gradient cases 13-21, 23, 24, 26 and 31 belong to the autodiff layer; what
``Restructure.flatten`` covers of them (summing tied positions, case 22) is here.
"""
from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest

import fluxtree as ft
from tests.helpers import (
    Chain,
    DenseAct,
    FooTrainYX,
    NormLike,
    Point,
    TwoThirdsTrainA,
    assert_tree_equal,
)

XYZ = collections.namedtuple("XYZ", "x y z")
ABC = collections.namedtuple("ABC", "a b c")
XY = collections.namedtuple("XY", "x y")


class _Missing:
    def __repr__(self) -> str:
        return "missing"


MISSING = _Missing()


def arr(*xs, dtype=np.float64):
    return np.array(xs, dtype)


def f64_equal(got, expected, dtype=np.float64):
    assert isinstance(got, np.ndarray)
    assert got.dtype == dtype, got.dtype
    np.testing.assert_array_equal(got, np.asarray(expected))


@pytest.fixture
def m1():
    return arr(1, 2, 3)


# ----------------------------------------------------------------------------------------
# §2.6 cases 1-12
# ----------------------------------------------------------------------------------------
def test_case01_bare_array(m1):
    flat, re = ft.destructure(m1)
    f64_equal(flat, [1, 2, 3])
    assert flat is not m1 and not np.shares_memory(flat, m1)
    out = re(np.arange(7, 10))
    f64_equal(out, [7, 8, 9])
    assert out is not m1
    assert repr(re) == "Restructure(ndarray, ..., 3)"


def test_case02_tuple_of_arrays():
    m2 = (arr(1, 2, 3), arr(4, 5, 6))
    flat, re = ft.destructure(m2)
    f64_equal(flat, np.arange(1, 7))
    out = re(np.arange(4, 10))
    assert type(out) is tuple
    f64_equal(out[0], [4, 5, 6])
    f64_equal(out[1], [7, 8, 9])


def test_case03_namedtuple_with_function(m1):
    m3 = XYZ(m1, np.sin, arr(4, 5, 6))
    flat, re = ft.destructure(m3)
    f64_equal(flat, np.arange(1, 7))
    out = re(np.arange(4, 10))
    assert type(out) is XYZ
    f64_equal(out.x, [4, 5, 6])
    assert out.y is np.sin
    f64_equal(out.z, [7, 8, 9])


def test_case04_tied_counted_once_and_rebuilt_tied(m1):
    m4 = XYZ(m1, m1, arr(4, 5, 6))
    flat, re = ft.destructure(m4)
    f64_equal(flat, np.arange(1, 7))
    assert len(re) == 6
    r = re(np.arange(4, 10))
    f64_equal(r.x, [4, 5, 6])
    f64_equal(r.z, [7, 8, 9])
    assert r.x is r.y
    assert r.x is not m1


def test_case05_nested_ties_across_branches(m1):
    m3 = XYZ(m1, np.sin, arr(4, 5, 6))
    m4 = XYZ(m1, m1, arr(4, 5, 6))
    m5 = ABC((m3, True), (m1, False), (m4, True))
    flat, re = ft.destructure(m5)
    f64_equal(flat, [1, 2, 3, 4, 5, 6, 4, 5, 6])
    r = re(np.arange(9, 0, -1))
    assert r.a[0].x is r.b[0]
    assert r.a[0].x is r.c[0].x is r.c[0].y
    assert r.b[1] is False and r.a[1] is True
    f64_equal(r.b[0], [9, 8, 7])
    f64_equal(r.a[0].z, [6, 5, 4])
    f64_equal(r.c[0].z, [3, 2, 1])


def test_case06_complex_promotion_and_real_projection(m1):
    m6 = ABC(m1, np.array([4 + 1j]), m1)
    flat, re = ft.destructure(m6)
    f64_equal(flat, [1, 2, 3, 4 + 1j], np.complex128)
    r = re(np.arange(4, 8) + np.arange(1, 5) * 1j)
    f64_equal(r.a, [4, 5, 6])                   # real parts, float64
    assert r.a is r.c
    f64_equal(r.b, [7 + 4j], np.complex128)


def test_case07_trainable_subset_keeps_the_rest():
    m7 = TwoThirdsTrainA((np.sin, arr(1, 2, 3)), (np.cos, arr(4, 5, 6)),
                         (np.tan, arr(7, 8, 9)))
    flat, re = ft.destructure(m7)
    f64_equal(flat, [1, 2, 3])
    r = re(arr(10, 20, 30))
    assert r.a[0] is np.sin
    f64_equal(r.a[1], [10, 20, 30])
    assert r.b is m7.b                           # not a child: carried over
    assert r.c[0] is np.tan and r.c[1] is m7.c[1]   # child, not trainable: same object
    f64_equal(r.c[1], [7, 8, 9])
    with pytest.raises(ValueError, match="length 3, got 2"):
        re(arr(10, 20))
    with pytest.raises(ValueError, match="length 3, got 4"):
        re(arr(10, 20, 30, 40))


def test_case08_trainable_order_is_children_order(m1):
    m8 = [FooTrainYX(m1, m1), ABC(True, FooTrainYX(arr(4), False), ()), [arr(5)]]
    flat, re = ft.destructure(m8)
    f64_equal(flat, np.arange(1, 6))
    r = re(np.arange(1, 6))
    assert type(r) is list
    assert r[0].x is r[0].y
    assert r[1].b.y is False
    assert r[1].a is True and r[1].c == ()
    f64_equal(r[2][0], [5.0])
    f64_equal(r[1].b.x, [4.0])


def test_case09_matrix_c_order_and_tie_inside_a_list(m1):
    mat = np.array([[4, 6], [5, 7]], np.float32)
    m9 = ABC(m1, mat, [mat, m1])
    flat, re = ft.destructure(m9)
    f64_equal(flat, [1, 2, 3, 4, 6, 5, 7])      # C order: rows first (Part A §1)
    r = re(np.arange(10, 80, 10))
    assert r.b is r.c[0]
    assert r.a is r.c[1]
    assert r.b.dtype == np.float32 and r.b.shape == (2, 2)
    np.testing.assert_array_equal(r.b, [[40, 50], [60, 70]])


def test_case10_docstring(m1):
    model = XY(arr(1, 2), (np.sin, np.array([3 + 4j])))
    flat, re = ft.destructure(model)
    f64_equal(flat, [1, 2, 3 + 4j], np.complex128)
    assert repr(re) == "Restructure(XY, ..., 3)"
    r = re(np.array([3, 5, 7 + 11j]))
    f64_equal(r.x, [3, 5])
    assert r.y[0] is np.sin
    f64_equal(r.y[1], [7 + 11j], np.complex128)


def test_case11_no_parameters():
    m0 = (None, MISSING, len)
    flat, re = ft.destructure(m0)
    assert flat.shape == (0,) and flat.dtype == np.float32        # Part A §6
    assert len(re) == 0
    r = re(np.zeros(0, np.float32))
    assert type(r) is tuple and len(r) == 3
    assert r[0] is None and r[1] is MISSING and r[2] is len
    assert re([])[1] is MISSING
    with pytest.raises(ValueError, match="length 0, got 1"):
        re(np.array([1]))


def test_case12_no_promotion_from_empty_parts():
    m01 = [XY(None, 0), XY(np.array([1, 2], np.float16), np.array([3], np.float16))]
    flat, re = ft.destructure(m01)
    f64_equal(flat, [1, 2, 3], np.float16)
    r = re(arr(4, 5, 6))
    assert r[0] == XY(None, 0)
    f64_equal(r[1].x, [4, 5], np.float16)


# ----------------------------------------------------------------------------------------
# §2.6 case 22 (the flatten part): tied positions add up
# ----------------------------------------------------------------------------------------
@pytest.fixture
def tied22():
    sh = arr(7, 7)
    model = XYZ(sh, arr(3, 4), sh)
    return model, *ft.destructure(model)


def test_case22_destructure_and_rebuild(tied22):
    model, v, re = tied22
    f64_equal(v, [7, 7, 3, 4])
    r = re(arr(1, 10, 100, 1000))
    f64_equal(r.x, [1, 10])
    f64_equal(r.y, [100, 1000])
    assert r.x is r.z


@pytest.mark.parametrize("grad, expected", [
    (XYZ(3 * np.ones(2), None, 13 * np.ones(2)), [16, 16, 0, 0]),
    (XYZ(4 * np.ones(2), None, 4 * np.ones(2)), [8, 8, 0, 0]),
    (XYZ(4 * np.ones(2), 4 * np.ones(2), 13 * np.ones(2)), [17, 17, 4, 4]),
    ({"x": 3 * np.ones(2), "y": None, "z": 13 * np.ones(2)}, [16, 16, 0, 0]),
    ({"x": None, "y": arr(1, 2), "z": arr(5, 6)}, [5, 6, 1, 2]),
    (None, [0, 0, 0, 0]),
])
def test_case22_flatten_sums_the_gradients_of_tied_positions(tied22, grad, expected):
    _, _, re = tied22
    f64_equal(re.flatten(grad), expected)


def test_case22_flatten_counts_one_object_once(tied22):
    _, _, re = tied22
    g = 4 * np.ones(2)
    f64_equal(re.flatten(XYZ(g, None, g)), [4, 4, 0, 0])
    f64_equal(re.flatten(XYZ(g, arr(1, 1), g.copy())), [8, 8, 1, 1])


def test_case22_flatten_of_the_model_counts_the_tie_once(tied22):
    model, v, re = tied22
    f64_equal(re.flatten(model), [7, 7, 3, 4])
    second = XYZ(arr(1, 2), arr(3, 4), arr(10, 20))   # a second model, untied
    f64_equal(re.flatten(second), [11, 22, 3, 4])


# ----------------------------------------------------------------------------------------
# §2.6 cases 25, 27-30: trainables
# ----------------------------------------------------------------------------------------
def test_case25_trainables(m1):
    mat = np.array([[4, 6], [5, 7]], np.float32)
    m2 = (arr(1, 2, 3), arr(4, 5, 6))
    m3 = XYZ(m1, np.sin, arr(4, 5, 6))
    m4 = XYZ(m1, m1, arr(4, 5, 6))
    m5 = ABC((m3, True), (m1, False), (m4, True))
    m6 = ABC(m1, np.array([4 + 1j]), m1)
    m7 = TwoThirdsTrainA((np.sin, arr(1, 2, 3)), (np.cos, arr(4, 5, 6)),
                         (np.tan, arr(7, 8, 9)))
    m8 = [FooTrainYX(m1, m1), ABC(True, FooTrainYX(arr(4), False), ()), [arr(5)]]
    m9 = ABC(m1, mat, [mat, m1])
    t = ft.trainables(m1)
    assert len(t) == 1 and t[0] is m1
    assert [p is q for p, q in zip(ft.trainables(m2), m2)] == [True, True]
    assert [p is q for p, q in zip(ft.trainables(m3), (m3.x, m3.z))] == [True, True]
    assert len(ft.trainables(m3)) == 2
    assert len(ft.trainables(m4)) == 2
    t5 = ft.trainables(m5)
    assert len(t5) == 3 and t5[0] is m1 and t5[1] is m3.z and t5[2] is m4.z
    t6 = ft.trainables(m6)
    assert len(t6) == 2 and t6[0] is m1 and t6[1] is m6.b
    t7 = ft.trainables(m7)
    assert len(t7) == 1 and t7[0] is m7.a[1]
    t8 = ft.trainables(m8)
    assert [a.tolist() for a in t8] == [[1, 2, 3], [4.0], [5.0]]
    t9 = ft.trainables(m9)
    assert len(t9) == 2 and t9[0] is m1 and t9[1] is mat


def test_case27_trainables_with_paths(m1):
    m4 = XYZ(m1, m1, arr(4, 5, 6))
    got = ft.trainables(m4, path=True)
    assert [p for p, _ in got] == [("x",), ("z",)]
    assert all(isinstance(p, ft.KeyPath) for p, _ in got)
    assert got[0][1] is m1 and got[1][1] is m4.z
    assert [str(p) for p, _ in got] == ["x", "z"]


def test_case28_trainables_paths_through_a_dict():
    x = ABC(arr(1, 2), ({"c": arr(3, 4), "d": 5.0}, arr(6, 7)), None)
    got = ft.trainables(x, path=True)
    assert [tuple(p) for p, _ in got] == [("a",), ("b", 0, "c"), ("b", 1)]
    assert [a.tolist() for _, a in got] == [[1, 2], [3, 4], [6, 7]]
    assert [str(p) for p, _ in got] == ["a", 'b[0]["c"]', "b[1]"]


def test_case29_shared_parameter_counted_once():
    mat = np.array([[1, 2], [3, 4.0]])
    m = (None, mat, (3, mat, 4))
    t = ft.trainables(m)
    assert len(t) == 1 and t[0] is mat
    flat, re = ft.destructure(m)
    f64_equal(flat, [1, 2, 3, 4])               # C order of [[1, 2], [3, 4]]
    r = re(arr(5, 6, 7, 8))
    assert r[1] is r[2][1]
    np.testing.assert_array_equal(r[1], [[5, 6], [7, 8]])


def test_case29_transpose_is_a_separate_parameter_with_an_alias_warning():
    """Part A §7: ``mat.T`` is its own array (no wrapper to see through): two parameters,
    and destructure warns that the flat vector cannot keep their shared memory."""
    mat = np.array([[1, 2], [3, 4.0]])
    m = {"m": mat, "a": mat.T}
    assert len(ft.trainables(m)) == 2
    with pytest.warns(ft.AliasWarning, match=r'\["m"\] and \["a"\]'):
        flat, re = ft.destructure(m)
    f64_equal(flat, [1, 2, 3, 4, 1, 3, 2, 4])
    r = re(flat)
    assert not np.shares_memory(r["m"], r["a"])
    np.testing.assert_array_equal(r["a"], mat.T)


def test_case30_views_are_parameters_themselves():
    base = arr(1, 2, 3) * np.pi
    m = XY(base[0:2], (np.array([[4, 5]]) * np.pi).T)
    assert [p.shape for p in ft.trainables(m)] == [(2,), (2, 1)]
    flat, re = ft.destructure(m)
    np.testing.assert_allclose(flat, np.array([1, 2, 4, 5]) * np.pi)
    r = re(arr(1, 2, 3, 4))
    assert r.y.shape == (2, 1) and r.y.flags.c_contiguous
    np.testing.assert_array_equal(r.y, [[3], [4]])
    np.testing.assert_allclose(base, arr(1, 2, 3) * np.pi)      # the base is untouched


def test_case32_batchnorm_running_stats_not_trainable():
    bn = NormLike(np.zeros(3, np.float32), np.ones(3, np.float32),
                  np.zeros(3, np.float32), np.ones(3, np.float32), np.tanh)
    p, re = ft.destructure(bn)
    assert len(p) == 6
    f64_equal(p, [0, 0, 0, 1, 1, 1], np.float32)     # beta then gamma
    assert repr(re) == "Restructure(NormLike, ..., 6)"
    r = re(np.arange(6))
    assert type(r) is NormLike
    f64_equal(r.beta, [0, 1, 2], np.float32)
    f64_equal(r.gamma, [3, 4, 5], np.float32)
    assert r.mu is bn.mu and r.sigma2 is bn.sigma2 and r.activation is np.tanh
    assert [p is q for p, q in zip(ft.trainables(bn), (bn.beta, bn.gamma))] == [True, True]
    # a gradient carries every field; the non-trainable ones are ignored whatever they hold
    g = {"beta": np.ones(3), "gamma": 2 * np.ones(3), "mu": np.ones(3), "sigma2": None,
         "activation": None}
    f64_equal(re.flatten(g), [1, 1, 1, 2, 2, 2])


def test_case32_inside_a_chain_paths():
    bn = NormLike(np.zeros(2), np.ones(2), np.zeros(2), np.ones(2))
    c = Chain((DenseAct(np.ones((2, 1)), np.zeros(2)), bn))
    flat, re = ft.destructure(c)
    assert len(re) == 8
    assert [str(p) for p in re.paths] == ["layers[0].weight", "layers[0].bias",
                                          "layers[1].beta", "layers[1].gamma"]


# ----------------------------------------------------------------------------------------
# Part A §1: C order
# ----------------------------------------------------------------------------------------
MAT = np.array([[4.0, 6.0], [5.0, 7.0]])


def _strided(mat):
    big = np.zeros((4, 4))
    big[::2, 1::2] = mat
    return big[::2, 1::2]


def _inner_axis(mat):
    big = np.zeros((2, 2, 3))
    big[:, :, 1] = mat
    return big[:, :, 1]


@pytest.mark.parametrize("leaf", [
    MAT,
    np.asfortranarray(MAT),
    MAT.T.copy().T,                                     # F-ordered by construction
    _strided(MAT),
    _inner_axis(MAT),                                    # strided view of a 3-D array
    np.ascontiguousarray(MAT[::-1, ::-1])[::-1, ::-1],  # negative strides
], ids=["C", "F", "F2", "strided", "view3d", "negstride"])
def test_A1_c_order_whatever_the_memory_layout(leaf):
    np.testing.assert_array_equal(leaf, MAT)
    assert leaf.flags.c_contiguous == (leaf is MAT)
    flat, re = ft.destructure({"w": leaf})
    f64_equal(flat, [4, 6, 5, 7])
    r = re(flat)
    np.testing.assert_array_equal(r["w"], MAT)
    assert r["w"].flags.c_contiguous


def test_A1_strided_view_flattens_its_own_elements():
    big = np.arange(16.0).reshape(4, 4)
    flat, _ = ft.destructure([big[::2, 1::2], big[1::2, ::2]])
    f64_equal(flat, [1, 3, 9, 11, 4, 6, 12, 14])


def test_A1_leaves_in_traversal_order_dict_insertion_order():
    m = {"z": arr(1), "a": (arr(2), [arr(3), {"q": arr(4), "b": arr(5)}]), "m": arr(6)}
    flat, re = ft.destructure(m)
    f64_equal(flat, [1, 2, 3, 4, 5, 6])
    assert [str(p) for p in re.paths] == ['["z"]', '["a"][0]', '["a"][1][0]',
                                          '["a"][1][1]["q"]', '["a"][1][1]["b"]', '["m"]']


def test_A1_flatten_of_f_ordered_gradient_uses_c_order():
    _, re = ft.destructure({"w": MAT})
    f64_equal(re.flatten({"w": np.asfortranarray(MAT)}), [4, 6, 5, 7])
    f64_equal(re.flatten({"w": MAT.T.copy().T}), [4, 6, 5, 7])


# ----------------------------------------------------------------------------------------
# Part A §5: what is a parameter
# ----------------------------------------------------------------------------------------
def test_A5_zero_d_array_is_a_parameter_of_length_one():
    m = {"s": np.array(2.5), "v": arr(1, 2)}
    flat, re = ft.destructure(m)
    f64_equal(flat, [2.5, 1, 2])
    r = re(arr(7, 8, 9))
    assert r["s"].shape == () and r["s"] == 7.0 and isinstance(r["s"], np.ndarray)


def test_A5_size_zero_arrays_take_no_room():
    m = (np.zeros((0, 3)), arr(1), np.zeros(0, np.float32), arr(2))
    flat, re = ft.destructure(m)
    f64_equal(flat, [1, 2])
    r = re(arr(5, 6))
    assert r[0].shape == (0, 3) and r[2].shape == (0,) and r[2].dtype == np.float32
    f64_equal(r[3], [6])


def test_A5_non_parameters_are_carried_over_as_the_same_objects():
    ints = np.arange(3)
    bools = np.array([True, False])
    scalar = np.float64(1.5)
    lam = lambda v: v  # noqa: E731
    m = {"ints": ints, "bools": bools, "s": "relu", "n": None, "f": lam, "k": 3, "x": 2.5,
         "scalar": scalar, "b": b"raw", "ufunc": np.tanh, "w": arr(1, 2), "t": ()}
    flat, re = ft.destructure(m)
    f64_equal(flat, [1, 2])
    r = re(arr(3, 4))
    assert list(r) == list(m)
    for k in m:
        if k != "w":
            assert r[k] is m[k], k
    f64_equal(r["w"], [3, 4])


def test_A5_int_and_bool_arrays_stay_unchanged_and_unaliased():
    m = {"w": arr(1.0), "i": np.array([1, 2], np.int32)}
    _, re = ft.destructure(m)
    r = re(arr(9))
    assert r["i"] is m["i"]
    np.testing.assert_array_equal(m["i"], [1, 2])


def test_A5_trainables_excludes_non_parameters():
    m = (np.arange(3), np.array([True]), 1.0, np.float32(2), arr(1), "s")
    t = ft.trainables(m)
    assert len(t) == 1 and t[0] is m[4]


def test_A5_longdouble_parameter_values_survive():
    """Regression: long double parameters once left the flat vector uninitialised."""
    a = np.array([1.5, 2.5], np.longdouble)
    assert ft.isnumeric(a)
    m = {"a": a, "b": arr(3)}
    flat, re = ft.destructure(m)
    assert flat.dtype == np.result_type(np.longdouble, np.float64)
    np.testing.assert_array_equal(flat.astype(np.float64), [1.5, 2.5, 3.0])
    r = re(arr(4, 5, 6))
    assert r["a"].dtype == np.longdouble and r["b"].dtype == np.float64
    np.testing.assert_array_equal(r["a"].astype(np.float64), [4, 5])
    np.testing.assert_array_equal(re.flatten(m).astype(np.float64), [1.5, 2.5, 3.0])
    np.testing.assert_array_equal(re.flatten(m, out=np.zeros(3)), [1.5, 2.5, 3.0])
    c = np.array([1 + 2j], np.clongdouble)
    flat, re = ft.destructure([c])
    np.testing.assert_array_equal(flat.astype(np.complex128), [1 + 2j])


def test_A5_longdouble_gradient_is_packed():
    _, re = ft.destructure({"b": np.zeros(3)})
    np.testing.assert_array_equal(
        re.flatten({"b": np.array([7.0, 8.0, 9.0], np.longdouble)}).astype(np.float64),
        [7, 8, 9])


def test_A5_big_endian_parameter_values_survive():
    """Regression: byte-swapped parameters were once copied byte for byte."""
    b = np.array([1.0, 2.0, 3.0]).astype(">f8")
    m = {"b": b, "c": np.array([1 + 2j]).astype(">c16"), "d": np.ones(1, np.float32)}
    flat, re = ft.destructure(m)
    np.testing.assert_array_equal(flat, [1, 2, 3, 1 + 2j, 1])
    r = re(np.array([4, 5, 6, 7 + 8j, 9]))
    np.testing.assert_array_equal(r["b"], [4, 5, 6])
    assert r["b"].dtype == b.dtype
    np.testing.assert_array_equal(r["c"], [7 + 8j])
    np.testing.assert_array_equal(re.flatten(m), flat)
    rv = re(np.array([4, 5, 6, 7 + 8j, 9]).astype(">c16"), copy=False)
    np.testing.assert_array_equal(rv["b"], [4, 5, 6])


@pytest.mark.parametrize("model_dtype", [np.float64, np.float32, ">f8"])
def test_A5_big_endian_gradient_is_packed(model_dtype):
    _, re = ft.destructure({"b": np.zeros(3, model_dtype), "c": np.zeros(1)})
    g = {"b": np.array([7.0, 8.0, 9.0]).astype(">f8"), "c": arr(4)}
    np.testing.assert_array_equal(re.flatten(g), [7, 8, 9, 4])
    np.testing.assert_array_equal(re.flatten(g, out=np.zeros(4)), [7, 8, 9, 4])


# ----------------------------------------------------------------------------------------
# Part A §6: promotion and projection
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtypes, expected", [
    ((np.float32, np.float64), np.float64),
    ((np.float64, np.float32), np.float64),
    ((np.float64, np.complex64), np.complex128),
    ((np.float32, np.complex64), np.complex64),
    ((np.float16,), np.float16),
    ((np.float16, np.float16), np.float16),
    ((np.float16, np.float32), np.float32),
    ((np.complex64,), np.complex64),
    ((np.float16, np.complex128), np.complex128),
])
def test_A6_flat_dtype_is_result_type(dtypes, expected):
    m = [np.ones(2, d) for d in dtypes]
    flat, re = ft.destructure(m)
    assert flat.dtype == expected == np.result_type(*dtypes)
    assert re.dtype == expected
    r = re(flat)
    assert [a.dtype for a in r] == [np.dtype(d) for d in dtypes]


def test_A6_integer_arrays_do_not_promote():
    flat, _ = ft.destructure((np.ones(1, np.float16), np.arange(3, dtype=np.int64)))
    assert flat.dtype == np.float16


def test_A6_no_parameters_gives_empty_float32():
    for m in [(), [], {}, (1, "a", None), {"i": np.arange(3)}]:
        flat, re = ft.destructure(m)
        assert flat.dtype == np.float32 and flat.shape == (0,), m
        assert len(re) == 0


def test_A6_complex_into_real_leaf_keeps_the_real_part_silently():
    m = {"r": np.ones(2, np.float32), "c": np.ones(1, np.complex64)}
    _, re = ft.destructure(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                    # no ComplexWarning
        r = re(np.array([1.5 + 9j, -2 - 9j, 3 + 4j]))
    f64_equal(r["r"], [1.5, -2], np.float32)
    f64_equal(r["c"], [3 + 4j], np.complex64)


@pytest.mark.parametrize("v", [
    np.array([1, 2, 3]), np.array([1, 2, 3], np.int8), np.array([1, 2, 3], np.uint16),
    [1, 2, 3], (1, 2, 3), range(1, 4), np.array([1, 2, 3], np.float16),
    np.array([1, 2, 3], np.float32), np.array([1 + 0j, 2, 3], np.complex64),
], ids=lambda v: type(v).__name__ + str(getattr(v, "dtype", "")))
def test_A6_any_real_integer_or_complex_vector_is_accepted(v):
    m = {"a": np.zeros(2, np.float32), "b": np.zeros(1)}
    _, re = ft.destructure(m)
    r = re(v)
    f64_equal(r["a"], [1, 2], np.float32)
    f64_equal(r["b"], [3])


def test_A6_bool_vector_is_accepted_as_numbers():
    _, re = ft.destructure(arr(0, 0))
    f64_equal(re(np.array([True, False])), [1, 0])


def test_A6_rebuild_casts_each_slice_to_its_leaf_dtype():
    m = (np.zeros(1, np.float16), np.zeros(1, np.float32), np.zeros(1, np.complex64))
    _, re = ft.destructure(m)
    r = re(np.array([1 / 3, 1 / 3, 1 / 3 + 1j]))
    assert r[0].dtype == np.float16 and r[0][0] == np.float16(1 / 3)
    assert r[1].dtype == np.float32 and r[1][0] == np.float32(1 / 3)
    assert r[2].dtype == np.complex64 and r[2][0] == np.complex64(1 / 3 + 1j)


def test_A6_nan_and_inf_pass_through():
    m = {"a": np.array([np.nan, 1.0]), "b": np.ones(3, np.float32)}
    flat, re = ft.destructure(m)
    assert np.isnan(flat[0]) and flat[1] == 1
    r = re(np.array([np.inf, -np.inf, np.nan, 1e300, -0.0]))
    assert r["a"][0] == np.inf and r["a"][1] == -np.inf
    assert np.isnan(r["b"][0]) and r["b"][1] == np.inf                 # 1e300 -> inf in f32
    assert r["b"][2] == 0 and np.signbit(r["b"][2])


# ----------------------------------------------------------------------------------------
# Part A §7: ties
# ----------------------------------------------------------------------------------------
def test_A7_tie_layout_and_rebuild_keeps_is_ties():
    w = arr(1, 2)
    m = {"a": w, "b": [w, arr(3)], "c": (w,)}
    flat, re = ft.destructure(m)
    f64_equal(flat, [1, 2, 3])
    lay = re.layout
    assert lay.tied
    assert lay.occurrences == [0, 0, 1, 0]
    assert len(lay.params) == 2 and lay.params[0] is w
    assert list(lay.offsets) == [0, 2, 3]
    assert lay.shapes == [(2,), (1,)]
    r = re(arr(5, 6, 7))
    assert r["a"] is r["b"][0] is r["c"][0]
    assert r["a"] is not w
    assert [str(p) for p in re.paths] == ['["a"]', '["b"][1]']


def test_A7_untied_layout():
    m = (arr(1), np.ones((2, 2), np.float32))
    _, re = ft.destructure(m)
    lay = re.layout
    assert not lay.tied
    assert lay.occurrences == [0, 1]
    assert lay.dtypes == [np.dtype(np.float64), np.dtype(np.float32)]
    assert lay.shapes == [(1,), (2, 2)]
    assert list(lay.offsets) == [0, 1, 5]


def test_A7_tie_through_a_shared_record():
    d = DenseAct(np.ones((1, 2)), np.zeros(1), np.tanh)
    m = {"a": d, "b": d}
    flat, re = ft.destructure(m)
    assert len(re) == 3
    r = re(arr(1, 2, 3))
    assert r["a"].weight is r["b"].weight
    ga = {"weight": np.ones((1, 2)), "bias": np.ones(1), "activation": None}
    gb = {"weight": 2 * np.ones((1, 2)), "bias": 5 * np.ones(1), "activation": None}
    f64_equal(re.flatten({"a": ga, "b": gb}), [3, 3, 6])     # Flux#1767: summed


def test_A7_flatten_mixed_one_object_and_copies():
    w = arr(1, 1)
    _, re = ft.destructure((w, w, w))
    g = arr(1, 2)
    f64_equal(re.flatten((g, g, g)), [1, 2])
    f64_equal(re.flatten((g, g, g.copy())), [2, 4])
    f64_equal(re.flatten((g, None, arr(10, 10))), [11, 12])
    f64_equal(re.flatten((None, None, arr(10, 10))), [10, 10])


def test_A7_disjoint_slices_of_one_buffer_do_not_warn():
    b = np.arange(6.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat, _ = ft.destructure((b[:3], b[3:], b[::2][:0]))
        ft.destructure((b[::2], b[1::2]))                      # interleaved, no element shared
    f64_equal(flat, np.arange(6.0))


def test_A7_overlapping_slices_warn():
    b = np.arange(6.0)
    with pytest.warns(ft.AliasWarning, match=r"\[0\] and \[1\]"):
        ft.destructure((b[:4], b[3:]))


def test_A7_overlap_hidden_behind_a_wide_strided_view_warns():
    """Regression: the overlap sweep once compared each array only with the widest extent
    so far, missing two overlapping views behind a wide strided one."""
    x = np.arange(100.0)
    with pytest.warns(ft.AliasWarning, match=r'\["a"\] and \["b"\]') as rec:
        ft.destructure({"s": x[::10], "a": x[1:3], "b": x[2:4]})
    assert len(rec) == 1                         # s shares no element with a or b


def test_A7_every_overlapping_pair_warns():
    x = np.arange(20.0)
    with pytest.warns(ft.AliasWarning) as rec:
        ft.destructure({"a": x[0:10], "b": x[1:8], "c": x[5:6]})
    msgs = sorted(str(r.message).split(" share")[0] for r in rec)
    assert msgs == ['destructure: the parameters at ["a"] and ["b"]',
                    'destructure: the parameters at ["a"] and ["c"]',
                    'destructure: the parameters at ["b"] and ["c"]']


# ----------------------------------------------------------------------------------------
# Part A §8: dicts
# ----------------------------------------------------------------------------------------
def test_A8_dicts_rebuild():
    m = {"enc": {"w": arr(1, 2), "act": "relu"}, "dec": [{"w": np.ones((1, 1), np.float32)}],
         7: arr(3)}
    flat, re = ft.destructure(m)
    f64_equal(flat, [1, 2, 1, 3])
    r = re(arr(5, 6, 7, 8))
    assert type(r) is dict and list(r) == ["enc", "dec", 7]
    assert list(r["enc"]) == ["w", "act"] and r["enc"]["act"] == "relu"
    f64_equal(r["enc"]["w"], [5, 6])
    f64_equal(r["dec"][0]["w"], [[7]], np.float32)
    f64_equal(r[7], [8])
    assert [str(p) for p in re.paths] == ['["enc"]["w"]', '["dec"][0]["w"]', "[7]"]


def test_A8_dict_subclasses_and_dataclasses_rebuild_their_types():
    od = collections.OrderedDict(b=arr(1), a=arr(2))
    m = (od, Point(arr(3), len))
    _, re = ft.destructure(m)
    r = re(arr(4, 5, 6))
    assert type(r[0]) is collections.OrderedDict and list(r[0]) == ["b", "a"]
    assert type(r[1]) is Point and r[1].y is len
    f64_equal(r[1].x, [6])


# ----------------------------------------------------------------------------------------
# Restructure(v, copy=False): views into v
# ----------------------------------------------------------------------------------------
def test_copy_false_views_share_memory_with_v():
    m = {"a": np.zeros((2, 2)), "b": (np.sin, np.zeros(3)), "c": np.zeros(0)}
    _, re = ft.destructure(m)
    v = np.arange(7.0)
    r = re(v, copy=False)
    assert np.shares_memory(r["a"], v) and np.shares_memory(r["b"][1], v)
    np.testing.assert_array_equal(r["a"], [[0, 1], [2, 3]])
    v[0] = 100.0
    assert r["a"][0, 0] == 100.0
    r["b"][1][2] = -1.0
    assert v[6] == -1.0
    assert r["b"][0] is np.sin


def test_copy_true_is_independent_of_v():
    _, re = ft.destructure({"a": np.zeros(2)})
    v = arr(1, 2)
    r = re(v)
    assert not np.shares_memory(r["a"], v)
    v[0] = 9
    assert r["a"][0] == 1


def test_copy_false_mixed_dtypes_copy_the_others():
    m = {"a": np.zeros(2), "b": np.zeros(2, np.float32), "c": np.zeros(1)}
    _, re = ft.destructure(m)
    v = arr(1, 2, 3, 4, 5)
    r = re(v, copy=False)
    assert np.shares_memory(r["a"], v) and np.shares_memory(r["c"], v)
    assert not np.shares_memory(r["b"], v)
    f64_equal(r["b"], [3, 4], np.float32)
    f64_equal(r["c"], [5])
    r32 = re(v.astype(np.float32), copy=False)       # now only b matches
    f64_equal(r32["a"], [1, 2])
    f64_equal(r32["b"], [3, 4], np.float32)


def test_copy_false_read_only_v_gives_read_only_views():
    m = {"a": np.zeros(2), "b": np.zeros(1, np.float32)}
    _, re = ft.destructure(m)
    v = arr(1, 2, 3)
    v.setflags(write=False)
    r = re(v, copy=False)
    assert np.shares_memory(r["a"], v)
    assert not r["a"].flags.writeable
    with pytest.raises(ValueError):
        r["a"][0] = 5.0
    assert r["b"].flags.writeable                       # a copy
    v2 = arr(1, 2, 3)
    assert re(v2, copy=False)["a"].flags.writeable


def test_copy_false_keeps_ties_and_non_parameters():
    w = np.zeros(2)
    m = (w, "s", w, np.arange(2))
    _, re = ft.destructure(m)
    v = arr(1, 2)
    r = re(v, copy=False)
    assert r[0] is r[2] and np.shares_memory(r[0], v)
    assert r[1] == "s" and r[3] is m[3]


def test_copy_false_with_non_contiguous_v_still_correct():
    _, re = ft.destructure({"a": np.zeros((2, 2))})
    v = np.arange(8.0)[::2]
    r = re(v, copy=False)
    np.testing.assert_array_equal(r["a"], [[0, 2], [4, 6]])


def test_copy_false_round_trip_and_shapes():
    m = {"a": np.ones((2, 3), np.float32), "b": np.array(5.0, np.float32)}
    flat, re = ft.destructure(m)
    r = re(flat, copy=False)
    assert r["a"].shape == (2, 3) and r["b"].shape == ()
    assert r["a"].flags.c_contiguous
    assert_tree_equal(r, m)
    assert np.shares_memory(r["a"], flat)


# ----------------------------------------------------------------------------------------
# nothing is modified
# ----------------------------------------------------------------------------------------
def test_model_and_v_are_never_modified():
    w = np.array([[1.0, 2.0]], np.float32)
    m = {"w": w, "c": np.array([1 + 1j]), "i": np.arange(2)}
    snap = {k: v.copy() for k, v in m.items()}
    flat, re = ft.destructure(m)
    flat_snap = flat.copy()
    v = np.array([9, 8, 7 + 3j])
    v_snap = v.copy()
    r1 = re(v)
    r2 = re(v, copy=False)
    r2["c"][0] = 0
    g = re.flatten(r1)
    re.flatten(m)
    for k in m:
        np.testing.assert_array_equal(m[k], snap[k])
        assert m[k].dtype == snap[k].dtype
    np.testing.assert_array_equal(flat, flat_snap)
    np.testing.assert_array_equal(v[:2], v_snap[:2])          # only c was written, via the view
    assert v[2] == 0
    f64_equal(g, [9, 8, 7 + 3j], np.complex128)
    assert r1["w"] is not w


def test_flat_is_a_fresh_copy():
    m = {"a": np.ones(3)}
    flat, re = ft.destructure(m)
    flat[0] = 7
    assert m["a"][0] == 1
    out = re.flatten(m)
    assert out is not flat and not np.shares_memory(out, m["a"])


# ----------------------------------------------------------------------------------------
# Restructure attributes
# ----------------------------------------------------------------------------------------
def test_restructure_len_repr_dtype_paths():
    c = Chain((DenseAct(np.ones((1, 2), np.float32), np.zeros(1, np.float32), np.tanh),
               DenseAct(np.ones((1, 1), np.float32), np.zeros(1, np.float32))))
    flat, re = ft.destructure(c)
    assert len(re) == 5 == flat.size
    assert repr(re) == "Restructure(Chain, ..., 5)"
    assert re.dtype == np.float32
    assert [str(p) for p in re.paths] == ["layers[0].weight", "layers[0].bias",
                                          "layers[1].weight", "layers[1].bias"]
    assert re.paths[2] == ("layers", 1, "weight")
    paths = re.paths
    paths.clear()
    assert len(re.paths) == 4                              # a copy each time


def test_re_repr_names_the_top_type():
    assert repr(ft.destructure((arr(1),))[1]) == "Restructure(tuple, ..., 1)"
    assert repr(ft.destructure([arr(1)])[1]) == "Restructure(list, ..., 1)"
    assert repr(ft.destructure({"a": arr(1, 2)})[1]) == "Restructure(dict, ..., 2)"


def test_re_is_reusable():
    _, re = ft.destructure({"a": np.zeros(2), "b": np.zeros(1, np.float32)})
    for k in range(3):
        r = re(np.full(3, float(k)))
        f64_equal(r["a"], [k, k])
        rv = re(np.full(3, float(k)), copy=False)
        f64_equal(rv["b"], [k], np.float32)


# ----------------------------------------------------------------------------------------
# Restructure.flatten
# ----------------------------------------------------------------------------------------
def test_flatten_of_the_model_equals_flat():
    m = {"a": np.ones((2, 2), np.float32), "b": (np.sin, np.array([1 + 2j])), "c": arr(3)}
    flat, re = ft.destructure(m)
    out = re.flatten(m)
    assert out.dtype == flat.dtype
    np.testing.assert_array_equal(out, flat)


def test_flatten_into_out_writes_and_returns_it():
    m = {"a": np.ones(2), "b": arr(3)}
    flat, re = ft.destructure(m)
    buf = np.full(3, -1.0)
    got = re.flatten(m, out=buf)
    assert got is buf
    f64_equal(buf, [1, 1, 3])
    g = {"a": arr(5, 6), "b": None}
    got = re.flatten(g, out=buf)
    assert got is buf
    f64_equal(buf, [5, 6, 0])                       # None zero-fills even a dirty buffer
    buf32 = np.zeros(3, np.float32)
    assert re.flatten(g, out=buf32) is buf32
    f64_equal(buf32, [5, 6, 0], np.float32)
    bufc = np.zeros(3, np.complex128)
    f64_equal(re.flatten({"a": np.array([1j, 2]), "b": arr(1)}, out=bufc), [1j, 2, 1],
              np.complex128)


def test_flatten_of_a_second_model_of_the_same_structure():
    c1 = Chain((DenseAct(np.ones((1, 2)), np.zeros(1), np.tanh),))
    c2 = Chain((DenseAct(np.array([[3.0, 4.0]]), np.array([5.0]), np.abs),))
    _, re = ft.destructure(c1)
    f64_equal(re.flatten(c2), [3, 4, 5])
    f64_equal(ft.destructure(c2)[0], re.flatten(c2))


def test_flatten_of_the_rebuilt_model_inverts_rebuild():
    m = {"a": np.ones((2, 3)), "b": [np.ones(2, np.float32), np.ones(1, np.complex64)]}
    flat, re = ft.destructure(m)
    v = np.arange(9) * (1 + 1j)
    back = re.flatten(re(v))
    expected = v.copy()
    expected[:8] = expected[:8].real
    np.testing.assert_array_equal(back, expected)


def test_flatten_with_none_subtrees_zero_fills():
    c = Chain((DenseAct(np.ones((1, 2)), np.ones(1), np.tanh),
               DenseAct(np.ones((1, 1)), np.ones(1))))
    _, re = ft.destructure(c)
    g = {"layers": (None, {"weight": arr(7).reshape(1, 1), "bias": None, "activation": None})}
    f64_equal(re.flatten(g), [0, 0, 0, 7, 0])
    f64_equal(re.flatten({"layers": None}), [0, 0, 0, 0, 0])
    f64_equal(re.flatten(None), [0, 0, 0, 0, 0])


def test_flatten_accepts_records_namedtuples_and_tuples_for_lists():
    m = {"r": XY(arr(1), "f"), "l": [arr(2), arr(3)]}
    _, re = ft.destructure(m)
    f64_equal(re.flatten({"r": {"x": arr(10), "y": None}, "l": (arr(20), arr(30))}),
              [10, 20, 30])
    f64_equal(re.flatten({"r": XY(arr(10), None), "l": [arr(20), None]}), [10, 20, 0])


def test_flatten_dtype_widens_to_the_gradient():
    m = {"a": np.ones(2, np.float32)}
    _, re = ft.destructure(m)
    f64_equal(re.flatten({"a": np.ones(2, np.float32)}), [1, 1], np.float32)
    f64_equal(re.flatten({"a": np.array([1.2, 3.4])}), [1.2, 3.4])
    f64_equal(re.flatten({"a": np.array([1, 1j])}), [1, 1j], np.complex128)
    f64_equal(re.flatten({"a": np.ones(2, np.float16)}), [1, 1], np.float32)


def test_flatten_of_an_empty_model():
    _, re = ft.destructure((None, "a"))
    out = re.flatten((None, "b"))
    assert out.shape == (0,) and out.dtype == np.float32


def test_flatten_gradient_may_omit_non_trainable_fields():
    """A gradient of a narrowing record needs only its trainable entries."""
    bn = NormLike(np.zeros(2), np.ones(2), np.zeros(2), np.ones(2))
    _, re = ft.destructure(bn)
    got = re.flatten({"beta": np.array([1.0, 2.0]), "gamma": np.array([3.0, 4.0])})
    np.testing.assert_array_equal(got, [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="expected an entry 'gamma'"):
        re.flatten({"beta": np.array([1.0, 2.0])})
