"""Oracle tests for the BatchNorm derivative kernels (backward, tangent, tangent-backward).

The reference evaluates the formulas in float64 with NumPy, per channel over the m = N * L
values (s = 1/sqrt(var + eps), xh = (x - mean) s, u = gamma xh + beta, g = act'(u) dy):

* backward: dx = s (dxh - mean(dxh) - xh mean(dxh xh)) with dxh = gamma g (batch statistics),
  dx = s dxh (running statistics); dgamma = sum g xh, dbeta = sum g;
* tangent: txh = s (tx - mean(tx) - xh mean(xh tx)) (batch) or s tx, ty = act'(u) tu with
  tu = tgamma xh + gamma txh + tbeta;
* tangent-backward (the R-operator of backward), written as in the derivation rather than in
  the kernels' per-channel coefficients, so that the two forms check each other.

Kernel results are compared with ``RTOL[dtype]`` relative to the largest reference value of
the array, since the outputs are cancelling sums.  Finite-difference checks of the formulas
themselves are in test_batchnorm_rules.py.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluxtree._kernels import _batchnorm
from fluxtree._kernels._batchnorm import (
    batchnorm_backward,
    batchnorm_forward,
    batchnorm_tangent,
    batchnorm_tangent_backward,
)
from tests.helpers import GELU_C, GELU_K, act_ref, sigmoid_ref

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 2e-5, np.float64: 1e-12}
ACTS = list(range(9))
NAMES = ["identity", "relu", "tanh", "sigmoid", "softplus", "gelu", "elu", "leakyrelu", "swish"]
SHAPES = [(7, 3, 1), (5, 2, 6), (6, 1, 4), (40, 1, 1), (3, 300, 1), (2, 3, 600)]






def dact_ref(code, z):
    """(act'(z), act''(z)) in float64."""
    one, zero = np.ones_like(z), np.zeros_like(z)
    if code == 1:
        return np.where(z > 0, 1.0, 0.0), zero
    if code == 2:
        t = np.tanh(z)
        return 1 - t * t, -2 * t * (1 - t * t)
    if code in (3, 4):
        s = sigmoid_ref(z)
        return (s * (1 - s), s * (1 - s) * (1 - 2 * s)) if code == 3 else (s, s * (1 - s))
    if code == 5:
        w = 2 * GELU_K * (1 + 3 * GELU_C * z * z)
        s = sigmoid_ref(2 * GELU_K * (z + GELU_C * z**3))
        d1 = s + z * s * (1 - s) * w
        d2 = s * (1 - s) * (2 * w + z * (1 - 2 * s) * w * w + 12 * GELU_K * GELU_C * z * z)
        return d1, d2
    if code == 6:
        e = np.exp(np.minimum(z, 0.0))
        return np.where(z > 0, 1.0, e), np.where(z > 0, 0.0, e)
    if code == 7:
        return np.where(z > 0, 1.0, 0.01), zero
    if code == 8:
        s = sigmoid_ref(z)
        return s + z * s * (1 - s), s * (1 - s) * (2 + z * (1 - 2 * s))
    return one, zero


def _ch(a):
    """A per-channel (..., C) array broadcast against (..., N, C, L)."""
    return a[..., None, :, None]


def _mean(a):
    """The per-channel mean of (..., N, C, L) over N and L, kept broadcastable."""
    return a.mean(axis=(-3, -1), keepdims=True)


def reference(x, mean, invstd, gamma, beta, code, batch, dy=None, tx=None, tg=None, tb=None,
              tdy=None):
    """(dx, dgamma, dbeta), ty, (rdx, rdgamma, rdbeta) for blocks (k, N, C, L) / (k, C), and
    the size of the largest term summed into dx and into rdx (they cancel to a small result
    for small batches)."""
    x = x.astype(np.float64)
    C = x.shape[1]
    s = _ch(invstd)
    gam = _ch(np.ones(C) if gamma is None else gamma.astype(np.float64))
    bet = _ch(np.zeros(C) if beta is None else beta.astype(np.float64))
    xh = (x - _ch(mean)) * s
    u = gam * xh + bet
    a1, a2 = dact_ref(code, u)
    f64 = [None if a is None else a.astype(np.float64) for a in (dy, tx, tg, tb, tdy)]
    dy, tx, tg, tb, tdy = f64
    k = next(a.shape[0] for a in (tx, tg, tb, tdy, dy) if a is not None)
    dy = np.zeros((1,) + x.shape) if dy is None else dy
    tx = np.zeros((k,) + x.shape) if tx is None else tx
    tg = np.zeros((k, 1, C, 1)) if tg is None else _ch(tg)
    tb = np.zeros((k, 1, C, 1)) if tb is None else _ch(tb)
    tdy = np.zeros((k,) + x.shape) if tdy is None else tdy
    g = dy * a1
    dxh = gam * g
    if batch:
        dx = s * (dxh - _mean(dxh) - xh * _mean(dxh * xh))
        mxt = _mean(xh * tx)
        txh = s * (tx - _mean(tx) - xh * mxt)
        rs = -s * mxt                                        # (d s) / s
    else:
        dx, txh, rs = s * dxh, s * tx, 0.0
    tu = tg * xh + gam * txh + tb
    ty = a1 * tu
    rg = tdy * a1 + dy * a2 * tu
    rdxh = tg * g + gam * rg
    if batch:
        rdx = rs * dx + s * (rdxh - _mean(rdxh) - txh * _mean(dxh * xh)
                             - xh * _mean(rdxh * xh + dxh * txh))
    else:
        rdx = s * rdxh
    per_c = (0, 2) if g.ndim == 3 else (1, 3)
    sums = (dx, (g * xh).sum(axis=per_c), g.sum(axis=per_c))
    rsums = (rdx, (rg * xh + g * txh).sum(axis=per_c), rg.sum(axis=per_c))
    terms = (np.max(np.abs(s * dxh)), max(np.max(np.abs(s * rdxh)), np.max(np.abs(s * dxh * txh)),
                                          np.max(np.abs(rs * dx))))
    return sums, ty, rsums, terms


def _close(actual, ref, dtype, what, terms=0.0):
    ref = np.asarray(ref, np.float64)
    scale = max(np.max(np.abs(ref), initial=0.0), terms, 1e-300)
    err = np.max(np.abs(np.asarray(actual, np.float64) - ref), initial=0.0) / scale
    assert err <= RTOL[dtype], f"{what}: relative error {err:.3g}"


def _inputs(rng, dtype, shape, affine, k):
    C = shape[1]
    x = (rng.standard_normal(shape) * 1.5 + rng.standard_normal((1, C, 1))).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype) if affine else None
    beta = (0.5 * rng.standard_normal(C)).astype(dtype) if affine else None
    blocks = [rng.standard_normal((k,) + shape).astype(dtype) for _ in range(3)]
    dy = rng.standard_normal((1,) + shape).astype(dtype)
    tg = rng.standard_normal((k, C)) if affine else None
    tb = rng.standard_normal((k, C)) if affine else None
    return x, gamma, beta, dy, blocks[0], tg, tb, blocks[1]


def _stats(x, gamma, beta, code, training, rng):
    """mean and invstd as the forward kernel leaves them (batch or running statistics)."""
    C = x.shape[1]
    rm = rng.standard_normal(C)
    rv = rng.uniform(0.5, 2.0, C)
    mean, invstd = np.empty(C), np.empty(C)
    batchnorm_forward(x, gamma, beta, None if training else rm, None if training else rv,
                      1e-5, 0.1, training, code, np.empty_like(x), mean, invstd)
    return mean, invstd


def _run_all(x, mean, invstd, gamma, beta, code, batch, dy, tx, tg, tb, tdy):
    k = next(a.shape[0] for a in (tx, tg, tb, tdy) if a is not None)
    C = x.shape[1]
    dx = np.full((1,) + x.shape, np.nan, x.dtype)
    dg, db = np.full((1, C), np.nan), np.full((1, C), np.nan)
    batchnorm_backward(x, dy, mean, invstd, gamma, beta, code, batch, dx, dg, db)
    ty = np.full((k,) + x.shape, np.nan, x.dtype)
    tstats = np.full((2, k, C), np.nan)
    batchnorm_tangent(x, mean, invstd, gamma, beta, code, batch, tx, tg, tb, ty, tstats)
    rdx = np.full((k,) + x.shape, np.nan, x.dtype)
    rdg, rdb = np.full((k, C), np.nan), np.full((k, C), np.nan)
    batchnorm_tangent_backward(x, dy[0], mean, invstd, gamma, beta, code, batch, tx, tg, tb,
                               tdy, rdx, rdg, rdb, tstats)
    return (dx, dg, db), ty, (rdx, rdg, rdb), tstats


def _check(x, mean, invstd, gamma, beta, code, batch, dy, tx, tg, tb, tdy):
    dtype = x.dtype.type
    got = _run_all(x, mean, invstd, gamma, beta, code, batch, dy, tx, tg, tb, tdy)
    ref = reference(x, mean, invstd, gamma, beta, code, batch, dy, tx, tg, tb, tdy)
    for name, a, b, t in zip(("dx", "dgamma", "dbeta"), got[0], ref[0], (ref[3][0], 0, 0)):
        _close(a, b, dtype, name, t)
    _close(got[1], ref[1], dtype, "ty")
    for name, a, b, t in zip(("rdx", "rdgamma", "rdbeta"), got[2], ref[2], (ref[3][1], 0, 0)):
        _close(a, b, dtype, name, t)
    return got


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("code", ACTS, ids=NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "test"])
def test_kernels_match_reference(dtype, code, shape, training):
    rng = np.random.default_rng(hash((code, shape, training)) % 2**32)
    for affine in (True, False):
        for k in (1, 3):
            x, gamma, beta, dy, tx, tg, tb, tdy = _inputs(rng, dtype, shape, affine, k)
            mean, invstd = _stats(x, gamma, beta, code, training, rng)
            _check(x, mean, invstd, gamma, beta, code, training, dy, tx, tg, tb, tdy)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_batch_statistics_in_test_mode(dtype):
    """track_stats=False in test mode: batch statistics, so the training formulas."""
    rng = np.random.default_rng(1)
    x, gamma, beta, dy, tx, tg, tb, tdy = _inputs(rng, dtype, (6, 3, 2), True, 2)
    mean, invstd = np.empty(3), np.empty(3)
    batchnorm_forward(x, gamma, beta, None, None, 1e-5, 0.1, False, 3, np.empty_like(x),
                      mean, invstd)
    _check(x, mean, invstd, gamma, beta, 3, True, dy, tx, tg, tb, tdy)


@pytest.mark.parametrize("training", [True, False], ids=["train", "test"])
@pytest.mark.parametrize("absent", ["tx", "tgamma", "tbeta", "tdy", "params"])
def test_absent_tangents_are_zero(training, absent):
    rng = np.random.default_rng(2)
    x, gamma, beta, dy, tx, tg, tb, tdy = _inputs(rng, np.float64, (5, 3, 4), True, 2)
    mean, invstd = _stats(x, gamma, beta, 8, training, rng)
    full = {"tx": tx, "tg": tg, "tb": tb, "tdy": tdy}
    zero = {k: np.zeros_like(v) for k, v in full.items()}
    names = {"tgamma": ["tg"], "tbeta": ["tb"], "params": ["tg", "tb"]}.get(absent, [absent])
    given_ = dict(full, **{n: None for n in names})
    zeros = dict(full, **{n: zero[n] for n in names})
    a = _check(x, mean, invstd, gamma, beta, 8, training, dy, **given_)
    b = _run_all(x, mean, invstd, gamma, beta, 8, training, dy, **zeros)
    np.testing.assert_array_equal(a[1], b[1])
    for u, v in zip(a[2], b[2]):
        np.testing.assert_allclose(u, v, rtol=1e-13, atol=1e-13 * np.max(np.abs(v)))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("training", [True, False], ids=["train", "test"])
def test_gauss_newton_is_backward_of_tdy(dtype, training):
    """dy None: the R-operator without second-order terms, i.e. backward applied to tdy."""
    rng = np.random.default_rng(3)
    x, gamma, beta, _, tx, tg, tb, tdy = _inputs(rng, dtype, (6, 4, 3), True, 3)
    mean, invstd = _stats(x, gamma, beta, 2, training, rng)
    rdx, rdg, rdb = np.empty_like(tdy), np.empty((3, 4)), np.empty((3, 4))
    batchnorm_tangent_backward(x, None, mean, invstd, gamma, beta, 2, training, tx, tg, tb, tdy,
                               rdx, rdg, rdb)
    dx, dg, db = np.empty_like(tdy), np.empty((3, 4)), np.empty((3, 4))
    batchnorm_backward(x, tdy, mean, invstd, gamma, beta, 2, training, dx, dg, db)
    for a, b in ((rdx, dx), (rdg, dg), (rdb, db)):
        np.testing.assert_array_equal(a, b)
    ref = reference(x, mean, invstd, gamma, beta, 2, training, None, tx, tg, tb, tdy)
    for name, a, b in zip(("rdx", "rdgamma", "rdbeta"), (rdx, rdg, rdb), ref[2]):
        _close(a, b, dtype, name, ref[3][1])
    # neither dy nor tdy: zero
    batchnorm_tangent_backward(x, None, mean, invstd, gamma, beta, 2, training, tx, tg, tb, None,
                               rdx, rdg, None)
    assert not rdx.any() and not rdg.any()


def test_blocks_equal_separate_calls():
    """Each of the K blocks gives exactly what a call with that block alone gives."""
    rng = np.random.default_rng(4)
    x, gamma, beta, dy, tx, tg, tb, tdy = _inputs(rng, np.float32, (9, 5, 3), True, 3)
    mean, invstd = _stats(x, gamma, beta, 5, True, rng)
    whole = _run_all(x, mean, invstd, gamma, beta, 5, True, dy, tx, tg, tb, tdy)
    for i in range(3):
        one = _run_all(x, mean, invstd, gamma, beta, 5, True, dy, tx[i:i + 1], tg[i:i + 1],
                       tb[i:i + 1], tdy[i:i + 1])
        np.testing.assert_array_equal(one[1][0], whole[1][i])
        for u, v in zip(one[2], whole[2]):
            np.testing.assert_array_equal(u[0], v[i])
    bw = np.empty_like(tdy)
    batchnorm_backward(x, tdy, mean, invstd, gamma, beta, 5, True, bw)
    for i in range(3):
        b1 = np.empty_like(tdy[:1])
        batchnorm_backward(x, tdy[i:i + 1], mean, invstd, gamma, beta, 5, True, b1)
        np.testing.assert_array_equal(b1[0], bw[i])


@pytest.mark.parametrize("training", [True, False], ids=["train", "test"])
def test_tangent_statistics_are_optional(training):
    rng = np.random.default_rng(5)
    x, gamma, beta, dy, tx, tg, tb, tdy = _inputs(rng, np.float64, (7, 3, 5), True, 2)
    mean, invstd = _stats(x, gamma, beta, 6, training, rng)
    with_stats = _run_all(x, mean, invstd, gamma, beta, 6, training, dy, tx, tg, tb, tdy)
    ts = with_stats[3]
    xh = (x - mean[:, None]) * invstd[:, None]
    if training:
        np.testing.assert_allclose(ts[0], tx.mean(axis=(1, 3)), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(ts[1], (tx * xh).mean(axis=(1, 3)), rtol=1e-12, atol=1e-15)
    else:
        assert not ts.any()
    rdx, rdg, rdb = np.empty_like(tx), np.empty((2, 3)), np.empty((2, 3))
    batchnorm_tangent_backward(x, dy[0], mean, invstd, gamma, beta, 6, training, tx, tg, tb,
                               tdy, rdx, rdg, rdb)
    for a, b in zip((rdx, rdg, rdb), with_stats[2]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("training", [True, False], ids=["train", "test"])
def test_outputs_may_be_left_out(training):
    rng = np.random.default_rng(6)
    x, gamma, beta, dy, tx, tg, tb, tdy = _inputs(rng, np.float64, (6, 4, 2), True, 2)
    mean, invstd = _stats(x, gamma, beta, 4, training, rng)
    full = _run_all(x, mean, invstd, gamma, beta, 4, training, dy, tx, tg, tb, tdy)
    dx = np.empty_like(dy)
    batchnorm_backward(x, dy, mean, invstd, gamma, beta, 4, training, dx)
    np.testing.assert_array_equal(dx, full[0][0])
    dg = np.empty((1, 4))
    batchnorm_backward(x, dy, mean, invstd, gamma, beta, 4, training, None, dg)
    np.testing.assert_array_equal(dg, full[0][1])
    rdb = np.empty((2, 4))
    batchnorm_tangent_backward(x, dy[0], mean, invstd, gamma, beta, 4, training, tx, tg, tb,
                               tdy, None, None, rdb)
    np.testing.assert_array_equal(rdb, full[2][2])
    batchnorm_tangent_backward(x, dy[0], mean, invstd, gamma, beta, 4, training, tx, tg, tb,
                               tdy, None)               # nothing wanted: nothing done


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("shape", [(64, 1100, 1), (8, 16, 600)], ids=["rows", "channels"])
def test_parallel_matches_serial(dtype, shape):
    rng = np.random.default_rng(7)
    x, gamma, beta, dy, tx, tg, tb, tdy = _inputs(rng, dtype, shape, True, 2)
    assert tx.size > _batchnorm.GRAD_PARALLEL_MIN_ELEMENTS
    mean, invstd = _stats(x, gamma, beta, 3, True, rng)
    results = []
    for nt in (1, 2, 3):
        dx, dg, db = np.empty_like(dy), np.empty((1, shape[1])), np.empty((1, shape[1]))
        batchnorm_backward(x, dy, mean, invstd, gamma, beta, 3, True, dx, dg, db, nthreads=nt)
        ty, ts = np.empty_like(tx), np.empty((2, 2, shape[1]))
        batchnorm_tangent(x, mean, invstd, gamma, beta, 3, True, tx, tg, tb, ty, ts,
                          nthreads=nt)
        rdx, rdg, rdb = np.empty_like(tx), np.empty((2, shape[1])), np.empty((2, shape[1]))
        batchnorm_tangent_backward(x, dy[0], mean, invstd, gamma, beta, 3, True, tx, tg, tb,
                                   tdy, rdx, rdg, rdb, nthreads=nt)
        results.append((dx, dg, db, ty, ts, rdx, rdg, rdb))
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            np.testing.assert_array_equal(a, b)
    ref = reference(x, mean, invstd, gamma, beta, 3, True, dy, tx, tg, tb, tdy)
    _close(results[1][0], ref[0][0], dtype, "dx", ref[3][0])
    _close(results[1][5], ref[2][0], dtype, "rdx", ref[3][1])


def test_large_offset():
    """Values far from zero: xh is formed as (x - mean) s, without cancellation."""
    rng = np.random.default_rng(8)
    x, gamma, beta, dy, tx, tg, tb, tdy = _inputs(rng, np.float64, (50, 2, 3), True, 1)
    x = x + 1e6
    mean, invstd = _stats(x, gamma, beta, 2, True, rng)
    _check(x, mean, invstd, gamma, beta, 2, True, dy, tx, tg, tb, tdy)


def test_empty_batch_in_test_mode():
    x = np.empty((0, 3, 2))
    mean, invstd = np.zeros(3), np.ones(3)
    dx, dg, db = np.empty((1, 0, 3, 2)), np.empty((1, 3)), np.empty((1, 3))
    batchnorm_backward(x, np.empty((1, 0, 3, 2)), mean, invstd, None, None, 0, True, dx, dg, db)
    assert not dg.any() and not db.any()
    rdg = np.full((2, 3), np.nan)
    batchnorm_tangent_backward(x, np.empty((0, 3, 2)), mean, invstd, None, None, 0, True,
                               np.empty((2, 0, 3, 2)), None, None, None, None, rdg)
    assert not rdg.any()


def test_rejects_other_dtypes():
    a = np.ones((2, 2, 1), np.int32)
    with pytest.raises(TypeError, match="float32 or float64, got int32"):
        batchnorm_backward(a, a[None], np.zeros(2), np.ones(2), None, None, 0, True, None)
    with pytest.raises(TypeError, match="float32 or float64, got int32"):
        batchnorm_tangent(a, np.zeros(2), np.ones(2), None, None, 0, True, None, None, None,
                          a[None])


@pytest.mark.parametrize("code", ACTS, ids=NAMES)
def test_reference_derivatives(code):
    """The reference's act' and act'' against central differences of act."""
    z = np.array([-4.0, -1.3, -0.4, 0.2, 0.9, 2.5, 6.0])
    h = 1e-5
    d1, d2 = dact_ref(code, z)
    np.testing.assert_allclose(d1, (act_ref(code, z + h) - act_ref(code, z - h)) / (2 * h),
                               rtol=1e-8, atol=1e-10)
    d1p, d1m = dact_ref(code, z + h)[0], dact_ref(code, z - h)[0]
    np.testing.assert_allclose(d2, (d1p - d1m) / (2 * h), rtol=1e-7, atol=1e-9)


@given(
    st.integers(2, 7), st.integers(1, 5), st.integers(1, 6), st.integers(1, 4),
    st.sampled_from(DTYPES), st.sampled_from(ACTS), st.booleans(), st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_property(N, C, L, k, dtype, code, affine, training, seed):
    rng = np.random.default_rng(seed)
    x, gamma, beta, dy, tx, tg, tb, tdy = _inputs(rng, dtype, (N, C, L), affine, k)
    mean, invstd = _stats(x, gamma, beta, code, training, rng)
    _check(x, mean, invstd, gamma, beta, code, training, dy, tx, tg, tb, tdy)
