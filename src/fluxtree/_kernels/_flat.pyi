"""Stub for the compiled pack/scatter kernels (fluxtree/_kernels/_flat.pyx).

Kernels assume input validated by the Python layer: arrays of dtype float16,
float32, float64, complex64 or complex128 in native byte order; the flat
vector 1-D contiguous; ``outs`` C-contiguous and distinct; every
``offsets[j] + size_j`` in bounds.  ``nthreads=0`` means min(2, OpenMP's
maximum); threads are used only above ``PARALLEL_MIN_BYTES`` of output.
"""

from typing import Any

import numpy as np
from numpy.typing import NDArray

PARALLEL_MIN_BYTES: int

def gather(
    leaves: list[NDArray[Any]],
    offsets: NDArray[np.int64],
    out: NDArray[Any],
    *,
    nthreads: int = 0,
) -> None:
    """out[offsets[j]:offsets[j]+n_j] := cast(ravel_C(leaves[j])) for each j"""

def gather_add(
    leaves: list[NDArray[Any]],
    offsets: NDArray[np.int64],
    out: NDArray[Any],
    *,
    nthreads: int = 0,
) -> None:
    """out[offsets[j]:offsets[j]+n_j] += cast(ravel_C(leaves[j])) for each j, in order"""

def scatter(
    v: NDArray[Any],
    offsets: NDArray[np.int64],
    outs: list[NDArray[Any]],
    *,
    nthreads: int = 0,
) -> None:
    """outs[j][...] := cast(v[offsets[j]:offsets[j]+n_j]).reshape(outs[j].shape) for each j"""

def new_leaves(
    descrs: list[np.dtype[Any]],
    ndims: NDArray[np.int32],
    dims: NDArray[np.int64],
    byte_offsets: NDArray[np.int64],
    nbytes: int,
    block: NDArray[Any] | None = None,
) -> list[NDArray[Any]]:
    """[C array j of dtype descrs[j] and shape dims[...] at block + byte_offsets[j]]"""

def overlap_candidates(arrays: list[NDArray[Any]]) -> list[tuple[int, int]]:
    """[(i, j)]: every pair whose byte extents [lowest, highest] intersect (i < j)"""
