"""Shared fixture classes and tree comparison helpers for the functor tests.

The classes translate the Julia test structs of Functors.jl (SPEC Part B §1.8 and the seed
documentation) with the rules of SPEC Part A:

* ``Foo``, ``Bar``             -- ``struct Foo; x; y; end`` / ``struct Bar; x; end`` with ``@functor``
* ``TwoThirds``                -- ``@functor TwoThirds (a, c)``
* ``OneChild3``                -- ``@functor OneChild3 (y,)``
* ``NoChild2``                 -- ``@functor NoChild2 ()``: a node with no children, not a leaf
* ``WrongOrder``               -- ``@functor WrongOrder (z, x)``
* ``LeafType``                 -- ``@leaf LeafType``
* ``TypeWithNoChildren``       -- a plain class nobody registered: a leaf
* ``FrozenPoint``, ``Point``   -- frozen / mutable dataclasses
* ``P``                        -- a namedtuple (Julia NamedTuple)

Equality of the ``@functor`` classes is structural (and array-aware), so that expected trees
can be written literally; ``tree_equal`` also checks node types and array dtypes.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np

import fluxtree as ft


def tree_equal(a: Any, b: Any) -> bool:
    """Structural equality: same node types, same keys in the same order, equal leaves.

    Arrays compare by dtype, shape and values; everything else by ``==`` after a type check.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(tree_equal(u, v) for u, v in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(tree_equal(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a):
        return all(tree_equal(getattr(a, f.name), getattr(b, f.name))
                   for f in dataclasses.fields(a))
    if isinstance(a, _Record):
        return a._state() == b._state() and all(
            tree_equal(getattr(a, n), getattr(b, n)) for n in a._state())
    if isinstance(a, float) and a != a:
        return b != b
    return bool(a == b)


def assert_tree_equal(got: Any, expected: Any) -> None:
    assert tree_equal(got, expected), f"trees differ:\n got      {got!r}\n expected {expected!r}"


class _Record:
    """Base of the hand-written record classes: value equality over ``__init__`` fields."""

    _fields: tuple[str, ...] = ()

    def _state(self) -> tuple[str, ...]:
        return self._fields

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and tree_equal(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        args = ", ".join(repr(getattr(self, n)) for n in self._fields)
        return f"{type(self).__name__}({args})"


@ft.functor
class Foo(_Record):
    _fields = ("x", "y")

    def __init__(self, x, y):
        self.x, self.y = x, y


@ft.functor
class Bar(_Record):
    _fields = ("x",)

    def __init__(self, x):
        self.x = x


@ft.functor("a", "c")
class TwoThirds(_Record):
    _fields = ("a", "b", "c")

    def __init__(self, a, b, c):
        self.a, self.b, self.c = a, b, c


@ft.functor("y")
class OneChild3(_Record):
    _fields = ("x", "y", "z")

    def __init__(self, x, y, z):
        self.x, self.y, self.z = x, y, z


@ft.functor()
class NoChild2(_Record):
    _fields = ("x", "y")

    def __init__(self, x, y):
        self.x, self.y = x, y


@ft.functor("z", "x")
class WrongOrder(_Record):
    _fields = ("x", "y", "z")

    def __init__(self, x, y, z):
        self.x, self.y, self.z = x, y, z


@ft.leaf
class LeafType(_Record):
    _fields = ("x",)

    def __init__(self, x):
        self.x = x


class TypeWithNoChildren(_Record):
    """A plain class that nobody registered: a leaf (Part A rule 3)."""

    _fields = ("x", "y")

    def __init__(self, x, y):
        self.x, self.y = x, y


@dataclasses.dataclass
class Point:
    """A mutable dataclass: a node, identity-cached."""

    x: Any
    y: Any


@dataclasses.dataclass(frozen=True)
class FrozenPoint:
    """A frozen dataclass (Julia immutable struct): a node, never cached."""

    x: Any
    y: Any


P = collections.namedtuple("P", "x y")
NT3 = collections.namedtuple("NT3", "a b c")


class Recorder:
    """A callable that records its arguments, returning ``fn(*args)``."""

    def __init__(self, fn=lambda *a: a[0]):
        self.fn = fn
        self.calls: list[tuple] = []

    def __call__(self, *args):
        self.calls.append(args)
        return self.fn(*args)


def identity(v: Any) -> Any:
    return v


def walk_nodes(x: Any):
    """Yield every node/leaf of ``x`` reachable through ``ft.children`` (no de-duplication)."""
    yield x
    ch = ft.children(x)
    for v in (ch.values() if isinstance(ch, dict) else ch):
        yield from walk_nodes(v)


@ft.functor
class Ref(_Record):
    """Julia's ``Ref``: a mutable container with one child ``x`` (identity-cached)."""

    _fields = ("x",)

    def __init__(self, x):
        self.x = x


@ft.functor
class Chain(_Record):
    """A Flux-like container, for ``layers[1].weight``-style paths."""

    _fields = ("layers",)

    def __init__(self, layers):
        self.layers = layers


@ft.functor
class Dense(_Record):
    _fields = ("weight", "bias")

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias


# ----------------------------------------------------------------------------------------
# fixtures of the flat-vector tests (tests/test_flat_*.py)
# ----------------------------------------------------------------------------------------
@ft.functor
class DenseAct(_Record):
    """Flux's ``Dense(in => out, act)`` with SPEC Part A §2 shapes (the real layer comes later).

    ``weight`` is ``(out, in)``, ``bias`` ``(out,)``; ``layer(x) = act(x @ weight.T + bias)``
    for a batch-first ``x``; ``activation=None`` is the identity.  Use it inside the
    ``Chain`` above (``Chain((DenseAct(...), DenseAct(...)))``) and run it with ``chain_apply``.
    """

    _fields = ("weight", "bias", "activation")

    def __init__(self, weight, bias, activation=None):
        self.weight, self.bias, self.activation = weight, bias, activation

    def __call__(self, x):
        y = x @ self.weight.T + self.bias
        return y if self.activation is None else self.activation(y)


def chain_apply(chain: Any, x: Any) -> Any:
    """``Chain(x)``: the layers of ``chain.layers`` applied in order."""
    for layer in chain.layers:
        x = layer(x)
    return x


@ft.functor
class NormLike(_Record):
    """A BatchNorm-like record: ``beta``/``gamma`` trainable, running ``mu``/``sigma2`` not.

    All five fields are children; ``trainable()`` narrows them to ``beta`` and ``gamma``.
    """

    _fields = ("beta", "gamma", "mu", "sigma2", "activation")

    def __init__(self, beta, gamma, mu, sigma2, activation=None):
        self.beta, self.gamma, self.mu, self.sigma2 = beta, gamma, mu, sigma2
        self.activation = activation

    def trainable(self):
        return {"beta": self.beta, "gamma": self.gamma}


@ft.functor("a", "c")
class TwoThirdsTrainA(_Record):
    """Optimisers' ``TwoThirds``: children ``(a, c)``, ``trainable(x) = (a = x.a,)``."""

    _fields = ("a", "b", "c")

    def __init__(self, a, b, c):
        self.a, self.b, self.c = a, b, c

    def trainable(self):
        return {"a": self.a}


@ft.functor
class FooTrainYX(_Record):
    """Optimisers' ``Foo(x, y)`` whose ``trainable`` lists ``(y, x)``: order stays children's."""

    _fields = ("x", "y")

    def __init__(self, x, y):
        self.x, self.y = x, y

    def trainable(self):
        return {"y": self.y, "x": self.x}


# ----------------------------------------------------------------------------- activations
#: the constants of the tanh-form gelu (include/fluxtree/act.h)
GELU_K, GELU_C = np.sqrt(2.0 / np.pi), 0.044715


def sigmoid_ref(z: Any) -> np.ndarray:
    """The logistic function without overflow."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def act_ref(code: int, z: Any) -> np.ndarray:
    """Activation ``code`` of act.h in float64 (gelu as z * sigmoid(2u), equal to
    0.5 z (1 + tanh(u)))."""
    z = np.asarray(z, np.float64)
    if code == 1:
        return np.maximum(z, 0.0)
    if code == 2:
        return np.tanh(z)
    if code == 3:
        return sigmoid_ref(z)
    if code == 4:
        return np.logaddexp(0.0, z)
    if code == 5:
        return z * sigmoid_ref(2.0 * GELU_K * (z + GELU_C * z**3))
    if code == 6:
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0.0)))
    if code == 7:
        return np.where(z > 0, z, 0.01 * z)
    if code == 8:
        return z * sigmoid_ref(z)
    return z.copy()
