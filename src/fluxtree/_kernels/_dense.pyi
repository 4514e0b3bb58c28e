"""Stub for the compiled Dense kernels (fluxtree/_kernels/_dense.pyx): forward, backward,
tangent (k tangents, leading axis) and tangent-backward, and elementwise activations.

Inputs are validated by the Python layer: x (B, in), W (out_features, in), b
(out_features,) or None, out/y and pre/z (B, out_features), tangent blocks (k, ...), all
C-contiguous ndarrays of one dtype, float32 or float64; outputs distinct and not overlapping
the inputs except where a docstring allows it.  The derivative kernels read z only for the
codes in PRE_CODES (gelu, swish); otherwise z may be y.
Activation codes: 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 softplus, 5 gelu (tanh form),
6 elu, 7 leakyrelu (0.01), 8 swish.  The bias/activation pass is serial by default
(``nthreads=0``); ``nthreads > 1`` splits it over OpenMP threads above ``PARALLEL_MIN_BYTES``
of output (it competed with OpenBLAS's spinning workers when left on by default).
"""

from typing import Any

from numpy.typing import NDArray

PARALLEL_MIN_BYTES: int
PRE_CODES: frozenset[int]
D2_CODES: frozenset[int]

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

def dense_backward(
    x: NDArray[Any] | None,
    W: NDArray[Any],
    z: NDArray[Any] | None,
    y: NDArray[Any] | None,
    dy: NDArray[Any],
    act: int,
    delta: NDArray[Any],
    dx: NDArray[Any] | None,
    dW: NDArray[Any] | None,
    db: NDArray[Any] | None,
) -> None:
    """delta := dy * act'(z); dx := delta . W, dW := delta^T . x, db := column sums of delta
    (dx, dW, db may be None; delta may be dy itself: in place)"""

def dense_tangent(
    x: NDArray[Any] | None,
    W: NDArray[Any],
    z: NDArray[Any] | None,
    y: NDArray[Any] | None,
    act: int,
    tx: NDArray[Any] | None,
    tW: NDArray[Any] | None,
    tb: NDArray[Any] | None,
    tz: NDArray[Any],
    ty: NDArray[Any] | None,
) -> None:
    """tz[j] := tx[j] . W^T + x . tW[j]^T + tb[j]; ty[j] := act'(z) * tz[j] (k blocks j;
    tx, tW, tb may be None, one at least given; ty None: tz only; ty may be tz: in place)"""

def dense_tangent_backward(
    x: NDArray[Any] | None,
    W: NDArray[Any],
    z: NDArray[Any] | None,
    y: NDArray[Any] | None,
    act: int,
    delta: NDArray[Any] | None,
    dy: NDArray[Any] | None,
    tx: NDArray[Any] | None,
    tW: NDArray[Any] | None,
    tz: NDArray[Any] | None,
    tdy: NDArray[Any] | None,
    rdelta: NDArray[Any],
    tdx: NDArray[Any] | None,
    tdW: NDArray[Any] | None,
    tdb: NDArray[Any] | None,
) -> None:
    """rdelta[j] := tdy[j] * act'(z) + dy * act''(z) * tz[j]; tdx[j] := rdelta[j] . W +
    delta . tW[j]; tdW[j] := rdelta[j]^T . x + delta^T . tx[j]; tdb[j] := column sums of
    rdelta[j] (None factors drop their terms; None outputs are skipped; rdelta may be tz,
    or tdy for act 0: in place)"""

def act_eval(code: int, z: NDArray[Any], order: int, out: NDArray[Any]) -> None:
    """out := act(z), act'(z) or act''(z) elementwise for order 0, 1, 2 (out may be z)"""

def act_scalar(
    act: int, z: float, *, derivative: bool = False, order: int = 0, single: bool = False
) -> float:
    """act(z), or its derivative of ``order`` 1 or 2 (derivative=True: order 1; float32
    functions with single=True)"""

def dense_apply(x: Any, W: Any, b: Any, act: int) -> NDArray[Any] | None:
    """act(x . W^T + b) as a new array, or None unless every operand is kernel-ready"""
