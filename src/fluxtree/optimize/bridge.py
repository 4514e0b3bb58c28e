"""``minimize``: fit a model with ``scipy.optimize.minimize`` and exact derivatives.

Each scipy method gets what it uses and nothing else (scipy warns about the rest):

==================================================  =====  =======  ======  ======
method                                              jac    hessp    hess    bounds
==================================================  =====  =======  ======  ======
Newton-CG, trust-ncg, trust-krylov                  yes    yes
trust-constr                                        yes    yes              yes
dogleg, trust-exact                                 yes             dense
CG, BFGS                                            yes
L-BFGS-B, TNC, SLSQP                                yes                     yes
Nelder-Mead, Powell, COBYLA, COBYQA                                         yes
==================================================  =====  =======  ======  ======

dogleg and trust-exact need the Hessian as a matrix: it is assembled from batched
Hessian-vector products (``n`` of them), so keep them to small models.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

import numpy as np
import scipy.optimize

from ..functors import getkeypath, isleaf
from ._progress import ProgressBar
from ._threads import blas_pools
from .objective import Objective

__all__ = ["METHODS", "minimize"]

M = TypeVar("M")

#: scipy's method names (as scipy spells them) -> what each one is given
METHODS: dict[str, frozenset[str]] = {
    "Newton-CG": frozenset({"jac", "hessp"}),
    "trust-ncg": frozenset({"jac", "hessp"}),
    "trust-krylov": frozenset({"jac", "hessp"}),
    "trust-constr": frozenset({"jac", "hessp", "bounds"}),
    "dogleg": frozenset({"jac", "hess"}),
    "trust-exact": frozenset({"jac", "hess"}),
    "CG": frozenset({"jac"}),
    "BFGS": frozenset({"jac"}),
    "L-BFGS-B": frozenset({"jac", "bounds"}),
    "TNC": frozenset({"jac", "bounds"}),
    "SLSQP": frozenset({"jac", "bounds"}),
    "Nelder-Mead": frozenset({"bounds"}),
    "Powell": frozenset({"bounds"}),
    "COBYLA": frozenset({"bounds"}),
    "COBYQA": frozenset({"bounds"}),
}
_BY_LOWER = {m.lower(): m for m in METHODS}


def _method(method: Any) -> str:
    if not isinstance(method, str):
        raise TypeError(f"minimize: method must be a string, got {type(method).__name__}.")
    try:
        return _BY_LOWER[method.lower()]
    except KeyError:
        raise ValueError(f"minimize: unknown method {method!r}; expected one of "
                         f"{', '.join(METHODS)}.") from None


def _bound_value(b: Any, what: str, where: str) -> Any:
    if b is None or isinstance(b, np.ndarray):
        return b
    if isinstance(b, (int, float, np.integer, np.floating)) and not isinstance(b, bool):
        return float(b)
    raise TypeError(f"minimize: {what} bound at {where} must be a number, an array or None, "
                    f"got {type(b).__name__}.")


def _bound_vector(tree: Any, obj: Objective, fill: float, what: str) -> np.ndarray:
    """A bound tree (shaped like the model; numbers, arrays or None at any node) as a
    vector in the objective's layout; None means unbounded (``fill``)."""
    out = np.full(len(obj), fill)
    re = obj._re
    offsets = re.layout.offsets
    shapes = re.layout.shapes
    for slot, path in enumerate(re.paths):
        node = tree
        for depth, key in enumerate(path):
            if node is None or isleaf(node):
                break
            try:
                node = getkeypath(node, (key,))
            except KeyError:
                where = "".join(f"[{k!r}]" for k in list(path)[:depth]) or "the root"
                raise ValueError(f"minimize: the {what} bound tree does not match the model: "
                                 f"it has no child {key!r} at {where} (the model's "
                                 f"parameter {path}); put None there for no bound.") from None
        value = _bound_value(node, what, str(path))
        lo, hi = int(offsets[slot]), int(offsets[slot + 1])
        if value is None:
            continue
        if isinstance(value, np.ndarray):
            try:
                value = np.broadcast_to(value, shapes[slot])
            except ValueError:
                raise ValueError(f"minimize: the {what} bound at {path} has shape "
                                 f"{value.shape}; the parameter has shape "
                                 f"{shapes[slot]}.") from None
        out[lo:hi] = np.ravel(value)
    return out


def _bounds(bounds: Any, obj: Objective) -> scipy.optimize.Bounds:
    if isinstance(bounds, scipy.optimize.Bounds):
        return bounds
    if not isinstance(bounds, tuple) or len(bounds) != 2:
        raise TypeError(f"minimize: bounds must be a pair (lower, upper) of trees shaped like "
                        f"the model (numbers, arrays or None at any node), got "
                        f"{type(bounds).__name__}.")
    lower = _bound_vector(bounds[0], obj, -np.inf, "lower")
    upper = _bound_vector(bounds[1], obj, np.inf, "upper")
    bad = np.flatnonzero(lower > upper)
    if bad.size:
        raise ValueError(f"minimize: the lower bound exceeds the upper bound at {bad.size} "
                         f"parameters (the first at index {bad[0]}).")
    return scipy.optimize.Bounds(lower, upper)


def _stream(progress: Any) -> TextIO | None:
    if progress is True:
        return sys.stderr
    if progress is False or progress is None:
        return None
    if hasattr(progress, "write"):
        return progress
    raise TypeError(f"minimize: progress must be True, False or a text stream, got "
                    f"{type(progress).__name__}.")


def minimize(model: M, loss: Callable[[Any, Any], Any], data: Any,
             method: str = "trust-krylov", *, options: dict | None = None,
             callback: Callable[[scipy.optimize.OptimizeResult], Any] | None = None,
             progress: bool | TextIO = True, bounds: Any = None, tol: float | None = None,
             dtype: Any = np.float64, curvature: str = "hessian",
             threads: int | None = 1, comm: Any = None,
             agg: str | None = None) -> tuple[scipy.optimize.OptimizeResult, M]:
    """Fit ``model`` to ``data`` with ``scipy.optimize.minimize``; returns (result, model).

    The objective is ``Objective(model, loss, data, dtype=, curvature=)``: the loss summed
    over the batches, exact gradients, exact Hessian-vector products (or Gauss-Newton ones)
    from one recorded forward pass per point.  ``method``, ``options`` and ``tol`` are
    scipy's; each method gets only the derivatives it uses (see the module docstring).

    ``bounds=(lower, upper)``: trees shaped like the model, or any prefix of it, holding
    numbers, arrays (broadcast to the parameter) or None (unbounded) — ``(0.0, None)``
    keeps every parameter non-negative; ``({"layers": (None, 0.0)}, None)`` only the second
    layer's.  A ``scipy.optimize.Bounds`` is passed on as it is.

    At every accepted iterate BatchNorm's running statistics are updated (one forward
    pass in training mode), the progress line is redrawn (``progress``: True for stderr,
    False, or a stream) and ``callback(intermediate_result)`` is called with scipy's
    ``OptimizeResult`` (``x``, ``fun``); raising ``StopIteration`` there stops the run.
    NumPy's BLAS pool runs one thread meanwhile and SciPy's, which the kernels use, runs
    ``threads`` (default 1; None leaves it as it is; see ``fluxtree.optimize._threads``).

    ``comm`` (an mpi4py communicator; ``agg`` with it) shards the fit over MPI ranks:
    each rank passes its share of the data, ``Objective(..., comm=comm)`` sums the ranks'
    parts, and every rank runs the same scipy method in lock-step and returns the same
    result.  Only rank 0 draws the progress line; ``callback`` runs on every rank and
    must decide the same way on each (see ``docs/distributed.md``).

    The result is scipy's, with ``history`` (the loss at the start and at each accepted
    iterate) and ``counts`` (``Objective.counts``) added; the model is a new one with the
    parameters of ``result.x`` in ``dtype``.

    >>> import numpy as np, fluxtree as ft
    >>> X = np.linspace(-1, 1, 20)[:, None]
    >>> model = ft.Chain(ft.Dense(1, 8, ft.tanh, rng=np.random.default_rng(0)), ft.Dense(8, 1))
    >>> res, fitted = ft.optimize.minimize(model, ft.losses.mse, (X, X ** 2), progress=False)
    >>> bool(res.fun < 1e-4), fitted[0].weight.dtype
    (True, dtype('float64'))
    """
    name = _method(method)
    uses = METHODS[name]
    obj = Objective(model, loss, data, dtype=dtype, curvature=curvature, comm=comm,
                    agg=agg)
    kwargs: dict[str, Any] = {}
    if "jac" in uses:
        kwargs["jac"] = obj.jac
    if "hessp" in uses:
        kwargs["hessp"] = obj.hessp
    if "hess" in uses:
        kwargs["hess"] = obj.hessian
    if bounds is not None:
        if "bounds" not in uses:
            raise ValueError(f"minimize: method {name} takes no bounds; use one of "
                             f"{', '.join(m for m, u in METHODS.items() if 'bounds' in u)}.")
        kwargs["bounds"] = _bounds(bounds, obj)
    options = dict(options or {})
    stream = _stream(progress)
    if comm is not None and comm.Get_rank() != 0:
        stream = None                            # rank 0 reports for all
    total = options.get("maxiter")
    bar = ProgressBar(stream, total if isinstance(total, int) else None, name) if stream else None
    history = [obj._value(obj._point(obj.x0))]
    if bar is not None:
        bar.update(0, history[0], None, _counts_text(obj))

    def step(x: np.ndarray, fun: float | None) -> None:
        obj.accept(x)
        f = obj._value(obj._point(x)) if fun is None else float(fun)
        history.append(f)
        if bar is not None:
            p = obj._find(np.asarray(x))
            gnorm = float(np.linalg.norm(p.grad)) if p is not None and p.grad is not None else None
            bar.update(len(history) - 1, f, gnorm, _counts_text(obj))

    def on_iterate(intermediate_result: scipy.optimize.OptimizeResult) -> Any:
        step(intermediate_result.x, intermediate_result.get("fun"))
        if callback is not None:
            return callback(intermediate_result)
        return None

    def on_iterate_x(xk: np.ndarray) -> None:                 # TNC: callback(xk)
        step(xk, None)
        if callback is not None:
            try:
                callback(scipy.optimize.OptimizeResult(x=np.copy(xk), fun=history[-1]))
            except StopIteration:
                raise _Stopped(np.copy(xk)) from None

    try:
        with blas_pools(threads):
            result = scipy.optimize.minimize(
                obj.fun, obj.x0, method=name, tol=tol, options=options,
                callback=on_iterate_x if name == "TNC" else on_iterate, **kwargs)
    except _Stopped as stop:                 # as scipy reports it for the other methods
        result = scipy.optimize.OptimizeResult(
            x=stop.x, fun=history[-1], success=False, status=99,
            message="`callback` raised `StopIteration`.", nit=len(history) - 1,
            nfev=obj.nfev, njev=obj.njev)
    finally:
        if bar is not None:
            bar.close()
    result.fun = float(result.fun)
    result.history = history
    result.counts = obj.counts
    return result, obj.restructure(result.x)


class _Stopped(Exception):
    """The user's callback stopped a method whose scipy driver cannot stop (TNC)."""

    def __init__(self, x: np.ndarray) -> None:
        super().__init__()
        self.x = x


def _counts_text(obj: Objective) -> str:
    c = obj.counts
    return f"fun {c['fun']} jac {c['jac']} hessp {c['hessp']}"
