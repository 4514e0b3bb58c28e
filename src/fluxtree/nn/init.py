"""Weight initialisers, Flux's defaults: float32 unless asked otherwise."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["glorot_normal", "glorot_uniform", "ones32", "zeros32"]


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def glorot_uniform(*shape: int, rng: np.random.Generator | None = None,
                   dtype: Any = np.float32) -> np.ndarray:
    """Uniform on [-s, s] with s = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010).

    >>> w = glorot_uniform(3, 2, rng=np.random.default_rng(0))
    >>> w.shape, w.dtype, bool(np.all(np.abs(w) <= np.sqrt(6 / 5)))
    ((3, 2), dtype('float32'), True)
    """
    fan_in, fan_out = _fans(shape)
    s = np.sqrt(6.0 / (fan_in + fan_out))
    rng = np.random.default_rng() if rng is None else rng
    return rng.uniform(-s, s, size=shape).astype(dtype)


def glorot_normal(*shape: int, rng: np.random.Generator | None = None,
                  dtype: Any = np.float32) -> np.ndarray:
    """Normal with standard deviation sqrt(2 / (fan_in + fan_out)).

    >>> glorot_normal(4, 4, rng=np.random.default_rng(0)).dtype
    dtype('float32')
    """
    fan_in, fan_out = _fans(shape)
    rng = np.random.default_rng() if rng is None else rng
    return (rng.standard_normal(size=shape) * np.sqrt(2.0 / (fan_in + fan_out))).astype(dtype)


def zeros32(*shape: int, rng: np.random.Generator | None = None,
            dtype: Any = np.float32) -> np.ndarray:
    """Zeros (float32 by default); takes ``rng`` so it can serve as an initialiser.

    >>> zeros32(2)
    array([0., 0.], dtype=float32)
    """
    return np.zeros(shape, dtype)


def ones32(*shape: int, rng: np.random.Generator | None = None,
           dtype: Any = np.float32) -> np.ndarray:
    """Ones (float32 by default); takes ``rng`` so it can serve as an initialiser.

    >>> ones32(2, 1)
    array([[1.],
           [1.]], dtype=float32)
    """
    return np.ones(shape, dtype)
