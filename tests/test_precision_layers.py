"""f16 / f32 / f64 on the real layers of ``fluxtree.nn`` (SPEC Part B §3.4, Part A §2, §4).

``tests/test_precision.py`` covers the dtype table, scalars, complex arrays and ties with
stand-in records; here the same rules are checked on ``Dense``, ``BatchNorm``, ``Dropout``
and ``Chain``, together with the forward passes in each precision. Julia's column inputs
(``rand(Float32, 10)``) become batches ``(batch, 10)`` (Part A §2).
"""
from __future__ import annotations

import numpy as np
import pytest

import fluxtree as ft
import fluxtree.nn._common as layers_module
from fluxtree.precision import f16, f32, f64


def arrays_of(tree):
    """The arrays of a model or state, in traversal order (a tied array at each position)."""
    return [a for a in ft.fleaves(tree) if isinstance(a, np.ndarray)]


def inputs(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def spec_model():
    return ft.Chain(ft.Dense(10, 5, ft.relu, bias=False), ft.Dense(5, 2))


@pytest.fixture
def fresh_precision_warnings(monkeypatch):
    """The layers warn once per dtype pair per process: start from no warning given."""
    monkeypatch.setattr(layers_module, "_warned_precision", set())


# ----------------------------------------------------------------------------
# SPEC §3.4 test cases
# ----------------------------------------------------------------------------
def test_default_model_is_float32():
    m = spec_model()
    assert m[0].weight.dtype == np.float32 and m[1].weight.dtype == np.float32
    assert m[1].bias.dtype == np.float32
    y = m(inputs(3, 10))
    assert y.dtype == np.float32 and y.shape == (3, 2)
    assert m(inputs(10)).dtype == np.float32                 # a single sample


def test_float64_input_into_float32_model_warns_and_gives_float32(fresh_precision_warnings):
    m = spec_model()
    x = inputs(3, 10, dtype=np.float64)
    with pytest.warns(ft.nn.PrecisionWarning, match="Dense with float32 parameters got "
                      "float64 input"):
        y = m(x)
    assert y.dtype == np.float32
    assert np.allclose(y, m(x.astype(np.float32)))


def test_f64_gives_float64_weights_and_outputs():
    m = spec_model()
    m64 = f64(m)
    assert m64[0].weight.dtype == np.float64 and m64[1].weight.dtype == np.float64
    assert m64[1].bias.dtype == np.float64
    assert m64[0].bias is False
    x = inputs(4, 10, dtype=np.float64)
    y = m64(x)
    assert y.dtype == np.float64
    assert m64(x.astype(np.float32)).dtype == np.float64      # float32 input is promoted
    # the same function as the float32 model, in more precision
    assert np.allclose(y, m(x.astype(np.float32)), rtol=1e-5, atol=1e-6)
    ref = np.maximum(x @ m[0].weight.astype(np.float64).T, 0) @ \
        m[1].weight.astype(np.float64).T + m[1].bias
    assert np.allclose(y, ref, rtol=1e-12, atol=1e-12)
    # the original model is untouched, the layers are new objects
    assert m[0].weight.dtype == np.float32
    assert m64 is not m and m64[0] is not m[0] and m64[1] is not m[1]
    assert type(m64) is ft.Chain and type(m64[0]) is ft.Dense
    assert type(m64.layers) is tuple


def test_f32_of_f64_back_to_float32():
    m = spec_model()
    back = f32(f64(m))
    assert back[0].weight.dtype == np.float32 and back[1].bias.dtype == np.float32
    for a, b in zip(arrays_of(back), arrays_of(m)):
        assert np.array_equal(a, b)                      # float32 -> float64 -> float32 exact
    assert back(inputs(2, 10)).dtype == np.float32
    # f32 of a float32 model copies nothing
    same = f32(m)
    assert all(a is b for a, b in zip(arrays_of(same), arrays_of(m)))
    assert same is not m


def test_f64_keeps_false_bias():
    d = ft.Dense(3, 2, bias=False)
    assert f64(d).bias is False
    assert f32(d).bias is False and f16(d).bias is False
    assert f64(d).weight.dtype == np.float64


def test_f16_keeps_batchnorm_in_float32():
    bn = ft.BatchNorm(3)
    bn16 = f16(bn)
    assert type(bn16) is ft.BatchNorm
    assert [a.dtype for a in arrays_of(bn16)] == [np.dtype(np.float32)] * 4
    assert all(a is b for a, b in zip(arrays_of(bn16), arrays_of(bn)))   # no copies
    # f64 converts a BatchNorm like any other layer
    assert {a.dtype for a in arrays_of(f64(bn))} == {np.dtype(np.float64)}
    # and f16 of a float64 BatchNorm brings it to float32, not float16
    assert {a.dtype for a in arrays_of(f16(f64(bn)))} == {np.dtype(np.float32)}


def test_f16_dense_arrays_and_forward():
    d = ft.Dense(3, 2, ft.tanh, rng=np.random.default_rng(1))
    d16 = f16(d)
    assert d16.weight.dtype == np.float16 and d16.bias.dtype == np.float16
    d16.bias[:] = [0.25, -0.5]
    x = inputs(5, 3, dtype=np.float16, seed=2)
    y = d16(x)
    assert y.dtype == np.float16 and y.shape == (5, 2)
    ref = np.tanh(x.astype(np.float64) @ d16.weight.astype(np.float64).T
                  + d16.bias.astype(np.float64))
    assert np.allclose(y.astype(np.float64), ref, rtol=4e-3, atol=4e-3)
    assert not np.allclose(y.astype(np.float64), 0)
    # no activation, no bias
    d16b = f16(ft.Dense(3, 2, bias=False, rng=np.random.default_rng(3)))
    ref_b = x.astype(np.float64) @ d16b.weight.astype(np.float64).T
    assert np.allclose(d16b(x).astype(np.float64), ref_b, rtol=4e-3, atol=4e-3)


def test_f16_dense_float32_input_warns(fresh_precision_warnings):
    d16 = f16(ft.Dense(3, 2))
    with pytest.warns(ft.nn.PrecisionWarning, match="float16 parameters got float32 input"):
        y = d16(inputs(2, 3))
    assert y.dtype == np.float16


def test_f16_mixed_chain():
    m = ft.Chain(ft.Dense(3, 3), ft.BatchNorm(3))
    m16 = f16(m)
    assert m16[0].weight.dtype == np.float16 and m16[0].bias.dtype == np.float16
    for name in ("beta", "gamma", "running_mean", "running_var"):
        assert getattr(m16[1], name).dtype == np.float32
    x = inputs(6, 3, dtype=np.float16, seed=4)
    y = m16(x)                                  # float16 Dense, then a float32 BatchNorm
    assert y.dtype == np.float32
    ref = m16[0](x).astype(np.float32) - np.float32(0)
    ref = ref / np.sqrt(np.float32(1) + np.float32(1e-5))     # running stats 0 and 1
    assert np.allclose(y, ref, rtol=1e-5, atol=1e-6)
    # training updates the float32 running statistics
    ft.trainmode_(m16)
    m16(x)
    assert m16[1].running_mean.dtype == np.float32 and m16[1].running_mean.any()
    # arrays already of the target dtype are not copied (SPEC §3.4): the float32 BatchNorm
    # arrays are shared with the original model, while the Dense arrays are new
    assert m16[1].running_mean is m[1].running_mean and m16[1] is not m[1]
    assert not np.shares_memory(m16[0].weight, m[0].weight)


# ----------------------------------------------------------------------------
# ties, shared layers and leaves that are not arrays
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("convert", [f16, f32, f64], ids=["f16", "f32", "f64"])
def test_tied_weight_survives(convert):
    d = ft.Dense(4, 4)
    m = ft.Chain(d, ft.Dense(d.weight, False))
    mc = convert(f64(m))
    assert mc[0].weight is mc[1].weight
    assert mc[1].bias is False
    assert len({id(a) for a in arrays_of(mc)}) == 2          # weight (tied) and bias
    assert np.allclose(mc[0].weight, d.weight, rtol=1e-3)


def test_tie_through_f32_and_f64_in_turn():
    d = ft.Dense(4, 4)
    m = ft.Chain(d, ft.Dense(d.weight, False))
    m64 = f64(m)
    assert m64[0].weight is m64[1].weight and m64[0].weight.dtype == np.float64
    m32 = f32(m64)
    assert m32[0].weight is m32[1].weight and m32[0].weight.dtype == np.float32
    assert np.array_equal(m32[0].weight, d.weight)


@pytest.mark.parametrize("convert", [f16, f32, f64], ids=["f16", "f32", "f64"])
def test_shared_layer_stays_shared(convert):
    d, bn = ft.Dense(3, 3), ft.BatchNorm(3)
    m = ft.Chain(d, bn, d, bn)
    mc = convert(m)
    assert mc[0] is mc[2] and mc[1] is mc[3]


def test_activations_rngs_and_scalars_are_kept():
    g = np.random.default_rng(7)
    m = ft.Chain(ft.Dense(3, 3, ft.relu), ft.BatchNorm(3, ft.tanh, eps=1e-3, momentum=0.2),
                 ft.Dropout(0.5, 1, rng=g), ft.Dense(3, 1, np.tanh))
    for convert in (f16, f32, f64):
        mc = convert(m)
        assert mc[0].activation is ft.relu and mc[3].activation is np.tanh
        assert mc[1].activation is ft.tanh
        assert mc[2].rng is g and mc[2].dims == 1 and mc[2] is not m[2]
        assert mc[2].p == 0.5 and type(mc[2].p) is float
        assert mc[1].eps == 1e-3 and type(mc[1].eps) is float
        assert mc[1].momentum == 0.2 and type(mc[1].momentum) is float
        assert mc[1].affine is True and mc[1].channels == 3 and mc[1].active is None
    assert f64(ft.Dropout(0.1)).dims is ft.nn.colon


def test_f64_batchnorm_forward_and_training():
    bn = ft.BatchNorm(3, ft.relu)
    bn64 = ft.trainmode_(f64(bn))
    x = inputs(8, 3, 2, dtype=np.float64, seed=5)
    y = bn64(x)
    assert y.dtype == np.float64 and y.shape == x.shape
    mean = x.mean(axis=(0, 2))
    var = x.var(axis=(0, 2))
    ref = np.maximum((x - mean[:, None]) / np.sqrt(var[:, None] + 1e-5), 0)
    assert np.allclose(y, ref, rtol=1e-10, atol=1e-10)
    assert bn64.running_mean.dtype == np.float64
    assert np.allclose(bn64.running_mean, 0.1 * mean, rtol=1e-12)
    n = x.size // 3
    assert np.allclose(bn64.running_var, 0.9 + 0.1 * var * n / (n - 1), rtol=1e-12)
    assert not bn.running_mean.any()                  # the float32 original is untouched


def test_precision_then_state_dtypes():
    m = ft.Chain(ft.Dense(3, 2), ft.BatchNorm(2), ft.Dropout(0.1))
    s16 = ft.state(f16(m))
    assert s16["layers"][0]["weight"].dtype == np.float16
    assert s16["layers"][1]["running_var"].dtype == np.float32
    s64 = ft.state(f64(m))
    assert {a.dtype for a in arrays_of(s64)} == {np.dtype(np.float64)}
    assert s64["layers"][2] == {"p": 0.1, "dims": (), "active": None, "rng": ()}
