"""Every tree example (``julia>``) of seed 001 (the Russian Flux/Functors.jl manual page),
translated with SPEC Part A: structs -> ``@ft.functor`` classes, NamedTuples -> namedtuples,
``Dict`` -> dict, numeric arrays -> NumPy arrays, ``nothing`` -> ``None``, ``missing`` -> a
sentinel, ``println`` -> ``print`` (NumPy prints ``[1 2]`` where Julia prints ``[1, 2]``).
The GPU/DataLoader examples of the page are not about trees and are tested elsewhere.
"""
from __future__ import annotations

import collections
from fractions import Fraction

import numpy as np

import fluxtree as ft
from tests.helpers import (
    NT3,
    Bar,
    Foo,
    P,
    TwoThirds,
    TypeWithNoChildren,
    assert_tree_equal,
)

XYZ = collections.namedtuple("XYZ", "x y z")
Twice = collections.namedtuple("Twice", "i ii iii iv v")


class _Missing:
    """Julia's ``missing``: a dedicated sentinel (SPEC §5.1)."""

    def __repr__(self) -> str:
        return "missing"


MISSING = _Missing()


def printed(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def seed_model():
    """``m = Foo(Bar([1,2,3]), (4, 5, Bar(Foo(6, 7))))``."""
    return Foo(Bar(np.array([1, 2, 3])), (4, 5, Bar(Foo(6, 7))))


def seed_nt():
    """``nt = (a = [1,2], b = [23, (45,), (x=6//7, y=())], c = [8,9])``."""
    return NT3(np.array([1, 2]), [23, (45,), P(Fraction(6, 7), ())], np.array([8, 9]))


# ----------------------------------------------------------------------------------------
# @functor
# ----------------------------------------------------------------------------------------
def test_functor_foo_children_are_all_fields_by_name():
    ch = ft.children(Foo(1, 2))
    assert type(ch) is dict
    assert ch == {"x": 1, "y": 2}
    assert list(ch) == ["x", "y"]


def test_functor_foo_rebuild_from_positional_tuple():
    ch, re = ft.functor(Foo(1, 2))
    assert ch == {"x": 1, "y": 2}
    out = re((10, 20))
    assert type(out) is Foo
    assert (out.x, out.y) == (10, 20)


def test_functor_twothirds_children_are_only_the_named_fields():
    ch2, re3 = ft.functor(TwoThirds(10, 20, 30))
    assert ch2 == {"a": 10, "c": 30}
    assert list(ch2) == ["a", "c"]


def test_functor_twothirds_rebuild_carries_the_other_field_over():
    _, re3 = ft.functor(TwoThirds(10, 20, 30))
    out = re3(("ten", "thirty"))
    assert type(out) is TwoThirds
    assert (out.a, out.b, out.c) == ("ten", 20, "thirty")


def test_fmap_twothirds_maps_only_the_children():
    out = ft.fmap(lambda x: 10 * x, TwoThirds(Foo(1, 2), Foo(3, 4), 56))
    assert_tree_equal(out, TwoThirds(Foo(10, 20), Foo(3, 4), 560))
    # the carried-over field is the very same object, not a mapped copy
    src = TwoThirds(Foo(1, 2), Foo(3, 4), 56)
    assert ft.fmap(lambda x: 10 * x, src).b is src.b


# ----------------------------------------------------------------------------------------
# fmap
# ----------------------------------------------------------------------------------------
def test_fmap_string_over_namedtuple_keeps_structure():
    out = ft.fmap(str, P(1, (2, 3)))
    assert type(out) is P
    assert out == P("1", ("2", "3"))


def test_fmap_println_over_nt_prints_each_leaf_and_returns_nones(capsys):
    out = ft.fmap(print, seed_nt())
    assert printed(capsys) == ["[1 2]", "23", "45", "6/7", "()", "[8 9]"]
    assert_tree_equal(out, NT3(None, [None, (None,), P(None, None)], None))


def test_fmap_println_with_exclude_array_prints_whole_arrays(capsys):
    # Julia's ``x isa Array`` matches numeric arrays and Vector{Any}: ndarray and list here
    out = ft.fmap(print, seed_nt(), exclude=lambda x: isinstance(x, (np.ndarray, list)))
    assert printed(capsys) == ["[1 2]", "[23, (45,), P(x=Fraction(6, 7), y=())]", "[8 9]"]
    assert_tree_equal(out, NT3(None, None, None))


def test_fmap_println_shared_array_printed_once_repeated_number_twice(capsys):
    twice = np.array([1, 2])
    out = ft.fmap(print, Twice(twice, 34, np.array([5, 6]), (twice, 34), 34.0))
    assert printed(capsys) == ["[1 2]", "34", "[5 6]", "34", "34.0"]
    assert_tree_equal(out, Twice(None, None, None, (None, None), None))


def test_fmap_keeps_tie_x_i_is_x_iv_0():
    twice = np.array([1, 2])
    calls = []

    def f(v):
        calls.append(v)
        return v * 1.5

    out = ft.fmap(f, Twice(twice, 34, np.array([5, 6]), (twice, 34), 34.0))
    assert out.i is out.iv[0]
    assert_tree_equal(out.i, np.array([1.5, 3.0]))
    # the array once, the immutable 34 at each of its two positions
    assert len(calls) == 5
    assert sum(1 for c in calls if c is twice) == 1
    assert [c for c in calls if not isinstance(c, np.ndarray)] == [34, 34, 34.0]


def test_fmap_two_dicts_pairs_by_key_and_ignores_extra_key():
    d1 = {"x": np.array([1, 2]), "y": 3}
    d2 = {"x": np.array([4, 5]), "y": 6, "z": "an_extra_value"}
    out = ft.fmap(lambda a, b: a + b, d1, d2)
    assert_tree_equal(out, {"x": np.array([5, 7]), "y": 9})
    assert "z" not in out


def test_fmap_times_ten_over_nested_functor_model():
    out = ft.fmap(lambda x: 10 * x, seed_model())
    assert_tree_equal(out, Foo(Bar(np.array([10, 20, 30])), (40, 50, Bar(Foo(60, 70)))))


def test_fmap_string_over_nested_functor_model():
    out = ft.fmap(str, seed_model())
    assert_tree_equal(out, Foo(Bar("[1 2 3]"), ("4", "5", Bar(Foo("6", "7")))))


def test_fmap_string_with_exclude_bar_stringifies_whole_bars():
    m = seed_model()
    out = ft.fmap(str, m, exclude=lambda v: isinstance(v, Bar))
    assert_tree_equal(out, Foo("Bar(array([1, 2, 3]))", (4, 5, "Bar(Foo(6, 7))")))


def test_fmap_custom_walk_mywalk_replaces_bars_with_hello():
    class MyWalk(ft.AbstractWalk):
        def __call__(self, recurse, x, *ys):
            if isinstance(x, Bar):
                return "hello"
            return ft.DefaultWalk()(recurse, x, *ys)

    out = ft.fmap(lambda x: 10 * x, seed_model(), walk=MyWalk())
    assert_tree_equal(out, Foo("hello", (40, 50, "hello")))


def test_fmap_prune_missing_replaces_the_repeat_of_a_shared_array():
    twice = np.array([1, 2])
    out = ft.fmap(lambda a: a.astype(np.float64), XYZ(twice, np.array([1, 2]), twice),
                  prune=MISSING)
    assert type(out) is XYZ
    assert_tree_equal(out.x, np.array([1.0, 2.0]))
    assert_tree_equal(out.y, np.array([1.0, 2.0]))
    assert out.z is MISSING


def test_fmap_prune_none_plays_nothing():
    twice = np.array([1, 2])
    out = ft.fmap(lambda a: a.astype(np.float64), XYZ(twice, np.array([1, 2]), twice),
                  prune=None)
    assert out.z is None
    assert out.y is not None


# ----------------------------------------------------------------------------------------
# isleaf
# ----------------------------------------------------------------------------------------
def test_isleaf_number_is_leaf():
    assert ft.isleaf(1) is True


def test_isleaf_numeric_array_is_leaf():
    assert ft.isleaf(np.array([2, 3, 4])) is True


def test_isleaf_mixed_list_is_not_leaf():
    assert ft.isleaf(["five", np.array([6, 7])]) is False


def test_isleaf_empty_list_is_not_leaf():
    assert ft.isleaf([]) is False


def test_isleaf_nonempty_tuple_is_not_leaf():
    assert ft.isleaf((8, 9)) is False


def test_isleaf_empty_tuple_is_leaf():
    assert ft.isleaf(()) is True


def test_children_equals_functor_first():
    for x in (Foo(1, 2), (1, 2), [3], {"a": 1}, 4.0):
        assert ft.children(x) == ft.functor(x)[0]


# ----------------------------------------------------------------------------------------
# fcollect
# ----------------------------------------------------------------------------------------
def seed_fcollect_model():
    """``m = Foo(Bar([1,2,3]), TypeWithNoChildren(:a, :b))`` (TWNC: nobody registered it)."""
    return Foo(Bar(np.array([1, 2, 3])), TypeWithNoChildren("a", "b"))


def test_fcollect_lists_every_node_depth_first():
    m = seed_fcollect_model()
    got = ft.fcollect(m)
    assert len(got) == 4
    assert got[0] is m
    assert got[1] is m.x
    assert got[2] is m.x.x
    assert got[3] is m.y


def test_fcollect_exclude_bar_drops_bar_and_its_subtree():
    m = seed_fcollect_model()
    got = ft.fcollect(m, exclude=lambda v: isinstance(v, Bar))
    assert [id(v) for v in got] == [id(m), id(m.y)]


def test_fcollect_exclude_isleaf_keeps_only_containers():
    m = seed_fcollect_model()
    got = ft.fcollect(m, exclude=ft.isleaf)
    assert [id(v) for v in got] == [id(m), id(m.x)]


# ----------------------------------------------------------------------------------------
# fmapstructure
# ----------------------------------------------------------------------------------------
def test_fmapstructure_doubles_and_returns_plain_containers():
    m = Foo(np.array([1, 2, 3]), [4, (5, 6), Foo(7, 8)])
    out = ft.fmapstructure(lambda x: 2 * x, m)
    assert_tree_equal(out, {"x": np.array([2, 4, 6]), "y": [8, (10, 12), {"x": 14, "y": 16}]})


def test_fmapstructure_println_prints_leaves_and_returns_nones(capsys):
    m = Foo(np.array([1, 2, 3]), [4, (5, 6), Foo(7, 8)])
    out = ft.fmapstructure(print, m)
    assert printed(capsys) == ["[1 2 3]", "4", "5", "6", "7", "8"]
    assert_tree_equal(out, {"x": None, "y": [None, (None, None), {"x": None, "y": None}]})
