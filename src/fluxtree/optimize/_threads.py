"""BLAS thread pools while scipy.optimize runs: NumPy's pool serial, fluxtree's as set.

A NumPy wheel and a SciPy wheel each bring their own OpenBLAS, each with a pool of worker
threads as large as the machine.  fluxtree's kernels call SciPy's BLAS (through
``scipy.linalg.cython_blas``); scipy.optimize's own algebra (dot products, the Krylov and
Lanczos updates of trust-krylov, L-BFGS-B's two-loop recursion) calls NumPy's.  Both run in
turn on one thread of control, but OpenBLAS workers spin for a while after each call, so
two live pools fight over the same cores.  On vectors of a few thousand numbers NumPy's
calls gain nothing from threads, so its pool is set to one thread for the duration of the
optimisation; SciPy's pool (the kernels) takes ``threads`` (``minimize`` passes 1 unless
told otherwise) or, for None, keeps its size.  The sizes are restored afterwards.

Why 1 by default: trust-krylov's solver (trlib, inside SciPy) does its many short vector
operations through SciPy's BLAS, the kernels' pool, and a threaded pool makes each of them
pay a thread hand-off.  Measured on the 2-core machine of this project (shared with other
work, as CI machines are), fitting the digits MLP 64-128-128-10 to loss 0.02 with
trust-krylov: 19.4 s with both pools at 2 threads, 8.0-9.0 s with NumPy's at 1 and
SciPy's at 2, 1.1-1.2 s with both at 1.  Newton-CG and L-BFGS-B gained 20-30 % from
``threads=2`` in the same runs: pass it for them, or for wide layers on an idle machine.  This uses threadpoolctl, which finds the loaded libraries by
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
