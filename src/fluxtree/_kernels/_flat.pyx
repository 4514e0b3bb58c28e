"""Pack/scatter kernels behind ``destructure``: leaves <-> one flat vector.

The Python layer validates everything; these kernels assume valid input:
``leaves``/``outs`` are lists of native-byte-order, aligned ndarrays of dtype
float16/float32/float64/complex64/complex128 (leaves of any shape and strides,
``outs`` C-contiguous and distinct), the flat vector is 1-D contiguous, and
every ``offsets[j] + size_j`` fits.  Leaves of another dtype are skipped.

Casts are plain value casts: real -> complex sets the imaginary part to 0,
complex -> real keeps the real part (silently).  Elements are taken in logical
C (row-major) order whatever the memory layout, without temporary copies.
Above ``PARALLEL_MIN_BYTES`` of output the work is split into equal slices of
the destination and run on ``nthreads`` OpenMP threads (0: min(2, OpenMP's
maximum)); each destination element is written by one thread in list order,
so results (including ``gather_add`` sums over tied offsets) are identical to
a serial run.
"""
cimport numpy as cnp
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.ref cimport PyObject
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t
import numpy as np
from libc.stdlib cimport free, malloc

cnp.import_array()

cdef extern from "fluxtree/flat.h" nogil:
    ctypedef Py_ssize_t ft_intp
    ctypedef struct ft_leaf:
        const char *src
        char *dst
        const ft_intp *shape
        const ft_intp *strides
        ft_intp n
        ft_intp pos
        int ndim
        int stype
        int dtype
    enum:
        FT_F16, FT_F32, FT_F64, FT_C64, FT_C128
    ft_intp FT_PARALLEL_MIN_BYTES
    const ft_intp ft_itemsize[5]
    int ft_max_threads()
    void ft_run_part(const ft_leaf *L, ft_intp nleaves, ft_intp lo, ft_intp hi,
                     int tid, int nt, int add)

# Borrowed-pointer accessors: no reference counting, no per-leaf memoryview.
cdef extern from "numpy/arrayobject.h" nogil:
    int _is_array "PyArray_Check"(PyObject *)
    char *_data "PyArray_BYTES"(cnp.PyArrayObject *)
    int _ndim "PyArray_NDIM"(cnp.PyArrayObject *)
    cnp.npy_intp *_dims "PyArray_DIMS"(cnp.PyArrayObject *)
    cnp.npy_intp *_strides "PyArray_STRIDES"(cnp.PyArrayObject *)
    int _typenum "PyArray_TYPE"(cnp.PyArrayObject *)
    int _c_contig "PyArray_IS_C_CONTIGUOUS"(cnp.PyArrayObject *)
    enum:
        NPY_HALF

PARALLEL_MIN_BYTES = FT_PARALLEL_MIN_BYTES


cdef inline int _code(int typenum) noexcept nogil:
    if typenum == cnp.NPY_FLOAT:
        return FT_F32
    if typenum == cnp.NPY_DOUBLE:
        return FT_F64
    if typenum == cnp.NPY_CFLOAT:
        return FT_C64
    if typenum == cnp.NPY_CDOUBLE:
        return FT_C128
    if typenum == NPY_HALF:
        return FT_F16
    return -1


cdef inline ft_intp _describe(ft_leaf *L, PyObject *obj) noexcept:
    """Fill src, shape, strides, n, ndim, stype of `L` from ndarray `obj`."""
    cdef cnp.PyArrayObject *a = <cnp.PyArrayObject *>obj
    cdef int nd = _ndim(a), k
    cdef cnp.npy_intp *dims = _dims(a)
    cdef ft_intp n = 1
    for k in range(nd):
        n *= dims[k]
    L.src = _data(a)
    L.n = n
    L.stype = _code(_typenum(a))
    if _c_contig(a):
        L.shape = NULL
        L.strides = NULL
        L.ndim = 0
    else:
        L.shape = <const ft_intp *>dims
        L.strides = <const ft_intp *>_strides(a)
        L.ndim = nd
    return n


cdef void _run(const ft_leaf *L, ft_intp nleaves, ft_intp lo, ft_intp hi,
               ft_intp nbytes, int add, int nthreads) noexcept nogil:
    """Copy every leaf (pointer form, for other kernels): serial below the threshold."""
    cdef int nt = nthreads, tid
    if nt <= 0:
        nt = min(2, ft_max_threads())
    if nbytes < FT_PARALLEL_MIN_BYTES or hi - lo < nt:
        nt = 1
    if nt == 1:
        ft_run_part(L, nleaves, lo, hi, 0, 1, add)
        return
    for tid in prange(nt, num_threads=nt, schedule="static", chunksize=1):
        ft_run_part(L, nleaves, lo, hi, tid, nt, add)


cdef int _gather(list leaves, const int64_t[:] offsets, cnp.ndarray out,
                 int add, int nthreads) except -1:
    cdef ft_intp m = PyList_GET_SIZE(leaves), j, k = 0, n, lo = 0, hi = 0, total = 0
    cdef int dtype = _code(cnp.PyArray_TYPE(out))
    cdef ft_intp dsize
    cdef char *base = cnp.PyArray_BYTES(out)
    cdef PyObject *a
    cdef ft_leaf *L
    if m == 0 or dtype < 0:
        return 0
    dsize = ft_itemsize[dtype]
    L = <ft_leaf *>malloc(m * sizeof(ft_leaf))
    if L == NULL:
        raise MemoryError()
    try:
        for j in range(m):
            a = PyList_GET_ITEM(leaves, j)
            if not _is_array(a):
                raise TypeError(f"Expected an ndarray at leaves[{j}], got {type(<object>a).__name__}.")
            n = _describe(&L[k], a)
            if n == 0 or L[k].stype < 0:
                continue
            L[k].pos = offsets[j]
            L[k].dst = base + offsets[j] * dsize
            L[k].dtype = dtype
            if k == 0 or L[k].pos < lo:
                lo = L[k].pos
            if k == 0 or L[k].pos + n > hi:
                hi = L[k].pos + n
            total += n
            k += 1
        with nogil:
            _run(L, k, lo, hi, total * dsize, add, nthreads)
    finally:
        free(L)
    return 0


def gather(list leaves, const int64_t[:] offsets, cnp.ndarray out, *, int nthreads=0):
    """out[offsets[j]:offsets[j]+n_j] := cast(ravel_C(leaves[j])) for each j"""
    _gather(leaves, offsets, out, 0, nthreads)


def gather_add(list leaves, const int64_t[:] offsets, cnp.ndarray out, *, int nthreads=0):
    """out[offsets[j]:offsets[j]+n_j] += cast(ravel_C(leaves[j])) for each j, in order"""
    _gather(leaves, offsets, out, 1, nthreads)


def scatter(cnp.ndarray v, const int64_t[:] offsets, list outs, *, int nthreads=0):
    """outs[j][...] := cast(v[offsets[j]:offsets[j]+n_j]).reshape(outs[j].shape) for each j"""
    cdef ft_intp m = PyList_GET_SIZE(outs), j, k = 0, n, total = 0, nbytes = 0
    cdef int stype = _code(cnp.PyArray_TYPE(v))
    cdef ft_intp ssize
    cdef char *base = cnp.PyArray_BYTES(v)
    cdef PyObject *a
    cdef ft_leaf *L
    if m == 0 or stype < 0:
        return
    ssize = ft_itemsize[stype]
    L = <ft_leaf *>malloc(m * sizeof(ft_leaf))
    if L == NULL:
        raise MemoryError()
    try:
        for j in range(m):
            a = PyList_GET_ITEM(outs, j)
            if not _is_array(a):
                raise TypeError(f"Expected an ndarray at outs[{j}], got {type(<object>a).__name__}.")
            n = _describe(&L[k], a)          # the out array, read as a destination
            if n == 0 or L[k].stype < 0:
                continue
            L[k].dst = <char *>L[k].src
            L[k].dtype = L[k].stype
            L[k].src = base + offsets[j] * ssize
            L[k].stype = stype
            L[k].shape = NULL
            L[k].strides = NULL
            L[k].ndim = 0
            L[k].pos = total
            total += n
            nbytes += n * ft_itemsize[L[k].dtype]
            k += 1
        with nogil:
            _run(L, k, 0, total, nbytes, 0, nthreads)
    finally:
        free(L)


# ----------------------------------------------------------------------------
# new leaves for Restructure, and the overlap test behind destructure's alias warning
# ----------------------------------------------------------------------------
from cpython.ref cimport Py_INCREF
from cpython.object cimport PyTypeObject

cdef extern from "numpy/arrayobject.h":
    object _new_from_descr "PyArray_NewFromDescr"(
        PyTypeObject *subtype, PyObject *descr, int nd, cnp.npy_intp *dims,
        cnp.npy_intp *strides, void *data, int flags, PyObject *obj)
    enum:
        NPY_ARRAY_CARRAY
        NPY_ARRAY_CARRAY_RO
    PyTypeObject PyArray_Type


def new_leaves(list descrs, const int32_t[:] ndims, const int64_t[:] dims,
               const int64_t[:] byte_offsets, Py_ssize_t nbytes, cnp.ndarray block=None):
    """[C array j of dtype descrs[j] and shape dims[...] at block + byte_offsets[j]]

    Without ``block``, all leaves live in one fresh, uninitialised block (their common
    ``base``) without overlapping, so a rebuild allocates once instead of once per leaf;
    with ``block`` (a contiguous array the caller has checked is large enough) they are
    views into it."""
    cdef Py_ssize_t j, m = len(descrs), d = 0
    cdef int flags = NPY_ARRAY_CARRAY
    if block is None:
        block = cnp.PyArray_EMPTY(1, [max(nbytes, 1)], cnp.NPY_UINT8, 0)
    elif not cnp.PyArray_ISWRITEABLE(block):
        flags = NPY_ARRAY_CARRAY_RO
    cdef char *data = cnp.PyArray_BYTES(block)
    cdef list out = [None] * m
    cdef object descr
    cdef cnp.ndarray leaf
    for j in range(m):
        descr = descrs[j]
        Py_INCREF(descr)                        # PyArray_NewFromDescr steals it
        leaf = _new_from_descr(&PyArray_Type, <PyObject *>descr, ndims[j],
                               <cnp.npy_intp *>&dims[d] if ndims[j] else NULL, NULL,
                               data + byte_offsets[j], flags, NULL)
        cnp.set_array_base(leaf, block)
        out[j] = leaf
        d += ndims[j]
    return out


def overlap_candidates(list arrays):
    """[(i, j)]: every pair whose byte extents [lowest, highest] intersect (i < j)

    A sweep over the extents sorted by start, keeping the ones still open; pairs found
    still need an exact test
    (``np.shares_memory``), since interleaved strided views can intersect without
    sharing an element."""
    cdef Py_ssize_t m = len(arrays), j, i, k, nd
    cdef cnp.ndarray a
    cdef int64_t lo, hi, step
    cdef cnp.npy_intp *shape
    cdef cnp.npy_intp *strides
    ext = np.empty((m, 2), np.int64)
    cdef int64_t[:, :] e = ext
    for j in range(m):
        a = arrays[j]
        lo = <int64_t>cnp.PyArray_BYTES(a)
        hi = lo
        nd = cnp.PyArray_NDIM(a)
        shape = cnp.PyArray_DIMS(a)
        strides = cnp.PyArray_STRIDES(a)
        if cnp.PyArray_SIZE(a) == 0:
            e[j, 0] = lo
            e[j, 1] = lo
            continue
        for k in range(nd):
            step = strides[k] * (shape[k] - 1)
            if step < 0:
                lo += step
            else:
                hi += step
        e[j, 0] = lo
        e[j, 1] = hi + cnp.PyArray_ITEMSIZE(a)
    order = np.argsort(ext[:, 0], kind="stable")
    pairs = []
    cdef list active = []          # arrays whose extent reaches past the current start
    cdef Py_ssize_t o
    for k in range(m):
        j = order[k]
        if e[j, 1] == e[j, 0]:
            continue
        active = [o for o in active if e[o, 1] > e[j, 0]]
        for o in active:
            pairs.append((min(o, j), max(o, j)))
        active.append(j)
    return pairs
