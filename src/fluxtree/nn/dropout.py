"""Dropout, and ``colon`` (Flux's ``:``) for its ``dims``."""
from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .. import _tracing, functors
from . import show
from ._common import _record
from .mode import is_training, updates_stats

__all__ = ["Colon", "Dropout", "colon"]


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
    ``rng`` is a NumPy ``Generator`` (a fresh one by default, never None); evaluations
    that must not change the model (``hvp``, ``jvp``, ``hessian``, scipy's probes through
    ``Objective``) draw from a copy of it, so they leave its state alone and all see the
    same mask — the objective stays a function of the parameters.

    >>> import numpy as np
    >>> Dropout(0.5)(np.ones(3))
    array([1., 1., 1.])
    >>> Dropout(2.0)
    Traceback (most recent call last):
    ...
    ValueError: Dropout expects 0 <= p <= 1, got p = 2.0.
    """

    _has_mode = True
    linear = True            # as an op: its second-order rule needs no adjoint

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

    def __call__(self, x: Any) -> Any:
        if _tracing.any_traced(x):
            return _tracing.record(self, (x,))
        return self.forward((x,))[0]

    def _mask(self, x: np.ndarray) -> np.ndarray | None:
        """The scaled keep mask (broadcastable to x), or None for the identity."""
        if not is_training(self.active) or self.p == 0:
            return None
        if self.p == 1:
            return np.zeros((1,) * x.ndim, x.dtype)
        axes = range(x.ndim) if self.dims is colon else (
            (self.dims,) if isinstance(self.dims, int) else tuple(self.dims))
        shape = tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))
        # evaluations that must not change the model (hvp, jvp, scipy's probes) draw from a
        # copy of the generator: its state stays, and every such evaluation sees one mask
        rng = self.rng if updates_stats() else copy.deepcopy(self.rng)
        keep = rng.random(shape) >= self.p
        return (keep * (1 / (1 - self.p))).astype(x.dtype)

    # The op rules (see fluxtree._tracing): Dropout is linear in x with the saved mask.
    def forward(self, inputs: tuple) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.asarray(inputs[0])
        mask = self._mask(x)
        return (x if mask is None else x * mask), mask

    def backward(self, mask: np.ndarray | None, dy: np.ndarray, needs: tuple) -> tuple:
        return (dy if mask is None else dy * mask,)

    def tangent(self, mask: np.ndarray | None, t_inputs: tuple) -> np.ndarray:
        return t_inputs[0] if mask is None else t_inputs[0] * mask

    def tangent_backward(self, mask: np.ndarray | None, t_inputs: tuple, dy: Any, tdy: Any,
                         needs: tuple) -> tuple:
        return (None if tdy is None else self.tangent(mask, (tdy,)),)

    def __repr__(self) -> str:
        extra = "" if self.dims is colon else f", dims={self.dims!r}"
        mode = "" if self.active is None else f", active={self.active}"
        return f"Dropout({self.p:g}{extra}{mode})"

    __str__ = show.layer_str
