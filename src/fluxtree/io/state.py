"""``state``: a model as plain data (dicts, tuples, lists, arrays, numbers, strings, ``None``)."""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .. import functors
from .._kernels import _walk
from ._common import _is_array

__all__ = ["state"]

_KEPT = (numbers.Number, np.number, np.bool_, str, type(None))


def _state_leaf(v: Any) -> Any:
    if isinstance(v, _KEPT) or _is_array(v):
        return v
    return ()


def state(x: Any) -> Any:
    """The state of ``x``: its structure as dicts, tuples and lists, with the data leaves.

    Arrays (any dtype; the same objects, not copies), numbers (``bool`` and complex
    included), ``str`` and ``None`` are kept; every other leaf (functions, RNGs, types, ...)
    becomes ``()``.  Records become dicts of *all* their children, trainable or not.

    >>> import numpy as np
    >>> w = np.ones(2)
    >>> s = state({"w": w, "act": np.tanh, "cfg": (1, "same", None, 2.5j)})
    >>> s
    {'w': array([1., 1.]), 'act': (), 'cfg': (1, 'same', None, 2.5j)}
    >>> s["w"] is w
    True
    """
    return functors._run_mapper("state", _state_leaf, x, (), None, functors.NEW_CACHE,
                                _walk.NO_PRUNE, True, False)
