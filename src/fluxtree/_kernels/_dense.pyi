"""Stub for the compiled Dense forward kernel (fluxtree/_kernels/_dense.pyx).

Inputs are validated by the Python layer: x (B, in), W (out_features, in), b
(out_features,) or None, out and pre (B, out_features), all C-contiguous ndarrays of one
dtype, float32 or float64; out and pre distinct and not overlapping the inputs.
Activation codes: 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 softplus, 5 gelu (tanh form),
6 elu, 7 leakyrelu (0.01), 8 swish.  The bias/activation pass is serial by default
(``nthreads=0``); ``nthreads > 1`` splits it over OpenMP threads above ``PARALLEL_MIN_BYTES``
of output (it competed with OpenBLAS's spinning workers when left on by default).
"""

from typing import Any

from numpy.typing import NDArray

PARALLEL_MIN_BYTES: int

def dense_forward(
    x: NDArray[Any],
    W: NDArray[Any],
    b: NDArray[Any] | None,
    act: int,
    out: NDArray[Any],
    pre: NDArray[Any] | None = None,
    *,
    nthreads: int = 0,
) -> None:
    """out := act(x . W^T + b); pre := x . W^T + b when given (one gemm, one fused pass)"""

def act_scalar(act: int, z: float, *, derivative: bool = False, single: bool = False) -> float:
    """act(z), or d act/dz with derivative=True (float32 functions with single=True)"""

def dense_apply(x: Any, W: Any, b: Any, act: int) -> NDArray[Any] | None:
    """act(x . W^T + b) as a new array, or None unless every operand is kernel-ready"""
