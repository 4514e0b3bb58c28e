# Inline array checks shared by the kernels' fast entry points (no module of its own).
cimport numpy as cnp


cdef inline bint ready(object a, int typ, int ndim) noexcept:
    """``a`` is an aligned, native, C-contiguous ndarray of type number ``typ`` and ``ndim``."""
    return (type(a) is cnp.ndarray and cnp.PyArray_TYPE(<cnp.ndarray>a) == typ
            and cnp.PyArray_NDIM(<cnp.ndarray>a) == ndim
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISALIGNED(<cnp.ndarray>a)
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a))
