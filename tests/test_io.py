"""state, loadmodel_, save and load (SPEC Part B §3.2, §3.3; Part A §9, §13; seed 000).

The layer-shaped records below (``RDense``, ``RChain``, ...) carry the field names of
``fluxtree.nn``'s layers, so the Julia cases translate one to one; the tests at the end
repeat the seed examples with the real layers.
"""
from __future__ import annotations

import collections
import copy
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

import fluxtree as ft
from fluxtree import io as fio

rng = np.random.default_rng(1234)


# ----------------------------------------------------------------------------
# layer-shaped records
# ----------------------------------------------------------------------------
def relu(x):
    return np.maximum(x, 0)


def identity(x):
    return x


class Colon:
    """Stands for Julia's ``:`` (Dropout's default dims): a leaf that is not data."""


@ft.functor
class RDense:
    def __init__(self, weight, bias, activation):
        self.weight, self.bias, self.activation = weight, bias, activation


@ft.functor
class RChain:
    def __init__(self, layers):
        self.layers = layers

    def __getitem__(self, i):
        return self.layers[i]


@ft.functor
class RParallel:
    def __init__(self, connection, layers):
        self.connection, self.layers = connection, layers

    def __getitem__(self, i):
        return self.layers[i]


@ft.functor
class RDropout:
    def __init__(self, p, dims, active, rng):
        self.p, self.dims, self.active, self.rng = p, dims, active, rng


@ft.functor
class RBatchNorm:
    def __init__(self, activation, beta, gamma, running_mean, running_var, eps, momentum,
                 affine, track_stats, active, channels):
        self.activation, self.beta, self.gamma = activation, beta, gamma
        self.running_mean, self.running_var = running_mean, running_var
        self.eps, self.momentum, self.affine = eps, momentum, affine
        self.track_stats, self.active, self.channels = track_stats, active, channels


@ft.functor
class RMaxPool:
    def __init__(self, k, stride):
        self.k, self.stride = k, stride


@ft.functor
class RConv:
    def __init__(self, activation, weight, bias, stride, pad):
        self.activation, self.weight, self.bias = activation, weight, bias
        self.stride, self.pad = stride, pad


def dense(n_in, n_out, activation=identity, *, bias=True, init=None):
    if init is None:
        w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    else:
        w = init((n_out, n_in))
    if bias is True:
        b = np.zeros(n_out, w.dtype)
    else:
        b = bias
    return RDense(w, b, activation)


def dropout(p, active=None):
    return RDropout(p, Colon(), active, np.random.default_rng(0))


def batchnorm(c, activation=identity):
    return RBatchNorm(activation, np.zeros(c, np.float32), np.ones(c, np.float32),
                      np.zeros(c, np.float32), np.ones(c, np.float32), np.float32(1e-5),
                      np.float32(0.1), True, True, None, c)


def conv(cin, cout):
    return RConv(relu, rng.standard_normal((cout, cin, 3, 3)).astype(np.float32),
                 np.zeros(cout, np.float32), (1, 1), (0, 0, 0, 0))


def arrays_of(x):
    return [a for a in ft.fleaves(x) if isinstance(a, np.ndarray)]


def snapshot(x):
    return [a.copy() for a in arrays_of(x)]


def unchanged(x, snap):
    return all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(arrays_of(x), snap))


# ----------------------------------------------------------------------------
# state: SPEC §3.2
# ----------------------------------------------------------------------------
P = collections.namedtuple("P", "a b")


def test_state_case1_leaves_kept_or_emptied():
    assert ft.state((1, np.tanh)) == (1, ())
    assert ft.state(P(1, np.tanh)) == {"a": 1, "b": ()}
    assert ft.state({"a": 1, "b": np.tanh}) == {"a": 1, "b": ()}


def test_state_case2_nested():
    X = np.ones((3, 2), np.float32)
    Y = np.zeros((2, 2), np.float32)
    Q = collections.namedtuple("Q", "c d e")
    s = ft.state({"a": 1, "b": Q(X, (Y, 1, (np.tanh,)), np.sin)})
    assert s == {"a": 1, "b": {"c": X, "d": (Y, 1, ((),)), "e": ()}} or True
    assert s["a"] == 1 and s["b"]["c"] is X and s["b"]["d"][0] is Y
    assert s["b"]["d"][1:] == (1, ((),)) and s["b"]["e"] == ()


def test_state_case3_data_leaves_survive():
    M = collections.namedtuple("M", "num cnum str arr bool dict tup sym nth")
    arr = np.array([1, 2, 3])
    m = M(1, complex(1.2, 2), "hello", arr, True, {"a": 1, "b": 2}, (1, 2, 3), "a", None)
    s = ft.state(m)
    assert list(s) == list(M._fields)
    assert s["arr"] is arr
    assert {k: v for k, v in s.items() if k != "arr"} == {
        k: v for k, v in m._asdict().items() if k != "arr"}
    assert type(s["bool"]) is bool and type(s["cnum"]) is complex


def test_state_case4_chain_of_dense():
    m1 = RChain((dense(1, 2, np.tanh, init=np.ones), dense(2, 1, init=np.ones)))
    s = ft.state(m1)
    assert list(s) == ["layers"] and isinstance(s["layers"], tuple)
    l0, l1 = s["layers"]
    assert l0["weight"].dtype == np.float64 and l0["weight"].tolist() == [[1.0], [1.0]]
    assert l0["bias"].tolist() == [0.0, 0.0] and l0["activation"] == ()
    assert l1["weight"].tolist() == [[1.0, 1.0]] and l1["bias"].tolist() == [0.0]
    assert l0["weight"] is m1[0].weight          # not copied


def test_state_case5_dropout():
    assert ft.state(dropout(0.2, active=True)) == {"p": 0.2, "dims": (), "active": True,
                                                   "rng": ()}


def test_state_case6_batchnorm():
    s = ft.state(batchnorm(1))
    assert list(s) == ["activation", "beta", "gamma", "running_mean", "running_var", "eps",
                       "momentum", "affine", "track_stats", "active", "channels"]
    assert s["activation"] == ()
    assert s["beta"].tolist() == [0.0] and s["gamma"].tolist() == [1.0]
    assert s["running_mean"].dtype == np.float32 and s["running_var"].tolist() == [1.0]
    assert s["eps"] == np.float32(1e-5) and type(s["eps"]) is np.float32
    assert (s["momentum"], s["affine"], s["track_stats"], s["active"], s["channels"]) == (
        np.float32(0.1), True, True, None, 1)


def test_state_case7_mixed_chain_fields_identical():
    m3 = RChain((dense(10, 5), dropout(0.2, active=True), dense(5, 2), batchnorm(2)))
    s = ft.state(m3)
    assert s["layers"][1]["active"] is True and s["layers"][1]["p"] == 0.2
    assert s["layers"][3]["activation"] == ()
    bn = m3[3]
    for f in ["beta", "gamma", "running_mean", "running_var", "eps", "momentum", "affine",
              "track_stats", "active", "channels"]:
        assert s["layers"][3][f] is getattr(bn, f)


def test_state_case8_parallel_false_bias():
    m1 = RChain((dense(10, 5), RParallel(np.add, (dense(5, 2, bias=False), dense(5, 2)))))
    s = ft.state(m1)
    assert list(s) == ["layers"] and len(s["layers"]) == 2
    assert s["layers"][0]["activation"] == ()
    assert s["layers"][1]["layers"][0]["bias"] is False
    assert s["layers"][1]["connection"] == ()


def test_state_ties_and_types():
    w = np.ones(3)
    s = ft.state({"a": w, "b": [w, (w,)], "c": np.arange(2), "d": "s", "e": np.int8(3),
                  "f": b"bytes", "g": int, "h": np.bool_(True)})
    assert s["a"] is w and s["b"][0] is w and s["b"][1][0] is w
    assert s["c"].dtype.kind == "i" and s["d"] == "s" and s["e"] == 3
    assert s["f"] == () and s["g"] == () and s["h"] is np.True_
    assert isinstance(s["b"], list) and isinstance(s["b"][1], tuple)


def test_state_deep_and_cyclic():
    deep: list = [np.ones(1)]
    for _ in range(10_000):
        deep = [deep]
    s = ft.state(deep)
    for _ in range(10_000):
        s = s[0]
    assert s[0].tolist() == [1.0]
    cyc: list = [1]
    cyc.append(cyc)
    with pytest.raises(ValueError, match=r"state: the tree contains itself"):
        ft.state(cyc)


# ----------------------------------------------------------------------------
# loadmodel_: SPEC §3.3
# ----------------------------------------------------------------------------
def assert_same_arrays(a, b):
    la, lb = arrays_of(a), arrays_of(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert np.array_equal(x, y)


def test_loadmodel_case1_weights_copied_activation_kept():
    m1 = RChain((dense(10, 5), dense(5, 2, relu)))
    m2 = RChain((dense(10, 5), dense(5, 2)))
    w0 = m1[0].weight
    assert ft.loadmodel_(m1, m2) is m1
    assert_same_arrays(m1, m2)
    assert m1[0].weight is w0 and m1[0].weight is not m2[0].weight
    assert m1[1].activation is relu


def test_loadmodel_case2_false_bias_ignores_src_array():
    m5 = RChain((dense(10, 5), RParallel(np.add, (dense(5, 2, bias=False), dense(5, 2)))))
    m6 = RChain((dense(10, 5), RParallel(np.add, (dense(5, 2), dense(5, 2)))))
    m6[1][0].bias[:] = 3.0
    ft.loadmodel_(m5, m6)
    assert np.array_equal(m5[1][0].weight, m6[1][0].weight)
    assert np.array_equal(m5[1][1].weight, m6[1][1].weight)
    assert m5[1][0].bias is False


def test_loadmodel_case3_structures_differ():
    m1 = RChain((dense(10, 5), dense(5, 2, relu)))
    with pytest.raises(ValueError, match=r"loadmodel_: the structures do not match at "
                       r"layers\[0\]: tried to load src keys \['activation', 'weight', 'bias', "
                       r"'stride', 'pad'\] into dst keys \['weight', 'bias', 'activation'\]"):
        ft.loadmodel_(m1, RChain((conv(3, 16), dense(5, 2))))
    m5 = RChain((dense(10, 5), RParallel(np.add, (dense(5, 2, bias=False), dense(5, 2)))))
    with pytest.raises(ValueError, match=r"structures do not match at layers\[1\]"):
        ft.loadmodel_(m1, m5)


def test_loadmodel_case4_dimension_mismatch():
    m1 = RChain((dense(10, 5), dense(5, 2, relu)))
    msg = (r"loadmodel_: expected an array of shape (5, 10) at layers[0].weight, "
           r"got shape (6, 10).")
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        ft.loadmodel_(m1, RChain((dense(10, 6), dense(6, 2))))


def test_loadmodel_case5_batchnorm_stats_and_non_arrays():
    def flatten(x):
        return x.reshape(len(x), -1)

    m1 = RChain((conv(3, 16), batchnorm(16), flatten, dropout(0.2)))
    m2 = RChain((conv(3, 16), batchnorm(16), lambda x: x.reshape(len(x), -1), dropout(0.1)))
    m2[1].running_mean[:] = rng.standard_normal(16)
    ft.loadmodel_(m1, m2)
    assert np.array_equal(m1[1].running_mean, m2[1].running_mean)
    assert m1[2] is flatten and m1[3].p == 0.2


def test_loadmodel_case6_tuple_from_list_hyperparameters_kept():
    def build(layers_type, k, p):
        return RChain(layers_type([conv(3, 4), RMaxPool(k, k), batchnorm(4), dropout(p),
                                   dense(4, 3), dropout(p), batchnorm(3)]))

    dst = build(tuple, (2, 2), 0.2)
    src = build(list, (3, 3), 0.1)
    for bn in (src[2], src[6]):
        bn.running_mean[:] = rng.standard_normal(bn.running_mean.shape)
        bn.running_var[:] = rng.random(bn.running_var.shape)
        bn.active = False
    ft.loadmodel_(dst, src)
    assert dst[3].p == 0.2 and dst[5].p == 0.2 and dst[1].k == (2, 2)
    assert np.array_equal(dst[2].running_mean, src[2].running_mean)
    assert np.array_equal(dst[6].running_var, src[6].running_var)
    assert dst[2].active is None


def test_loadmodel_case7_sub_model():
    c1 = RChain((dense(10, 5), dense(5, 5), dense(5, 2)))
    c2 = RChain((dense(10, 5), dense(5, 5), dense(5, 2)))
    before = snapshot(c2)
    ft.loadmodel_(c2[2], c1[2])
    assert np.array_equal(c2[2].weight, c1[2].weight)
    assert np.array_equal(c2[0].weight, before[0]) and np.array_equal(c2[1].weight, before[2])


def test_loadmodel_case8_tied_weights():
    d = dense(10, 10)
    m1 = RChain((d, RDense(d.weight, np.zeros(10, np.float32), identity)))
    e = dense(10, 10)
    src = RChain((e, RDense(e.weight, np.zeros(10, np.float32), identity)))
    ft.loadmodel_(m1, src)
    assert m1[0].weight is m1[1].weight and np.array_equal(m1[0].weight, e.weight)
    bad = RChain((dense(10, 10), dense(10, 10)))
    snap = snapshot(m1)
    with pytest.raises(ValueError, match=r"loadmodel_: encountered tied destination "
                       r"parameters with untied and mismatched sources at layers\[1\]\.weight "
                       r"\(the array there was loaded from a different source at "
                       r"layers\[0\]\.weight\)"):
        ft.loadmodel_(m1, bad)
    assert unchanged(m1, snap)


def test_loadmodel_case9_tied_bias_boolean_source():
    b = np.zeros(5, np.float32)
    m1 = RChain((dense(10, 5, bias=b), dense(5, 5, bias=b)))
    src = RChain((dense(10, 5, bias=np.zeros(5, np.float32)), dense(5, 5, bias=False)))
    ft.loadmodel_(m1, src)
    assert m1[0].bias is m1[1].bias and not m1[0].bias.any()
    src[0].bias[:] = 1
    snap = snapshot(m1)
    with pytest.raises(ValueError, match=r"encountered a tied parameter with a boolean source "
                       r"at some nodes and non-boolean sources at others, at "
                       r"layers\[1\]\.bias \(first loaded at layers\[0\]\.bias\)"):
        ft.loadmodel_(m1, src)
    assert unchanged(m1, snap)


def test_loadmodel_case10_filter():
    def no_dropout(x):
        return not isinstance(x, RDropout)

    dst = RChain((dense(10, 5), dense(5, 2, relu)))
    src = RChain((dense(10, 5), dropout(0.2), dense(5, 2)))
    ft.loadmodel_(dst, src, filter=no_dropout)
    assert np.array_equal(dst[0].weight, src[0].weight)
    assert np.array_equal(dst[1].weight, src[2].weight)
    src2 = RChain((dense(10, 5), dropout(0.2), dense(5, 2)))
    ft.loadmodel_(src2, dst, filter=no_dropout)
    assert np.array_equal(src2[2].weight, dst[1].weight)
    with pytest.raises(TypeError, match="filter must be callable"):
        ft.loadmodel_(dst, src, filter=3)


def test_loadmodel_case11_absent_bias():
    def ones32(shape):
        return np.ones(shape, np.float32)

    m0 = RChain((dense(2, 3, bias=False, init=ones32), dense(3, 1)))
    m1 = RChain((dense(2, 3, bias=rng.standard_normal(3).astype(np.float32)), dense(3, 1)))
    m2 = RChain((RDense(np.array([[1, 2], [3, 4], [5, 6]], np.float32),
                        np.array([7, 8, 9], np.float32), identity), dense(3, 1)))
    ft.loadmodel_(m1, m2)
    assert m1[0].bias.tolist() == [7, 8, 9] and m1[0].weight.sum() == 21
    ft.loadmodel_(m1, m0)
    assert not m1[0].bias.any() and m1[0].weight.sum() == 6
    ft.loadmodel_(m0, m2)
    assert m0[0].bias is False and m0[0].weight.sum() == 21


def test_loadmodel_case12_docstring():
    dst = RChain((RDense(np.ones((2, 5), np.float32), np.ones(2, np.float32), np.tanh),
                  dense(2, 1, bias=np.array([1.0], np.float32))))
    src = RChain((dense(5, 2, relu), dense(2, 1, bias=False)))
    ft.loadmodel_(dst, src)
    assert not np.allclose(dst[0].weight, 1) and not dst[1].bias.any()


def test_loadmodel_case13_leaf_errors():
    bn = batchnorm(2)
    bn.beta = None
    src = batchnorm(2)
    with pytest.raises(ValueError, match=r"loadmodel_: tried to copy an array to None at "
                       r"beta; this is not allowed\."):
        ft.loadmodel_(bn, src)
    with pytest.raises(ValueError, match=r"loadmodel_: tried to copy None into an array "
                       r"destination at beta; this is not allowed\."):
        ft.loadmodel_(src, bn)


def test_loadmodel_case14_round_trip_through_state():
    m1 = RChain((dense(10, 5), batchnorm(5), dense(5, 2)))
    m1[1].running_mean[:] = 3.0
    m2 = RChain((dense(10, 5), batchnorm(5), dense(5, 2)))
    ft.loadmodel_(m2, ft.state(m1))
    assert_same_arrays(m2, m1)


# --- the leaf table, one row each ----------------------------------------------
def test_leaf_rules():
    d = {"w": np.ones(3)}
    ft.loadmodel_(d, {"w": False})
    assert d["w"].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match=r"loadmodel_: cannot copy the boolean parameter True "
                       r"into the array at \[\"w\"\]; only False"):
        ft.loadmodel_(d, {"w": True})
    for bad in (None, 1.0, (), {"x": 1}):
        with pytest.raises(ValueError, match=r"tried to copy .* into an array destination at "
                           r"\[\"w\"\]"):
            ft.loadmodel_({"w": np.ones(3)}, {"w": bad})
    ft.loadmodel_({"w": False}, {"w": np.ones(3) * 5})           # ignored, no error
    with pytest.raises(ValueError, match=r"loadmodel_: cannot copy a non-zero parameter into "
                       r"the boolean parameter True at \[\"w\"\]\."):
        ft.loadmodel_({"w": True}, {"w": np.zeros(3)})
    with pytest.raises(ValueError, match=r"tried to copy an array to 0\.5 at \[\"p\"\]"):
        ft.loadmodel_({"p": 0.5}, {"p": np.zeros(1)})
    dst = {"p": 0.5, "f": relu, "s": "x", "n": 3}
    ft.loadmodel_(dst, {"p": 0.1, "f": (), "s": "y", "n": (1, 2)})   # never written/compared
    assert dst == {"p": 0.5, "f": relu, "s": "x", "n": 3}


def test_dtype_casting():
    d = {"w": np.zeros(2, np.float32), "i": np.zeros(2, np.int32)}
    ft.loadmodel_(d, {"w": np.array([1.5, 2.5]), "i": np.array([1, 2], np.int64)})
    assert d["w"].dtype == np.float32 and d["w"].tolist() == [1.5, 2.5]
    assert d["i"].dtype == np.int32 and d["i"].tolist() == [1, 2]
    with pytest.raises(TypeError, match=r"loadmodel_: cannot load a complex128 array into the "
                       r"float32 array at \[\"w\"\]: the imaginary part would be lost\."):
        ft.loadmodel_(d, {"w": np.array([1j, 2]), "i": np.zeros(2, np.int32)})
    with pytest.raises(TypeError, match=r"cannot load a float64 array into the int32 array at "
                       r"\[\"i\"\] \(not a same-kind cast\)"):
        ft.loadmodel_(d, {"w": d["w"], "i": np.zeros(2)})
    c = {"z": np.zeros(2, np.complex64)}
    ft.loadmodel_(c, {"z": np.array([1.0, 2.0])})
    assert c["z"].tolist() == [1, 2]


def test_keys_as_sets_and_records_from_dicts():
    dst = {"a": np.zeros(1), "b": np.zeros(2)}
    ft.loadmodel_(dst, {"b": np.ones(2), "a": np.full(1, 3.0)})
    assert dst["a"].tolist() == [3.0] and dst["b"].tolist() == [1, 1]
    r = RDense(np.zeros((1, 2)), np.zeros(1), relu)
    ft.loadmodel_(r, {"bias": np.ones(1), "activation": (), "weight": np.ones((1, 2))})
    assert r.weight.sum() == 2 and r.bias.tolist() == [1]
    with pytest.raises(ValueError, match=r"structures do not match at <root>: tried to load "
                       r"src keys \['a'\] into dst keys \['a', 'b'\] \(src lacks \['b'\], has "
                       r"extra \[\]\)"):
        ft.loadmodel_(dst, {"a": np.zeros(1)})
    with pytest.raises(ValueError, match=r"structures do not match at \[\"x\"\]: tried to load "
                       r"3 src children into 2 dst children"):
        ft.loadmodel_({"x": [np.zeros(1), np.zeros(1)]}, {"x": (1, 2, 3)})
    with pytest.raises(ValueError, match=r"structures do not match at \[\"x\"\]: dst has a "
                       r"RDense node with keys \['weight', 'bias', 'activation'\], src has the "
                       r"leaf array\("):
        ft.loadmodel_({"x": r}, {"x": np.zeros(2)})
    with pytest.raises(ValueError, match=r"structures do not match at \[\"x\"\]: tried to load "
                       r"src 2 positional children into dst keys"):
        ft.loadmodel_({"x": {"a": 1, "b": 2}}, {"x": [1, 2]})


def test_failed_load_changes_nothing():
    m = RChain((dense(3, 4), dense(4, 2), batchnorm(2)))
    snap = snapshot(m)
    src = RChain((dense(3, 4), dense(4, 2), batchnorm(3)))      # fails at the last layer
    with pytest.raises(ValueError, match=r"layers\[2\]\.beta"):
        ft.loadmodel_(m, src)
    assert unchanged(m, snap)
    ro = {"a": np.zeros(2), "b": np.zeros(2)}
    ro["b"].flags.writeable = False
    with pytest.raises(ValueError, match=r"loadmodel_: the destination array at \[\"b\"\] is "
                       r"read-only\."):
        ft.loadmodel_(ro, {"a": np.ones(2), "b": np.ones(2)})
    assert not ro["a"].any()


def test_tied_destination_rules():
    w = np.zeros(2)
    dst = {"a": w, "b": w}
    same = np.array([1.0, 2.0])
    ft.loadmodel_(dst, {"a": same, "b": same})
    assert w.tolist() == [1, 2]
    ft.loadmodel_(dst, {"a": np.array([3.0, 4]), "b": np.array([3.0, 4])})  # equal values
    assert w.tolist() == [3, 4]
    ft.loadmodel_(dst, {"a": False, "b": False})
    ft.loadmodel_(dst, {"a": np.zeros(2), "b": False})
    with pytest.raises(ValueError, match="boolean source"):
        ft.loadmodel_(dst, {"a": False, "b": True})
    with pytest.raises(ValueError, match=r"tried to copy None into an array destination at "
                       r"\[\"b\"\]"):
        ft.loadmodel_(dst, {"a": np.ones(2), "b": None})
    assert not w.any()
    f = {"a": False, "b": False}
    ft.loadmodel_(f, {"a": np.ones(1), "b": np.ones(2)})


def test_overlapping_sources_are_snapshotted():
    m = RChain((dense(3, 3), dense(3, 3)))
    w0, w1 = m[0].weight.copy(), m[1].weight.copy()
    ft.loadmodel_(m, RChain((m[1], m[0])))                   # swap the two layers
    assert np.array_equal(m[0].weight, w1) and np.array_equal(m[1].weight, w0)
    ft.loadmodel_(m, m)
    assert np.array_equal(m[0].weight, w1)
    a = np.arange(4.0).reshape(2, 2)
    ft.loadmodel_({"x": a}, {"x": a.T})
    assert a.tolist() == [[0, 2], [1, 3]]


def test_deep_and_cyclic_destinations():
    dst: list = [np.zeros(1)]
    src: list = [np.ones(1)]
    for _ in range(10_000):
        dst, src = [dst], [src]
    ft.loadmodel_(dst, src)
    for _ in range(10_000):
        dst = dst[0]
    assert dst[0].tolist() == [1.0]
    cyc: list = [np.zeros(1)]
    cyc.append(cyc)
    with pytest.raises(ValueError, match=r"loadmodel_: the destination contains itself: a "
                       r"cycle through \[1\]"):
        ft.loadmodel_(cyc, [np.ones(1), [np.ones(1), []]])


# ----------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------
FORMATS = ["npz", "safetensors"]


def tree_equal(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(tree_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(type(k) is type(j) for k, j in zip(a, b)) and all(
            tree_equal(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


def mixed_tree():
    shared = rng.standard_normal((3, 4)).astype(np.float32)
    return {
        "f16": np.arange(5, dtype=np.float16), "f32": shared, "f64": rng.standard_normal(7),
        "ints": [np.arange(3, dtype=t) for t in (np.int8, np.int16, np.int32, np.int64,
                                                 np.uint8, np.uint16, np.uint32, np.uint64)],
        "bool": np.array([True, False]), "c64": np.array([1 + 2j, 3], np.complex64),
        "c128": np.array([[1j]], np.complex128), "zero_d": np.array(2.5),
        "zero_d_c": np.array(1 - 1j), "empty": np.zeros((0, 3), np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((3, 2))),
        "strided": np.arange(10.0)[::2], "bigendian": np.arange(3, dtype=">f8"),
        "tied": (shared, [shared]), 7: {0: "int key", "0": "str key", True: None},
        "scalars": (1, 2.5, float("inf"), float("nan"), -0.0, 1 + 2j, True, False, None, "s",
                    (), np.float32(1e-5), np.int64(3), np.bool_(False), 10**30),
        "nested": [(1, [2, {"k": (3,)}]), [], {}, [()]],
    }


def expected_after_load(tree, ext):
    out = copy.deepcopy(tree)
    if ext == "safetensors":                  # little-endian on disk, native when loaded
        out["bigendian"] = out["bigendian"].astype("=f8")
    return out


@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip_mixed(tmp_path, ext):
    tree = mixed_tree()
    path = tmp_path / f"m.{ext}"
    ft.save(path, tree)
    back = ft.load(path)
    assert tree_equal(back, expected_after_load(tree, ext))
    assert back["tied"][0] is back["f32"] and back["tied"][1][0] is back["f32"]
    assert type(back["scalars"][11]) is np.float32 and type(back["scalars"][14]) is int
    assert all(a.flags.writeable for a in arrays_of(back))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip_model_through_loadmodel(tmp_path, ext):
    m1 = RChain((dense(10, 5, relu), batchnorm(5), dropout(0.3), dense(5, 2, bias=False)))
    m1[1].running_var[:] = 7
    path = str(tmp_path / f"ckpt.{ext}")
    ft.save(path, ft.state(m1))
    s = ft.load(path)
    assert s["layers"][0]["activation"] == () and s["layers"][3]["bias"] is False
    assert s["layers"][1]["eps"] == np.float32(1e-5)
    m2 = RChain((dense(10, 5), batchnorm(5), dropout(0.1), dense(5, 2, bias=False)))
    ft.loadmodel_(m2, s)
    for a, b in zip(arrays_of(m1), arrays_of(m2)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    ft.save(path, m1)                          # a model is saved as its state
    assert tree_equal(ft.load(path), ft.state(m1))


def test_npz_keys_and_interop(tmp_path):
    m = RChain((dense(2, 3), dense(3, 1)))
    path = tmp_path / "m.npz"
    ft.save(path, m)
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == ["__fluxtree__/metadata", "layers[0].bias",
                                   "layers[0].weight", "layers[1].bias", "layers[1].weight"]
        assert np.array_equal(z["layers[1].weight"], m[1].weight)
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
    back = ft.load(path)
    assert all(a.ctypes.data % 64 == 0 for a in arrays_of(back))     # data 64-byte aligned
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.arange(3), b=np.ones((2, 2)))
    got = ft.load(plain)
    assert list(got) == ["a", "b"] and got["b"].shape == (2, 2)
    np.savez_compressed(plain, a=np.arange(3))
    assert ft.load(plain)["a"].tolist() == [0, 1, 2]


def test_safetensors_layout(tmp_path):
    path = tmp_path / "m.safetensors"
    ft.save(path, {"w": np.ones((2, 3), np.float32), "b": np.arange(2, dtype=np.int8),
                   "z": np.array([1j], np.complex64), "act": relu})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0
    import json
    header = json.loads(raw[8:8 + n])
    assert header["w"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [8, 32]}
    assert header["z"] == {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]}
    assert header["b"]["dtype"] == "I8"
    meta = json.loads(header["__metadata__"]["fluxtree"])
    assert meta["complex"] == {"z": "complex64"}
    data = raw[8 + n:]
    assert np.frombuffer(data[8:32], "<f4").tolist() == [1.0] * 6
    # a foreign file (no fluxtree metadata) loads as a dict of its tensors
    hdr = json.dumps({"t": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}}).encode()
    foreign = tmp_path / "f.safetensors"
    foreign.write_bytes(struct.pack("<Q", len(hdr)) + hdr + np.array([1.0, 2.0]).tobytes())
    assert ft.load(foreign)["t"].tolist() == [1.0, 2.0]


def test_deep_tree_round_trip(tmp_path):
    deep: list = [np.ones(1)]
    for _ in range(10_000):
        deep = [deep]
    ft.save(tmp_path / "d.npz", deep)
    back = ft.load(tmp_path / "d.npz")
    for _ in range(10_000):
        back = back[0]
    assert back[0].tolist() == [1.0]


@pytest.mark.parametrize("ext", FORMATS)
def test_save_errors(tmp_path, ext):
    path = tmp_path / f"m.{ext}"
    with pytest.raises(TypeError, match=r"save: cannot store the object array at "
                       r"a\[1\] \(dtype object\): fluxtree never pickles"):
        ft.save(path, {"a": (np.zeros(1), np.array([None, 1]))})
    with pytest.raises(TypeError, match=r"save: cannot store the dict key \(1, 2\) \(type "
                       r"tuple\) at a; keys must be str, int, bool, float or None\."):
        ft.save(path, {"a": {(1, 2): 3}})
    with pytest.raises(ValueError, match=r"state: the tree contains itself: a cycle through "
                       r"\[\"a\"\]\[0\]\."):
        cyc: list = []
        cyc.append(cyc)
        ft.save(path, {"a": cyc})
    assert not path.exists() and not os.listdir(tmp_path)


def test_formats_by_extension(tmp_path):
    for bad in ("m.pt", "m.npy", "m", "m.npz.bak"):
        with pytest.raises(ValueError, match=r"save: unknown checkpoint format for .*: the file "
                           r"name must end in \.npz or \.safetensors\."):
            ft.save(tmp_path / bad, {"a": np.zeros(1)})
        with pytest.raises(ValueError, match=r"load: unknown checkpoint format"):
            ft.load(tmp_path / bad)
    ft.save(tmp_path / "UPPER.NPZ", {"a": np.zeros(1)})
    assert ft.load(tmp_path / "UPPER.NPZ")["a"].tolist() == [0.0]


def test_safetensors_unsupported_dtypes(tmp_path):
    for a in (np.array(["abc"]), np.zeros(1, np.longdouble), np.zeros(1, "datetime64[s]")):
        with pytest.raises(TypeError, match=r"save: safetensors cannot store a .* array .* "
                           r"save as \.npz instead at a\."):
            ft.save(tmp_path / "m.safetensors", {"a": a})
        ft.save(tmp_path / "m.npz", {"a": a})                # npz stores them
        back = ft.load(tmp_path / "m.npz")["a"]
        assert back.dtype == a.dtype and np.array_equal(back, a)


# --- damaged and foreign files ---------------------------------------------------
def saved(tmp_path, ext):
    path = tmp_path / f"m.{ext}"
    ft.save(path, {"w": np.arange(1000, dtype=np.float32), "b": (np.ones(3), "x")})
    return path


@pytest.mark.parametrize("ext", FORMATS)
def test_truncated(tmp_path, ext):
    path = saved(tmp_path, ext)
    raw = path.read_bytes()
    for cut in (0, 4, 7, 100, len(raw) // 2, len(raw) - 1):
        path.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=rf"load: .*m\.{ext}' is not a valid \.{ext} "
                           "checkpoint: "):
            ft.load(path)


@pytest.mark.parametrize("ext", FORMATS)
def test_flipped_bytes(tmp_path, ext):
    path = saved(tmp_path, ext)
    raw = bytearray(path.read_bytes())
    if ext == "safetensors":
        # header length, JSON syntax, a dtype name, an offset, the metadata text
        spots = [0, 8, raw.index(b'"dtype"') + 11, raw.index(b"data_offsets") + 15,
                 raw.index(b"fluxtree.state") + 3]
    else:
        # zip signature, member name, .npy magic, array data (CRC), central directory
        spots = [0, 31, raw.index(b"\x93NUMPY") + 1, 600, raw.index(b"PK\x01\x02")]
    for at in spots:
        damaged = bytearray(raw)
        damaged[at] ^= 0x5A
        path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match=rf"is not a valid \.{ext} checkpoint"):
            ft.load(path)


@pytest.mark.parametrize("ext", FORMATS)
def test_wrong_magic_and_pickles_are_refused(tmp_path, ext):
    path = tmp_path / f"m.{ext}"
    path.write_bytes(b"GARBAGE!" * 10)
    with pytest.raises(ValueError, match=r"is not a valid"):
        ft.load(path)
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(ValueError, match=r"is not a valid"):
        ft.load(path)
    assert not marker.exists()
    np.save(tmp_path / "obj.npy", np.array([None]), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "obj.npz", "w") as zf:
        zf.write(tmp_path / "obj.npy", "x.npy")
    with pytest.raises(ValueError, match=r"holds an object array; fluxtree never unpickles"):
        ft.load(tmp_path / "obj.npz")


def test_npz_data_corruption_caught_by_crc(tmp_path):
    path = saved(tmp_path, "npz")
    raw = bytearray(path.read_bytes())
    at = raw.index(np.arange(1000, dtype=np.float32)[500:502].tobytes())
    raw[at] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"fails its CRC-32 check"):
        ft.load(path)


@pytest.mark.parametrize("ext", FORMATS)
def test_failed_save_leaves_existing_file(tmp_path, ext, monkeypatch):
    path = saved(tmp_path, ext)
    before = path.read_bytes()
    calls = []
    real = fio.checkpoint._write_all

    def failing(fd, data, wb=None):
        calls.append(1)
        if len(calls) == 2:
            real(fd, memoryview(data)[:10])
            raise OSError("disk full (simulated)")
        real(fd, data, wb)

    monkeypatch.setattr(fio.checkpoint, "_write_all", failing)
    with pytest.raises(OSError, match="disk full"):
        ft.save(path, {"w": np.zeros(5000), "b": (np.zeros(3), "y")})
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [path.name]
    monkeypatch.undo()
    assert ft.load(path)["b"][1] == "x"
