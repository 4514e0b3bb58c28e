"""BatchNorm's op rules (forward, backward, tangent, tangent_backward) against central
finite differences in float64, its running statistics under ``frozen_stats``, and SPEC Part B
§3.9 tests 8-10 (batch first) through the tape.

Finite differences use h = 1e-5; a rule passes when max |rule - fd| <= 1e-6 max |fd|.
"""
import numpy as np
import pytest

import fluxtree as ft
from fluxtree.nn import BatchNorm, PrecisionWarning
from fluxtree.nn.mode import frozen_stats

H = 1e-5
TOL = 1e-6
ACTS = [None, ft.relu, ft.tanh, ft.sigmoid, ft.softplus, ft.gelu, ft.elu, ft.leakyrelu,
        ft.swish, np.exp]                     # np.exp: no kernel code, applied after the op
ACT_IDS = ["identity", "relu", "tanh", "sigmoid", "softplus", "gelu", "elu", "leakyrelu",
           "swish", "np.exp"]
MODES = ["train", "test", "test-batch-stats"]
X_SPEC = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])     # 3 samples, 2 channels


def _rel(a, b):
    scale = np.max(np.abs(b))
    return np.max(np.abs(np.asarray(a) - b)) / scale if scale > 0 else np.max(np.abs(a))


def _layer(C, act, mode, affine, rng):
    bn = ft.f64(BatchNorm(C, act, affine=affine, track_stats=mode != "test-batch-stats"))
    if affine:
        bn.gamma[...] = rng.uniform(0.5, 1.5, C)
        bn.beta[...] = 0.5 * rng.standard_normal(C)
    if mode != "test-batch-stats":
        bn.running_mean[...] = rng.standard_normal(C)
        bn.running_var[...] = rng.uniform(0.5, 2.0, C)
    return ft.trainmode_(bn) if mode == "train" else ft.testmode_(bn)


def _point(bn, shape, rng):
    x = rng.standard_normal(shape) * 1.5 + rng.standard_normal((1, shape[1]) + (1,) * (len(shape) - 2))
    params = [x, bn.gamma, bn.beta]
    return [None if p is None else np.array(p, dtype=np.float64) for p in params]


def _forward(bn, p):
    with frozen_stats():
        return bn.forward(tuple(p))


def _shifted(p, t, h):
    return [None if a is None else a + h * d for a, d in zip(p, t)]


def _fd(f, p, t):
    """Central difference of f at p along t (lists, None entries fixed)."""
    return (np.asarray(f(_shifted(p, t, H))) - np.asarray(f(_shifted(p, t, -H)))) / (2 * H)


def _tangents(p, k, rng):
    return [None if a is None else rng.standard_normal((k,) + a.shape) for a in p]


def _blockwise(t, i):
    return [None if a is None else a[i] for a in t]


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape", [(6, 3), (4, 2, 3), (3, 1, 2, 2)], ids=str)
def test_rules_match_finite_differences(act, mode, affine, shape):
    rng = np.random.default_rng(abs(hash((str(act), mode, affine, shape))) % 2**32)
    bn = _layer(shape[1], act, mode, affine, rng)
    p = _point(bn, shape, rng)
    y, saved = _forward(bn, p)
    dy = rng.standard_normal(y.shape)
    needs = tuple(a is not None for a in p)

    # backward: the gradient of <dy, y>, one coordinate of each input at a time
    grads = bn.backward(saved, dy, needs)
    for i, a in enumerate(p):
        if a is None:
            assert grads[i] is None
            continue
        fd = np.empty(a.size)
        for j in range(a.size):
            e = [None if b is None else np.zeros_like(b) for b in p]
            e[i].flat[j] = 1.0
            fd[j] = _fd(lambda q: np.sum(dy * _forward(bn, q)[0]), p, e)
        assert grads[i].shape == a.shape
        assert _rel(grads[i].ravel(), fd) <= TOL

    # tangent: k = 2 directions in one block
    t = _tangents(p, 2, rng)
    ty = bn.tangent(saved, tuple(t))
    assert ty.shape == (2,) + y.shape
    for i in range(2):
        assert _rel(ty[i], _fd(lambda q: _forward(bn, q)[0], p, _blockwise(t, i))) <= TOL

    # tangent_backward: the tangent of backward along (t, tdy); also with d_out None
    tdy = rng.standard_normal((2,) + y.shape)
    for d_out in (dy, None):
        r = bn.tangent_backward(saved, tuple(t), d_out, tdy, needs)
        base = np.zeros_like(dy) if d_out is None else dy
        for i in range(2):
            def grad_at(q, i=i, base=base):
                s_q = _forward(bn, q[:3])[1]
                return np.concatenate([g.ravel() for g in bn.backward(s_q, q[3], needs)
                                       if g is not None])
            fd = _fd(grad_at, p + [base], _blockwise(t, i) + [tdy[i]])
            got = np.concatenate([g[i].ravel() for g in r if g is not None])
            assert _rel(got, fd) <= TOL


@pytest.mark.parametrize("mode", MODES)
def test_tangent_backward_without_a_prior_tangent_or_tdy(mode):
    """The statistics tangent() stashes are an optimisation: without them, the same result."""
    rng = np.random.default_rng(1)
    bn = _layer(3, ft.swish, mode, True, rng)
    p = _point(bn, (5, 3, 2), rng)
    y, saved = _forward(bn, p)
    dy = rng.standard_normal(y.shape)
    t = _tangents(p, 3, rng)
    tdy = rng.standard_normal((3,) + y.shape)
    fresh = bn.tangent_backward(saved, tuple(t), dy, tdy, (True, True, True))
    bn.tangent(saved, tuple(t))
    stashed = bn.tangent_backward(saved, tuple(t), dy, tdy, (True, True, True))
    for a, b in zip(fresh, stashed):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13 * np.max(np.abs(b)))
    # t_d_out None: only the inputs' tangents move the adjoint
    r = bn.tangent_backward(saved, tuple(t), dy, None, (True, False, True))
    assert r[1] is None
    for i in range(3):
        def grad_at(q):
            return bn.backward(_forward(bn, q)[1], dy, (True, False, True))
        fd = [_fd(lambda q, j=j: grad_at(q)[j], p, _blockwise(t, i)) for j in (0, 2)]
        assert _rel(r[0][i], fd[0]) <= TOL and _rel(r[2][i], fd[1]) <= TOL


def test_only_some_tangents_given():
    rng = np.random.default_rng(2)
    bn = _layer(2, ft.tanh, "train", True, rng)
    p = _point(bn, (6, 2), rng)
    y, saved = _forward(bn, p)
    dy = rng.standard_normal(y.shape)
    for present in ([0], [1], [2], [1, 2]):
        t = [rng.standard_normal((1,) + a.shape) if i in present else None
             for i, a in enumerate(p)]
        full = [np.zeros((1,) + a.shape) if b is None else b for a, b in zip(p, t)]
        ty = bn.tangent(saved, tuple(t))
        assert _rel(ty[0], _fd(lambda q: _forward(bn, q)[0], p, _blockwise(full, 0))) <= TOL
        r = bn.tangent_backward(saved, tuple(t), dy, None, (True, True, True))
        g = [_fd(lambda q, j=j: bn.backward(_forward(bn, q)[1], dy, (True, True, True))[j],
                 p, _blockwise(full, 0)) for j in range(3)]
        for a, b in zip(r, g):
            assert _rel(a[0], b) <= TOL
    # the adjoint's tangent alone (x not traced): a block of k from t_d_out
    tdy = rng.standard_normal((2,) + y.shape)
    r = bn.tangent_backward(saved, (None, None, None), dy, tdy, (False, True, True))
    assert r[0] is None and r[1].shape == (2, 2)
    for i in range(2):
        np.testing.assert_allclose(r[1][i], bn.backward(saved, tdy[i], (False, True, True))[1],
                                   rtol=1e-13)
    assert bn.tangent_backward(saved, tuple(t), dy, tdy, (False, False, False)) == (None,) * 3
    assert bn.backward(saved, dy, (False, False, False)) == (None,) * 3
    with pytest.raises(ValueError, match="at least one tangent block"):
        bn.tangent(saved, (None, None, None))


def test_running_statistics_follow_flux_and_freeze():
    rng = np.random.default_rng(3)
    bn = _layer(3, None, "train", True, rng)
    x = rng.standard_normal((5, 3, 4))
    rm0, rv0 = bn.running_mean.copy(), bn.running_var.copy()
    with frozen_stats():
        bn.forward((x, bn.gamma, bn.beta))
        bn(x)
        ft.hvp(lambda v: np.sum(bn(v) ** 2), x, np.ones_like(x))
    np.testing.assert_array_equal(bn.running_mean, rm0)
    np.testing.assert_array_equal(bn.running_var, rv0)
    m = 5 * 4
    mean, var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    y, saved = bn.forward((x, bn.gamma, bn.beta))
    np.testing.assert_allclose(bn.running_mean, 0.9 * rm0 + 0.1 * mean, rtol=1e-14)
    np.testing.assert_allclose(bn.running_var, 0.9 * rv0 + 0.1 * var * m / (m - 1), rtol=1e-14)
    np.testing.assert_allclose(saved.mean, mean, rtol=1e-14)
    np.testing.assert_allclose(saved.invstd, 1 / np.sqrt(var + 1e-5), rtol=1e-14)
    # frozen statistics still give the batch-statistics output
    with frozen_stats():
        np.testing.assert_array_equal(bn(x), y)
    # test mode reads the running statistics and never writes them
    ft.testmode_(bn)
    rm1 = bn.running_mean.copy()
    saved = bn.forward((x, bn.gamma, bn.beta))[1]
    np.testing.assert_array_equal(bn.running_mean, rm1)
    np.testing.assert_allclose(saved.mean, rm1, rtol=0)
    assert not saved.batch


def test_running_statistics_the_kernel_cannot_write():
    """float16 running statistics are updated with the same rule, in NumPy."""
    rng = np.random.default_rng(4)
    bn = ft.trainmode_(BatchNorm(2))
    bn.running_mean = np.zeros(2, np.float16)
    bn.running_var = np.ones(2, np.float16)
    x = rng.standard_normal((6, 2)).astype(np.float32)
    y = bn(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(axis=0), rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * x.var(axis=0) * 6 / 5, rtol=2e-3)
    assert bn.running_mean.dtype == np.float16


def _spec_loss(m, x):
    y = m(x)
    return y[0, 0] + 2 * y[2, 1]


def test_spec_gradient_in_training_mode():
    """SPEC §3.9 test 8, batch first: loss y[0, 0] + 2 y[2, 1]."""
    bn = ft.trainmode_(ft.f64(BatchNorm(2)))
    gm, gx = ft.gradient(_spec_loss, bn, X_SPEC)
    np.testing.assert_allclose(gm["beta"], [1.0, 2.0], rtol=1e-15)
    np.testing.assert_allclose(gm["gamma"], [-1.224743, 2.449485], atol=1e-6)
    np.testing.assert_allclose(gx, [[0.102063, 0.204121], [-0.204124, -0.408248],
                                    [0.102061, 0.204126]], atol=2e-6)
    # the same from the rules directly, in float32 as Flux's numbers were computed
    bn32 = ft.trainmode_(BatchNorm(2))
    y, saved = bn32.forward((X_SPEC.astype(np.float32), bn32.gamma, bn32.beta))
    dy = np.zeros_like(y)
    dy[0, 0], dy[2, 1] = 1, 2
    dx, dg, _ = bn32.backward(saved, dy, (True, True, True))
    assert dg.dtype == np.float32 and dx.dtype == np.float32
    np.testing.assert_allclose(dx, gx, atol=1e-6)
    np.testing.assert_allclose(dg, [-1.224743, 2.449485], atol=1e-6)


def test_spec_gradient_in_test_mode():
    """SPEC §3.9 test 9: running mean [0.3, 0.4], variance [1.3, 1.3]."""
    bn = ft.testmode_(ft.f64(BatchNorm(2)))
    bn.running_mean[...] = [0.3, 0.4]
    bn.running_var[...] = [1.3, 1.3]
    gm, gx = ft.gradient(_spec_loss, bn, X_SPEC)
    np.testing.assert_allclose(gx, [[0.877055, 0], [0, 0], [0, 1.754109]], atol=1e-6)
    np.testing.assert_allclose(gm["gamma"], [0.613938, 9.823012], atol=1e-6)
    np.testing.assert_allclose(gm["beta"], [1.0, 2.0])


def test_spec_sum_of_training_output_is_flat():
    """SPEC §3.9 test 10: sum(BatchNorm(3)(x)) in training mode has zero gradient and
    Hessian with respect to x (Flux: Chain(BatchNorm(3), sum) at Float32[1 2; 3 4; 5 6])."""
    bn = ft.f64(BatchNorm(3))
    x = np.array([[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]])        # 2 samples, 3 channels
    (gx,) = ft.gradient(lambda v: np.sum(bn(v)), x)
    np.testing.assert_allclose(gx, 0, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, [0.15, 0.35, 0.55])   # gradient trains
    H = ft.hessian(lambda v: np.sum(bn(v)), x)
    np.testing.assert_allclose(H, 0, atol=1e-9)
    np.testing.assert_allclose(bn.running_mean, [0.15, 0.35, 0.55])   # hessian does not


@pytest.mark.parametrize("act", [ft.tanh, np.exp], ids=["tanh", "np.exp"])
def test_hvp_and_gauss_newton_through_the_tape(act):
    rng = np.random.default_rng(5)
    bn = _layer(3, act, "train", True, rng)
    x = rng.standard_normal((4, 3, 2))
    w = rng.standard_normal(x.shape)
    p0, re = ft.destructure(bn)
    f = lambda p: np.sum(w * re(p)(x) ** 2)
    v = rng.standard_normal((p0.size, 2))

    grad = lambda p: ft.gradient(f, p)[0]
    with frozen_stats():
        fd = np.stack([(grad(p0 + H * v[:, i]) - grad(p0 - H * v[:, i])) / (2 * H)
                       for i in range(2)], axis=1)
    assert _rel(ft.hvp(f, p0, v), fd) <= TOL
    # the Hessian with respect to x, too (x traced: the tangent of the input)
    fx = lambda z: np.sum(w * bn(z) ** 2)
    u = rng.standard_normal(x.shape)
    with frozen_stats():
        gx = lambda z: ft.gradient(fx, z)[0]
        fdx = (gx(x + H * u) - gx(x - H * u)) / (2 * H)
    assert _rel(ft.hvp(fx, x, u), fdx) <= TOL
    # Gauss-Newton for 0.5 |z|^2: J^T (J v)
    model = lambda p: re(p)(x)
    gn = ft.gauss_newton_vp(model, lambda z: 0.5 * np.sum(z ** 2), p0, v[:, 0])
    with frozen_stats():
        jv = (model(p0 + H * v[:, 0]) - model(p0 - H * v[:, 0])) / (2 * H)
        jtjv = ft.gradient(lambda p: np.sum(re(p)(x) * jv), p0)[0]
    assert _rel(gn, jtjv) <= TOL


def test_float16_layer_and_conversions():
    rng = np.random.default_rng(6)
    bn = ft.trainmode_(BatchNorm(2, ft.sigmoid))
    bn.gamma = np.array([1.5, 0.5], np.float16)
    bn.beta = np.array([0.1, -0.2], np.float16)
    x = rng.standard_normal((5, 2, 3)).astype(np.float16)
    with frozen_stats():
        y, saved = bn.forward((x, bn.gamma, bn.beta))
    assert y.dtype == np.float16 and saved.x3.dtype == np.float32
    ref = bn(x)
    np.testing.assert_allclose(y.astype(np.float32), ref.astype(np.float32), atol=2e-3)
    dx, dg, db = bn.backward(saved, np.ones_like(y), (True, True, True))
    assert dx.dtype == np.float16 and dg.dtype == np.float16 and db.dtype == np.float16
    ty = bn.tangent(saved, (np.ones((1,) + x.shape, np.float16), None, None))
    assert ty.dtype == np.float16 and ty.shape == (1,) + x.shape
    # float64 input into a float32 layer: converted with a warning, gradient float32
    bn32 = ft.trainmode_(BatchNorm(2))
    with pytest.warns(PrecisionWarning):
        y32, saved = bn32.forward((rng.standard_normal((4, 2)), bn32.gamma, bn32.beta))
    assert y32.dtype == np.float32
    assert bn32.backward(saved, np.ones((4, 2)), (True, False, False))[0].dtype == np.float32


def test_forward_errors():
    bn = ft.trainmode_(BatchNorm(3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.forward((np.ones((1, 3), np.float32), bn.gamma, bn.beta))
    with pytest.raises(ValueError, match=r"expects an input of shape \(batch, 3, \.\.\.\), got "
                                         r"shape \(4, 2\)"):
        bn.forward((np.ones((4, 2), np.float32), bn.gamma, bn.beta))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ft.gradient(lambda v: np.sum(bn(v)), np.ones((1, 3), np.float32))
