"""The hook between differentiable code and the tape of ``fluxtree.autodiff``.

Layers, losses and ``Restructure`` sit below ``autodiff`` in the package's layer order, so
they cannot import it.  When one of their inputs is a value being traced (a ``Traced``,
which ``autodiff.Tracked`` subclasses), they hand themselves to ``record`` instead of
computing: the tape then runs the op's ``forward`` and keeps what its derivative rules need.

An op is any object with these four rules (the last two only for second order):

``forward(inputs) -> (output, saved)``
    ``inputs`` is a tuple of plain values (arrays, or None for an absent input).
``backward(saved, d_out, needs) -> d_inputs``
    the vector-Jacobian product; ``needs[i]`` says whether input ``i`` wants a gradient
    (None may be returned where it does not).
``tangent(saved, t_inputs) -> t_out``
    the Jacobian-vector product for a block of k tangents: each tangent has a leading axis
    of length k (``(k, *value.shape)``); ``t_inputs[i]`` is None for an input without one.
``tangent_backward(saved, t_inputs, d_out, t_d_out, needs) -> t_d_inputs``
    the tangent of ``backward`` (Pearlmutter's R-operator); ``d_out`` None means zero (the
    Gauss-Newton product), ``t_d_out`` None means zero.

An op with ``multi_output = True`` returns a list of arrays from ``forward`` and receives
a list of adjoints (None where an output got none) in ``backward``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Traced", "any_traced", "record"]


class Traced:
    """Base class of values recorded on a tape (``fluxtree.autodiff.Tracked``)."""

    __slots__ = ()


def any_traced(*values: Any) -> bool:
    """Whether any of ``values`` is being traced (one ``isinstance`` per value)."""
    for v in values:
        if isinstance(v, Traced):
            return True
    return False


_recorder: Callable[[Any, tuple], Any] | None = None


def install(recorder: Callable[[Any, tuple], Any]) -> None:
    """Set the function that records an op (called once, by ``fluxtree.autodiff``)."""
    global _recorder
    _recorder = recorder


def record(op: Any, inputs: tuple) -> Any:
    """Run ``op`` on ``inputs`` (some of them traced) and record it on their tape."""
    if _recorder is None:                      # autodiff is imported by fluxtree/__init__
        raise RuntimeError("fluxtree.autodiff is not loaded; import fluxtree first.")
    return _recorder(op, inputs)
