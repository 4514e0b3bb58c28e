"""Precision: ``f16``, ``f32``, ``f64`` change the floating dtype of every array in a tree.

Each is one ``fmap`` over the tree, so the tree keeps its structure and node types, mutable
nodes are rebuilt (new instances), and ties survive through the identity cache: an array
reached twice is converted once and the same new array stands at both places.

Only arrays are converted (NumPy, and CuPy arrays when the tree holds them):

=============================  ===========  ===========  ============
array dtype                    ``f16``      ``f32``      ``f64``
=============================  ===========  ===========  ============
float16/32/64 (any float)      float16      float32      float64
complex64/128 (any complex)    complex64    complex64    complex128
int, uint, bool, str, object   unchanged    unchanged    unchanged
=============================  ===========  ===========  ============

NumPy has no complex dtype made of two float16 numbers, so ``f16`` turns complex arrays into
complex64 (the smallest complex dtype there is).  An array that already has the target dtype,
and every array that is not converted, is returned as the same object (no copy).  Scalars are
never converted (Python floats, NumPy scalars such as ``np.float64(0.1)``: an epsilon, a
momentum, a dropout rate stay as they were); neither are ``False`` (a ``bias=False``),
``None`` or any other leaf.

Mixed precision: ``f16`` converts a node whose class sets ``_f16_keeps_f32 = True`` (as
``BatchNorm`` does) with ``f32`` instead, subtree and all, as Flux keeps its normalisation
layers in Float32.  An array shared by such a node and the rest of the tree is converted once,
by whichever use the walk reaches first, so the tie survives.

Not provided: ``bf16`` (NumPy has no bfloat16 dtype), and Julia's array wrappers (``Adjoint``)
have no counterpart here: ``f32(x.T)`` gives a plain array (``x.T.astype(float32)``).
"""
from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from .functors import fmap, isleaf

__all__ = ["f16", "f32", "f64"]

T = TypeVar("T")


def _is_array(v: Any) -> bool:
    """NumPy arrays, and arrays of other backends (CuPy) that have a dtype and ``astype``."""
    if isinstance(v, np.ndarray):
        return True
    if isinstance(v, np.generic):
        return False
    return (type(v).__module__.split(".", 1)[0] == "cupy"
            and hasattr(v, "dtype") and hasattr(v, "astype"))


def _converter(real: type, complex_: type) -> Any:
    real_dt, complex_dt = np.dtype(real), np.dtype(complex_)

    def convert(v: Any) -> Any:
        if not _is_array(v):
            return v
        kind = v.dtype.kind
        if kind == "f":
            target = real_dt
        elif kind == "c":
            target = complex_dt
        else:
            return v
        if v.dtype == target:
            return v
        return v.astype(target)

    return convert


_to16 = _converter(np.float16, np.complex64)
_to32 = _converter(np.float32, np.complex64)
_to64 = _converter(np.float64, np.complex128)


def _keeps_f32(node: Any) -> bool:
    return getattr(type(node), "_f16_keeps_f32", False) is True


def f32(x: T) -> T:
    """``x`` with every floating array as float32 and every complex array as complex64.

    An ``fmap`` with the identity cache: ties are kept, integer and bool arrays and arrays
    already of the target dtype are returned as the same object, scalars and other leaves
    are untouched.  An array on its own is converted directly.

    Examples
    --------
    >>> import numpy as np
    >>> m = {"weight": np.ones((2, 3)), "bias": False, "eps": 1e-5, "steps": np.arange(3)}
    >>> m32 = f32(m)
    >>> m32["weight"].dtype, m32["bias"], m32["eps"], m32["steps"] is m["steps"]
    (dtype('float32'), False, 1e-05, True)
    >>> f32(np.ones(2, dtype=complex)).dtype
    dtype('complex64')
    >>> w = np.zeros(2)
    >>> tied = f32([w, w])
    >>> tied[0] is tied[1]
    True
    """
    if _is_array(x):
        return _to32(x)  # type: ignore[no-any-return]
    return fmap(_to32, x)


def f64(x: T) -> T:
    """``x`` with every floating array as float64 and every complex array as complex128.

    The same rules as ``f32``.

    Examples
    --------
    >>> import numpy as np
    >>> f64({"w": np.ones(2, dtype=np.float32), "c": np.ones(2, dtype=np.complex64)})
    {'w': array([1., 1.]), 'c': array([1.+0.j, 1.+0.j])}
    >>> x = np.ones(3)
    >>> f64(x) is x
    True
    """
    if _is_array(x):
        return _to64(x)  # type: ignore[no-any-return]
    return fmap(_to64, x)


def f16(x: T) -> T:
    """``x`` with every floating array as float16 and every complex array as complex64.

    The same rules as ``f32``, except that a node whose class sets ``_f16_keeps_f32 = True``
    (normalisation layers) is converted with ``f32``, its whole subtree included.  Complex
    arrays become complex64, as NumPy has no half-precision complex dtype.

    Examples
    --------
    >>> import numpy as np
    >>> class Norm:                       # a stand-in for a normalisation layer
    ...     _f16_keeps_f32 = True
    ...     def __init__(self, scale):
    ...         self.scale = scale
    >>> from fluxtree import functor
    >>> Norm = functor(Norm)
    >>> m = f16({"dense": np.ones(2), "norm": Norm(np.ones(2))})
    >>> m["dense"].dtype, m["norm"].scale.dtype
    (dtype('float16'), dtype('float32'))
    """
    if _is_array(x):
        return _to16(x)  # type: ignore[no-any-return]
    cache: dict = {}

    def convert(v: Any) -> Any:
        if _keeps_f32(v):
            return fmap(_to32, v, cache=cache)
        return _to16(v)

    return fmap(convert, x, exclude=lambda v: isleaf(v) or _keeps_f32(v), cache=cache)
