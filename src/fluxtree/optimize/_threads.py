"""BLAS thread pools while scipy.optimize runs: NumPy's pool serial, fluxtree's as set.

A NumPy wheel and a SciPy wheel each bring their own OpenBLAS, each with a pool of worker
threads as large as the machine.  fluxtree's kernels call SciPy's BLAS (through
``scipy.linalg.cython_blas``); scipy.optimize's own algebra (dot products, the Krylov and
Lanczos updates of trust-krylov, L-BFGS-B's two-loop recursion) calls NumPy's.  Both run in
turn on one thread of control, but OpenBLAS workers spin for a while after each call, so
two live pools fight over the same cores.  On vectors of a few thousand numbers NumPy's
calls gain nothing from threads, so its pool is set to one thread for the duration of the
optimisation; SciPy's pool (the kernels) keeps its size, or takes ``threads``.  The sizes
are restored afterwards.  This uses threadpoolctl, which finds the loaded libraries by
their file paths; where both packages share one BLAS (a distribution build), only the
``threads`` setting applies.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np

__all__ = ["blas_pools"]


def _package_dirs(module_file: str) -> tuple[str, str]:
    """The package's folder and the folder its wheel keeps vendored libraries in."""
    pkg = os.path.dirname(os.path.abspath(module_file))
    return pkg + os.sep, pkg + ".libs" + os.sep


@contextlib.contextmanager
def blas_pools(threads: int | None = None) -> Iterator[None]:
    """Inside the block NumPy's BLAS pool has one thread and SciPy's has ``threads``
    (None: left as it is); both are restored on exit."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}.")
    import scipy
    from threadpoolctl import ThreadpoolController
    numpy_dirs = _package_dirs(np.__file__)
    scipy_dirs = _package_dirs(scipy.__file__)
    saved = []
    for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
        path = os.path.abspath(lib.filepath)
        is_numpy = path.startswith(numpy_dirs)
        is_scipy = path.startswith(scipy_dirs)
        want = 1 if is_numpy and not is_scipy else threads
        if want is not None and lib.num_threads != want:
            saved.append((lib, lib.num_threads))
            lib.set_num_threads(want)
    try:
        yield
    finally:
        for lib, n in saved:
            lib.set_num_threads(n)
