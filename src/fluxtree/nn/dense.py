"""Dense: the fully connected layer ``act(x @ weight.T + bias)``, batch first."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import _tracing, functors
from .._kernels import _dense
from . import show
from ._common import _KERNEL_DTYPES, _as_input, _record
from .activations import activation_code, activation_name, identity
from .init import glorot_uniform

__all__ = ["Dense"]

_Grads = tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]


class _Saved:
    """What Dense's derivative rules keep from ``forward``: the 2-D input x (B, in), weight,
    bias (or None), pre-activation z (the same object as y where the derivatives read y
    only), output y (B, out), the activation code, x's shape and whether the kernels apply;
    ``backward`` adds its d_out and delta, ``tangent`` its t_inputs and tz, for
    ``tangent_backward`` to reuse."""

    __slots__ = ("b", "code", "delta", "dy", "kernel", "shape", "tin", "tz", "w", "x", "y", "z")

    def __init__(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, z: np.ndarray,
                 y: np.ndarray, code: int, shape: tuple[int, ...], kernel: bool) -> None:
        self.x, self.w, self.b, self.z, self.y = x, w, b, z, y
        self.code, self.shape, self.kernel = code, shape, kernel
        self.dy: Any = None
        self.delta: np.ndarray | None = None
        self.tin: tuple | None = None
        self.tz: np.ndarray | None = None


def _np_sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * z) + 1)


def _np_derivative(code: int, z: np.ndarray, y: np.ndarray, order: int) -> np.ndarray:
    """act'(z) (order 1) or act''(z) (order 2) in NumPy, in z's dtype (float16, complex)."""
    if code in (1, 7):                                   # relu, leakyrelu
        if order == 2:
            return np.zeros_like(z)
        return np.where(z > 0, 1.0, 0.0 if code == 1 else 0.01).astype(z.dtype)
    if code == 2:
        return 1 - y * y if order == 1 else -2 * y * (1 - y * y)
    if code == 3:
        return y * (1 - y) if order == 1 else y * (1 - y) * (1 - 2 * y)
    if code == 4:
        s = _np_sigmoid(z)
        return s if order == 1 else s * (1 - s)
    if code == 5:
        k, c = math.sqrt(2 / math.pi), 0.044715
        s = _np_sigmoid(2 * k * (z + c * z * z * z))
        w = 2 * k * (1 + 3 * c * z * z)
        if order == 1:
            return s + z * s * (1 - s) * w
        return s * (1 - s) * (2 * w + z * (1 - 2 * s) * w * w + 12 * k * c * z * z)
    if code == 6:
        e = np.exp(np.where(z > 0, 0, z))
        return np.where(z > 0, 1 if order == 1 else 0, e).astype(z.dtype)
    if code == 8:
        s = _np_sigmoid(z)
        if order == 1:
            return s * (1 + z * (1 - s))
        return s * (1 - s) * (2 + z * (1 - 2 * s))
    return np.full_like(z, 1 if order == 1 else 0)


@functors.functor("weight", "bias", "activation")
@_record
class Dense:
    """A fully connected layer: ``act(x @ weight.T + bias)``, weight of shape (out, in).

    ``Dense(in, out, act=None, *, bias=True, init=glorot_uniform, rng=None, dtype=float32)``
    makes a new layer (``bias=False``: none; an array: used as given). ``Dense(weight,
    bias, act)`` wraps existing arrays as they are — no copy, no cast, so two layers built
    from one array share it (a tie). ``x`` is ``(batch, in)``, ``(in,)`` or ``(*batch, in)``;
    it is converted to the weight's dtype.

    >>> import numpy as np
    >>> d = Dense(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), np.array([0.1, 0.2, 0.3]))
    >>> d
    Dense(2 => 3)
    >>> d(np.array([[1.0, 0.0]]))
    array([[1.1, 3.2, 5.3]])
    """

    def __init__(self, *args: Any, bias: Any = True, init: Callable[..., np.ndarray] = glorot_uniform,
                 rng: np.random.Generator | None = None, dtype: Any = np.float32) -> None:
        if args and isinstance(args[0], np.ndarray):
            self._from_arrays(*args)
            return
        if not 2 <= len(args) <= 3:
            raise TypeError("Dense takes (in, out[, act]) or (weight[, bias[, act]]), got "
                            f"{len(args)} positional arguments.")
        n_in, n_out = args[0], args[1]
        for name, n in (("in", n_in), ("out", n_out)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
                raise TypeError(f"Dense: {name} must be a non-negative int, got {n!r}.")
        weight = init(int(n_out), int(n_in), rng=rng, dtype=dtype)
        self._from_arrays(weight, bias, args[2] if len(args) == 3 else None)

    def _from_arrays(self, weight: np.ndarray, bias: Any = True, activation: Any = None) -> None:
        if weight.ndim != 2:
            raise ValueError(f"Dense: weight must be a matrix (out, in), got shape {weight.shape}.")
        n_out = weight.shape[0]
        if bias is True:
            bias = np.zeros(n_out, weight.dtype)
        elif bias is not False:
            if not isinstance(bias, np.ndarray):
                bias = np.asarray(bias, weight.dtype)
            if bias.shape != (n_out,):
                raise ValueError(f"Dense: expected bias of shape ({n_out},), got shape "
                                 f"{bias.shape}.")
        if activation is None:
            activation = identity
        elif not callable(activation):
            raise TypeError(f"Dense: the activation must be callable, got {activation!r}.")
        self.weight, self.bias, self.activation = weight, bias, activation

    def __call__(self, x: Any) -> Any:
        w = self.weight
        b = self.bias
        code = activation_code(self.activation)
        out = _dense.dense_apply(x, w, None if b is False else b, 0 if code is None else code)
        if out is not None:                     # the hot path: checks made in C
            return out if code is not None else self.activation(out)
        if _tracing.any_traced(x, w, b):        # on a tape: recorded as one op
            out = _tracing.record(self, (x, w, None if b is False else b))
            return out if code is not None else self.activation(out)
        x = _as_input(x, w.dtype, self)
        x2 = np.ascontiguousarray(self._matrix(x, w))
        lead = x.shape[:-1]
        b = None if self.bias is False else self.bias
        if w.dtype in _KERNEL_DTYPES and w.flags.c_contiguous and (
                b is None or (b.dtype == w.dtype and b.flags.c_contiguous)):
            out = np.empty((x2.shape[0], w.shape[0]), w.dtype)
            _dense.dense_forward(x2, w, b, code if code is not None else 0, out)
            if code is None:
                out = self.activation(out)
        else:                          # float16, complex or strided weights: NumPy
            out = x2 @ w.T
            if b is not None:
                out += b
            out = self.activation(out)
        return out.reshape(*lead, w.shape[0])

    def _matrix(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """x of shape (*batch, in) as a (B, in) matrix (a view where possible)."""
        if x.ndim == 0 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"{self!r} expects an input with {w.shape[1]} features on its "
                             f"last axis, got shape {x.shape}.")
        return x.reshape(-1, w.shape[1])

    # ------------------------------------------------------------------ op rules
    # inputs = (x, weight, bias or None); the tape passes plain arrays.  float32/float64
    # parameters of one dtype run the compiled kernels (on contiguous copies where needed);
    # others (float16, complex, a bias of another dtype) the same formulas in NumPy.

    def forward(self, inputs: Sequence[Any]) -> tuple[np.ndarray, _Saved]:
        """The op's forward rule: ``act(x @ w.T + b)`` for ``inputs = (x, w, b or None)``,
        and what the derivative rules need (an activation without a kernel code is left
        out: ``__call__`` applies it as an op of its own).

        >>> d = Dense(np.array([[1.0, 2.0]]), np.array([0.5]))
        >>> y, saved = d.forward((np.array([[1.0, 1.0]]), d.weight, d.bias))
        >>> y
        array([[3.5]])
        >>> d.backward(saved, np.ones((1, 1)), (True, True, True))
        (array([[1., 2.]]), array([[1., 1.]]), array([1.]))
        """
        x, w, b = inputs
        x = _as_input(x, w.dtype, self)
        x2 = self._matrix(x, w)
        code = activation_code(self.activation)
        fn = identity if code is None else self.activation
        code = 0 if code is None else code
        kernel = w.dtype in _KERNEL_DTYPES and (b is None or b.dtype == w.dtype)
        if kernel:
            w = np.ascontiguousarray(w)
            x2 = np.ascontiguousarray(x2)
            b = None if b is None else np.ascontiguousarray(b)
            y = np.empty((x2.shape[0], w.shape[0]), w.dtype)
            if code in _dense.PRE_CODES:
                z = np.empty_like(y)
                _dense.dense_forward(x2, w, b, code, y, z)
            else:
                z = y
                _dense.dense_forward(x2, w, b, code, y)
        else:
            z = x2 @ w.T
            if b is not None:
                z = z + b
            y = fn(z)
        return y.reshape(*x.shape[:-1], w.shape[0]), _Saved(x2, w, b, z, y, code, x.shape,
                                                             kernel)

    def backward(self, saved: _Saved, d_out: Any, needs: Sequence[bool]) -> _Grads:
        """The vector-Jacobian product: (dx, dw, db) for the adjoint ``d_out`` of y, None
        where ``needs`` is False (and for an absent bias).  With ``delta = d_out *
        act'(z)``: ``dx = delta @ w`` (in x's shape), ``dw = delta.T @ x``, ``db`` the sum
        of delta over the batch."""
        s = saved
        w, b, code = s.w, s.b, s.code
        g = np.asarray(d_out).reshape(s.y.shape)
        if s.kernel:
            g = np.ascontiguousarray(g, s.y.dtype)
            delta = g if code == 0 else np.empty_like(g)
            dx = np.empty_like(s.x) if needs[0] else None
            dw = np.empty_like(w) if needs[1] else None
            db = np.empty(w.shape[0], w.dtype) if needs[2] and b is not None else None
            _dense.dense_backward(s.x, w, s.z, s.y, g, code, delta, dx, dw, db)
        else:
            delta = g if code == 0 else g * _np_derivative(code, s.z, s.y, 1)
            dx = (delta @ w).astype(s.x.dtype, copy=False) if needs[0] else None
            dw = (delta.T @ s.x).astype(w.dtype, copy=False) if needs[1] else None
            db = delta.sum(0).astype(b.dtype, copy=False) if needs[2] and b is not None else None
        s.dy, s.delta = d_out, delta
        return (None if dx is None else dx.reshape(s.shape)), dw, db

    def tangent(self, saved: _Saved, t_inputs: Sequence[Any]) -> np.ndarray | None:
        """The Jacobian-vector product for a block of k tangents ``t_inputs = (tx (k, *batch,
        in), tw (k, out, in), tb (k, out))``, each None when absent: ``ty = act'(z) * (tx @
        w.T + x @ tw.T + tb)`` of shape (k, *batch, out); None when no tangent is given."""
        s = saved
        out = self._tangent(s, t_inputs, True)
        if out is None:
            return None
        tz, ty = out
        if s.code in _dense.D2_CODES:           # tangent_backward needs tz
            s.tin, s.tz = tuple(t_inputs), tz
        return ty.reshape(tz.shape[0], *s.shape[:-1], s.w.shape[0])

    def _tangent(self, s: _Saved, t_inputs: Sequence[Any],
                 act: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """(tz, ty): tz = tx @ w.T + x @ tw.T + tb of shape (k, B, out) and, with ``act``,
        ty = act'(z) * tz (else ty is tz); None without tangents.  Where act'' is zero, nothing
        reads tz later, and the kernel overwrites it with ty."""
        tx, tw, tb = t_inputs
        if s.b is None:
            tb = None
        first = tx if tx is not None else tw if tw is not None else tb
        if first is None:
            return None
        k = first.shape[0]
        (B, nin), nout = s.x.shape, s.w.shape[0]
        act = act and s.code != 0
        if s.kernel:
            dt = s.y.dtype
            if tx is not None:
                tx = np.ascontiguousarray(tx, dt).reshape(k, B, nin)
            if tw is not None:
                tw = np.ascontiguousarray(tw, dt)
            if tb is not None:
                tb = np.ascontiguousarray(tb, dt)
            tz = np.empty((k, B, nout), dt)
            ty = (np.empty_like(tz) if s.code in _dense.D2_CODES else tz) if act else None
            _dense.dense_tangent(s.x, s.w, s.z, s.y, s.code, tx, tw, tb, tz, ty)
            return tz, tz if ty is None else ty
        tz = np.zeros((k, B, nout), s.y.dtype)
        if tx is not None:
            tz += np.reshape(tx, (k, B, nin)) @ s.w.T
        if tw is not None:
            tz += s.x @ np.swapaxes(tw, 1, 2)
        if tb is not None:
            tz += np.reshape(tb, (k, 1, nout))
        return tz, tz * _np_derivative(s.code, s.z, s.y, 1) if act else tz

    def tangent_backward(self, saved: _Saved, t_inputs: Sequence[Any], d_out: Any, t_d_out: Any,
                         needs: Sequence[bool]) -> _Grads:
        """The tangent of ``backward`` (Pearlmutter's R-operator) for the block of k tangents
        ``t_inputs`` and the tangent ``t_d_out`` (k, *batch, out) of the adjoint: with
        ``r = t_d_out * act'(z) + d_out * act''(z) * tz`` and ``delta = d_out * act'(z)``,
        ``tdx = r @ w + delta @ tw``, ``tdw = r.T @ x + delta.T @ tx``, ``tdb = sum of r``
        (k leading).  ``d_out`` None means zero (the Gauss-Newton product), so does
        ``t_d_out`` None; all None when there is no tangent at all."""
        s = saved
        w, b, code = s.w, s.b, s.code
        (B, nin), nout = s.x.shape, w.shape[0]
        tx, tw, tb = t_inputs
        has_t = tx is not None or tw is not None or (tb is not None and b is not None)
        if t_d_out is None and not has_t:
            return None, None, None
        g = delta = tz = None
        if d_out is not None and has_t:
            g = np.asarray(d_out).reshape(B, nout)
            if s.kernel:
                g = np.ascontiguousarray(g, s.y.dtype)
            delta = s.delta if s.dy is d_out and s.delta is not None else self._delta(s, g)
            if code in _dense.D2_CODES:
                tin = s.tin
                same = tin is not None and all(u is v for u, v in zip(tin, t_inputs))
                out = None if same else self._tangent(s, t_inputs, False)
                tz = s.tz if out is None else out[0]
        if t_d_out is not None:
            k = t_d_out.shape[0]
        else:
            k = next(t for t in t_inputs if t is not None).shape[0]
        tdy = None if t_d_out is None else np.reshape(t_d_out, (k, B, nout))
        if s.kernel:
            dt = s.y.dtype
            if tdy is not None:
                tdy = np.ascontiguousarray(tdy, dt)
            if tx is not None:
                tx = np.ascontiguousarray(tx, dt).reshape(k, B, nin)
            if tw is not None:
                tw = np.ascontiguousarray(tw, dt)
            if tz is not None:            # r overwrites tz, which nothing reads afterwards
                r = tz
                s.tin = s.tz = None
            elif code == 0 and tdy is not None:
                r = tdy
            else:
                r = np.empty((k, B, nout), dt)
            tdx = np.empty((k, B, nin), dt) if needs[0] else None
            tdw = np.empty((k, nout, nin), dt) if needs[1] else None
            tdb = np.empty((k, nout), dt) if needs[2] and b is not None else None
            _dense.dense_tangent_backward(s.x, w, s.z, s.y, code, delta, g, tx, tw, tz, tdy, r,
                                          tdx, tdw, tdb)
        else:
            r = np.zeros((k, B, nout), s.y.dtype)
            if tdy is not None:
                r = r + (tdy if code == 0 else tdy * _np_derivative(code, s.z, s.y, 1))
            if tz is not None:
                r = r + g * _np_derivative(code, s.z, s.y, 2) * tz
            if tx is not None:
                tx = np.reshape(tx, (k, B, nin))
            tdx = tdw = tdb = None
            if needs[0]:
                tdx = r @ w
                if delta is not None and tw is not None:
                    tdx = tdx + delta @ tw
                tdx = tdx.astype(s.x.dtype, copy=False)
            if needs[1]:
                tdw = np.swapaxes(r, 1, 2) @ s.x
                if delta is not None and tx is not None:
                    tdw = tdw + delta.T @ tx
                tdw = tdw.astype(w.dtype, copy=False)
            if needs[2] and b is not None:
                tdb = r.sum(1).astype(b.dtype, copy=False)
        return (None if tdx is None else tdx.reshape(k, *s.shape)), tdw, tdb

    def _delta(self, s: _Saved, g: np.ndarray) -> np.ndarray:
        """delta = g * act'(z) for a d_out that ``backward`` did not see."""
        if s.code == 0:
            return g
        if not s.kernel:
            return g * _np_derivative(s.code, s.z, s.y, 1)
        delta = np.empty_like(g)
        _dense.dense_backward(s.x, s.w, s.z, s.y, g, s.code, delta, None, None, None)
        return delta

    def __repr__(self) -> str:
        parts = [f"{self.weight.shape[1]} => {self.weight.shape[0]}"]
        name = activation_name(self.activation)
        if name is not None:
            parts.append(name)
        text = ", ".join(parts)
        return f"Dense({text}; bias=False)" if self.bias is False else f"Dense({text})"

    __str__ = show.layer_str
