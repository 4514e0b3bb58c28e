"""SPEC Part B §1.8 (Functors.jl test cases 1-54) translated with SPEC Part A, plus the Part A
rules on nodes, caching, deep trees and cycles.

Translation: Julia structs -> the ``@ft.functor`` classes of ``tests.helpers``; NamedTuples ->
namedtuples; ``Dict`` -> dict; numeric arrays -> NumPy arrays; ``nothing`` -> ``None``;
``missing`` -> a sentinel; ``Ref`` -> ``helpers.Ref``, a mutable one-field ``@ft.functor``
class (what cases 18, 34 and 35 check -- identity caching of a mutable container -- exists in
Python); ``Vector{Char}`` -> a list of 1-character strings; ``1:3`` -> ``range`` (an immutable
leaf); static vectors -> a frozen ``@ft.leaf`` dataclass; ``===`` on mutables -> ``is``, on
immutables -> ``==``; positions are 0-based.

Cases with no Python meaning, not translated:

* 36, 37 -- ``Adjoint``/``Transpose`` wrappers (``v'`` sharing its parent): NumPy has no
  lazy transpose wrapper node; ``W.T`` is a view, reported by ``destructure`` (Part A rule 7).
* 38 -- ``Pair`` (``4 => 9``) has no Python counterpart (a 2-tuple is case 6).
* 52 -- ``IterateWalk`` is not implemented in fluxtree.

Case 40 (closures are traversed in Julia) is translated as the documented deviation: Python
closures are leaves.  Case 11's positional-rebuild oddity of Julia is not reproduced:
fluxtree's rebuild takes positions in children order (documented in ``ft.functor``).
"""
from __future__ import annotations

import collections
import dataclasses
import fractions
import functools
import json
import re
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fluxtree as ft
from tests.helpers import (
    NT3,
    Bar,
    Chain,
    Dense,
    Foo,
    FrozenPoint,
    LeafType,
    NoChild2,
    OneChild3,
    P,
    Point,
    Recorder,
    Ref,
    TwoThirds,
    TypeWithNoChildren,
    WrongOrder,
    assert_tree_equal,
    identity,
)

XYZ = collections.namedtuple("XYZ", "x y z")
AB = collections.namedtuple("AB", "a b")
Twice = collections.namedtuple("Twice", "i ii iii iv v")
Empty = collections.namedtuple("Empty", "")


class _Missing:
    def __repr__(self) -> str:
        return "missing"


MISSING = _Missing()


def tofloat(v):
    """Julia's ``float``: arrays to float64 arrays, numbers to ``float``."""
    if isinstance(v, np.ndarray):
        return v.astype(np.float64)
    if isinstance(v, range):
        return np.asarray(v, dtype=np.float64)
    return float(v)


def ten(v):
    return 10 * v


@ft.leaf
@dataclasses.dataclass(frozen=True)
class SVec:
    """A static (immutable, isbits) vector: a leaf that is never identity-cached."""

    data: tuple


# ----------------------------------------------------------------------------------------
# 1-4: isleaf, children
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("x", [
    1, 1.0, 1j, fractions.Fraction(1, 2), np.array([2, 3, 4]), (), int, np.ndarray, "a",
    re.compile(r"\d+"),
], ids=repr)
def test_case01_leaves(x):
    assert ft.isleaf(x) is True
    assert ft.children(x) == ()


@pytest.mark.parametrize("x", [
    ["five", np.array([6, 7])], [], (8, 9), NoChild2(1, 2), Foo(1, 2), {1: 1},
], ids=repr)
def test_case02_non_leaves(x):
    assert ft.isleaf(x) is False


def test_case03_children_of_nochild_is_empty_and_of_foo_by_field():
    ch = ft.children(NoChild2(1, 2))
    assert type(ch) is dict and ch == {}
    assert ft.children(Foo(1, 2)) == {"x": 1, "y": 2}


def test_case04_children_of_dict_is_an_equal_copy():
    d = {"a": 1, "b": 2}
    ch = ft.children(d)
    assert type(ch) is dict
    assert ch == d
    assert ch is not d
    assert list(ch) == ["a", "b"]


# ----------------------------------------------------------------------------------------
# 5-11: single-tree fmap
# ----------------------------------------------------------------------------------------
def test_case05_fmap_float_converts_number_and_array_dtype():
    out = ft.fmap(tofloat, Bar(Foo(1, np.array([1, 2, 3]))))
    assert_tree_equal(out, Bar(Foo(1.0, np.array([1.0, 2.0, 3.0]))))
    assert type(out.x.x) is float
    assert out.x.y.dtype == np.float64


def test_case06_fmap_string_over_namedtuple():
    assert ft.fmap(str, P(1, (2, 3))) == P("1", ("2", "3"))
    assert type(ft.fmap(str, P(1, (2, 3)))) is P


def test_case07_fmap_times_ten_nested():
    m = Foo(Bar(np.array([1, 2, 3])), (4, 5, Bar(Foo(6, 7))))
    assert_tree_equal(ft.fmap(ten, m), Foo(Bar(np.array([10, 20, 30])), (40, 50, Bar(Foo(60, 70)))))


def test_case08_fmap_string_exclude_bar():
    m = Foo(Bar(np.array([1, 2, 3])), (4, 5, Bar(Foo(6, 7))))
    out = ft.fmap(str, m, exclude=lambda v: isinstance(v, Bar))
    assert_tree_equal(out, Foo("Bar(array([1, 2, 3]))", (4, 5, "Bar(Foo(6, 7))")))


def test_case09_fmap_over_list_of_chars_and_exclude_list():
    def f(v):
        return v if isinstance(v, list) else "z"

    chars = ["a", "b", "c"]
    assert ft.fmap(f, chars) == ["z", "z", "z"]
    out = ft.fmap(f, chars, exclude=lambda v: isinstance(v, list))
    assert out == ["a", "b", "c"]
    assert out is chars   # f returned its argument


def test_case10_onechild3_maps_only_y():
    out = ft.fmap(lambda v: 2 * v, OneChild3(1, 2, 3))
    assert_tree_equal(out, OneChild3(1, 4, 3))


def test_case11_wrongorder_fmap_pairs_by_name():
    out = ft.fmap(lambda v: 2 * v, WrongOrder(1, 2, 3))
    assert_tree_equal(out, WrongOrder(2, 2, 6))
    ch, re_ = ft.functor(WrongOrder(1, 2, 3))
    assert list(ch) == ["z", "x"]
    assert ch == {"z": 3, "x": 1}
    # positional rebuild follows children order (z, x), unlike Julia's declaration-order oddity
    assert_tree_equal(re_((10, 30)), WrongOrder(30, 2, 10))
    assert_tree_equal(re_({"x": 10, "z": 30}), WrongOrder(10, 2, 30))


# ----------------------------------------------------------------------------------------
# 12-21: caching, ties, prune
# ----------------------------------------------------------------------------------------
def make_m1():
    shared = np.array([1, 2, 3])
    return Foo(shared, Foo(np.array([1, 2, 3]), Foo(shared, np.array([1, 2, 3]))))


def test_case12_shared_array_stays_tied():
    m1 = make_m1()
    r = ft.fmap(tofloat, m1)
    assert r.x is r.y.y.x
    assert r.x is not r.y.x
    assert r.y.x is not r.y.y.y
    assert_tree_equal(r.x, np.array([1.0, 2.0, 3.0]))


def test_case13_fmapstructure_prune_nothing():
    out = ft.fmapstructure(identity, make_m1(), prune=None)
    expected = {"x": np.array([1, 2, 3]),
                "y": {"x": np.array([1, 2, 3]), "y": {"x": None, "y": np.array([1, 2, 3])}}}
    assert_tree_equal(out, expected)


def test_case14_cache_none_breaks_tie():
    r = ft.fmap(tofloat, make_m1(), cache=None)
    assert r.x is not r.y.y.x
    assert_tree_equal(r.x, r.y.y.x)


def test_case15_shared_array_in_two_equal_records():
    shared = np.array([1, 2, 3])
    m2 = Foo(Foo(shared, 4), Foo(shared, 4))
    r = ft.fmap(tofloat, m2)
    assert r.x.x is r.y.x
    out = ft.fmapstructure(identity, m2, prune=Bar(0))
    assert_tree_equal(out, {"x": {"x": np.array([1, 2, 3]), "y": 4},
                            "y": {"x": Bar(0), "y": 4}})


def test_case16_range_is_not_cached_so_not_pruned():
    shared = np.array([1, 2, 3])
    rng = range(1, 4)
    out = ft.fmapstructure(identity, Foo(Foo(shared, rng), Foo(rng, shared)), prune=0)
    assert out["y"]["y"] == 0
    assert out["y"]["x"] is rng
    assert out["x"]["y"] is rng
    assert out["x"]["x"] is shared


def test_case17_immutable_tree_creates_no_cache_entries():
    cache: dict = {}
    out = ft.fmap(tofloat, XYZ(1, (2, 3), range(4, 6)), cache=cache)
    assert type(out) is XYZ
    assert out.x == 1.0 and type(out.x) is float
    assert out.y == (2.0, 3.0)
    assert_tree_equal(out.z, np.array([4.0, 5.0]))
    assert cache == {}


def test_case17b_user_cache_records_mutable_nodes_and_arrays():
    a = np.array([1.0])
    lst = [a, a]
    cache: dict = {}
    out = ft.fmap(lambda v: v * 2, {"l": lst, "m": lst}, cache=cache)
    # the array, the list and the outer dict (the input, not the result) are cached
    assert len(cache) == 3
    assert {id(a), id(lst)} <= set(cache)
    assert cache[id(a)][0] is a and cache[id(lst)][0] is lst
    assert cache[id(lst)][1] is out["l"] is out["m"]
    # a cache passed again keeps its results: the array maps to the cached result
    again = ft.fmap(lambda v: v * 100, {"q": a}, cache=cache)
    assert again["q"] is cache[id(a)][1]
    assert_tree_equal(again["q"], np.array([2.0]))


def test_case18_ref_ties():
    ref = Ref(1)
    m5 = XYZ(ref, ref, Ref(1))
    r = ft.fmap(lambda v: v / 2, m5)
    assert r.x is r.y
    assert r.x is not r.z
    assert r.x.x == 0.5
    assert type(r.x) is Ref
    assert r.x is not ref


def test_case19_fmap_println_docstring(capsys):
    twice = np.array([1, 2])
    out = ft.fmap(print, Twice(twice, 34, np.array([5, 6]), (twice, 34), 34.0))
    assert capsys.readouterr().out.splitlines() == ["[1 2]", "34", "[5 6]", "34", "34.0"]
    assert out == Twice(None, None, None, (None, None), None)


def test_case20_prune_missing():
    twice = np.array([1, 2])
    out = ft.fmap(tofloat, XYZ(twice, np.array([1, 2]), twice), prune=MISSING)
    assert_tree_equal(out.x, np.array([1.0, 2.0]))
    assert_tree_equal(out.y, np.array([1.0, 2.0]))
    assert out.z is MISSING


def test_case21_fmap_println_nested_and_exclude_array(capsys):
    nt = NT3(np.array([1, 2]), [23, (45,), P(fractions.Fraction(6, 7), ())], np.array([8, 9]))
    out = ft.fmap(print, nt)
    assert capsys.readouterr().out.splitlines() == ["[1 2]", "23", "45", "6/7", "()", "[8 9]"]
    assert_tree_equal(out, NT3(None, [None, (None,), P(None, None)], None))
    out = ft.fmap(print, nt, exclude=lambda v: isinstance(v, (np.ndarray, list)))
    assert capsys.readouterr().out.splitlines() == [
        "[1 2]", "[23, (45,), P(x=Fraction(6, 7), y=())]", "[8 9]"]
    assert_tree_equal(out, NT3(None, None, None))


# ----------------------------------------------------------------------------------------
# 22-31: several trees, dicts
# ----------------------------------------------------------------------------------------
def add(*xs):
    return functools.reduce(lambda a, b: a + b, xs)


def test_case22_two_namedtuples():
    out = ft.fmap(add, P(np.array([1, 2]), 3), P(np.array([4, 5]), 6))
    assert_tree_equal(out, P(np.array([5, 7]), 9))


def test_case23_output_type_from_first_tree():
    out = ft.fmap(add, P(np.array([1, 2]), 3), Foo(np.array([7, 8]), 9))
    assert_tree_equal(out, P(np.array([8, 10]), 12))
    out = ft.fmap(add, Foo(np.array([7, 8]), 9), P(np.array([4, 5]), 6))
    assert_tree_equal(out, Foo(np.array([11, 13]), 15))


def test_case24_mismatched_trees_raise():
    with pytest.raises(TypeError, match=r"tree 2 holds a value of type int at y, where tree 1 "
                                        r"has the node AB with keys \['a', 'b'\]"):
        ft.fmap(lambda a, b: a, P(np.array([1, 2]), AB(np.array([3, 4]), 5)),
                P(np.array([6, 7]), 8))


def make_m3_n3():
    shared = np.array([1, 2, 3])
    return NT3(shared, np.array([4, 5, 6]), shared), NT3(shared, shared, np.array([7, 8, 9]))


def test_case25_cache_keyed_on_first_tree():
    m3, n3 = make_m3_n3()
    r = ft.fmap(add, m3, n3)
    assert_tree_equal(r, NT3(np.array([2, 4, 6]), np.array([5, 7, 9]), np.array([2, 4, 6])))
    assert r.a is r.c
    r = ft.fmap(add, m3, n3, prune=None)
    assert_tree_equal(r, NT3(np.array([2, 4, 6]), np.array([5, 7, 9]), None))


def test_case26_four_trees():
    m3, n3 = make_m3_n3()
    r4 = ft.fmap(add, m3, n3, m3, n3)
    assert_tree_equal(r4, ft.fmap(lambda v: 2 * v, ft.fmap(add, m3, n3)))
    assert_tree_equal(r4, NT3(np.array([4, 8, 12]), np.array([10, 14, 18]), np.array([4, 8, 12])))
    assert r4.a is r4.c


def test_case27_three_trees_of_mixed_kinds():
    out = ft.fmap(lambda a, b, c: a * b * c, P(np.array([1, 2]), 3), Foo(np.array([7, 8]), 9),
                  P(np.array([4, 5]), 6))
    assert_tree_equal(out, P(np.array([28, 80]), 162))


def test_case28_nested_dicts():
    out = ft.fmap(lambda v: v + 1, {"a": 1, "b": {"a": 5, "b": 6, "c": 7}})
    assert_tree_equal(out, {"a": 2, "b": {"a": 6, "b": 7, "c": 8}})


def test_case29_dict_extra_key_ignored():
    out = ft.fmap(add, {"x": np.array([1, 2]), "y": 3},
                  {"x": np.array([4, 5]), "y": 6, "z": "extra"})
    assert_tree_equal(out, {"x": np.array([5, 7]), "y": 9})


def test_case30_dict_paired_with_namedtuple():
    out = ft.fmap(add, {"x": np.array([1, 2]), "y": 3}, P(np.array([4, 5]), 6))
    assert_tree_equal(out, {"x": np.array([5, 7]), "y": 9})


def test_case31_nested_extra_keys_ignored():
    m = {"x": np.array([1, 2]), "y": {"a": 3, "b": 4}}
    n = {"x": np.array([4, 5]), "y": {"a": 0.1, "b": 0.2, "c": 5}, "z": {"a": 5}}
    out = ft.fmap(add, m, n)
    assert_tree_equal(out, {"x": np.array([5, 7]), "y": {"a": 3 + 0.1, "b": 4 + 0.2}})


def test_dict_order_follows_first_tree():
    out = ft.fmap(lambda a, b: (a, b), {"b": 1, "a": 2}, {"a": 20, "b": 10})
    assert list(out) == ["b", "a"]
    assert out == {"b": (1, 10), "a": (2, 20)}


def test_leaves_of_other_trees_may_be_anything():
    rec = Recorder(lambda a, b: (a, b))
    out = ft.fmap(rec, {"x": 1, "y": np.array([2])}, {"x": None, "y": "s"})
    assert out["x"] == (1, None)
    assert rec.calls[1][1] == "s"


def test_longer_sequence_in_other_tree_is_truncated():
    assert ft.fmap(add, (1, 2), (10, 20, 30)) == (11, 22)


# ----------------------------------------------------------------------------------------
# 32-35: fmapstructure, Ref
# ----------------------------------------------------------------------------------------
def test_case32_fmapstructure_records_become_dicts():
    out = ft.fmapstructure(identity, Foo((0, Bar(np.array([1, 2, 3]))), [4, 5]))
    assert_tree_equal(out, {"x": (0, {"x": np.array([1, 2, 3])}), "y": [4, 5]})


def test_case33_fmapstructure_doubles():
    out = ft.fmapstructure(lambda v: 2 * v, Foo(np.array([1, 2, 3]), [4, (5, 6), Foo(7, 8)]))
    assert_tree_equal(out, {"x": np.array([2, 4, 6]), "y": [8, (10, 12), {"x": 14, "y": 16}]})


def test_case34_ref_fmap_and_fmapstructure():
    out = ft.fmap(np.sqrt, Ref(16))
    assert type(out) is Ref and out.x == 4.0
    assert ft.fmapstructure(np.sqrt, Ref(16)) == {"x": 4.0}


def test_case35_ref_ties_inside_list_and_tuple():
    x = Ref(13)
    x2 = NT3(x, [7, x, None], (7, None, Ref(13)))
    y2 = ft.fmap(identity, x2)
    assert y2.a is not x2.a
    assert y2.a is y2.b[1]
    assert y2.a is not y2.c[2]
    assert y2.a == Ref(13) and y2.c[2] == Ref(13)


# ----------------------------------------------------------------------------------------
# 39-40: types and closures are leaves
# ----------------------------------------------------------------------------------------
def test_case39_types_are_leaves():
    x = (1, int, list, np.ndarray, 5)
    out = ft.fmap(identity, x)
    assert out == x
    assert out[1] is int and out[2] is list and out[3] is np.ndarray


def test_case40_closures_are_leaves_deviation():
    w = np.ones((2, 2))
    b = np.ones(2)

    def m(x):
        return np.tanh(w @ x + b)

    assert ft.isleaf(m) is True
    assert ft.children(m) == ()
    assert ft.fmap(lambda v: "mapped", m) == "mapped"
    tree = {"f": m, "lam": lambda z: z, "p": functools.partial(m, 1)}
    out = ft.fmap(identity, tree)
    assert out["f"] is m and out["p"] is tree["p"] and out["lam"] is tree["lam"]
    assert ft.fcollect([m]) == [[m], m]
    assert len(ft.fcollect([m])) == 2       # the captured w, b are not traversed


# ----------------------------------------------------------------------------------------
# 41-49: fcollect, fleaves
# ----------------------------------------------------------------------------------------
def ids(xs):
    return [id(v) for v in xs]


def test_case41_fcollect_depth_first():
    arr = np.array([1, 2, 3])
    m = Bar(Foo(arr, 1))
    got = ft.fcollect(m)
    assert ids(got) == [id(m), id(m.x), id(arr), id(1)]
    assert got[3] == 1


def test_case42_fcollect_with_exclude():
    arr = np.array([1, 2, 3])
    m = Bar(Foo(arr, 1))
    got = ft.fcollect(m, exclude=lambda v: isinstance(v, np.ndarray))
    assert ids(got) == [id(m), id(m.x), id(1)]
    assert ids(ft.fcollect(m, exclude=lambda v: isinstance(v, Foo))) == [id(m)]


def test_case43_fcollect_nochild_node_is_listed_without_fields():
    inner = Bar(np.array([1, 2, 3]))
    nc = NoChild2("a", "b")
    m = Bar(Foo(inner, nc))
    got = ft.fcollect(m)
    assert ids(got) == [id(m), id(m.x), id(inner), id(inner.x), id(nc)]


def test_case44_equal_distinct_arrays_both_listed():
    m1, m2 = np.array([1, 2, 3]), np.array([1, 2, 3])
    f = Foo(m1, m2)
    assert ids(ft.fcollect(f)) == [id(f), id(m1), id(m2)]


def test_case45_same_array_listed_once():
    m1 = np.array([1, 2, 3])
    f = Foo(m1, m1)
    assert ids(ft.fcollect(f)) == [id(f), id(m1)]


def test_case46_immutable_leaves_listed_at_every_occurrence():
    s1, s2 = SVec((1, 2)), SVec((1, 2))
    f = Foo(s1, s2)
    assert ids(ft.fcollect(f)) == [id(f), id(s1), id(s2)]
    g = Foo(s1, s1)                     # even the same immutable object: not de-duplicated
    assert ids(ft.fcollect(g)) == [id(g), id(s1), id(s1)]
    t = (1, 2)
    h = Foo(t, t)                       # a tuple twice: listed twice with its subtree
    assert ft.fcollect(h)[1:] == [(1, 2), 1, 2, (1, 2), 1, 2]


def test_case47_fcollect_docstring():
    m = Foo(Bar(np.array([1, 2, 3])), LeafType(("a", "b")))
    assert ids(ft.fcollect(m)) == [id(m), id(m.x), id(m.x.x), id(m.y)]
    assert ids(ft.fcollect(m, exclude=lambda v: isinstance(v, Bar))) == [id(m), id(m.y)]
    assert ids(ft.fcollect(m, exclude=ft.isleaf)) == [id(m), id(m.x)]
    t = Foo(Bar(np.array([1, 2, 3])), TypeWithNoChildren("a", "b"))
    assert ids(ft.fcollect(t)) == [id(t), id(t.x), id(t.x.x), id(t.y)]


def test_case48_fleaves_and_exclude_namedtuple():
    x = (1, (2, 3), NT3(4, (5, 6), 7))
    assert ft.fleaves(x) == [1, 2, 3, 4, 5, 6, 7]
    got = ft.fleaves(x, exclude=lambda v: ft.isleaf(v) or isinstance(v, NT3))
    assert got == [1, 2, 3, NT3(4, (5, 6), 7)]
    assert got[3] is x[2]


def test_case49_fleaves_of_empty_namedtuple():
    assert ft.isleaf(Empty()) is False
    assert ft.fleaves(Empty()) == []
    assert ft.fleaves(NT3(1, 2, Empty())) == [1, 2]
    assert ft.fleaves(()) == [()]


def test_fleaves_does_not_deduplicate():
    a = np.array([1.0])
    assert ids(ft.fleaves([a, (a, {"k": a})])) == [id(a)] * 3


# ----------------------------------------------------------------------------------------
# 50-54: OrderedDict, TwoThirds, custom walk, fmap_with_path
# ----------------------------------------------------------------------------------------
def test_case50_ordereddict_stays_ordereddict():
    od = collections.OrderedDict([(2, 2), (1, 1)])
    out = ft.fmap(lambda v: 2 * v, od)
    assert type(out) is collections.OrderedDict
    assert list(out.items()) == [(2, 4), (1, 2)]
    assert type(ft.fmapstructure(identity, od)) is dict


def test_case51_twothirds():
    out = ft.fmap(ten, TwoThirds(Foo(1, 2), Foo(3, 4), 56))
    assert_tree_equal(out, TwoThirds(Foo(10, 20), Foo(3, 4), 560))
    out = ft.functor(TwoThirds(10, 20, 30))[1](("ten", "thirty"))
    assert_tree_equal(out, TwoThirds("ten", 20, "thirty"))


def test_case53_custom_walk():
    class MyWalk(ft.AbstractWalk):
        def __call__(self, recurse, x, *ys):
            return "hello" if isinstance(x, Bar) else ft.DefaultWalk()(recurse, x, *ys)

    m = Foo(Bar(np.array([1, 2, 3])), (4, 5, Bar(Foo(6, 7))))
    assert_tree_equal(ft.fmap(ten, m, walk=MyWalk()), Foo("hello", (40, 50, "hello")))


def test_case54_fmap_with_path_exclude_by_path():
    x = (np.array([1, 2, 3]), 4, NT3(5, {"A": 6, "B": 7}, {"C": 8, "D": 9}))

    def f(kp, v):
        return None if isinstance(v, dict) else v ** 2

    out = ft.fmap_with_path(f, x, exclude=lambda kp, v: kp == ft.KeyPath(2, "c") or ft.isleaf(v))
    assert_tree_equal(out, (np.array([1, 4, 9]), 16, NT3(25, {"A": 36, "B": 49}, None)))


# ----------------------------------------------------------------------------------------
# Part A rule 3/4: nodes and the identity cache
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("x, cached", [
    (np.zeros(2), True), ([], True), ({}, True), (Foo(1, 2), True), (Point(1, 2), True),
    (Ref(1), True), (LeafType(1), True),
    ((1,), False), (P(1, 2), False), (FrozenPoint(1, 2), False), (1, False), (1.5, False),
    ("s", False), (b"b", False), (None, False), (True, False), (np.float32(1), False),
    (SVec((1,)), False),
], ids=repr)
def test_usecache_table(x, cached):
    assert ft.usecache(x) is cached


@pytest.mark.parametrize("x, leaf", [
    ([], False), ({}, False), (Empty(), False), (NoChild2(1, 2), False), ((), True),
    (None, True), (b"x", True), (np.float32(1), True), (np.array(1.0), True),
    (np.random.default_rng(0), True), (TypeWithNoChildren(1, 2), True), (print, True),
], ids=repr)
def test_isleaf_table(x, leaf):
    assert ft.isleaf(x) is leaf


@pytest.mark.parametrize("x", [[], {}, Empty(), NoChild2(1, 2)], ids=repr)
def test_empty_nodes_are_rebuilt_without_calling_f(x):
    rec = Recorder()
    out = ft.fmap(rec, x)
    assert rec.calls == []
    assert type(out) is type(x)
    assert out == x


def test_fmap_builds_new_mutable_containers_even_when_unchanged():
    x = {"l": [1, 2], "f": Foo(1, 2), "p": Point(1, 2)}
    out = ft.fmap(identity, x)
    assert out is not x
    assert out["l"] is not x["l"] and out["f"] is not x["f"] and out["p"] is not x["p"]
    assert_tree_equal(out, x)


@pytest.mark.parametrize("value", ["ab", 1000, None, (1,), P(1, 2), FrozenPoint(1, 2), b"b"],
                         ids=repr)
def test_immutables_repeated_are_not_pruned(value):
    out = ft.fmap(identity, [value, value], prune="PRUNED")
    assert out == [value, value]


@pytest.mark.parametrize("make", [lambda: [1], lambda: {"k": 1}, lambda: np.array([1]),
                                  lambda: Foo(1, 2), lambda: Point(1, 2), lambda: LeafType(1),
                                  lambda: TypeWithNoChildren(1, 2)],
                         ids=["list", "dict", "array", "functor", "dataclass", "leaf", "plain"])
def test_mutables_repeated_are_pruned(make):
    v = make()
    out = ft.fmap(identity, [v, v], prune="PRUNED")
    assert out[1] == "PRUNED"
    assert out[0] != "PRUNED"


def test_tuple_placed_twice_is_rebuilt_twice_but_list_is_shared():
    t, lst = (np.array([1]), 2), [3]
    out = ft.fmap(identity, {"a": t, "b": t, "c": lst, "d": lst})
    assert out["a"][1] == out["b"][1] == 2
    assert out["a"] is not out["b"]
    assert out["a"][0] is out["b"][0]          # the array inside is still tied
    assert out["c"] is out["d"]


def test_dataclass_static_field_is_not_a_child():
    @dataclasses.dataclass
    class S:
        w: object
        n: object = dataclasses.field(default=0, metadata={"static": True})

    assert ft.children(S(1, 2)) == {"w": 1}
    out = ft.fmap(ten, S(1, 2))
    assert type(out) is S and (out.w, out.n) == (10, 2)
    assert ft.fmapstructure(ten, S(1, 2)) == {"w": 10}


def test_functor_decoration_applies_to_subclasses_and_leaf_overrides():
    class Sub(Foo):
        def __init__(self, x, y, z):
            super().__init__(x, y)
            self.z = z

    assert ft.children(Sub(1, 2, 3)) == {"x": 1, "y": 2, "z": 3}

    class LeafSub(LeafType):
        pass

    assert ft.isleaf(LeafSub(1)) is True


def test_register_custom_node():
    class Pt:
        def __init__(self, a, b):
            self.a, self.b = a, b

    class SubPt(Pt):
        pass

    ft.register(Pt, lambda p: (p.a, p.b), lambda p, ch: Pt(*ch))
    assert ft.isleaf(Pt(1, 2)) is False
    assert ft.children(Pt(1, 2)) == (1, 2)
    assert ft.usecache(Pt(1, 2)) is True
    out = ft.fmap(lambda v: v + 1, Pt(1, [2, Pt(3, 4)]))
    assert type(out) is Pt and out.a == 2 and out.b[0] == 3 and (out.b[1].a, out.b[1].b) == (4, 5)
    assert ft.fmapstructure(identity, Pt(1, [2])) == (1, [2])
    assert ft.isleaf(SubPt(1, 2)) is True      # exactly cls, not subclasses


def test_register_cache_false_is_never_cached():
    class Imm:
        def __init__(self, a):
            self.a = a

    ft.register(Imm, lambda p: {"a": p.a}, lambda p, ch: Imm(ch["a"]), cache=False)
    v = Imm(1)
    assert ft.usecache(v) is False
    out = ft.fmap(identity, [v, v], prune="PRUNED")
    assert type(out[1]) is Imm and out[1].a == 1
    assert out[0] is not out[1]


def test_modules_lists_non_leaf_nodes_once():
    inner = Foo(2, (3,))
    x = {"a": [1, inner, inner], "b": np.zeros(2)}
    got = ft.modules(x)
    assert ids(got) == [id(x), id(x["a"]), id(inner), id(inner.y)]


# ----------------------------------------------------------------------------------------
# key paths and with_path maps
# ----------------------------------------------------------------------------------------
def test_keypath_layers_1_weight_style():
    m = Chain([Dense(np.ones(2), np.zeros(2)), Dense(np.ones(2), 0)])
    out = ft.fmap_with_path(lambda p, v: str(p), m)
    assert out.layers[1].weight == "layers[1].weight"
    assert out.layers[0].bias == "layers[0].bias"
    assert ft.fmap_with_path(lambda p, v: str(p), {"enc": 1}) == {"enc": '["enc"]'}


def test_keypath_is_tuple_of_keys_zero_based():
    paths = []
    ft.fmap_with_path(lambda p, v: paths.append(p), {"a": (1, P(2, [3]))})
    assert paths == [("a", 0), ("a", 1, "x"), ("a", 1, "y", 0)]
    assert all(type(p) is ft.KeyPath and isinstance(p, tuple) for p in paths)
    assert [str(p) for p in paths] == ['["a"][0]', '["a"][1].x', '["a"][1].y[0]']
    assert hash(paths[0]) == hash(("a", 0))


def test_keypath_construction_and_printing():
    assert str(ft.KeyPath()) == "<root>"
    assert str(ft.KeyPath(2, "c")) == "[2].c"
    assert ft.KeyPath("a", 1) + ft.KeyPath("b") == ("a", 1, "b")
    assert repr(ft.KeyPath("a", 1)) == "KeyPath('a', 1)"
    assert str(ft.KeyPath.make(("layers", 1, "weight"), (True, False, True))) == "layers[1].weight"


def test_getkeypath_and_haskeypath():
    m = Chain([Dense(np.ones(2), 7)])
    assert ft.getkeypath(m, ft.KeyPath("layers", 0, "bias")) == 7
    assert ft.getkeypath(m, ("layers", 0)) is m.layers[0]
    assert ft.getkeypath(m, ()) is m
    assert ft.haskeypath(m, ("layers", 0, "weight")) is True
    assert ft.haskeypath(m, ("layers", 1)) is False
    assert ft.haskeypath(m, ("nope",)) is False
    assert ft.getkeypath(P(1, {"k": 2}), ("y", "k")) == 2


def test_fmapstructure_with_path():
    out = ft.fmapstructure_with_path(lambda p, v: (tuple(p), v), Foo(1, P(2, [3])))
    assert out == {"x": (("x",), 1), "y": {"x": (("y", "x"), 2), "y": [(("y", "y", 0), 3)]}}


def test_fmap_with_path_several_trees():
    out = ft.fmap_with_path(lambda p, a, b: (str(p), a + b), {"w": [1, 2]}, {"w": [10, 20]})
    assert out == {"w": [('["w"][0]', 11), ('["w"][1]', 22)]}


# ----------------------------------------------------------------------------------------
# walks
# ----------------------------------------------------------------------------------------
def test_structural_walk_via_fmap():
    out = ft.fmap(lambda v: 2 * v, Foo(1, [2, (3,)]), walk=ft.StructuralWalk())
    assert out == {"x": 2, "y": [4, (6,)]}


def test_execute_exclude_and_cached_walks():
    sh = [1.0]
    walk = ft.CachedWalk(ft.ExcludeWalk(ft.DefaultWalk(), lambda v: v * 2), prune=0)
    assert ft.execute(walk, (sh, [sh])) == ([2.0], [0])
    assert ft.execute(ft.ExcludeWalk(ft.StructuralWalk(), lambda v: v * 2), Foo(1, P(2, 3))) == \
        {"x": 2, "y": {"x": 4, "y": 6}}
    assert ft.execute(ft.ExcludeWalk(ft.DefaultWalk(), lambda a, b: a * b), Foo(1, [2]),
                      {"x": 10, "y": [100]}) == Foo(10, [200])


def test_custom_walk_keeps_ties_unless_cache_none():
    class W(ft.AbstractWalk):
        def __call__(self, recurse, x, *ys):
            return ft.DefaultWalk()(recurse, x, *ys)

    sh = [1.0]
    r = ft.fmap(lambda v: v * 2, {"a": sh, "b": sh}, walk=W())
    assert r == {"a": [2.0], "b": [2.0]} and r["a"] is r["b"]
    r = ft.fmap(lambda v: v * 2, {"a": sh, "b": sh}, walk=W(), cache=None)
    assert r["a"] is not r["b"]
    assert ft.fmap(lambda v: v * 2, {"a": sh, "b": sh}, walk=W(), prune=0) == {"a": [2.0], "b": 0}
    out = ft.fmap(add, Foo(1, [2, (3,)]), P(10, [20, (30,)]), walk=W())
    assert_tree_equal(out, Foo(11, [22, (33,)]))


# ----------------------------------------------------------------------------------------
# Part A rule 13: deep acyclic trees work, cycles are a ValueError naming the path
# ----------------------------------------------------------------------------------------
DEPTH = 10_000
_SRC = str(Path(ft.__file__).resolve().parent.parent)

_DEEP_SCRIPT = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, sys.argv[3])
    import fluxtree as ft

    @ft.functor
    class Box:
        def __init__(self, x):
            self.x = x

    kind, op, N = sys.argv[1], sys.argv[2], int(sys.argv[4])
    x = 1.0
    for _ in range(N):
        x = {"list": lambda v: [v], "dict": lambda v: {"k": v}, "tuple": lambda v: (v,),
             "record": Box}[kind](x)

    def down(t):
        d = 0
        while not ft.isleaf(t):
            ch = ft.children(t)
            t = list(ch.values())[0] if isinstance(ch, dict) else ch[0]
            d += 1
        return d, t

    if op == "fmap":
        r = ft.fmap(lambda v: v * 2, x); res = down(r) + (type(r).__name__,)
    elif op == "fmap_multi":
        r = ft.fmap(lambda a, b: a + b, x, x); res = down(r) + (type(r).__name__,)
    elif op == "fmapstructure":
        r = ft.fmapstructure(lambda v: v * 2, x); res = down(r) + (type(r).__name__,)
    elif op == "fmap_with_path":
        r = ft.fmap_with_path(lambda p, v: len(p), x); res = down(r) + (type(r).__name__,)
    elif op == "fcollect":
        r = ft.fcollect(x); res = (len(r), r[-1], r[0] is x)
    elif op == "fleaves":
        r = ft.fleaves(x); res = (len(r), r[0], True)
    print("RESULT " + json.dumps(res))
''')


def _limit_stack():  # the Linux default: 8 MiB for the main thread
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = 8 * 1024 * 1024
    if hard != resource.RLIM_INFINITY and hard < want:
        want = hard
    resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


def run_deep(kind, op):
    """Run one deep-tree operation in a child process (a crash must not kill pytest)."""
    proc = subprocess.run([sys.executable, "-c", _DEEP_SCRIPT, kind, op, _SRC, str(DEPTH)],
                          capture_output=True, text=True, timeout=300, preexec_fn=_limit_stack)
    assert proc.returncode == 0, f"exit status {proc.returncode}: {proc.stderr[-2000:]}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


_ROOT_TYPE = {"list": "list", "dict": "dict", "tuple": "tuple", "record": "Box"}
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["list", "dict", "tuple", "record"])
@pytest.mark.parametrize("op", [
    "fmap", "fmapstructure", "fcollect", "fleaves",
    "fmap_with_path", "fmap_multi",
])
def test_deep_acyclic_tree_10000_levels(kind, op):
    res = run_deep(kind, op)
    if op == "fcollect":
        assert res == [DEPTH + 1, 1.0, True]
    elif op == "fleaves":
        assert res == [1, 1.0, True]
    elif op == "fmap_with_path":
        assert res == [DEPTH, DEPTH, _ROOT_TYPE[kind]]
    elif op == "fmapstructure":
        assert res == [DEPTH, 2.0, "dict" if kind == "record" else _ROOT_TYPE[kind]]
    else:
        assert res == [DEPTH, 2.0, _ROOT_TYPE[kind]]


def make_cycle():
    lst = [1]
    lst.append({"a": lst})
    return lst


CYCLE_OPS = {
    "fmap": lambda x: ft.fmap(identity, x),
    "fmapstructure": lambda x: ft.fmapstructure(identity, x),
    "fcollect": ft.fcollect,
    "fleaves": ft.fleaves,
    "fmap_with_path": lambda x: ft.fmap_with_path(lambda p, v: v, x),
    "modules": ft.modules,
}


@pytest.mark.parametrize("what", list(CYCLE_OPS))
def test_cycle_raises_value_error_naming_the_path(what):
    with pytest.raises(ValueError, match=re.escape(
            f'{what}: the tree contains itself: a cycle through [1]["a"].')):
        CYCLE_OPS[what](make_cycle())


def test_cycle_through_record_is_detected_with_and_without_cache():
    b = Bar(None)
    b.x = [1, b]
    for kw in ({}, {"cache": None}, {"prune": 0}):
        with pytest.raises(ValueError, match=re.escape('a cycle through ["m"].x[1].')):
            ft.fmap(identity, {"m": b}, **kw)
