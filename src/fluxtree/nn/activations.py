"""Activation functions: NumPy callables that also carry the code the fused kernels use.

Each activation is an ``Activation``: calling it applies the function element-wise to an
array (any float dtype), ``name`` is what layer printing shows, ``code`` selects the same
function inside the compiled Dense/BatchNorm epilogues (``include/fluxtree/act.h``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _tracing
from .._kernels import _dense

__all__ = ["Activation", "elu", "gelu", "identity", "leakyrelu", "relu", "sigmoid", "softplus",
           "swish", "tanh", "activation_code"]


_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Activation:
    """An element-wise function with a name (for printing) and a kernel code."""

    __slots__ = ("name", "code", "_fn")

    def __init__(self, name: str, code: int, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.name, self.code, self._fn = name, code, fn

    def __call__(self, x: Any) -> Any:
        if _tracing.any_traced(x):
            return _tracing.record(self, (x,))
        return self._fn(np.asarray(x))

    # The op rules (see fluxtree._tracing); derivatives come from the kernels' act.h.
    def _derivative(self, z: np.ndarray, order: int) -> np.ndarray:
        if z.dtype not in _KERNEL_DTYPES:
            raise TypeError(f"the derivatives of {self.name} are implemented for float32 and "
                            f"float64 arrays, got {z.dtype}.")
        out = np.empty_like(z, order="C")
        _dense.act_eval(self.code, np.ascontiguousarray(z), order, out)
        return out

    def forward(self, inputs: tuple) -> tuple[np.ndarray, list]:
        z = np.asarray(inputs[0])
        if z.dtype.kind != "f":
            z = z.astype(np.float64)
        return np.asarray(self._fn(z)), [z, None]

    def _d1(self, saved: list) -> np.ndarray:
        if saved[1] is None:
            saved[1] = self._derivative(saved[0], 1)
        return saved[1]

    def backward(self, saved: list, dy: np.ndarray, needs: tuple) -> tuple:
        return (dy * self._d1(saved),)

    def tangent(self, saved: list, t_inputs: tuple) -> np.ndarray:
        return t_inputs[0] * self._d1(saved)

    def tangent_backward(self, saved: list, t_inputs: tuple, dy: Any, tdy: Any,
                         needs: tuple) -> tuple:
        out = None if tdy is None else tdy * self._d1(saved)
        if dy is not None and t_inputs[0] is not None and self.code not in (0, 1, 7):
            term = (dy * self._derivative(saved[0], 2)) * t_inputs[0]
            out = term if out is None else out + term
        return (out,)

    def __repr__(self) -> str:
        return self.name


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1)


def _gelu(x: np.ndarray) -> np.ndarray:
    c = np.sqrt(2 / np.pi).astype(x.dtype) if x.dtype.kind == "f" else np.sqrt(2 / np.pi)
    return 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x ** 3)))


identity = Activation("identity", 0, lambda x: x)
relu = Activation("relu", 1, lambda x: np.maximum(x, 0))
tanh = Activation("tanh", 2, np.tanh)
sigmoid = Activation("sigmoid", 3, _sigmoid)
softplus = Activation("softplus", 4, lambda x: np.logaddexp(x, 0))
gelu = Activation("gelu", 5, _gelu)
elu = Activation("elu", 6, lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))))
leakyrelu = Activation("leakyrelu", 7, lambda x: np.where(x > 0, x, 0.01 * x))
swish = Activation("swish", 8, lambda x: x * _sigmoid(x))

_BY_FUNCTION: dict[Any, Activation] = {np.tanh: tanh}


def activation_code(act: Any) -> int | None:
    """The kernel code of ``act`` (None or identity: 0), or None when it has none.

    Plain NumPy ``np.tanh`` is recognised too; any other callable runs after the kernel.

    >>> activation_code(relu), activation_code(None), activation_code(np.tanh)
    (1, 0, 2)
    >>> activation_code(np.exp) is None
    True
    """
    if act is None:
        return 0
    if isinstance(act, Activation):
        return act.code
    known = _BY_FUNCTION.get(act)
    return None if known is None else known.code


def activation_name(act: Any) -> str | None:
    """How layer printing names ``act`` (None for no activation)."""
    if act is None or act is identity:
        return None
    if isinstance(act, Activation):
        return act.name
    return getattr(act, "__name__", None) or repr(act)
