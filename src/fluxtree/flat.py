"""Flat vectors: every trainable parameter of a model in one contiguous vector, and back.

``destructure(model)`` walks the model once and keeps the result as a ``Layout``
(the parameter arrays, their offsets, shapes and dtypes, and which positions are tied);
the returned ``Restructure`` reuses it for every later rebuild (``re(v)``) and for
packing other trees of the same structure (``re.flatten(grads, out=buf)``).
The copies run in the compiled kernels of ``fluxtree._kernels._flat``.
"""
from __future__ import annotations

import sys
import warnings
import weakref
from typing import Any, Generic, TypeVar

import numpy as np

from . import _tracing, cuda, functors
from ._kernels import _flat, _walk
from ._kernels._walk import KeyPath, isnumeric

__all__ = ["AliasWarning", "Layout", "Restructure", "destructure", "isnumeric", "restructure",
           "trainable", "trainables"]

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
    walker = _walk.ParamCollector()
    params = _run("destructure", walker, model)
    occurrences = walker.occurrences
    return params, list(range(len(params))) if occurrences is None else occurrences


def _occurrence_paths(model: Any) -> list[KeyPath]:
    """The path of every parameter occurrence, tied positions included, in order."""
    paths: list[KeyPath] = []

    def visit(path: KeyPath, leaf: Any) -> Any:
        if isnumeric(leaf):
            paths.append(path)
        return leaf

    mapper = _walk.Mapper(visit, None, None, _walk.NO_PRUNE, False, True,
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


#: dtypes the compiled kernels copy and cast (native byte order); others take a NumPy path
_KERNEL_DTYPES = frozenset(np.dtype(t) for t in ("f2", "f4", "f8", "c8", "c16"))


def _gather(leaves: list, offsets: np.ndarray, out: np.ndarray, native: bool,
            nthreads: int = 0) -> None:
    """out[offsets[j]:...] = ravel(leaves[j]), cast (complex into real keeps the real part).

    ``nthreads=1`` keeps a large copy on the calling thread (the derivative sweeps: an
    OpenMP team started right after OpenBLAS's threaded gemms competes with its spinning
    workers, which made a 2 MB pack 30x slower on 2 cores)."""
    if native:
        _flat.gather(leaves, offsets, out, nthreads=nthreads)
        return
    for leaf, start in zip(leaves, offsets):
        src = leaf.ravel()
        if src.dtype.kind == "c" and out.dtype.kind != "c":
            src = src.real
        out[start:start + src.size] = src


def _scatter(v: np.ndarray, offsets: np.ndarray, outs: list, native: bool) -> None:
    """outs[j][...] = v[offsets[j]:...], cast back (complex into real keeps the real part)."""
    if native:
        _flat.scatter(v, offsets, outs)
        return
    for out, start in zip(outs, offsets):
        src = v[start:start + out.size]
        if src.dtype.kind == "c" and out.dtype.kind != "c":
            src = src.real
        out[...] = src.reshape(out.shape)


class Layout:
    """Where each parameter lives in the flat vector, computed once per model.

    ``params`` are the unique parameter arrays in traversal order, ``offsets[j]`` the
    start of ``params[j]`` (``offsets[-1]`` the length), ``occurrences`` the slot of every
    parameter position (tied arrays repeat a slot).  Shapes, dtypes and the block layout
    of rebuilt leaves are worked out on first use.
    """

    def __init__(self, walker: Any, params: list) -> None:
        self.params = params
        self.tied = walker.occurrences is not None
        self._occurrences: list[int] | None = walker.occurrences
        self.offsets = walker.offsets()
        self.length = int(self.offsets[-1])
        dtypes = list(walker.dtypes.values())
        if walker.foreign:
            dtypes += list({p.dtype for p in params if not isinstance(p, np.ndarray)})
        self.dtype = np.result_type(*dtypes) if dtypes else np.dtype(np.float32)
        self.paths: list[KeyPath] | None = None
        self._blocks: tuple | None = None
        self._dim_starts: np.ndarray | None = None
        self._view_plans: dict[np.dtype, tuple] = {}
        self.native = self.dtype in _KERNEL_DTYPES and all(
            d in _KERNEL_DTYPES for d in walker.dtypes.values()) and not walker.swapped

    @property
    def occurrences(self) -> list[int]:
        """The slot of every parameter position, tied positions repeating their slot."""
        if self._occurrences is None:
            self._occurrences = list(range(len(self.params)))
        return self._occurrences

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return self.blocks[0]

    @property
    def dtypes(self) -> list[np.dtype]:
        return self.blocks[1]

    @property
    def dim_starts(self) -> np.ndarray:
        """Where each slot's dimensions start in ``blocks``' flat ``dims`` array."""
        if self._dim_starts is None:
            ndims = self.blocks[2]
            starts = np.zeros(len(ndims), np.int64)
            np.cumsum(ndims[:-1], out=starts[1:])
            self._dim_starts = starts
        return self._dim_starts

    @property
    def blocks(self) -> tuple:
        """Shapes, dtypes and the arguments of ``_flat.new_leaves``, made once."""
        if self._blocks is None:
            shapes = [p.shape for p in self.params]
            dtypes = [p.dtype for p in self.params]
            ndims = np.array([len(s) for s in shapes], np.int32)
            dims = np.array([d for s in shapes for d in s], np.int64)
            nbytes = np.array([p.nbytes for p in self.params], np.int64)
            padded = (nbytes + 63) // 64 * 64          # each leaf starts 64-byte aligned
            starts = np.zeros(len(self.params) + 1, np.int64)
            np.cumsum(padded, out=starts[1:])
            self._blocks = (shapes, dtypes, ndims, dims, starts[:-1].copy(), int(starts[-1]))
        return self._blocks

    def new_leaves(self) -> list[np.ndarray]:
        """Fresh, uninitialised arrays shaped like the parameters, in one allocation."""
        _, dtypes, ndims, dims, starts, total = self.blocks
        return _flat.new_leaves(dtypes, ndims, dims, starts, total)

    def views_into(self, v: np.ndarray) -> list[np.ndarray]:
        """Parameters as views into ``v`` where the dtype matches ``v``'s, else copies."""
        plan = self._view_plans.get(v.dtype)
        if plan is None:
            plan = self._view_plans[v.dtype] = self._view_plan(v.dtype)
        same, other, view_args, copy_args, other_offsets = plan
        new: list = [None] * len(self.params)
        descrs, ndims, dims, starts, nbytes = view_args
        for j, leaf in zip(same, _flat.new_leaves(descrs, ndims, dims, starts, nbytes, v)):
            new[j] = leaf
        if other:
            copies = _flat.new_leaves(*copy_args)
            _scatter(v, other_offsets, copies, self.native and v.dtype in _KERNEL_DTYPES)
            for j, leaf in zip(other, copies):
                new[j] = leaf
        return new

    def _view_plan(self, dtype: np.dtype) -> tuple:
        shapes, dtypes = self.shapes, self.dtypes
        same = [j for j, d in enumerate(dtypes) if d == dtype]
        other = [j for j, d in enumerate(dtypes) if d != dtype]

        def args(idx: list[int], starts: np.ndarray) -> tuple:
            sub = [shapes[j] for j in idx]
            return ([dtypes[j] for j in idx], np.array([len(s) for s in sub], np.int32),
                    np.array([d for s in sub for d in s], np.int64), starts, 0)

        view_args = args(same, self.offsets[same] * dtype.itemsize)
        nbytes = np.array([self.params[j].nbytes for j in other], np.int64)
        padded = np.zeros(len(other) + 1, np.int64)
        np.cumsum((nbytes + 63) // 64 * 64, out=padded[1:])
        copy_args = args(other, padded[:-1].copy())[:4] + (int(padded[-1]),)
        return same, other, view_args, copy_args, np.ascontiguousarray(self.offsets[other])


def _check_device(layout: Layout, model: Any) -> None:
    if 0 < len([p for p in layout.params if not isinstance(p, np.ndarray)]) < len(layout.params):
        paths = _first_paths(model, len(layout.params))
        kinds = [(str(q), isinstance(p, np.ndarray)) for q, p in zip(paths, layout.params)]
        cpu = next(q for q, on_cpu in kinds if on_cpu)
        gpu = next(q for q, on_cpu in kinds if not on_cpu)
        raise ValueError(f"destructure: the model mixes CPU and GPU parameters (CPU at {cpu}, "
                         f"GPU at {gpu}); move it with fluxtree.cpu or fluxtree.gpu first.")


def _warn_aliases(layout: Layout, views: list[int], model: Any) -> None:
    """Warn when distinct parameter arrays overlap in memory (``W`` and ``W.T``)."""
    if not views:
        return
    params = layout.params
    owners = {id(p): j for j, p in enumerate(params) if p.base is None}
    suspects = set(views)
    for j in views:
        base = params[j].base
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        if id(base) in owners:
            suspects.add(owners[id(base)])
    order = sorted(suspects)
    pairs = [(order[a], order[b]) for a, b in _flat.overlap_candidates([params[j] for j in order])
             if np.shares_memory(params[order[a]], params[order[b]])]
    if pairs:
        paths = _first_paths(model, len(params))
        for a, b in pairs:
            warnings.warn(
                f"destructure: the parameters at {paths[a]} and {paths[b]} share memory "
                f"without being the same array; the flat vector holds them separately, so "
                f"the rebuilt model will not keep that tie.", AliasWarning, stacklevel=3)


def _layout_of(model: Any) -> tuple[Layout, Any]:
    walker = _walk.ParamCollector()
    params = _run("destructure", walker, model)
    layout = Layout(walker, params)
    if walker.foreign:
        _check_device(layout, model)
    return layout, walker


def restructure(model: M) -> Restructure[M]:
    """The ``Restructure`` of ``model`` without packing its parameters (``destructure``'s
    second result, at no copying cost).

    >>> re = restructure({"w": np.ones((2, 3)), "act": "relu"})
    >>> len(re), re.with_leaves(["W"])
    (6, {'w': 'W', 'act': 'relu'})
    """
    return Restructure(model, _layout_of(model)[0])


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
    layout, walker = _layout_of(model)
    if _on_gpu(layout):
        return _gpu_pack(layout, None), Restructure(model, layout)
    flat = np.empty(layout.length, layout.dtype)
    _gather(layout.params, layout.offsets, flat, layout.native)
    _warn_aliases(layout, walker.views, model)
    return flat, Restructure(model, layout)


def _on_gpu(layout: Layout) -> bool:
    """The parameters are CuPy arrays (``_check_device`` has ruled out a mix)."""
    return bool(layout.params) and not isinstance(layout.params[0], np.ndarray)


#: the device tables of GPU layouts, made on first use: "pack" for the parameters (False when
#: some are not C-contiguous: packed through copies each time), "unpack" for fresh leaves
_gpu_plans: weakref.WeakKeyDictionary[Layout, dict[str, Any]] = weakref.WeakKeyDictionary()


def _gpu_plan(layout: Layout, kind: str) -> Any:
    plans = _gpu_plans.setdefault(layout, {})
    if kind not in plans:
        start, n = layout.offsets[:-1], layout.length
        if kind == "unpack":
            plans[kind] = cuda.PackPlan.for_new_leaves(layout.shapes, layout.dtypes, start, n)
        elif all(p.flags.c_contiguous for p in layout.params):
            plans[kind] = cuda.PackPlan(layout.params, start, n)
        else:
            plans[kind] = False
    return plans[kind]


def _gpu_pack(layout: Layout, out: Any) -> Any:
    """The parameters of a GPU layout in ``out`` (or a new vector of the layout's dtype), in
    one launch."""
    cp = sys.modules["cupy"]
    if out is None:
        out = cp.empty(layout.length, layout.dtype)
    plan = _gpu_plan(layout, "pack")
    if plan is False:
        params = [p if p.flags.c_contiguous else cp.ascontiguousarray(p) for p in layout.params]
        plan = cuda.PackPlan(params, layout.offsets[:-1], layout.length)
    return plan.pack(out)


def _as_gpu_vector(v: Any, n: int) -> Any:
    """``v`` as a contiguous CuPy float or complex vector of length ``n`` (integers as
    float64), for a model whose parameters are CuPy arrays."""
    if not hasattr(v, "__cuda_array_interface__"):
        raise ValueError(f"Restructure: this model lives on the GPU but the vector is a "
                         f"{type(v).__name__}; move it with fluxtree.gpu first.")
    cp = sys.modules["cupy"]
    v = cp.asarray(v)
    _check_vector(v, n)
    if v.dtype.kind in "biu":
        return v.astype(np.float64)
    return cp.ascontiguousarray(v)


def _gpu_leaves(layout: Layout, v: Any, copy: bool) -> list:
    """New CuPy parameters from the vector ``v`` (one scatter launch); with ``copy=False``
    those of ``v``'s dtype are views into it."""
    v = _as_gpu_vector(v, layout.length)
    off = layout.offsets
    if copy:
        plan = _gpu_plan(layout, "unpack")
        block, new = plan.new_leaves()
        plan.scatter(v, block)
        return new
    same = [j for j, d in enumerate(layout.dtypes) if d == v.dtype]
    other = [j for j, d in enumerate(layout.dtypes) if d != v.dtype]
    leaves: list = [None] * len(layout.params)
    for j in same:
        leaves[j] = v[off[j]:off[j + 1]].reshape(layout.shapes[j])
    if other:
        copies = cuda.new_leaves([layout.shapes[j] for j in other],
                                 [layout.dtypes[j] for j in other])
        cuda.scatter(v, off[other], copies)
        for j, leaf in zip(other, copies):
            leaves[j] = leaf
    return leaves


def _check_vector(v: Any, n: int) -> None:
    """``v`` (NumPy or CuPy) must be a real, complex or integer vector of length ``n``."""
    if v.dtype.kind not in "biufc":
        raise TypeError(f"Restructure: expected a real, complex or integer vector, got dtype "
                        f"{v.dtype}.")
    if v.ndim != 1:
        raise ValueError(f"Restructure: expected a 1-D vector of length {n}, got shape "
                         f"{v.shape}.")
    if v.shape[0] != n:
        raise ValueError(f"Restructure: expected a vector of length {n}, got {v.shape[0]}.")


def _as_vector(v: Any, n: int) -> np.ndarray:
    if not isinstance(v, np.ndarray):
        if hasattr(v, "__cuda_array_interface__"):
            raise ValueError("Restructure: this model lives on the CPU but the vector is a "
                             "GPU array; move one of them first.")
        v = np.asarray(v)
    _check_vector(v, n)
    if v.dtype.kind in "biu":
        return v.astype(np.float64)
    if not v.dtype.isnative:
        return v.astype(v.dtype.newbyteorder("="))
    if not (v.flags.c_contiguous and v.flags.aligned):
        return np.ascontiguousarray(v)
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
        if self.layout.paths is None:
            self.layout.paths = _first_paths(self.model, len(self.layout.params))
        return list(self.layout.paths)

    def __call__(self, v: Any, *, copy: bool = True) -> M:
        lay = self.layout
        if isinstance(v, _tracing.Traced):         # inside a derivative: record the rebuild
            return self._rebuild(_tracing.record(_RestructureOp(lay), (v,)))
        if _on_gpu(lay):
            return self._rebuild(_gpu_leaves(lay, v, copy))
        v = _as_vector(v, lay.length)
        if copy:
            new = lay.new_leaves()
            _scatter(v, lay.offsets, new, lay.native and v.dtype in _KERNEL_DTYPES)
        else:
            new = lay.views_into(v)
        return self._rebuild(new)

    def with_leaves(self, leaves: list) -> M:
        """The model with ``leaves[j]`` (any objects) in place of parameter ``j``; tied
        positions share one.  ``fluxtree.autodiff`` uses it to put traced values in a model.

        >>> w = np.ones(2)
        >>> restructure({"a": w, "b": w, "c": np.zeros(1)}).with_leaves(["W", "C"])
        {'a': 'W', 'b': 'W', 'c': 'C'}
        """
        if len(leaves) != len(self.layout.params):
            raise ValueError(f"Restructure.with_leaves: expected {len(self.layout.params)} "
                             f"leaves, got {len(leaves)}.")
        return self._rebuild(list(leaves))

    def _rebuild(self, new: list) -> M:
        mapper = _walk.Mapper(None, None, True, _walk.NO_PRUNE, False, False, True)
        return _run("Restructure", mapper.replace(self.layout.params, new), self.model, ())

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
        if _on_gpu(lay):
            return self._flatten_gpu(tree, out)
        if tree is self.model:
            out = self._out([lay.dtype], out)
            _gather(lay.params, lay.offsets, out, lay.native and out.dtype in _KERNEL_DTYPES)
            return out
        shapes, _, ndims, dims, _, _ = lay.blocks
        pairer = _walk.ParamPairer(shapes, lay._occurrences, ndims, dims, lay.dim_starts)
        values = _run("Restructure.flatten", pairer, self.model, tree)
        dtypes = list(pairer.dtypes.values())
        out = self._out(dtypes, out)
        native = (out.dtype in _KERNEL_DTYPES and not pairer.swapped
                  and all(d in _KERNEL_DTYPES for d in dtypes))
        if not lay.tied:
            self._pack(values, lay.offsets, out, pairer.nones > 0, native)
            return out
        by_slot: list[list] = [[] for _ in lay.params]
        for value, slot in zip(values, lay.occurrences):
            if value is not None and not any(value is seen for seen in by_slot[slot]):
                by_slot[slot].append(value)
        self._pack([vs[0] if vs else None for vs in by_slot], lay.offsets, out,
                   not all(by_slot), native)
        for slot, vs in enumerate(by_slot):
            for v in vs[1:]:
                start = lay.offsets[slot]
                if native:
                    _flat.gather_add([v], np.array([start], np.int64), out)
                else:
                    out[start:start + v.size] += v.ravel()
        return out

    def _flatten_gpu(self, tree: Any, out: Any) -> Any:
        """``flatten`` of a GPU model: the model itself, packed in one launch."""
        lay = self.layout
        if tree is not self.model:
            raise NotImplementedError(
                "Restructure.flatten: for a model on the GPU only the model itself can be "
                "packed yet; pass it, or move the tree to the host with fluxtree.cpu.")
        if out is None:
            return _gpu_pack(lay, None)
        if not hasattr(out, "__cuda_array_interface__") or out.ndim != 1 \
                or out.shape[0] != lay.length:
            got = f"shape {out.shape}" if hasattr(out, "shape") else type(out).__name__
            raise ValueError(f"Restructure.flatten: out must be a 1-D GPU vector of length "
                             f"{lay.length}, got {got}.")
        if out.dtype.kind not in "fc" or not out.flags.c_contiguous \
                or not np.can_cast(lay.dtype, out.dtype, "same_kind"):
            raise TypeError(f"Restructure.flatten: out must be a contiguous float or complex "
                            f"vector that dtype {lay.dtype} casts to, got dtype {out.dtype}.")
        return _gpu_pack(lay, out)

    @staticmethod
    def _pack(values: list, offsets: np.ndarray, out: np.ndarray, holes: bool,
              native: bool, nthreads: int = 0) -> None:
        if holes:
            keep = []
            for j, v in enumerate(values):
                if v is None:
                    out[offsets[j]:offsets[j + 1]] = 0
                else:
                    keep.append(j)
            values = [values[j] for j in keep]
            offsets = np.ascontiguousarray(offsets[keep])
        _gather(values, offsets, out, native, nthreads)

    def _out(self, dtypes: list[np.dtype], out: np.ndarray | None) -> np.ndarray:
        lay = self.layout
        if out is None:
            return np.empty(lay.length, np.result_type(lay.dtype, *dtypes))
        if not isinstance(out, np.ndarray) or out.ndim != 1 or out.shape[0] != lay.length:
            got = f"shape {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
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


class _RestructureOp:
    """``re(v)`` on the tape: one output per parameter (a view of ``v`` where the dtypes
    agree), so gradients of tied uses meet in one slot; every rule is a gather or scatter."""

    multi_output = True
    linear = True

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def forward(self, inputs: tuple) -> tuple[list, np.dtype]:
        v = _as_vector(inputs[0], self.layout.length)
        return self.layout.views_into(v), v.dtype

    def _slices(self) -> list[tuple[int, int]]:
        off = self.layout.offsets
        return [(int(off[j]), int(off[j + 1])) for j in range(len(self.layout.params))]

    def backward(self, dtype: np.dtype, d_outs: list, needs: tuple) -> tuple:
        out = np.empty(self.layout.length, dtype)
        native = self.layout.native and dtype in _KERNEL_DTYPES
        Restructure._pack(d_outs, self.layout.offsets, out, any(d is None for d in d_outs),
                          native and all(d is None or d.dtype in _KERNEL_DTYPES for d in d_outs),
                          nthreads=1)
        return (out,)

    def tangent(self, dtype: np.dtype, t_inputs: tuple) -> list:
        tv = t_inputs[0]
        k = tv.shape[0]
        return [tv[:, a:b].reshape(k, *shape).astype(d, copy=False)
                for (a, b), shape, d in zip(self._slices(), self.layout.shapes, self.layout.dtypes)]

    def tangent_backward(self, dtype: np.dtype, t_inputs: tuple, d_outs: Any, t_d_outs: list,
                         needs: tuple) -> tuple:
        if t_d_outs is None:                        # linear: no adjoint tangent, none out
            return (None,)
        k = next(t.shape[0] for t in t_d_outs if t is not None)
        if k == 1:                                  # one tangent: the backward's packing
            return (self.backward(dtype, [None if t is None else t[0] for t in t_d_outs],
                                  needs)[0][None, :],)
        out = np.zeros((k, self.layout.length), dtype)
        for (a, b), t in zip(self._slices(), t_d_outs):
            if t is not None:
                out[:, a:b] = t.reshape(k, b - a)
        return (out,)
