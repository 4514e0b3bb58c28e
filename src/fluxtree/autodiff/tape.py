"""The tape: traced values, the ops recorded on them, and the four sweeps over those ops.

A ``Tape`` records each op (a layer call, a loss, ``re(v)``, an array operation) with the
values it saved.  Four sweeps then run over the records, each calling one rule of every
op (the protocol of ``fluxtree._tracing``):

* ``forward`` while ``f`` runs (recording);
* ``propagate_tangents``: ``tangent`` rules, a block of k tangents at once;
* ``backward``: ``backward`` rules from the output's seed 1, adjoints summed per value;
* ``backward_tangents``: ``tangent_backward`` rules — the tangent of every adjoint, which
  at the input is the Hessian-vector product (Pearlmutter's R-operator).

Gauss-Newton products run the last sweep with zero adjoints for the ops before the
loss (``split``), which drops every second-derivative term of the model.
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from .. import _tracing
from .tracked import Tracked


class Node:
    """One recorded op: its inputs (traced or constant), outputs and saved values."""

    __slots__ = ("inputs", "needs", "op", "outputs", "saved")

    def __init__(self, op: Any, inputs: tuple, needs: tuple, outputs: Any, saved: Any) -> None:
        self.op, self.inputs, self.needs, self.outputs, self.saved = op, inputs, needs, outputs, saved


def _accumulate_adj(t: Tracked, g: Any) -> None:
    if g is None:
        return
    g = _fit(g, t.value.shape, t.value.dtype, 0)
    t.adj = g if t.adj is None else np.asarray(t.adj + g)     # 0-d + 0-d is a NumPy scalar


def _accumulate_tadj(t: Tracked, g: Any) -> None:
    if g is None:
        return
    g = _fit(g, t.value.shape, t.value.dtype, 1)
    t.tadj = g if t.tadj is None else t.tadj + g


def _fit(g: Any, shape: tuple, dtype: np.dtype, lead: int) -> np.ndarray:
    """``g`` as an array of the value's dtype; a wrong shape is a bug in an op's rule."""
    if type(g) is not np.ndarray:
        g = np.asarray(g)
    if (g.shape if lead == 0 else g.shape[lead:]) != shape:
        raise ValueError(f"fluxtree.autodiff: an op's rule returned shape {g.shape[lead:]} for "
                         f"a value of shape {shape}.")
    return g if g.dtype == dtype else g.astype(dtype)


class Tape:
    """The record of one evaluation of a function, and the sweeps over it."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.inputs: list[Tracked] = []
        self.ref = weakref.ref(self)
        self._curvature_needs: list[tuple] | None = None

    # -- recording -------------------------------------------------------------------
    def watch(self, value: np.ndarray) -> Tracked:
        """A traced input of the function (its value is used as it is, not copied)."""
        t = Tracked(value, self.ref)
        self.inputs.append(t)
        return t

    def record(self, op: Any, inputs: tuple) -> Any:
        for x in inputs:
            if isinstance(x, Tracked) and x.tape is not self.ref:
                raise TypeError("fluxtree.autodiff: a traced value from another derivative "
                                 "evaluation was used here; nested derivatives are not "
                                 "supported (use hvp or hessian for second order).")
        values = tuple(x.value if isinstance(x, Tracked) else x for x in inputs)
        needs = tuple(isinstance(x, Tracked) for x in inputs)
        out, saved = op.forward(values)
        if getattr(op, "multi_output", False):
            outputs: Any = [Tracked(o, self.ref) for o in out]
            result: Any = outputs
        else:
            outputs = result = Tracked(out, self.ref)
        self.nodes.append(Node(op, inputs, needs, outputs, saved))
        self._curvature_needs = None
        return result

    # -- sweeps ----------------------------------------------------------------------
    def propagate_tangents(self, seeds: dict[int, np.ndarray]) -> None:
        """Set every value's tangent block from the inputs' ``seeds`` (id -> (k, *shape))."""
        for t in self.inputs:
            t.tan = seeds.get(id(t))
        for node in self.nodes:
            t_in = tuple(x.tan if isinstance(x, Tracked) else None for x in node.inputs)
            multi = isinstance(node.outputs, list)
            if all(t is None for t in t_in):
                t_out: Any = [None] * len(node.outputs) if multi else None
            else:
                rule = getattr(node.op, "tangent", None)
                if rule is None:
                    raise TypeError(f"fluxtree.autodiff: {_op_name(node.op)} has no tangent "
                                    f"rule, so Jacobian- and Hessian-vector products through "
                                    f"it are not available; gradients still are.")
                t_out = rule(node.saved, t_in)
            if multi:
                for o, t in zip(node.outputs, t_out):
                    o.tan = t
            else:
                node.outputs.tan = t_out

    def curvature_needs(self) -> list[tuple]:
        """Per node, which inputs need an adjoint when only Hessian products are wanted.

        The tangent-backward rule of a nonlinear op uses the adjoint of its output; a
        linear op's rule does not (``op.linear``).  So a value needs an adjoint when a
        nonlinear op made it, or a linear op whose inputs need one; the inputs of the
        function and the parameters ``re(v)`` cuts from them never do, and the backward
        sweep of an HVP skips their (weight-sized) gradients.  Worked out once per recording.
        """
        if self._curvature_needs is not None:
            return self._curvature_needs
        wanted: set[int] = set()
        out = []
        for node in self.nodes:
            out.append(tuple(need and id(x) in wanted for x, need in zip(node.inputs, node.needs)))
            if not getattr(node.op, "linear", False) or any(out[-1]):
                for o in (node.outputs if isinstance(node.outputs, list) else (node.outputs,)):
                    wanted.add(id(o))
        self._curvature_needs = out
        return out

    def backward(self, output: Tracked, start: int = 0, curvature_only: bool = False) -> None:
        """Adjoints of every value from the seed d output = 1 (ops before ``start`` skipped;
        with ``curvature_only``, only the adjoints Hessian products use)."""
        for node in self.nodes[start:]:
            _clear(node.outputs, "adj")
        for t in self.inputs:
            t.adj = None
        output.adj = np.ones(output.value.shape, output.value.dtype)
        needs_of = self.curvature_needs() if curvature_only else None
        for i in range(len(self.nodes) - 1, start - 1, -1):
            node = self.nodes[i]
            d_out = _gather(node.outputs, "adj")
            if d_out is None:
                continue
            needs = node.needs if needs_of is None else needs_of[i]
            if needs_of is not None and not any(needs) and getattr(node.op, "linear", False):
                continue
            grads = node.op.backward(node.saved, d_out, needs)
            for x, g, need in zip(node.inputs, grads, needs):
                if need:
                    _accumulate_adj(x, g)

    def backward_tangents(self, split: int = 0) -> None:
        """Tangents of the adjoints (adjoints must be set); ops before ``split`` see zero
        adjoints, which turns the Hessian product into the Gauss-Newton one."""
        for node in self.nodes:
            _clear(node.outputs, "tadj")
        for t in self.inputs:
            t.tadj = None
        for i in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[i]
            t_d_out = _gather(node.outputs, "tadj")
            t_in = tuple(x.tan if isinstance(x, Tracked) else None for x in node.inputs)
            if t_d_out is None and all(t is None for t in t_in):
                continue
            d_out = None if i < split else _gather(node.outputs, "adj")
            if d_out is None and t_d_out is None:
                continue
            op = node.op
            rule = getattr(op, "tangent_backward", None)
            if rule is None:
                raise TypeError(f"fluxtree.autodiff: {_op_name(op)} has no second-order rule "
                                f"(tangent_backward), so Hessian products through it are not "
                                f"available; gradients still are.")
            grads = rule(node.saved, t_in, d_out, t_d_out, node.needs)
            for x, g, need in zip(node.inputs, grads, node.needs):
                if need:
                    _accumulate_tadj(x, g)


def _clear(outputs: Any, attr: str) -> None:
    if isinstance(outputs, list):
        for o in outputs:
            setattr(o, attr, None)
    else:
        setattr(outputs, attr, None)


def _gather(outputs: Any, attr: str) -> Any:
    """The outputs' adjoints (or their tangents): None when no output has one."""
    if not isinstance(outputs, list):
        return getattr(outputs, attr)
    vals = [getattr(o, attr) for o in outputs]
    return None if all(v is None for v in vals) else vals


def _op_name(op: Any) -> str:
    return repr(op) if hasattr(type(op), "__call__") else type(op).__name__


def _record(op: Any, inputs: tuple) -> Any:
    tape = next(x.tape for x in inputs if isinstance(x, Tracked))()
    if tape is None:
        raise TypeError("fluxtree.autodiff: this traced value belongs to a derivative "
                        "evaluation that has finished; use its `.value`.")
    return tape.record(op, inputs)


_tracing.install(_record)
