"""Stub for the compiled BatchNorm kernels (fluxtree/_kernels/_batchnorm.pyx).

Inputs are validated by the Python layer: x and out C-contiguous (B, C, S) of one dtype,
float32 or float64, not overlapping; gamma, beta, running_mean, running_var float32 or
float64 vectors of length C or None; mean_out, invstd_out float64 vectors of length C or
None; when training, B * S >= 2.  Statistics are accumulated in double (two passes); var is
the biased batch variance.  Activation codes as in ``_dense``.  ``nthreads=0`` means
OpenMP's maximum; channels are split over threads only above ``PARALLEL_MIN_ELEMENTS``
(``GRAD_PARALLEL_MIN_ELEMENTS`` for the derivative kernels, counted over their K blocks).

The derivative kernels take what the forward kernel used: x (N, C, L), mean and invstd
(C,) float64, gamma and beta, the activation code and ``batch`` (the statistics are the
batch's: training, or no running statistics; then the derivatives include their dependence
on x).  Blocks of K adjoints or tangents are (K, N, C, L) arrays of x's dtype and (K, C)
parameter arrays (float64 outputs); one pass over the data serves all K.  Reductions are
accumulated in double, each channel by one thread in a fixed order.
"""

from typing import Any

import numpy as np
from numpy.typing import NDArray

PARALLEL_MIN_ELEMENTS: int
GRAD_PARALLEL_MIN_ELEMENTS: int

def batchnorm_forward(
    x: NDArray[Any],
    gamma: NDArray[Any] | None,
    beta: NDArray[Any] | None,
    running_mean: NDArray[Any] | None,
    running_var: NDArray[Any] | None,
    eps: float,
    momentum: float,
    training: bool,
    act: int,
    out: NDArray[Any],
    mean_out: NDArray[np.float64] | None = None,
    invstd_out: NDArray[np.float64] | None = None,
    *,
    nthreads: int = 0,
) -> None:
    """out := act(gamma * (x - mean) / sqrt(var + eps) + beta); if training and running stats: rm := (1-momentum) rm + momentum mean, rv := (1-momentum) rv + momentum m/(m-1) var"""

def batchnorm_apply(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any,
                    eps: float, momentum: float, training: bool, act: int) -> NDArray[Any] | None:
    """batchnorm_forward into a new array shaped like x, or None unless all is kernel-ready"""

def batchnorm_backward(
    x: NDArray[Any],
    dy: NDArray[Any],
    mean: NDArray[np.float64],
    invstd: NDArray[np.float64],
    gamma: NDArray[Any] | None,
    beta: NDArray[Any] | None,
    act: int,
    batch: bool,
    dx: NDArray[Any] | None,
    dgamma: NDArray[np.float64] | None = None,
    dbeta: NDArray[np.float64] | None = None,
    *,
    nthreads: int = 0,
) -> None:
    """dx := dL/dx, dgamma := sum g xh, dbeta := sum g (g = act'(u) dy), for K blocks of dy"""

def batchnorm_tangent(
    x: NDArray[Any],
    mean: NDArray[np.float64],
    invstd: NDArray[np.float64],
    gamma: NDArray[Any] | None,
    beta: NDArray[Any] | None,
    act: int,
    batch: bool,
    tx: NDArray[Any] | None,
    tgamma: NDArray[Any] | None,
    tbeta: NDArray[Any] | None,
    ty: NDArray[Any],
    tstats: NDArray[np.float64] | None = None,
    *,
    nthreads: int = 0,
) -> None:
    """ty := the tangent of y = act(u) along K tangents (tx, tgamma, tbeta); tstats (2, K, C)
    := mean(tx), mean(xh tx) for batchnorm_tangent_backward"""

def batchnorm_tangent_backward(
    x: NDArray[Any],
    dy: NDArray[Any] | None,
    mean: NDArray[np.float64],
    invstd: NDArray[np.float64],
    gamma: NDArray[Any] | None,
    beta: NDArray[Any] | None,
    act: int,
    batch: bool,
    tx: NDArray[Any] | None,
    tgamma: NDArray[Any] | None,
    tbeta: NDArray[Any] | None,
    tdy: NDArray[Any] | None,
    rdx: NDArray[Any] | None,
    rdgamma: NDArray[np.float64] | None = None,
    rdbeta: NDArray[np.float64] | None = None,
    tstats: NDArray[np.float64] | None = None,
    *,
    nthreads: int = 0,
) -> None:
    """rdx, rdgamma, rdbeta := the tangents of batchnorm_backward's dx, dgamma, dbeta along
    (tx, tgamma, tbeta) and tdy; dy None is zero (the Gauss-Newton product)"""
