"""Hypothesis properties of the tree walks against reference recursions written here.

Trees mix tuples, lists, dicts, namedtuples, dataclasses (mutable and frozen) and ``@functor``
records, with NumPy array, number, string and ``None`` leaves, and deliberate ties: a small
pool of arrays and lists is drawn first and its objects may be placed at several positions.
The references decompose nodes on their own (not through ``ft.children``) and apply the
Part A caching rule (arrays, lists, dicts and mutable records are identity-cached; tuples,
namedtuples, frozen dataclasses and plain values are not).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import fluxtree as ft
from tests.helpers import Bar, Foo, FrozenPoint, P, Point, _Record, identity, tree_equal

KEYS = ["a", "b", "c", "d"]


# ----------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------
arrays = st.builds(
    lambda vals, dt: np.array(vals, dtype=dt),
    st.lists(st.integers(-9, 9), max_size=4), st.sampled_from([np.float64, np.int64, np.float32]))
scalars = st.one_of(
    st.integers(-1000, 1000), st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(alphabet="xyz", max_size=3), st.none(), st.just(()))


@st.composite
def trees(draw) -> Any:
    pool_arrays = draw(st.lists(arrays, min_size=1, max_size=3))
    pool_leaves = st.one_of(scalars, arrays, st.sampled_from(pool_arrays))
    pool_lists = draw(st.lists(st.lists(pool_leaves, max_size=3), min_size=1, max_size=2))
    leaves = st.one_of(scalars, arrays, st.sampled_from(pool_arrays), st.sampled_from(pool_lists))

    def extend(children):
        return st.one_of(
            st.lists(children, min_size=1, max_size=3).map(tuple),
            st.lists(children, max_size=3),
            st.dictionaries(st.sampled_from(KEYS), children, max_size=3),
            st.builds(P, children, children),
            st.builds(Point, children, children),
            st.builds(FrozenPoint, children, children),
            st.builds(Foo, children, children),
            st.builds(Bar, children),
        )

    tree = draw(st.recursive(leaves, extend, max_leaves=12))
    shared = draw(st.sampled_from(pool_arrays + pool_lists))
    shape = draw(st.integers(0, 3))
    if shape == 1:                    # a pooled array or list at three positions
        return [tree, shared, (shared, Bar(shared))]
    if shape == 2:
        return Point(tree, {"a": shared, "b": FrozenPoint(shared, tree)})
    if shape == 3:                    # the whole generated subtree placed twice
        return (tree, [tree], P(tree, shared))
    return tree


# ----------------------------------------------------------------------------------------
# reference decomposition
# ----------------------------------------------------------------------------------------
def ref_children(x):
    """(kind, [(key, is_attr, child), ...]) or None for a leaf."""
    if type(x) is tuple:
        return ("tuple", [(i, False, v) for i, v in enumerate(x)]) if x else None
    if type(x) is list:
        return "list", [(i, False, v) for i, v in enumerate(x)]
    if type(x) is dict:
        return "dict", [(k, False, v) for k, v in x.items()]
    if type(x) is P:
        return "record", [(k, True, v) for k, v in x._asdict().items()]
    if type(x) in (Point, FrozenPoint):
        return "record", [(f.name, True, getattr(x, f.name)) for f in dataclasses.fields(x)]
    if isinstance(x, _Record):
        return "record", [(k, True, getattr(x, k)) for k in x._fields]
    return None


def cached(x) -> bool:
    """Part A rule 4 for the types generated here."""
    return isinstance(x, (np.ndarray, list, dict, Point, Foo, Bar))


def rebuild(x, values):
    if type(x) is tuple:
        return tuple(values)
    if type(x) is list:
        return list(values)
    if type(x) is dict:
        return dict(zip(x.keys(), values))
    return type(x)(*values)


def ref_fmap(f, x, *ys, structural=False):
    """fmap with an identity cache keyed on the first tree."""
    cache: dict = {}

    def visit(x, *ys):
        if cached(x) and id(x) in cache:
            return cache[id(x)]
        dec = ref_children(x)
        if dec is None:
            r = f(x, *ys)
        else:
            kind, items = dec
            rows = []
            for key, _, v in items:
                rows.append((v, *(ref_get(y, key) for y in ys)))
            values = [visit(*row) for row in rows]
            if structural and kind == "record":
                r = {key: val for (key, _, _), val in zip(items, values)}
            else:
                r = rebuild(x, values)
        if cached(x):
            cache[id(x)] = r
        return r

    return visit(x, *ys)


def ref_get(y, key):
    if isinstance(y, dict):
        return y[key]
    if isinstance(key, str):
        return getattr(y, key)
    return y[key]


def ref_fcollect(x):
    out, seen = [], set()

    def visit(v):
        if cached(v):
            if id(v) in seen:
                return
            seen.add(id(v))
        out.append(v)
        dec = ref_children(v)
        if dec is not None:
            for _, _, c in dec[1]:
                visit(c)

    visit(x)
    return out


def ref_fleaves(x):
    out = []

    def visit(v):
        dec = ref_children(v)
        if dec is None:
            out.append(v)
        else:
            for _, _, c in dec[1]:
                visit(c)

    visit(x)
    return out


def ref_leaf_paths(x):
    """(path keys, path string, leaf) for each leaf f is called on (cached repeats skipped)."""
    out, seen = [], set()

    def visit(v, keys, text):
        if cached(v):
            if id(v) in seen:
                return
            seen.add(id(v))
        dec = ref_children(v)
        if dec is None:
            out.append((keys, text or "<root>", v))
            return
        for key, attr, c in dec[1]:
            if attr:
                part = ("." if text else "") + key
            elif isinstance(key, str):
                part = f'["{key}"]'
            else:
                part = f"[{key}]"
            visit(c, keys + (key,), text + part)

    visit(x, (), "")
    return out


def positions(x, y):
    """Pairs (input object, output object) at every position, walking both in parallel."""
    out = [(x, y)]
    dec = ref_children(x)
    if dec is not None:
        ydec = ref_children(y)
        assert ydec is not None and len(ydec[1]) == len(dec[1])
        for (_, _, a), (_, _, b) in zip(dec[1], ydec[1]):
            out.extend(positions(a, b))
    return out


def first_positions(x, y):
    """Like ``positions``, but the subtree of a repeated cached node is not entered (a tie
    legitimately shares everything below it)."""
    out, seen = [], set()

    def visit(a, b):
        out.append((a, b))
        if cached(a):
            if id(a) in seen:
                return
            seen.add(id(a))
        dec = ref_children(a)
        if dec is not None:
            for (_, _, u), (_, _, v) in zip(dec[1], ref_children(b)[1]):
                visit(u, v)

    visit(x, y)
    return out


def only_plain(x) -> bool:
    if type(x) in (tuple, list):
        return all(only_plain(v) for v in x)
    if type(x) is dict:
        return all(only_plain(v) for v in x.values())
    return ft.isleaf(x)


# ----------------------------------------------------------------------------------------
# properties
# ----------------------------------------------------------------------------------------
@given(trees())
def test_fmap_identity_rebuilds_equal_tree_with_same_tie_pattern(x):
    out = ft.fmap(identity, x)
    assert tree_equal(out, x)
    pairs = [(a, b) for a, b in positions(x, out) if cached(a)]
    for (a1, b1), (a2, b2) in itertools.combinations(pairs, 2):
        assert (a1 is a2) == (b1 is b2), (a1, a2)
    # immutable containers are rebuilt at each position (outside a tied subtree): never
    # shared in the output
    rebuilt = [b for a, b in first_positions(x, out)
               if ref_children(a) is not None and not cached(a)]
    for b1, b2 in itertools.combinations(rebuilt, 2):
        assert b1 is not b2
    # arrays come back as themselves (f is the identity), containers are new objects
    for a, b in positions(x, out):
        if isinstance(a, np.ndarray):
            assert b is a
        elif ref_children(a) is not None and cached(a):
            assert b is not a


@given(trees())
def test_fmapstructure_returns_only_dicts_tuples_lists_and_leaves(x):
    out = ft.fmapstructure(identity, x)
    assert only_plain(out)
    assert tree_equal(out, ref_fmap(identity, x, structural=True))


@given(trees())
def test_fcollect_is_preorder_with_mutable_nodes_deduplicated(x):
    got = ft.fcollect(x)
    want = ref_fcollect(x)
    assert [id(v) for v in got] == [id(v) for v in want]


@given(trees())
def test_fleaves_equals_reference_recursion(x):
    got = ft.fleaves(x)
    assert [id(v) for v in got] == [id(v) for v in ref_fleaves(x)]


def make_partner(x, counter):
    """A second tree with x's structure: new leaf values, extra dict keys, namedtuples as
    dicts (paired by name).  Built without a cache, so tied positions of x get different
    values here -- the result must still follow the cache of the first tree."""
    dec = ref_children(x)
    if dec is None:
        return next(counter)
    kind, items = dec
    vals = [make_partner(v, counter) for _, _, v in items]
    if type(x) is dict or type(x) is P:
        d = {k: v for (k, _, _), v in zip(items, vals)}
        d["zz_extra"] = "extra"
        return d
    return rebuild(x, vals)


@given(trees())
def test_fmap_two_trees_equals_reference(x):
    y = make_partner(x, itertools.count(1000))

    def f(a, b):
        return (a, b)

    out = ft.fmap(f, x, y)
    assert tree_equal(out, ref_fmap(f, x, y))


@given(trees())
def test_fmap_without_cache_never_keeps_array_ties(x):
    calls = []

    def f(v):
        calls.append(v)
        return v.copy() if isinstance(v, np.ndarray) else v

    out = ft.fmap(f, x, cache=None)
    assert tree_equal(out, x)
    assert [id(v) for v in calls] == [id(v) for v in ref_fleaves(x)]
    out_arrays = [b for a, b in positions(x, out) if isinstance(a, np.ndarray)]
    assert len({id(b) for b in out_arrays}) == len(out_arrays)
    out_lists = [b for a, b in positions(x, out) if type(a) is list]
    assert len({id(b) for b in out_lists}) == len(out_lists)


@given(trees())
def test_fmap_with_path_paths_lead_to_their_leaves(x):
    seen = []

    def f(path, leaf):
        seen.append((path, leaf))
        return leaf

    out = ft.fmap_with_path(f, x)
    assert tree_equal(out, x)
    for path, leaf in seen:
        assert isinstance(path, ft.KeyPath)
        assert ft.getkeypath(x, path) is leaf
        assert ft.haskeypath(x, path)
    want = ref_leaf_paths(x)
    assert [tuple(p) for p, _ in seen] == [k for k, _, _ in want]
    assert [str(p) for p, _ in seen] == [t for _, t, _ in want]
    assert [id(v) for _, v in seen] == [id(v) for _, _, v in want]
