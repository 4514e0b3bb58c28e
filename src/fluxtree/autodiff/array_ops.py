"""The array operations a traced value supports, each an op with its four rules.

``+ - * /`` (NumPy broadcasting, with constants or traced values), negation, ``**`` with a
constant exponent, ``@``, indexing, ``reshape``, ``sum`` and ``mean`` (any axes),
``square``/``abs2``, ``dot`` (the full inner product) and the element-wise functions
``exp log tanh sqrt sin cos abs``.  NumPy spellings (``np.sum(y ** 2)``, ``np.tanh(z)``)
reach the same ops through ``__array_ufunc__`` / ``__array_function__``.

Tangent blocks carry a leading axis k, so every rule works on ``(k, *shape)`` arrays;
``_lift`` aligns a block with a broadcast result and ``_reduce_to`` sums it back.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _tracing

SUPPORTED = ("+ - * / (with broadcasting), unary -, ** with a constant exponent, @, indexing, "
             "reshape, .T/transpose, sum, mean, square/abs2, dot, exp, log, tanh, sqrt, sin, cos, abs, "
             "and fluxtree layers, activations, losses and Restructure")


def unsupported(what: str) -> TypeError:
    return TypeError(f"fluxtree.autodiff: {what} is not supported on a traced value (it "
                     f"would give no derivative or a wrong one). Supported: {SUPPORTED}. Use "
                     f"`.value` to read a traced value without differentiating through it.")


# ---------------------------------------------------------------------------- shape helpers
def _shape(x: Any) -> tuple:
    return np.shape(x)


def _reduce_to(g: np.ndarray, shape: tuple, lead: int) -> np.ndarray:
    """Sum ``g`` (``lead`` leading block axes, then a broadcast shape) back to ``shape``."""
    extra = g.ndim - lead - len(shape)
    axes = tuple(range(lead, lead + extra)) + tuple(
        lead + extra + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + extra + i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=False)
        if len(axes) > extra:                       # restore the kept size-1 axes
            g = g.reshape(g.shape[:lead] + shape)
    return g


def _lift(t: np.ndarray, ndim: int) -> np.ndarray:
    """A tangent block ``(k, *s)`` reshaped to broadcast against ``(k, *out)`` of ``ndim``."""
    missing = ndim - (t.ndim - 1)
    return t if missing <= 0 else t.reshape(t.shape[:1] + (1,) * missing + t.shape[1:])


def _const(x: Any) -> Any:
    """A constant operand as an array (Python numbers stay numbers for NEP 50 promotion)."""
    return x if isinstance(x, (int, float, np.ndarray, np.generic)) else np.asarray(x)


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    return a if b is None else a + b


# ---------------------------------------------------------------------------- binary ops
class _Binary:
    """Element-wise binary op with broadcasting; saves both operands."""

    apply: Callable[[Any, Any], Any]

    def forward(self, inputs: tuple) -> tuple[np.ndarray, tuple]:
        a, b = inputs
        out = np.asarray(self.apply(a, b))
        return out, (a, b, out.ndim)

    def __repr__(self) -> str:
        return type(self).__name__.lower()


class Add(_Binary):
    apply = staticmethod(np.add)
    linear = True

    def backward(self, saved: tuple, d: np.ndarray, needs: tuple) -> tuple:
        a, b, _ = saved
        return (_reduce_to(d, _shape(a), 0) if needs[0] else None,
                _reduce_to(d, _shape(b), 0) if needs[1] else None)

    def tangent(self, saved: tuple, t: tuple) -> np.ndarray:
        nd = saved[2]
        return _add(None if t[0] is None else _lift(t[0], nd),
                    None if t[1] is None else _lift(t[1], nd))

    def tangent_backward(self, saved: tuple, t: tuple, d: Any, td: Any, needs: tuple) -> tuple:
        a, b, _ = saved
        if td is None:
            return (None, None)
        return (_reduce_to(td, _shape(a), 1) if needs[0] else None,
                _reduce_to(td, _shape(b), 1) if needs[1] else None)


class Sub(Add):
    apply = staticmethod(np.subtract)

    def backward(self, saved: tuple, d: np.ndarray, needs: tuple) -> tuple:
        ga, gb = super().backward(saved, d, needs)
        return ga, None if gb is None else -gb

    def tangent(self, saved: tuple, t: tuple) -> np.ndarray:
        nd = saved[2]
        return _add(None if t[0] is None else _lift(t[0], nd),
                    None if t[1] is None else -_lift(t[1], nd))

    def tangent_backward(self, saved: tuple, t: tuple, d: Any, td: Any, needs: tuple) -> tuple:
        ga, gb = super().tangent_backward(saved, t, d, td, needs)
        return ga, None if gb is None else -gb


class Mul(_Binary):
    apply = staticmethod(np.multiply)

    def backward(self, saved: tuple, d: np.ndarray, needs: tuple) -> tuple:
        a, b, _ = saved
        return (_reduce_to(d * b, _shape(a), 0) if needs[0] else None,
                _reduce_to(d * a, _shape(b), 0) if needs[1] else None)

    def tangent(self, saved: tuple, t: tuple) -> np.ndarray:
        a, b, nd = saved
        return _add(None if t[0] is None else _lift(t[0], nd) * b,
                    None if t[1] is None else a * _lift(t[1], nd))

    def tangent_backward(self, saved: tuple, t: tuple, d: Any, td: Any, needs: tuple) -> tuple:
        a, b, nd = saved
        ta = None if t[0] is None else _lift(t[0], nd)
        tb = None if t[1] is None else _lift(t[1], nd)
        ga = gb = None
        if needs[0]:
            ga = _add(None if td is None else td * b, None if d is None or tb is None else d * tb)
            ga = None if ga is None else _reduce_to(np.asarray(ga), _shape(a), 1)
        if needs[1]:
            gb = _add(None if td is None else td * a, None if d is None or ta is None else d * ta)
            gb = None if gb is None else _reduce_to(np.asarray(gb), _shape(b), 1)
        return ga, gb


class Div(_Binary):
    apply = staticmethod(np.true_divide)

    def backward(self, saved: tuple, d: np.ndarray, needs: tuple) -> tuple:
        a, b, _ = saved
        q = d / b
        return (_reduce_to(q, _shape(a), 0) if needs[0] else None,
                _reduce_to(-q * a / b, _shape(b), 0) if needs[1] else None)

    def tangent(self, saved: tuple, t: tuple) -> np.ndarray:
        a, b, nd = saved
        return _add(None if t[0] is None else _lift(t[0], nd) / b,
                    None if t[1] is None else -a * _lift(t[1], nd) / (b * b))

    def tangent_backward(self, saved: tuple, t: tuple, d: Any, td: Any, needs: tuple) -> tuple:
        a, b, nd = saved
        ta = None if t[0] is None else _lift(t[0], nd)
        tb = None if t[1] is None else _lift(t[1], nd)
        ga = gb = None
        if needs[0]:                   # d/da = d / b
            ga = _add(None if td is None else td / b,
                      None if d is None or tb is None else -d * tb / (b * b))
            ga = None if ga is None else _reduce_to(np.asarray(ga), _shape(a), 1)
        if needs[1]:                   # d/db = -d a / b^2
            b2 = b * b
            parts = [None if td is None else -td * a / b2,
                     None if d is None or ta is None else -d * ta / b2,
                     None if d is None or tb is None else 2 * d * a * tb / (b2 * b)]
            acc = None
            for p in parts:
                acc = _add(acc, p)
            gb = None if acc is None else _reduce_to(np.asarray(acc), _shape(b), 1)
        return ga, gb


class MatMul:
    """``a @ b`` for operands of 1 or 2 dimensions."""

    def forward(self, inputs: tuple) -> tuple[np.ndarray, tuple]:
        a, b = inputs
        if np.ndim(a) not in (1, 2) or np.ndim(b) not in (1, 2):
            raise unsupported(f"@ on operands of {np.ndim(a)} and {np.ndim(b)} dimensions")
        a2 = np.asarray(a) if np.ndim(a) == 2 else np.asarray(a)[None, :]
        b2 = np.asarray(b) if np.ndim(b) == 2 else np.asarray(b)[:, None]
        out = np.asarray(np.matmul(a, b))
        return out, (a2, b2, np.shape(a), np.shape(b), out.shape)

    @staticmethod
    def _as2(x: np.ndarray, shape: tuple, lead: int) -> np.ndarray:
        return x.reshape(x.shape[:lead] + shape)

    def backward(self, saved: tuple, d: np.ndarray, needs: tuple) -> tuple:
        a2, b2, sa, sb, _ = saved
        d2 = d.reshape(a2.shape[0], b2.shape[1])
        return ((d2 @ b2.T).reshape(sa) if needs[0] else None,
                (a2.T @ d2).reshape(sb) if needs[1] else None)

    def tangent(self, saved: tuple, t: tuple) -> np.ndarray:
        a2, b2, _, _, so = saved
        k = next(x.shape[0] for x in t if x is not None)
        out = None
        if t[0] is not None:
            out = t[0].reshape((k,) + a2.shape) @ b2
        if t[1] is not None:
            out = _add(out, a2 @ t[1].reshape((k,) + b2.shape))
        return np.asarray(out).reshape((k,) + so)

    def tangent_backward(self, saved: tuple, t: tuple, d: Any, td: Any, needs: tuple) -> tuple:
        a2, b2, sa, sb, _ = saved
        k = (td.shape[0] if td is not None else next(x.shape[0] for x in t if x is not None))
        td2 = None if td is None else td.reshape(k, a2.shape[0], b2.shape[1])
        d2 = None if d is None else d.reshape(a2.shape[0], b2.shape[1])
        ta = None if t[0] is None else t[0].reshape((k,) + a2.shape)
        tb = None if t[1] is None else t[1].reshape((k,) + b2.shape)
        ga = gb = None
        if needs[0]:                   # d/da = d b^T
            ga = _add(None if td2 is None else td2 @ b2.T,
                      None if d2 is None or tb is None else d2 @ np.swapaxes(tb, 1, 2))
            ga = None if ga is None else np.asarray(ga).reshape((k,) + sa)
        if needs[1]:                   # d/db = a^T d
            gb = _add(None if td2 is None else a2.T @ td2,
                      None if d2 is None or ta is None else np.swapaxes(ta, 1, 2) @ d2)
            gb = None if gb is None else np.asarray(gb).reshape((k,) + sb)
        return ga, gb

    def __repr__(self) -> str:
        return "matmul"


# ---------------------------------------------------------------------------- unary ops
class Elementwise:
    """``f`` applied element-wise, with its first and second derivatives ``f1(x, y)`` and
    ``f2(x, y)`` given the input ``x`` and the output ``y``."""

    def __init__(self, name: str, f: Callable, f1: Callable, f2: Callable) -> None:
        self.name, self.f, self.f1, self.f2 = name, f, f1, f2

    def forward(self, inputs: tuple) -> tuple[np.ndarray, list]:
        x = np.asarray(inputs[0])
        y = np.asarray(self.f(x))
        return y, [x, y, None]

    def _d1(self, saved: list) -> np.ndarray:
        if saved[2] is None:
            saved[2] = np.asarray(self.f1(saved[0], saved[1]))
        return saved[2]

    def backward(self, saved: list, d: np.ndarray, needs: tuple) -> tuple:
        return (d * self._d1(saved),)

    def tangent(self, saved: list, t: tuple) -> np.ndarray:
        return t[0] * self._d1(saved)

    def tangent_backward(self, saved: list, t: tuple, d: Any, td: Any, needs: tuple) -> tuple:
        out = None if td is None else td * self._d1(saved)
        if d is not None and t[0] is not None:
            out = _add(out, (d * self.f2(saved[0], saved[1])) * t[0])
        return (out,)

    def __repr__(self) -> str:
        return self.name


class Power(Elementwise):
    """``x ** p`` for a constant real ``p``."""

    def __init__(self, p: float) -> None:
        if p == 0:                     # a constant: p * x ** (p - 1) would be nan at x = 0
            super().__init__("power 0", np.ones_like, _zeros, _zeros)
            return
        super().__init__(f"power {p}", lambda x: x ** p, lambda x, y: p * x ** (p - 1),
                         lambda x, y: p * (p - 1) * x ** (p - 2))


def _zeros(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.zeros_like(x)


def _sech2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 1 - y * y


ELEMENTWISE: dict[Any, Elementwise] = {
    np.negative: Elementwise("negative", np.negative, lambda x, y: np.full_like(x, -1),
                             lambda x, y: np.zeros_like(x)),
    np.square: Elementwise("square", np.square, lambda x, y: 2 * x,
                           lambda x, y: np.full_like(x, 2)),
    np.exp: Elementwise("exp", np.exp, lambda x, y: y, lambda x, y: y),
    np.log: Elementwise("log", np.log, lambda x, y: 1 / x, lambda x, y: -1 / (x * x)),
    np.tanh: Elementwise("tanh", np.tanh, _sech2, lambda x, y: -2 * y * (1 - y * y)),
    np.sqrt: Elementwise("sqrt", np.sqrt, lambda x, y: 0.5 / y, lambda x, y: -0.25 / (y * x)),
    np.sin: Elementwise("sin", np.sin, lambda x, y: np.cos(x), lambda x, y: -y),
    np.cos: Elementwise("cos", np.cos, lambda x, y: -np.sin(x), lambda x, y: -y),
    np.absolute: Elementwise("abs", np.absolute, lambda x, y: np.sign(x),
                             lambda x, y: np.zeros_like(x)),
}


# ---------------------------------------------------------------------------- reductions
def _norm_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise np.exceptions.AxisError(a, ndim)
        out.append(int(a) % ndim)
    return tuple(sorted(set(out)))


class Sum:
    """``sum`` (``scale=False``) or ``mean`` (``scale=True``) over ``axis``."""

    linear = True

    def __init__(self, axis: Any = None, keepdims: bool = False, mean: bool = False) -> None:
        self.axis, self.keepdims, self.mean = axis, keepdims, mean

    def forward(self, inputs: tuple) -> tuple[np.ndarray, tuple]:
        x = np.asarray(inputs[0])
        axes = _norm_axes(self.axis, x.ndim)
        count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
        scale = 1.0 / count if self.mean and count else 1.0
        out = x.sum(axis=axes, keepdims=self.keepdims)
        if self.mean:
            out = out * np.asarray(scale, x.dtype)
        kept = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
        return np.asarray(out), (x.shape, kept, axes, scale, x.dtype)

    def _spread(self, saved: tuple, g: np.ndarray, lead: int) -> np.ndarray:
        shape, kept, _, scale, dtype = saved
        g = g.reshape(g.shape[:lead] + kept)
        if self.mean:
            g = g * np.asarray(scale, dtype)
        return np.broadcast_to(g, g.shape[:lead] + shape)

    def backward(self, saved: tuple, d: np.ndarray, needs: tuple) -> tuple:
        return (self._spread(saved, np.asarray(d), 0),)

    def tangent(self, saved: tuple, t: tuple) -> np.ndarray:
        axes, scale = saved[2], saved[3]
        out = t[0].sum(axis=tuple(a + 1 for a in axes), keepdims=self.keepdims)
        return out * np.asarray(scale, saved[4]) if self.mean else out

    def tangent_backward(self, saved: tuple, t: tuple, d: Any, td: Any, needs: tuple) -> tuple:
        return (None if td is None else self._spread(saved, td, 1),)

    def __repr__(self) -> str:
        return "mean" if self.mean else "sum"


class GetItem:
    """``x[index]`` (basic or advanced indexing); repeated indices add up in the gradient."""

    linear = True

    def __init__(self, index: Any) -> None:
        self.index = index if isinstance(index, tuple) else (index,)

    def forward(self, inputs: tuple) -> tuple[np.ndarray, tuple]:
        x = np.asarray(inputs[0])
        return np.asarray(x[self.index]), (x.shape, x.dtype)

    def _scatter(self, saved: tuple, g: np.ndarray, lead: int) -> np.ndarray:
        shape, dtype = saved
        out = np.zeros(g.shape[:lead] + shape, dtype)
        index: Any = (slice(None),) * lead + self.index
        np.add.at(out, index, g)
        return out

    def backward(self, saved: tuple, d: np.ndarray, needs: tuple) -> tuple:
        return (self._scatter(saved, np.asarray(d), 0),)

    def tangent(self, saved: tuple, t: tuple) -> np.ndarray:
        return t[0][(slice(None),) + self.index]

    def tangent_backward(self, saved: tuple, t: tuple, d: Any, td: Any, needs: tuple) -> tuple:
        return (None if td is None else self._scatter(saved, td, 1),)

    def __repr__(self) -> str:
        return f"getindex {self.index}"


class Reshape:
    linear = True

    def __init__(self, shape: tuple) -> None:
        self.shape = shape

    def forward(self, inputs: tuple) -> tuple[np.ndarray, tuple]:
        x = np.asarray(inputs[0])
        out = x.reshape(self.shape)
        return out, (x.shape, out.shape)

    def backward(self, saved: tuple, d: np.ndarray, needs: tuple) -> tuple:
        return (np.asarray(d).reshape(saved[0]),)

    def tangent(self, saved: tuple, t: tuple) -> np.ndarray:
        return t[0].reshape((t[0].shape[0],) + saved[1])

    def tangent_backward(self, saved: tuple, t: tuple, d: Any, td: Any, needs: tuple) -> tuple:
        return (None if td is None else td.reshape((td.shape[0],) + saved[0]),)

    def __repr__(self) -> str:
        return "reshape"


class Transpose:
    """``x.T`` / ``np.transpose(x, axes)``."""

    linear = True

    def __init__(self, axes: tuple | None) -> None:
        self.axes = axes

    def forward(self, inputs: tuple) -> tuple[np.ndarray, tuple]:
        x = np.asarray(inputs[0])
        axes = tuple(reversed(range(x.ndim))) if self.axes is None else tuple(
            int(a) % max(x.ndim, 1) for a in self.axes)
        return x.transpose(axes), (axes, tuple(np.argsort(axes)))

    def backward(self, saved: tuple, d: np.ndarray, needs: tuple) -> tuple:
        return (np.asarray(d).transpose(saved[1]),)

    def tangent(self, saved: tuple, t: tuple) -> np.ndarray:
        return t[0].transpose((0,) + tuple(a + 1 for a in saved[0]))

    def tangent_backward(self, saved: tuple, t: tuple, d: Any, td: Any, needs: tuple) -> tuple:
        return (None if td is None else td.transpose((0,) + tuple(a + 1 for a in saved[1])),)

    def __repr__(self) -> str:
        return "transpose"


# ---------------------------------------------------------------------------- functions
def _apply(op: Any, *inputs: Any) -> Any:
    if _tracing.any_traced(*inputs):
        return _tracing.record(op, inputs)
    return op.forward(inputs)[0]


def binary(kind: type, a: Any, b: Any) -> Any:
    """``a (op) b`` recorded on the tape (one operand at least is traced)."""
    return _tracing.record(kind(), (a if _tracing.any_traced(a) else _const(a),
                                    b if _tracing.any_traced(b) else _const(b)))


def power(x: Any, p: Any) -> Any:
    if _tracing.any_traced(p):
        raise unsupported("a traced exponent")
    if np.ndim(p) != 0:
        raise unsupported("** with an array exponent")
    p = float(p)
    if p == 2:
        return _apply(ELEMENTWISE[np.square], x)
    if p == 1:
        return x
    return _apply(Power(p), x)


def reduce(x: Any, axis: Any = None, keepdims: bool = False, *, mean: bool = False) -> Any:
    return _apply(Sum(axis, keepdims, mean), x)


def abs2(x: Any) -> Any:
    """``|x|^2`` element-wise for real ``x`` (Julia's ``abs2``): the square.

    >>> import numpy as np, fluxtree as ft
    >>> ft.gradient(lambda v: np.sum(ft.abs2(v)), np.array([1.0, -2.0]))[0]
    array([ 2., -4.])
    """
    return _apply(ELEMENTWISE[np.square], x)


def dot(a: Any, b: Any) -> Any:
    """The full inner product ``sum(a * b)`` of two arrays of one shape (Julia's ``dot``).

    >>> import numpy as np, fluxtree as ft
    >>> ft.dot(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    11.0
    >>> ft.gradient(lambda v: ft.dot(v, v), np.array([1.0, 2.0]))[0]
    array([2., 4.])
    """
    if np.shape(a) != np.shape(b):
        raise ValueError(f"dot: expected two arrays of one shape, got {np.shape(a)} and "
                         f"{np.shape(b)}.")
    if not _tracing.any_traced(a, b):
        return float(np.vdot(a, b)) if np.ndim(a) else float(np.asarray(a) * np.asarray(b))
    return reduce(binary(Mul, a, b))
