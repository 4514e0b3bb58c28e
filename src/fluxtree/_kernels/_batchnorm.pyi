"""Stub for the compiled BatchNorm forward kernel (fluxtree/_kernels/_batchnorm.pyx).

Inputs are validated by the Python layer: x and out C-contiguous (B, C, S) of one dtype,
float32 or float64, not overlapping; gamma, beta, running_mean, running_var float32 or
float64 vectors of length C or None; mean_out, invstd_out float64 vectors of length C or
None; when training, B * S >= 2.  Statistics are accumulated in double (two passes); var is
the biased batch variance.  Activation codes as in ``_dense``.  ``nthreads=0`` means
OpenMP's maximum; channels are split over threads only above ``PARALLEL_MIN_ELEMENTS``.
"""

from typing import Any

import numpy as np
from numpy.typing import NDArray

PARALLEL_MIN_ELEMENTS: int

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
