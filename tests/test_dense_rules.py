"""Dense's op rules (forward, backward, tangent, tangent_backward) called directly.

Derivatives are checked against central differences of the rules themselves in float64:
backward against the forward pass, tangent against the forward pass, tangent_backward
against the backward pass (the R-operator), each with a relative error (norm-wise) of at
most 1e-6.  Inputs are drawn so that no pre-activation lies within 0.05 of relu's and elu's
kinks.
"""

import numpy as np
import pytest

from fluxtree import _tracing
from fluxtree.nn import (
    Dense,
    elu,
    gelu,
    identity,
    leakyrelu,
    relu,
    sigmoid,
    softplus,
    swish,
    tanh,
)

ACTS = [identity, relu, tanh, sigmoid, softplus, gelu, elu, leakyrelu, swish]
BATCHES = [(), (5,), (2, 3)]
H = 1e-5
ALL = (True, True, True)


def _layer(rng, act, batch, nin=3, nout=4, bias=True, dtype=np.float64):
    W = rng.standard_normal((nout, nin)) / np.sqrt(nin)
    b = 0.5 * rng.standard_normal(nout) if bias else None
    while True:
        x = rng.standard_normal((*batch, nin))
        z = x @ W.T + (0 if b is None else b)
        if np.abs(z).min() > 0.05:
            break
    layer = Dense(W.astype(dtype), False if b is None else b.astype(dtype), act)
    return layer, x.astype(dtype)


def _inputs(layer, x):
    return (x, layer.weight, None if layer.bias is False else layer.bias)


def _shift(inputs, ts, h):
    return tuple(None if a is None else a + h * (0 if t is None else t)
                 for a, t in zip(inputs, ts))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def _tangents(rng, inputs, k):
    return tuple(None if a is None else rng.standard_normal((k, *a.shape)) for a in inputs)


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("act", ACTS, ids=str)
@pytest.mark.parametrize("batch", BATCHES, ids=str)
def test_forward_matches_call(act, batch):
    rng = np.random.default_rng(0)
    layer, x = _layer(rng, act, batch)
    y, _ = layer.forward(_inputs(layer, x))
    assert y.shape == (*batch, 4)
    np.testing.assert_allclose(y, layer(x), rtol=1e-14, atol=1e-15)


def test_forward_leaves_out_an_activation_without_kernel_code():
    rng = np.random.default_rng(1)
    layer, x = _layer(rng, np.sin, (3,))
    y, saved = layer.forward(_inputs(layer, x))
    np.testing.assert_allclose(y, x @ layer.weight.T + layer.bias, rtol=1e-14)
    np.testing.assert_allclose(np.sin(y), layer(x), rtol=1e-14)
    dx, _, _ = layer.backward(saved, np.ones_like(y), ALL)     # identity rules
    np.testing.assert_allclose(dx, np.ones((3, 4)) @ layer.weight, rtol=1e-14)


def test_forward_validates_the_input():
    layer = Dense(np.ones((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="expects an input with 3 features on its last axis, "
                                         r"got shape \(4, 2\)"):
        layer.forward((np.ones((4, 2)), layer.weight, layer.bias))
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        layer.forward((np.float64(1.0), layer.weight, layer.bias))
    with pytest.raises(TypeError, match="expects a numeric array, got dtype <U1"):
        layer.forward((np.array(["a", "b", "c"]), layer.weight, layer.bias))


def test_forward_converts_integer_input():
    layer = Dense(np.ones((2, 3), np.float32), np.zeros(2, np.float32))
    y, _ = layer.forward((np.array([[1, 2, 3]]), layer.weight, layer.bias))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[6, 6]])


# ----------------------------------------------------------------------------- backward


def _fd_gradient(layer, inputs, C):
    """Central-difference gradient of sum(forward(inputs) * C) for every input."""
    def loss(inp):
        return float(np.sum(layer.forward(inp)[0] * C))
    grads = []
    for i, a in enumerate(inputs):
        if a is None:
            grads.append(None)
            continue
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            e = np.zeros_like(a)
            e[idx] = H
            plus = tuple(e + v if j == i else v for j, v in enumerate(inputs))
            minus = tuple(v - e if j == i else v for j, v in enumerate(inputs))
            g[idx] = (loss(plus) - loss(minus)) / (2 * H)
        grads.append(g)
    return grads


@pytest.mark.parametrize("act", ACTS, ids=str)
@pytest.mark.parametrize("batch", BATCHES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_backward_matches_finite_differences(act, batch, bias):
    rng = np.random.default_rng(2)
    layer, x = _layer(rng, act, batch, bias=bias)
    inputs = _inputs(layer, x)
    y, saved = layer.forward(inputs)
    C = rng.standard_normal(y.shape)
    grads = layer.backward(saved, C, ALL)
    assert grads[0].shape == x.shape
    for g, fd in zip(grads, _fd_gradient(layer, inputs, C)):
        if fd is None:
            assert g is None
        else:
            assert _rel(g, fd) <= 1e-6


@pytest.mark.parametrize("act", [identity, tanh, swish], ids=str)
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False),
                                   (False, False, True), (False, False, False),
                                   (True, True, False)], ids=str)
def test_backward_honours_needs(act, needs):
    rng = np.random.default_rng(3)
    layer, x = _layer(rng, act, (6,))
    inputs = _inputs(layer, x)
    y, saved = layer.forward(inputs)
    C = rng.standard_normal(y.shape)
    full = layer.backward(saved, C, ALL)
    part = layer.backward(layer.forward(inputs)[1], C, needs)
    for want, f, p in zip(needs, full, part):
        if want:
            np.testing.assert_array_equal(p, f)
        else:
            assert p is None


def test_spec_worked_numbers():
    """SPEC Part B 3.8 test 7, batch first: x = I (2 samples), loss sum(y)."""
    layer = Dense(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), np.array([0.1, 0.2, 0.3]),
                  tanh)
    y, saved = layer.forward((np.eye(2), layer.weight, layer.bias))
    np.testing.assert_allclose(y.T, [[0.80050, 0.97045], [0.99668, 0.99955],
                                     [0.99995, 0.99999]], atol=5e-6)
    dx, dW, db = layer.backward(saved, np.ones_like(y), ALL)
    np.testing.assert_allclose(db, [0.41742, 0.0075233, 0.00011315], rtol=5e-5)
    np.testing.assert_allclose(dW, [[0.35920, 0.058223], [0.0066242, 0.00089906],
                                    [9.9659e-5, 1.3488e-5]], rtol=5e-5)
    np.testing.assert_allclose(dx.T, [[0.37957, 0.060988], [0.74550, 0.12012]], rtol=5e-5)


# ----------------------------------------------------------------------------- tangent


@pytest.mark.parametrize("act", ACTS, ids=str)
@pytest.mark.parametrize("batch", BATCHES, ids=str)
@pytest.mark.parametrize("k", [1, 3])
def test_tangent_matches_finite_differences(act, batch, k):
    rng = np.random.default_rng(4)
    layer, x = _layer(rng, act, batch)
    inputs = _inputs(layer, x)
    _, saved = layer.forward(inputs)
    ts = _tangents(rng, inputs, k)
    ty = layer.tangent(saved, ts)
    assert ty.shape == (k, *batch, 4)
    for j in range(k):
        tj = [t[j] for t in ts]
        fd = (layer.forward(_shift(inputs, tj, H))[0]
              - layer.forward(_shift(inputs, tj, -H))[0]) / (2 * H)
        assert _rel(ty[j], fd) <= 1e-6


@pytest.mark.parametrize("which", [(0,), (1,), (2,), (0, 2)], ids=str)
def test_tangent_partial_inputs(which):
    rng = np.random.default_rng(5)
    layer, x = _layer(rng, gelu, (4,))
    inputs = _inputs(layer, x)
    _, saved = layer.forward(inputs)
    ts = tuple(t if i in which else None for i, t in enumerate(_tangents(rng, inputs, 2)))
    ty = layer.tangent(saved, ts)
    for j in range(2):
        tj = [None if t is None else t[j] for t in ts]
        fd = (layer.forward(_shift(inputs, tj, H))[0]
              - layer.forward(_shift(inputs, tj, -H))[0]) / (2 * H)
        assert _rel(ty[j], fd) <= 1e-6


def test_tangent_without_tangents_is_none():
    rng = np.random.default_rng(6)
    layer, x = _layer(rng, tanh, (3,), bias=False)
    inputs = _inputs(layer, x)
    _, saved = layer.forward(inputs)
    assert layer.tangent(saved, (None, None, None)) is None
    assert layer.tangent(saved, (None, None, np.ones((2, 4)))) is None    # no bias
    assert layer.tangent_backward(saved, (None, None, None), np.ones((3, 4)), None,
                                  ALL) == (None, None, None)


# ----------------------------------------------------------------------------- tangent-backward


def _fd_backward(layer, inputs, ts, C, tdy, j, needs=ALL):
    """Central difference of backward along tangent j (inputs and adjoint moved together)."""
    tj = [None if t is None else t[j] for t in ts]
    outs = []
    for h in (H, -H):
        inp = _shift(inputs, tj, h)
        _, saved = layer.forward(inp)
        d = (0 if C is None else C) + (0 if tdy is None else h * tdy[j])
        outs.append(layer.backward(saved, np.broadcast_to(d, layer.forward(inp)[0].shape)
                                   .copy(), needs))
    return [None if p is None else (p - m) / (2 * H) for p, m in zip(*outs)]


def _hvp_sweep(layer, inputs, ts, C, tdy, needs=ALL):
    """forward, tangent, backward, tangent_backward: the tape's order in an HVP sweep."""
    _, saved = layer.forward(inputs)
    layer.tangent(saved, ts)
    if C is not None:
        layer.backward(saved, C, needs)
    return layer.tangent_backward(saved, ts, C, tdy, needs)


@pytest.mark.parametrize("act", ACTS, ids=str)
@pytest.mark.parametrize("batch", BATCHES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_tangent_backward_matches_finite_differences(act, batch, bias):
    rng = np.random.default_rng(7)
    k = 2
    layer, x = _layer(rng, act, batch, bias=bias)
    inputs = _inputs(layer, x)
    ts = _tangents(rng, inputs, k)
    C = rng.standard_normal((*batch, 4))
    tdy = rng.standard_normal((k, *batch, 4))
    got = _hvp_sweep(layer, inputs, ts, C, tdy)
    assert got[0].shape == (k, *x.shape)
    for j in range(k):
        for g, fd in zip(got, _fd_backward(layer, inputs, ts, C, tdy, j)):
            if fd is None:
                assert g is None
            else:
                assert _rel(g[j], fd) <= 1e-6


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_gauss_newton_product(act):
    """d_out None: backward is not called; the result is J^T t_d_out (J at the point)."""
    rng = np.random.default_rng(8)
    k = 3
    layer, x = _layer(rng, act, (5,))
    inputs = _inputs(layer, x)
    ts = _tangents(rng, inputs, k)
    tdy = rng.standard_normal((k, 5, 4))
    _, saved = layer.forward(inputs)
    layer.tangent(saved, ts)
    got = layer.tangent_backward(saved, ts, None, tdy, ALL)
    for j in range(k):
        ref = layer.backward(layer.forward(inputs)[1], tdy[j], ALL)
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g[j], r, rtol=1e-12, atol=1e-14)
        for g, fd in zip(got, _fd_backward(layer, inputs, ts, None, tdy, j)):
            assert _rel(g[j], fd) <= 1e-6


@pytest.mark.parametrize("act", [identity, tanh, gelu, relu], ids=str)
def test_tangent_backward_without_t_d_out(act):
    rng = np.random.default_rng(9)
    layer, x = _layer(rng, act, (4,))
    inputs = _inputs(layer, x)
    ts = _tangents(rng, inputs, 2)
    C = rng.standard_normal((4, 4))
    got = _hvp_sweep(layer, inputs, ts, C, None)
    for j in range(2):
        for g, fd in zip(got, _fd_backward(layer, inputs, ts, C, None, j)):
            assert _rel(g[j], fd) <= 1e-6


@pytest.mark.parametrize("act", [tanh, swish], ids=str)
def test_tangent_backward_recomputes_what_it_was_not_given(act):
    """Without the preceding backward/tangent, or with other tangents or another d_out than
    those calls saw, tangent_backward computes delta and tz itself."""
    rng = np.random.default_rng(10)
    layer, x = _layer(rng, act, (4,))
    inputs = _inputs(layer, x)
    ts, other = _tangents(rng, inputs, 2), _tangents(rng, inputs, 2)
    C, C2 = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    tdy = rng.standard_normal((2, 4, 4))
    ref = _hvp_sweep(layer, inputs, ts, C, tdy)
    _, fresh = layer.forward(inputs)
    stale = layer.forward(inputs)[1]
    layer.tangent(stale, other)
    layer.backward(stale, C2, ALL)
    for saved in (fresh, stale, stale):      # the second time, the tz it kept is used up
        got = layer.tangent_backward(saved, ts, C, tdy, ALL)
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("act", [tanh, gelu], ids=str)
def test_tangent_backward_twice_after_one_tangent(act):
    """A second reverse sweep over the same forward and tangent passes (e.g. a Gauss-Newton
    product after a Hessian-vector product) gives the same result as a fresh one."""
    rng = np.random.default_rng(15)
    layer, x = _layer(rng, act, (4,))
    inputs = _inputs(layer, x)
    ts = _tangents(rng, inputs, 2)
    C = rng.standard_normal((4, 4))
    tdy = rng.standard_normal((2, 4, 4))
    _, saved = layer.forward(inputs)
    layer.tangent(saved, ts)
    layer.backward(saved, C, ALL)
    first = layer.tangent_backward(saved, ts, C, tdy, ALL)
    again = layer.tangent_backward(saved, ts, C, tdy, ALL)
    gn = layer.tangent_backward(saved, ts, None, tdy, ALL)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    _, fresh = layer.forward(inputs)
    for a, b in zip(gn, layer.tangent_backward(fresh, ts, None, tdy, ALL)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False),
                                   (False, False, True), (False, True, True)], ids=str)
def test_tangent_backward_honours_needs(needs):
    rng = np.random.default_rng(11)
    layer, x = _layer(rng, sigmoid, (2, 3))
    inputs = _inputs(layer, x)
    ts = _tangents(rng, inputs, 2)
    C = rng.standard_normal((2, 3, 4))
    tdy = rng.standard_normal((2, 2, 3, 4))
    full = _hvp_sweep(layer, inputs, ts, C, tdy)
    part = _hvp_sweep(layer, inputs, ts, C, tdy, needs)
    for want, f, p in zip(needs, full, part):
        if want:
            np.testing.assert_array_equal(p, f)
        else:
            assert p is None


# ----------------------------------------------------------------------------- other dtypes


def _all_rules(layer, x, rng, k=2):
    inputs = _inputs(layer, x)
    ts = tuple(None if a is None else rng.standard_normal((k, *a.shape)).astype(a.dtype)
               for a in inputs)
    y, saved = layer.forward(inputs)
    ty = layer.tangent(saved, ts)
    C = rng.standard_normal(y.shape).astype(y.dtype)
    tdy = rng.standard_normal((k, *y.shape)).astype(y.dtype)
    grads = layer.backward(saved, C, ALL)
    tgrads = layer.tangent_backward(saved, ts, C, tdy, ALL)
    gn = layer.tangent_backward(layer.forward(inputs)[1], ts, None, tdy, ALL)
    return [y, ty, *grads, *tgrads, *gn]


@pytest.mark.parametrize("act", [identity, tanh, sigmoid, gelu, swish], ids=str)
def test_numpy_path_complex_matches_kernels(act):
    """complex128 parameters take the NumPy path; with real values it must agree with the
    float64 kernels (holomorphic activations only)."""
    rng = np.random.default_rng(12)
    layer, x = _layer(rng, act, (5,))
    clayer = Dense(layer.weight.astype(complex), layer.bias.astype(complex), act)
    ref = _all_rules(layer, x, np.random.default_rng(13))
    got = _all_rules(clayer, x.astype(complex), np.random.default_rng(13))
    for g, r in zip(got, ref):
        assert g.dtype == np.complex128
        np.testing.assert_allclose(g.real, r, rtol=1e-12, atol=1e-13)
        np.testing.assert_array_equal(g.imag, 0)


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_numpy_path_float16_matches_kernels(act):
    rng = np.random.default_rng(14)
    layer, x = _layer(rng, act, (5,))
    hlayer = Dense(layer.weight.astype(np.float16), layer.bias.astype(np.float16), act)
    ref = _all_rules(layer, x, np.random.default_rng(15))
    got = _all_rules(hlayer, x.astype(np.float16), np.random.default_rng(15))
    for g, r in zip(got, ref):
        assert g.dtype == np.float16
        np.testing.assert_allclose(g.astype(np.float64), r, rtol=0.03, atol=0.03 * np.abs(r).max())


def test_numpy_path_bias_of_another_dtype():
    """float32 weight with a float64 bias: y is float64 (as __call__), gradients take each
    input's dtype."""
    rng = np.random.default_rng(16)
    layer, x = _layer(rng, tanh, (5,))
    mixed = Dense(layer.weight.astype(np.float32), layer.bias, tanh)
    ref = _all_rules(layer, x, np.random.default_rng(17))
    got = _all_rules(mixed, x.astype(np.float32), np.random.default_rng(17))
    assert got[0].dtype == np.float64
    np.testing.assert_allclose(got[0], mixed(x.astype(np.float32)), rtol=1e-6)
    assert [g.dtype for g in got[2:5]] == [np.float32, np.float32, np.float64]
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * np.abs(r).max())


def test_float32_and_strided_weights_use_the_kernels():
    rng = np.random.default_rng(18)
    layer, x = _layer(rng, softplus, (2, 3))
    ref = _all_rules(layer, x, np.random.default_rng(19))
    f32 = Dense(layer.weight.astype(np.float32), layer.bias.astype(np.float32), softplus)
    got = _all_rules(f32, x.astype(np.float32), np.random.default_rng(19))
    for g, r in zip(got, ref):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-5 * np.abs(r).max())
    wide = np.zeros((4, 6))
    wide[:, ::2] = layer.weight
    strided = Dense(wide[:, ::2], layer.bias, softplus)
    got = _all_rules(strided, x, np.random.default_rng(19))
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-13, atol=1e-14)


# ----------------------------------------------------------------------------- recording


class _Value(_tracing.Traced):
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


@pytest.fixture
def recorder(monkeypatch):
    calls = []

    def record(op, inputs):
        calls.append((op, inputs))
        plain = tuple(v.value if isinstance(v, _Value) else v for v in inputs)
        return op.forward(plain)[0]

    monkeypatch.setattr(_tracing, "_recorder", record)
    return calls


def test_call_records_traced_inputs(recorder):
    layer = Dense(np.ones((2, 3)), False, tanh)
    x = _Value(np.ones((4, 3)))
    y = layer(x)
    assert len(recorder) == 1
    op, inputs = recorder[0]
    assert op is layer and inputs[0] is x and inputs[1] is layer.weight and inputs[2] is None
    np.testing.assert_allclose(y, np.tanh(np.full((4, 2), 3.0)))
    w = _Value(layer.weight)
    layer.weight = w
    layer(np.ones((4, 3)))
    assert recorder[-1][1][1] is w


def test_call_applies_a_non_kernel_activation_after_recording(recorder):
    layer = Dense(np.ones((2, 3)), np.zeros(2), np.sin)
    y = layer(_Value(np.ones((1, 3))))
    assert len(recorder) == 1
    np.testing.assert_allclose(y, np.sin(np.full((1, 2), 3.0)))
