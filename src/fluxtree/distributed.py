"""Data parallelism over MPI (mpi4py): one collective per tree, one per evaluation.

Every parameter and every gradient of a model fits in one flat vector (``destructure``'s
layout), so synchronising a whole tree across processes takes a single MPI call on that
vector: ``allreduce_(tree, comm)`` packs the tree's arrays into one buffer, sums it over
the ranks with one ``Allreduce`` and writes the result back into the same arrays;
``bcast_(tree, comm, root)`` sends the root's arrays to every rank with one ``Bcast``.
``Objective(..., comm=comm)`` and ``minimize(..., comm=comm)`` (``fluxtree.optimize``)
use the same idea for scipy's methods, and ``shard`` splits a data set by rank.

MPI comes from mpi4py and an MPI library, both optional (``pip install "fluxtree[mpi]"``
installs mpi4py and the MPICH wheel).  This module imports without them; its functions
raise ImportError with the install command when called.  Launch with
``mpiexec -n 4 python -m mpi4py train.py``: ``-m mpi4py`` aborts the whole job when one
rank raises an exception that nothing catches, instead of leaving the others waiting in
their next collective.  See ``docs/distributed.md``.

Limits: every rank must pass a tree of the same structure (the same layout), as with any
MPI collective; trees on the GPU are not supported (move them with ``fluxtree.cpu``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ._kernels import _flat
from .flat import _KERNEL_DTYPES, Layout, _gather, _layout_of, _on_gpu

if TYPE_CHECKING:
    from mpi4py import MPI

__all__ = ["RankError", "allreduce_", "bcast_", "shard", "world"]

T = TypeVar("T")

#: allreduce_'s ops -> the MPI reduction behind each
_OPS = {"sum": "SUM", "mean": "SUM", "max": "MAX", "min": "MIN"}

_INSTALL = 'python -m pip install "fluxtree[mpi]" (mpi4py and the MPICH wheel)'


class RankError(RuntimeError):
    """Another rank raised during a collective step; this rank stops as well.

    The rank that failed raises its own exception (with its traceback); the others raise
    this, so every rank leaves the collective instead of waiting for a partner that will
    never come.
    """


def _mpi() -> Any:
    """mpi4py's ``MPI`` module, or an ImportError that says how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"fluxtree.distributed needs mpi4py and an MPI library: "
                          f"{_INSTALL}.") from e
    return MPI


def world() -> MPI.Intracomm:
    """``MPI.COMM_WORLD``: every process of the job (one when run without ``mpiexec``).

    Raises ImportError naming the install command when mpi4py is missing.

    >>> comm = world()                            # doctest: +SKIP
    >>> comm.Get_rank(), comm.Get_size()          # doctest: +SKIP
    (0, 1)
    """
    return _mpi().COMM_WORLD


def _check_comm(comm: Any, what: str) -> Any:
    """``comm`` if it is an mpi4py intra-communicator, else a TypeError naming ``what``."""
    MPI = _mpi()
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"{what}: comm must be an mpi4py intra-communicator such as "
                        f"MPI.COMM_WORLD, got {type(comm).__name__}.")
    return comm


def _work_dtype(layout: Layout) -> np.dtype:
    """The dtype the collective runs in: the layout's, float16 widened to float32 (MPI
    has no half-precision type)."""
    return np.result_type(layout.dtype, np.float32)


def _buffer(buffer: Any, n: int, dtype: np.dtype, what: str) -> np.ndarray:
    if buffer is None:
        return np.empty(n, dtype)
    if not isinstance(buffer, np.ndarray) or buffer.ndim != 1 or buffer.shape[0] != n:
        got = f"shape {buffer.shape}" if isinstance(buffer, np.ndarray) else type(buffer).__name__
        raise ValueError(f"{what}: buffer must be a 1-D vector of length {n}, got {got}.")
    if buffer.dtype != dtype or not buffer.flags.c_contiguous or not buffer.flags.writeable:
        state = "" if buffer.flags.writeable else "a read-only vector of "
        raise TypeError(f"{what}: buffer must be a writeable contiguous {dtype} vector, got "
                        f"{state}dtype {buffer.dtype}.")
    return buffer


def _layout(tree: Any, what: str) -> Layout:
    layout = _layout_of(tree)[0]
    if _on_gpu(layout):
        raise ValueError(f"{what}: the tree lives on the GPU; move it to the host with "
                         f"fluxtree.cpu first (GPU buffers are not supported).")
    for j, p in enumerate(layout.params):
        if not p.flags.writeable:
            raise ValueError(f"{what}: parameter {j} of the tree (shape {p.shape}) is "
                             f"read-only; the result is written into the tree's arrays.")
    return layout


def _flat_base(layout: Layout, dtype: np.dtype) -> np.ndarray | None:
    """The vector the parameters are views of, when they lie in it exactly as in the flat
    vector (as ``re(v, copy=False)`` makes them): the collective then runs on it as it is,
    with nothing to pack or write back.  None otherwise."""
    base = layout.params[0].base
    if not (isinstance(base, np.ndarray) and base.ndim == 1 and base.dtype == dtype
            and base.shape[0] == layout.length and base.flags.c_contiguous
            and base.flags.writeable):
        return None
    start, size = base.__array_interface__["data"][0], dtype.itemsize
    for p, offset in zip(layout.params, layout.offsets):
        if p.base is not base or p.dtype != dtype or not p.flags.c_contiguous \
                or p.__array_interface__["data"][0] != start + int(offset) * size:
            return None
    return base


def _pack(layout: Layout, buf: np.ndarray) -> None:
    _gather(layout.params, layout.offsets, buf,
            layout.native and buf.dtype in _KERNEL_DTYPES)


def _unpack(layout: Layout, buf: np.ndarray) -> None:
    """Write ``buf`` back into the tree's own arrays (each cast to its dtype): contiguous
    ones in one kernel call, strided ones (views, Fortran order) through NumPy."""
    params, offsets = layout.params, layout.offsets
    kernel = layout.native and buf.dtype in _KERNEL_DTYPES
    fast = [j for j, p in enumerate(params) if kernel and p.flags.c_contiguous]
    if fast:
        _flat.scatter(buf, np.ascontiguousarray(offsets[fast]), [params[j] for j in fast])
    for j in sorted(set(range(len(params))) - set(fast)):
        p, src = params[j], buf[offsets[j]:offsets[j + 1]]
        if src.dtype.kind == "c" and p.dtype.kind != "c":
            src = src.real
        p[...] = src.reshape(p.shape)


def allreduce_(tree: T, comm: Any, op: str = "sum", *, buffer: np.ndarray | None = None) -> T:
    """Reduce every parameter array of ``tree`` over the ranks of ``comm``, in place.

    The arrays are those ``destructure`` packs (float and complex arrays reached through
    trainable children; a tied array once).  They are packed into one vector, reduced with
    a single ``Allreduce``, and written back into the same arrays; ``tree`` is returned.
    ``op`` is ``"sum"``, ``"mean"`` (the sum divided by the number of ranks), ``"max"``
    or ``"min"`` (real trees only).  The vector has the dtype ``destructure`` gives (the
    promotion of the arrays' dtypes; float16 travels as float32), so mixed float32/float64
    trees are summed in float64 and rounded back once.  ``buffer``: a vector of that dtype
    and length to pack into, so repeated calls allocate nothing.  When the arrays are views
    of one such vector, laid out as ``destructure`` lays them (``re(v, copy=False)`` makes
    them so), the collective runs on that vector itself: no packing, no writing back.

    Every rank must call it with a tree of the same structure.  Non-trainable state
    (BatchNorm's running statistics) is not part of the layout; reduce ``fluxtree.state``
    of the model's layers for that.

    >>> import numpy as np, fluxtree as ft
    >>> from mpi4py import MPI                                # doctest: +SKIP
    >>> w = np.array([1.0, 2.0])
    >>> grads = {"a": w, "b": w, "c": np.array([3.0], np.float32)}
    >>> allreduce_(grads, MPI.COMM_WORLD, "mean")["c"]       # doctest: +SKIP
    array([3.], dtype=float32)
    """
    MPI = _mpi()
    _check_comm(comm, "allreduce_")
    if op not in _OPS:
        raise ValueError(f"allreduce_: op must be one of {', '.join(map(repr, _OPS))}, got "
                         f"{op!r}.")
    layout = _layout(tree, "allreduce_")
    if layout.length == 0:
        return tree
    dtype = _work_dtype(layout)
    if op in ("max", "min") and dtype.kind == "c":
        raise TypeError(f"allreduce_: op={op!r} needs real arrays; the tree holds {dtype} "
                        f"ones.")
    flat = _flat_base(layout, dtype)
    buf = flat if flat is not None else _buffer(buffer, layout.length, dtype, "allreduce_")
    if flat is None:
        _pack(layout, buf)
    comm.Allreduce(MPI.IN_PLACE, buf, op=getattr(MPI, _OPS[op]))
    if op == "mean":
        buf /= comm.Get_size()
    if flat is None:
        _unpack(layout, buf)
    return tree


def bcast_(tree: T, comm: Any, root: int = 0, *, buffer: np.ndarray | None = None) -> T:
    """Overwrite the parameter arrays of ``tree`` on every rank with ``root``'s, in place.

    The same arrays and the same single vector as ``allreduce_``: ``root`` packs its
    tree, one ``Bcast`` sends it, and every other rank writes it into its own arrays
    (cast to their dtypes; views of one vector receive in place); ``tree`` is returned.  Use it to start every rank from the
    same parameters.  ``buffer`` as in ``allreduce_``.

    >>> import numpy as np, fluxtree as ft
    >>> from mpi4py import MPI                                # doctest: +SKIP
    >>> model = ft.Dense(3, 2, rng=np.random.default_rng(MPI.COMM_WORLD.rank))  # doctest: +SKIP
    >>> bcast_(model, MPI.COMM_WORLD, root=0)                 # doctest: +SKIP
    Dense(3 => 2)
    """
    _check_comm(comm, "bcast_")
    size = comm.Get_size()
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) \
            or not 0 <= root < size:
        raise ValueError(f"bcast_: root must be a rank of the communicator, 0 to "
                         f"{size - 1}, got {root!r}.")
    layout = _layout(tree, "bcast_")
    if layout.length == 0:
        return tree
    dtype = _work_dtype(layout)
    flat = _flat_base(layout, dtype)
    buf = flat if flat is not None else _buffer(buffer, layout.length, dtype, "bcast_")
    rank = comm.Get_rank()
    if rank == root and flat is None:
        _pack(layout, buf)
    comm.Bcast(buf, root=int(root))
    if rank != root and flat is None:
        _unpack(layout, buf)
    return tree


def shard(data: T, comm: Any) -> T:
    """This rank's share of ``data``: a contiguous block of rows of each array.

    ``data`` is an array or a tuple/list of arrays with the same number of rows (inputs
    and targets, batch first).  ``n`` rows are split as ``np.array_split`` does: the first
    ``n % size`` ranks get one row more than the others.  The blocks are views.

    >>> import numpy as np
    >>> from mpi4py import MPI                                # doctest: +SKIP
    >>> X, y = np.arange(10.0).reshape(5, 2), np.arange(5)
    >>> shard((X, y), MPI.COMM_WORLD)[1]                      # doctest: +SKIP
    array([0, 1, 2, 3, 4])
    """
    _check_comm(comm, "shard")
    arrays: list[Any] = list(data) if isinstance(data, (tuple, list)) else [data]
    if not arrays:
        raise ValueError("shard: expected an array or a tuple of arrays, got an empty "
                         f"{type(data).__name__}.")
    for k, a in enumerate(arrays):
        if not hasattr(a, "shape") or len(a.shape) == 0:
            raise TypeError(f"shard: expected arrays with a leading axis of rows, got "
                            f"{type(a).__name__} at position {k}.")
    n = arrays[0].shape[0]
    lengths = [a.shape[0] for a in arrays]
    if any(m != n for m in lengths):
        raise ValueError(f"shard: the arrays must have the same number of rows, got "
                         f"{lengths}.")
    rank, size = comm.Get_rank(), comm.Get_size()
    start, stop = _shard_range(n, rank, size)
    blocks = [a[start:stop] for a in arrays]
    if isinstance(data, (tuple, list)):
        return type(data)(blocks)  # type: ignore[return-value]
    return blocks[0]  # type: ignore[return-value]


def _shard_range(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``start:stop`` of ``n`` that ``rank`` of ``size`` holds (``np.array_split``'s
    split: the first ``n % size`` ranks get one more).

    >>> [_shard_range(5, r, 2) for r in range(2)]
    [(0, 3), (3, 5)]
    """
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _allreduce_agreed(comm: Any, buf: np.ndarray, error: BaseException | None,
                     what: str) -> None:
    """Sum ``buf`` over the ranks in place; its last element counts the failed ranks.

    A rank whose own work raised ``error`` contributes zeros and a 1 in the last element,
    then raises ``error`` after the collective; the others raise ``RankError``.  So a
    failure on one rank stops every rank at the same collective instead of hanging it.
    """
    MPI = _mpi()
    if error is not None:
        buf[...] = 0
        buf[-1] = 1
    else:
        buf[-1] = 0
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    if error is not None:
        raise error
    failed = int(buf[-1])
    if failed:
        raise RankError(f"{what}: {failed} of {comm.Get_size()} ranks raised an error (each "
                        f"reports its own); rank {comm.Get_rank()} stops as well.")
