"""Layers: construction, forward against NumPy references, modes, printing, seed examples."""
import re

import numpy as np
import pytest

import fluxtree as ft
from fluxtree.nn import (BatchNorm, Chain, Dense, Dropout, PrecisionWarning, colon, elu, gelu,
                         glorot_uniform, identity, leakyrelu, ones32, relu, sigmoid, softplus,
                         swish, tanh, training, zeros32)

ACTS = [None, identity, relu, tanh, sigmoid, softplus, gelu, elu, leakyrelu, swish]


def ref_act(act, z):
    z = z.astype(np.float64)
    refs = {
        None: z, identity: z, relu: np.maximum(z, 0), tanh: np.tanh(z),
        sigmoid: 1 / (1 + np.exp(-z)), softplus: np.log1p(np.exp(z)),
        gelu: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3))),
        elu: np.where(z > 0, z, np.expm1(z)), leakyrelu: np.where(z > 0, z, 0.01 * z),
        swish: z / (1 + np.exp(-z)),
    }
    return refs[act]


RTOL = {np.float32: 2e-5, np.float64: 1e-12}


# ----------------------------------------------------------------------------------------
# Dense
# ----------------------------------------------------------------------------------------
def test_dense_shapes_follow_out_in():
    d = Dense(10, 100)
    assert d.weight.shape == (100, 10) and d.bias.shape == (100,)
    assert d.weight.dtype == np.float32 and d.bias.dtype == np.float32
    assert not d.bias.any()


def test_dense_from_arrays_keeps_them_as_given():
    w = np.ones((3, 2))
    b = np.arange(3.0)
    d = Dense(w, b, tanh)
    assert d.weight is w and d.bias is b and d.activation is tanh
    tied = Dense(w, False)
    assert tied.weight is d.weight and tied.bias is False


def test_dense_bias_true_follows_weight_dtype():
    assert Dense(np.ones((4, 3), np.float16), True).bias.dtype == np.float16
    assert Dense(3, 4, bias=False).bias is False


@pytest.mark.parametrize("bad", [np.ones(5), [1.0, 2.0]])
def test_dense_bias_of_wrong_length_is_an_error(bad):
    with pytest.raises(ValueError, match=re.escape("Dense: expected bias of shape (4,), got shape")):
        Dense(3, 4, bias=np.asarray(bad))


def test_dense_rejects_a_vector_weight_and_bad_sizes():
    with pytest.raises(ValueError, match="weight must be a matrix"):
        Dense(np.ones(5))
    with pytest.raises(TypeError, match="in must be a non-negative int"):
        Dense(10.5, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTS, ids=lambda a: repr(a))
@pytest.mark.parametrize("batch, n_in, n_out", [(1, 1, 1), (7, 3, 5), (32, 64, 64)])
def test_dense_forward_matches_numpy(dtype, act, batch, n_in, n_out):
    rng = np.random.default_rng(batch * 100 + n_in)
    d = Dense(n_in, n_out, act, rng=rng, dtype=dtype)
    d.bias[...] = rng.standard_normal(n_out)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    want = ref_act(act, x.astype(np.float64) @ d.weight.T.astype(np.float64) + d.bias)
    got = d(x)
    assert got.dtype == dtype and got.shape == (batch, n_out)
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=RTOL[dtype])


def test_dense_worked_numbers_of_the_spec():
    d = Dense(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), np.array([0.1, 0.2, 0.3]), tanh)
    y = d(np.eye(2))
    np.testing.assert_allclose(y.T, [[0.80050, 0.97045], [0.99668, 0.99955],
                                     [0.99995, 0.99999]], atol=1e-5)


@pytest.mark.parametrize("shape, out", [((10,), (5,)), ((2, 10), (2, 5)), ((3, 2, 10), (3, 2, 5)),
                                        ((4, 3, 2, 10), (4, 3, 2, 5))])
def test_dense_accepts_any_leading_batch_axes(shape, out):
    assert Dense(10, 5)(np.ones(shape, np.float32)).shape == out


@pytest.mark.parametrize("shape", [(1,), (2, 11), (3, 2, 11)])
def test_dense_rejects_wrong_feature_count(shape):
    with pytest.raises(ValueError, match=re.escape("Dense(10 => 5) expects an input with 10 "
                                                   "features on its last axis, got shape")):
        Dense(10, 5)(np.ones(shape, np.float32))


def test_dense_ones_init_example():
    d = Dense(10, 1, init=ones32)
    np.testing.assert_array_equal(d(np.ones((1, 10), np.float32)), [[10.0]])
    d2 = Dense(10, 2, init=ones32)
    x = np.stack([np.ones(10), 2 * np.ones(10)]).astype(np.float32)
    np.testing.assert_array_equal(d2(x), [[10, 10], [20, 20]])


def test_dense_converts_input_and_warns_once_for_wider_floats(monkeypatch):
    monkeypatch.setattr("fluxtree.nn._common._warned_precision", set())
    d = Dense(2, 3)
    with pytest.warns(PrecisionWarning, match="float32 parameters got float64 input"):
        y = d(np.ones((4, 2)))
    assert y.dtype == np.float32
    assert d(np.ones((4, 2), np.int64)).dtype == np.float32
    assert d(np.ones((4, 2), bool)).dtype == np.float32


def test_dense_tied_weight_layers_agree():
    d1 = Dense(2, 3)
    d2 = Dense(d1.weight, False)
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    np.testing.assert_allclose(d1(x), d2(x), rtol=1e-6)
    np.testing.assert_allclose(d2(x), x @ d1.weight.T, rtol=1e-6)


def test_dense_float16_and_custom_activation_take_the_numpy_path():
    d = Dense(np.ones((2, 3), np.float16), True, np.exp)
    y = d(np.ones((1, 3), np.float16))
    assert y.dtype == np.float16
    np.testing.assert_allclose(y, np.exp(3.0) * np.ones((1, 2)), rtol=1e-3)


# ----------------------------------------------------------------------------------------
# BatchNorm
# ----------------------------------------------------------------------------------------
X_BN = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])   # 3 samples, 2 channels


def test_batchnorm_fields_and_trainables():
    m = BatchNorm(2)
    assert len(ft.trainables(m)) == 2
    np.testing.assert_array_equal(m.beta, [0, 0])
    np.testing.assert_array_equal(m.gamma, [1, 1])
    assert list(ft.children(m)) == ["activation", "beta", "gamma", "running_mean", "running_var",
                                    "eps", "momentum", "affine", "track_stats", "active",
                                    "channels"]
    assert len(ft.trainables(BatchNorm(10, affine=False))) == 0
    assert BatchNorm(5, active=True).active is True
    with pytest.raises(TypeError, match="active must be True, False or None"):
        BatchNorm(5, active="something_else")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_training_then_test_mode(dtype):
    m = BatchNorm(2) if dtype == np.float32 else ft.f64(BatchNorm(2))
    ft.trainmode_(m)
    y = m(X_BN.astype(dtype))
    np.testing.assert_allclose(y, [[-1.22474, -1.22474], [0, 0], [1.22474, 1.22474]], atol=1e-5)
    np.testing.assert_allclose(m.running_mean, [0.3, 0.4], rtol=1e-6)
    np.testing.assert_allclose(m.running_var, [1.3, 1.3], rtol=1e-6)
    ft.testmode_(m)
    np.testing.assert_allclose(m(X_BN.astype(dtype)),
                               [[0.613938, 1.403287], [2.368048, 3.157397], [4.122157, 4.911506]],
                               atol=1e-5)


def test_batchnorm_plain_call_is_test_mode_and_sigmoid():
    m = BatchNorm(2, sigmoid)
    y = m(X_BN.astype(np.float32))
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-X_BN / np.sqrt(1 + 1e-5))), atol=1e-6)
    np.testing.assert_array_equal(m.running_mean, [0, 0])


def test_batchnorm_auto_mode_trains_inside_training():
    m = BatchNorm(2)
    with training():
        m(X_BN.astype(np.float32))
    np.testing.assert_allclose(m.running_mean, [0.3, 0.4], rtol=1e-6)


@pytest.mark.parametrize("spatial", [(), (3,), (2, 3), (2, 2, 3)])
def test_batchnorm_channel_axis_is_one(spatial):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, *spatial)).astype(np.float64)
    m = ft.trainmode_(ft.f64(BatchNorm(3)))
    y = m(x)
    axes = tuple(i for i in range(x.ndim) if i != 1)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-10, atol=1e-12)
    n = x.size // 3
    np.testing.assert_allclose(m.running_var, 0.9 + 0.1 * var.ravel() * n / (n - 1), rtol=1e-10)


def test_batchnorm_single_value_per_channel_in_training_is_an_error():
    m = ft.trainmode_(BatchNorm(1))
    with pytest.raises(ValueError, match="BatchNorm expected more than 1 value per channel"):
        m(np.zeros((1, 1), np.float32))
    assert m(np.arange(4, dtype=np.float32).reshape(4, 1, 1)).shape == (4, 1, 1)
    fresh = ft.testmode_(BatchNorm(1))
    np.testing.assert_allclose(fresh(np.zeros((1, 1), np.float32)), [[0.0]], atol=1e-6)


def test_batchnorm_wrong_channels_is_an_error():
    with pytest.raises(ValueError, match=re.escape("BatchNorm(3) expects an input of shape "
                                                   "(batch, 3, ...), got shape (4, 2).")):
        BatchNorm(3)(np.ones((4, 2), np.float32))


def test_batchnorm_without_stats_or_affine():
    m = BatchNorm(2, affine=False, track_stats=False)
    assert m.beta is None and m.running_mean is None
    y = m(X_BN.astype(np.float32))
    np.testing.assert_allclose(y[:, 0], [-1.22474, 0, 1.22474], atol=1e-5)


# ----------------------------------------------------------------------------------------
# Dropout and modes
# ----------------------------------------------------------------------------------------
def test_dropout_identity_outside_training_and_rules_inside():
    x = np.ones((3, 4))
    assert Dropout(0.1)(x) is x
    with training():
        assert not Dropout(1.0)(x).any()
        np.testing.assert_array_equal(Dropout(0.0)(x), x)
    assert ft.testmode_(Dropout(1.0))(x) is x


def test_dropout_dims_choose_whole_columns():
    d = ft.trainmode_(Dropout(0.5, dims=1, rng=np.random.default_rng(3)))
    y = d(np.ones((5, 8)))
    zeros_per_row = (y == 0).sum(axis=1)
    assert len(set(zeros_per_row)) == 1
    assert set(np.unique(y)) <= {0.0, 2.0}


def test_dropout_bad_p_and_fields():
    with pytest.raises(ValueError, match=re.escape("Dropout expects 0 <= p <= 1, got p = 2.0.")):
        Dropout(2.0)
    d = Dropout(0.2)
    assert list(ft.children(d)) == ["p", "dims", "active", "rng"]
    assert d.dims is colon and isinstance(d.rng, np.random.Generator)
    assert ft.trainables(d) == []


def test_modes_recurse_and_validate():
    m = Chain(Dense(2, 2), Dropout(0.2), BatchNorm(2))
    ft.trainmode_(m)
    assert m[1].active is True and m[2].active is True
    ft.testmode_(m, "auto")
    assert m[1].active is None
    with pytest.raises(ValueError, match="accepts only the string 'auto', got 'other'"):
        ft.testmode_(m, "other")
    with pytest.raises(TypeError, match="does not accept 3 as its mode"):
        ft.trainmode_(m, 3)


# ----------------------------------------------------------------------------------------
# Chain
# ----------------------------------------------------------------------------------------
def test_chain_applies_in_order_and_indexes():
    a, b = Dense(2, 3, relu), Dense(3, 1)
    c = Chain(a, b)
    x = np.ones((4, 2), np.float32)
    np.testing.assert_array_equal(c(x), b(a(x)))
    assert c[0] is a and c[-1] is b and len(c) == 2
    assert c[1:].layers == (b,)
    assert ft.children(c) == {"layers": (a, b)}


def test_named_chain():
    c = Chain(enc=Dense(2, 3), dec=Dense(3, 2))
    assert c["enc"] is c[0]
    assert list(c.layers) == ["enc", "dec"]
    assert repr(c) == "Chain(enc = Dense(2 => 3), dec = Dense(3 => 2))"
    assert Chain({"a": Dense(1, 1)}).layers.keys() == {"a"}


def test_layers_rebuild_through_fmap_and_destructure():
    m = Chain(Dense(2, 1, tanh), Dense(1, 1))
    flat, re_ = ft.destructure(m)
    assert flat.shape == (5,) and flat.dtype == np.float32
    assert repr(re_) == "Restructure(Chain, ..., 5)"
    z = re_(np.zeros(5))
    assert type(z) is Chain and z[0].activation is tanh and not z[0].weight.any()
    doubled = ft.fmap(lambda a: a * 2 if ft.isnumeric(a) else a, m)
    np.testing.assert_array_equal(doubled[0].weight, 2 * m[0].weight)


# ----------------------------------------------------------------------------------------
# seed 000: modules and the L2 regulariser
# ----------------------------------------------------------------------------------------
def test_modules_of_nested_chain_has_seven_elements():
    m1 = Chain(Dense(28 ** 2, 64), BatchNorm(64, relu))
    m2 = Chain(m1, Dense(64, 10))
    mods = ft.modules(m2)
    assert len(mods) == 7
    assert mods[0] is m2 and mods[1] is m2.layers and mods[2] is m1
    assert mods[3] is m1.layers and mods[4] is m1[0] and mods[5] is m1[1] and mods[6] is m2[1]
    l2 = sum(np.sum(layer.weight ** 2) for layer in mods if isinstance(layer, Dense))
    assert isinstance(l2, np.float32)


# ----------------------------------------------------------------------------------------
# printing (SPEC §3.7)
# ----------------------------------------------------------------------------------------
def test_print_single_layers():
    assert str(Dense(2, 1, tanh)) == "Dense(2 => 1, tanh)  # 3 parameters"
    assert str(Dense(5, 2)) == "Dense(5 => 2)       # 12 parameters"
    assert str(Dense(np.ones((2, 5)), False, tanh)) == \
        "Dense(5 => 2, tanh; bias=False)  # 10 parameters"
    assert repr(Dense(2, 3)) == "Dense(2 => 3)"
    assert str(BatchNorm(64, relu)) == "BatchNorm(64, relu)  # 128 parameters, plus 128 non-trainable"
    assert str(Dropout(0.4)) == "Dropout(0.4)"
    assert repr(Chain(Dense(2, 3))) == "Chain(Dense(2 => 3))"


def test_print_chain_with_total():
    m = Chain(Dense(2, 1, tanh), Dense(1, 1))
    assert str(m) == (
        "Chain(\n"
        "  Dense(2 => 1, tanh),                  # 3 parameters\n"
        "  Dense(1 => 1),                        # 2 parameters\n"
        ")                   # Total: 4 arrays, 5 parameters, 20 bytes.")
    _, re_ = ft.destructure(m)
    assert all(line.endswith("(all zero)") for line in str(re_(np.zeros(5))).splitlines()[1:3])


def test_print_two_array_chain_has_no_total():
    assert str(Chain(Dense(2, 3))) == "Chain(\n  Dense(2 => 3),                        # 9 parameters\n) "


def test_print_nested_chain_with_non_trainable():
    m1 = Chain(Dense(784, 64), BatchNorm(64, relu))
    m2 = Chain(m1, Dense(64, 10))
    lines = str(m2).splitlines()
    assert lines == [
        "Chain(",
        "  Chain(",
        "    Dense(784 => 64),                   # 50_240 parameters",
        "    BatchNorm(64, relu),                # 128 parameters, plus 128",
        "  ),",
        "  Dense(64 => 10),                      # 650 parameters",
        ")         # Total: 6 trainable arrays, 51_018 parameters,",
        "          # plus 2 non-trainable, 128 parameters, 199.789 KiB.",
    ]


def test_print_big_numbers_and_status_notes():
    text = str(Chain(Dense(784, 2048, relu), Dense(2048, 10)))
    assert "# 1_607_680 parameters" in text and "# 20_490 parameters" in text
    assert text.endswith("# Total: 4 arrays, 1_628_170 parameters, 6.211 MiB.")
    d = Dense(2, 2)
    d.weight[0, 0] = np.nan
    assert str(d).endswith("(some NaN)")
    d.weight[0, 0] = np.inf
    assert str(d).endswith("(some Inf)")


def test_initialisers():
    w = glorot_uniform(3, 4, rng=np.random.default_rng(0))
    assert w.shape == (3, 4) and w.dtype == np.float32
    assert np.abs(w).max() <= np.sqrt(6 / 7)
    assert zeros32(2).dtype == np.float32 and ones32(1, 2).shape == (1, 2)
