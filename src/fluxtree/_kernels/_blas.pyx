"""BLAS shim over ``scipy.linalg.cython_blas`` for row-major (C-ordered) arrays.

Other kernels ``from fluxtree._kernels._blas cimport gemm``; nothing here is callable from
Python.
"""
from scipy.linalg.cython_blas cimport dgemm, sgemm


cdef void gemm(char ta, char tb, blas_int m, blas_int n, blas_int k,
               floating alpha, const floating *A, blas_int lda,
               const floating *B, blas_int ldb,
               floating beta, floating *C, blas_int ldc) noexcept nogil:
    """C := alpha * op(A) . op(B) + beta * C, all row-major; op(A) is (m, k), op(B) (k, n).

    ``ta``/``tb`` are b'n' or b't'; ``lda = k if ta == 'n' else m``, ``ldb = n if tb == 'n'
    else k``, ``ldc = n`` for dense operands.  Row-major C is column-major C^T, so this is the
    column-major product C^T = op(B)^T . op(A)^T: operands, flags and m/n swapped.
    """
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float *>B, &ldb, <float *>A, &lda,
              &beta, C, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double *>B, &ldb, <double *>A, &lda,
              &beta, C, &ldc)
