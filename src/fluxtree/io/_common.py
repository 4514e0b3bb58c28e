"""Helpers shared by ``state``, ``loadmodel_`` and the checkpoint code."""
from __future__ import annotations

import sys
from typing import Any

import numpy as np


def _is_array(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return True
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _host(a: Any) -> Any:
    return a if isinstance(a, np.ndarray) else a.get()
