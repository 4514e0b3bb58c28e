"""Activation functions: NumPy callables that also carry the code the fused kernels use.

Each activation is an ``Activation``: calling it applies the function element-wise to an
array (any float dtype), ``name`` is what layer printing shows, ``code`` selects the same
function inside the compiled Dense/BatchNorm epilogues (``include/fluxtree/act.h``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Activation", "elu", "gelu", "identity", "leakyrelu", "relu", "sigmoid", "softplus",
           "swish", "tanh", "activation_code"]


class Activation:
    """An element-wise function with a name (for printing) and a kernel code."""

    __slots__ = ("name", "code", "_fn")

    def __init__(self, name: str, code: int, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.name, self.code, self._fn = name, code, fn

    def __call__(self, x: Any) -> Any:
        return self._fn(np.asarray(x))

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
