"""state, loadmodel_, save and load on the real layers of ``fluxtree.nn``.

SPEC Part B §3.2 (cases 4-8), §3.3 (cases 1-5, 7-14) and the seed's examples (seed 000:
``state``, ``loadmodel!``, saving and loading a checkpoint), translated with Part A:
weights are (out, in), ``false`` is ``False``, Julia's ArgumentError / DimensionMismatch /
ErrorException are ``ValueError``. ``tests/test_io.py`` covers the same cases with
layer-shaped stand-in records; here the layers themselves are used.

Left out: §3.3 case 6 (needs MaxPool/Conv, which fluxtree does not have); Parallel (case 2
of §3.3, case 8 of §3.2) is a small ``@functor`` record with Flux's field names.
"""
from __future__ import annotations

import numpy as np
import pytest

import fluxtree as ft
import fluxtree.nn._common as layers_module
from fluxtree.precision import f16, f64

EXTS = [".npz", ".safetensors"]


@ft.functor
class Parallel:
    """A stand-in for Flux's ``Parallel(connection, layers...)``: fields connection, layers."""

    def __init__(self, connection, layers):
        self.connection, self.layers = connection, tuple(layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __call__(self, x):
        out = self.layers[0](x)
        for layer in self.layers[1:]:
            out = self.connection(out, layer(x))
        return out


def flatten(x):
    return np.reshape(x, (x.shape[0], -1))


def rng_input(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def arrays_of(tree):
    """The arrays of a model or state, in traversal order (a tied array at each position)."""
    return [a for a in ft.fleaves(tree) if isinstance(a, np.ndarray)]


def snapshot(model):
    return [(a, a.copy()) for a in arrays_of(model)]


def unchanged(snap):
    return all(a.dtype == c.dtype and np.array_equal(a, c) for a, c in snap)


def assert_tree_equal(a, b, *, dtypes=True):
    """Structural equality: same containers and keys, arrays equal (and of the same dtype)."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.shape == b.shape
        if dtypes:
            assert a.dtype == b.dtype, (a.dtype, b.dtype)
        assert np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_tree_equal(a[k], b[k], dtypes=dtypes)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_tree_equal(x, y, dtypes=dtypes)
    else:
        assert a == b, (a, b)


# ----------------------------------------------------------------------------
# the seed's examples
# ----------------------------------------------------------------------------
def seed_m1():
    return ft.Chain(ft.Dense(1, 2, ft.tanh, init=ft.ones32), ft.Dense(2, 1, init=ft.ones32))


def seed_m2():
    return ft.Chain(ft.Dense(1, 2, ft.tanh), ft.Dense(2, 1, bias=False))


def test_seed_state_of_chain():
    m1 = seed_m1()
    s = ft.state(m1)
    assert type(s) is dict and list(s) == ["layers"]
    assert type(s["layers"]) is tuple and len(s["layers"]) == 2
    first, second = s["layers"]
    assert list(first) == ["weight", "bias", "activation"]
    assert list(second) == ["weight", "bias", "activation"]
    assert first["activation"] == ()
    # arrays are the model's own objects, not copies
    assert first["weight"] is m1[0].weight and first["bias"] is m1[0].bias
    assert second["weight"] is m1[1].weight and second["bias"] is m1[1].bias
    assert first["weight"].dtype == np.float32 and first["weight"].shape == (2, 1)
    assert first["weight"].tolist() == [[1.0], [1.0]] and first["bias"].tolist() == [0.0, 0.0]
    assert second["weight"].tolist() == [[1.0, 1.0]] and second["bias"].tolist() == [0.0]
    # an explicit identity activation is not data either
    assert ft.state(ft.Dense(2, 1, ft.identity))["activation"] == ()


def test_seed_state_default_activation_is_empty_tuple():
    s = ft.state(seed_m1())
    assert s["layers"][1]["activation"] == ()
    assert ft.state(ft.BatchNorm(1))["activation"] == ()


def test_seed_loadmodel_from_state():
    m1 = seed_m1()
    s = ft.state(m1)
    m2 = seed_m2()
    w2 = m2[0].weight
    assert ft.loadmodel_(m2, s) is m2
    assert m2[0].weight is w2                         # copied in place
    assert m2[0].weight.dtype == np.float32
    assert np.array_equal(m2[0].weight, m1[0].weight)
    assert m2[0].weight.tolist() == [[1.0], [1.0]]
    assert m2[0].bias.tolist() == [0.0, 0.0]
    assert m2[1].weight.tolist() == [[1.0, 1.0]]
    assert m2[1].bias is False                        # an array loads into False as nothing
    assert m2[0].activation is ft.tanh and m2[1].activation is ft.identity
    # the source is not touched and shares nothing with the destination
    assert s["layers"][0]["weight"] is m1[0].weight
    assert not np.shares_memory(m1[0].weight, m2[0].weight)


def test_seed_state_of_dropout():
    s = ft.state(ft.trainmode_(ft.Dropout(0.2)))
    assert s == {"p": 0.2, "dims": (), "active": True, "rng": ()}
    assert list(s) == ["p", "dims", "active", "rng"]


def test_seed_state_of_batchnorm():
    bn = ft.BatchNorm(1)
    s = ft.state(bn)
    assert list(s) == ["activation", "beta", "gamma", "running_mean", "running_var", "eps",
                       "momentum", "affine", "track_stats", "active", "channels"]
    for name, value in (("beta", [0.0]), ("gamma", [1.0]), ("running_mean", [0.0]),
                        ("running_var", [1.0])):
        assert s[name] is getattr(bn, name)
        assert s[name].dtype == np.float32 and s[name].tolist() == value
    assert s["eps"] == pytest.approx(1e-5) and s["momentum"] == pytest.approx(0.1)
    assert s["affine"] is True and s["track_stats"] is True
    assert s["active"] is None and s["channels"] == 1
    assert s["activation"] == ()


@pytest.mark.parametrize("ext", EXTS)
def test_seed_checkpoint(tmp_path, ext):
    m1 = seed_m1()
    s = ft.state(m1)
    path = tmp_path / f"checkpoint{ext}"
    ft.save(path, s)
    loaded = ft.load(path)
    assert_tree_equal(loaded, s)
    m2 = seed_m2()
    ft.loadmodel_(m2, ft.load(path))
    assert m2[0].weight.tolist() == [[1.0], [1.0]] and m2[0].weight.dtype == np.float32
    assert m2[0].bias.tolist() == [0.0, 0.0]
    assert m2[1].weight.tolist() == [[1.0, 1.0]]
    assert m2[1].bias is False
    # saving the model itself writes the same file contents
    path2 = tmp_path / f"model{ext}"
    ft.save(path2, m1)
    assert_tree_equal(ft.load(path2), s)


def test_seed_loadmodel_docstring():
    """§3.3 case 12."""
    dst = ft.Chain(ft.Dense(ft.ones32(2, 5), ft.ones32(2), ft.tanh),
                   ft.Dense(2, 1, bias=np.array([1.0], np.float32)))
    assert np.allclose(dst[0].weight, np.ones((2, 5)))
    assert dst[1].bias.tolist() == [1.0]
    src = ft.Chain(ft.Dense(5, 2, ft.relu), ft.Dense(2, 1, bias=False))
    ft.loadmodel_(dst, src)
    assert not np.allclose(dst[0].weight, np.ones((2, 5)))
    assert np.array_equal(dst[0].weight, src[0].weight)
    assert not dst[1].bias.any() and dst[1].bias.shape == (1,)
    assert dst[0].activation is ft.tanh                # never copied


# ----------------------------------------------------------------------------
# SPEC §3.2 state
# ----------------------------------------------------------------------------
def test_state_case4_chain_of_float64_dense():
    def ones(*shape, rng=None, dtype=None):
        return np.ones(shape)                          # Julia's `ones`: Float64

    m = ft.Chain(ft.Dense(1, 2, ft.tanh, init=ones), ft.Dense(2, 1, ft.tanh, init=ones,
                                                              dtype=np.float64))
    s = ft.state(m)
    assert s["layers"][0]["weight"].dtype == np.float64
    assert s["layers"][0]["weight"].tolist() == [[1.0], [1.0]]
    # bias=True follows the weight's dtype
    assert s["layers"][0]["bias"].dtype == np.float64
    assert s["layers"][0]["bias"].tolist() == [0.0, 0.0]
    assert s["layers"][1]["weight"].tolist() == [[1.0, 1.0]]
    assert s["layers"][1]["bias"].tolist() == [0.0]
    assert s["layers"][0]["activation"] == () and s["layers"][1]["activation"] == ()


def test_state_case5_dropout_modes():
    d = ft.Dropout(0.2)
    assert ft.state(d) == {"p": 0.2, "dims": (), "active": None, "rng": ()}
    assert ft.state(ft.testmode_(d)) == {"p": 0.2, "dims": (), "active": False, "rng": ()}
    assert ft.state(ft.Dropout(0.5, 1))["dims"] == 1            # integer dims kept
    assert ft.state(ft.Dropout(0.5, (0, 2)))["dims"] == (0, 2)


def test_state_case6_batchnorm_options():
    bn = ft.BatchNorm(3, ft.relu, eps=1e-3, momentum=0.3, affine=False, track_stats=False,
                      active=True)
    s = ft.state(bn)
    assert s == {"activation": (), "beta": None, "gamma": None, "running_mean": None,
                 "running_var": None, "eps": 1e-3, "momentum": 0.3, "affine": False,
                 "track_stats": False, "active": True, "channels": 3}


def test_state_case7_mixed_chain_fields_identical():
    m3 = ft.Chain(ft.Dense(10, 5), ft.Dropout(0.2), ft.Dense(5, 2), ft.BatchNorm(2))
    ft.trainmode_(m3)
    s = ft.state(m3)
    assert s["layers"][1]["active"] is True
    assert s["layers"][1]["p"] == 0.2
    bn = m3[3]
    for name in ("beta", "gamma", "running_mean", "running_var"):
        assert s["layers"][3][name] is getattr(bn, name)
    for name in ("eps", "momentum", "affine", "track_stats", "active", "channels"):
        assert s["layers"][3][name] == getattr(bn, name)
        assert type(s["layers"][3][name]) is type(getattr(bn, name))
    assert s["layers"][3]["active"] is True
    assert s["layers"][0]["weight"] is m3[0].weight


def test_state_case8_parallel_with_false_bias():
    m1 = ft.Chain(ft.Dense(10, 5),
                  Parallel(np.add, (ft.Dense(ft.ones32(2, 5), False), ft.Dense(5, 2))))
    s = ft.state(m1)
    assert list(s) == ["layers"]
    assert type(s["layers"]) is tuple and len(s["layers"]) == 2
    assert s["layers"][0]["activation"] == ()
    assert s["layers"][1]["connection"] == ()
    assert s["layers"][1]["layers"][0]["bias"] is False
    assert s["layers"][1]["layers"][0]["weight"] is m1[1][0].weight
    assert s["layers"][1]["layers"][1]["bias"] is m1[1][1].bias


def test_state_of_named_chain_and_ties():
    d = ft.Dense(3, 3)
    m = ft.Chain(enc=d, dec=ft.Dense(d.weight, True))
    s = ft.state(m)
    assert type(s["layers"]) is dict and list(s["layers"]) == ["enc", "dec"]
    assert s["layers"]["enc"]["weight"] is s["layers"]["dec"]["weight"] is d.weight
    assert s["layers"]["enc"]["bias"] is not s["layers"]["dec"]["bias"]


# ----------------------------------------------------------------------------
# SPEC §3.3 loadmodel_
# ----------------------------------------------------------------------------
def test_loadmodel_case1_weights_copied_activation_kept():
    m1 = ft.Chain(ft.Dense(10, 5), ft.Dense(5, 2, ft.relu))
    m2 = ft.Chain(ft.Dense(10, 5), ft.Dense(5, 2))
    m2[0].bias[:] = np.arange(5)
    ids = [id(a) for a in arrays_of(m1)]
    assert ft.loadmodel_(m1, m2) is m1
    for a, b in zip(arrays_of(m1), arrays_of(m2)):
        assert np.array_equal(a, b)
    assert [id(a) for a in arrays_of(m1)] == ids
    assert m1[1].activation is ft.relu and m2[1].activation is ft.identity
    x = rng_input(4, 10)
    assert np.array_equal(m1(x), ft.relu(m2(x)))


def test_loadmodel_case2_parallel_false_bias_ignores_src_array():
    m5 = ft.Chain(ft.Dense(10, 5),
                  Parallel(np.add, (ft.Dense(ft.ones32(2, 5), False), ft.Dense(5, 2))))
    m6 = ft.Chain(ft.Dense(10, 5), Parallel(np.add, (ft.Dense(5, 2), ft.Dense(5, 2))))
    m6[1][0].bias[:] = [3.0, 4.0]                      # a non-zero bias: still ignored
    ft.loadmodel_(m5, m6)
    assert np.array_equal(m5[0].weight, m6[0].weight)
    assert np.array_equal(m5[1][0].weight, m6[1][0].weight)
    assert np.array_equal(m5[1][1].weight, m6[1][1].weight)
    assert m5[1][0].bias is False
    assert m5[1].connection is np.add


def test_loadmodel_case2_named_chain_as_parallel():
    m5 = ft.Chain(ft.Dense(10, 5),
                  ft.Chain({"a": ft.Dense(ft.ones32(2, 5), False), "b": ft.Dense(5, 2)}))
    m6 = ft.Chain(ft.Dense(10, 5), ft.Chain({"b": ft.Dense(5, 2), "a": ft.Dense(5, 2)}))
    ft.loadmodel_(m5, m6)                               # dict keys matched as sets
    assert np.array_equal(m5[1]["a"].weight, m6[1]["a"].weight)
    assert np.array_equal(m5[1]["b"].weight, m6[1]["b"].weight)
    assert m5[1]["a"].bias is False


def test_loadmodel_case3_structures_differ():
    m1 = ft.Chain(ft.Dense(10, 5), ft.Dense(5, 2, ft.relu))
    snap = snapshot(m1)
    with pytest.raises(ValueError, match=r"loadmodel_: the structures do not match at "
                       r"layers\[0\]: tried to load src keys \['activation', 'beta', "):
        ft.loadmodel_(m1, ft.Chain(ft.BatchNorm(10), ft.Dense(5, 2)))
    m5 = ft.Chain(ft.Dense(10, 5),
                  Parallel(np.add, (ft.Dense(ft.ones32(2, 5), False), ft.Dense(5, 2))))
    with pytest.raises(ValueError, match=r"the structures do not match at layers\[1\]: tried "
                       r"to load src keys \['connection', 'layers'\] into dst keys "
                       r"\['weight', 'bias', 'activation'\]"):
        ft.loadmodel_(m1, m5)
    with pytest.raises(ValueError, match=r"the structures do not match at layers: tried to "
                       r"load 3 src children into 2 dst children"):
        ft.loadmodel_(m1, ft.Chain(ft.Dense(10, 5), ft.Dense(5, 2), ft.Dense(2, 2)))
    with pytest.raises(ValueError, match=r"the structures do not match at layers: tried to "
                       r"load src keys \['a', 'b'\] into dst 2 positional children"):
        ft.loadmodel_(m1, ft.Chain(a=ft.Dense(10, 5), b=ft.Dense(5, 2)))
    assert unchanged(snap)


def test_loadmodel_case4_dimension_mismatch():
    m1 = ft.Chain(ft.Dense(10, 5), ft.Dense(5, 2))
    snap = snapshot(m1)
    with pytest.raises(ValueError, match=r"^loadmodel_: expected an array of shape \(5, 10\) "
                       r"at layers\[0\]\.weight, got shape \(6, 10\)\.$"):
        ft.loadmodel_(m1, ft.Chain(ft.Dense(10, 6), ft.Dense(6, 2)))
    assert unchanged(snap)


def test_loadmodel_case5_batchnorm_stats_and_non_arrays():
    m1 = ft.Chain(ft.Dense(3, 16), ft.BatchNorm(16), flatten, ft.Dropout(0.2))
    bn = ft.BatchNorm(16)
    r = np.random.default_rng(5)
    bn.running_mean[:] = r.standard_normal(16)
    bn.running_var[:] = r.uniform(0.5, 2.0, 16)
    bn.gamma[:] = r.standard_normal(16)
    m2 = ft.Chain(ft.Dense(3, 16), bn, lambda x: x.reshape(x.shape[0], -1),
                  ft.trainmode_(ft.Dropout(0.1)))
    ft.loadmodel_(m1, m2)
    for name in ("beta", "gamma", "running_mean", "running_var"):
        assert np.array_equal(getattr(m1[1], name), getattr(bn, name))
        assert getattr(m1[1], name) is not getattr(bn, name)
    assert m1[2] is flatten
    assert m1[3].p == 0.2 and m1[3].active is None
    assert np.array_equal(m1[0].weight, m2[0].weight)


def test_loadmodel_case7_sub_model():
    chain1 = ft.Chain(ft.Dense(4, 4), ft.Dense(4, 4), ft.BatchNorm(4), ft.Dense(4, 2))
    chain2 = ft.Chain(ft.Dense(4, 4), ft.Dense(4, 4), ft.BatchNorm(4), ft.Dense(4, 2))
    chain1[2].running_mean[:] = 7.0
    others = snapshot(ft.Chain(chain2[0], chain2[1], chain2[3]))
    ft.loadmodel_(chain2[2], chain1[2])
    assert chain2[2].running_mean.tolist() == [7.0] * 4
    assert unchanged(others)
    ft.loadmodel_(chain2[3], chain1[3])
    assert np.array_equal(chain2[3].weight, chain1[3].weight)
    assert not np.array_equal(chain2[0].weight, chain1[0].weight)


def test_loadmodel_case8_tied_weights():
    d = ft.Dense(10, 10)
    m1 = ft.Chain(d, ft.Dense(d.weight, True))
    e = ft.Dense(10, 10)
    src = ft.Chain(e, ft.Dense(e.weight, True))
    ft.loadmodel_(m1, src)
    assert m1[0].weight is m1[1].weight is d.weight
    assert np.array_equal(m1[0].weight, e.weight)
    # the same from the state, and from a state with equal but untied arrays
    ft.loadmodel_(m1, ft.state(ft.Chain(ft.Dense(10, 10, init=ft.ones32),
                                        ft.Dense(10, 10, init=ft.ones32))))
    assert (d.weight == 1).all()
    # two independent sources: mismatched, nothing copied
    snap = snapshot(m1)
    with pytest.raises(ValueError, match=r"loadmodel_: encountered tied destination "
                       r"parameters with untied and mismatched sources at layers\[1\]\.weight "
                       r"\(the array there was loaded from a different source at "
                       r"layers\[0\]\.weight\)"):
        ft.loadmodel_(m1, ft.Chain(ft.Dense(10, 10), ft.Dense(10, 10)))
    assert unchanged(snap)


def test_loadmodel_case9_tied_bias_boolean_source():
    b = ft.zeros32(5)
    m1 = ft.Chain(ft.Dense(10, 5, bias=b), ft.Dense(5, 5, bias=b))
    assert m1[0].bias is m1[1].bias is b
    ft.loadmodel_(m1, ft.Chain(ft.Dense(10, 5, bias=ft.zeros32(5)),
                               ft.Dense(5, 5, bias=False)))
    assert m1[0].bias is m1[1].bias is b and not b.any()
    src = ft.Chain(ft.Dense(10, 5, bias=ft.ones32(5)), ft.Dense(5, 5, bias=False))
    snap = snapshot(m1)
    with pytest.raises(ValueError, match=r"loadmodel_: encountered a tied parameter with a "
                       r"boolean source at some nodes and non-boolean sources at others, at "
                       r"layers\[1\]\.bias \(first loaded at layers\[0\]\.bias\)"):
        ft.loadmodel_(m1, src)
    assert unchanged(snap)


def test_loadmodel_case10_filter():
    dst = ft.Chain(ft.Dense(10, 5), ft.Dense(5, 2, ft.relu))
    src = ft.Chain(ft.Dense(10, 5), ft.Dropout(0.2), ft.Dense(5, 2))
    keep = lambda x: not isinstance(x, ft.Dropout)
    ft.loadmodel_(dst, src, filter=keep)
    assert np.array_equal(dst[0].weight, src[0].weight)
    assert np.array_equal(dst[1].weight, src[2].weight)
    dst2 = ft.Chain(ft.Dense(10, 5), ft.Dropout(0.2), ft.Dense(5, 2))
    ft.loadmodel_(dst2, ft.Chain(ft.Dense(10, 5), ft.Dense(5, 2)), filter=keep)
    assert dst2[1].p == 0.2
    with pytest.raises(ValueError, match="the structures do not match at layers"):
        ft.loadmodel_(dst, src)


def test_loadmodel_case11_absent_bias():
    r = np.random.default_rng(11)
    m0 = ft.Chain(ft.Dense(2, 3, bias=False, init=ft.ones32), ft.Dense(3, 1))
    m1 = ft.Chain(ft.Dense(2, 3, bias=r.standard_normal(3).astype(np.float32)),
                  ft.Dense(3, 1))
    m2 = ft.Chain(ft.Dense(np.array([[1, 2], [3, 4], [5, 6]], np.float32),
                           np.array([7, 8, 9], np.float32)), ft.Dense(3, 1))
    ft.loadmodel_(m1, m2)
    assert m1[0].bias.tolist() == [7, 8, 9]
    assert m1[0].weight.sum() == 21
    ft.loadmodel_(m1, m0)
    assert m1[0].bias.tolist() == [0, 0, 0]
    assert m1[0].weight.sum() == 6
    ft.loadmodel_(m0, m2)
    assert m0[0].bias is False
    assert m0[0].weight.sum() == 21


def test_loadmodel_case13_leaf_errors():
    dst = ft.Chain(ft.Dense(2, 2), ft.BatchNorm(2, affine=False))
    snap = snapshot(dst)
    with pytest.raises(ValueError, match=r"^loadmodel_: tried to copy an array to None at "
                       r"layers\[1\]\.beta; this is not allowed\.$"):
        ft.loadmodel_(dst, ft.Chain(ft.Dense(2, 2), ft.BatchNorm(2)))
    assert unchanged(snap)
    dst2 = ft.Chain(ft.Dense(2, 2), ft.BatchNorm(2))
    snap2 = snapshot(dst2)
    with pytest.raises(ValueError, match=r"^loadmodel_: tried to copy None into an array "
                       r"destination at layers\[1\]\.beta; this is not allowed\.$"):
        ft.loadmodel_(dst2, ft.Chain(ft.Dense(2, 2), ft.BatchNorm(2, affine=False)))
    assert unchanged(snap2)
    with pytest.raises(ValueError, match=r"cannot copy the boolean parameter True into the "
                       r"array at layers\[0\]\.bias"):
        ft.loadmodel_(dst2, {"layers": ({"weight": np.ones((2, 2)), "bias": True,
                                         "activation": ()}, ft.state(dst2[1]))})
    assert unchanged(snap2)


def test_loadmodel_array_into_true_bias_is_an_error():
    # a Dense turns bias=True into a zero array, so the destination is a state-like tree
    dst = {"layers": ({"weight": np.zeros((2, 2), np.float32), "bias": True,
                       "activation": None},)}
    with pytest.raises(ValueError, match=r"cannot copy a non-zero parameter into the boolean "
                       r"parameter True at \[\"layers\"\]\[0\]\[\"bias\"\]"):
        ft.loadmodel_(dst, ft.state(ft.Chain(ft.Dense(2, 2))))


def test_loadmodel_case14_round_trip_after_training_step():
    x = rng_input(8, 3, seed=14)
    m1 = ft.Chain(ft.Dense(3, 4, ft.relu), ft.BatchNorm(4), ft.Dropout(0.3), ft.Dense(4, 2))
    ft.trainmode_(m1)
    m1(x)                                              # updates the running statistics
    m1[0].weight -= 0.1                                # and "an optimiser step"
    m1[3].bias += 0.5
    ft.testmode_(m1)
    assert not np.array_equal(m1[1].running_mean, np.zeros(4, np.float32))
    assert not np.array_equal(m1[1].running_var, np.ones(4, np.float32))
    m2 = ft.Chain(ft.Dense(3, 4, ft.relu), ft.BatchNorm(4), ft.Dropout(0.5), ft.Dense(4, 2))
    ft.loadmodel_(m2, ft.state(m1))
    for a, b in zip(arrays_of(m1), arrays_of(m2)):
        assert a is not b and a.dtype == b.dtype and np.array_equal(a, b)
    assert len(arrays_of(m2)) == 8
    # non-array leaves were not copied
    assert m2[1].active is None and m2[2].active is None and m2[2].p == 0.5
    ft.testmode_(m2)
    assert np.array_equal(m1(x), m2(x))


def test_failed_load_leaves_layered_model_unchanged():
    m = ft.Chain(ft.Dense(3, 4), ft.BatchNorm(4), ft.Dropout(0.2), ft.Dense(4, 2, bias=False),
                 ft.BatchNorm(2))
    before = ft.state(m)
    snap = snapshot(m)
    scalars = [(m[1].eps, m[1].momentum, m[1].active), (m[2].p, m[2].active)]
    src = ft.state(ft.Chain(ft.Dense(3, 4), ft.BatchNorm(4), ft.Dropout(0.9),
                            ft.Dense(4, 2), ft.BatchNorm(3)))      # fails at the last layer
    with pytest.raises(ValueError, match=r"^loadmodel_: expected an array of shape \(2,\) at "
                       r"layers\[4\]\.beta, got shape \(3,\)\.$"):
        ft.loadmodel_(m, src)
    assert unchanged(snap)
    assert [(m[1].eps, m[1].momentum, m[1].active), (m[2].p, m[2].active)] == scalars
    assert m[3].bias is False
    # the tree is the same objects as before
    after = ft.state(m)
    for a, b in zip(arrays_of(before), arrays_of(after)):
        assert a is b
    # a complex source for a float32 layer is a TypeError, also before any copy
    bad = ft.state(ft.Chain(ft.Dense(3, 4), ft.BatchNorm(4), ft.Dropout(0.2),
                            ft.Dense(4, 2, bias=False), ft.BatchNorm(2)))
    bad["layers"][4]["gamma"] = bad["layers"][4]["gamma"].astype(np.complex64)
    with pytest.raises(TypeError, match=r"cannot load a complex64 array into the float32 "
                       r"array at layers\[4\]\.gamma"):
        ft.loadmodel_(m, bad)
    assert unchanged(snap)


def test_loadmodel_casts_to_destination_dtype():
    m32 = ft.Chain(ft.Dense(3, 2), ft.BatchNorm(2))
    m64 = f64(ft.Chain(ft.Dense(3, 2), ft.BatchNorm(2)))
    m64[0].weight[:] = 1 / 3
    m64[1].running_mean[:] = 0.1
    ft.loadmodel_(m32, m64)
    assert m32[0].weight.dtype == np.float32
    assert np.array_equal(m32[0].weight, np.full((2, 3), 1 / 3, np.float32))
    assert m32[1].running_mean.dtype == np.float32
    ft.loadmodel_(m64, ft.state(m32))
    assert m64[0].weight.dtype == np.float64
    assert np.array_equal(m64[0].weight, np.float32(1 / 3).astype(np.float64) * np.ones((2, 3)))


# ----------------------------------------------------------------------------
# checkpoints of trained layered models
# ----------------------------------------------------------------------------
def trained_model(seed=0):
    r = np.random.default_rng(seed)
    m = ft.Chain(ft.Dense(3, 4, ft.tanh, rng=r), ft.BatchNorm(4, ft.relu),
                 ft.Dropout(0.25, rng=np.random.default_rng(seed + 1)), ft.Dense(4, 2, rng=r))
    ft.trainmode_(m)
    x = rng_input(16, 3, seed=seed + 2)
    for _ in range(3):
        m(x)
        m[0].weight *= 0.9
        m[1].beta += 0.01
    return ft.testmode_(m), x


@pytest.mark.parametrize("ext", EXTS)
def test_checkpoint_round_trip_of_trained_model(tmp_path, ext):
    m, x = trained_model()
    path = tmp_path / f"trained{ext}"
    ft.save(path, m)
    loaded = ft.load(path)
    assert_tree_equal(loaded, ft.state(m))
    assert loaded["layers"][1]["running_mean"].dtype == np.float32
    assert loaded["layers"][1]["active"] is False and loaded["layers"][2]["active"] is False
    assert loaded["layers"][2]["p"] == 0.25
    assert loaded["layers"][2]["rng"] == () and loaded["layers"][2]["dims"] == ()
    fresh = ft.Chain(ft.Dense(3, 4, ft.tanh), ft.BatchNorm(4, ft.relu), ft.Dropout(0.25),
                     ft.Dense(4, 2))
    ft.loadmodel_(fresh, loaded)
    assert_tree_equal(ft.state(ft.testmode_(fresh)), ft.state(m))
    assert np.array_equal(fresh(x), m(x))
    # and the loaded arrays are not the file's buffers anymore
    assert not any(np.shares_memory(a, b) for a in arrays_of(fresh) for b in arrays_of(loaded))


@pytest.mark.parametrize("ext", EXTS)
def test_checkpoint_round_trip_after_f64(tmp_path, ext):
    m, x = trained_model(seed=3)
    m64 = f64(m)
    assert all(a.dtype == np.float64 for a in arrays_of(m64))
    path = tmp_path / f"trained64{ext}"
    ft.save(path, m64)
    loaded = ft.load(path)
    assert_tree_equal(loaded, ft.state(m64))
    assert {a.dtype for a in arrays_of(loaded)} == {np.dtype(np.float64)}
    fresh64 = f64(ft.Chain(ft.Dense(3, 4, ft.tanh), ft.BatchNorm(4, ft.relu),
                           ft.Dropout(0.25), ft.Dense(4, 2)))
    ft.loadmodel_(fresh64, loaded)
    ft.testmode_(fresh64)
    x64 = x.astype(np.float64)
    assert np.array_equal(fresh64(x64), m64(x64))
    assert fresh64(x64).dtype == np.float64
    # a float64 checkpoint loads into a float32 model (same-kind cast)
    fresh32 = ft.Chain(ft.Dense(3, 4, ft.tanh), ft.BatchNorm(4, ft.relu), ft.Dropout(0.25),
                       ft.Dense(4, 2))
    ft.loadmodel_(fresh32, loaded)
    assert all(a.dtype == np.float32 for a in arrays_of(fresh32))
    assert_tree_equal(ft.state(ft.testmode_(fresh32)), ft.state(m))


@pytest.mark.parametrize("ext", EXTS)
def test_checkpoint_round_trip_of_mixed_precision(tmp_path, ext, monkeypatch):
    m, x = trained_model(seed=5)
    m16 = f16(m)
    path = tmp_path / f"trained16{ext}"
    ft.save(path, m16)
    loaded = ft.load(path)
    assert_tree_equal(loaded, ft.state(m16))
    assert loaded["layers"][0]["weight"].dtype == np.float16
    assert loaded["layers"][1]["running_var"].dtype == np.float32
    fresh16 = f16(ft.Chain(ft.Dense(3, 4, ft.tanh), ft.BatchNorm(4, ft.relu),
                           ft.Dropout(0.25), ft.Dense(4, 2)))
    ft.loadmodel_(fresh16, loaded)
    ft.testmode_(fresh16)
    x16 = x.astype(np.float16)
    # the float32 BatchNorm output goes into a float16 Dense: converted, with a warning
    # (once per process and dtype pair: start from none given)
    monkeypatch.setattr(layers_module, "_warned_precision", set())
    with pytest.warns(ft.nn.PrecisionWarning, match="float16 parameters got float32 input"):
        y = fresh16(x16)
    assert y.dtype == np.float16
    assert np.array_equal(y, m16(x16))


@pytest.mark.parametrize("ext", EXTS)
def test_checkpoint_keeps_tied_layers(tmp_path, ext):
    d = ft.Dense(5, 5)
    m = ft.Chain(d, ft.Dense(d.weight, False), ft.BatchNorm(5))
    path = tmp_path / f"tied{ext}"
    ft.save(path, m)
    s = ft.load(path)
    assert s["layers"][0]["weight"] is s["layers"][1]["weight"]
    assert s["layers"][1]["bias"] is False
    d2 = ft.Dense(5, 5)
    m2 = ft.Chain(d2, ft.Dense(d2.weight, False), ft.BatchNorm(5))
    ft.loadmodel_(m2, s)
    assert m2[0].weight is m2[1].weight
    assert np.array_equal(m2[0].weight, d.weight)
