"""``linearize``: one recorded evaluation that serves gradients and many Hessian products.

scipy's trust-region methods ask for ``fun``, ``jac`` and then several ``hessp`` at one
point.  A ``Linearization`` records the forward pass once; the backward sweep runs once
(on the first ``gradient`` or product) and every ``hvp`` then costs one tangent sweep and
one tangent-backward sweep over the saved values.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from .._kernels._memory import block_cache
from ..nn.mode import frozen_stats, training
from .tape import Tape
from .tracked import Tracked

__all__ = ["Linearization", "linearize"]


def as_point(x: Any, what: str) -> np.ndarray:
    """``x`` as a real floating array (integers become float64); anything else a TypeError."""
    if isinstance(x, Tracked):
        raise TypeError(f"{what}: nested derivatives are not supported; use hvp or hessian "
                        f"for second order.")
    a = np.asarray(x)
    if a.dtype.kind in "biu":
        return a.astype(np.float64)
    if a.dtype.kind != "f":
        raise TypeError(f"{what}: expected a real floating-point array, got dtype {a.dtype}.")
    return a


def scalar_output(out: Any, what: str) -> Any:
    """Check that ``f`` returned one number (traced or constant) and give its value."""
    value = out.value if isinstance(out, Tracked) else out
    if np.size(value) != 1:
        raise ValueError(f"{what}: the function must return a scalar, got shape "
                         f"{np.shape(value)}.")
    return np.asarray(value).reshape(())[()]


def block(v: Any, shape: tuple, dtype: np.dtype, what: str) -> tuple[np.ndarray, bool]:
    """Tangents ``v`` (``shape``, or ``shape + (k,)`` for a block) as a ``(k, *shape)`` array."""
    v = np.asarray(v)
    if v.dtype.kind not in "biuf":
        raise TypeError(f"{what}: expected a real vector, got dtype {v.dtype}.")
    if v.shape == shape:
        return np.ascontiguousarray(v.reshape((1,) + shape), dtype=dtype), False
    if v.ndim == len(shape) + 1 and v.shape[:-1] == shape:
        return np.ascontiguousarray(np.moveaxis(v, -1, 0), dtype=dtype), True
    raise ValueError(f"{what}: expected v of shape {shape} or {shape + ('k',)}, got {v.shape}.")


def _exclusive(t: np.ndarray, dtype: np.dtype) -> bool:
    """Whether ``t`` (a sweep's result) is a contiguous array of ``dtype`` that only the
    caller's reference and the value slot it came from hold, over memory of its own or of
    a base array that only it holds."""
    base = t.base
    return (type(t) is np.ndarray and t.dtype == dtype and t.flags.c_contiguous
            and t.flags.writeable and sys.getrefcount(t) <= 3
            and (base is None or (type(base) is np.ndarray and sys.getrefcount(base) <= 2)))


def unblock(t: np.ndarray | None, k: int, shape: tuple, dtype: np.dtype, is_block: bool,
            out: np.ndarray | None) -> np.ndarray:
    """The inverse of ``block``: ``(k, *shape)`` back to ``shape`` or ``shape + (k,)``."""
    target_shape = shape + (k,) if is_block else shape
    if out is None and t is not None and not is_block and _exclusive(t, dtype):
        return t.reshape(shape)                 # nothing else holds it: hand it over
    if out is None:
        out = np.empty(target_shape, dtype)
    elif out.shape != target_shape:
        raise ValueError(f"out must have shape {target_shape}, got {out.shape}.")
    if t is None:
        out[...] = 0
    elif is_block:
        out[...] = np.moveaxis(t, 0, -1)
    else:
        out[...] = t.reshape(shape)
    return out


class Linearization:
    """A function recorded at one point ``x``: its value, gradient and curvature products.

    Made by ``linearize``; ``x`` must not change while it is in use (it is not copied).
    """

    def __init__(self, tape: Tape, x: Tracked, out: Any, split: int | None) -> None:
        self._tape, self._x, self._out, self._split = tape, x, out, split
        self.value = scalar_output(out, "linearize")
        self._adjoints = "none"     # "none", "loss" (after split), "curvature" or "all"

    @property
    def x(self) -> np.ndarray:
        """The point the function was recorded at."""
        return self._x.value

    def _ensure_adjoints(self, need: str) -> None:
        if self._adjoints == "all" or self._adjoints == need:
            return
        if isinstance(self._out, Tracked):
            start = self._split if need == "loss" and self._split is not None else 0
            self._tape.backward(self._out, start, curvature_only=need == "curvature")
        self._adjoints = need

    def gradient(self, out: np.ndarray | None = None) -> np.ndarray:
        """The gradient at ``x`` (a new array, or written into ``out``)."""
        with block_cache():
            self._ensure_adjoints("all")
        x = self._x.value
        g = self._x.adj
        if out is None:
            return np.zeros_like(x) if g is None else np.array(g, dtype=x.dtype, copy=True)
        if out.shape != x.shape:
            raise ValueError(f"out must have shape {x.shape}, got {out.shape}.")
        out[...] = 0 if g is None else g
        return out

    def _product(self, v: Any, out: np.ndarray | None, gauss_newton: bool) -> np.ndarray:
        x = self._x.value
        what = "gauss_newton_vp" if gauss_newton else "hvp"
        t, is_block = block(v, x.shape, x.dtype, what)
        k = t.shape[0]
        if not isinstance(self._out, Tracked):
            return unblock(None, k, x.shape, x.dtype, is_block, out)
        with block_cache():
            self._ensure_adjoints("loss" if gauss_newton else "curvature")
            tape = self._tape
            tape.propagate_tangents({id(self._x): t})
            tape.backward_tangents(self._split if gauss_newton and self._split is not None
                                   else 0)
        return unblock(self._x.tadj, k, x.shape, x.dtype, is_block, out)

    def hvp(self, v: Any, out: np.ndarray | None = None) -> np.ndarray:
        """The exact Hessian-vector product ``H v`` at ``x``; ``v`` of ``x``'s shape, or a
        block ``x.shape + (k,)`` of k vectors (one sweep for all of them)."""
        return self._product(v, out, False)

    def gauss_newton_vp(self, v: Any, out: np.ndarray | None = None) -> np.ndarray:
        """The Gauss-Newton product ``J^T H_loss J v`` (positive semi-definite for a convex
        loss); needs ``linearize(loss, x, inner=model_fn)``."""
        if self._split is None:
            raise ValueError("gauss_newton_vp needs the model and the loss apart: "
                             "linearize(loss, x, inner=model_fn).")
        return self._product(v, out, True)


def linearize(f: Callable[[Any], Any], x: Any, *, inner: Callable[[Any], Any] | None = None,
              update_stats: bool = False) -> Linearization:
    """Record ``f(x)`` (or ``f(inner(x))``) once, for its gradient and Hessian products.

    Layers whose ``active`` is None run in training mode; BatchNorm's running statistics
    stay as they are unless ``update_stats=True``.

    >>> import numpy as np, fluxtree as ft
    >>> lin = ft.autodiff.linearize(lambda v: np.sum(v ** 3), np.array([1.0, 2.0]))
    >>> float(lin.value), lin.gradient(), lin.hvp(np.array([1.0, 0.0]))
    (9.0, array([ 3., 12.]), array([6., 0.]))
    """
    x = as_point(x, "linearize")
    tape = Tape()
    xt = tape.watch(x)
    split = None
    with training(), frozen_stats(not update_stats), block_cache():
        if inner is None:
            out = f(xt)
        else:
            z = inner(xt)
            split = len(tape.nodes)
            out = f(z)
    return Linearization(tape, xt, out, split)
