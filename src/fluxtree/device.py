"""Devices: ``gpu`` moves every array of a tree to the GPU (CuPy), ``cpu`` brings it back.

Both are one ``fmap`` over the tree, so structure and node types are kept and ties survive
through the identity cache: an array reached twice is moved once and the same new array
stands at both places.  (Two arrays that merely share memory, ``W`` and ``W.T``, become two
independent copies.)

``gpu`` puts each NumPy array on the current CUDA device as a CuPy array, with the dtype
``gpu_dtype`` gives (float64 -> float32 and complex128 -> complex64, as Flux's ``cu``;
float16, float32, complex64, integers and bools kept).  Arrays CuPy cannot hold (strings,
objects, datetimes, records) stay on the host as they are; scalars and every other leaf are
untouched.  CuPy arrays already on the GPU only get the dtype conversion.  Without a usable GPU
(CuPy missing, or no CUDA device) ``gpu`` warns once, with a ``NoGPUWarning``, and returns its
input itself.

``cpu`` turns each CuPy array into a NumPy array of the same dtype.  A tree that holds no CuPy
array is returned as it is (the same object), at the cost of one walk over it.

A leaf whose class defines ``__fluxtree_device__(self, move)`` is moved by that method instead
(``move`` is ``gpu`` or ``cpu``): ``gpu(loader)`` of a ``DataLoader`` gives a lazy loader whose
batches are moved one at a time as they are produced (see ``fluxtree.data``).

``array_module`` and ``is_gpu_array`` tell the backend of an array, for code that works on
either.
"""
from __future__ import annotations

import sys
import warnings
from types import ModuleType
from typing import Any

import numpy as np

from .functors import fleaves, fmap

__all__ = ["NoGPUWarning", "array_module", "cpu", "gpu", "gpu_available", "gpu_dtype",
           "is_gpu_array"]


class NoGPUWarning(UserWarning):
    """``gpu`` found no usable GPU (CuPy missing, or no CUDA device) and returned its input."""


class _Backend:
    """What the probe for a usable GPU found, done once per process."""

    probed = False
    module: ModuleType | None = None
    reason = ""
    warned = False


_backend = _Backend()


def _probe() -> tuple[ModuleType | None, str]:
    try:
        import cupy
    except (ImportError, OSError, RuntimeError) as e:   # missing, or CUDA libraries broken
        return None, f"CuPy could not be imported ({type(e).__name__}: {e})"
    try:
        available = bool(cupy.is_available())
    except (OSError, RuntimeError) as e:      # a broken driver raises instead of answering
        return None, f"CuPy could not query the CUDA devices ({type(e).__name__}: {e})"
    if not available:
        return None, "CuPy found no usable CUDA device"
    return cupy, ""


def _gpu_module() -> ModuleType | None:
    if not _backend.probed:
        _backend.module, _backend.reason = _probe()
        _backend.probed = True
    return _backend.module


def gpu_available() -> bool:
    """True when ``gpu`` moves arrays: CuPy imports and sees a CUDA device (asked once).

    >>> isinstance(gpu_available(), bool)
    True
    """
    return _gpu_module() is not None


def is_gpu_array(x: Any) -> bool:
    """True for a CuPy array.

    >>> import numpy as np
    >>> is_gpu_array(np.zeros(2)), is_gpu_array([1.0])
    (False, False)
    """
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


def array_module(*xs: Any) -> ModuleType:
    """``cupy`` when any of ``xs`` is a CuPy array, else ``numpy``: the module whose functions
    apply to them (as ``cupy.get_array_module``, without importing CuPy).

    >>> import numpy as np
    >>> array_module(np.zeros(2), 1.0).__name__
    'numpy'
    """
    for x in xs:
        if is_gpu_array(x):
            return sys.modules["cupy"]
    return np


_CUPY_KINDS = frozenset("biufc")     # bool, int, uint, float, complex: what CuPy holds


def gpu_dtype(dtype: Any) -> np.dtype | None:
    """The dtype ``gpu`` gives an array of ``dtype``, or ``None`` for dtypes that stay on the
    host (strings, objects, datetimes, records).

    Floats wider than 32 bits become float32 and complex numbers wider than 64 bits complex64
    (Flux's ``cu``); float16, float32, complex64, integers and bools are kept, in native byte
    order.

    >>> import numpy as np
    >>> [str(gpu_dtype(t)) for t in ("f8", "c16", "f2", "f4", "i8", "?")]
    ['float32', 'complex64', 'float16', 'float32', 'int64', 'bool']
    >>> gpu_dtype(np.dtype(">f4")), gpu_dtype("U3") is None
    (dtype('float32'), True)
    """
    dt = np.dtype(dtype)
    if dt.kind not in _CUPY_KINDS or dt.fields is not None or dt.subdtype is not None:
        return None
    if dt.kind == "f" and dt.itemsize > 4:
        return np.dtype(np.float32)
    if dt.kind == "c" and dt.itemsize > 8:
        return np.dtype(np.complex64)
    return dt.newbyteorder("=")


def _to_gpu(cp: ModuleType, v: Any) -> Any:
    if isinstance(v, np.ndarray):
        target = gpu_dtype(v.dtype)
        if target is None:
            return v
        if not v.dtype.isnative:
            v = v.astype(v.dtype.newbyteorder("="))
        return cp.asarray(v).astype(target, copy=False)    # cast on the device
    if isinstance(v, cp.ndarray):
        target = gpu_dtype(v.dtype)
        return v if target is None or v.dtype == target else v.astype(target)
    hook = getattr(type(v), "__fluxtree_device__", None)
    return v if hook is None else hook(v, gpu)


def gpu(x: Any) -> Any:
    """``x`` with every array moved to the GPU as a CuPy array, float64 as float32.

    An ``fmap`` with the identity cache (ties kept); the dtype rule is ``gpu_dtype``; scalars
    and other leaves are untouched.  Without a usable GPU, a ``NoGPUWarning`` the first time
    and ``x`` itself is returned.  ``gpu(loader)`` of a ``DataLoader`` is lazy, batch by batch.

    Examples
    --------
    >>> import numpy as np
    >>> m = {"w": np.ones((2, 3)), "steps": np.arange(3), "eps": 1e-5}
    >>> g = gpu(m)                                         # doctest: +SKIP
    >>> type(g["w"]).__name__, g["w"].dtype, g["steps"].dtype, g["eps"]  # doctest: +SKIP
    ('ndarray', dtype('float32'), dtype('int64'), 1e-05)
    >>> type(g["w"]).__module__                            # doctest: +SKIP
    'cupy'
    """
    cp = _gpu_module()
    if cp is None:
        if not _backend.warned:
            _backend.warned = True
            warnings.warn(f"No usable GPU: {_backend.reason}; gpu() returns its input "
                          f"unchanged (this warning is shown once).", NoGPUWarning,
                          stacklevel=2)
        return x
    return fmap(lambda v: _to_gpu(cp, v), x)


def _to_cpu(cp: ModuleType | None, v: Any) -> Any:
    if cp is not None and isinstance(v, cp.ndarray):
        return cp.asnumpy(v)
    hook = getattr(type(v), "__fluxtree_device__", None)
    return v if hook is None else hook(v, cpu)


def _needs_cpu(cp: ModuleType | None, v: Any) -> bool:
    return ((cp is not None and isinstance(v, cp.ndarray))
            or getattr(type(v), "__fluxtree_device__", None) is not None)


def cpu(x: Any) -> Any:
    """``x`` with every CuPy array copied to the host as a NumPy array of the same dtype.

    An ``fmap`` with the identity cache (ties kept).  When ``x`` holds no CuPy array, ``x``
    itself is returned; ``cpu(loader)`` of a ``DataLoader`` is lazy, batch by batch.

    Examples
    --------
    >>> import numpy as np
    >>> m = {"w": np.ones(2, dtype=np.float32), "act": "relu"}
    >>> cpu(m) is m
    True
    >>> x = np.arange(3.0)
    >>> cpu(x) is x
    True
    """
    cp = sys.modules.get("cupy")
    if _needs_cpu(cp, x):
        return _to_cpu(cp, x)
    if not any(_needs_cpu(cp, v) for v in fleaves(x)):
        return x
    return fmap(lambda v: _to_cpu(cp, v), x)
