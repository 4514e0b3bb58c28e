"""``Objective``: a model's training loss as the ``fun``, ``jac`` and ``hessp`` scipy wants.

scipy.optimize asks for the loss, the gradient and Hessian-vector products at the same
points, in separate calls, and passes a copy of ``x`` each time.  ``Objective`` records
the forward pass of a point once (``fluxtree.autodiff.linearize``) and serves every
question about that point from the recording: ``fun`` and ``jac`` share one forward and
one backward sweep, each ``hessp`` reuses both.  The last two points are kept, matched by
value, because the trust-region methods go back and forth between the current iterate and
a trial point.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np
from scipy.sparse.linalg import LinearOperator

from .. import autodiff, nn
from ..data import DataLoader
from ..flat import destructure
from ..functors import fmap, modules

__all__ = ["Objective"]

M = TypeVar("M")

_CURVATURES = ("hessian", "gauss-newton")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class _Point:
    """One linearisation point: scipy's ``x`` (a private copy), the recordings of the
    forward pass (one per batch), and what has been computed from them."""

    __slots__ = ("grad", "lins", "value", "x")

    def __init__(self, x: np.ndarray, lins: list) -> None:
        self.x = x
        self.lins = lins
        self.value: float | None = None
        self.grad: np.ndarray | None = None


def _to_dtype(model: M, dtype: np.dtype) -> M:
    """A copy of ``model`` whose float arrays are fresh arrays of ``dtype`` (ties kept)."""
    def convert(a: Any) -> Any:
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            return np.array(a, dtype=dtype)
        if isinstance(a, np.ndarray) and a.dtype.kind == "c":
            raise TypeError(f"Objective: scipy.optimize works on real numbers; the model has "
                            f"a {a.dtype} array.")
        return a
    return fmap(convert, model)


def _as_data(a: Any, dtype: np.dtype, what: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        if not hasattr(a, "__array__") and not isinstance(a, (list, tuple)):
            raise TypeError(f"Objective: {what} must be an array, got {type(a).__name__}.")
        a = np.asarray(a)
    if a.dtype.kind == "f" and a.dtype != dtype:
        a = a.astype(dtype)
    return np.ascontiguousarray(a)


def _batches(data: Any, dtype: np.dtype) -> list[tuple[np.ndarray, np.ndarray]]:
    """``data`` as a list of (inputs, targets) pairs of arrays, float arrays in ``dtype``."""
    if isinstance(data, DataLoader):
        items = list(data)
        if not items:
            raise ValueError("Objective: the DataLoader gives no batches.")
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        items = [data]
    else:
        raise TypeError(f"Objective: data must be a pair (inputs, targets) of arrays or a "
                        f"DataLoader of such pairs, got {type(data).__name__}.")
    out = []
    for k, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"Objective: batch {k} of the DataLoader must be a pair (inputs, "
                            f"targets), got {type(item).__name__}.")
        out.append((_as_data(item[0], dtype, "the inputs"),
                    _as_data(item[1], dtype, "the targets")))
    return out


class Objective(Generic[M]):
    """The loss of ``model`` on ``data`` as a function of the flat parameter vector.

    ``fun(x) = sum over batches of loss(model_x(inputs), targets)``, where ``model_x`` is
    ``model`` with parameters ``x`` (the order of ``destructure``).  ``data`` is a pair
    ``(inputs, targets)`` or a ``DataLoader`` of pairs; a DataLoader is iterated once, here,
    so the batches (and ``fun``) stay fixed even when it shuffles.

    The model is copied in ``dtype`` (float64 or float32); ``x0`` is its flat vector in
    float64.  ``fun`` returns a float; ``jac``, ``hessp`` and ``hessian`` return fresh
    float64 arrays.  ``curvature="gauss-newton"`` makes ``hessp`` the positive
    semi-definite Gauss-Newton product ``J^T H_loss J p`` instead of the exact Hessian's.

    Layers whose ``active`` is None (BatchNorm, Dropout) run in training mode: BatchNorm
    normalises with the statistics of each batch.  Its running statistics are never moved
    by ``fun``, ``jac`` or ``hessp`` (so ``fun`` is a function of ``x``); ``accept(x)``
    updates them as one training step would, which ``minimize`` does at every accepted
    iterate.  Dropout makes ``fun`` random; put it in test mode (``testmode_``) first.

    Counters: ``nfev``, ``njev``, ``nhev`` (calls of ``fun`` and ``jac``, and products
    computed by ``hessp``/``hess``/``hessian``) and ``nforward`` (forward passes over the
    data, one per new point).

    >>> import numpy as np, fluxtree as ft
    >>> X, Y = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]), np.eye(2)[[0, 1, 1]]
    >>> model = ft.Chain(ft.Dense(2, 3, ft.tanh, rng=np.random.default_rng(0)), ft.Dense(3, 2))
    >>> obj = ft.optimize.Objective(model, ft.losses.logitcrossentropy, (X, Y))
    >>> x = obj.x0
    >>> f, g, hp = obj.fun(x), obj.jac(x.copy()), obj.hessp(x.copy(), np.ones_like(x))
    >>> g.shape, g.dtype, obj.nforward
    ((17,), dtype('float64'), 1)
    """

    def __init__(self, model: M, loss: Callable[[Any, Any], Any], data: Any, *,
                 dtype: Any = np.float64, curvature: str = "hessian") -> None:
        dt = np.dtype(dtype)
        if dt not in _FLOATS:
            raise ValueError(f"Objective: dtype must be float32 or float64, got {dt}.")
        if curvature not in _CURVATURES:
            raise ValueError(f"Objective: curvature must be 'hessian' or 'gauss-newton', got "
                             f"{curvature!r}.")
        if not callable(loss):
            raise TypeError(f"Objective: loss must be a function loss(prediction, target), "
                            f"got {type(loss).__name__}.")
        self.dtype = dt
        self.curvature = curvature
        self.loss = loss
        self.model: M = _to_dtype(model, dt)
        flat, self._re = destructure(self.model)
        if flat.size == 0:
            raise ValueError("Objective: the model has no trainable parameters.")
        self.x0: np.ndarray = flat.astype(np.float64)
        self.batches = _batches(data, dt)
        self._stats = [m for m in modules(self.model)
                       if isinstance(m, nn.BatchNorm) and m.track_stats]
        self._cache: list[_Point] = []
        self.nfev = self.njev = self.nhev = self.nforward = 0

    # ------------------------------------------------------------------ points
    def __len__(self) -> int:
        return int(self.x0.size)

    def __repr__(self) -> str:
        nb = len(self.batches)
        name = getattr(self.loss, "__name__", type(self.loss).__name__)
        return (f"Objective({type(self.model).__name__}, {name}, {nb} batch"
                f"{'' if nb == 1 else 'es'}, {len(self)} parameters, {self.dtype}, "
                f"{self.curvature})")

    @property
    def counts(self) -> dict[str, int]:
        """The counters as a dict: ``fun``, ``jac``, ``hessp``, ``forward``."""
        return {"fun": self.nfev, "jac": self.njev, "hessp": self.nhev,
                "forward": self.nforward}

    def _check_x(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        if x.shape != self.x0.shape:
            raise ValueError(f"Objective: expected a vector of length {self.x0.size}, got "
                             f"shape {x.shape}.")
        return x

    def _find(self, x: np.ndarray) -> _Point | None:
        cache = self._cache
        for k, p in enumerate(cache):
            if np.array_equal(p.x, x):
                if k:
                    cache.insert(0, cache.pop(k))
                return p
        return None

    def _linearize_at(self, v: np.ndarray) -> list:
        re: Any = self._re
        loss = self.loss
        lins = []
        for X, Y in self.batches:
            def predict(w: Any, X: np.ndarray = X) -> Any:
                return re(w)(X)

            def loss_of(yhat: Any, Y: np.ndarray = Y) -> Any:
                return loss(yhat, Y)

            if self.curvature == "hessian":
                lins.append(autodiff.linearize(lambda w: loss_of(predict(w)), v))
            else:
                lins.append(autodiff.linearize(loss_of, v, inner=predict))
        return lins

    def _point(self, x: Any) -> _Point:
        x = self._check_x(x)
        p = self._find(x)
        if p is None:
            key = np.array(x, dtype=np.float64)
            p = _Point(key, self._linearize_at(
                key if self.dtype == np.float64 else key.astype(self.dtype)))
            self.nforward += 1
            self._cache.insert(0, p)
            del self._cache[2:]
        return p

    @staticmethod
    def _value(p: _Point) -> float:
        if p.value is None:
            p.value = float(sum(float(lin.value) for lin in p.lins))
        return p.value

    # ------------------------------------------------------------------ scipy's calls
    def fun(self, x: Any) -> float:
        """The loss at ``x``."""
        self.nfev += 1
        return self._value(self._point(x))

    def jac(self, x: Any) -> np.ndarray:
        """The gradient at ``x`` (a new float64 array)."""
        self.njev += 1
        p = self._point(x)
        if p.grad is None:
            g = np.array(p.lins[0].gradient(), dtype=np.float64)
            for lin in p.lins[1:]:
                g += lin.gradient()
            p.grad = g
        return p.grad.copy()

    def _product(self, p: _Point, v: np.ndarray) -> np.ndarray:
        v = np.ascontiguousarray(v, dtype=self.dtype)
        if self.curvature == "hessian":
            parts = [lin.hvp(v) for lin in p.lins]
        else:
            parts = [lin.gauss_newton_vp(v) for lin in p.lins]
        out = np.array(parts[0], dtype=np.float64)
        for part in parts[1:]:
            out += part
        return out

    def hessp(self, x: Any, p: Any) -> np.ndarray:
        """The Hessian (or Gauss-Newton) matrix at ``x`` times ``p`` (a new float64 array)."""
        point = self._point(x)
        v = np.asarray(p)
        if v.shape != self.x0.shape:
            raise ValueError(f"Objective.hessp: expected p of shape {self.x0.shape}, got "
                             f"{v.shape}.")
        self.nhev += 1
        return self._product(point, v)

    def hess(self, x: Any) -> LinearOperator:
        """The Hessian (or Gauss-Newton) matrix at ``x`` as a ``LinearOperator``; products
        with blocks of vectors run as one batched sweep."""
        key = np.array(self._check_x(x), dtype=np.float64)
        n = key.size

        def matmat(V: np.ndarray) -> np.ndarray:
            self.nhev += V.shape[1]
            return self._product(self._point(key), V)

        def matvec(v: np.ndarray) -> np.ndarray:
            self.nhev += 1
            return self._product(self._point(key), np.ravel(v))

        return LinearOperator((n, n), matvec=matvec, rmatvec=matvec, matmat=matmat,
                              dtype=np.float64)

    def hessian(self, x: Any, *, block: int = 256) -> np.ndarray:
        """The dense ``(n, n)`` Hessian (or Gauss-Newton) matrix at ``x``, ``block``
        columns per sweep; for the methods that need a matrix (dogleg, trust-exact)."""
        point = self._point(x)
        n = self.x0.size
        out = np.empty((n, n), np.float64)
        for start in range(0, n, block):
            stop = min(n, start + block)
            E = np.zeros((n, stop - start), self.dtype)
            E[np.arange(start, stop), np.arange(stop - start)] = 1
            out[:, start:stop] = self._product(point, E)
            self.nhev += stop - start
        return out

    # ------------------------------------------------------------------ the model
    def restructure(self, x: Any) -> M:
        """The model with parameters ``x`` (new arrays in the objective's dtype; running
        statistics are the objective's own)."""
        return self._re(self._check_x(x))

    def accept(self, x: Any) -> None:
        """Count ``x`` as a step of training: update BatchNorm running statistics there,
        batch by batch, as a training loop would (nothing to do without BatchNorm)."""
        if not self._stats:
            return
        model: Any = self._re(np.asarray(self._check_x(x), dtype=self.dtype), copy=False)
        with nn.training():
            for X, _ in self.batches:
                model(X)
