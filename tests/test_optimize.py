"""fluxtree.optimize: Objective (derivatives, cache, counters, BatchNorm statistics) and
minimize (every scipy method, bounds, callbacks, progress, BLAS pools)."""
import io
import itertools

import numpy as np
import pytest
import scipy.optimize

import fluxtree as ft
from fluxtree.autodiff import tape as tape_module
from fluxtree.optimize import METHODS, Objective, minimize
from fluxtree.optimize._progress import ProgressBar
from fluxtree.optimize._threads import blas_pools

RNG = np.random.default_rng(1234)
X = RNG.standard_normal((40, 3))
LABELS = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (X[:, 2] > 0.8)
Y = np.eye(3)[LABELS]


def mlp(widths=(3, 6, 3), act=ft.tanh, bn=False, seed=0):
    rng = np.random.default_rng(seed)
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        last = i == len(widths) - 2
        if bn and not last:
            layers += [ft.Dense(a, b, rng=rng, dtype=np.float64), ft.BatchNorm(b, act)]
        else:
            layers.append(ft.Dense(a, b, None if last else act, rng=rng, dtype=np.float64))
    return ft.Chain(*layers)


def rel_err(a, b):
    return float(np.linalg.norm(np.ravel(a - b)) / max(np.linalg.norm(np.ravel(b)), 1e-300))


def fd_grad(f, x, h=1e-6):
    g = np.empty_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


# ----------------------------------------------------------------------------
# Objective: derivatives
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("bn", [False, True])
def test_fun_jac_hessp_match_finite_differences(bn):
    obj = Objective(mlp(bn=bn), ft.losses.logitcrossentropy, (X, Y))
    x = obj.x0 + 0.1 * RNG.standard_normal(len(obj))
    g = obj.jac(x)
    assert rel_err(g, fd_grad(obj.fun, x)) <= 1e-6
    p = RNG.standard_normal(len(obj))
    h = 1e-5
    fd_hp = (obj.jac(x + h * p) - obj.jac(x - h * p)) / (2 * h)
    assert rel_err(obj.hessp(x, p), fd_hp) <= 1e-6


def test_hessian_is_symmetric_and_matches_hessp_and_linear_operator():
    obj = Objective(mlp(widths=(3, 4, 3)), ft.losses.logitcrossentropy, (X, Y))
    x = obj.x0
    H = obj.hessian(x, block=7)
    assert H.shape == (len(obj), len(obj))
    np.testing.assert_allclose(H, H.T, atol=1e-12)
    p = RNG.standard_normal(len(obj))
    np.testing.assert_allclose(H @ p, obj.hessp(x, p), rtol=1e-10, atol=1e-12)
    op = obj.hess(x)
    assert isinstance(op, scipy.sparse.linalg.LinearOperator)
    np.testing.assert_allclose(op @ p, H @ p, rtol=1e-10, atol=1e-12)
    P = RNG.standard_normal((len(obj), 3))
    np.testing.assert_allclose(op.matmat(P), H @ P, rtol=1e-10, atol=1e-12)


def test_gauss_newton_equals_hessian_when_the_model_is_linear_and_is_psd():
    lin_model = ft.Chain(ft.Dense(3, 3, rng=np.random.default_rng(0), dtype=np.float64))
    exact = Objective(lin_model, ft.losses.logitcrossentropy, (X, Y))
    gn = Objective(lin_model, ft.losses.logitcrossentropy, (X, Y), curvature="gauss-newton")
    p = RNG.standard_normal(len(exact))
    np.testing.assert_allclose(gn.hessp(exact.x0, p), exact.hessp(exact.x0, p), rtol=1e-10)
    deep = Objective(mlp(widths=(3, 5, 5, 3)), ft.losses.logitcrossentropy, (X, Y),
                     curvature="gauss-newton")
    G = deep.hessian(deep.x0)
    assert np.linalg.eigvalsh((G + G.T) / 2).min() >= -1e-10
    np.testing.assert_allclose(G, G.T, atol=1e-12)


def test_float32_objective_returns_fresh_float64_arrays():
    obj = Objective(mlp(), ft.losses.logitcrossentropy, (X, Y), dtype=np.float32)
    x = obj.x0
    assert x.dtype == np.float64 and obj.model[0].weight.dtype == np.float32
    f = obj.fun(x)
    assert type(f) is float
    g1, g2 = obj.jac(x), obj.jac(x)
    assert g1.dtype == np.float64 and g1 is not g2 and not np.shares_memory(g1, g2)
    g1[:] = 0
    assert np.any(obj.jac(x) != 0)
    p = np.ones(len(obj))
    h1 = obj.hessp(x, p)
    h1[:] = 7
    assert h1.dtype == np.float64 and not np.array_equal(obj.hessp(x, p), h1)
    ref = Objective(mlp(), ft.losses.logitcrossentropy, (X, Y))
    assert rel_err(obj.jac(x), ref.jac(x)) < 1e-4


def test_dataloader_objective_is_the_sum_over_fixed_batches():
    loader = ft.DataLoader((X, Y), batchsize=16, shuffle=True, rng=0)
    obj = Objective(mlp(), ft.losses.logitcrossentropy, loader)
    assert len(obj.batches) == 3
    parts = [Objective(mlp(), ft.losses.logitcrossentropy, b) for b in obj.batches]
    x = obj.x0
    assert obj.fun(x) == pytest.approx(sum(o.fun(x) for o in parts), rel=1e-12)
    np.testing.assert_allclose(obj.jac(x), sum(o.jac(x) for o in parts), rtol=1e-10)
    p = RNG.standard_normal(len(obj))
    np.testing.assert_allclose(obj.hessp(x, p), sum(o.hessp(x, p) for o in parts), rtol=1e-10)
    obj._cache.clear()
    assert obj.fun(x) == pytest.approx(sum(o.fun(x) for o in parts), rel=1e-12)   # same batches


# ----------------------------------------------------------------------------
# Objective: the cache and the counters
# ----------------------------------------------------------------------------
@pytest.fixture
def sweeps(monkeypatch):
    """Counts of the tape's backward sweeps."""
    count = {"backward": 0}
    original = tape_module.Tape.backward

    def counting(self, *args, **kwargs):
        count["backward"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tape_module.Tape, "backward", counting)
    return count


def test_cache_serves_a_scripted_scipy_sequence(sweeps):
    obj = Objective(mlp(), ft.losses.logitcrossentropy, (X, Y))
    x = obj.x0.copy()
    x2, x3 = x + 0.01, x - 0.01
    p = np.ones_like(x)
    f = obj.fun(x.copy())
    assert (obj.nforward, sweeps["backward"]) == (1, 0)
    obj.jac(x.copy())
    assert (obj.nforward, sweeps["backward"]) == (1, 1)       # fun and jac: one pass each way
    for _ in range(3):
        obj.hessp(x.copy(), p)
    assert (obj.nforward, sweeps["backward"]) == (1, 1)       # products reuse both sweeps
    obj.fun(x2.copy())
    assert obj.nforward == 2
    assert obj.fun(x.copy()) == f and obj.nforward == 2       # two points kept
    obj.jac(x2.copy())
    obj.hessp(x2.copy(), p)
    assert (obj.nforward, sweeps["backward"]) == (2, 2)
    obj.fun(x3)                                               # evicts x (least recent)
    obj.fun(x2)
    assert obj.nforward == 3
    obj.fun(x)
    assert obj.nforward == 4
    assert obj.counts == {"fun": 6, "jac": 2, "hessp": 4, "forward": 4}


def test_cache_is_keyed_by_value_not_identity():
    obj = Objective(mlp(), ft.losses.logitcrossentropy, (X, Y))
    x = obj.x0.copy()
    f0 = obj.fun(x)
    x += 0.5                                  # scipy may reuse a buffer in place
    f1 = obj.fun(x)
    assert f1 != f0 and obj.nforward == 2
    x -= 0.5
    assert obj.fun(x) == f0 and obj.nforward == 2


def test_hessp_before_jac_and_then_jac():
    obj = Objective(mlp(), ft.losses.logitcrossentropy, (X, Y))
    ref = Objective(mlp(), ft.losses.logitcrossentropy, (X, Y))
    x, p = obj.x0, RNG.standard_normal(len(obj))
    np.testing.assert_allclose(obj.hessp(x, p), ref.hessp(x, p), rtol=1e-12)
    np.testing.assert_allclose(obj.jac(x), ref.jac(x), rtol=1e-12)
    assert obj.nforward == 1


# ----------------------------------------------------------------------------
# BatchNorm running statistics
# ----------------------------------------------------------------------------
def test_probes_leave_running_statistics_and_accept_updates_them():
    obj = Objective(mlp(bn=True), ft.losses.logitcrossentropy, (X, Y))
    bn = obj.model[1]
    before = bn.running_mean.copy(), bn.running_var.copy()
    x = obj.x0 + 0.05
    f = obj.fun(x)
    obj.jac(x)
    obj.hessp(x, np.ones_like(x))
    obj.fun(x + 1)
    np.testing.assert_array_equal(bn.running_mean, before[0])
    np.testing.assert_array_equal(bn.running_var, before[1])
    obj.accept(x)
    assert not np.array_equal(bn.running_mean, before[0])
    z = X @ obj.restructure(x)[0].weight.T + obj.restructure(x)[0].bias
    np.testing.assert_allclose(bn.running_mean, 0.1 * z.mean(axis=0), rtol=1e-10)
    obj._cache.clear()
    assert obj.fun(x) == f                    # fun is a function of x only


def test_minimize_updates_statistics_at_accepted_iterates_only():
    model = mlp(bn=True)
    original = model[1].running_mean.copy()
    seen = []
    res, fitted = minimize(model, ft.losses.logitcrossentropy, (X, Y), "trust-krylov",
                           options={"maxiter": 5}, progress=False,
                           callback=lambda intermediate_result: seen.append(
                               intermediate_result.x.copy()))
    np.testing.assert_array_equal(model[1].running_mean, original)    # the input is untouched
    replay = Objective(mlp(bn=True), ft.losses.logitcrossentropy, (X, Y))
    for x in seen:
        replay.accept(x)
    np.testing.assert_allclose(fitted[1].running_mean, replay.model[1].running_mean, rtol=1e-12)
    np.testing.assert_allclose(fitted[1].running_var, replay.model[1].running_var, rtol=1e-12)
    assert len(seen) == res.nit == len(res.history) - 1


# ----------------------------------------------------------------------------
# minimize: every method
# ----------------------------------------------------------------------------
def _regression():
    rng = np.random.default_rng(5)
    A = rng.standard_normal((30, 2))
    t = A @ np.array([[1.5], [-2.0]]) + 0.3 + 0.01 * rng.standard_normal((30, 1))
    model = ft.Chain(ft.Dense(2, 1, rng=rng, dtype=np.float64))
    design = np.hstack([A, np.ones((30, 1))])
    coef = np.linalg.lstsq(design, t, rcond=None)[0]
    best = float(np.mean((design @ coef - t) ** 2))
    return model, (A, t), best


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_converges_on_a_small_problem(method):
    model, data, best = _regression()
    options = {"maxiter": 2000} if method in ("Nelder-Mead", "Powell", "COBYLA") else {}
    res, fitted = minimize(model, ft.losses.mse, data, method, options=options, progress=False,
                           tol=1e-10)
    assert res.fun == pytest.approx(best, rel=1e-4, abs=1e-8)
    assert ft.losses.mse(fitted(data[0]), data[1]) == pytest.approx(res.fun, rel=1e-9)
    counts = res.counts
    uses = METHODS[method]
    assert (counts["jac"] > 0) == ("jac" in uses)
    assert (counts["hessp"] > 0) == bool({"hessp", "hess"} & uses)


@pytest.mark.parametrize("method", ["trust-krylov", "Newton-CG", "trust-ncg", "L-BFGS-B"])
def test_second_order_and_lbfgs_fit_an_mlp(method):
    res, fitted = minimize(mlp(widths=(3, 8, 3)), ft.losses.logitcrossentropy, (X, Y), method,
                           options={"maxiter": 300}, progress=False)
    assert res.fun < 0.05
    assert np.mean(np.argmax(fitted(X), 1) == LABELS) > 0.95
    assert res.history[0] > res.history[-1] == pytest.approx(res.fun)


def test_gauss_newton_curvature_fits_too():
    res, _ = minimize(mlp(widths=(3, 8, 3)), ft.losses.logitcrossentropy, (X, Y), "trust-ncg",
                      options={"maxiter": 300}, progress=False, curvature="gauss-newton")
    assert res.fun < 0.05


def test_minimize_returns_a_model_in_the_objective_dtype():
    model = ft.Chain(ft.Dense(3, 3, rng=np.random.default_rng(0)))       # float32
    res, fitted = minimize(model, ft.losses.logitcrossentropy, (X, Y), "L-BFGS-B",
                           options={"maxiter": 3}, progress=False)
    assert model[0].weight.dtype == np.float32 and fitted[0].weight.dtype == np.float64
    np.testing.assert_array_equal(ft.destructure(fitted)[0], res.x)
    _, f32 = minimize(model, ft.losses.logitcrossentropy, (X, Y), "L-BFGS-B",
                      options={"maxiter": 3}, progress=False, dtype=np.float32)
    assert f32[0].weight.dtype == np.float32


# ----------------------------------------------------------------------------
# minimize: bounds
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["L-BFGS-B", "trust-constr"])
def test_bounds_as_trees_shaped_like_the_model(method):
    model, data, _ = _regression()
    # the unconstrained weights are (1.5, -2.0): bound the second from below at -1
    lower = {"layers": ({"weight": np.array([[-np.inf, -1.0]]), "bias": None},)}
    res, fitted = minimize(model, ft.losses.mse, data, method, bounds=(lower, None),
                           progress=False, options={"maxiter": 500})
    w = fitted[0].weight
    assert w[0, 1] == pytest.approx(-1.0, abs=1e-5 if method == "L-BFGS-B" else 1e-3)
    assert w[0, 0] > 1.0
    # the same bounds through the model's own structure (Chain and Dense records)
    lower2 = ft.Chain(ft.Dense(np.array([[-np.inf, -1.0]]), np.array([-np.inf])))
    res2, _ = minimize(model, ft.losses.mse, data, method, bounds=(lower2, None),
                       progress=False, options={"maxiter": 500})
    assert res2.fun == pytest.approx(res.fun, rel=1e-4)


def test_bounds_prefixes_numbers_and_scipy_bounds():
    model, data, _ = _regression()
    res, fitted = minimize(model, ft.losses.mse, data, "L-BFGS-B", bounds=(0.0, 1.0),
                           progress=False)
    x = ft.destructure(fitted)[0]
    assert np.all((x >= 0) & (x <= 1)) and x[0] == pytest.approx(1.0)
    _, fitted2 = minimize(model, ft.losses.mse, data, "L-BFGS-B",
                          bounds=({"layers": (None,)},
                                  {"layers": ({"weight": None, "bias": 0.1},)}),
                          progress=False)
    assert fitted2[0].bias[0] == pytest.approx(0.1)
    sb = scipy.optimize.Bounds(np.zeros(3), np.ones(3))
    res3, _ = minimize(model, ft.losses.mse, data, "L-BFGS-B", bounds=sb, progress=False)
    np.testing.assert_allclose(res3.x, res.x, atol=1e-6)


def test_bad_bounds():
    model, data, _ = _regression()
    with pytest.raises(ValueError, match="method BFGS takes no bounds"):
        minimize(model, ft.losses.mse, data, "BFGS", bounds=(0.0, None), progress=False)
    with pytest.raises(TypeError, match="pair \\(lower, upper\\)"):
        minimize(model, ft.losses.mse, data, "L-BFGS-B", bounds=[0.0, 1.0], progress=False)
    with pytest.raises(ValueError, match=r"bound at .*weight.* has shape \(3,\)"):
        minimize(model, ft.losses.mse, data, "L-BFGS-B",
                 bounds=({"layers": ({"weight": np.zeros(3)},)}, None), progress=False)
    with pytest.raises(TypeError, match="must be a number, an array or None, got str"):
        minimize(model, ft.losses.mse, data, "L-BFGS-B", bounds=("0", None), progress=False)
    with pytest.raises(ValueError, match="lower bound exceeds the upper bound at 3"):
        minimize(model, ft.losses.mse, data, "L-BFGS-B", bounds=(1.0, 0.0), progress=False)
    with pytest.raises(ValueError, match="does not match the model: it has no child "
                                         "'layers' at the root"):
        minimize(model, ft.losses.mse, data, "L-BFGS-B", bounds=({"layer": 1.0}, None),
                 progress=False)


# ----------------------------------------------------------------------------
# minimize: callbacks, progress, errors
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["trust-krylov", "TNC", "trust-constr"])
def test_callback_gets_scipy_results_and_can_stop(method):
    got = []

    def callback(intermediate_result):
        got.append((intermediate_result.x.copy(), intermediate_result.fun))
        if len(got) == 3:
            raise StopIteration

    options = {"maxfun": 100} if method == "TNC" else {"maxiter": 100}
    res, _ = minimize(mlp(), ft.losses.logitcrossentropy, (X, Y), method, callback=callback,
                      progress=False, options=options)
    assert len(got) == 3
    obj = Objective(mlp(), ft.losses.logitcrossentropy, (X, Y))
    for x, f in got:
        assert f == pytest.approx(obj.fun(x), rel=1e-12)
    assert res.history[1:] == pytest.approx([f for _, f in got])


def test_progress_lines_go_to_the_given_stream():
    out = io.StringIO()
    minimize(mlp(), ft.losses.logitcrossentropy, (X, Y), options={"maxiter": 10},
             progress=out)
    lines = out.getvalue().splitlines()
    assert 2 <= len(lines) <= 12
    assert lines[0].startswith("trust-krylov [") and "loss" in lines[-1]
    assert "fun " in lines[-1] and "hessp " in lines[-1] and "|g|" in lines[-1]


def test_progress_bar_redraws_in_place_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = ProgressBar(out, 4, "m")
    for it in range(5):
        bar.update(it, 1.0 / (it + 1), 0.5, "fun 1")
        bar._last_draw = -1.0                       # draw every update
    bar.close()
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 6 and text.endswith("\n") and text.count("\n") == 1
    assert "[####################] 4/4" in text


def test_argument_errors():
    model, data, _ = _regression()
    with pytest.raises(ValueError, match="unknown method 'newton'"):
        minimize(model, ft.losses.mse, data, "newton")
    with pytest.raises(TypeError, match="method must be a string"):
        minimize(model, ft.losses.mse, data, scipy.optimize.minimize)
    with pytest.raises(TypeError, match="progress must be True, False or a text stream"):
        minimize(model, ft.losses.mse, data, progress=1)
    with pytest.raises(ValueError, match="dtype must be float32 or float64, got float16"):
        Objective(model, ft.losses.mse, data, dtype=np.float16)
    with pytest.raises(ValueError, match="curvature must be 'hessian' or 'gauss-newton'"):
        Objective(model, ft.losses.mse, data, curvature="exact")
    with pytest.raises(TypeError, match="loss must be a function"):
        Objective(model, "mse", data)
    with pytest.raises(TypeError, match="data must be a pair"):
        Objective(model, ft.losses.mse, data[0])
    with pytest.raises(TypeError, match="batch 0 of the DataLoader must be a pair"):
        Objective(model, ft.losses.mse, ft.DataLoader(data[0], batchsize=10))
    with pytest.raises(ValueError, match="no trainable parameters"):
        Objective(ft.Chain(), ft.losses.mse, data)
    with pytest.raises(TypeError, match="real numbers; the model has a complex128"):
        Objective({"w": np.ones(2, complex)}, ft.losses.mse, data)
    obj = Objective(model, ft.losses.mse, data)
    with pytest.raises(ValueError, match="expected a vector of length 3, got shape \\(2,\\)"):
        obj.fun(np.zeros(2))
    with pytest.raises(ValueError, match="expected p of shape \\(3,\\), got \\(3, 1\\)"):
        obj.hessp(obj.x0, np.zeros((3, 1)))


def test_repr_and_counters():
    obj = Objective(mlp(), ft.losses.logitcrossentropy, ft.DataLoader((X, Y), batchsize=20))
    assert repr(obj) == ("Objective(Chain, logitcrossentropy, 2 batches, 45 parameters, "
                         "float64, hessian)")
    assert obj.counts == {"fun": 0, "jac": 0, "hessp": 0, "forward": 0}


def test_blas_pools_serialise_numpy_and_restore():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
    with blas_pools(1):
        inside = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()
                  if i["user_api"] == "blas"}
        assert all(n == 1 for n in inside.values())
    after = {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
    assert after == before
    with (pytest.raises(ValueError, match="threads must be a positive int or None, got 0"),
          blas_pools(0)):
        pass
