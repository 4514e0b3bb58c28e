"""Flux's loss functions, with exact first- and second-order derivative rules.

Each function computes its loss on arrays or, when ``yhat`` is a value being traced,
records its op on the tape: the op carries the gradient, the Jacobian-vector product and
the exact Hessian-vector product (``forward``, ``backward``, ``tangent``,
``tangent_backward``; see ``fluxtree._tracing``).  The definitions are Flux 0.16's.

Conventions: batch first, so the class axis of ``crossentropy`` and ``logitcrossentropy``
is ``axis=1`` (Flux's ``dims``).  ``agg`` is ``"mean"`` (the default: the mean over all
entries left after the class-axis sum, i.e. over the batch for (B, C) inputs), ``"sum"``,
or a callable applied to the unaggregated losses.  The result has ``yhat``'s floating dtype
(float64 for integer or bool ``yhat``), the targets ``y`` are converted to it, and float16
is computed in float32.  Targets are constants: gradients with respect to ``y`` are not
supported.  Complex inputs are not supported.

>>> import numpy as np
>>> logitcrossentropy(np.array([[2.0, 0.0], [0.0, 2.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]))
np.float64(1.1269280110429727)
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeAlias

import numpy as np

from . import _tracing

__all__ = ["MAE", "MSE", "BinaryCrossEntropy", "CrossEntropy", "LogitBinaryCrossEntropy",
           "LogitCrossEntropy", "LossOp", "SumAbs2", "binarycrossentropy", "crossentropy",
           "logitbinarycrossentropy", "logitcrossentropy", "mae", "mse", "sum_abs2"]

Agg: TypeAlias = Literal["mean", "sum"] | Callable[[Any], Any]


class _Saved:
    """What a loss op's forward keeps for its derivative rules.

    ``aux`` holds the forward's intermediates (kind-specific); ``grad`` and ``second`` are
    filled on first use by the derivative rules (the per-unit-weight gradient, and the
    Hessian's diagonal or the softmax for ``logitcrossentropy``).
    """

    __slots__ = ("aux", "divisor", "dtype", "grad", "second", "y", "yhat")

    def __init__(self, yhat: np.ndarray, y: Any, dtype: np.dtype,
                 divisor: float | None) -> None:
        self.yhat: np.ndarray = yhat
        self.y: Any = y                      # an array, or None for sum_abs2
        self.dtype, self.divisor = dtype, divisor
        self.aux: Any = None
        self.grad: np.ndarray | None = None
        self.second: Any = None


def _check_real(name: str, what: str, x: np.ndarray) -> None:
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} expects a real numeric {what}, got dtype {x.dtype}.")


def _xlogy(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``y * log(x)``, and 0 wherever ``y == 0`` (Flux's ``xlogy``)."""
    out = np.zeros_like(x)
    np.log(x, out=out, where=y != 0)
    out *= y
    return out


def _ratio(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``y / x``, and 0 wherever ``y == 0`` (the derivative of ``xlogy(y, x)`` in ``x``)."""
    return np.divide(y, x, out=np.zeros_like(x), where=y != 0)


class LossOp(ABC):
    """The op behind a loss function: the target ``y`` and ``agg`` are fixed, ``yhat`` is
    the one input.

    ``forward((yhat,))`` returns a NumPy scalar for ``agg="mean"``/``"sum"`` and the
    unaggregated losses for a callable ``agg`` (which the loss function applies afterwards).
    ``backward`` takes ``d_out`` of the output's shape; ``tangent`` maps a block of k
    tangents ``(k, *yhat.shape)`` to ``(k, *out.shape)``; ``tangent_backward`` returns
    ``d_out * H t (+ t_d_out * gradient)`` with the exact Hessian ``H``, applied without
    forming it.

    >>> op = MSE(np.array([1.0, 2.0]), agg="sum")
    >>> out, saved = op.forward((np.array([2.0, 0.0]),))
    >>> out
    np.float64(5.0)
    >>> op.backward(saved, 1.0, (True,))
    (array([ 2., -4.]),)
    >>> op.tangent_backward(saved, (np.eye(2),), 1.0, None, (True,))
    (array([[2., 0.],
           [0., 2.]]),)
    """

    name: ClassVar[str] = "loss"

    def __init__(self, y: Any, *, agg: Agg = "mean", axis: int | tuple[int, ...] | None = None,
                 eps: float | None = None) -> None:
        name = self.name
        if _tracing.any_traced(y):
            raise TypeError(f"{name}: gradients with respect to the targets y are not "
                            f"supported; pass y as a plain array.")
        self.y: np.ndarray | None = None
        if y is not None:
            self.y = np.asarray(y)
            _check_real(name, "y", self.y)
        if isinstance(agg, str):
            if agg not in ("mean", "sum"):
                raise ValueError(f"{name}: agg must be 'mean', 'sum' or a callable, got {agg!r}.")
        elif not callable(agg):
            raise TypeError(f"{name}: agg must be 'mean', 'sum' or a callable, got {agg!r}.")
        self.agg = agg
        if eps is not None and (isinstance(eps, bool) or not isinstance(
                eps, (int, float, np.integer, np.floating))):
            raise TypeError(f"{name}: eps must be a real number or None, got {eps!r}.")
        self.eps = eps
        self.axes: tuple[int, ...] = ()
        if axis is not None:
            self.axes = self._normalize_axis(axis)

    def _normalize_axis(self, axis: Any) -> tuple[int, ...]:
        assert self.y is not None
        items = axis if isinstance(axis, tuple) else (axis,)
        if not items or any(isinstance(a, bool) or not isinstance(a, (int, np.integer))
                            for a in items):
            raise TypeError(f"{self.name}: axis must be an int or a non-empty tuple of ints, "
                            f"got {axis!r}.")
        try:
            return np.lib.array_utils.normalize_axis_tuple(axis, self.y.ndim, "axis")
        except ValueError:
            raise ValueError(f"{self.name}: axis {axis!r} is out of range (or repeated) for "
                             f"inputs of shape {self.y.shape}; a single sample of shape (C,) "
                             f"takes axis=0.") from None

    # -- the protocol ----------------------------------------------------------------------

    def forward(self, inputs: tuple) -> tuple[Any, _Saved]:
        saved = self._saved(inputs[0])
        self._prepare(saved)
        if saved.divisor is None:
            return self._losses(saved).astype(saved.dtype, copy=False), saved
        return saved.dtype.type(self._total(saved) / saved.divisor), saved

    def backward(self, saved: _Saved, d_out: Any, needs: tuple) -> tuple:
        if not needs[0]:
            return (None,)
        g = self._weight(saved, d_out) * self._gradient(saved)
        return (g.astype(saved.dtype, copy=False),)

    def tangent(self, saved: _Saved, t_inputs: tuple) -> np.ndarray | None:
        t = t_inputs[0]
        if t is None:
            return None
        t = np.asarray(t, saved.yhat.dtype)
        g = self._gradient(saved)
        if saved.divisor is not None:
            out = (t.reshape(t.shape[0], g.size) @ g.reshape(g.size)) / saved.divisor
        elif self.axes:
            out = np.sum(t * g, axis=tuple(a + 1 for a in self.axes))
        else:
            out = t * g
        return out.astype(saved.dtype, copy=False)

    def tangent_backward(self, saved: _Saved, t_inputs: tuple, d_out: Any, t_d_out: Any,
                         needs: tuple) -> tuple:
        """``d_out * H t + t_d_out * gradient``; (None,) when no tangent reaches the op."""
        t = t_inputs[0]
        if not needs[0] or (t is None and t_d_out is None):
            return (None,)
        out = None
        if t is not None and d_out is not None:
            ht = self._hvp(saved, np.asarray(t, saved.yhat.dtype))
            if ht is not None:
                out = ht * self._weight(saved, d_out)
        if t_d_out is not None:
            term = self._tangent_weight(saved, t_d_out) * self._gradient(saved)
            out = term if out is None else np.add(out, term, out=out)
        if out is None:
            out = np.zeros((t.shape[0], *saved.yhat.shape), saved.dtype)
        return (out.astype(saved.dtype, copy=False),)

    # -- shared pieces ---------------------------------------------------------------------

    def _saved(self, yhat: Any) -> _Saved:
        yhat = np.asarray(yhat)
        _check_real(self.name, "yhat", yhat)
        y = self.y
        if y is not None and yhat.shape != y.shape:
            raise ValueError(f"{self.name} expects yhat and y of the same shape, got yhat of "
                             f"shape {yhat.shape} and y of shape {y.shape}.")
        dtype = yhat.dtype if yhat.dtype.kind == "f" else np.dtype(np.float64)
        work = np.result_type(dtype, np.float32)
        divisor: float | None = None             # None: no aggregation in the op
        if self.agg == "sum":
            divisor = 1.0
        elif self.agg == "mean":                 # the mean of nothing is NaN, as in Flux
            n = math.prod(s for i, s in enumerate(yhat.shape) if i not in self.axes)
            divisor = float(n) if n else math.nan
        return _Saved(yhat.astype(work, copy=False),
                      None if y is None else y.astype(work, copy=False), dtype, divisor)

    def _eps(self, saved: _Saved) -> Any:
        eps = np.finfo(saved.dtype).eps if self.eps is None else self.eps
        return saved.yhat.dtype.type(eps)

    def _weight(self, saved: _Saved, d_out: Any) -> np.ndarray:
        """``d_out`` (divided by the mean's N), broadcastable against ``yhat``."""
        w = np.asarray(d_out, saved.yhat.dtype)
        if saved.divisor is not None:
            return w / saved.divisor
        return np.expand_dims(w, self.axes) if self.axes else w

    def _tangent_weight(self, saved: _Saved, t_d_out: Any) -> np.ndarray:
        """``t_d_out`` (leading block axis k), broadcastable against ``(k, *yhat.shape)``."""
        w = np.asarray(t_d_out, saved.yhat.dtype)
        if saved.divisor is not None:
            return (w / saved.divisor).reshape(-1, *(1,) * saved.yhat.ndim)
        return np.expand_dims(w, tuple(a + 1 for a in self.axes)) if self.axes else w

    def _gradient(self, saved: _Saved) -> np.ndarray:
        if saved.grad is None:
            saved.grad = self._grad(saved)
        return saved.grad

    def _total(self, saved: _Saved) -> Any:
        return np.sum(self._losses(saved))

    def _prepare(self, saved: _Saved) -> None:
        """Compute the forward's intermediates into ``saved.aux`` (none by default)."""

    # -- what each loss defines ------------------------------------------------------------

    @abstractmethod
    def _losses(self, saved: _Saved) -> np.ndarray:
        """The unaggregated losses."""

    @abstractmethod
    def _grad(self, saved: _Saved) -> np.ndarray:
        """The gradient of the sum of the losses, shaped like ``yhat``."""

    @abstractmethod
    def _hvp(self, saved: _Saved, t: np.ndarray) -> np.ndarray | None:
        """The Hessian of each loss applied to ``t`` (k, *yhat.shape); None if it is zero."""


class _DiagonalLoss(LossOp):
    """A loss whose Hessian is diagonal: ``_diag`` gives it, computed once per forward."""

    def _hvp(self, saved: _Saved, t: np.ndarray) -> np.ndarray:
        if saved.second is None:
            saved.second = self._diag(saved)
        return t * saved.second

    @abstractmethod
    def _diag(self, saved: _Saved) -> np.ndarray:
        """The Hessian's diagonal, shaped like ``yhat``."""


class MSE(LossOp):
    """The op of ``mse``: losses ``(yhat - y)**2``, Hessian ``2 I`` (times the weight)."""

    name = "mse"

    def __init__(self, y: Any, *, agg: Agg = "mean") -> None:
        super().__init__(y, agg=agg)

    def _prepare(self, saved: _Saved) -> None:
        saved.aux = saved.yhat if saved.y is None else saved.yhat - saved.y

    def _losses(self, saved: _Saved) -> np.ndarray:
        return saved.aux * saved.aux

    def _total(self, saved: _Saved) -> Any:
        return np.vdot(saved.aux, saved.aux)

    def _grad(self, saved: _Saved) -> np.ndarray:
        return 2 * saved.aux

    def _hvp(self, saved: _Saved, t: np.ndarray) -> np.ndarray:
        return 2 * t


class SumAbs2(MSE):
    """The op of ``sum_abs2``: ``sum(x**2)``, i.e. ``mse`` against zero with ``agg="sum"``."""

    name = "sum_abs2"

    def __init__(self) -> None:
        super().__init__(None, agg="sum")


class MAE(LossOp):
    """The op of ``mae``: losses ``|yhat - y|``, subgradient ``sign`` (0 at equality), zero
    Hessian."""

    name = "mae"

    def __init__(self, y: Any, *, agg: Agg = "mean") -> None:
        super().__init__(y, agg=agg)

    def _prepare(self, saved: _Saved) -> None:
        saved.aux = saved.yhat - saved.y

    def _losses(self, saved: _Saved) -> np.ndarray:
        return np.abs(saved.aux)

    def _grad(self, saved: _Saved) -> np.ndarray:
        return np.sign(saved.aux)

    def _hvp(self, saved: _Saved, t: np.ndarray) -> None:
        return None


class CrossEntropy(_DiagonalLoss):
    """The op of ``crossentropy``: losses ``-sum(xlogy(y, yhat + eps), axis)``, Hessian
    diagonal ``y / (yhat + eps)**2``."""

    name = "crossentropy"

    def __init__(self, y: Any, *, axis: int | tuple[int, ...] = 1, agg: Agg = "mean",
                 eps: float | None = None) -> None:
        super().__init__(y, agg=agg, axis=axis, eps=eps)

    def _prepare(self, saved: _Saved) -> None:
        saved.aux = saved.yhat + self._eps(saved)

    def _losses(self, saved: _Saved) -> np.ndarray:
        return -np.sum(_xlogy(saved.y, saved.aux), axis=self.axes)

    def _total(self, saved: _Saved) -> Any:
        return -np.sum(_xlogy(saved.y, saved.aux))

    def _grad(self, saved: _Saved) -> np.ndarray:
        return -_ratio(saved.y, saved.aux)

    def _diag(self, saved: _Saved) -> np.ndarray:
        return _ratio(saved.y, saved.aux * saved.aux)


class LogitCrossEntropy(LossOp):
    """The op of ``logitcrossentropy``: losses ``-sum(y * logsoftmax(yhat, axis), axis)``.

    Per slice along ``axis`` the gradient is ``s p - y`` and the Hessian ``s (diag(p) - p
    p^T)``, with ``p = softmax(yhat)`` and ``s = sum(y)``; it is applied as ``s (p t - p
    (p . t))``, never formed.
    """

    name = "logitcrossentropy"

    def __init__(self, y: Any, *, axis: int | tuple[int, ...] = 1, agg: Agg = "mean") -> None:
        super().__init__(y, agg=agg, axis=axis)

    def _prepare(self, saved: _Saved) -> None:
        axes = self.axes
        z = saved.yhat - np.maximum.reduce(saved.yhat, axis=axes, keepdims=True,
                                           initial=-np.inf)
        e = np.exp(z)
        total = np.add.reduce(e, axis=axes, keepdims=True)
        if z.size:                             # (an empty class axis would take log(0))
            z -= np.log(total)
        saved.aux = (z, e, total)              # logsoftmax, exp(shifted yhat), their sum

    def _losses(self, saved: _Saved) -> np.ndarray:
        return -np.sum(saved.y * saved.aux[0], axis=self.axes)

    def _total(self, saved: _Saved) -> Any:
        return -np.vdot(saved.y, saved.aux[0])

    def _softmax(self, saved: _Saved) -> tuple[np.ndarray, np.ndarray]:
        if saved.second is None:
            _, e, total = saved.aux
            saved.second = (e / total, np.sum(saved.y, axis=self.axes, keepdims=True))
        return saved.second

    def _grad(self, saved: _Saved) -> np.ndarray:
        p, s = self._softmax(saved)
        return s * p - saved.y

    def _hvp(self, saved: _Saved, t: np.ndarray) -> np.ndarray:
        p, s = self._softmax(saved)
        pt = p * t
        pt -= p * np.sum(pt, axis=tuple(a + 1 for a in self.axes), keepdims=True)
        pt *= s
        return pt


class BinaryCrossEntropy(_DiagonalLoss):
    """The op of ``binarycrossentropy``: losses ``-xlogy(y, yhat + eps) - xlogy(1 - y, 1 -
    yhat + eps)``, Hessian diagonal ``y / (yhat + eps)**2 + (1 - y) / (1 - yhat + eps)**2``."""

    name = "binarycrossentropy"

    def __init__(self, y: Any, *, agg: Agg = "mean", eps: float | None = None) -> None:
        super().__init__(y, agg=agg, eps=eps)

    def _prepare(self, saved: _Saved) -> None:
        eps = self._eps(saved)
        saved.aux = (saved.yhat + eps, (1 - saved.yhat) + eps, 1 - saved.y)

    def _losses(self, saved: _Saved) -> np.ndarray:
        x1, x0, y0 = saved.aux
        out = _xlogy(saved.y, x1)
        out += _xlogy(y0, x0)
        return np.negative(out, out=out)

    def _grad(self, saved: _Saved) -> np.ndarray:
        x1, x0, y0 = saved.aux
        return _ratio(y0, x0) - _ratio(saved.y, x1)

    def _diag(self, saved: _Saved) -> np.ndarray:
        x1, x0, y0 = saved.aux
        return _ratio(saved.y, x1 * x1) + _ratio(y0, x0 * x0)


class LogitBinaryCrossEntropy(_DiagonalLoss):
    """The op of ``logitbinarycrossentropy``: losses ``(1 - y) yhat - logsigmoid(yhat)``,
    gradient ``sigmoid(yhat) - y``, Hessian diagonal ``sigmoid(yhat) sigmoid(-yhat)``."""

    name = "logitbinarycrossentropy"

    def __init__(self, y: Any, *, agg: Agg = "mean") -> None:
        super().__init__(y, agg=agg)

    def _prepare(self, saved: _Saved) -> None:
        saved.aux = np.exp(-np.abs(saved.yhat))        # in (0, 1]: never overflows

    def _losses(self, saved: _Saved) -> np.ndarray:
        x = saved.yhat                                 # (1 - y) x - logsigmoid(x), as
        out = np.log1p(saved.aux)                      # max(x, 0) - x y + log1p(exp(-|x|))
        out += np.maximum(x, 0)
        out -= x * saved.y
        return out

    def _grad(self, saved: _Saved) -> np.ndarray:
        e = saved.aux                                  # sigmoid(x) - y, where sigmoid(x)
        s = np.maximum(e, saved.yhat >= 0)             # = (1 if x >= 0 else e) / (1 + e)
        s /= 1 + e
        s -= saved.y
        return s

    def _diag(self, saved: _Saved) -> np.ndarray:
        e = saved.aux                                  # sigmoid(x) sigmoid(-x)
        return e / ((1 + e) * (1 + e))


# -- the loss functions ----------------------------------------------------------------------

def _apply(op: LossOp, yhat: Any) -> Any:
    out = _tracing.record(op, (yhat,)) if _tracing.any_traced(yhat) else op.forward((yhat,))[0]
    return out if isinstance(op.agg, str) else op.agg(out)


def mse(yhat: Any, y: Any, /, *, agg: Agg = "mean") -> Any:
    """Mean squared error: ``agg((yhat - y)**2)``.

    >>> mse(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0]))
    np.float64(1.6666666666666667)
    >>> mse(np.array([1.0, 2.0, 3.0], np.float32), np.zeros(3), agg="sum")
    np.float32(14.0)
    """
    return _apply(MSE(y, agg=agg), yhat)


def mae(yhat: Any, y: Any, /, *, agg: Agg = "mean") -> Any:
    """Mean absolute error: ``agg(abs(yhat - y))``; its derivative at ``yhat == y`` is 0.

    >>> mae(np.array([1.0, 2.0, 4.0]), np.array([1.0, 1.0, 1.0]))
    np.float64(1.3333333333333333)
    >>> mae(np.array([1.0, -2.0]), np.zeros(2), agg=np.max)
    np.float64(2.0)
    """
    return _apply(MAE(y, agg=agg), yhat)


def crossentropy(yhat: Any, y: Any, /, *, axis: int | tuple[int, ...] = 1, agg: Agg = "mean",
                 eps: float | None = None) -> Any:
    """Cross entropy of probabilities ``yhat`` against targets ``y``, summed over ``axis``.

    ``agg(sum(-xlogy(y, yhat + eps), axis))`` with ``xlogy(0, x) = 0``; ``eps`` (default:
    the machine epsilon of ``yhat``'s dtype) keeps ``log(0)`` away. For logits use
    ``logitcrossentropy``, which is more stable.

    >>> p = np.array([[0.9, 0.1], [0.2, 0.8]])
    >>> crossentropy(p, np.array([[1.0, 0.0], [0.0, 1.0]]))
    np.float64(0.16425203348601775)
    >>> crossentropy(p, np.array([[1.0, 0.0], [0.0, 1.0]]), agg=lambda v: v)
    array([0.10536052, 0.22314355])
    """
    return _apply(CrossEntropy(y, axis=axis, agg=agg, eps=eps), yhat)


def logitcrossentropy(yhat: Any, y: Any, /, *, axis: int | tuple[int, ...] = 1,
                      agg: Agg = "mean") -> Any:
    """Cross entropy of logits: ``agg(-sum(y * logsoftmax(yhat, axis), axis))``.

    Equal to ``crossentropy(softmax(yhat), y)`` without ``eps``, computed with a
    log-sum-exp shift so that large logits do not overflow.

    >>> logitcrossentropy(np.array([[1000.0, 0.0]]), np.array([[0.0, 1.0]]))
    np.float64(1000.0)
    """
    return _apply(LogitCrossEntropy(y, axis=axis, agg=agg), yhat)


def binarycrossentropy(yhat: Any, y: Any, /, *, agg: Agg = "mean",
                       eps: float | None = None) -> Any:
    """Binary cross entropy of probabilities: ``agg(-xlogy(y, yhat + eps) - xlogy(1 - y, 1 -
    yhat + eps))``, ``eps`` defaulting to the machine epsilon of ``yhat``'s dtype.

    >>> binarycrossentropy(np.array([0.9, 0.2]), np.array([1.0, 0.0]), eps=0.0)
    np.float64(0.164252033486018)
    """
    return _apply(BinaryCrossEntropy(y, agg=agg, eps=eps), yhat)


def logitbinarycrossentropy(yhat: Any, y: Any, /, *, agg: Agg = "mean") -> Any:
    """Binary cross entropy of logits: ``agg((1 - y) * yhat - logsigmoid(yhat))``, stable
    for large ``|yhat|``.

    >>> logitbinarycrossentropy(np.array([0.0, 800.0]), np.array([1.0, 0.0]), agg="sum")
    np.float64(800.6931471805599)
    """
    return _apply(LogitBinaryCrossEntropy(y, agg=agg), yhat)


def sum_abs2(x: Any, /) -> Any:
    """``sum(x**2)``, the sum of squares (Julia's ``sum(abs2, x)``), as a scalar of ``x``'s
    floating dtype (float64 for integer ``x``).

    >>> sum_abs2(np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.float64(30.0)
    """
    return _apply(SumAbs2(), x)
