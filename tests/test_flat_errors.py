"""Errors of the flat layer, pinned to their messages (SPEC Part A §6, §7, §13): the wrong
vector for ``Restructure``, a tree or ``out`` that does not fit ``Restructure.flatten``, a
``trainable()`` that names a non-child, cycles, the ``AliasWarning``; and that a failing
call leaves the model, the vector and ``out`` as they were.
"""
from __future__ import annotations

import re as regex
import warnings

import numpy as np
import pytest

import fluxtree as ft
from tests.helpers import Chain, DenseAct


def chain():
    return Chain((DenseAct(np.ones((1, 2)), np.ones(1), np.tanh),
                  DenseAct(np.ones((1, 1)), np.ones(1))))


@pytest.fixture
def xy():
    m = {"x": {"w": np.ones(2)}, "l": [np.ones(1)]}
    return m, *ft.destructure(m)


# ----------------------------------------------------------------------------------------
# Restructure(v)
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 2, 4, 30])
def test_wrong_length_names_both_lengths(xy, n):
    _, _, re = xy
    with pytest.raises(ValueError, match=rf"^Restructure: expected a vector of length 3, "
                                         rf"got {n}\.$"):
        re(np.zeros(n))


def test_wrong_length_with_copy_false(xy):
    _, _, re = xy
    with pytest.raises(ValueError, match="length 3, got 2"):
        re(np.zeros(2), copy=False)


@pytest.mark.parametrize("shape", [(3, 1), (1, 3), (3, 3), ()])
def test_not_a_vector(xy, shape):
    _, _, re = xy
    with pytest.raises(ValueError, match=regex.escape(
            f"Restructure: expected a 1-D vector of length 3, got shape {shape}.")):
        re(np.zeros(shape))


@pytest.mark.parametrize("v, dtype", [
    (np.array(["a", "b", "c"]), "<U1"),
    (np.array([1.0, 2.0, 3.0], dtype=object), "object"),
    ("abc", "<U3"),
    (np.array([b"a", b"b", b"c"]), "|S1"),
    (np.zeros(3, "datetime64[s]"), "datetime64[s]"),
])
def test_non_numeric_vector_is_a_type_error(xy, v, dtype):
    _, _, re = xy
    with pytest.raises(TypeError, match=regex.escape(
            f"Restructure: expected a real, complex or integer vector, got dtype {dtype}.")):
        re(v)


def test_gpu_vector_for_a_cpu_model(xy):
    class FakeGPU:
        __cuda_array_interface__: dict = {}

    _, _, re = xy
    with pytest.raises(ValueError, match="model lives on the CPU but the vector is a GPU "
                                         "array"):
        re(FakeGPU())


def test_failing_rebuild_changes_nothing(xy):
    m, flat, re = xy
    v = np.arange(4.0)
    with pytest.raises(ValueError):
        re(v)
    np.testing.assert_array_equal(v, np.arange(4.0))
    np.testing.assert_array_equal(m["x"]["w"], [1, 1])
    np.testing.assert_array_equal(flat, [1, 1, 1])
    r = re(np.arange(3.0))                  # still usable afterwards
    np.testing.assert_array_equal(r["l"][0], [2])


# ----------------------------------------------------------------------------------------
# Restructure.flatten(tree)
# ----------------------------------------------------------------------------------------
def test_flatten_wrong_shape_names_the_path(xy):
    _, _, re = xy
    with pytest.raises(ValueError, match=regex.escape(
            'Restructure.flatten: expected shape (2,) at ["x"]["w"], got (2, 1).')):
        re.flatten({"x": {"w": np.ones((2, 1))}, "l": None})


def test_flatten_wrong_shape_in_a_chain_names_layers_path():
    _, re = ft.destructure(chain())
    g = {"layers": (None, {"weight": np.ones((2, 2)), "bias": None, "activation": None})}
    with pytest.raises(ValueError, match=regex.escape(
            "Restructure.flatten: expected shape (1, 1) at layers[1].weight, got (2, 2).")):
        re.flatten(g)


@pytest.mark.parametrize("value, got", [
    ([1.0], "a list"),
    (np.ones(1, np.int32), "dtype int32"),
    (np.array([True]), "dtype bool"),
    (np.float64(1.0), "a float64"),
    (1.0, "a float"),
    ("g", "a str"),
])
def test_flatten_wrong_type_names_the_path(xy, value, got):
    _, _, re = xy
    with pytest.raises(TypeError, match=regex.escape(
            f'Restructure.flatten: expected a float or complex array at ["l"][0], '
            f"got {got}.")):
        re.flatten({"x": None, "l": [value]})


def test_flatten_missing_dict_key(xy):
    _, _, re = xy
    with pytest.raises(ValueError, match=regex.escape(
            "Restructure.flatten: expected an entry 'w' like the model's dict at [\"x\"]; "
            "the tree has ['v'].")):
        re.flatten({"x": {"v": np.ones(2)}, "l": [None]})
    with pytest.raises(ValueError, match=regex.escape(
            "expected an entry 'x' like the model's dict at <root>; the tree has ['l'].")):
        re.flatten({"l": [None]})


def test_flatten_missing_record_field():
    _, re = ft.destructure(chain())
    with pytest.raises(ValueError, match=regex.escape(
            "expected an entry 'weight' like the model's DenseAct at layers[1]; the tree "
            "has ['bias', 'activation'].")):
        re.flatten({"layers": (None, {"bias": None, "activation": None})})


def test_flatten_wrong_node_kind(xy):
    _, _, re = xy
    with pytest.raises(TypeError, match=regex.escape(
            'Restructure.flatten: expected a dict or a dict like the model at ["x"], '
            "got list.")):
        re.flatten({"x": [np.ones(2)], "l": [None]})
    with pytest.raises(TypeError, match=regex.escape(
            'expected a sequence like the model\'s list at ["l"], got dict.')):
        re.flatten({"x": None, "l": {"a": 1}})


def test_flatten_wrong_sequence_length(xy):
    _, _, re = xy
    with pytest.raises(ValueError, match=regex.escape(
            'expected 1 children like the model\'s list at ["l"], got 2.')):
        re.flatten({"x": None, "l": [None, None]})


def test_flatten_of_a_cyclic_tree_is_driven_by_the_model():
    """The model bounds the walk: a tree that contains itself is a mismatch, not a hang."""
    _, re = ft.destructure([np.ones(1), [np.ones(1)]])
    g = [None, []]
    g[1].append(g)
    with pytest.raises(TypeError, match=regex.escape(
            "expected a float or complex array at [1][0], got a list.")):
        re.flatten(g)


# ----------------------------------------------------------------------------------------
# Restructure.flatten(tree, out=...)
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("out, got", [
    (np.zeros(4), "shape (4,)"),
    (np.zeros(2), "shape (2,)"),
    (np.zeros((3, 1)), "shape (3, 1)"),
    ([0.0, 0.0, 0.0], "list"),
])
def test_flatten_out_wrong_length_or_kind(xy, out, got):
    m, _, re = xy
    with pytest.raises(ValueError, match=regex.escape(
            f"Restructure.flatten: out must be a 1-D vector of length 3, got {got}.")):
        re.flatten(m, out=out)


def _readonly(n):
    a = np.zeros(n)
    a.setflags(write=False)
    return a


@pytest.mark.parametrize("out, dtype", [
    (np.zeros(3, np.int64), "int64"),
    (np.zeros(3, bool), "bool"),
    (np.zeros(6)[::2], "float64"),          # not contiguous
    (_readonly(3), "float64"),
], ids=["int", "bool", "strided", "readonly"])
def test_flatten_out_wrong_dtype_or_flags(xy, out, dtype):
    m, _, re = xy
    with pytest.raises(TypeError, match=regex.escape(
            f"Restructure.flatten: out must be a writeable contiguous float or complex "
            f"vector, got dtype {dtype}.")):
        re.flatten(m, out=out)


def test_flatten_complex_gradient_into_real_out():
    m = {"a": np.ones(2)}
    _, re = ft.destructure(m)
    out = np.full(2, 5.0)
    with pytest.raises(TypeError, match=regex.escape(
            "Restructure.flatten: dtype complex128 cannot be cast to float64 under "
            "casting='same_kind'.")):
        re.flatten({"a": np.array([1 + 2j, 0])}, out=out)
    np.testing.assert_array_equal(out, [5, 5])


def test_flatten_second_complex_model_into_real_out():
    m = {"a": np.array([1 + 2j])}
    _, re = ft.destructure(m)
    with pytest.raises(TypeError, match="complex128 cannot be cast to float64"):
        re.flatten({"a": np.array([1 + 2j])}, out=np.zeros(1))


def test_flatten_complex_model_itself_into_real_out():
    """Regression: ``flatten(model)`` once took a fast path that checked no dtypes."""
    m = {"a": np.array([1 + 2j])}
    _, re = ft.destructure(m)
    out = np.full(1, 5.0)
    with pytest.raises(TypeError, match="complex128 cannot be cast to float64"):
        re.flatten(m, out=out)
    assert out[0] == 5.0


def test_failing_flatten_leaves_out_unchanged():
    c = chain()
    _, re = ft.destructure(c)
    out = np.arange(5.0)
    g = {"layers": ({"weight": np.ones((1, 2)), "bias": np.ones(1), "activation": None},
                    {"weight": np.ones((2, 2)), "bias": None, "activation": None})}
    with pytest.raises(ValueError, match=r"layers\[1\]\.weight"):
        re.flatten(g, out=out)
    np.testing.assert_array_equal(out, np.arange(5.0))
    g2 = {"layers": ({"weight": np.ones((1, 2)), "bias": np.ones(1), "activation": None},
                     {"weight": np.ones((1, 1)), "bias": np.array([1j]), "activation": None})}
    with pytest.raises(TypeError):
        re.flatten(g2, out=out)
    np.testing.assert_array_equal(out, np.arange(5.0))
    np.testing.assert_array_equal(g["layers"][0]["weight"], [[1, 1]])


# ----------------------------------------------------------------------------------------
# trainable()
# ----------------------------------------------------------------------------------------
@ft.functor
class NamesStranger:
    def __init__(self, a, b):
        self.a, self.b = a, b

    def trainable(self):
        return {"a": self.a, "zz": 1}


@ft.functor
class ReturnsTuple:
    def __init__(self, a):
        self.a = a

    def trainable(self):
        return (self.a,)


def test_trainable_naming_a_non_child():
    x = NamesStranger(np.ones(2), np.ones(1))
    with pytest.raises(ValueError, match=regex.escape(
            "NamesStranger.trainable() names ['zz'], which are not among its children "
            "['a', 'b'].")):
        ft.trainable(x)
    with pytest.raises(ValueError, match=regex.escape(
            "destructure: NamesStranger.trainable() names ['zz'], which are not among its "
            "children ['a', 'b'], at <root>.")):
        ft.destructure(x)
    with pytest.raises(ValueError, match=r"names \['zz'\]"):
        ft.trainables(x)


def test_trainable_naming_a_non_child_deep_names_the_path():
    x = {"enc": [np.ones(1), NamesStranger(np.ones(2), None)]}
    with pytest.raises(ValueError, match=regex.escape(
            "children ['a', 'b'], at [\"enc\"][1].")):
        ft.destructure(x)


def test_trainable_returning_a_tuple():
    x = ReturnsTuple(np.ones(2))
    with pytest.raises(TypeError, match=regex.escape(
            "ReturnsTuple.trainable() must return a dict of child name -> value, got "
            "tuple.")):
        ft.trainable(x)
    with pytest.raises(TypeError, match=regex.escape(
            "destructure: ReturnsTuple.trainable() must return a dict of child name -> "
            "value (a subset of its children), got tuple at <root>.")):
        ft.destructure(x)


def test_failing_destructure_changes_nothing():
    w = np.ones(2)
    x = (w, NamesStranger(np.ones(2), None))
    with pytest.raises(ValueError):
        ft.destructure(x)
    assert x[0] is w
    np.testing.assert_array_equal(w, [1, 1])


# ----------------------------------------------------------------------------------------
# cycles
# ----------------------------------------------------------------------------------------
def test_destructure_of_a_cycle_names_the_path():
    loop = [np.ones(1)]
    loop.append(loop)
    with pytest.raises(ValueError, match=regex.escape(
            "destructure: the tree contains itself: a cycle through [1].")):
        ft.destructure(loop)
    with pytest.raises(ValueError, match="cycle"):
        ft.trainables(loop)


# ----------------------------------------------------------------------------------------
# the AliasWarning
# ----------------------------------------------------------------------------------------
def test_alias_warning_for_w_and_w_transpose_names_both_paths():
    w = np.arange(6.0).reshape(2, 3)
    c = Chain((DenseAct(w, np.zeros(2)), DenseAct(w.T, np.zeros(3))))
    with pytest.warns(ft.AliasWarning, match=regex.escape(
            "destructure: the parameters at layers[0].weight and layers[1].weight share "
            "memory without being the same array")) as rec:
        flat, re = ft.destructure(c)
    assert len([r for r in rec if r.category is ft.AliasWarning]) == 1
    assert issubclass(ft.AliasWarning, UserWarning)
    assert rec[0].filename == __file__                 # points at the caller
    np.testing.assert_array_equal(flat[:6], np.arange(6.0))
    np.testing.assert_array_equal(flat[8:14], w.T.ravel())
    r = re(flat)
    assert not np.shares_memory(r.layers[0].weight, r.layers[1].weight)


def test_alias_warning_for_a_slice_and_its_base():
    b = np.arange(6.0)
    with pytest.warns(ft.AliasWarning, match=regex.escape(
            'the parameters at ["full"] and ["part"] share memory')):
        ft.destructure({"full": b, "part": b[2:4]})


def test_no_alias_warning_for_ties_or_copies():
    w = np.ones((2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ft.destructure({"a": w, "b": w, "c": w.copy(), "d": w.T.copy()})
