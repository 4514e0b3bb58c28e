"""``Objective``: a model's training loss as the ``fun``, ``jac`` and ``hessp`` scipy wants.

scipy.optimize asks for the loss, the gradient and Hessian-vector products at the same
points, in separate calls, and passes a copy of ``x`` each time.  ``Objective`` records
the forward pass of a point once (``fluxtree.autodiff.linearize``) and serves every
question about that point from the recording: ``fun`` and ``jac`` share one forward and
one backward sweep, each ``hessp`` reuses both.  The last two points are kept, matched by
value, because the trust-region methods go back and forth between the current iterate and
a trial point.

With an MPI communicator (``comm=``) each rank holds a shard of the data and every
evaluation sums the ranks' parts with one collective (``fluxtree.distributed``).
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np
from scipy.sparse.linalg import LinearOperator

from .. import autodiff, distributed, nn
from ..data import DataLoader
from ..flat import destructure
from ..functors import fmap, modules

__all__ = ["Objective"]

M = TypeVar("M")

_CURVATURES = ("hessian", "gauss-newton")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class _Point:
    """One linearisation point: scipy's ``x`` (a private copy), the recordings of the
    forward pass (one per batch), and what has been computed from them.  With a
    communicator a forward pass that raised leaves its exception in ``error``, for the next
    collective to report on every rank."""

    __slots__ = ("error", "grad", "lins", "value", "x")

    def __init__(self, x: np.ndarray, lins: list, error: Exception | None = None) -> None:
        self.x = x
        self.lins = lins
        self.error = error
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


def _aggregation(loss: Callable[[Any, Any], Any], agg: Any) -> str:
    """How ``loss`` aggregates over the observations: ``agg`` when given, else the default
    of the loss's own ``agg`` keyword (every fluxtree loss has one; ``functools.partial``
    keeps it)."""
    if agg is not None:
        if agg not in ("mean", "sum"):
            raise ValueError(f"Objective: agg must be 'mean' or 'sum', got {agg!r}.")
        return str(agg)
    try:
        param = inspect.signature(loss).parameters.get("agg")
    except (TypeError, ValueError):
        param = None
    default = None if param is None else param.default
    if isinstance(default, str) and default in ("mean", "sum"):
        return default
    name = getattr(loss, "__name__", type(loss).__name__)
    raise ValueError(f"Objective: with comm the ranks' shards of the data are combined as the "
                     f"loss aggregates over observations, and {name} does not say how (it "
                     f"has no agg='mean' or agg='sum' keyword); pass agg='mean' or "
                     f"agg='sum'.")


def _check_modes(model: Any) -> None:
    """With a communicator, BatchNorm must use its running statistics (test mode)."""
    for m in modules(model):
        if isinstance(m, nn.BatchNorm) and (m.active is not False or not m.track_stats):
            raise ValueError("Objective: with comm, BatchNorm layers must be in test mode "
                             "with running statistics: in training mode each rank would "
                             "normalise its shard with that shard's statistics, so the "
                             "objective would depend on how the data is split; call "
                             "fluxtree.testmode_(model) first, or use one process.")


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
    iterate.  Dropout's probes all see one mask (they draw from a copy of its generator),
    but no scipy method expects the loss to change between steps: put Dropout in test mode
    (``testmode_``) first.

    Counters: ``nfev``, ``njev``, ``nhev`` (calls of ``fun`` and ``jac``, and products
    computed by ``hessp``/``hess``/``hessian``) and ``nforward`` (forward passes over the
    data, one per new point).

    ``comm``, an mpi4py communicator, makes the objective data-parallel: each rank passes
    its own shard of the data and every rank gets the global ``fun``, ``jac`` and
    ``hessp``, the ranks' parts summed by one ``Allreduce`` per evaluation (a vector for
    ``jac`` and each product, a scalar for ``fun``).  A pair ``(inputs, targets)`` is the
    rank's share of one batch: ``fun`` is the loss of the whole batch, so with ``agg``
    "mean" (how the loss aggregates over observations; read from the loss's own ``agg``
    keyword when not given) rank ``r``'s part is weighted by ``n_r / N``, its share of the
    ``N`` observations.  A DataLoader's batches are whole batches: ``fun`` is the sum over
    every rank's batches.  Rank 0's parameters are sent to every rank at the start, and
    since all ranks then see the same values, scipy runs in lock-step on each of them.
    A rank that raises stops every rank at the next collective (``RankError`` on the
    others; see ``fluxtree.distributed``).  BatchNorm must be in test mode.

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
                 dtype: Any = np.float64, curvature: str = "hessian", comm: Any = None,
                 agg: str | None = None) -> None:
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
        self.comm = comm
        self.model: M = _to_dtype(model, dt)
        #: the weight of this rank's part in the global sums (1 without a communicator)
        self._weight = 1.0
        if comm is None:
            if agg is not None:
                raise ValueError("Objective: agg says how the ranks' shards combine; it "
                                 "needs comm.")
            self.batches = _batches(data, dt)
        else:
            distributed._check_comm(comm, "Objective")
            _check_modes(self.model)
            self.batches = self._shard(data, agg)
            distributed.bcast_(self.model, comm, root=0)
        flat, self._re = destructure(self.model)
        if flat.size == 0:
            raise ValueError("Objective: the model has no trainable parameters.")
        self.x0: np.ndarray = flat.astype(np.float64)
        self._stats = [m for m in modules(self.model)
                       if isinstance(m, nn.BatchNorm) and m.track_stats]
        self._cache: list[_Point] = []
        self.nfev = self.njev = self.nhev = self.nforward = 0

    def _shard(self, data: Any, agg: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """This rank's batches; sets ``_weight`` from the shard sizes (one collective,
        which also stops every rank when one rank's data is unusable)."""
        comm = self.comm
        one_batch = not isinstance(data, DataLoader)
        mean = one_batch and _aggregation(self.loss, agg) == "mean"
        batches: list[tuple[np.ndarray, np.ndarray]] = []
        error: Exception | None = None
        rows = 0
        try:
            batches = _batches(data, self.dtype)
            if one_batch:
                X = batches[0][0]
                rows = X.shape[0] if X.ndim else 0
                if rows == 0:
                    raise ValueError(f"Objective: rank {comm.Get_rank()} holds no "
                                     f"observations (inputs of shape {X.shape}); give every "
                                     f"rank some (fluxtree.distributed.shard splits the rows "
                                     f"evenly).")
        except Exception as e:               # noqa: BLE001 - reported on every rank below
            error = e
        buf = np.array([rows, 0.0])
        distributed._allreduce_agreed(comm, buf, error, "Objective")
        if mean:
            self._weight = rows / buf[0]
        return batches

    # ------------------------------------------------------------------ points
    def __len__(self) -> int:
        return int(self.x0.size)

    def __repr__(self) -> str:
        nb = len(self.batches)
        name = getattr(self.loss, "__name__", type(self.loss).__name__)
        ranks = ("" if self.comm is None else
                 f", rank {self.comm.Get_rank()} of {self.comm.Get_size()}")
        return (f"Objective({type(self.model).__name__}, {name}, {nb} batch"
                f"{'' if nb == 1 else 'es'}, {len(self)} parameters, {self.dtype}, "
                f"{self.curvature}{ranks})")

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
            try:
                lins = self._linearize_at(
                    key if self.dtype == np.float64 else key.astype(self.dtype))
            except Exception as e:
                if self.comm is None:
                    raise
                return _Point(key, [], e)        # not kept: the next collective reports it
            p = _Point(key, lins)
            self.nforward += 1
            self._cache.insert(0, p)
            del self._cache[2:]
        return p

    def _sum(self, p: _Point, shape: tuple[int, ...], part: Callable[[np.ndarray], Any],
             what: str) -> np.ndarray:
        """A new float64 array of ``shape`` that ``part(out)`` fills with this process's
        sum over its batches; with a communicator, the ranks' parts (times their weights)
        summed by one Allreduce, which carries an error flag as its last element."""
        if self.comm is None:
            out = np.empty(shape)
            part(out)
            return out
        size = math.prod(shape)
        buf = np.empty(size + 1)
        out = buf[:size].reshape(shape)
        error = p.error
        if error is None:
            try:
                part(out)
                if self._weight != 1.0:
                    out *= self._weight
            except Exception as e:           # noqa: BLE001 - reported on every rank below
                error = e
        distributed._allreduce_agreed(self.comm, buf, error, f"Objective.{what}")
        return out

    def _value(self, p: _Point) -> float:
        if p.value is None:
            def part(out: np.ndarray) -> None:
                out[...] = sum(float(lin.value) for lin in p.lins)
            p.value = float(self._sum(p, (), part, "fun"))
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
            def part(out: np.ndarray) -> None:
                p.lins[0].gradient(out=out)
                for lin in p.lins[1:]:
                    out += lin.gradient()
            p.grad = self._sum(p, self.x0.shape, part, "jac")
        return p.grad.copy()

    def _product(self, p: _Point, v: np.ndarray, what: str) -> np.ndarray:
        v = np.ascontiguousarray(v, dtype=self.dtype)
        hessian = self.curvature == "hessian"

        def part(out: np.ndarray) -> None:
            for k, lin in enumerate(p.lins):
                prod = lin.hvp(v) if hessian else lin.gauss_newton_vp(v)
                if k == 0:
                    out[...] = prod
                else:
                    out += prod
        return self._sum(p, v.shape, part, what)

    def hessp(self, x: Any, p: Any) -> np.ndarray:
        """The Hessian (or Gauss-Newton) matrix at ``x`` times ``p`` (a new float64 array)."""
        point = self._point(x)
        v = np.asarray(p)
        if v.shape != self.x0.shape:
            raise ValueError(f"Objective.hessp: expected p of shape {self.x0.shape}, got "
                             f"{v.shape}.")
        self.nhev += 1
        return self._product(point, v, "hessp")

    def hess(self, x: Any) -> LinearOperator:
        """The Hessian (or Gauss-Newton) matrix at ``x`` as a ``LinearOperator``; products
        with blocks of vectors run as one batched sweep."""
        key = np.array(self._check_x(x), dtype=np.float64)
        n = key.size

        def matmat(V: np.ndarray) -> np.ndarray:
            self.nhev += V.shape[1]
            return self._product(self._point(key), V, "hess")

        def matvec(v: np.ndarray) -> np.ndarray:
            self.nhev += 1
            return self._product(self._point(key), np.ravel(v), "hess")

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
            out[:, start:stop] = self._product(point, E, "hessian")
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
