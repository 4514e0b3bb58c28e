"""BatchNorm: normalisation over axis 1 with running statistics, batch first."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import functors
from .._kernels import _batchnorm
from . import show
from ._common import _KERNEL_DTYPES, _as_input, _record
from .activations import activation_code, activation_name, identity
from .mode import is_training

__all__ = ["BatchNorm"]


@functors.functor("activation", "beta", "gamma", "running_mean", "running_var", "eps",
                  "momentum", "affine", "track_stats", "active", "channels")
@_record
class BatchNorm:
    """Batch normalisation over axis 1 of ``(batch, C)`` or ``(batch, C, *spatial)``.

    Training (``active=True``, or ``active=None`` inside ``training()``/``gradient``) uses
    the batch mean and biased variance and updates the running statistics in place
    (``running_var`` with the ``m/(m-1)`` correction, as Flux); test mode uses the running
    statistics. Only ``beta`` and ``gamma`` are trainable. Parameters are float32; ``f16``
    keeps them so.

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

    def __call__(self, x: Any) -> np.ndarray:
        train = is_training(self.active)
        code = activation_code(self.activation)
        out = _batchnorm.batchnorm_apply(x, self.gamma, self.beta, self.running_mean,
                                         self.running_var, self.eps, self.momentum, train,
                                         0 if code is None else code)
        if out is not None:                     # the hot path: checks made in C
            return out if code is not None else self.activation(out)
        x = np.asarray(x)
        x = _as_input(x, self._dtype(x), self)
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(f"{self!r} expects an input of shape (batch, {self.channels}, ...)"
                             f", got shape {x.shape}.")
        train = is_training(self.active)
        m = x.size // self.channels
        if train and m <= 1:
            self._too_small(x)
        x3 = np.ascontiguousarray(x.reshape(x.shape[0], self.channels, -1))
        code = activation_code(self.activation)
        if x3.dtype in _KERNEL_DTYPES and all(
                a is None or (a.dtype == x3.dtype and a.flags.c_contiguous)
                for a in (self.gamma, self.beta, self.running_mean, self.running_var)):
            out = np.empty_like(x3)
            _batchnorm.batchnorm_forward(
                x3, self.gamma, self.beta, self.running_mean, self.running_var, self.eps,
                self.momentum, train, 0 if code is None else code, out)
            if code is None:
                out = self.activation(out)
        else:                          # float16 or mixed dtypes: NumPy
            out = self._numpy_forward(x3, train, m)
            if code != 0:
                out = self.activation(out)
        return out.reshape(x.shape)

    def _numpy_forward(self, x3: np.ndarray, train: bool, m: int) -> np.ndarray:
        """The same computation in NumPy, for dtypes the kernel does not take (float16)."""
        if train or not self.track_stats:
            mean = x3.mean(axis=(0, 2), dtype=np.float64)
            var = x3.var(axis=(0, 2), dtype=np.float64)
            if train and self.track_stats:
                mom = self.momentum
                self.running_mean[...] = (1 - mom) * self.running_mean + mom * mean
                self.running_var[...] = (1 - mom) * self.running_var + mom * var * m / (m - 1)
        else:
            mean, var = self.running_mean.astype(np.float64), self.running_var.astype(np.float64)
        y = (x3 - mean[:, None]) / np.sqrt(var[:, None] + self.eps)
        if self.affine:
            y = y * self.gamma[:, None] + self.beta[:, None]
        return y.astype(x3.dtype)

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
