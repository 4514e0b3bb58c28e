"""``Tracked``: a value being differentiated, which records what is done to it.

Inside ``gradient``, ``hvp`` and friends, the parameters (or the flat vector) the function
receives are ``Tracked``.  Layers, losses and ``Restructure`` recognise them; arithmetic,
indexing and the NumPy functions listed in ``array_ops.SUPPORTED`` record themselves;
anything else raises a ``TypeError`` instead of silently dropping the derivative.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _tracing
from . import array_ops as ops


class Tracked(_tracing.Traced):
    """A traced array: ``.value`` is the plain NumPy value (read it to stop tracing).

    ``tape`` is a ``weakref`` to the tape that records it, so that a finished evaluation
    is freed by reference counting alone (no cycles for the garbage collector).
    """

    __slots__ = ("adj", "tadj", "tan", "tape", "value")
    __array_priority__ = 1000

    def __init__(self, value: Any, tape: Any) -> None:
        self.value = value
        self.tape = tape            # a weak reference: the tape holds its values, not back
        self.adj: Any = None
        self.tan: Any = None
        self.tadj: Any = None

    # -- what it looks like ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return np.shape(self.value)

    @property
    def ndim(self) -> int:
        return np.ndim(self.value)

    @property
    def size(self) -> int:
        return int(np.size(self.value))

    @property
    def dtype(self) -> np.dtype:
        return np.asarray(self.value).dtype

    def __len__(self) -> int:
        return len(self.value)

    def __repr__(self) -> str:
        return f"Tracked({self.value!r})"

    # -- arithmetic ------------------------------------------------------------------
    def __add__(self, other: Any) -> Any:
        return ops.binary(ops.Add, self, other)

    def __radd__(self, other: Any) -> Any:
        return ops.binary(ops.Add, other, self)

    def __sub__(self, other: Any) -> Any:
        return ops.binary(ops.Sub, self, other)

    def __rsub__(self, other: Any) -> Any:
        return ops.binary(ops.Sub, other, self)

    def __mul__(self, other: Any) -> Any:
        return ops.binary(ops.Mul, self, other)

    def __rmul__(self, other: Any) -> Any:
        return ops.binary(ops.Mul, other, self)

    def __truediv__(self, other: Any) -> Any:
        return ops.binary(ops.Div, self, other)

    def __rtruediv__(self, other: Any) -> Any:
        return ops.binary(ops.Div, other, self)

    def __matmul__(self, other: Any) -> Any:
        return ops.binary(ops.MatMul, self, other)

    def __rmatmul__(self, other: Any) -> Any:
        return ops.binary(ops.MatMul, other, self)

    def __neg__(self) -> Any:
        return _tracing.record(ops.ELEMENTWISE[np.negative], (self,))

    def __pos__(self) -> Tracked:
        return self

    def __abs__(self) -> Any:
        return _tracing.record(ops.ELEMENTWISE[np.absolute], (self,))

    def __pow__(self, p: Any) -> Any:
        return ops.power(self, p)

    def __rpow__(self, base: Any) -> Any:
        raise ops.unsupported("a traced exponent")

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, Tracked):
            raise ops.unsupported("indexing with a traced index")
        return _tracing.record(ops.GetItem(index), (self,))

    def __setitem__(self, index: Any, value: Any) -> None:
        raise ops.unsupported("item assignment (traced values are immutable)")

    def reshape(self, *shape: Any) -> Any:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _tracing.record(ops.Reshape(tuple(shape)), (self,))

    @property
    def T(self) -> Any:
        return _tracing.record(ops.Transpose(None), (self,))

    def transpose(self, *axes: Any) -> Any:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _tracing.record(ops.Transpose(tuple(axes) or None), (self,))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"fluxtree.autodiff: a traced value has no attribute {name!r} "
                             f"(no derivative rule for it). Supported: {ops.SUPPORTED}. Use "
                             f"`.value` to read the plain array.")

    def sum(self, axis: Any = None, keepdims: bool = False) -> Any:
        return ops.reduce(self, axis, keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Any:
        return ops.reduce(self, axis, keepdims, mean=True)

    # -- comparisons give plain arrays (they have no derivative) ---------------------
    def __lt__(self, other: Any) -> Any:
        return self.value < _plain(other)

    def __le__(self, other: Any) -> Any:
        return self.value <= _plain(other)

    def __gt__(self, other: Any) -> Any:
        return self.value > _plain(other)

    def __ge__(self, other: Any) -> Any:
        return self.value >= _plain(other)

    __hash__ = object.__hash__

    # -- NumPy protocols -------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise ops.unsupported("conversion to a NumPy array (np.asarray, np.array or a "
                              "function without a derivative rule)")

    def __float__(self) -> float:
        raise ops.unsupported("float()")

    def __bool__(self) -> bool:
        raise ops.unsupported("truth testing")

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method != "__call__" or kwargs:
            raise ops.unsupported(f"np.{ufunc.__name__}.{method}" if method != "__call__"
                                  else f"np.{ufunc.__name__} with {sorted(kwargs)}")
        kind = _UFUNC_BINARY.get(ufunc)
        if kind is not None:
            return ops.binary(kind, *inputs)
        if ufunc is np.power:
            return ops.power(inputs[0], inputs[1])
        op = ops.ELEMENTWISE.get(ufunc)
        if op is not None:
            return _tracing.record(op, inputs)
        raise ops.unsupported(f"np.{ufunc.__name__}")

    def __array_function__(self, func: Any, types: Any, args: tuple, kwargs: dict) -> Any:
        rule = _FUNCTIONS.get(func)
        if rule is None:
            raise ops.unsupported(f"np.{func.__name__}")
        return rule(*args, **kwargs)


def _plain(x: Any) -> Any:
    return x.value if isinstance(x, Tracked) else x


_UFUNC_BINARY = {np.add: ops.Add, np.subtract: ops.Sub, np.multiply: ops.Mul,
                 np.true_divide: ops.Div, np.matmul: ops.MatMul}


def _sum(x: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False,
         **kw: Any) -> Any:
    if dtype is not None or out is not None or kw:
        raise ops.unsupported("np.sum with dtype, out, initial or where")
    return ops.reduce(x, axis, keepdims)


def _mean(x: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False,
          **kw: Any) -> Any:
    if dtype is not None or out is not None or kw:
        raise ops.unsupported("np.mean with dtype, out or where")
    return ops.reduce(x, axis, keepdims, mean=True)


def _npdot(a: Any, b: Any, out: Any = None) -> Any:
    if out is not None:
        raise ops.unsupported("np.dot with out")
    if np.ndim(_plain(a)) == 1 and np.ndim(_plain(b)) == 1:
        return ops.dot(a, b)
    return ops.binary(ops.MatMul, a, b)


def _transpose(x: Any, axes: Any = None) -> Any:
    return x.transpose(axes) if axes is not None else x.T


def _reshape(x: Any, shape: Any, **kw: Any) -> Any:
    if kw or not isinstance(x, Tracked):
        raise ops.unsupported("np.reshape with order or copy")
    return x.reshape(shape)


_FUNCTIONS: dict[Any, Callable[..., Any]] = {np.sum: _sum, np.mean: _mean, np.dot: _npdot, np.vdot: ops.dot,
              np.reshape: _reshape, np.transpose: _transpose, np.shape: lambda x: np.shape(_plain(x)),
              np.ndim: lambda x: np.ndim(_plain(x)), np.size: lambda x, axis=None: np.size(
                  _plain(x), axis)}
