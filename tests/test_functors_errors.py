"""Error messages of the tree layer, pinned (SPEC Part A rule 13: wrong types raise TypeError,
wrong values ValueError, each naming the place in the tree as a path)."""
from __future__ import annotations

import re

import numpy as np
import pytest

import fluxtree as ft
from tests.helpers import P, Chain, Dense, Foo, identity


def esc(text: str) -> str:
    """The whole message (pytest matches ``str(exc)`` followed by the exception's notes)."""
    return "^" + re.escape(text) + "$"


# ----------------------------------------------------------------------------------------
# several trees
# ----------------------------------------------------------------------------------------
def test_missing_key_at_root():
    with pytest.raises(ValueError, match=esc(
            "fmap: tree 2 has no entry 'y' at <root>, where tree 1 has one.")):
        ft.fmap(lambda a, b: a, {"x": 1, "y": 2}, {"x": 1})


def test_missing_field_names_record_path():
    x = Chain([Dense(1, [2])])
    with pytest.raises(ValueError, match=esc(
            "fmap: tree 2 has no entry 'bias' at layers[0], where tree 1 has one.")):
        ft.fmap(lambda a, b: a, x, Chain([{"weight": 1}]))


def test_missing_field_of_namedtuple_in_dict():
    with pytest.raises(ValueError, match=esc(
            "fmap: tree 2 has no entry 'y' at <root>, where tree 1 has one.")):
        ft.fmap(lambda a, b: a, P(1, 2), {"x": 1})


def test_third_tree_is_numbered_three():
    with pytest.raises(ValueError, match=esc(
            "fmap: tree 3 has no entry 'b' at [\"k\"], where tree 1 has one.")):
        ft.fmap(lambda a, b, c: a, {"k": {"b": 1}}, {"k": {"b": 1}}, {"k": {"c": 1}})


@pytest.mark.parametrize("what, fn", [
    ("fmap", lambda x, y: ft.fmap(lambda a, b: a, x, y)),
    ("fmapstructure", lambda x, y: ft.fmapstructure(lambda a, b: a, x, y)),
    ("fmap_with_path", lambda x, y: ft.fmap_with_path(lambda p, a, b: a, x, y)),
])
def test_too_short_sequence(what, fn):
    with pytest.raises(ValueError, match=esc(
            f'{what}: tree 2 has 2 children at ["k"], fewer than the 3 of tree 1.')):
        fn({"k": [1, 2, 3]}, {"k": [1, 2]})


def test_too_short_tuple_at_root():
    with pytest.raises(ValueError, match=esc(
            "fmap: tree 2 has 2 children at <root>, fewer than the 3 of tree 1.")):
        ft.fmap(lambda a, b: a, (1, 2, 3), (1, 2))


def test_wrong_type_where_sequence_expected():
    with pytest.raises(TypeError, match=esc(
            'fmap: tree 2 holds a value of type int at ["k"], where tree 1 has the sequence '
            "node list.")):
        ft.fmap(lambda a, b: a, {"k": [1, 2, 3]}, {"k": 5})


def test_wrong_type_where_keyed_node_expected():
    with pytest.raises(TypeError, match=esc(
            "fmap: tree 2 holds a value of type int at [\"k\"], where tree 1 has the node dict "
            "with keys ['a'].")):
        ft.fmap(lambda a, b: a, {"k": {"a": 1}}, {"k": 5})


def test_none_where_record_expected():
    with pytest.raises(TypeError, match=esc(
            "fmap: tree 2 holds a value of type NoneType at <root>, where tree 1 has the node "
            "Foo with keys ['x', 'y'].")):
        ft.fmap(lambda a, b: a, Foo(1, 2), None)


def test_none_where_list_expected_names_record_path():
    with pytest.raises(TypeError, match=esc(
            "fmap: tree 2 holds a value of type NoneType at layers[0].bias, where tree 1 has "
            "the sequence node list.")):
        ft.fmap(lambda a, b: a, Chain([Dense(1, [2])]), Chain([Dense(1, None)]))


def test_custom_walk_pairing_errors_name_the_path():
    class W(ft.AbstractWalk):
        def __call__(self, recurse, x, *ys):
            return ft.DefaultWalk()(recurse, x, *ys)

    with pytest.raises(ValueError, match=esc(
            "fmap: tree 2 has no entry 'x' at [\"a\"], where tree 1 has one.")):
        ft.fmap(lambda a, b: a, {"a": {"x": 1}}, {"a": {"y": 1}}, walk=W())
    with pytest.raises(ValueError, match=esc(
            "fmap: tree 2 has 1 children at <root>, fewer than the 2 of tree 1.")):
        ft.fmap(lambda a, b: a, [1, 2], [1], walk=W())
    with pytest.raises(TypeError, match=esc(
            "fmap: tree 2 holds a value of type int at [1].weight, where tree 1 has the sequence "
            "node list.")):
        ft.fmap(lambda a, b: a, (0, Dense([1, 2], 0)), (0, Dense(3, 0)), walk=W())


# ----------------------------------------------------------------------------------------
# cycles
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("what, fn", [
    ("fmap", lambda x: ft.fmap(identity, x)),
    ("fmapstructure", lambda x: ft.fmapstructure(identity, x)),
    ("fmapstructure_with_path", lambda x: ft.fmapstructure_with_path(lambda p, v: v, x)),
    ("fcollect", ft.fcollect),
    ("fleaves", ft.fleaves),
])
def test_cycle_message(what, fn):
    lst = [1]
    lst.append({"a": lst})
    with pytest.raises(ValueError, match=esc(
            f'{what}: the tree contains itself: a cycle through [1]["a"].')):
        fn(lst)


def test_cycle_message_nested_path():
    lst = [1]
    lst.append({"a": lst})
    with pytest.raises(ValueError, match=esc(
            'fmap: the tree contains itself: a cycle through ["root"][1][1]["a"].')):
        ft.fmap(identity, {"root": (0, lst)})


def test_cycle_in_several_trees():
    lst = [1]
    lst.append(lst)
    with pytest.raises(ValueError, match=esc(
            "fmap: the tree contains itself: a cycle through [1].")):
        ft.fmap(lambda a, b: a, lst, lst)


def test_cycle_through_custom_walk_is_value_error():
    class W(ft.AbstractWalk):
        def __call__(self, recurse, x, *ys):
            return ft.DefaultWalk()(recurse, x, *ys)

    lst = [1]
    lst.append(lst)
    with pytest.raises(ValueError,
                       match=r"^fmap: a custom walk recursed too deep: the tree is cyclic"):
        ft.fmap(identity, lst, walk=W())


# ----------------------------------------------------------------------------------------
# exceptions raised by f / exclude get a path note
# ----------------------------------------------------------------------------------------
def chain_model():
    return Chain([Dense(np.ones(1), 0), Dense(np.ones(2), 0)])


def fail_on_size_two(v, *rest):
    if isinstance(v, np.ndarray) and v.size == 2:
        raise ValueError("bad shape")
    return v


def test_exception_from_f_keeps_type_and_gets_path_note():
    with pytest.raises(ValueError, match="^bad shape\nfluxtree: raised in ") as info:
        ft.fmap(fail_on_size_two, chain_model())
    assert info.value.__notes__ == ["fluxtree: raised in fmap at layers[1].weight"]
    assert not hasattr(info.value, "_fluxtree_keys")
    assert info.value.__cause__ is None


@pytest.mark.parametrize("what, fn", [
    ("fmapstructure", lambda m: ft.fmapstructure(fail_on_size_two, m)),
    ("fmap_with_path", lambda m: ft.fmap_with_path(lambda p, v: fail_on_size_two(v), m)),
    ("fmapstructure_with_path",
     lambda m: ft.fmapstructure_with_path(lambda p, v: fail_on_size_two(v), m)),
    ("fmap", lambda m: ft.fmap(fail_on_size_two, m, m)),
    ("fmap", lambda m: ft.fmap(identity, m, exclude=lambda v: fail_on_size_two(v) is None)),
    ("fcollect", lambda m: ft.fcollect(m, exclude=lambda v: fail_on_size_two(v) is None)),
    ("fleaves", lambda m: ft.fleaves(m, exclude=lambda v: fail_on_size_two(v) is None)),
])
def test_exception_note_names_the_function_and_path(what, fn):
    with pytest.raises(ValueError, match="^bad shape\nfluxtree: raised in ") as info:
        fn(chain_model())
    assert info.value.__notes__ == [f"fluxtree: raised in {what} at layers[1].weight"]


def test_exception_note_for_dict_and_positions():
    def boom(v):
        raise KeyError("k")

    with pytest.raises(KeyError) as info:
        ft.fmap(boom, {"enc": [1]})
    assert info.value.__notes__ == ['fluxtree: raised in fmap at ["enc"][0]']


def test_exception_at_root_leaf_has_no_note():
    def boom(v):
        raise RuntimeError("x")

    with pytest.raises(RuntimeError) as info:
        ft.fmap(boom, 1.0)
    assert getattr(info.value, "__notes__", []) == []


def test_flatten_returning_wrong_type():
    class Odd:
        pass

    ft.register(Odd, lambda x: 5, lambda x, c: x)
    with pytest.raises(TypeError, match="^" + re.escape(
            "flatten registered for Odd must return a tuple, list or dict of children, got "
            "int.\nfluxtree: raised in fmap at [0]")) as info:
        ft.fmap(identity, [Odd()])
    assert info.value.__notes__ == ["fluxtree: raised in fmap at [0]"]


def test_exception_note_with_none_dict_key():
    def boom(v):
        raise RuntimeError("x")

    with pytest.raises(RuntimeError) as info:
        ft.fmap(boom, {"a": {None: 1.0}})
    assert info.value.__notes__ == ["fluxtree: raised in fmap at [\"a\"][None]"]


def test_exception_note_with_none_dict_key_with_path_and_fcollect():
    def boom(*v):
        raise RuntimeError("x")

    with pytest.raises(RuntimeError) as info:
        ft.fmap_with_path(boom, {"a": {None: 1.0}})
    assert info.value.__notes__ == ['fluxtree: raised in fmap_with_path at ["a"][None]']
    with pytest.raises(RuntimeError) as info:
        ft.fcollect({"a": {None: 1.0}}, exclude=lambda v: boom() if v == 1.0 else False)
    assert info.value.__notes__ == ['fluxtree: raised in fcollect at ["a"][None]']


# ----------------------------------------------------------------------------------------
# declaring nodes
# ----------------------------------------------------------------------------------------
def test_functor_with_unknown_field_fails_at_decoration():
    with pytest.raises(TypeError, match=esc(
            "@functor('nope') on C: ['nope'] are not parameters of C.__init__ ['a']; a class "
            "whose constructor differs from its fields defines __rebuild__(self, children).")):
        @ft.functor("nope")
        class C:
            def __init__(self, a):
                self.a = a


def test_functor_with_var_args_init():
    with pytest.raises(TypeError, match=esc(
            "@functor cannot read the fields of C: __init__ takes *a; name the fields "
            "(@functor('a', 'b')) and give the class a __rebuild__ method.")):
        @ft.functor
        class C:
            def __init__(self, *a):
                self.a = a


def test_functor_rebuild_hook_needs_field_names():
    with pytest.raises(TypeError, match=esc(
            "C defines __rebuild__, so @functor must name its child fields.")):
        @ft.functor
        class C:
            def __init__(self, a):
                self.a = a

            def __rebuild__(self, ch):
                return C(**ch)


def test_functor_rebuild_hook_with_names_works():
    @ft.functor("a")
    class R:
        def __init__(self, a, extra=5):
            self.a, self.n = a, extra

        def __rebuild__(self, ch):
            r = R(ch["a"])
            r.n = self.n
            return r

    src = R(2)
    src.n = 9
    out = ft.fmap(lambda v: v * 3, src)
    assert (type(out), out.a, out.n) == (R, 6, 9)


def test_functor_field_names_must_be_strings():
    with pytest.raises(TypeError, match=esc("@functor field names must be strings, got 3.")):
        ft.functor("x", 3)


def test_functor_of_a_value_takes_one_argument():
    with pytest.raises(TypeError, match=esc("functor(x) takes one value, got 2 arguments.")):
        ft.functor(1, 2)


@pytest.mark.parametrize("flatten, unflatten", [(1, lambda x, c: x), (lambda x: (), None)])
def test_register_needs_callables(flatten, unflatten):
    class C:
        pass

    with pytest.raises(TypeError, match=esc(
            "register expects callables flatten(x) and unflatten(x, children).")):
        ft.register(C, flatten, unflatten)
    assert ft.isleaf(C()) is True        # nothing was registered


def test_register_needs_a_class():
    with pytest.raises(TypeError, match=esc("register expects a class, got int.")):
        ft.register(3, lambda x: (), lambda x, c: x)


# ----------------------------------------------------------------------------------------
# bad arguments
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache, name", [([], "list"), (5, "int"), ({}.keys(), "dict_keys")])
def test_bad_cache_type(cache, name):
    with pytest.raises(TypeError, match=esc(
            f"cache must be a dict (identity cache) or None, got {name}.")):
        ft.fmap(identity, [1], cache=cache)
    with pytest.raises(TypeError, match=esc(
            f"cache must be a dict (identity cache) or None, got {name}.")):
        ft.CachedWalk(ft.DefaultWalk(), cache=cache)


@pytest.mark.parametrize("fn", [
    lambda: ft.fmap(identity, [1], exclude=3),
    lambda: ft.fcollect([1], exclude=3),
    lambda: ft.fleaves([1], exclude=3),
])
def test_bad_exclude_type(fn):
    with pytest.raises(TypeError, match=esc("exclude must be callable, got int.")):
        fn()


def test_bad_walk_type():
    with pytest.raises(TypeError, match=esc("walk must be an AbstractWalk, got int.")):
        ft.fmap(identity, [1], walk=3)


# ----------------------------------------------------------------------------------------
# rebuilding with the wrong children
# ----------------------------------------------------------------------------------------
def test_rebuild_record_with_too_few_children():
    _, re_ = ft.functor(Foo(1, 2))
    with pytest.raises(ValueError, match=esc(
            "rebuilding Foo needs 2 children ['x', 'y'], got 1.")):
        re_((1,))


def test_rebuild_record_with_too_many_children():
    _, re_ = ft.functor(Foo(1, 2))
    with pytest.raises(ValueError, match=esc(
            "rebuilding Foo needs 2 children ['x', 'y'], got 3.")):
        re_([1, 2, 3])


def test_rebuild_record_with_missing_name():
    _, re_ = ft.functor(Foo(1, 2))
    with pytest.raises(ValueError, match=esc(
            "rebuilding Foo needs the children ['x', 'y'], got no value for ['y'].")):
        re_({"x": 1})


def test_rebuild_namedtuple_with_wrong_count():
    _, re_ = ft.functor(P(1, 2))
    with pytest.raises(ValueError, match=esc("rebuilding P needs 2 children ['x', 'y'], got 1.")):
        re_((1,))


# ----------------------------------------------------------------------------------------
# key paths
# ----------------------------------------------------------------------------------------
def test_getkeypath_missing_key_message():
    with pytest.raises(KeyError, match=re.escape(
            "no child 'b' at <root>; it has keys ['a'].")):
        ft.getkeypath({"a": [1]}, ("b",))


def test_getkeypath_position_out_of_range_in_record_path():
    m = Chain([Dense(1, 2)])
    with pytest.raises(KeyError, match=re.escape(
            "no child 3 at layers; it has 1 positional children.")):
        ft.getkeypath(m, ("layers", 3))


def test_getkeypath_error_names_dict_key_as_subscript():
    with pytest.raises(KeyError) as info:
        ft.getkeypath({"enc": {"w": 1}}, ("enc", "b"))
    assert info.value.args[0] == 'no child \'b\' at ["enc"]; it has keys [\'w\'].'
