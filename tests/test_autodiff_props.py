"""Property tests of ``fluxtree.autodiff``: random expressions over broadcasting leaves
(gradient and Hessian products against central finite differences, symmetry, blocks) and
random trees with tied arrays (the tie rule: one array at every position of a tied leaf,
equal to the sum of the gradients of its uses, in the nested and in the flat gradient).
"""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import fluxtree as ft
from tests.test_autodiff_ops import EXACT_TOL, FD_TOL, close, fd_gradient, fd_hvp

# ------------------------------------------------------------------- random expressions
SHAPES = [(2, 3), (3,), (2, 1), (1, 3), ()]
OUT = (2, 3)

UNARY = ("tanh", "sin", "square", "neg", "scale", "sumk", "meank", "cube")
BINARY = ("add", "sub", "mul", "div")


def expressions(n_leaves: int) -> st.SearchStrategy:
    leaf = st.one_of(st.tuples(st.just("leaf"), st.integers(0, n_leaves - 1)),
                     st.tuples(st.just("const"), st.sampled_from([-1.5, 0.5, 2.0])))
    return st.recursive(
        leaf,
        lambda sub: st.one_of(
            st.tuples(st.sampled_from(UNARY), sub),
            st.tuples(st.sampled_from(BINARY), sub, sub)),
        max_leaves=6)


def evaluate(e, leaves):
    """The expression on plain or traced leaves, with the supported operations only."""
    kind = e[0]
    if kind == "leaf":
        return leaves[e[1]]
    if kind == "const":
        return e[1]
    if kind in BINARY:
        a, b = evaluate(e[1], leaves), evaluate(e[2], leaves)
        if kind == "add":
            return a + b
        if kind == "sub":
            return a - b
        if kind == "mul":
            return a * b
        return a / (1.0 + b * b)
    a = evaluate(e[1], leaves)
    if isinstance(a, float):                          # an op on a constant: a constant
        a = np.float64(a)
    if kind == "tanh":
        return np.tanh(a)
    if kind == "sin":
        return np.sin(a)
    if kind == "square":
        return np.square(a)
    if kind == "cube":
        return a ** 3 * 0.25
    if kind == "neg":
        return -a
    if kind == "scale":
        return 0.7 * a
    if np.ndim(a) == 0:
        return a
    if kind == "sumk":
        return a.sum(axis=-1, keepdims=True)
    return np.mean(a, axis=0, keepdims=True)


@st.composite
def problems(draw):
    n = draw(st.integers(1, 3))
    shapes = [draw(st.sampled_from(SHAPES)) for _ in range(n)]
    expr = draw(expressions(n))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    leaves = [rng.uniform(-1.2, 1.2, size=s) for s in shapes]
    W = rng.normal(size=OUT)
    return expr, leaves, W, rng


def objective(expr, W):
    return lambda *leaves: np.sum(np.sin(evaluate(expr, leaves) * W))


def packed(expr, W, shapes):
    def f(x):
        leaves, start = [], 0
        for s in shapes:
            size = int(np.prod(s))
            leaves.append(x[start:start + size].reshape(s))
            start += size
        return objective(expr, W)(*leaves)

    return f


@given(problems())
def test_random_expression_gradient_matches_finite_differences(problem):
    expr, leaves, W, _ = problem
    f = objective(expr, W)
    value, grads = ft.value_and_gradient(f, *leaves)
    assert np.isclose(value, float(f(*leaves)), rtol=1e-13, atol=1e-13)
    assert len(grads) == len(leaves)
    for i, (a, g) in enumerate(zip(leaves, grads)):
        def partial(y, i=i):
            return f(*leaves[:i], y, *leaves[i + 1:])

        assert g.shape == a.shape
        assert close(g, fd_gradient(partial, a), FD_TOL)


@given(problems())
def test_random_expression_hvp_matches_finite_differences_and_is_symmetric(problem):
    expr, leaves, W, rng = problem
    f = packed(expr, W, [a.shape for a in leaves])
    x = np.concatenate([a.ravel() for a in leaves])
    U = rng.normal(size=(x.size, 2))
    HU = ft.hvp(f, x, U)
    for j in range(2):
        assert close(HU[:, j], ft.hvp(f, x, U[:, j]), EXACT_TOL)
        assert close(HU[:, j], fd_hvp(f, x, U[:, j]), FD_TOL)
    a, b = U[:, 0] @ HU[:, 1], U[:, 1] @ HU[:, 0]
    assert abs(a - b) <= 1e-12 * max(abs(a), 1.0)


@given(problems())
def test_random_expression_jvp_is_the_gradient_projected(problem):
    expr, leaves, W, rng = problem
    f = packed(expr, W, [a.shape for a in leaves])
    x = np.concatenate([a.ravel() for a in leaves])
    v = rng.normal(size=x.size)
    _, jv = ft.jvp(f, x, v)
    g = ft.gradient(f, x)[0]
    assert np.isclose(float(jv), float(g @ v), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ random tied trees
@st.composite
def tied_trees(draw):
    """A nested dict/list/tuple whose leaves come from a pool of arrays (repeats are ties)
    or are non-parameters; each array position gets a use ``coef * sum(leaf ** power)``."""
    n_pool = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    pool = [rng.uniform(-1.5, 1.5, size=draw(st.sampled_from([(2,), (3,), (2, 2), ()])))
            for _ in range(n_pool)]
    positions: list[tuple] = []                    # (path, pool index, coef, power)

    def node(depth, path):
        kind = draw(st.sampled_from(["leaf", "leaf", "dict", "list", "tuple"] if depth < 3
                                    else ["leaf"]))
        if kind == "leaf":
            choice = draw(st.integers(-2, n_pool - 1))
            if choice == -2:
                return draw(st.sampled_from(["relu", 3, np.arange(2), None]))
            if choice == -1:
                choice = 0
            used = draw(st.booleans())
            coef = draw(st.sampled_from([-2.0, 0.5, 1.0, 3.0])) if used else 0.0
            power = draw(st.integers(1, 3))
            positions.append((path, choice, coef, power))
            return pool[choice]
        size = draw(st.integers(1, 3))
        kids = [node(depth + 1, path + ((f"k{i}" if kind == "dict" else i),))
                for i in range(size)]
        if kind == "dict":
            return {f"k{i}": k for i, k in enumerate(kids)}
        return kids if kind == "list" else tuple(kids)

    tree = {"root": node(0, ("root",))}
    return tree, pool, positions


def get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def tree_loss(positions):
    def loss(tree):
        total = 0.0
        for path, _, coef, power in positions:
            if coef:
                total = total + coef * np.sum(get(tree, path) ** power)
        return total

    return loss


def expected_gradients(pool, positions):
    out: dict[int, np.ndarray] = {}
    for _, j, coef, power in positions:
        if coef:
            g = coef * power * pool[j] ** (power - 1)
            out[j] = out[j] + g if j in out else g
    return out


@given(tied_trees())
def test_tie_rule_in_the_nested_gradient(case):
    tree, pool, positions = case
    loss = tree_loss(positions)
    g = ft.gradient(loss, tree)[0]
    expected = expected_gradients(pool, positions)
    first: dict[int, object] = {}
    for path, j, _, _ in positions:
        got = get(g, path)
        if j not in expected:
            assert got is None                        # a parameter no use touched
            continue
        assert close(got, expected[j], EXACT_TOL)
        assert got is first.setdefault(j, got)         # one array at every tied position


@given(tied_trees())
def test_tie_rule_in_the_flat_gradient(case):
    tree, pool, positions = case
    loss = tree_loss(positions)
    flat, re = ft.destructure(tree)
    g_flat = ft.gradient(lambda v: loss(re(v)), flat)[0]
    assert g_flat.shape == flat.shape and g_flat.dtype == flat.dtype
    expected = expected_gradients(pool, positions)
    slots = [j for j in dict.fromkeys(j for _, j, _, _ in positions)]
    want = np.concatenate([np.ravel(expected.get(j, np.zeros_like(pool[j]))) for j in slots]
                          or [np.zeros(0)])
    assert close(g_flat, want, EXACT_TOL)
    assert close(re.flatten(ft.gradient(loss, tree)[0]), g_flat, EXACT_TOL)
    if len(flat):
        assert close(g_flat, fd_gradient(lambda v: loss(re(v)), flat), FD_TOL)
