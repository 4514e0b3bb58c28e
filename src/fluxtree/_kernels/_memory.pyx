"""A NumPy memory handler that reuses large blocks across derivative sweeps.

``block_cache()`` makes the handler of ``include/fluxtree/blockcache.h`` NumPy's current
one for the arrays created inside it (NumPy keeps the handler in a context variable, so
other threads and tasks are not affected, and every array returns its memory to the
handler that made it).  ``release()`` frees the cached blocks; ``cached_bytes()`` and
``set_limit(nbytes)`` inspect and bound the cache.
"""
from cpython.pycapsule cimport PyCapsule_New
cimport numpy as cnp

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyDataMemAllocator:
        void *ctx
    ctypedef struct PyDataMem_Handler:
        pass
    object PyDataMem_SetHandler(object handler)

cdef extern from "fluxtree/blockcache.h" nogil:
    size_t ft_cache_bytes
    size_t ft_cache_limit
    size_t ft_cache_release()
    void *ft_cache_malloc(void *ctx, size_t size)
    void *ft_cache_calloc(void *ctx, size_t nelem, size_t elsize)
    void *ft_cache_realloc(void *ctx, void *ptr, size_t new_size)
    void ft_cache_free(void *ctx, void *ptr, size_t size)

cdef extern from *:
    """
    static PyDataMem_Handler ft_cache_handler = {
        "fluxtree_block_cache", 1,
        {NULL, ft_cache_malloc, ft_cache_calloc, ft_cache_realloc, ft_cache_free}
    };
    """
    PyDataMem_Handler ft_cache_handler

cdef object _HANDLER = PyCapsule_New(&ft_cache_handler, "mem_handler", NULL)


class block_cache:
    """Context manager: arrays created inside take and return large blocks through the cache."""

    __slots__ = ("_previous",)

    def __enter__(self):
        self._previous = PyDataMem_SetHandler(_HANDLER)
        return self

    def __exit__(self, *exc):
        PyDataMem_SetHandler(self._previous)
        return False


def release():
    """Free every cached block; returns the number of bytes released."""
    return ft_cache_release()


def cached_bytes():
    """How many bytes the cache holds now."""
    return ft_cache_bytes


def set_limit(size_t nbytes):
    """Keep at most ``nbytes`` in the cache (blocks beyond it are freed on return)."""
    global ft_cache_limit
    ft_cache_limit = nbytes
