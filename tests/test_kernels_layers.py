"""Oracle and property tests for the Dense and BatchNorm forward kernels.

References are computed in float64 with NumPy.  Kernel outputs are compared with
``RTOL[dtype]``; where a result is a sum (gemm, batch statistics) an absolute term of the same
relative size times the magnitude of the summands is added, since near-zero results of a
cancelling sum have no relative accuracy in any summation order.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluxtree._kernels import _batchnorm, _dense
from fluxtree._kernels._batchnorm import batchnorm_forward
from fluxtree._kernels._dense import act_scalar, dense_forward
from tests.helpers import GELU_K, act_ref

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
ACTS = list(range(9))
NAMES = ["identity", "relu", "tanh", "sigmoid", "softplus", "gelu", "elu", "leakyrelu", "swish"]






def _close(actual, desired, rtol, atol=0.0):
    np.testing.assert_allclose(np.asarray(actual, np.float64), desired, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- activations


@pytest.mark.parametrize("code", ACTS, ids=NAMES)
def test_act_scalar_matches_reference(code):
    z = np.concatenate([np.linspace(-30, 30, 601), [-1e-8, 1e-8, 0.0, -700.0, 700.0]])
    ref = act_ref(code, z)
    got = np.array([act_scalar(code, v) for v in z])
    _close(got, ref, 1e-12, 1e-300)
    z32 = z.astype(np.float32).astype(np.float64)
    got32 = np.array([act_scalar(code, v, single=True) for v in z32])
    _close(got32, act_ref(code, z32), 1e-6, 1e-37)


def test_gelu_is_the_tanh_formula():
    z = np.linspace(-3, 3, 301)
    flux = 0.5 * z * (1.0 + np.tanh(GELU_K * (z + 0.044715 * z**3)))
    _close([act_scalar(5, v) for v in z], flux, 1e-12, 1e-15)


@pytest.mark.parametrize("code", ACTS, ids=NAMES)
def test_act_derivative_matches_central_difference(code):
    z = np.array([-5.0, -1.3, -0.4, 0.2, 0.9, 2.5, 7.0])
    h = 1e-6
    fd = (act_ref(code, z + h) - act_ref(code, z - h)) / (2 * h)
    got = np.array([act_scalar(code, v, derivative=True) for v in z])
    _close(got, fd, 1e-7, 1e-9)
    got32 = np.array([act_scalar(code, v, derivative=True, single=True) for v in z])
    _close(got32, fd, 1e-5, 1e-7)


@pytest.mark.parametrize("code", [2, 3, 4, 5, 6, 8], ids=lambda c: NAMES[c])
def test_act_limits_and_nan(code):
    x = np.array([[np.inf, -np.inf, np.nan, 1e30, -1e30]])
    for dt in DTYPES:
        out = np.empty((1, 1), dt)
        for v in x[0]:
            dense_forward(np.ones((1, 1), dt), np.full((1, 1), v, dt), None, code, out)
            with np.errstate(all="ignore"):
                ref = act_ref(code, np.array(v)) if np.isfinite(v) or code != 5 else None
            if np.isnan(v):
                assert np.isnan(out[0, 0])
            elif ref is not None and np.isfinite(ref):
                _close(out[0, 0], ref, RTOL[dt], 1e-37)


# ----------------------------------------------------------------------------- dense

DENSE_SHAPES = [(1, 1, 1), (1, 5, 3), (4, 1, 3), (3, 4, 1), (7, 5, 9), (2, 9, 4), (32, 64, 64)]


def _dense_inputs(rng, dtype, B, nin, nout, bias=True):
    x = rng.standard_normal((B, nin)).astype(dtype)
    W = (rng.standard_normal((nout, nin)) / np.sqrt(nin)).astype(dtype)
    b = rng.standard_normal(nout).astype(dtype) if bias else None
    return x, W, b


def _check_dense(x, W, b, code, nthreads=0):
    dtype = x.dtype.type
    R = RTOL[dtype]
    B, nout = x.shape[0], W.shape[0]
    x64, W64 = x.astype(np.float64), W.astype(np.float64)
    b64 = np.zeros(nout) if b is None else b.astype(np.float64)
    zref = x64 @ W64.T + b64
    bound = np.abs(x64) @ np.abs(W64).T + np.abs(b64)          # |summands|
    out = np.full((B, nout), np.nan, dtype)
    pre = np.full((B, nout), np.nan, dtype)
    dense_forward(x, W, b, code, out, pre, nthreads=nthreads)
    assert np.all(np.abs(pre - zref) <= 4 * R * bound + 1e-300)
    _close(out, act_ref(code, pre.astype(np.float64)), R, 1e-37)
    out2 = np.full((B, nout), np.nan, dtype)
    dense_forward(x, W, b, code, out2, nthreads=nthreads)
    _close(out2, out.astype(np.float64), R, 1e-37)             # same z, other loop
    yref = act_ref(code, zref)
    assert np.all(np.abs(out2 - yref) <= R * np.abs(yref) + 5 * R * bound + 1e-37)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("code", ACTS, ids=NAMES)
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_dense_oracle_grid(dtype, code, shape, bias):
    rng = np.random.default_rng(hash((code, shape, bias)) % 2**32)
    x, W, b = _dense_inputs(rng, dtype, *shape, bias=bias)
    _check_dense(x, W, b, code)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("code", [0, 2, 5])
def test_dense_parallel_epilogue_matches_serial(dtype, code):
    rng = np.random.default_rng(7)
    B, nin, nout = 256, 16, 300                        # > PARALLEL_MIN_BYTES of output
    assert B * nout * np.dtype(dtype).itemsize > _dense.PARALLEL_MIN_BYTES
    x, W, b = _dense_inputs(rng, dtype, B, nin, nout)
    outs = []
    for nt in (1, 2, 3):
        out, pre = np.empty((B, nout), dtype), np.empty((B, nout), dtype)
        dense_forward(x, W, b, code, out, pre, nthreads=nt)
        outs.append((out, pre))
    for out, pre in outs[1:]:
        np.testing.assert_array_equal(out, outs[0][0])
        np.testing.assert_array_equal(pre, outs[0][1])
    _check_dense(x, W, b, code, nthreads=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_dense_empty_dimensions(dtype):
    x = np.empty((3, 0), dtype)
    W = np.empty((2, 0), dtype)
    b = np.array([0.5, -1.0], dtype)
    out = np.full((3, 2), np.nan, dtype)
    pre = np.full((3, 2), np.nan, dtype)
    dense_forward(x, W, b, 1, out, pre)
    np.testing.assert_array_equal(pre, np.tile(b, (3, 1)))
    np.testing.assert_array_equal(out, np.tile([0.5, 0.0], (3, 1)).astype(dtype))
    dense_forward(np.empty((0, 4), dtype), np.ones((2, 4), dtype), b, 2, np.empty((0, 2), dtype))


def test_dense_rejects_other_dtypes():
    a = np.ones((2, 2), np.int64)
    with pytest.raises(TypeError, match="float32 or float64"):
        dense_forward(a, a, None, 0, a)


@given(
    st.integers(1, 12), st.integers(1, 12), st.integers(1, 12),
    st.sampled_from(DTYPES), st.sampled_from(ACTS), st.booleans(), st.integers(0, 2**32 - 1),
)
def test_dense_property(B, nin, nout, dtype, code, bias, seed):
    rng = np.random.default_rng(seed)
    x, W, b = _dense_inputs(rng, dtype, B, nin, nout, bias=bias)
    x *= dtype(3.0)
    _check_dense(x, W, b, code)


# ----------------------------------------------------------------------------- batchnorm


def bn_ref(x, gamma, beta, rm, rv, eps, momentum, training, code):
    """float64 reference on (B, C, S): (y, new rm, new rv, mean used, invstd used)."""
    x = x.astype(np.float64)
    B, C, S = x.shape
    m = B * S
    if training or rm is None:
        mean = x.mean(axis=(0, 2))
        var = ((x - mean[None, :, None]) ** 2).mean(axis=(0, 2))
    else:
        mean, var = rm.astype(np.float64), rv.astype(np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean[None, :, None]) * invstd[None, :, None]
    g = np.ones(C) if gamma is None else gamma.astype(np.float64)
    bt = np.zeros(C) if beta is None else beta.astype(np.float64)
    z = g[None, :, None] * xhat + bt[None, :, None]
    new_rm = new_rv = None
    if rm is not None:
        new_rm, new_rv = rm.astype(np.float64), rv.astype(np.float64)
        if training:
            new_rm = (1 - momentum) * new_rm + momentum * mean
            new_rv = (1 - momentum) * new_rv + momentum * (m / (m - 1)) * var
    return act_ref(code, z), z, new_rm, new_rv, mean, invstd


def _bn_inputs(rng, dtype, shape, affine, track, param_dtype=None):
    pdt = param_dtype or dtype
    C = shape[1]
    x = (rng.standard_normal(shape) * 2.0 + rng.standard_normal((1, C, 1))).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, C).astype(pdt) if affine else None
    beta = rng.standard_normal(C).astype(pdt) if affine else None
    rm = rng.standard_normal(C).astype(pdt) if track else None
    rv = rng.uniform(0.5, 2.0, C).astype(pdt) if track else None
    return x, gamma, beta, rm, rv


def _check_bn(x, gamma, beta, rm, rv, training, code, eps=1e-5, momentum=0.1, nthreads=0):
    dtype = x.dtype.type
    R = RTOL[dtype]
    C = x.shape[1]
    y_ref, z_ref, rm_ref, rv_ref, mean_ref, invstd_ref = bn_ref(
        x, gamma, beta, rm, rv, eps, momentum, training, code)
    out = np.full_like(x, np.nan)
    mean_out, invstd_out = np.full(C, np.nan), np.full(C, np.nan)
    rm_k = None if rm is None else rm.copy()
    rv_k = None if rv is None else rv.copy()
    batchnorm_forward(x, gamma, beta, rm_k, rv_k, eps, momentum, training, code, out,
                      mean_out, invstd_out, nthreads=nthreads)
    scale = np.max(np.abs(x.astype(np.float64)), initial=0.0)
    _close(mean_out, mean_ref, 1e-12, 1e-12 * scale)
    _close(invstd_out, invstd_ref, 1e-12 if dtype is np.float64 or training else R)
    # |error| of the normalization is relative to |x - mean| + |mean| in units of the scale
    mag = (np.abs(x) + np.abs(mean_ref)[None, :, None]) * invstd_ref[None, :, None]
    if gamma is not None:
        mag = mag * np.abs(gamma.astype(np.float64))[None, :, None] \
            + np.abs(beta.astype(np.float64))[None, :, None]
    assert np.all(np.abs(out - y_ref) <= R * np.abs(y_ref) + 4 * R * mag + 1e-37)
    if rm is not None:
        _close(rm_k, rm_ref, RTOL[rm.dtype.type], 1e-12)
        _close(rv_k, rv_ref, RTOL[rv.dtype.type])
    # without the optional outputs the result is the same
    out2 = np.full_like(x, np.nan)
    rm_k2 = None if rm is None else rm.copy()
    rv_k2 = None if rv is None else rv.copy()
    batchnorm_forward(x, gamma, beta, rm_k2, rv_k2, eps, momentum, training, code, out2,
                      nthreads=nthreads)
    np.testing.assert_array_equal(out2, out)
    return out


BN_SHAPES = [(3, 2, 1), (4, 3, 5), (2, 1, 1), (1, 4, 7), (6, 5, 1), (5, 3, 2), (32, 64, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("code", ACTS, ids=NAMES)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "test"])
def test_batchnorm_oracle_grid(dtype, code, shape, training):
    rng = np.random.default_rng(hash((code, shape, training)) % 2**32)
    for affine, track in [(True, True), (False, True), (True, False), (False, False)]:
        _check_bn(*_bn_inputs(rng, dtype, shape, affine, track), training, code)


def test_batchnorm_hand_computed():
    x = np.array([[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]]).T.copy()[:, :, None]   # 3 samples, 2 ch
    rm, rv = np.zeros(2), np.ones(2)
    out = np.empty_like(x)
    mean_out, invstd_out = np.empty(2), np.empty(2)
    batchnorm_forward(x, None, None, rm, rv, 1e-5, 0.1, True, 0, out, mean_out, invstd_out)
    np.testing.assert_allclose(out[:, :, 0], [[-1.22474, -1.22474], [0, 0], [1.22474, 1.22474]],
                               atol=1e-5)
    np.testing.assert_allclose(rm, [0.3, 0.4], rtol=1e-14)
    np.testing.assert_allclose(rv, [1.3, 1.3], rtol=1e-14)
    np.testing.assert_allclose(mean_out, [3.0, 4.0], rtol=1e-15)
    np.testing.assert_allclose(invstd_out, 1 / np.sqrt(8 / 3 + 1e-5), rtol=1e-15)
    batchnorm_forward(x, None, None, rm, rv, 1e-5, 0.1, False, 0, out, mean_out, invstd_out)
    assert out[0, 0, 0] == pytest.approx(0.613938, abs=1e-6)
    assert out[0, 0, 0] == pytest.approx((1 - 0.3) / np.sqrt(1.3 + 1e-5), rel=1e-14)
    np.testing.assert_allclose(mean_out, [0.3, 0.4], rtol=1e-15)
    np.testing.assert_allclose(rm, [0.3, 0.4], rtol=1e-14)          # test mode: no update


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_batchnorm_test_mode_without_running_stats_uses_batch_stats(dtype):
    rng = np.random.default_rng(3)
    x, gamma, beta, _, _ = _bn_inputs(rng, dtype, (5, 4, 3), True, False)
    a = _check_bn(x, gamma, beta, None, None, False, 2)
    b = _check_bn(x, gamma, beta, None, None, True, 2)
    np.testing.assert_array_equal(a, b)


def test_batchnorm_float32_data_float64_parameters():
    rng = np.random.default_rng(4)
    x, gamma, beta, rm, rv = _bn_inputs(rng, np.float32, (6, 3, 4), True, True, np.float64)
    _check_bn(x, gamma, beta, rm, rv, True, 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("shape", [(64, 1100, 1), (8, 16, 600)], ids=["rows", "channels"])
def test_batchnorm_parallel_matches_serial(dtype, shape):
    assert np.prod(shape) > _batchnorm.PARALLEL_MIN_ELEMENTS
    rng = np.random.default_rng(5)
    x, gamma, beta, rm, rv = _bn_inputs(rng, dtype, shape, True, True)
    results = []
    for nt in (1, 2, 3):
        out = np.empty_like(x)
        rm_k, rv_k, mo = rm.copy(), rv.copy(), np.empty(shape[1])
        batchnorm_forward(x, gamma, beta, rm_k, rv_k, 1e-5, 0.1, True, 8, out, mo, nthreads=nt)
        results.append((out, rm_k, rv_k, mo))
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            np.testing.assert_array_equal(a, b)
    _check_bn(x, gamma, beta, rm, rv, True, 8, nthreads=2)


def test_batchnorm_numerically_sound_with_large_offset():
    rng = np.random.default_rng(6)
    base = rng.standard_normal((50, 2, 3))
    for dtype in DTYPES:
        x = (base + 1e4).astype(dtype)
        mo, io = np.empty(2), np.empty(2)
        batchnorm_forward(x, None, None, None, None, 1e-5, 0.1, True, 0, np.empty_like(x), mo, io)
        var = x.astype(np.float64).var(axis=(0, 2))
        _close(1 / io**2 - 1e-5, var, 1e-10)


def test_batchnorm_rejects_other_dtypes():
    a = np.ones((2, 2, 1), np.int32)
    with pytest.raises(TypeError, match="float32 or float64"):
        batchnorm_forward(a, None, None, None, None, 1e-5, 0.1, True, 0, a)


@given(
    st.integers(1, 6), st.integers(1, 5), st.integers(1, 6), st.sampled_from(DTYPES),
    st.sampled_from(ACTS), st.booleans(), st.booleans(), st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_batchnorm_property(B, C, S, dtype, code, affine, track, training, seed):
    if training and B * S < 2:
        B = 2
    rng = np.random.default_rng(seed)
    _check_bn(*_bn_inputs(rng, dtype, (B, C, S), affine, track), training, code)
