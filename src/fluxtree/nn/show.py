"""Flux-style printing: parameter counts per layer and a total for the model.

``str(layer)`` is the one-line form ``Dense(2 => 1, tanh)  # 3 parameters``; ``str(chain)``
expands the layers one per line, each with its count, and ends with
``# Total: 4 arrays, 5 parameters, 20 bytes.``. Columns follow Flux: the ``#`` lands in
column 21 at top level and 41 inside a container. Bytes are the sum of ``nbytes`` of the
model's unique arrays (Julia's ``summarysize`` has no Python counterpart).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import flat, functors

__all__ = ["container_str", "format_bytes", "layer_str", "underscorise"]

_TOP, _NESTED = 20, 39


def underscorise(n: int) -> str:
    """``1628170 -> '1_628_170'``.

    >>> underscorise(999), underscorise(1000), underscorise(1628170)
    ('999', '1_000', '1_628_170')
    """
    return f"{n:_d}"


def format_bytes(n: int) -> str:
    """Bytes as Julia's ``format_bytes`` writes them: ``'20 bytes'``, ``'6.211 MiB'``.

    >>> format_bytes(1), format_bytes(1024), format_bytes(6512680)
    ('1 byte', '1024 bytes', '6.211 MiB')
    """
    if n == 1:
        return "1 byte"
    units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"]
    k = min(int(np.ceil(np.log(n) / np.log(1024))) - 1, len(units) - 1) if n > 1024 else 0
    if k == 0:
        return f"{n} bytes"
    return f"{n / 1024 ** k:.3f} {units[k]}"


def _counts(node: Any) -> tuple[int, int, int, int]:
    """(trainable arrays, trainable parameters, other arrays, other parameters)."""
    params = flat.trainables(node)
    p = sum(a.size for a in params)
    every = [a for a in functors.fleaves(node) if flat.isnumeric(a)]
    return len(params), p, len(every) - len(params), sum(a.size for a in every) - p


def _status(node: Any) -> str:
    params = flat.trainables(node)
    if params and all(not a.any() for a in params):
        return "  (all zero)"
    if any(np.isnan(a).any() for a in params):
        return "  (some NaN)"
    if any(np.isinf(a).any() for a in params):
        return "  (some Inf)"
    return ""


def _layer_line(node: Any, indent: int, name: str | None) -> str:
    text = (f"{name} = " if name is not None else "") + repr(node)
    head = " " * indent + text + ("," if indent else "")
    n_arrays, p, _, q = _counts(node)
    if n_arrays == 0:
        return head
    width = _TOP if indent == 0 else _NESTED
    pad = " " * max(2, width - indent - len(text))
    comment = f"# {underscorise(p)} parameters"
    if q:
        comment += f", plus {underscorise(q)}" + (" non-trainable" if indent == 0 else "")
    return head + pad + comment + _status(node)


def layer_str(layer: Any) -> str:
    """The top-level one-line display of a layer, with its parameter count."""
    return _layer_line(layer, 0, None)


def _expands(node: Any) -> bool:
    return hasattr(node, "layers") and functors.children(node) != ()


def _lines(node: Any, indent: int, name: str | None) -> list[str]:
    if not _expands(node):
        return [_layer_line(node, indent, name)]
    layers = node.layers
    items = list(layers.items()) if isinstance(layers, dict) else [(None, v) for v in layers]
    head = " " * indent + (f"{name} = " if name is not None else "") + f"{type(node).__name__}("
    out = [head]
    for key, child in items:
        out.extend(_lines(child, indent + 2, key))
    out.append(" " * indent + ("),") if indent else ")")
    return out


def container_str(model: Any) -> str:
    """The expanded display of a container (``Chain``), with per-layer counts and a total."""
    lines = _lines(model, 0, None)
    n_arrays, p, m, q = _counts(model)
    if n_arrays <= 2:
        lines[-1] += " "
        return "\n".join(lines)
    nbytes = sum(a.nbytes for a in functors.fcollect(model) if isinstance(a, np.ndarray))
    if m == 0:
        lines[-1] += " " * 19 + (f"# Total: {n_arrays} arrays, {underscorise(p)} parameters, "
                                 f"{format_bytes(nbytes)}.")
    else:
        lines[-1] += " " * 9 + (f"# Total: {n_arrays} trainable arrays, {underscorise(p)} "
                                f"parameters,")
        lines.append(" " * 10 + f"# plus {m} non-trainable, {underscorise(q)} parameters, "
                     f"{format_bytes(nbytes)}.")
    return "\n".join(lines)
