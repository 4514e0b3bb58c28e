"""Chain: layers applied in sequence, by position or by name."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .. import functors
from . import show
from ._common import _record

__all__ = ["Chain"]


@functors.functor("layers")
@_record
class Chain:
    """Layers applied in sequence: ``Chain(a, b)(x) == b(a(x))``.

    ``Chain(*layers)`` or ``Chain({"enc": a, "dec": b})`` for named layers; indexing by
    position, slice (a new Chain sharing the layers) or name.

    >>> from fluxtree.nn import Dense
    >>> c = Chain(Dense(2, 3), Dense(3, 1))
    >>> c
    Chain(Dense(2 => 3), Dense(3 => 1))
    >>> c[1:]
    Chain(Dense(3 => 1))
    """

    def __init__(self, *layers: Any, **named: Any) -> None:
        if len(layers) == 1 and isinstance(layers[0], dict) and not named:
            self.layers: tuple | dict = dict(layers[0])
        elif named:
            if layers:
                raise TypeError("Chain takes layers either by position or by name, not both.")
            self.layers = dict(named)
        else:
            self.layers = tuple(layers)

    def __call__(self, x: Any) -> Any:
        for layer in self:
            x = layer(x)
        return x

    def __iter__(self) -> Iterator[Any]:
        return iter(self.layers.values() if isinstance(self.layers, dict) else self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(self.layers, dict):
            if isinstance(i, str):
                return self.layers[i]
            items = list(self.layers.items())
            return Chain(dict(items[i])) if isinstance(i, slice) else items[i][1]
        return Chain(*self.layers[i]) if isinstance(i, slice) else self.layers[i]

    def __repr__(self) -> str:
        if isinstance(self.layers, dict):
            inner = ", ".join(f"{k} = {v!r}" for k, v in self.layers.items())
        else:
            inner = ", ".join(repr(v) for v in self.layers)
        return f"Chain({inner})"

    __str__ = show.container_str
