"""BatchNorm: normalisation over axis 1 with running statistics, batch first."""
from __future__ import annotations

from typing import Any, overload

import numpy as np

from .. import _tracing, functors
from .._kernels import _batchnorm
from . import show
from ._common import _KERNEL_DTYPES, _as_input, _record
from .activations import activation_code, activation_name, identity
from .mode import is_training, updates_stats

__all__ = ["BatchNorm"]


def _vector(a: Any, k: int = 0) -> np.ndarray | None:
    """``a`` as the kernels take a per-channel vector (``k`` > 0: a (k, C) block): C-ordered
    float32 or float64 (other dtypes become float64), or None."""
    if a is None:
        return None
    a = np.asarray(a)
    if k:
        a = a.reshape(k, -1)
    if a.dtype in _KERNEL_DTYPES and a.flags.c_contiguous and a.flags.aligned:
        return a
    return np.ascontiguousarray(a, np.float64)


def _blocks(tangents: tuple) -> int:
    """The number k of tangents in a block (the leading axis of any tangent given)."""
    for t in tangents:
        if t is not None:
            return int(np.shape(t)[0])
    raise ValueError("BatchNorm: a tangent rule needs at least one tangent block.")


class _Saved:
    """What BatchNorm.forward keeps for its derivative rules.

    ``x3`` is the input as the kernels read it, (batch, C, L) in float32 or float64, and
    ``shape``/``dtype`` those of x after conversion to the layer's dtype; the mean and
    1/sqrt(var + eps) used (batch or running statistics, float64); the parameters as kernel
    vectors (``gamma``/``beta``) and their own dtypes (``pdtypes``, for their gradients);
    ``batch``: the statistics are those of the batch (so depend on x); ``tstats``: the tx
    block given to ``tangent`` and the per-channel means mean(tx), mean(xh tx) it computed,
    which ``tangent_backward`` reuses for the same tx.
    """

    __slots__ = ("batch", "beta", "code", "dtype", "gamma", "invstd", "mean", "pdtypes",
                 "shape", "tstats", "x3")

    def __init__(self, x3: np.ndarray, shape: tuple, dtype: np.dtype, mean: np.ndarray,
                 invstd: np.ndarray, gamma: Any, beta: Any, pdtypes: tuple, code: int,
                 batch: bool) -> None:
        self.x3, self.shape, self.dtype, self.mean, self.invstd = x3, shape, dtype, mean, invstd
        self.gamma, self.beta, self.pdtypes = gamma, beta, pdtypes
        self.code, self.batch = code, batch
        self.tstats: tuple | None = None

    @overload
    def block(self, a: None, k: int) -> None: ...
    @overload
    def block(self, a: Any, k: int) -> np.ndarray: ...

    def block(self, a: Any, k: int) -> np.ndarray | None:
        """An array shaped like x (k > 0: a (k, *x.shape) block) as (k or 1, batch, C, L)."""
        if a is None:
            return None
        return np.ascontiguousarray(a, self.x3.dtype).reshape((k or 1,) + self.x3.shape)

    def as_x(self, a: np.ndarray, k: int = 0) -> np.ndarray:
        """A kernel result shaped like x (k > 0: with a leading block axis) in its dtype."""
        return a.reshape(((k,) if k else ()) + self.shape).astype(self.dtype, copy=False)

    def as_param(self, a: np.ndarray | None, i: int, k: int = 0) -> np.ndarray | None:
        """A (k or 1, C) float64 kernel result as parameter i's gradient (k > 0: a block)."""
        if a is None:
            return None
        return (a if k else a[0]).astype(self.pdtypes[i], copy=False)


@functors.functor("activation", "beta", "gamma", "running_mean", "running_var", "eps",
                  "momentum", "affine", "track_stats", "active", "channels")
@_record
class BatchNorm:
    """Batch normalisation over axis 1 of ``(batch, C)`` or ``(batch, C, *spatial)``.

    Training (``active=True``, or ``active=None`` inside ``training()``/``gradient``) uses
    the batch mean and biased variance and updates the running statistics in place
    (``running_var`` with the ``m/(m-1)`` correction, as Flux), except inside
    ``frozen_stats()`` (``hvp``, ``hessian``, scipy's probes); test mode uses the running
    statistics. Only ``beta`` and ``gamma`` are trainable. Parameters are float32; ``f16``
    keeps them so. The layer is an op of ``fluxtree.autodiff`` with all four rules, so
    gradients and exact Hessian products pass through it in either mode.

    >>> import numpy as np
    >>> from fluxtree.nn import trainmode_
    >>> bn = trainmode_(BatchNorm(2))
    >>> y = bn(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32))
    >>> np.round(y[:, 0], 5) + 0.0
    array([-1.22474,  0.     ,  1.22474], dtype=float32)
    >>> bn.running_mean, bn.running_var
    (array([0.3, 0.4], dtype=float32), array([1.3, 1.3], dtype=float32))
    """

    _has_mode = True
    _f16_keeps_f32 = True
    beta: Any
    gamma: Any
    running_mean: Any
    running_var: Any

    def __init__(self, channels: int, act: Any = None, *, eps: float = 1e-5,
                 momentum: float = 0.1, affine: bool = True, track_stats: bool = True,
                 active: bool | None = None) -> None:
        if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
            raise TypeError(f"BatchNorm: channels must be a positive int, got {channels!r}.")
        if active is not None and type(active) is not bool:
            raise TypeError(f"BatchNorm: active must be True, False or None, got {active!r}.")
        c = int(channels)
        if act is not None and not callable(act):
            raise TypeError(f"BatchNorm: the activation must be callable, got {act!r}.")
        self.activation = identity if act is None else act
        self.beta = np.zeros(c, np.float32) if affine else None
        self.gamma = np.ones(c, np.float32) if affine else None
        self.running_mean = np.zeros(c, np.float32) if track_stats else None
        self.running_var = np.ones(c, np.float32) if track_stats else None
        self.eps, self.momentum = float(eps), float(momentum)
        self.affine, self.track_stats = bool(affine), bool(track_stats)
        self.active, self.channels = active, c

    def trainable(self) -> dict[str, Any]:
        return {"beta": self.beta, "gamma": self.gamma} if self.affine else {}

    def _too_small(self, x: np.ndarray) -> None:
        raise ValueError(
            f"BatchNorm expected more than 1 value per channel when training, got input "
            f"of shape {x.shape}. The batch variance of a single value is undefined; use "
            f"a larger batch or call testmode_ for inference.")

    def _dtype(self, x: np.ndarray) -> np.dtype:
        for a in (self.gamma, self.running_mean):
            if a is not None:
                return a.dtype
        return x.dtype if x.dtype in _KERNEL_DTYPES else np.dtype(np.float32)

    def __call__(self, x: Any) -> Any:
        train = is_training(self.active)
        code = activation_code(self.activation)
        rm, rv = self.running_mean, self.running_var
        if train and not updates_stats():       # batch statistics, running ones left alone
            rm = rv = None
        out = _batchnorm.batchnorm_apply(x, self.gamma, self.beta, rm, rv, self.eps,
                                         self.momentum, train, 0 if code is None else code)
        if out is None:                         # None: not the hot path (checks made in C)
            if _tracing.any_traced(x, self.gamma, self.beta):
                out = _tracing.record(self, (x, self.gamma, self.beta))
            else:
                out = self.forward((x, self.gamma, self.beta))[0]
        return out if code is not None else self.activation(out)

    # The op rules (see fluxtree._tracing); inputs are (x, gamma, beta), gamma and beta None
    # without affine.  The kernels of _batchnorm take float32/float64 data: other dtypes
    # (a float16 layer) compute in float32 and return the layer's dtype.  An activation
    # without a kernel code is not part of the op: __call__ applies it to the output.
    def forward(self, inputs: tuple) -> tuple[np.ndarray, _Saved]:
        x, gamma, beta = inputs
        x = np.asarray(x)
        dtype = self._dtype(x)
        x = _as_input(x, dtype, self)
        c = self.channels
        if x.ndim < 2 or x.shape[1] != c:
            raise ValueError(f"{self!r} expects an input of shape (batch, {c}, ...), got "
                             f"shape {x.shape}.")
        train = is_training(self.active)
        m = x.size // c
        if train and m <= 1:
            self._too_small(x)
        work = dtype if dtype in _KERNEL_DTYPES else np.dtype(np.float32)
        x3 = np.ascontiguousarray(x.reshape(x.shape[0], c, -1), work)
        code = activation_code(self.activation) or 0
        g, b = _vector(gamma), _vector(beta)
        mean, invstd = np.empty(c), np.empty(c)
        y = np.empty_like(x3)
        rm, rv = self.running_mean, self.running_var
        batch = train or rm is None
        if not batch:
            _batchnorm.batchnorm_forward(x3, g, b, _vector(rm), _vector(rv), self.eps,
                                         self.momentum, False, code, y, mean, invstd)
        else:
            update = train and rm is not None and updates_stats()
            in_place = update and _vector(rm) is rm and _vector(rv) is rv
            _batchnorm.batchnorm_forward(x3, g, b, rm if in_place else None,
                                         rv if in_place else None, self.eps, self.momentum,
                                         True, code, y, mean, invstd)
            if update and not in_place:         # running statistics the kernel cannot write
                mom = self.momentum
                var = 1.0 / invstd**2 - self.eps
                rm[...] = (1 - mom) * rm + mom * mean
                rv[...] = (1 - mom) * rv + mom * (m / (m - 1)) * var
        pdtypes = tuple(None if a is None else np.asarray(a).dtype for a in (gamma, beta))
        saved = _Saved(x3, x.shape, dtype, mean, invstd, g, b, pdtypes, code, batch)
        return y.reshape(x.shape).astype(dtype, copy=False), saved

    def backward(self, saved: _Saved, d_out: Any, needs: tuple) -> tuple:
        s = saved
        c = self.channels
        dx = np.empty((1,) + s.x3.shape, s.x3.dtype) if needs[0] else None
        dg = np.empty((1, c)) if needs[1] and s.gamma is not None else None
        db = np.empty((1, c)) if needs[2] and s.beta is not None else None
        if dx is None and dg is None and db is None:
            return (None, None, None)
        _batchnorm.batchnorm_backward(s.x3, s.block(d_out, 0), s.mean, s.invstd, s.gamma,
                                      s.beta, s.code, s.batch, dx, dg, db)
        return (None if dx is None else s.as_x(dx[0]), s.as_param(dg, 0), s.as_param(db, 1))

    def tangent(self, saved: _Saved, t_inputs: tuple) -> np.ndarray:
        s = saved
        tx, tg, tb = t_inputs
        k = _blocks(t_inputs)
        tstats = np.empty((2, k, self.channels)) if s.batch and tx is not None else None
        ty = np.empty((k,) + s.x3.shape, s.x3.dtype)
        _batchnorm.batchnorm_tangent(s.x3, s.mean, s.invstd, s.gamma, s.beta, s.code, s.batch,
                                     s.block(tx, k), _vector(tg, k), _vector(tb, k), ty, tstats)
        s.tstats = None if tstats is None else (tx, tstats)
        return s.as_x(ty, k)

    def tangent_backward(self, saved: _Saved, t_inputs: tuple, d_out: Any, t_d_out: Any,
                         needs: tuple) -> tuple:
        s = saved
        c = self.channels
        tx, tg, tb = t_inputs
        k = _blocks(t_inputs + (t_d_out,))
        rdx = np.empty((k,) + s.x3.shape, s.x3.dtype) if needs[0] else None
        rdg = np.empty((k, c)) if needs[1] and s.gamma is not None else None
        rdb = np.empty((k, c)) if needs[2] and s.beta is not None else None
        if rdx is None and rdg is None and rdb is None:
            return (None, None, None)
        tstats = s.tstats[1] if s.tstats is not None and s.tstats[0] is tx else None
        _batchnorm.batchnorm_tangent_backward(
            s.x3, s.block(d_out, 0), s.mean, s.invstd, s.gamma, s.beta, s.code, s.batch,
            s.block(tx, k), _vector(tg, k), _vector(tb, k), s.block(t_d_out, k), rdx, rdg,
            rdb, tstats)
        return (None if rdx is None else s.as_x(rdx, k), s.as_param(rdg, 0, k),
                s.as_param(rdb, 1, k))

    def __repr__(self) -> str:
        parts = [str(self.channels)]
        name = activation_name(self.activation)
        if name is not None:
            parts.append(name)
        if not self.affine:
            parts.append("affine=False")
        if self.active is not None:
            parts.append(f"active={self.active}")
        return f"BatchNorm({', '.join(parts)})"

    __str__ = show.layer_str
