"""Dense: the fully connected layer ``act(x @ weight.T + bias)``, batch first."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import functors
from .._kernels import _dense
from . import show
from ._common import _KERNEL_DTYPES, _as_input, _record
from .activations import activation_code, activation_name, identity
from .init import glorot_uniform

__all__ = ["Dense"]


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

    def __call__(self, x: Any) -> np.ndarray:
        w = self.weight
        b = self.bias
        code = activation_code(self.activation)
        out = _dense.dense_apply(x, w, None if b is False else b, 0 if code is None else code)
        if out is not None:                     # the hot path: checks made in C
            return out if code is not None else self.activation(out)
        x = _as_input(x, w.dtype, self)
        if x.ndim == 0 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"{self!r} expects an input with {w.shape[1]} features on its "
                             f"last axis, got shape {x.shape}.")
        lead = x.shape[:-1]
        x2 = np.ascontiguousarray(x.reshape(-1, w.shape[1]))
        b = None if self.bias is False else self.bias
        code = activation_code(self.activation)
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

    def __repr__(self) -> str:
        parts = [f"{self.weight.shape[1]} => {self.weight.shape[0]}"]
        name = activation_name(self.activation)
        if name is not None:
            parts.append(name)
        text = ", ".join(parts)
        return f"Dense({text}; bias=False)" if self.bias is False else f"Dense({text})"

    __str__ = show.layer_str
