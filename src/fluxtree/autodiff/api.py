"""The public derivative functions: ``gradient``, ``value_and_gradient``, ``jvp``, ``hvp``,
``hessian`` and ``gauss_newton_vp``."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import flat, functors
from .._kernels._memory import block_cache
from ..nn.mode import frozen_stats, training
from .linearize import as_point, block, linearize, scalar_output, unblock
from .tape import Tape
from .tracked import Tracked

__all__ = ["gauss_newton_vp", "gradient", "hessian", "hvp", "jvp", "value_and_gradient"]

#: Memory the tangent blocks of one ``hessian`` sweep may take; more columns run in chunks.
HESSIAN_BLOCK_BYTES = 256 * 2**20


class _Watched:
    """How one argument of ``gradient`` was traced, and how to read its gradient back."""

    __slots__ = ("arg", "params", "tracked")

    def __init__(self, arg: Any, params: list | None, tracked: list) -> None:
        self.arg, self.params, self.tracked = arg, params, tracked

    def gradient(self) -> Any:
        if not self.tracked:
            return None
        if self.params is None:                          # a plain array argument
            g = _owned(self.tracked[0])
            return np.zeros_like(self.arg) if g is None else g
        grads = {id(p): _owned(t) for p, t in zip(self.params, self.tracked)}
        return functors.fmapstructure(lambda leaf: grads.get(id(leaf)), self.arg)


def _owned(t: Tracked) -> np.ndarray | None:
    """The adjoint of ``t`` as an array of its own: adjoints may be views or be shared
    between values, so it is copied unless nothing else can reach it (a base array that
    only ``t`` references, which is then handed over as it is)."""
    g = t.adj
    if g is None:
        return None
    t.adj = None
    if (type(g) is np.ndarray and g.base is None and g.flags.writeable and g.flags.c_contiguous
            and g.dtype == t.value.dtype and sys.getrefcount(g) == 2):
        return g
    return np.array(g, dtype=t.value.dtype, copy=True)


def _watch(tape: Tape, arg: Any, position: int) -> tuple[Any, _Watched]:
    if isinstance(arg, Tracked):
        raise TypeError("gradient: nested derivatives are not supported; use hvp or hessian "
                        "for second order.")
    if isinstance(arg, np.ndarray):
        if arg.dtype.kind == "f":
            t = tape.watch(arg)
            return t, _Watched(arg, None, [t])
        if arg.dtype.kind == "c":
            raise TypeError(f"gradient: argument {position} is complex; fluxtree.autodiff "
                            f"differentiates real floating-point arrays only.")
        return arg, _Watched(arg, None, [])
    if functors.isleaf(arg):
        return arg, _Watched(arg, None, [])
    re = flat.restructure(arg)
    params = re.layout.params
    if not params:
        return arg, _Watched(arg, [], [])
    for path, p in zip(re.paths, params):
        if p.dtype.kind != "f":
            raise TypeError(f"gradient: the parameter at {path} of argument {position} has "
                            f"dtype {p.dtype}; fluxtree.autodiff differentiates real "
                            f"floating-point arrays only.")
    tracked = [tape.watch(p) for p in params]
    return re.with_leaves(tracked), _Watched(arg, params, tracked)


def value_and_gradient(f: Callable[..., Any], *args: Any) -> tuple[Any, tuple]:
    """``f(*args)`` (a scalar) and its gradient with respect to each argument.

    A model's gradient mirrors ``fmapstructure(model)``: dicts, tuples and lists with an
    array at each trainable parameter and None elsewhere (activations, integers, running
    statistics, parameters ``f`` did not use).  A tied parameter's gradient is the sum over
    its uses, and the same array sits at each of its positions.  A float array argument
    gets an array; anything else None.  Layers with ``active=None`` run in training mode,
    and BatchNorm updates its running statistics, as in Flux.

    >>> import numpy as np, fluxtree as ft
    >>> ft.value_and_gradient(lambda a, b: np.sum(a * b), np.array([1.0, 2.0]), 3.0)
    (np.float64(9.0), (array([3., 3.]), None))
    """
    tape = Tape()
    traced, watched = [], []
    for i, a in enumerate(args):
        t, w = _watch(tape, a, i)
        traced.append(t)
        watched.append(w)
    with training(), block_cache():
        out = f(*traced)
        value = scalar_output(out, "gradient")
        if isinstance(out, Tracked):
            tape.backward(out)
        return value, tuple(w.gradient() for w in watched)


def gradient(f: Callable[..., Any], *args: Any) -> tuple:
    """The gradient of the scalar ``f(*args)`` with respect to each argument (a tuple).

    >>> import numpy as np, fluxtree as ft
    >>> m = ft.Dense(np.array([[1.0, 2.0]]), np.array([0.5]))
    >>> g = ft.gradient(lambda m: np.sum(m(np.array([[1.0, 1.0], [2.0, 0.0]])) ** 2), m)
    >>> g[0]["weight"], g[0]["bias"], g[0]["activation"]
    (array([[17.,  7.]]), array([12.]), None)
    """
    return value_and_gradient(f, *args)[1]


def jvp(f: Callable[[Any], Any], x: Any, v: Any) -> tuple[np.ndarray, np.ndarray]:
    """``f(x)`` and the Jacobian-vector product ``J v`` (forward mode); ``v`` has ``x``'s
    shape, or ``x.shape + (k,)`` for k vectors (then the result has a trailing k axis).
    The model is not modified (BatchNorm's running statistics stay).

    >>> import numpy as np, fluxtree as ft
    >>> ft.jvp(lambda v: v ** 2, np.array([1.0, 3.0]), np.array([1.0, 1.0]))
    (array([1., 9.]), array([2., 6.]))
    """
    x = as_point(x, "jvp")
    t, is_block = block(v, x.shape, x.dtype, "jvp")
    tape = Tape()
    xt = tape.watch(x)
    with training(), frozen_stats(), block_cache():
        out = f(xt)
        if not isinstance(out, Tracked):
            value = np.asarray(out)
            return value, unblock(None, t.shape[0], value.shape, value.dtype, is_block, None)
        tape.propagate_tangents({id(xt): t})
        value = np.asarray(out.value)
        return value, unblock(out.tan, t.shape[0], value.shape, value.dtype, is_block, None)


def hvp(f: Callable[[Any], Any], x: Any, v: Any) -> np.ndarray:
    """The exact Hessian-vector product of the scalar ``f`` at ``x``: ``v`` of ``x``'s
    shape gives ``H v``; a block ``x.shape + (k,)`` gives all k products in one sweep.
    The model is not modified.

    >>> import numpy as np, fluxtree as ft
    >>> ft.hvp(lambda v: np.sum(v ** 3), np.array([1.0, 2.0]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    array([[ 6.,  0.],
           [ 0., 12.]])
    """
    return linearize(f, x).hvp(v)


def hessian(f: Callable[[Any], Any], x: Any) -> np.ndarray:
    """The Hessian of the scalar ``f`` at ``x``, of shape ``x.shape + x.shape``: the
    products with all unit vectors in one batched sweep (in chunks past
    ``HESSIAN_BLOCK_BYTES`` of tangents).  The model is not modified.

    >>> import numpy as np, fluxtree as ft
    >>> ft.hessian(lambda v: v[0] * v[1] ** 2, np.array([1.0, 3.0]))
    array([[0., 6.],
           [6., 2.]])
    """
    lin = linearize(f, x)
    x = lin.x
    n = x.size
    per_column = sum(_nbytes(node.outputs) for node in lin._tape.nodes) * 3 + 1
    chunk = max(1, min(n, HESSIAN_BLOCK_BYTES // per_column))
    H = np.empty((n, n), x.dtype)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        E = np.zeros((n, stop - start), x.dtype)
        E[np.arange(start, stop), np.arange(stop - start)] = 1
        H[:, start:stop] = lin.hvp(E.reshape(x.shape + (stop - start,))).reshape(n, -1)
    return H.reshape(x.shape + x.shape)


def _nbytes(outputs: Any) -> int:
    if isinstance(outputs, list):
        return sum(o.value.nbytes for o in outputs)
    return int(np.asarray(outputs.value).nbytes)


def gauss_newton_vp(model_fn: Callable[[Any], Any], loss: Callable[[Any], Any], x: Any,
                    v: Any) -> np.ndarray:
    """The Gauss-Newton product ``J^T H_loss J v`` of ``loss(model_fn(x))``, ``J`` the
    Jacobian of ``model_fn``: the Hessian without the model's second derivatives, positive
    semi-definite for a convex loss (Schraudolph 2002).  ``v`` as in ``hvp``.

    >>> import numpy as np, fluxtree as ft
    >>> ft.gauss_newton_vp(lambda v: v ** 2, lambda z: np.sum(z ** 2), np.array([1.0, 2.0]),
    ...                    np.array([1.0, 0.0]))
    array([8., 0.])
    """
    return linearize(loss, x, inner=model_fn).gauss_newton_vp(v)

