"""Flat vectors: every trainable parameter of a model in one contiguous vector, and back.

``destructure(model)`` walks the model once and keeps the result as a ``Layout``
(the parameter arrays, their offsets, shapes and dtypes, and which positions are tied);
the returned ``Restructure`` reuses it for every later rebuild (``re(v)``) and for
packing other trees of the same structure (``re.flatten(grads, out=buf)``).
The copies run in the compiled kernels of ``fluxtree._kernels._flat``.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.lib.array_utils import byte_bounds

from . import functors
from ._kernels import _flat, _walk
from ._kernels._walk import KeyPath, isnumeric

__all__ = ["AliasWarning", "Layout", "Restructure", "destructure", "isnumeric", "trainable",
           "trainables"]

M = TypeVar("M")


class AliasWarning(UserWarning):
    """Two parameters share memory without being the same array (``W`` and ``W.T``)."""


def trainable(x: Any) -> Any:
    """The children of ``x`` that hold parameters: all of them, unless ``x`` narrows them.

    A class narrows its trainable children with a ``trainable(self)`` method returning a
    dict (name -> value) that is a subset of its children; the others (running
    statistics, configuration) are carried over unchanged by ``destructure``'s rebuild.

    >>> import fluxtree as ft
    >>> @ft.functor
    ... class Scaled:
    ...     def __init__(self, w, scale):
    ...         self.w, self.scale = w, scale
    ...     def trainable(self):
    ...         return {"w": self.w}
    >>> trainable(Scaled(np.ones(2), np.ones(1)))
    {'w': array([1., 1.])}
    >>> trainable((1, 2))
    (1, 2)
    """
    ch = functors.children(x)
    method = getattr(type(x), "trainable", None)
    if not isinstance(ch, dict) or not callable(method) or functors.isleaf(x):
        return ch
    narrowed = x.trainable()
    if not isinstance(narrowed, dict):
        raise TypeError(f"{type(x).__name__}.trainable() must return a dict of child name -> "
                        f"value, got {type(narrowed).__name__}.")
    unknown = [k for k in narrowed if k not in ch]
    if unknown:
        raise ValueError(f"{type(x).__name__}.trainable() names {unknown}, which are not "
                         f"among its children {list(ch)}.")
    return {k: v for k, v in ch.items() if k in narrowed}


def trainables(x: Any, *, path: bool = False) -> list:
    """The trainable parameter arrays of ``x`` (the same objects), tied ones once.

    With ``path=True``, ``(KeyPath, array)`` pairs naming each one's first position.

    >>> m = {"a": np.zeros(2), "b": (np.ones(1), "relu"), "n": np.arange(3)}
    >>> [a.tolist() for a in trainables(m)]
    [[0.0, 0.0], [1.0]]
    >>> [str(p) for p, _ in trainables(m, path=True)]
    ['["a"]', '["b"][0]']
    """
    params = _collect_params(x)[0]
    if not path:
        return params
    return list(zip(_first_paths(x, len(params)), params))


def _run(what: str, walker: Any, *args: Any) -> Any:
    try:
        return walker.run(*args)
    except BaseException as e:
        err = _walk.finish_error(e, what)
        if err is e:
            raise
        raise err from None


def _collect_params(model: Any) -> tuple[list, list]:
    walker = _walk.Collector(None, True, True)
    params = _run("destructure", walker, model)
    return params, walker.occurrences


def _occurrence_paths(model: Any) -> list[KeyPath]:
    """The path of every parameter occurrence, tied positions included, in order."""
    paths: list[KeyPath] = []

    def visit(path: KeyPath, leaf: Any) -> Any:
        if isnumeric(leaf):
            paths.append(path)
        return leaf

    mapper = _walk.Mapper(visit, functors._leaf_at_path, None, _walk.NO_PRUNE, False, True,
                          True)
    _run("destructure", mapper, model, ())
    return paths


def _first_paths(model: Any, n: int) -> list[KeyPath]:
    occ = _collect_params(model)[1]
    first: list[KeyPath | None] = [None] * n
    for slot, p in zip(occ, _occurrence_paths(model)):
        if first[slot] is None:
            first[slot] = p
    return first  # type: ignore[return-value]


class Layout:
    """Where each parameter lives in the flat vector, computed once per model.

    ``params`` are the unique parameter arrays in traversal order, ``offsets[j]`` the
    start of ``params[j]`` (``offsets[-1]`` the length), ``occurrences`` the slot of every
    parameter position (tied arrays repeat a slot).
    """

    __slots__ = ("params", "offsets", "shapes", "dtypes", "dtype", "occurrences", "tied",
                 "_paths", "_occ_paths")

    def __init__(self, params: list, occurrences: list) -> None:
        self.params = params
        self.occurrences = occurrences
        self.tied = len(occurrences) != len(params)
        sizes = np.fromiter((p.size for p in params), np.int64, len(params))
        offsets = np.zeros(len(params) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        self.offsets = offsets
        self.shapes = [p.shape for p in params]
        self.dtypes = [p.dtype for p in params]
        unique = set(self.dtypes)
        self.dtype = np.result_type(*unique) if unique else np.dtype(np.float32)
        self._paths: list[KeyPath] | None = None
        self._occ_paths: list[KeyPath] | None = None

    @property
    def length(self) -> int:
        return int(self.offsets[-1])


def _check_device(params: list, model: Any) -> None:
    kinds = {type(p) is np.ndarray or isinstance(p, np.ndarray) for p in params}
    if len(kinds) > 1:
        paths = _first_paths(model, len(params))
        cpu = next(str(q) for q, p in zip(paths, params) if isinstance(p, np.ndarray))
        gpu = next(str(q) for q, p in zip(paths, params) if not isinstance(p, np.ndarray))
        raise ValueError(f"destructure: the model mixes CPU and GPU parameters (CPU at {cpu}, "
                         f"GPU at {gpu}); move it with fluxtree.cpu or fluxtree.gpu first.")


def _warn_aliases(params: list, model: Any) -> None:
    """Warn when distinct parameter arrays overlap in memory (views of one buffer)."""
    groups: dict[int, list[int]] = {}
    for j, p in enumerate(params):
        base = p.base
        if base is None:
            continue
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        groups.setdefault(id(base), []).append(j)
    owners = {id(p): j for j, p in enumerate(params) if p.base is None}
    pairs = []
    for key, members in groups.items():
        if key in owners:
            members = [owners[key], *members]
        if len(members) < 2:
            continue
        bounds = sorted((byte_bounds(params[j]), j) for j in members)
        reach, who = bounds[0][0][1], bounds[0][1]
        for (lo, hi), j in bounds[1:]:
            if lo < reach and np.shares_memory(params[who], params[j]):
                pairs.append((who, j))
            if hi > reach:
                reach, who = hi, j
    if pairs:
        paths = _first_paths(model, len(params))
        for a, b in pairs:
            a, b = sorted((a, b))
            warnings.warn(
                f"destructure: the parameters at {paths[a]} and {paths[b]} share memory "
                f"without being the same array; the flat vector holds them separately, so "
                f"the rebuilt model will not keep that tie.", AliasWarning, stacklevel=3)


def destructure(model: M) -> tuple[np.ndarray, Restructure[M]]:
    """All trainable parameters of ``model`` in one vector, and the way back.

    Parameters are the float and complex arrays reached through ``trainable`` children,
    in traversal order, each in C (row-major) order; an array reached twice (a tie) is
    one slice.  The vector's dtype is ``np.result_type`` of theirs (float32 when there
    are none).  The ``Restructure`` rebuilds the model from any vector of that length.

    >>> flat, re = destructure({"x": np.array([1.0, 2.0]), "y": ("sin", np.array([3 + 4j]))})
    >>> flat
    array([1.+0.j, 2.+0.j, 3.+4.j])
    >>> re
    Restructure(dict, ..., 3)
    >>> re(np.array([3, 5, 7 + 11j]))
    {'x': array([3., 5.]), 'y': ('sin', array([7.+11.j]))}
    """
    params, occurrences = _collect_params(model)
    _check_device(params, model)
    layout = Layout(params, occurrences)
    if params and not isinstance(params[0], np.ndarray):
        return _gpu_pack(layout), Restructure(model, layout)
    flat = np.empty(layout.length, layout.dtype)
    _flat.gather(params, layout.offsets, flat)
    _warn_aliases(params, model)
    return flat, Restructure(model, layout)


def _gpu_pack(layout: Layout) -> Any:
    import cupy

    return cupy.concatenate([cupy.ravel(p).astype(layout.dtype) for p in layout.params])


def _as_vector(v: Any, n: int) -> np.ndarray:
    if not isinstance(v, np.ndarray):
        if hasattr(v, "__cuda_array_interface__"):
            raise ValueError("Restructure: this model lives on the CPU but the vector is a "
                             "GPU array; move one of them first.")
        v = np.asarray(v)
    if v.dtype.kind not in "biufc":
        raise TypeError(f"Restructure: expected a real, complex or integer vector, got dtype "
                        f"{v.dtype}.")
    if v.ndim != 1:
        raise ValueError(f"Restructure: expected a 1-D vector of length {n}, got shape "
                         f"{v.shape}.")
    if v.shape[0] != n:
        raise ValueError(f"Restructure: expected a vector of length {n}, got {v.shape[0]}.")
    if v.dtype.kind in "biu":
        v = v.astype(np.float64)
    elif not v.dtype.isnative or v.dtype == np.longdouble or v.dtype == np.clongdouble:
        v = v.astype(np.result_type(v.dtype.newbyteorder("="), np.float64).newbyteorder("="))
    return v


class Restructure(Generic[M]):
    """Rebuilds a model from a flat vector; made by ``destructure``.

    ``re(v)`` is a new model of the original's structure with each parameter a new array
    cast back to its dtype (complex into real keeps the real part) and shape; tied
    positions get one shared new array; everything else (functions, integer arrays,
    non-trainable fields such as running statistics) is the original object itself,
    shared as in Flux.  ``re(v, copy=False)`` lets parameters whose dtype matches ``v``
    be views into ``v`` (writing to one writes to the other).  ``re.flatten(tree)``
    packs another tree of the same structure with the same layout.
    """

    def __init__(self, model: M, layout: Layout) -> None:
        self.model = model
        self.layout = layout

    def __len__(self) -> int:
        return self.layout.length

    def __repr__(self) -> str:
        return f"Restructure({type(self.model).__name__}, ..., {self.layout.length})"

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the flat vector ``destructure`` made."""
        return self.layout.dtype

    @property
    def paths(self) -> list[KeyPath]:
        """The position of each slice (the first position of a tied parameter)."""
        if self.layout._paths is None:
            self.layout._paths = _first_paths(self.model, len(self.layout.params))
        return list(self.layout._paths)

    def _occurrence_paths(self) -> list[KeyPath]:
        if self.layout._occ_paths is None:
            self.layout._occ_paths = _occurrence_paths(self.model)
        return self.layout._occ_paths

    def __call__(self, v: Any, *, copy: bool = True) -> M:
        lay = self.layout
        v = _as_vector(v, lay.length)
        new = [np.empty(s, d) for s, d in zip(lay.shapes, lay.dtypes)]
        if not copy:
            offs = lay.offsets
            for j, d in enumerate(lay.dtypes):
                if d == v.dtype:
                    new[j] = v[offs[j]:offs[j + 1]].reshape(lay.shapes[j])
            todo = [j for j, d in enumerate(lay.dtypes) if d != v.dtype]
            if todo:
                _flat.scatter(v, np.ascontiguousarray(offs[todo]), [new[j] for j in todo])
        else:
            _flat.scatter(v, lay.offsets, new)
        return self._rebuild(new)

    def _rebuild(self, new: Sequence[Any]) -> M:
        cache = {id(p): (p, a) for p, a in zip(self.layout.params, new)}
        mapper = _walk.Mapper(_same, None, cache, _walk.NO_PRUNE, False, False, True)
        return _run("Restructure", mapper, self.model, ())

    def flatten(self, tree: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Pack ``tree`` (same structure as the model) into a flat vector with this layout.

        ``tree`` may be a second model, or a gradient: dicts/tuples shaped like the model,
        ``None`` where there is no gradient.  At tied positions one object counts once,
        different objects (the gradient of each use) are summed.  With ``out`` (a 1-D
        float or complex vector of the right length) nothing is allocated.

        >>> w = np.ones(2)
        >>> flat, re = destructure({"a": w, "b": w, "c": np.zeros(1)})
        >>> re.flatten({"a": np.array([1.0, 2.0]), "b": np.array([10.0, 20.0]), "c": None})
        array([11., 22.,  0.])
        """
        lay = self.layout
        if tree is self.model:
            values = list(lay.params) if not lay.tied else None
        else:
            values = _run("Restructure.flatten", _walk.ParamPairer(), self.model, tree)
        if values is None:
            values = [lay.params[s] for s in lay.occurrences]
        self._check_values(values)
        out = self._out(values, out)
        if not lay.tied:
            self._pack(values, lay.offsets, out)
            return out
        slots = lay.occurrences
        first: dict[int, list] = {}
        for value, slot in zip(values, slots):
            first.setdefault(slot, []).append(value)
        leading, extra, extra_slots = [], [], []
        for slot in range(len(lay.params)):
            seen = []
            for value in first[slot]:
                if value is None or any(value is s for s in seen):
                    continue
                seen.append(value)
            leading.append(seen[0] if seen else None)
            extra.extend(seen[1:])
            extra_slots.extend([slot] * (len(seen) - 1))
        self._pack(leading, lay.offsets, out)
        if extra:
            _flat.gather_add(extra, np.ascontiguousarray(lay.offsets[extra_slots]), out)
        return out

    def _pack(self, values: list, offsets: np.ndarray, out: np.ndarray) -> None:
        if any(v is None for v in values):
            keep = [j for j, v in enumerate(values) if v is not None]
            for j, v in enumerate(values):
                if v is None:
                    out[offsets[j]:offsets[j + 1]] = 0
            values = [values[j] for j in keep]
            offsets = np.ascontiguousarray(offsets[keep])
        _flat.gather(values, offsets, out)

    def _check_values(self, values: list) -> None:
        lay = self.layout
        for k, (value, slot) in enumerate(zip(values, lay.occurrences)):
            if value is None:
                continue
            if type(value) is not np.ndarray or not isnumeric(value):
                what = (f"dtype {value.dtype}" if isinstance(value, np.ndarray)
                        else f"a {type(value).__name__}")
                raise TypeError(f"Restructure.flatten: expected a float or complex array at "
                                f"{self._occurrence_paths()[k]}, got {what}.")
            if value.shape != lay.shapes[slot]:
                raise ValueError(f"Restructure.flatten: expected shape {lay.shapes[slot]} at "
                                 f"{self._occurrence_paths()[k]}, got {value.shape}.")

    def _out(self, values: list, out: np.ndarray | None) -> np.ndarray:
        lay = self.layout
        dtypes = {v.dtype for v in values if v is not None}
        if out is None:
            return np.empty(lay.length, np.result_type(lay.dtype, *dtypes))
        if not isinstance(out, np.ndarray) or out.ndim != 1 or out.shape[0] != lay.length:
            got = out.shape if isinstance(out, np.ndarray) else type(out).__name__
            raise ValueError(f"Restructure.flatten: out must be a 1-D vector of length "
                             f"{lay.length}, got {got}.")
        if out.dtype.kind not in "fc" or not out.flags.c_contiguous or not out.flags.writeable:
            raise TypeError(f"Restructure.flatten: out must be a writeable contiguous float or "
                            f"complex vector, got dtype {out.dtype}.")
        for d in dtypes:
            if not np.can_cast(d, out.dtype, "same_kind"):
                raise TypeError(f"Restructure.flatten: dtype {d} cannot be cast to {out.dtype} "
                                f"under casting='same_kind'.")
        return out


def _same(x: Any) -> Any:
    return x
