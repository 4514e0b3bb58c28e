"""What the layers share: input conversion with its precision warning, and rebuilding."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["PrecisionWarning"]

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
