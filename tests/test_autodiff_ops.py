"""Array operations on traced values: gradients, JVPs and Hessian products of every supported
operation against central finite differences (float64) and against JAX, and the TypeError of
every unsupported one.

Each case is a function ``body(xp, *args)`` written once for NumPy spellings (``xp = np``, the
arguments traced by fluxtree) and for ``jax.numpy``.  The scalar objective is
``sum(sin(body) * W)`` with a fixed random ``W``, so every op's backward rule meets a general
adjoint and every Hessian product a non-trivial second derivative.  For Hessian products the
arguments are packed into one vector ``x`` and unpacked with slicing and ``reshape``.

``close`` measures ``max|a - b| / max(max|b|, 1)``: a relative error for entries of order one
and above (all cases here), an absolute one below.

JAX runs in a child process (``jax_oracle``): imported into the test process it would warn at
every later ``os.fork`` (other tests start subprocesses), which ``filterwarnings = error``
turns into failures.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import fluxtree as ft

FD_TOL = 1e-6          # against central finite differences
ORACLE_TOL = 1e-8      # against JAX
EXACT_TOL = 1e-12      # between two fluxtree evaluations of one quantity
H = 1e-5               # finite-difference step


# ------------------------------------------------------------------------------- helpers
def close(a: Any, b: Any, tol: float) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float(np.max(np.abs(a - b), initial=0.0))
    return err <= tol * max(float(np.max(np.abs(b), initial=0.0)), 1.0)


def fd_gradient(f: Callable[[np.ndarray], Any], x: np.ndarray, h: float = H) -> np.ndarray:
    """Central finite differences of the scalar ``f`` at ``x`` (any shape), in float64."""
    x = np.array(x, np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (float(f(xp)) - float(f(xm))) / (2 * h)
    return g


def fd_directional(f: Callable[[np.ndarray], Any], x: np.ndarray, v: np.ndarray,
                   h: float = H) -> np.ndarray:
    """``(f(x + h v) - f(x - h v)) / 2h`` for an array-valued ``f``."""
    return (np.asarray(f(x + h * v), np.float64) - np.asarray(f(x - h * v), np.float64)) / (2 * h)


def fd_hvp(f: Callable[[Any], Any], x: np.ndarray, v: np.ndarray, h: float = H) -> np.ndarray:
    """The central difference of fluxtree's gradient along ``v``."""
    return fd_directional(lambda y: ft.gradient(f, y)[0], x, v, h)


def seeded(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


# --------------------------------------------------------------------------- namespaces
NP = SimpleNamespace(sum=np.sum, mean=np.mean, dot=np.dot, vdot=np.vdot, matmul=np.matmul,
                     reshape=np.reshape, power=np.power, negative=np.negative,
                     square=np.square, abs2=ft.abs2, ftdot=ft.dot, tanh=np.tanh, exp=np.exp,
                     log=np.log, sqrt=np.sqrt, sin=np.sin, cos=np.cos, abs=np.abs,
                     add=np.add, subtract=np.subtract, multiply=np.multiply,
                     divide=np.divide, transpose=np.transpose)


def jax_namespace() -> SimpleNamespace:
    import jax.numpy as jnp

    return SimpleNamespace(sum=jnp.sum, mean=jnp.mean, dot=jnp.dot, vdot=jnp.vdot,
                           matmul=jnp.matmul, reshape=jnp.reshape, power=jnp.power,
                           negative=jnp.negative, square=jnp.square, abs2=jnp.square,
                           ftdot=jnp.vdot, tanh=jnp.tanh, exp=jnp.exp, log=jnp.log,
                           sqrt=jnp.sqrt, sin=jnp.sin, cos=jnp.cos, abs=jnp.abs, add=jnp.add,
                           subtract=jnp.subtract, multiply=jnp.multiply, divide=jnp.divide,
                           transpose=jnp.transpose)


_JAX_CHILD = """
import importlib, sys
import numpy as np
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import jax
jax.config.update("jax_enable_x64", True)
module, function, out = sys.argv[3:6]
np.savez(out, **getattr(importlib.import_module(module), function)())
"""


def jax_oracle(module: str, function: str) -> dict[str, np.ndarray]:
    """``module.function()`` (a dict of arrays computed with JAX in float64) run in a child
    process; skips the test when JAX is not installed."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed")
    root = str(Path(__file__).resolve().parent.parent)
    src = str(Path(ft.__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "oracle.npz")
        proc = subprocess.run([sys.executable, "-c", _JAX_CHILD, src, root, module, function,
                               out], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with np.load(out) as data:
            return {k: data[k] for k in data.files}


# --------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """``body(xp, *args)`` with arguments of ``shapes``; ``domain`` (low, high) of the
    random arguments' absolute values (signs random unless ``positive``)."""

    name: str
    body: Callable[..., Any]
    shapes: tuple
    positive: bool = False
    domain: tuple[float, float] = (0.3, 1.5)
    jax: bool = True

    def args(self) -> list[np.ndarray]:
        rng = seeded(self.name)
        out = []
        for s in self.shapes:
            a = rng.uniform(*self.domain, size=s)
            if not self.positive:
                a = a * rng.choice([-1.0, 1.0], size=s)
            out.append(a)
        return out

    def weight(self) -> np.ndarray:
        out = self.body(NP, *self.args())
        return seeded(self.name + "W").normal(size=np.shape(out))

    def objective(self, xp: Any) -> Callable[..., Any]:
        W = self.weight()
        return lambda *a: xp.sum(xp.sin(self.body(xp, *a)) * W)

    # the arguments packed into one vector (for jvp, hvp and hessian)
    def point(self) -> np.ndarray:
        return np.concatenate([a.ravel() for a in self.args()])

    def unpack(self, x: Any) -> list:
        out, start = [], 0
        for s in self.shapes:
            n = int(np.prod(s))
            out.append(x[start:start + n].reshape(s))
            start += n
        return out

    def packed(self, xp: Any) -> Callable[[Any], Any]:
        obj = self.objective(xp)
        return lambda x: obj(*self.unpack(x))

    def packed_body(self, xp: Any) -> Callable[[Any], Any]:
        return lambda x: self.body(xp, *self.unpack(x))


R23, R3, R21, R13 = (2, 3), (3,), (2, 1), (1, 3)
C23 = seeded("C23").normal(size=R23)
C3 = seeded("C3").normal(size=R3)
C34 = seeded("C34").normal(size=(3, 4))
MASK = np.array([[True, False, True], [False, True, True]])

CASES = [
    # + with broadcasting, constants on either side, Python floats, the same value twice
    Case("a+b (2,3)+(3,)", lambda xp, a, b: a + b, (R23, R3)),
    Case("a+b (2,3)+(2,1)", lambda xp, a, b: a + b, (R23, R21)),
    Case("b+a (1,3)+(2,3)", lambda xp, a, b: b + a, (R23, R13)),
    Case("a+2.0", lambda xp, a: a + 2.0, (R23,)),
    Case("2.0+a", lambda xp, a: 2.0 + a, (R23,)),
    Case("a+C", lambda xp, a: a + C23, (R23,)),
    Case("C+a", lambda xp, a: C23 + a, (R23,)),
    Case("a+a", lambda xp, a: a + a, (R23,)),
    Case("np.add(C,a)", lambda xp, a: xp.add(C3, a), (R23,)),
    # -
    Case("a-b (2,3)-(3,)", lambda xp, a, b: a - b, (R23, R3)),
    Case("b-a (2,1)-(2,3)", lambda xp, a, b: b - a, (R23, R21)),
    Case("1.0-a", lambda xp, a: 1.0 - a, (R23,)),
    Case("a-1.5", lambda xp, a: a - 1.5, (R23,)),
    Case("C-a", lambda xp, a: C23 - a, (R23,)),
    Case("a-a*a", lambda xp, a: a - a * a, (R3,)),
    Case("np.subtract(a,C)", lambda xp, a: xp.subtract(a, C3), (R23,)),
    # *
    Case("a*b (2,3)*(3,)", lambda xp, a, b: a * b, (R23, R3)),
    Case("a*b (2,1)*(1,3)", lambda xp, a, b: a * b, (R21, R13)),
    Case("3.0*a", lambda xp, a: 3.0 * a, (R23,)),
    Case("a*C", lambda xp, a: a * C23, (R23,)),
    Case("C*a", lambda xp, a: C3 * a, (R23,)),
    Case("a*a", lambda xp, a: a * a, (R3,)),
    Case("np.multiply(a,b)", lambda xp, a, b: xp.multiply(a, b), (R23, R3)),
    # /
    Case("a/b (2,3)/(3,)", lambda xp, a, b: a / b, (R23, R3)),
    Case("a/b (3,)/(2,3)", lambda xp, a, b: a / b, (R3, R23)),
    Case("2.0/a", lambda xp, a: 2.0 / a, (R23,)),
    Case("a/3.0", lambda xp, a: a / 3.0, (R23,)),
    Case("C/a", lambda xp, a: C23 / a, (R23,)),
    Case("a/C", lambda xp, a: a / (C23 + 3.0), (R23,)),
    Case("a/a", lambda xp, a: (a + 2.0) / a, (R3,)),
    Case("np.divide(a,b)", lambda xp, a, b: xp.divide(a, b), (R21, R13)),
    # unary - and powers
    Case("-a", lambda xp, a: -a, (R23,)),
    Case("np.negative", lambda xp, a: xp.negative(a), (R23,)),
    Case("a**2", lambda xp, a: a ** 2, (R23,)),
    Case("a**3", lambda xp, a: a ** 3, (R23,)),
    Case("a**0.5", lambda xp, a: a ** 0.5, (R23,), positive=True),
    Case("a**-1", lambda xp, a: a ** -1, (R23,)),
    Case("a**1", lambda xp, a: a ** 1 * 2.0, (R3,)),
    Case("a**np.float64(2.5)", lambda xp, a: a ** np.float64(2.5), (R3,), positive=True),
    Case("np.power(a,3)", lambda xp, a: xp.power(a, 3), (R23,)),
    # @ with 1-D and 2-D operands
    Case("A@B", lambda xp, a, b: a @ b, ((2, 3), (3, 4))),
    Case("A@v", lambda xp, a, b: a @ b, ((2, 3), (3,))),
    Case("v@A", lambda xp, a, b: a @ b, ((2,), (2, 3))),
    Case("u@v", lambda xp, a, b: a @ b, ((3,), (3,))),
    Case("u@u", lambda xp, a: a @ a, ((3,),)),
    Case("A@C", lambda xp, a: a @ C34, ((2, 3),)),
    Case("C@A", lambda xp, a: C23 @ a, ((3, 2),)),
    Case("C@v", lambda xp, a: C23 @ a, ((3,),)),
    Case("A@A", lambda xp, a: a @ a, ((3, 3),)),
    Case("np.matmul(A,B)", lambda xp, a, b: xp.matmul(a, b), ((2, 3), (3, 2))),
    Case("np.dot(A,v)", lambda xp, a, b: xp.dot(a, b), ((2, 3), (3,))),
    Case("np.dot(C,A)", lambda xp, a: xp.dot(C23, a), ((3, 2),)),
    Case("np.dot(u,v)", lambda xp, a, b: xp.dot(a, b), ((3,), (3,))),
    # indexing: basic, advanced, repeated indices, masks
    Case("a[1]", lambda xp, a: a[1], (R23,)),
    Case("a[:,1:]", lambda xp, a: a[:, 1:], (R23,)),
    Case("a[::-1,0]", lambda xp, a: a[::-1, 0], (R23,)),
    Case("a[...,None,2]", lambda xp, a: a[..., None, 2], (R23,)),
    Case("a[-1,-2]", lambda xp, a: a[-1, -2], (R23,)),
    Case("a[idx] repeated", lambda xp, a: a[np.array([0, 2, 0, 0])], (R3,)),
    Case("a[[1,1,0]] list", lambda xp, a: a[[1, 1, 0]], (R23,), jax=False),
    Case("a[rows,cols] repeated", lambda xp, a: a[np.array([0, 1, 1]), np.array([2, 2, 2])],
         (R23,)),
    Case("a[:,idx] repeated", lambda xp, a: a[:, np.array([2, 2, 0])], (R23,)),
    Case("a[mask]", lambda xp, a: a[MASK], (R23,)),
    Case("a[0]*a[1]", lambda xp, a: a[0] * a[1] + a[0], (R23,)),
    # reshape
    Case("a.reshape(3,2)", lambda xp, a: a.reshape(3, 2), (R23,)),
    Case("a.reshape((6,))", lambda xp, a: a.reshape((6,)), (R23,)),
    Case("a.reshape(-1,1)", lambda xp, a: a.reshape(-1, 1) * a.reshape(1, -1), (R23,)),
    Case("np.reshape(a,(3,2))", lambda xp, a: xp.reshape(a, (3, 2)), (R23,)),
    # sum and mean
    Case("a.sum()", lambda xp, a: a.sum(), (R23,)),
    Case("a.sum(axis=0)", lambda xp, a: a.sum(axis=0), (R23,)),
    Case("a.sum(axis=1,keepdims)", lambda xp, a: a.sum(axis=1, keepdims=True), (R23,)),
    Case("a.sum(axis=(0,2))", lambda xp, a: a.sum(axis=(0, 2)), ((2, 3, 2),)),
    Case("a.sum(axis=-1,keepdims)*a", lambda xp, a: a.sum(axis=-1, keepdims=True) * a, (R23,)),
    Case("np.sum(a)", lambda xp, a: xp.sum(a), (R23,)),
    Case("np.sum(a,axis=-1)", lambda xp, a: xp.sum(a, axis=-1), (R23,)),
    Case("np.sum(a,axis=0,keepdims)", lambda xp, a: xp.sum(a, axis=0, keepdims=True), (R23,)),
    Case("a.mean()", lambda xp, a: a.mean(), (R23,)),
    Case("a.mean(axis=0,keepdims)", lambda xp, a: a.mean(axis=0, keepdims=True), (R23,)),
    Case("np.mean(a,axis=1)", lambda xp, a: xp.mean(a, axis=1), (R23,)),
    Case("np.mean(a,axis=(0,1))", lambda xp, a: xp.mean(a, axis=(0, 1)), ((2, 3, 2),)),
    Case("a-a.mean()", lambda xp, a: a - xp.mean(a), (R23,)),
    # square, abs2, dot
    Case("np.square", lambda xp, a: xp.square(a), (R23,)),
    Case("ft.abs2", lambda xp, a: xp.abs2(a), (R23,)),
    Case("ft.dot(a,b)", lambda xp, a, b: xp.ftdot(a, b), (R23, R23)),
    Case("ft.dot(a,C)", lambda xp, a: xp.ftdot(a, C23), (R23,)),
    Case("ft.dot(C,a)", lambda xp, a: xp.ftdot(C23, a), (R23,)),
    Case("ft.dot(a,a)", lambda xp, a: xp.ftdot(a, a), (R3,)),
    Case("np.vdot(a,b)", lambda xp, a, b: xp.vdot(a, b), (R3, R3)),
    # element-wise functions
    Case("np.tanh", lambda xp, a: xp.tanh(a), (R23,)),
    Case("np.exp", lambda xp, a: xp.exp(a), (R23,)),
    Case("np.log", lambda xp, a: xp.log(a), (R23,), positive=True),
    Case("np.sqrt", lambda xp, a: xp.sqrt(a), (R23,), positive=True),
    Case("np.sin", lambda xp, a: xp.sin(a), (R23,)),
    Case("np.cos", lambda xp, a: xp.cos(a), (R23,)),
    Case("np.abs", lambda xp, a: xp.abs(a), (R23,)),
    Case("abs(a)", lambda xp, a: abs(a) * a, (R23,)),
    # transposes
    Case("x@W.T", lambda xp, w: C34.T @ w.T, ((2, 3),)),
    Case("np.transpose(a,(1,0))", lambda xp, a: xp.transpose(a, (1, 0)) * C23.T, (R23,)),
    # compositions
    Case("tanh(A@v+b)", lambda xp, a, v, b: xp.tanh(a @ v + b), ((2, 3), (3,), (2,))),
    Case("log(sum(exp))", lambda xp, a: xp.log(xp.sum(xp.exp(a), axis=1)), (R23,)),
    Case("sqrt(a*a+1)/a.sum()", lambda xp, a: xp.sqrt(a * a + 1.0) / (a.sum() + 10.0),
         (R23,)),
]
IDS = [c.name for c in CASES]


JAX_CASES = [c for c in CASES if c.jax]


def jax_reference() -> dict[str, np.ndarray]:
    """Gradient and ``jax.jvp(jax.grad(f))`` of every JAX-able case (run by ``jax_oracle``)."""
    import jax

    xp = jax_namespace()
    out = {}
    for i, case in enumerate(JAX_CASES):
        x = case.point()
        v = seeded(case.name + "v").normal(size=x.shape)
        f = case.packed(xp)
        out[f"g{i}"] = np.asarray(jax.grad(f)(x))
        out[f"h{i}"] = np.asarray(jax.jvp(jax.grad(f), (x,), (v,))[1])
    return out


@pytest.fixture(scope="module")
def jax_results():
    return jax_oracle("tests.test_autodiff_ops", "jax_reference")


# ------------------------------------------------------------------ gradient, jvp, hvp
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradient_matches_finite_differences(case):
    args = case.args()
    obj = case.objective(NP)
    grads = ft.gradient(obj, *args)
    assert isinstance(grads, tuple) and len(grads) == len(args)
    for i, (a, g) in enumerate(zip(args, grads)):
        assert g.shape == a.shape and g.dtype == np.float64

        def partial(y, i=i):
            return obj(*args[:i], y, *args[i + 1:])

        assert close(g, fd_gradient(partial, a), FD_TOL), (i, g, fd_gradient(partial, a))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_value_and_gradient_value(case):
    args = case.args()
    obj = case.objective(NP)
    value, grads = ft.value_and_gradient(obj, *args)
    assert value == pytest.approx(float(obj(*args)), rel=1e-14, abs=1e-14)
    assert np.ndim(value) == 0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jvp_matches_finite_differences(case):
    x = case.point()
    body = case.packed_body(NP)
    v = seeded(case.name + "v").normal(size=x.shape)
    value, jv = ft.jvp(body, x, v)
    expected_value = np.asarray(body(x))
    assert value.shape == expected_value.shape
    assert np.allclose(value, expected_value, rtol=1e-14, atol=1e-14)
    assert close(jv, fd_directional(body, x, v), FD_TOL)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jvp_block_equals_single_products(case):
    x = case.point()
    body = case.packed_body(NP)
    V = seeded(case.name + "V").normal(size=x.shape + (3,))
    _, JV = ft.jvp(body, x, V)
    assert JV.shape == np.shape(body(x)) + (3,)
    for j in range(3):
        assert close(JV[..., j], ft.jvp(body, x, V[:, j])[1], EXACT_TOL)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hvp_matches_finite_differences_of_gradient(case):
    x = case.point()
    f = case.packed(NP)
    v = seeded(case.name + "v").normal(size=x.shape)
    hv = ft.hvp(f, x, v)
    assert hv.shape == x.shape and hv.dtype == np.float64
    assert close(hv, fd_hvp(f, x, v), FD_TOL)


@pytest.mark.parametrize("i", range(len(JAX_CASES)), ids=[c.name for c in JAX_CASES])
def test_gradient_and_hvp_match_jax(i, jax_results):
    case = JAX_CASES[i]
    x = case.point()
    v = seeded(case.name + "v").normal(size=x.shape)
    g, h = jax_results[f"g{i}"], jax_results[f"h{i}"]
    assert g.dtype == np.float64 and h.dtype == np.float64
    assert close(ft.gradient(case.packed(NP), x)[0], g, ORACLE_TOL)
    assert close(ft.hvp(case.packed(NP), x, v), h, ORACLE_TOL)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hvp_block_equals_stacked_products(case):
    x = case.point()
    f = case.packed(NP)
    V = seeded(case.name + "V").normal(size=(x.size, 4))
    HV = ft.hvp(f, x, V)
    assert HV.shape == (x.size, 4)
    stacked = np.stack([ft.hvp(f, x, V[:, j]) for j in range(4)], axis=1)
    assert close(HV, stacked, EXACT_TOL)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hvp_symmetry(case):
    x = case.point()
    f = case.packed(NP)
    rng = seeded(case.name + "uv")
    u, v = rng.normal(size=x.shape), rng.normal(size=x.shape)
    uHv, vHu = u @ ft.hvp(f, x, v), v @ ft.hvp(f, x, u)
    assert abs(uHv - vHu) <= 1e-12 * max(abs(uHv), 1.0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_hessian_equals_stacked_hvps(case):
    x = case.point()
    f = case.packed(NP)
    Hm = ft.hessian(f, x)
    assert Hm.shape == (x.size, x.size)
    columns = np.stack([ft.hvp(f, x, e) for e in np.eye(x.size)], axis=1)
    assert close(Hm, columns, EXACT_TOL)
    assert close(Hm, Hm.T, EXACT_TOL)


# ------------------------------------------------------------------- dtype and spellings
def test_float32_argument_gets_float32_gradient_and_products():
    x = np.array([0.5, -1.0, 2.0], np.float32)

    def f(v):
        return np.sum(np.tanh(v) * 2.0 + v ** 2)

    g = ft.gradient(f, x)[0]
    assert g.dtype == np.float32
    assert np.allclose(g, 2 * (1 - np.tanh(x.astype(np.float64)) ** 2) + 2 * x, rtol=1e-6)
    assert ft.hvp(f, x, np.ones(3)).dtype == np.float32
    assert ft.jvp(lambda v: v * 2.0, x, np.ones(3, np.float32))[1].dtype == np.float32


def test_integer_point_is_promoted_to_float64():
    assert ft.hvp(lambda v: np.sum(v ** 3), np.array([1, 2]), np.array([1, 0])).tolist() == [
        6.0, 0.0]
    assert ft.jvp(lambda v: v * v, np.array([3]), np.array([1]))[1].dtype == np.float64


def test_power_zero_is_constant_even_at_zero():
    x = np.array([0.0, 2.0])
    assert ft.gradient(lambda v: np.sum(v ** 0 * v), x)[0].tolist() == [1.0, 1.0]
    assert ft.hessian(lambda v: np.sum(v ** 0), x).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert ft.jvp(lambda v: v ** 0, x, np.ones(2))[1].tolist() == [0.0, 0.0]


def test_python_builtin_sum_and_len_work_by_indexing():
    x = np.array([1.0, 2.0, 3.0])
    g = ft.gradient(lambda v: sum(v) * len(v), x)[0]
    assert g.tolist() == [3.0, 3.0, 3.0]


def test_comparisons_give_plain_arrays():
    x = np.array([-1.0, 2.0])

    def f(v):
        keep = v > 0
        assert type(keep) is np.ndarray and keep.tolist() == [False, True]
        return np.sum(v[keep] ** 2) + np.sum(v[v <= 0])

    assert ft.gradient(f, x)[0].tolist() == [1.0, 4.0]


def test_function_independent_of_argument_has_zero_gradient_and_products():
    x = np.array([1.0, 2.0])
    g = ft.gradient(lambda v: 3.0, x)[0]
    assert g.tolist() == [0.0, 0.0] and g.dtype == np.float64
    value, (g,) = ft.value_and_gradient(lambda v: np.float64(3.0), x.astype(np.float32))
    assert value == 3.0 and g.tolist() == [0.0, 0.0] and g.dtype == np.float32
    assert ft.hvp(lambda v: 3.0, x, np.ones(2)).tolist() == [0.0, 0.0]
    assert ft.hessian(lambda v: 1.0, x).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    value, jv = ft.jvp(lambda v: np.ones(3), x, np.ones(2))
    assert value.tolist() == [1.0, 1.0, 1.0] and jv.tolist() == [0.0, 0.0, 0.0]


def test_linear_function_has_zero_hessian():
    x = np.array([1.0, 2.0, 3.0])
    assert not ft.hvp(lambda v: np.sum(v * 2.0) - v[0], x, np.ones(3)).any()
    assert not ft.hessian(lambda v: ft.dot(v, np.arange(3.0)), x).any()


def test_hessian_of_a_matrix_argument_has_shape_x_by_x():
    A = seeded("matrix").normal(size=(2, 3))

    def f(a):
        return np.sum(np.sin(a @ a.reshape(3, 2)))

    Hm = ft.hessian(f, A)
    assert Hm.shape == (2, 3, 2, 3)
    e = np.zeros((2, 3))
    e[1, 2] = 1.0
    assert close(Hm[..., 1, 2], ft.hvp(f, A, e), EXACT_TOL)
    assert close(Hm.reshape(6, 6), Hm.reshape(6, 6).T, EXACT_TOL)
    V = seeded("matrixV").normal(size=(2, 3, 5))
    HV = ft.hvp(f, A, V)
    assert HV.shape == (2, 3, 5)
    assert close(HV[..., 3], ft.hvp(f, A, V[..., 3]), EXACT_TOL)
    assert close(ft.hvp(f, A, V[..., 0]), fd_hvp(f, A, V[..., 0]), FD_TOL)


def test_hessian_in_chunks_equals_one_sweep(monkeypatch):
    from fluxtree.autodiff import api

    x = seeded("chunks").normal(size=7)

    def f(v):
        return np.sum(np.tanh(v) * v[::-1]) + ft.dot(v, v) ** 2

    whole = ft.hessian(f, x)
    monkeypatch.setattr(api, "HESSIAN_BLOCK_BYTES", 1)
    assert close(ft.hessian(f, x), whole, EXACT_TOL)


# ------------------------------------------------------------------ unsupported operations
UNSUPPORTED = [
    ("np.asarray", lambda v: np.sum(np.asarray(v)), "conversion to a NumPy array"),
    ("np.array", lambda v: np.sum(np.array(v)), "conversion to a NumPy array"),
    ("np.maximum", lambda v: np.sum(np.maximum(v, 0.0)), "np.maximum"),
    ("np.where", lambda v: np.sum(np.where(v > 0, v, 0.0)), "np.where"),
    ("np.prod", lambda v: np.prod(v), "np.prod"),
    ("np.concatenate", lambda v: np.sum(np.concatenate([v, v])), "np.concatenate"),
    ("np.add.reduce", lambda v: np.add.reduce(v), r"np.add.reduce"),
    ("ufunc out=", lambda v: np.sum(np.exp(v, out=np.empty(3))), r"np.exp with \['out'\]"),
    ("float()", lambda v: float(v[0]), r"float\(\)"),
    ("bool()", lambda v: 1.0 if v[0] else 0.0, "truth testing"),
    ("if v", lambda v: np.sum(v) if np.sum(v) > 0 and np.sum(v) else 0.0, "truth testing"),
    ("item assignment", lambda v: v.__setitem__(0, 1.0), "item assignment"),
    ("traced exponent", lambda v: np.sum(2.0 ** v), "a traced exponent"),
    ("np.power traced exponent", lambda v: np.sum(np.power(2.0, v)), "a traced exponent"),
    ("array exponent", lambda v: np.sum(v ** np.array([1.0, 2.0, 3.0])), "array exponent"),
    ("np.sum dtype", lambda v: np.sum(v, dtype=np.float32), "np.sum with dtype"),
    ("np.mean out", lambda v: np.mean(v, out=np.empty(())), "np.mean with dtype, out"),
    ("traced index", lambda v: np.sum(v[v]), "indexing with a traced index"),
    ("@ 3-D", lambda v: np.sum(v.reshape(1, 1, 3) @ np.ones((3, 1))), "@ on operands of 3"),
]


@pytest.mark.parametrize("name, f, match", UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_unsupported_operation_raises_type_error_naming_it(name, f, match):
    x = np.array([0.5, -1.0, 2.0])
    with pytest.raises(TypeError, match=match) as info:
        ft.gradient(f, x)
    assert "not supported on a traced value" in str(info.value) or "@ on operands" in str(
        info.value)
    if "not supported on a traced value" in str(info.value):
        assert "Supported: + - * /" in str(info.value)


def test_unknown_attribute_names_the_supported_set():
    with pytest.raises(AttributeError, match="no attribute 'max'.*Supported: "):
        ft.gradient(lambda v: v.max(), np.array([0.5, -1.0, 2.0]))


def test_unsupported_operation_also_raises_inside_hvp_and_jvp():
    x = np.array([0.5, -1.0, 2.0])
    with pytest.raises(TypeError, match="np.maximum"):
        ft.hvp(lambda v: np.sum(np.maximum(v, 0.0)), x, x)
    with pytest.raises(TypeError, match="np.where"):
        ft.jvp(lambda v: np.where(v > 0, v, 0.0), x, x)


def test_value_attribute_reads_through_without_differentiating():
    x = np.array([1.0, 2.0])
    g = ft.gradient(lambda v: np.sum(v * v.value), x)[0]     # v.value is a constant
    assert g.tolist() == [1.0, 2.0]


def test_dot_needs_operands_of_one_shape():
    with pytest.raises(ValueError, match=r"expected two arrays of one shape, got \(2,\) and "
                                         r"\(3,\)"):
        ft.gradient(lambda v: ft.dot(v, np.ones(3)), np.ones(2))
    assert ft.dot(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 11.0
    assert ft.dot(np.array(2.0), np.array(3.0)) == 6.0
    assert ft.abs2(np.array([-3.0])).tolist() == [9.0]
