"""fluxtree.losses: Flux's loss values, and every derivative rule of the loss ops checked
against central finite differences in float64 (relative error <= 1e-6)."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fluxtree as ft
from fluxtree import _tracing, losses

RTOL_FD = 1e-6
KINDS = ["mse", "mae", "crossentropy", "logitcrossentropy", "binarycrossentropy",
         "logitbinarycrossentropy", "sum_abs2"]
CLASS_AXIS = {"crossentropy", "logitcrossentropy"}
CONVEX = ["mse", "crossentropy", "logitcrossentropy", "binarycrossentropy",
          "logitbinarycrossentropy", "sum_abs2"]
FUNCS = {k: getattr(losses, k) for k in KINDS}


def none(losses_array):
    """The identity as ``agg``: the unaggregated losses."""
    return losses_array


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-300)
    return float(np.max(np.abs(got - want), initial=0.0)) / scale


def data(kind, shape, rng, dtype=np.float64):
    """(yhat, y) inside each loss's domain, away from kinks and log's singularity."""
    if kind in ("crossentropy", "binarycrossentropy"):
        yhat = rng.uniform(0.1, 0.9, shape)
    elif kind in ("logitcrossentropy", "logitbinarycrossentropy"):
        yhat = 2.0 * rng.standard_normal(shape)
    else:
        yhat = rng.standard_normal(shape)
    if kind in ("crossentropy", "logitcrossentropy", "binarycrossentropy",
                "logitbinarycrossentropy"):
        y = rng.uniform(0.0, 1.0, shape)
    else:
        y = rng.standard_normal(shape)
    return yhat.astype(dtype), y.astype(dtype)


def make_op(kind, y, agg="mean", axis=1):
    if kind == "sum_abs2":
        return losses.SumAbs2()
    cls = {"mse": losses.MSE, "mae": losses.MAE, "crossentropy": losses.CrossEntropy,
           "logitcrossentropy": losses.LogitCrossEntropy,
           "binarycrossentropy": losses.BinaryCrossEntropy,
           "logitbinarycrossentropy": losses.LogitBinaryCrossEntropy}[kind]
    if kind in CLASS_AXIS:
        return cls(y, agg=agg, axis=axis)
    return cls(y, agg=agg)


def out_shape(kind, shape, agg, axis=1):
    if isinstance(agg, str) or kind == "sum_abs2":
        return ()
    if kind in CLASS_AXIS:
        axes = {a % len(shape) for a in (axis if isinstance(axis, tuple) else (axis,))}
        return tuple(s for i, s in enumerate(shape) if i not in axes)
    return shape


def scalarized(op, w):
    """yhat -> a scalar, with weights w on the op's output (1 for a scalar output)."""
    def f(yhat):
        return float(np.sum(w * op.forward((yhat,))[0]))
    return f


def fd_directional(f, x, t, h=1e-6):
    """Central difference of f at x along each of the k directions t[i]."""
    return np.stack([(np.asarray(f(x + h * ti), np.float64) - np.asarray(f(x - h * ti),
                                                                          np.float64)) / (2 * h)
                     for ti in t])


def fd_gradient(f, x, h=1e-6):
    eye = np.eye(x.size).reshape(x.size, *x.shape)
    return fd_directional(f, x, eye, h).reshape(x.shape)


AGGS = ["mean", "sum", "callable"]


def case(kind, agg, shape=(3, 4), axis=1, seed=0):
    rng = np.random.default_rng(seed)
    yhat, y = data(kind, shape, rng)
    op = make_op(kind, y, np.sum if agg == "callable" else agg, axis)
    oshape = out_shape(kind, shape, op.agg, axis)
    w = rng.uniform(0.5, 1.5, oshape) if oshape else np.float64(1.3)
    return rng, op, yhat, w


# -- values ----------------------------------------------------------------------------------

# Flux's test/losses.jl, translated to batch first: 4 samples, 2 classes.
FLUX_YHAT = np.array([[.1, .9], [.9, .1], [.9, .1], [.1, .9]])
FLUX_Y = np.array([[0., 1.], [0., 1.], [1., 0.], [1., 0.]])      # onehotbatch([1,1,0,0], 0:1)
FLUX_LOSSVALUE = 1.203972804325936
FLUX_LOSSVALUE_SMOOTHED = 1.2039728043259348


def test_flux_regression_values():
    y = np.array([1, 1, 0, 0])
    yhat = np.array([.9, .1, .1, .9])
    assert losses.mse(yhat, y) == pytest.approx((.1 ** 2 + .9 ** 2) / 2, rel=1e-15)
    assert losses.mae(yhat, y) == pytest.approx(0.5, rel=1e-15)


def test_flux_crossentropy_values():
    assert losses.crossentropy(FLUX_YHAT, FLUX_Y) == pytest.approx(FLUX_LOSSVALUE, rel=1e-14)
    smoothed = FLUX_Y * (1 - 0.1) + 0.1 / 2                       # label_smoothing(y, 0.1)
    assert losses.crossentropy(FLUX_YHAT, smoothed) == pytest.approx(FLUX_LOSSVALUE_SMOOTHED,
                                                                     rel=1e-14)
    v = math.log(.1 / .9)
    logits = np.array([[v, 0.], [0., v], [0., v], [v, 0.]])
    assert losses.logitcrossentropy(logits, FLUX_Y) == pytest.approx(FLUX_LOSSVALUE, rel=1e-14)
    ya = np.eye(2)[[0, 0, 0, 1, 1]]
    assert losses.crossentropy(ya, ya, eps=0) == 0
    # xlogy(0, 0) == 0: a zero probability on a zero target costs nothing
    assert losses.crossentropy(np.array([[0.1, 0.0, 0.9]]), np.array([[0.1, 0.0, 0.9]]),
                               eps=0) == pytest.approx(
        losses.crossentropy(np.array([[0.1, 0.9]]), np.array([[0.1, 0.9]]), eps=0), rel=1e-15)


def test_flux_binary_values():
    rng = np.random.default_rng(3)
    logits, y = rng.standard_normal(3), rng.uniform(size=3)
    s = 1 / (1 + np.exp(-logits))
    want = np.mean(-y * np.log(s) - (1 - y) * np.log(1 - s))
    assert losses.binarycrossentropy(s, y, eps=0) == pytest.approx(want, rel=1e-13)
    e = np.finfo(np.float64).eps
    want_eps = np.mean(-y * np.log(s + e) - (1 - y) * np.log(1 - s + e))
    assert losses.binarycrossentropy(s, y) == pytest.approx(want_eps, rel=1e-15)
    assert losses.logitbinarycrossentropy(logits, y) == pytest.approx(want, rel=1e-13)


@pytest.mark.parametrize("kind", KINDS)
def test_values_against_formulas(kind):
    rng = np.random.default_rng(1)
    yhat, y = data(kind, (5, 3), rng)
    e = np.finfo(np.float64).eps
    per = {"mse": lambda: (yhat - y) ** 2,
           "mae": lambda: np.abs(yhat - y),
           "crossentropy": lambda: -np.sum(y * np.log(yhat + e), axis=1),
           "logitcrossentropy": lambda: -np.sum(
               y * (yhat - np.log(np.sum(np.exp(yhat), axis=1, keepdims=True))), axis=1),
           "binarycrossentropy": lambda: -y * np.log(yhat + e) - (1 - y) * np.log(1 - yhat + e),
           "logitbinarycrossentropy": lambda: (1 - y) * yhat + np.log(1 + np.exp(-yhat)),
           "sum_abs2": lambda: yhat ** 2}[kind]()
    f = FUNCS[kind]
    if kind == "sum_abs2":
        assert f(yhat) == pytest.approx(np.sum(per), rel=1e-14)
        return
    assert f(yhat, y) == pytest.approx(np.mean(per), rel=1e-13)
    assert f(yhat, y, agg="sum") == pytest.approx(np.sum(per), rel=1e-13)
    got = f(yhat, y, agg=none)
    np.testing.assert_allclose(got, per, rtol=1e-13)
    assert f(yhat, y, agg=np.max) == pytest.approx(np.max(per), rel=1e-13)


def test_mean_is_over_the_samples_left_after_the_class_sum():
    rng = np.random.default_rng(2)
    yhat, y = data("logitcrossentropy", (6, 4, 5), rng)
    per = losses.logitcrossentropy(yhat, y, agg=none)
    assert per.shape == (6, 5)
    assert losses.logitcrossentropy(yhat, y) == pytest.approx(per.sum() / 30, rel=1e-14)
    assert losses.logitcrossentropy(yhat, y, agg="sum") == pytest.approx(per.sum(), rel=1e-14)


@pytest.mark.parametrize("kind", sorted(CLASS_AXIS))
@pytest.mark.parametrize("axis", [0, 2, -1, (1, 2)])
def test_other_class_axes(kind, axis):
    rng = np.random.default_rng(4)
    yhat, y = data(kind, (3, 4, 5), rng)
    f = FUNCS[kind]
    axes = axis if isinstance(axis, tuple) else (axis % 3,)
    rest = [a for a in range(3) if a not in axes]
    # move the class axes to the end and flatten them: the same losses with axis=1
    yhat2 = np.transpose(yhat, rest + list(axes)).reshape(-1, math.prod(yhat.shape[a]
                                                                          for a in axes))
    y2 = np.transpose(y, rest + list(axes)).reshape(yhat2.shape)
    got = f(yhat, y, axis=axis, agg=none)
    assert got.shape == tuple(yhat.shape[a] for a in rest)
    np.testing.assert_allclose(got.ravel(), f(yhat2, y2, agg=none), rtol=1e-13)
    assert f(yhat, y, axis=axis) == pytest.approx(f(yhat2, y2), rel=1e-13)


def test_single_sample_takes_axis_0():
    p = np.array([0.2, 0.8])
    y = np.array([0.0, 1.0])
    e = np.finfo(np.float64).eps
    assert losses.crossentropy(p, y, axis=0) == pytest.approx(-math.log(0.8 + e), rel=1e-15)
    with pytest.raises(ValueError, match=r"axis 1 is out of range .* shape \(2,\).*axis=0"):
        losses.crossentropy(p, y)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_result_and_gradient_dtypes(kind, dtype):
    rng = np.random.default_rng(5)
    yhat, y = data(kind, (4, 3), rng, dtype)
    y64 = y.astype(np.float64)                      # targets never promote the result
    args = (yhat,) if kind == "sum_abs2" else (yhat, y64)
    for agg in ("mean", "sum"):
        out = FUNCS[kind](*args) if kind == "sum_abs2" else FUNCS[kind](*args, agg=agg)
        assert isinstance(out, np.generic) and out.dtype == dtype
        ref = FUNCS[kind](*(a.astype(np.float64) for a in args), **(
            {} if kind == "sum_abs2" else {"agg": agg}))
        tol = {np.float16: 2e-3, np.float32: 1e-5, np.float64: 1e-15}[dtype]
        eps_shift = kind in ("crossentropy", "binarycrossentropy") and dtype != np.float64
        if not eps_shift:                   # eps is the machine epsilon of yhat's dtype
            assert out == pytest.approx(ref, rel=tol, abs=tol)
    op = make_op(kind, y64)
    _, saved = op.forward((yhat,))
    (g,) = op.backward(saved, 1.0, (True,))
    assert g.dtype == dtype and g.shape == yhat.shape
    assert op.tangent(saved, (np.ones((2, *yhat.shape), dtype),)).dtype == dtype
    (h,) = op.tangent_backward(saved, (np.ones((2, *yhat.shape), dtype),), 1.0,
                               np.ones(2, dtype), (True,))
    assert h.dtype == dtype and h.shape == (2, *yhat.shape)


def test_integer_and_bool_inputs_compute_in_float64():
    out = losses.mse(np.array([1, 2, 3]), np.array([True, False, True]))
    assert out.dtype == np.float64 and out == pytest.approx(8 / 3, rel=1e-15)
    assert losses.sum_abs2(np.array([[1, 2], [3, 4]])) == 30.0
    assert losses.mse([1.0, 2.0], [0.0, 0.0]) == 2.5               # lists are arrays
    assert losses.mse(3.0, 1.0) == 4.0                             # and so are scalars


def test_float32_eps_default():
    p = np.array([[0.0, 1.0]], np.float32)
    y = np.array([[1.0, 0.0]], np.float32)
    e32 = float(np.finfo(np.float32).eps)
    assert losses.crossentropy(p, y) == pytest.approx(-math.log(e32), rel=1e-6)
    assert losses.crossentropy(p, y, eps=1e-3) == pytest.approx(-math.log(1e-3), rel=1e-6)


def test_stable_for_large_logits():
    big = np.array([[1e4, -1e4, 0.0], [-1e4, 0.0, 1e4]])
    y = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert losses.logitcrossentropy(big, y) == pytest.approx(1e4, rel=1e-15)
    op = losses.LogitCrossEntropy(y)
    _, saved = op.forward((big,))
    (g,) = op.backward(saved, 1.0, (True,))
    np.testing.assert_allclose(g, [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], atol=1e-15)
    z = np.array([-1e3, 1e3, 0.0])
    yb = np.array([1.0, 0.0, 0.5])
    np.testing.assert_allclose(losses.logitbinarycrossentropy(z, yb, agg=none),
                               [1e3, 1e3, math.log(2)], rtol=1e-15)
    opb = losses.LogitBinaryCrossEntropy(yb)
    _, saved = opb.forward((z,))
    (g,) = opb.backward(saved, 1.0, (True,))
    np.testing.assert_allclose(g, np.array([-1.0, 1.0, 0.0]) / 3, atol=1e-15)
    (h,) = opb.tangent_backward(saved, (np.eye(3),), 1.0, None, (True,))
    assert np.all(np.isfinite(h)) and h[2, 2] == pytest.approx(0.25 / 3, rel=1e-15)


def test_empty_batch():
    yhat, y = np.zeros((0, 3)), np.zeros((0, 3))
    for kind in ("mse", "logitcrossentropy", "crossentropy"):
        assert math.isnan(FUNCS[kind](yhat, y))
        assert FUNCS[kind](yhat, y, agg="sum") == 0.0
    op = losses.LogitCrossEntropy(y)
    _, saved = op.forward((yhat,))
    assert op.backward(saved, 1.0, (True,))[0].shape == (0, 3)
    assert losses.logitcrossentropy(np.zeros((2, 0)), np.zeros((2, 0)), agg="sum") == 0.0


def test_mae_subgradient_is_zero_at_equality():
    y = np.array([1.0, 2.0, 3.0])
    op = losses.MAE(y, agg="sum")
    _, saved = op.forward((np.array([1.0, 5.0, 0.0]),))
    np.testing.assert_array_equal(op.backward(saved, 1.0, (True,))[0], [0.0, 1.0, -1.0])
    (h,) = op.tangent_backward(saved, (np.eye(3),), 1.0, None, (True,))
    np.testing.assert_array_equal(h, np.zeros((3, 3)))


# -- against PyTorch -------------------------------------------------------------------------

def test_against_torch_values_and_gradients():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(6)
    pairs = []
    for kind, tfun in [
        ("mse", lambda a, b, r: F.mse_loss(a, b, reduction=r)),
        ("mae", lambda a, b, r: F.l1_loss(a, b, reduction=r)),
        ("logitcrossentropy", lambda a, b, r: F.cross_entropy(a, b, reduction=r)),
        ("binarycrossentropy", lambda a, b, r: F.binary_cross_entropy(a, b, reduction=r)),
        ("logitbinarycrossentropy",
         lambda a, b, r: F.binary_cross_entropy_with_logits(a, b, reduction=r)),
    ]:
        for shape in [(5, 4), (3, 4, 2)]:
            yhat, y = data(kind, shape, rng)
            pairs.append((kind, tfun, yhat, y))
    for kind, tfun, yhat, y in pairs:
        kw = {"eps": 0.0} if kind == "binarycrossentropy" else {}
        for agg, red in (("mean", "mean"), ("sum", "sum")):
            t = torch.tensor(yhat, requires_grad=True)
            want = tfun(t, torch.tensor(y), red)
            want.backward()
            got = FUNCS[kind](yhat, y, agg=agg, **kw)
            assert got == pytest.approx(want.item(), rel=1e-12), (kind, agg, yhat.shape)
            op = make_op(kind, y, agg)
            if kw:
                op = losses.BinaryCrossEntropy(y, agg=agg, eps=0.0)
            _, saved = op.forward((yhat,))
            np.testing.assert_allclose(op.backward(saved, 1.0, (True,))[0],
                                       t.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_crossentropy_against_torch_nll():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((6, 4))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 4, 6)
    onehot = np.eye(4)[labels]
    want = torch.nn.functional.nll_loss(torch.tensor(np.log(p)), torch.tensor(labels))
    assert losses.crossentropy(p, onehot, eps=0) == pytest.approx(want.item(), rel=1e-13)
    want_ce = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels))
    assert losses.logitcrossentropy(logits, onehot) == pytest.approx(want_ce.item(), rel=1e-13)


@pytest.mark.parametrize("kind", ["logitcrossentropy", "binarycrossentropy",
                                  "logitbinarycrossentropy", "mse"])
def test_hvp_against_torch_double_backward(kind):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    tfun = {"mse": F.mse_loss, "logitcrossentropy": F.cross_entropy,
            "binarycrossentropy": F.binary_cross_entropy,
            "logitbinarycrossentropy": F.binary_cross_entropy_with_logits}[kind]
    rng = np.random.default_rng(8)
    yhat, y = data(kind, (4, 3), rng)
    v = rng.standard_normal(yhat.shape)
    _, want = torch.autograd.functional.hvp(lambda a: tfun(a, torch.tensor(y)),
                                            torch.tensor(yhat), torch.tensor(v))
    op = make_op(kind, y)
    if kind == "binarycrossentropy":
        op = losses.BinaryCrossEntropy(y, eps=0.0)
    _, saved = op.forward((yhat,))
    (hv,) = op.tangent_backward(saved, (v[None],), 1.0, None, (True,))
    # torch's second derivative of BCE is a relative 2e-11 off the closed form, which ours
    # matches to rounding (test_diagonal_hessians_in_closed_form)
    rtol = 1e-10 if kind == "binarycrossentropy" else 1e-12
    np.testing.assert_allclose(hv[0], want.numpy(), rtol=rtol, atol=1e-15)


# -- the op's rules against finite differences -----------------------------------------------

@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("kind", KINDS)
def test_backward_matches_finite_differences(kind, agg):
    _, op, yhat, w = case(kind, agg)
    out, saved = op.forward((yhat,))
    assert np.shape(out) == out_shape(kind, yhat.shape, op.agg)
    (g,) = op.backward(saved, w, (True,))
    assert rel_err(g, fd_gradient(scalarized(op, w), yhat)) <= RTOL_FD
    assert op.backward(saved, w, (False,)) == (None,)


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("kind", KINDS)
def test_tangent_matches_finite_differences(kind, agg):
    rng, op, yhat, _ = case(kind, agg)
    t = rng.standard_normal((3, *yhat.shape))
    _, saved = op.forward((yhat,))
    got = op.tangent(saved, (t,))
    assert got.shape == (3, *out_shape(kind, yhat.shape, op.agg))
    assert rel_err(got, fd_directional(lambda x: op.forward((x,))[0], yhat, t)) <= RTOL_FD
    assert op.tangent(saved, (None,)) is None


def backward_at(op, d_out):
    def g(x):
        _, s = op.forward((x,))
        return op.backward(s, d_out, (True,))[0]
    return g


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("kind", KINDS)
def test_tangent_backward_is_the_hvp(kind, agg):
    rng, op, yhat, w = case(kind, agg)
    t = rng.standard_normal((3, *yhat.shape))
    _, saved = op.forward((yhat,))
    op.tangent(saved, (t,))                          # the tape's order: tangent first
    op.backward(saved, w, (True,))
    (got,) = op.tangent_backward(saved, (t,), w, None, (True,))
    want = fd_directional(backward_at(op, w), yhat, t)
    if kind == "mae":
        np.testing.assert_array_equal(got, np.zeros_like(t))
        np.testing.assert_array_equal(want, np.zeros_like(t))
    else:
        assert rel_err(got, want) <= RTOL_FD
    # the block is k separate products
    for i in range(3):
        (one,) = op.tangent_backward(saved, (t[i:i + 1],), w, None, (True,))
        np.testing.assert_allclose(one[0], got[i], rtol=1e-14, atol=1e-300)


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("kind", KINDS)
def test_tangent_backward_with_a_moving_adjoint(kind, agg):
    """With t_d_out the rule is the derivative of backward(yhat + e t, d_out + e t_d_out)."""
    rng, op, yhat, w = case(kind, agg)
    k = 2
    t = rng.standard_normal((k, *yhat.shape))
    t_w = rng.standard_normal((k, *np.shape(w)))
    _, saved = op.forward((yhat,))
    (got,) = op.tangent_backward(saved, (t,), w, t_w, (True,))
    h = 1e-6
    want = np.stack([(backward_at(op, w + h * t_w[i])(yhat + h * t[i])
                      - backward_at(op, w - h * t_w[i])(yhat - h * t[i])) / (2 * h)
                     for i in range(k)])
    assert rel_err(got, want) <= RTOL_FD
    # d_out None (Gauss-Newton sweeps): only the moving adjoint contributes
    (gn,) = op.tangent_backward(saved, (t,), None, t_w, (True,))
    want_gn = np.stack([backward_at(op, t_w[i])(yhat) for i in range(k)])
    assert rel_err(gn, want_gn) <= 1e-14
    # no tangent on yhat, only on the adjoint
    (only,) = op.tangent_backward(saved, (None,), w, t_w, (True,))
    assert rel_err(only, want_gn) <= 1e-14
    # neither: zero, of the block's shape
    (zero,) = op.tangent_backward(saved, (t,), None, None, (True,))
    np.testing.assert_array_equal(zero, np.zeros_like(t))
    assert op.tangent_backward(saved, (None,), w, None, (True,)) == (None,)
    assert op.tangent_backward(saved, (t,), w, t_w, (False,)) == (None,)


@pytest.mark.parametrize("kind", sorted(CLASS_AXIS))
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("axis", [2, 0, (0, 2)])
def test_rules_with_other_axes(kind, agg, axis):
    rng, op, yhat, w = case(kind, agg, shape=(2, 3, 4), axis=axis)
    t = rng.standard_normal((2, *yhat.shape))
    _, saved = op.forward((yhat,))
    (g,) = op.backward(saved, w, (True,))
    assert rel_err(g, fd_gradient(scalarized(op, w), yhat)) <= RTOL_FD
    assert rel_err(op.tangent(saved, (t,)),
                   fd_directional(lambda x: op.forward((x,))[0], yhat, t)) <= RTOL_FD
    (hv,) = op.tangent_backward(saved, (t,), w, None, (True,))
    assert rel_err(hv, fd_directional(backward_at(op, w), yhat, t)) <= RTOL_FD


def full_hessian(op, yhat, d_out=1.0):
    _, saved = op.forward((yhat,))
    n = yhat.size
    (h,) = op.tangent_backward(saved, (np.eye(n).reshape(n, *yhat.shape),), d_out, None,
                               (True,))
    return h.reshape(n, n)


@pytest.mark.parametrize("kind", CONVEX)
def test_hessian_symmetric_and_psd(kind):
    rng = np.random.default_rng(9)
    yhat, y = data(kind, (3, 4), rng)
    for agg in ("mean", "sum"):
        hess = full_hessian(make_op(kind, y, agg), yhat)
        np.testing.assert_allclose(hess, hess.T, rtol=1e-14, atol=1e-15)
        lam = np.linalg.eigvalsh(hess)
        assert lam.min() >= -1e-12 * max(lam.max(), 1.0)
    if kind in ("mse", "sum_abs2"):
        np.testing.assert_allclose(hess, 2 * np.eye(12), rtol=1e-15)
    if kind == "logitcrossentropy":      # a null direction per sample: shifting the logits
        assert np.sum(np.abs(lam) < 1e-12) == 3


def test_logitcrossentropy_hessian_in_closed_form():
    rng = np.random.default_rng(10)
    yhat, y = data("logitcrossentropy", (2, 3), rng)
    hess = full_hessian(losses.LogitCrossEntropy(y, agg="sum"), yhat).reshape(2, 3, 2, 3)
    for b in range(2):
        p = np.exp(yhat[b]) / np.exp(yhat[b]).sum()
        np.testing.assert_allclose(hess[b, :, b, :], y[b].sum() * (np.diag(p) - np.outer(p, p)),
                                   rtol=1e-13, atol=1e-16)
    assert np.all(hess[0, :, 1, :] == 0)


def test_diagonal_hessians_in_closed_form():
    rng = np.random.default_rng(11)
    p, y = data("binarycrossentropy", (3, 4), rng)
    z = 3.0 * rng.standard_normal((3, 4))
    e = np.finfo(np.float64).eps
    sig = 1 / (1 + np.exp(-z))
    for op, x, want in [
        (losses.BinaryCrossEntropy(y, agg="sum"), p, y / (p + e) ** 2 + (1 - y) / (1 - p + e) ** 2),
        (losses.CrossEntropy(y, agg="sum"), p, y / (p + e) ** 2),
        (losses.LogitBinaryCrossEntropy(y, agg="sum"), z, sig * (1 - sig)),
    ]:
        np.testing.assert_allclose(np.diag(full_hessian(op, x)), want.ravel(), rtol=1e-14)


# -- the entry points ------------------------------------------------------------------------

class FakeTraced(_tracing.Traced):
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def test_traced_yhat_is_recorded(monkeypatch):
    recorded = []

    def recorder(op, inputs):
        recorded.append((op, inputs))
        return FakeTraced(op.forward(tuple(i.value for i in inputs))[0])

    monkeypatch.setattr(_tracing, "_recorder", recorder)
    yhat = FakeTraced(np.array([[0.2, 0.8]]))
    out = losses.crossentropy(yhat, np.array([[0.0, 1.0]]))
    (op, inputs), = recorded
    assert isinstance(op, losses.CrossEntropy) and inputs == (yhat,)
    assert isinstance(out, FakeTraced)
    assert out.value == pytest.approx(-math.log(0.8 + np.finfo(float).eps), rel=1e-15)
    seen = []
    losses.mse(yhat, np.zeros((1, 2)), agg=lambda v: seen.append(v) or "aggregated")
    assert isinstance(seen[0], FakeTraced) and seen[0].value.shape == (1, 2)
    assert isinstance(losses.sum_abs2(yhat), FakeTraced)


# -- through the tape of fluxtree.autodiff ---------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_through_the_tape_gradient_hvp_hessian(kind):
    """A loss after a small sigmoid layer made of array ops: gradient and exact HVP against
    finite differences, and a symmetric Hessian."""
    rng = np.random.default_rng(12)
    x = rng.uniform(0.2, 1.0, (4, 3))
    _, y = data(kind, (4, 2), rng)
    w0 = 0.3 * rng.standard_normal(3 * 2 + 2)

    def f(v):
        out = 1 / (1 + np.exp(-(x @ v[:6].reshape(3, 2) + v[6:])))    # in (0, 1)
        return losses.sum_abs2(out) if kind == "sum_abs2" else FUNCS[kind](out, y)

    def value(v):
        return float(f(v))

    (g,) = ft.gradient(f, w0)
    assert rel_err(g, fd_gradient(value, w0)) <= RTOL_FD
    u = rng.standard_normal((w0.size, 2))
    hv = ft.hvp(f, w0, u)
    assert rel_err(hv.T, fd_directional(lambda v: ft.gradient(f, v)[0], w0, u.T)) <= RTOL_FD
    hess = ft.hessian(f, w0)
    np.testing.assert_allclose(hess, hess.T, rtol=1e-10, atol=1e-14)


def test_through_the_tape_callable_agg_and_gauss_newton():
    rng = np.random.default_rng(13)
    z0, y = data("logitcrossentropy", (3, 4), rng)
    wts = np.array([1.0, 2.0, 3.0])

    def f(z):
        return np.sum(losses.logitcrossentropy(z, y, agg=lambda l_: l_ * wts))

    (g,) = ft.gradient(f, z0)
    assert rel_err(g, fd_gradient(lambda z: float(f(z)), z0)) <= RTOL_FD
    # Gauss-Newton through a model z = v ** 2 (elementwise): J^T H_loss J
    v0 = rng.uniform(0.5, 1.5, 12)
    u = rng.standard_normal(12)
    got = ft.gauss_newton_vp(lambda v: (v ** 2).reshape(3, 4),
                             lambda zz: losses.logitcrossentropy(zz, y), v0, u)
    jac = np.diag(2 * v0)
    h_loss = full_hessian(losses.LogitCrossEntropy(y), (v0 ** 2).reshape(3, 4))
    np.testing.assert_allclose(got, jac.T @ h_loss @ jac @ u, rtol=1e-12, atol=1e-14)


# -- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [k for k in KINDS if k != "sum_abs2"])
def test_shape_mismatch(kind):
    with pytest.raises(ValueError, match=rf"{kind} expects yhat and y of the same shape, got "
                                         r"yhat of shape \(2, 3\) and y of shape \(3, 2\)\."):
        FUNCS[kind](np.full((2, 3), 0.5), np.full((3, 2), 0.5))


def test_non_numeric_inputs():
    with pytest.raises(TypeError, match=r"mse expects a real numeric yhat, got dtype <U1\."):
        losses.mse(np.array(["a", "b"]), np.zeros(2))
    with pytest.raises(TypeError, match=r"mae expects a real numeric y, got dtype object\."):
        losses.mae(np.zeros(2), np.array([None, 1.0]))
    with pytest.raises(TypeError, match=r"complex128"):
        losses.mse(np.zeros(2, complex), np.zeros(2))
    with pytest.raises(TypeError, match=r"sum_abs2 expects a real numeric yhat"):
        losses.sum_abs2(np.array(["x"]))


def test_traced_target():
    with pytest.raises(TypeError, match=r"gradients with respect to the targets y are not "
                                        r"supported"):
        losses.logitcrossentropy(np.zeros((1, 2)), FakeTraced(np.zeros((1, 2))))


def test_bad_options():
    y = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"agg must be 'mean', 'sum' or a callable, got 'max'"):
        losses.mse(y, y, agg="max")
    with pytest.raises(TypeError, match=r"agg must be 'mean', 'sum' or a callable, got 3"):
        losses.mse(y, y, agg=3)
    with pytest.raises(TypeError, match=r"eps must be a real number or None, got '1e-3'"):
        losses.crossentropy(y, y, eps="1e-3")
    with pytest.raises(TypeError, match=r"axis must be an int or a non-empty tuple of ints"):
        losses.logitcrossentropy(y, y, axis=1.0)
    with pytest.raises(ValueError, match=r"axis 2 is out of range"):
        losses.logitcrossentropy(y, y, axis=2)
    with pytest.raises(ValueError, match=r"out of range \(or repeated\)"):
        losses.logitcrossentropy(y, y, axis=(1, -1))


# -- properties ------------------------------------------------------------------------------

@st.composite
def problems(draw):
    kind = draw(st.sampled_from(KINDS))
    agg = draw(st.sampled_from(AGGS))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=2, max_size=3)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return kind, agg, shape, axis, seed


@given(problems())
def test_property_hvp_symmetric_and_matches_gradient_differences(problem):
    kind, agg, shape, axis, seed = problem
    rng, op, yhat, w = case(kind, agg, shape=shape, axis=axis, seed=seed)
    v, u = rng.standard_normal((2, *yhat.shape))
    _, saved = op.forward((yhat,))
    (hvu,) = op.tangent_backward(saved, (np.stack([v, u]),), w, None, (True,))
    hv, hu = hvu
    assert np.vdot(u, hv) == pytest.approx(np.vdot(v, hu), rel=1e-10, abs=1e-12)
    want = fd_directional(backward_at(op, w), yhat, v[None])[0]
    if kind != "mae":
        assert rel_err(hv, want) <= RTOL_FD
    # the tangent is the directional derivative: <gradient, v>
    if isinstance(op.agg, str) or kind == "sum_abs2":
        (g,) = op.backward(saved, 1.0, (True,))
        assert op.tangent(saved, (v[None],))[0] == pytest.approx(np.vdot(g, v), rel=1e-12,
                                                                 abs=1e-14)


@given(problems())
def test_property_mean_sum_and_callable_agree(problem):
    kind, _, shape, axis, seed = problem
    if kind == "sum_abs2":
        return
    rng = np.random.default_rng(seed)
    yhat, y = data(kind, shape, rng)
    kw = {"axis": axis} if kind in CLASS_AXIS else {}
    per = FUNCS[kind](yhat, y, agg=none, **kw)
    assert per.shape == out_shape(kind, shape, np.sum, axis)
    total = FUNCS[kind](yhat, y, agg="sum", **kw)
    assert total == pytest.approx(per.sum(), rel=1e-12, abs=1e-14)
    assert FUNCS[kind](yhat, y, **kw) == pytest.approx(per.sum() / per.size, rel=1e-12,
                                                        abs=1e-14)


@given(st.lists(st.integers(1, 4), min_size=2, max_size=3), st.integers(0, 2 ** 32 - 1))
def test_property_logit_forms_equal_probability_forms(shape, seed):
    rng = np.random.default_rng(seed)
    z, y = data("logitcrossentropy", tuple(shape), rng)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert losses.logitcrossentropy(z, y) == pytest.approx(
        losses.crossentropy(p, y, eps=0), rel=1e-12, abs=1e-14)
    s = 1 / (1 + np.exp(-z))
    assert losses.logitbinarycrossentropy(z, y) == pytest.approx(
        losses.binarycrossentropy(s, y, eps=0), rel=1e-10, abs=1e-12)
