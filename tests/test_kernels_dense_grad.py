"""Oracle tests for the Dense derivative kernels: backward, tangent, tangent-backward, act_eval.

References are computed in float64 with NumPy from the kernels' own inputs (z and y as the
forward kernel produced them), with the same derivative formulas: the kernels read y for
the activations in which that is cheaper (tanh' = 1 - y^2, ...), z for gelu and swish.  That
those formulas are the derivatives is checked separately, against accurate z-based
references and central differences.  Results that are sums (gemm, column sums) get an
absolute tolerance of ``RTOL`` times the largest magnitude of the result.
"""

import numpy as np
import pytest

from fluxtree._kernels._dense import (
    D2_CODES,
    PRE_CODES,
    act_eval,
    act_scalar,
    dense_backward,
    dense_forward,
    dense_tangent,
    dense_tangent_backward,
)
from tests.helpers import GELU_C, GELU_K, act_ref, sigmoid_ref

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
ACTS = list(range(9))
NAMES = ["identity", "relu", "tanh", "sigmoid", "softplus", "gelu", "elu", "leakyrelu", "swish"]
SHAPES = [(1, 1, 1), (1, 5, 3), (4, 1, 3), (3, 4, 1), (7, 5, 9), (2, 3, 300)]






def deriv_z(code, z, order):
    """act'(z) or act''(z) from z alone, in float64 (the independent reference)."""
    z = np.asarray(z, np.float64)
    if code in (1, 7):
        return np.where(z > 0, 1.0, 0.0 if code == 1 else 0.01) if order == 1 else 0 * z
    if code == 2:
        t = np.tanh(z)
        return 1 - t * t if order == 1 else -2 * t * (1 - t * t)
    if code in (3, 4):
        s = sigmoid_ref(z)
        if code == 4:
            return s if order == 1 else s * sigmoid_ref(-z)
        return s * sigmoid_ref(-z) if order == 1 else s * sigmoid_ref(-z) * (1 - 2 * s)
    if code == 5:
        t = 2 * GELU_K * (z + GELU_C * z**3)
        s, q = sigmoid_ref(t), sigmoid_ref(-t)
        w = 2 * GELU_K * (1 + 3 * GELU_C * z * z)
        if order == 1:
            return s + z * s * q * w
        return s * q * (2 * w + z * (q - s) * w * w + 12 * GELU_K * GELU_C * z * z)
    if code == 6:
        e = np.exp(np.minimum(z, 0.0))
        return np.where(z > 0, 1.0 if order == 1 else 0.0, e)
    if code == 8:
        s, q = sigmoid_ref(z), sigmoid_ref(-z)
        return s * (1 + z * q) if order == 1 else s * q * (2 + z * (q - s))
    return np.full_like(z, 1.0 if order == 1 else 0.0)


def deriv_zy(code, z, y, order):
    """The kernels' formulas in float64: from y, except gelu and swish (from z)."""
    z = np.asarray(z, np.float64)
    y = np.asarray(y, np.float64)
    if code in (5, 8) or code == 0:
        return deriv_z(code, z, order)
    if code in (1, 7):
        return np.where(y > 0, 1.0, 0.0 if code == 1 else 0.01) if order == 1 else 0 * y
    if code == 2:
        return 1 - y * y if order == 1 else -2 * y * (1 - y * y)
    if code == 3:
        return y * (1 - y) if order == 1 else y * (1 - y) * (1 - 2 * y)
    if code == 4:
        s = -np.expm1(-y)
        return s if order == 1 else s * np.exp(-y)
    return np.where(y > 0, 1.0 if order == 1 else 0.0, y + 1)       # elu


def _close(actual, desired, rtol, scale=None):
    desired = np.asarray(desired, np.float64)
    atol = rtol * (np.abs(desired).max(initial=0.0) if scale is None else scale)
    np.testing.assert_allclose(np.asarray(actual, np.float64), desired, rtol=rtol, atol=atol)


def _layer(rng, dtype, code, B, nin, nout):
    """x, W, z, y of one forward pass (z a separate array for every code)."""
    x = rng.standard_normal((B, nin)).astype(dtype)
    W = (rng.standard_normal((nout, nin)) / np.sqrt(max(nin, 1))).astype(dtype)
    b = (0.5 * rng.standard_normal(nout)).astype(dtype)
    y = np.empty((B, nout), dtype)
    z = np.empty((B, nout), dtype)
    dense_forward(x, W, b, code, y, z)
    return x, W, z, y


def _f64(*arrays):
    return [None if a is None else np.asarray(a, np.float64) for a in arrays]


# ----------------------------------------------------------------------------- constants


def test_code_sets():
    assert PRE_CODES == frozenset({5, 8})
    assert D2_CODES == frozenset({2, 3, 4, 5, 6, 8})


# ----------------------------------------------------------------------------- backward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", ACTS, ids=NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_matches_reference(dtype, code, shape):
    rng = np.random.default_rng(1)
    B, nin, nout = shape
    x, W, z, y = _layer(rng, dtype, code, B, nin, nout)
    dy = rng.standard_normal((B, nout)).astype(dtype)
    delta, dx, dW, db = (np.empty((B, nout), dtype), np.empty((B, nin), dtype),
                         np.empty((nout, nin), dtype), np.empty(nout, dtype))
    dense_backward(x, W, z, y, dy, code, delta, dx, dW, db)
    x64, W64, z64, y64, dy64 = _f64(x, W, z, y, dy)
    d = dy64 * deriv_zy(code, z64, y64, 1)
    rtol = RTOL[dtype]
    _close(delta, d, rtol)
    _close(dx, d @ W64, rtol)
    _close(dW, d.T @ x64, rtol)
    _close(db, d.sum(0), rtol)


@pytest.mark.parametrize("code", ACTS, ids=NAMES)
def test_backward_reads_y_where_it_can(code):
    """For the codes outside PRE_CODES, z may be y itself (the layer keeps no z then)."""
    rng = np.random.default_rng(2)
    x, W, z, y = _layer(rng, np.float64, code, 6, 4, 5)
    dy = rng.standard_normal(y.shape)
    outs = []
    for zz in (z, y):
        delta, dx, dW, db = np.empty_like(dy), np.empty_like(x), np.empty_like(W), np.empty(5)
        dense_backward(x, W, zz, y, dy, code, delta, dx, dW, db)
        outs.append((delta, dx, dW, db))
    if code not in PRE_CODES:
        for a, b in zip(*outs):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", ACTS, ids=NAMES)
@pytest.mark.parametrize("which", ["dx", "dW", "db", "none", "dW+db"])
def test_backward_optional_outputs(dtype, code, which):
    rng = np.random.default_rng(3)
    x, W, z, y = _layer(rng, dtype, code, 5, 4, 3)
    dy = rng.standard_normal(y.shape).astype(dtype)
    full = [np.empty((5, 3), dtype), np.empty((5, 4), dtype), np.empty((3, 4), dtype),
            np.empty(3, dtype)]
    dense_backward(x, W, z, y, dy, code, *full)
    part = [np.empty((5, 3), dtype)] + [
        a.copy() if name in which else None for name, a in zip(("dx", "dW", "db"), full[1:])]
    dense_backward(x, W, z, y, dy, code, *part)
    for a, b in zip(full, part):
        if b is not None:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", ACTS, ids=NAMES)
def test_backward_in_place_delta(dtype, code):
    rng = np.random.default_rng(4)
    x, W, z, y = _layer(rng, dtype, code, 6, 3, 7)
    dy = rng.standard_normal(y.shape).astype(dtype)
    ref = [np.empty((6, 7), dtype), np.empty((6, 3), dtype), np.empty((7, 3), dtype),
           np.empty(7, dtype)]
    dense_backward(x, W, z, y, dy, code, *ref)
    g = dy.copy()
    dx, dW, db = np.empty((6, 3), dtype), np.empty((7, 3), dtype), np.empty(7, dtype)
    dense_backward(x, W, z, y, g, code, g, dx, dW, db)
    for a, b in zip(ref, (g, dx, dW, db)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 3, 2), (4, 0, 2), (4, 3, 0)], ids=str)
def test_backward_empty_dimensions(dtype, shape):
    """An empty batch gives zero dW and db, no output features a zero dx (no BLAS call with
    a zero dimension)."""
    B, nin, nout = shape
    x, W = np.ones((B, nin), dtype), np.ones((nout, nin), dtype)
    y = np.full((B, nout), 0.5, dtype)
    dy = np.ones((B, nout), dtype)
    delta = np.empty_like(dy)
    dx = np.full((B, nin), np.nan, dtype)
    dW = np.full((nout, nin), np.nan, dtype)
    db = np.full(nout, np.nan, dtype)
    dense_backward(x, W, y, y, dy, 2, delta, dx, dW, db)
    np.testing.assert_array_equal(dx, 0)
    np.testing.assert_array_equal(dW, 0)
    np.testing.assert_array_equal(db, B * 0.75)      # tanh' = 1 - y^2


def test_backward_rejects_other_dtypes():
    a = np.ones((2, 2), np.int64)
    with pytest.raises(TypeError, match="float32 or float64, got int64"):
        dense_backward(a, a, a, a, a, 0, a, None, None, None)


# ----------------------------------------------------------------------------- tangent

TANGENT_SETS = ["x", "W", "b", "xW", "xb", "Wb", "xWb"]


def ref_tangent(code, x, W, z, y, tx, tW, tb, k):
    x, W, z, y, tx, tW, tb = _f64(x, W, z, y, tx, tW, tb)
    tz = np.zeros((k, x.shape[0], W.shape[0]))
    if tx is not None:
        tz += tx @ W.T
    if tW is not None:
        tz += x @ np.swapaxes(tW, 1, 2)
    if tb is not None:
        tz += tb[:, None, :]
    return tz, deriv_zy(code, z, y, 1) * tz


def _tangents(rng, dtype, which, k, B, nin, nout):
    tx = rng.standard_normal((k, B, nin)).astype(dtype) if "x" in which else None
    tW = rng.standard_normal((k, nout, nin)).astype(dtype) if "W" in which else None
    tb = rng.standard_normal((k, nout)).astype(dtype) if "b" in which else None
    return tx, tW, tb


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", ACTS, ids=NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("k", [1, 3])
def test_tangent_matches_reference(dtype, code, shape, k):
    rng = np.random.default_rng(5)
    B, nin, nout = shape
    x, W, z, y = _layer(rng, dtype, code, B, nin, nout)
    tx, tW, tb = _tangents(rng, dtype, "xWb", k, B, nin, nout)
    tz, ty = np.empty((k, B, nout), dtype), np.empty((k, B, nout), dtype)
    dense_tangent(x, W, z, y, code, tx, tW, tb, tz, ty)
    rtz, rty = ref_tangent(code, x, W, z, y, tx, tW, tb, k)
    _close(tz, rtz, RTOL[dtype])
    _close(ty, rty, RTOL[dtype], np.abs(rtz).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", [0, 2, 5], ids=lambda c: NAMES[c])
@pytest.mark.parametrize("which", TANGENT_SETS)
@pytest.mark.parametrize("k", [1, 3])
def test_tangent_partial_inputs(dtype, code, which, k):
    rng = np.random.default_rng(6)
    x, W, z, y = _layer(rng, dtype, code, 4, 3, 5)
    tx, tW, tb = _tangents(rng, dtype, which, k, 4, 3, 5)
    tz = np.full((k, 4, 5), np.nan, dtype)
    ty = np.full((k, 4, 5), np.nan, dtype)
    dense_tangent(x, W, z, y, code, tx, tW, tb, tz, ty)
    rtz, rty = ref_tangent(code, x, W, z, y, tx, tW, tb, k)
    _close(tz, rtz, RTOL[dtype])
    _close(ty, rty, RTOL[dtype], np.abs(rtz).max())
    tz2 = np.empty_like(tz)                       # ty None: tz only
    dense_tangent(x, W, z, y, code, tx, tW, tb, tz2, None)
    np.testing.assert_array_equal(tz2, tz)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", ACTS, ids=NAMES)
def test_tangent_in_place(dtype, code):
    """ty may be tz: tz then holds ty (what the layer does where act'' is zero)."""
    rng = np.random.default_rng(7)
    x, W, z, y = _layer(rng, dtype, code, 4, 3, 300)
    tx, tW, tb = _tangents(rng, dtype, "xWb", 2, 4, 3, 300)
    tz, ty = np.empty((2, 4, 300), dtype), np.empty((2, 4, 300), dtype)
    dense_tangent(x, W, z, y, code, tx, tW, tb, tz, ty)
    t = np.empty_like(tz)
    dense_tangent(x, W, z, y, code, tx, tW, tb, t, t)
    np.testing.assert_array_equal(t, ty)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tangent_empty_input_features(dtype):
    x, W = np.ones((3, 0), dtype), np.ones((2, 0), dtype)
    y = np.zeros((3, 2), dtype)
    tW = np.ones((2, 2, 0), dtype)
    tb = np.array([[1.0, 2.0], [3.0, 4.0]], dtype)
    tz, ty = np.full((2, 3, 2), np.nan, dtype), np.full((2, 3, 2), np.nan, dtype)
    dense_tangent(x, W, y, y, 2, None, tW, tb, tz, ty)
    np.testing.assert_array_equal(tz, np.broadcast_to(tb[:, None, :], (2, 3, 2)))
    np.testing.assert_array_equal(ty, tz)              # tanh'(0) = 1
    dense_tangent(x, W, y, y, 2, None, tW, None, tz, ty)
    np.testing.assert_array_equal(tz, 0)


# ----------------------------------------------------------------------------- tangent-backward


def ref_tangent_backward(code, x, W, z, y, dy, tx, tW, tz, tdy, k):
    x, W, z, y, dy, tx, tW, tz, tdy = _f64(x, W, z, y, dy, tx, tW, tz, tdy)
    r = np.zeros((k, x.shape[0], W.shape[0]))
    if tdy is not None:
        r += tdy * deriv_zy(code, z, y, 1)
    if dy is not None:
        r += dy * deriv_zy(code, z, y, 2) * tz
    delta = None if dy is None else dy * deriv_zy(code, z, y, 1)
    tdx = r @ W
    tdW = np.swapaxes(r, 1, 2) @ x
    if delta is not None and tW is not None:
        tdx += delta @ tW
    if delta is not None and tx is not None:
        tdW += delta.T @ tx
    return r, tdx, tdW, r.sum(1)


def _run_tangent_backward(rng, dtype, code, shape, k, with_dy, with_tdy, which):
    B, nin, nout = shape
    x, W, z, y = _layer(rng, dtype, code, B, nin, nout)
    tx, tW, tb = _tangents(rng, dtype, which, k, B, nin, nout)
    tz = np.empty((k, B, nout), dtype)
    dense_tangent(x, W, z, y, code, tx, tW, tb, tz, None)
    dy = rng.standard_normal((B, nout)).astype(dtype) if with_dy else None
    delta = None
    if dy is not None:
        delta = np.empty_like(dy)
        dense_backward(x, W, z, y, dy, code, delta, None, None, None)
    tdy = rng.standard_normal((k, B, nout)).astype(dtype) if with_tdy else None
    outs = (np.empty((k, B, nout), dtype), np.empty((k, B, nin), dtype),
            np.empty((k, nout, nin), dtype), np.empty((k, nout), dtype))
    dense_tangent_backward(x, W, z, y, code, delta, dy, tx, tW, tz, tdy, *outs)
    ref = ref_tangent_backward(code, x, W, z, y, dy, tx, tW, tz, tdy, k)
    return outs, ref, (x, W, z, y, delta, dy, tx, tW, tz, tdy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", ACTS, ids=NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("k", [1, 3])
def test_tangent_backward_matches_reference(dtype, code, shape, k):
    rng = np.random.default_rng(8)
    outs, ref, _ = _run_tangent_backward(rng, dtype, code, shape, k, True, True, "xWb")
    for a, r in zip(outs, ref):
        _close(a, r, RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", ACTS, ids=NAMES)
@pytest.mark.parametrize("with_dy,with_tdy", [(False, True), (True, False), (False, False)],
                         ids=["gauss-newton", "no-tdy", "zero"])
@pytest.mark.parametrize("which", ["x", "W", "xW", "b"])
def test_tangent_backward_missing_terms(dtype, code, with_dy, with_tdy, which):
    rng = np.random.default_rng(9)
    outs, ref, _ = _run_tangent_backward(rng, dtype, code, (5, 4, 3), 2, with_dy, with_tdy,
                                         which)
    for a, r in zip(outs, ref):
        _close(a, r, RTOL[dtype], max(np.abs(r).max(), 1.0))


@pytest.mark.parametrize("code", [2, 8], ids=lambda c: NAMES[c])
def test_tangent_backward_without_tz_drops_the_second_derivative_term(code):
    rng = np.random.default_rng(13)
    _, _, args = _run_tangent_backward(rng, np.float64, code, (5, 4, 3), 2, True, True, "xW")
    x, W, z, y, delta, dy, tx, tW, _, tdy = args
    outs = [np.empty((2, 5, 3)), np.empty((2, 5, 4)), np.empty((2, 3, 4)), np.empty((2, 3))]
    dense_tangent_backward(x, W, z, y, code, delta, dy, tx, tW, None, tdy, *outs)
    ref = ref_tangent_backward(code, x, W, z, y, dy, tx, tW, np.zeros((2, 5, 3)), tdy, 2)
    for a, r in zip(outs, ref):
        _close(a, r, 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", [0, 2, 8], ids=lambda c: NAMES[c])
def test_tangent_backward_optional_outputs(dtype, code):
    rng = np.random.default_rng(10)
    outs, _, args = _run_tangent_backward(rng, dtype, code, (5, 4, 3), 3, True, True, "xWb")
    for keep in range(3):
        part = [np.empty_like(outs[0])] + [o.copy() if i == keep else None
                                           for i, o in enumerate(outs[1:])]
        dense_tangent_backward(*args[:4], code, *args[4:], *part)
        np.testing.assert_array_equal(part[0], outs[0])
        np.testing.assert_array_equal(part[keep + 1], outs[keep + 1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_tangent_backward_identity_in_place(dtype):
    rng = np.random.default_rng(11)
    outs, _, args = _run_tangent_backward(rng, dtype, 0, (5, 4, 3), 2, True, True, "xWb")
    x, W, z, y, delta, dy, tx, tW, _, tdy = args
    tdy = tdy.copy()
    rest = (np.empty_like(outs[1]), np.empty_like(outs[2]), np.empty_like(outs[3]))
    dense_tangent_backward(x, W, z, y, 0, delta, dy, tx, tW, None, tdy, tdy, *rest)
    for a, b in zip(outs, (tdy, *rest)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", ACTS, ids=NAMES)
@pytest.mark.parametrize("with_tdy", [True, False])
def test_tangent_backward_rdelta_in_tz(dtype, code, with_tdy):
    rng = np.random.default_rng(12)
    outs, _, args = _run_tangent_backward(rng, dtype, code, (5, 4, 300), 2, True, with_tdy,
                                          "xWb")
    x, W, z, y, delta, dy, tx, tW, tz, tdy = args
    tz = tz.copy()
    rest = (np.empty_like(outs[1]), np.empty_like(outs[2]), np.empty_like(outs[3]))
    dense_tangent_backward(x, W, z, y, code, delta, dy, tx, tW, tz, tdy, tz, *rest)
    for a, b in zip(outs, (tz, *rest)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tangent_backward_empty_dimensions(dtype):
    for B, nin, nout in [(0, 3, 2), (4, 0, 2)]:
        x, W = np.ones((B, nin), dtype), np.ones((nout, nin), dtype)
        y, dy = np.ones((B, nout), dtype), np.ones((B, nout), dtype)
        tx, tW = np.ones((2, B, nin), dtype), np.ones((2, nout, nin), dtype)
        tdy = np.ones((2, B, nout), dtype)
        r = np.empty((2, B, nout), dtype)
        tdx = np.full((2, B, nin), np.nan, dtype)
        tdW = np.full((2, nout, nin), np.nan, dtype)
        tdb = np.full((2, nout), np.nan, dtype)
        dense_tangent_backward(x, W, y, y, 2, dy, dy, tx, tW, r, tdy, r, tdx, tdW, tdb)
        np.testing.assert_array_equal(tdx, 0)
        np.testing.assert_array_equal(tdW, 0)
        if B == 0:
            np.testing.assert_array_equal(tdb, 0)


# ----------------------------------------------------------------------------- activations


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("code", ACTS, ids=NAMES)
@pytest.mark.parametrize("order", [0, 1, 2])
def test_act_eval_matches_reference(dtype, code, order):
    z = np.linspace(-6, 6, 2 * 3 * 101).reshape(2, 3, 101).astype(dtype)
    z[np.abs(z) < 1e-3] = 0.25
    out = np.empty_like(z)
    act_eval(code, z, order, out)
    ref = act_ref(code, z) if order == 0 else deriv_z(code, z, order)
    rtol = {np.float32: 2e-5, np.float64: 1e-10}[dtype]   # y-based: saturation amplifies
    _close(out, ref, rtol, 1.0)
    inplace = z.copy()
    act_eval(code, inplace, order, inplace)
    np.testing.assert_array_equal(inplace, out)


@pytest.mark.parametrize("code", ACTS, ids=NAMES)
def test_second_derivative_matches_central_difference(code):
    z = np.array([-5.0, -1.3, -0.4, 0.2, 0.9, 2.5, 7.0])
    h = 1e-5
    fd = (deriv_z(code, z + h, 1) - deriv_z(code, z - h, 1)) / (2 * h)
    out = np.empty_like(z)
    act_eval(code, z, 2, out)
    _close(out, fd, 1e-8, 1.0)
    _close([act_scalar(code, v, order=2) for v in z], fd, 1e-8, 1.0)
    _close([act_scalar(code, v, order=2, single=True) for v in z.astype(np.float32)], fd, 1e-5,
           1.0)
    d1 = np.empty_like(z)
    act_eval(code, z, 1, d1)
    fd1 = (act_ref(code, z + h) - act_ref(code, z - h)) / (2 * h)
    _close(d1, fd1, 1e-8, 1.0)


@pytest.mark.parametrize("code", [2, 3, 4, 5, 6, 8], ids=lambda c: NAMES[c])
@pytest.mark.parametrize("dtype", DTYPES)
def test_derivatives_at_limits_and_nan(code, dtype):
    z = np.array([np.inf, -np.inf, 1e30, -1e30, 800.0, -800.0], dtype)
    for order in (1, 2):
        out = np.empty_like(z)
        act_eval(code, z, order, out)
        assert np.all(np.isfinite(out)), (order, out)
        lim = {1: {2: (0, 0), 3: (0, 0), 4: (1, 0), 5: (1, 0), 6: (1, 0), 8: (1, 0)},
               2: {c: (0, 0) for c in (2, 3, 4, 5, 6, 8)}}[order][code]
        np.testing.assert_allclose(out[[0, 2, 4]], lim[0], atol=1e-30)
        np.testing.assert_allclose(out[[1, 3, 5]], lim[1], atol=1e-30)
        nan = np.array([np.nan], dtype)
        act_eval(code, nan, order, nan)
        assert np.isnan(nan[0])


def test_act_eval_and_act_scalar_reject_bad_order():
    z = np.zeros(3)
    with pytest.raises(ValueError, match="order 0, 1 or 2, got 3"):
        act_eval(2, z, 3, z)
    with pytest.raises(ValueError, match="order 0, 1 or 2, got -1"):
        act_scalar(2, 0.0, order=-1)
    with pytest.raises(TypeError, match="float32 or float64, got int32"):
        act_eval(2, z, 0, np.zeros(3, np.int32))
