"""Training and test mode: BatchNorm and Dropout behave differently in training.

A layer's ``active`` field decides: True (training), False (test), or None ("auto":
training only inside ``training()``, which ``gradient`` enters, as Flux does inside AD).
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any, TypeVar

from .._kernels import _walk

__all__ = ["testmode_", "trainmode_", "training"]

M = TypeVar("M")
_AUTO_TRAINING = contextvars.ContextVar("fluxtree_auto_training", default=False)
_FROZEN_STATS = contextvars.ContextVar("fluxtree_frozen_stats", default=False)


@contextlib.contextmanager
def training(on: bool = True) -> Iterator[None]:
    """Run layers whose ``active`` is None ("auto") in training mode inside the block.

    >>> import numpy as np
    >>> from fluxtree.nn import Dropout
    >>> d = Dropout(1.0)
    >>> d(np.ones(3))
    array([1., 1., 1.])
    >>> with training():
    ...     d(np.ones(3))
    array([0., 0., 0.])
    """
    token = _AUTO_TRAINING.set(on)
    try:
        yield
    finally:
        _AUTO_TRAINING.reset(token)


@contextlib.contextmanager
def frozen_stats(on: bool = True) -> Iterator[None]:
    """Inside the block, layers in training mode leave their running statistics alone.

    ``hvp``, ``hessian`` and scipy's probes evaluate the model at points that are not
    steps of training; they must not move BatchNorm's running mean and variance.
    """
    token = _FROZEN_STATS.set(on)
    try:
        yield
    finally:
        _FROZEN_STATS.reset(token)


def updates_stats() -> bool:
    """Whether a layer running in training mode should update its running statistics now."""
    return not _FROZEN_STATS.get()


def is_training(active: bool | None) -> bool:
    """Whether a layer with this ``active`` value runs in training mode now."""
    return _AUTO_TRAINING.get() if active is None else active


def _set_active(model: M, active: bool | None) -> M:
    nodes = _walk.Collector(None, False, True).run(model)
    for node in nodes:
        if hasattr(type(node), "_has_mode"):
            node.active = active
    return model


def _mode_value(mode: Any, what: str, when_true: bool) -> bool | None:
    if mode is None or mode == "auto":
        return None
    if isinstance(mode, str):
        raise ValueError(f"{what} accepts only the string 'auto', got {mode!r}.")
    if type(mode) is not bool:
        raise TypeError(f"{what} does not accept {mode!r} as its mode; use True, False, "
                        f"'auto' or None.")
    return when_true if mode else not when_true


def trainmode_(model: M, mode: bool | str | None = True) -> M:
    """Put every BatchNorm/Dropout in ``model`` in training mode (``mode=False``: test mode,
    ``"auto"`` or None: back to automatic); returns ``model``.

    >>> from fluxtree.nn import Chain, Dense, Dropout
    >>> m = trainmode_(Chain(Dense(2, 2), Dropout(0.5)))
    >>> m[1].active
    True
    """
    return _set_active(model, _mode_value(mode, "trainmode_", True))


def testmode_(model: M, mode: bool | str | None = True) -> M:
    """Put every BatchNorm/Dropout in ``model`` in test mode (``mode=False``: training mode,
    ``"auto"`` or None: back to automatic); returns ``model``.

    >>> from fluxtree.nn import BatchNorm
    >>> testmode_(BatchNorm(3)).active
    False
    >>> testmode_(BatchNorm(3), "auto").active is None
    True
    """
    return _set_active(model, _mode_value(mode, "testmode_", False))
