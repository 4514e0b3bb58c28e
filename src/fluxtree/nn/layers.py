"""Layers: Dense, BatchNorm, Dropout and Chain — tree nodes with fused forward kernels.

Batch first: ``x`` has shape ``(batch, features)`` or ``(batch, channels, *spatial)``.
``Dense.weight`` has shape ``(out, in)`` and ``Dense(x) = act(x @ weight.T + bias)``.
Every layer is an ``@functor`` record, so ``fmap``, ``destructure``, ``state`` and the
rest see its fields; ``str(layer)`` prints as Flux does (see ``show.py``).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import functors
from .._kernels import _batchnorm, _dense
from . import show
from .activations import activation_code, activation_name, identity
from .init import glorot_uniform
from .mode import is_training

__all__ = ["BatchNorm", "Chain", "Colon", "Dense", "Dropout", "PrecisionWarning", "colon"]

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class PrecisionWarning(UserWarning):
    """A layer converted its input to the precision of its parameters."""


_warned_precision: set[tuple[str, str]] = set()


def _as_input(x: Any, dtype: np.dtype, layer: Any) -> np.ndarray:
    """``x`` as an array of the layer's dtype; warns once per dtype pair for float inputs."""
    x = np.asarray(x)
    if x.dtype == dtype:
        return x
    if x.dtype.kind == "f" and dtype.kind == "f" and x.dtype.itemsize > dtype.itemsize:
        key = (str(dtype), str(x.dtype))
        if key not in _warned_precision:
            _warned_precision.add(key)
            warnings.warn(
                f"{type(layer).__name__} with {dtype} parameters got {x.dtype} input; the "
                f"input is converted, which costs a copy per call.", PrecisionWarning,
                stacklevel=3)
    if x.dtype.kind not in "biuf" and not (x.dtype.kind == "c" and dtype.kind == "c"):
        raise TypeError(f"{type(layer).__name__} expects a numeric array, got dtype {x.dtype}.")
    return x.astype(dtype)


def _record(cls: type) -> type:
    """Rebuild a layer by copying it and setting the new children (its __init__ differs)."""

    def __rebuild__(self: Any, children: dict) -> Any:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(children)
        return new

    cls.__rebuild__ = __rebuild__  # type: ignore[attr-defined]
    return cls


# ----------------------------------------------------------------------------
# Dense
# ----------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------
# BatchNorm
# ----------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------
class Colon:
    """Flux's ``:`` — "every axis" — for ``Dropout(dims=colon)``; a leaf, state ``()``."""

    _instance: Colon | None = None

    def __new__(cls) -> Colon:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return ":"


colon = Colon()


@functors.functor("p", "dims", "active", "rng")
@_record
class Dropout:
    """Zero each entry with probability ``p`` in training mode, scaling the rest by 1/(1-p).

    ``dims``: the axes along which independent choices are made (``colon``: all), the
    mask being broadcast along the others. Plain calls are in test mode (identity).
    ``rng`` is a NumPy ``Generator`` (a fresh one by default, never None).

    >>> import numpy as np
    >>> Dropout(0.5)(np.ones(3))
    array([1., 1., 1.])
    >>> Dropout(2.0)
    Traceback (most recent call last):
    ...
    ValueError: Dropout expects 0 <= p <= 1, got p = 2.0.
    """

    _has_mode = True

    def __init__(self, p: float, dims: Any = colon, *, active: bool | None = None,
                 rng: np.random.Generator | None = None) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout expects 0 <= p <= 1, got p = {p}.")
        if active is not None and type(active) is not bool:
            raise TypeError(f"Dropout: active must be True, False or None, got {active!r}.")
        self.p = float(p)
        self.dims = dims
        self.active = active
        self.rng = np.random.default_rng() if rng is None else rng

    def trainable(self) -> dict[str, Any]:
        return {}

    def __call__(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        if not is_training(self.active) or self.p == 0:
            return x
        if self.p == 1:
            return np.zeros_like(x)
        axes = range(x.ndim) if self.dims is colon else (
            (self.dims,) if isinstance(self.dims, int) else tuple(self.dims))
        shape = tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))
        keep = self.rng.random(shape) >= self.p
        return np.where(keep, x / (1 - self.p), 0).astype(x.dtype, copy=False)

    def __repr__(self) -> str:
        extra = "" if self.dims is colon else f", dims={self.dims!r}"
        mode = "" if self.active is None else f", active={self.active}"
        return f"Dropout({self.p:g}{extra}{mode})"

    __str__ = show.layer_str


# ----------------------------------------------------------------------------
# Chain
# ----------------------------------------------------------------------------
@functors.functor("layers")
@_record
class Chain:
    """Layers applied in sequence: ``Chain(a, b)(x) == b(a(x))``.

    ``Chain(*layers)`` or ``Chain({"enc": a, "dec": b})`` for named layers; indexing by
    position, slice (a new Chain sharing the layers) or name.

    >>> c = Chain(Dense(2, 3), Dense(3, 1))
    >>> c
    Chain(Dense(2 => 3), Dense(3 => 1))
    >>> c[1:]
    Chain(Dense(3 => 1))
    """

    def __init__(self, *layers: Any, **named: Any) -> None:
        if len(layers) == 1 and isinstance(layers[0], dict) and not named:
            self.layers: tuple | dict = dict(layers[0])
        elif named:
            if layers:
                raise TypeError("Chain takes layers either by position or by name, not both.")
            self.layers = dict(named)
        else:
            self.layers = tuple(layers)

    def __call__(self, x: Any) -> Any:
        for layer in self:
            x = layer(x)
        return x

    def __iter__(self) -> Iterator[Any]:
        return iter(self.layers.values() if isinstance(self.layers, dict) else self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(self.layers, dict):
            if isinstance(i, str):
                return self.layers[i]
            items = list(self.layers.items())
            return Chain(dict(items[i])) if isinstance(i, slice) else items[i][1]
        return Chain(*self.layers[i]) if isinstance(i, slice) else self.layers[i]

    def __repr__(self) -> str:
        if isinstance(self.layers, dict):
            inner = ", ".join(f"{k} = {v!r}" for k, v in self.layers.items())
        else:
            inner = ", ".join(repr(v) for v in self.layers)
        return f"Chain({inner})"

    __str__ = show.container_str
