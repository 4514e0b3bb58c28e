# The BLAS shim: the only module of fluxtree that cimports scipy.linalg.cython_blas.
# Integer type of the BLAS interface (LP64 in SciPy <= 1.17; switch to
# `from scipy.linalg.cython_blas cimport blas_int` once SciPy >= 1.18 is the floor).
from cython cimport floating

ctypedef int blas_int

cdef void gemm(char ta, char tb, blas_int m, blas_int n, blas_int k,
               floating alpha, const floating *A, blas_int lda,
               const floating *B, blas_int ldb,
               floating beta, floating *C, blas_int ldc) noexcept nogil
