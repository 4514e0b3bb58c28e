"""Trees: the functor protocol, ``fmap`` and its walks, collection and key paths.

A model is a tree.  ``functor(x) -> (children, rebuild)`` is all the rest of the library
knows about a node; every other operation (``destructure``, ``state``, ``gpu``, ...) is a
walk over it.  Nodes are tuples (``()`` is a leaf), lists, dicts, namedtuples,
dataclasses, ``@functor`` classes and ``register``-ed classes; everything else is a leaf.

The default walks run in compiled code (``fluxtree._kernels._walk``); the walk classes
below keep the pure-Python protocol for custom walks.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Iterable
from typing import Any, TypeVar

from ._kernels import _walk
from ._kernels._walk import KeyPath, NodeDef, isleaf, usecache

__all__ = [
    "AbstractWalk", "CachedWalk", "DefaultWalk", "ExcludeWalk", "KeyPath", "StructuralWalk",
    "children", "execute", "fcollect", "fleaves", "fmap", "fmap_with_path", "fmapstructure",
    "fmapstructure_with_path", "functor", "getkeypath", "haskeypath", "isleaf", "leaf",
    "modules", "register", "usecache",
]

T = TypeVar("T")
_NO_PRUNE = _walk.NO_PRUNE
_K_NAMEDTUPLE = 4
_K_RECORD = 5
_K_CUSTOM = 6


class _DefaultCache:
    """Marker for "a fresh identity cache for this call" (the default)."""

    def __repr__(self) -> str:
        return "<new identity cache>"


NEW_CACHE = _DefaultCache()


# ----------------------------------------------------------------------------
# declaring nodes
# ----------------------------------------------------------------------------
def _init_params(cls: type) -> list[inspect.Parameter]:
    """The parameters of ``cls.__init__`` without ``self`` (the fields of a decorated class)."""
    params = list(inspect.signature(cls).parameters.values())
    bad = [p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if bad:
        raise TypeError(
            f"@functor cannot read the fields of {cls.__name__}: __init__ takes *{bad[0]}; "
            f"name the fields (@functor('a', 'b')) and give the class a __rebuild__ method.")
    return params


def _record_def(cls: type, fields: tuple[str, ...] | None) -> NodeDef:
    """The NodeDef of a decorated class (also used for its subclasses)."""
    hook = getattr(cls, "__rebuild__", None)
    if hook is not None:
        if fields is None:
            raise TypeError(
                f"{cls.__name__} defines __rebuild__, so @functor must name its child fields.")
        names = tuple(fields)

        def rebuild_by_hook(orig: Any, values: tuple) -> Any:
            return orig.__rebuild__(dict(zip(names, values)))

        return NodeDef(_K_RECORD, True, names, rebuild_by_hook)
    params = _init_params(cls)
    init = tuple(p.name for p in params)
    names = init if fields is None else tuple(fields)
    unknown = [f for f in names if f not in init]
    if unknown:
        raise TypeError(
            f"@functor({', '.join(map(repr, names))}) on {cls.__name__}: {unknown} are not "
            f"parameters of {cls.__name__}.__init__ {list(init)}; a class whose constructor "
            f"differs from its fields defines __rebuild__(self, children).")
    carried = tuple(p for p in init if p not in names)

    def make(orig: Any, values: tuple) -> Any:
        kw = {p: getattr(orig, p) for p in carried}
        kw.update(zip(names, values))
        return cls(**kw)

    positional = names == init and all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
    return NodeDef(_K_RECORD, True, names, make, ctor=cls if positional else None)


def _decorate(cls: type, fields: tuple[str, ...] | None) -> type:
    _record_def(cls, fields)                               # validate now, not at first use
    setattr(cls, "__fluxtree_node__", staticmethod(lambda c: _record_def(c, fields)))
    _walk.forget_resolutions()
    return cls


def functor(*args: Any) -> Any:
    """Decompose a node into ``(children, rebuild)``, or declare a class a node.

    As a function of a value, returns its children (a tuple, list, or dict of field ->
    value) and a function that rebuilds a node of the same kind from new children given
    in the same form (records also take a positional sequence).  Leaves give ``()`` and
    a rebuild that returns the leaf itself.

    As a decorator, ``@functor`` makes every ``__init__`` parameter of a class a child
    (stored as an attribute of the same name); ``@functor("a", "c")`` makes only those
    children, the others being carried over on rebuild; ``@functor()`` declares a node
    with no children.  A class whose constructor differs from its fields names them and
    defines ``__rebuild__(self, children: dict)``.  A string argument always means field
    names, a class argument always means decoration.

    >>> @functor
    ... class Foo:
    ...     def __init__(self, x, y):
    ...         self.x, self.y = x, y
    ...     def __repr__(self):
    ...         return f"Foo({self.x!r}, {self.y!r})"
    >>> ch, re = functor(Foo(1, 2))
    >>> ch
    {'x': 1, 'y': 2}
    >>> re((10, 20))
    Foo(10, 20)
    """
    if not args:
        return lambda cls: _decorate(cls, ())
    x, more = args[0], args[1:]
    if isinstance(x, type) and not more:
        return _decorate(x, None)
    if isinstance(x, str):
        names = (x, *more)
        bad = [n for n in names if not isinstance(n, str)]
        if bad:
            raise TypeError(f"@functor field names must be strings, got {bad[0]!r}.")
        return lambda cls: _decorate(cls, names)
    if more:
        raise TypeError(f"functor(x) takes one value, got {1 + len(more)} arguments.")
    node = x
    return _walk.children(node), lambda new: _walk.rebuild(node, new)


def children(x: Any) -> Any:
    """The children of ``x`` as ``functor`` gives them; ``()`` for a leaf.

    >>> children((1, [2, 3]))
    (1, [2, 3])
    >>> children({"a": 1})
    {'a': 1}
    >>> children(3.0)
    ()
    """
    return _walk.children(x)


def leaf(cls: type[T]) -> type[T]:
    """Declare a class (and its subclasses) a leaf, like Functors' ``@leaf``.

    >>> import dataclasses
    >>> @leaf
    ... @dataclasses.dataclass
    ... class Interval:
    ...     lo: float
    ...     hi: float
    >>> isleaf(Interval(0.0, 1.0))
    True
    """
    frozen = getattr(getattr(cls, "__dataclass_params__", None), "frozen", False)
    leaf_def = NodeDef(0, not frozen)
    setattr(cls, "__fluxtree_node__", staticmethod(lambda c: leaf_def))
    _walk.forget_resolutions()
    return cls


def register(cls: type, flatten: Callable[[Any], Any],
             unflatten: Callable[[Any, Any], Any], *, cache: bool = True) -> type:
    """Make instances of exactly ``cls`` nodes, for classes one cannot decorate.

    ``flatten(x)`` returns the children (a dict, tuple or list); ``unflatten(x, children)``
    builds the new node from the original and new children of the same form, so
    non-child state can be carried over.  ``cache=False`` for immutable classes (they
    are then never identity-cached, like tuples).

    >>> class Pair:
    ...     def __init__(self, a, b):
    ...         self.a, self.b = a, b
    >>> _ = register(Pair, lambda p: (p.a, p.b), lambda p, ch: Pair(*ch))
    >>> fmap(lambda v: v * 10, Pair(1, 2)).b
    20
    """
    if not isinstance(cls, type):
        raise TypeError(f"register expects a class, got {type(cls).__name__}.")
    if not callable(flatten) or not callable(unflatten):
        raise TypeError("register expects callables flatten(x) and unflatten(x, children).")
    _walk.register_def(cls, NodeDef(_K_CUSTOM, bool(cache), (), None, flatten, unflatten))
    return cls


# ----------------------------------------------------------------------------
# fmap and friends
# ----------------------------------------------------------------------------
def _cache_arg(cache: Any) -> dict | bool | None:
    if cache is NEW_CACHE:
        return True
    if cache is None or isinstance(cache, dict):
        return cache
    raise TypeError(f"cache must be a dict (identity cache) or None, got {type(cache).__name__}.")


def _exclude_arg(exclude: Any) -> Callable | None:
    if exclude is None or exclude is isleaf:
        return None
    if not callable(exclude):
        raise TypeError(f"exclude must be callable, got {type(exclude).__name__}.")
    return exclude


def _run_mapper(what: str, f, x, ys, exclude, cache, prune, structural, with_path):
    mapper = _walk.Mapper(f, _exclude_arg(exclude), _cache_arg(cache), prune,
                          structural, with_path)
    try:
        return mapper.run(x, ys)
    except BaseException as e:
        err = _walk.finish_error(e, what)
        if err is e:
            raise
        raise err from None


def fmap(f: Callable[..., Any], x: T, *ys: Any, exclude: Callable[[Any], bool] = isleaf,
         walk: AbstractWalk | None = None, cache: dict | None | _DefaultCache = NEW_CACHE,
         prune: Any = _NO_PRUNE) -> T:
    """Map ``f`` over the leaves of ``x`` (and of ``ys``), rebuilding every node.

    ``f`` is applied at each node where ``exclude`` is true (by default the leaves); other
    nodes are rebuilt from their mapped children, so the result has ``x``'s structure and
    types.  Mutable nodes and arrays met twice are mapped once (identity cache), so ties
    survive: ``r.a is r.b`` when ``x.a is x.b``.  ``cache=None`` turns that off; with
    ``prune=v`` every repeat becomes ``v`` instead.  With several trees, ``x`` decides the
    structure: dicts pair by key (extra keys ignored), records by field, sequences by
    position, and ``f(leaf_x, leaf_y, ...)`` is called.  ``walk`` takes a custom
    ``AbstractWalk`` (wrapped in ``ExcludeWalk`` and ``CachedWalk``).

    >>> import numpy as np
    >>> fmap(lambda v: 10 * v, {"w": np.array([1, 2]), "n": (3, 4)})
    {'w': array([10, 20]), 'n': (30, 40)}
    >>> twice = [1.0, 2.0]
    >>> r = fmap(lambda v: v, {"a": twice, "b": twice})
    >>> r["a"] is r["b"]
    True
    >>> fmap(lambda a, b: a + b, {"x": 1, "y": 2}, {"y": 20, "x": 10, "z": 0})
    {'x': 11, 'y': 22}
    """
    if walk is None or type(walk) is DefaultWalk:
        return _run_mapper("fmap", f, x, ys, exclude, cache, prune, False, False)
    if type(walk) is StructuralWalk:
        return _run_mapper("fmap", f, x, ys, exclude, cache, prune, True, False)
    if not isinstance(walk, AbstractWalk) and not callable(walk):
        raise TypeError(f"walk must be an AbstractWalk, got {type(walk).__name__}.")
    full = CachedWalk(ExcludeWalk(walk, f, exclude), prune=prune, cache=cache)
    return _execute("fmap", full, x, ys)


def fmapstructure(f: Callable[..., Any], x: Any, *ys: Any,
                  exclude: Callable[[Any], bool] = isleaf, cache: dict | None | _DefaultCache = NEW_CACHE,
                  prune: Any = _NO_PRUNE) -> Any:
    """Like ``fmap``, but nodes become plain dicts, tuples and lists.

    Records (classes, dataclasses, namedtuples) become dicts of their mapped children, so
    the result holds only dicts, tuples, lists and ``f``'s results.

    >>> import collections
    >>> P = collections.namedtuple("P", "x y")
    >>> fmapstructure(lambda v: 2 * v, P(1, [2, (3, 4)]))
    {'x': 2, 'y': [4, (6, 8)]}
    """
    return _run_mapper("fmapstructure", f, x, ys, exclude, cache, prune, True, False)


def fmap_with_path(f: Callable[..., Any], x: T, *ys: Any,
                   exclude: Callable[[KeyPath, Any], bool] | None = None,
                   cache: dict | None | _DefaultCache = NEW_CACHE, prune: Any = _NO_PRUNE) -> T:
    """``fmap`` that calls ``f(path, leaf, ...)`` and ``exclude(path, node)``.

    ``path`` is the ``KeyPath`` from the root; ``str(path)`` reads like Python
    (``layers[1].weight``).  Positions are 0-based.

    >>> fmap_with_path(lambda p, v: str(p), {"enc": [1, 2], "dec": 3})
    {'enc': ['["enc"][0]', '["enc"][1]'], 'dec': '["dec"]'}
    """
    return _run_mapper("fmap_with_path", f, x, ys, exclude, cache, prune, False, True)


def fmapstructure_with_path(f: Callable[..., Any], x: Any, *ys: Any,
                            exclude: Callable[[KeyPath, Any], bool] | None = None,
                            cache: dict | None | _DefaultCache = NEW_CACHE, prune: Any = _NO_PRUNE) -> Any:
    """``fmapstructure`` with ``f(path, leaf, ...)`` and ``exclude(path, node)``.

    >>> fmapstructure_with_path(lambda p, v: str(p), (1, {"a": 2}))
    ('[0]', {'a': '[1]["a"]'})
    """
    return _run_mapper("fmapstructure_with_path", f, x, ys, exclude, cache, prune, True, True)


def fcollect(x: Any, exclude: Callable[[Any], bool] | None = None) -> list:
    """Every node of ``x``, containers and leaves, in depth-first pre-order.

    A mutable node or array reached twice is listed once; immutable values (numbers,
    tuples, namedtuples) at every occurrence.  Where ``exclude(v)`` is true, ``v`` and its
    subtree are left out.

    >>> fcollect({"a": [1, 2], "b": (3,)})
    [{'a': [1, 2], 'b': (3,)}, [1, 2], 1, 2, (3,), 3]
    >>> fcollect({"a": [1, 2], "b": (3,)}, exclude=lambda v: isinstance(v, list))
    [{'a': [1, 2], 'b': (3,)}, (3,), 3]
    """
    return _run_collector("fcollect", x, _exclude_fn(exclude, None), False)


def fleaves(x: Any, exclude: Callable[[Any], bool] = isleaf) -> list:
    """The nodes where ``exclude`` is true (by default the leaves), in traversal order.

    No de-duplication: a shared array is listed at each of its positions.

    >>> fleaves((1, (2, 3), {"a": 4, "b": [5, 6]}))
    [1, 2, 3, 4, 5, 6]
    """
    return _run_collector("fleaves", x, _exclude_fn(exclude, isleaf), True)


def _exclude_fn(exclude: Any, default: Any) -> Callable | None:
    if exclude is None or exclude is default:
        return None
    if not callable(exclude):
        raise TypeError(f"exclude must be callable, got {type(exclude).__name__}.")
    return exclude


def _run_collector(what: str, x: Any, exclude: Callable | None, leaves_only: bool) -> list:
    try:
        return _walk.Collector(exclude, leaves_only).run(x)
    except BaseException as e:
        err = _walk.finish_error(e, what)
        if err is e:
            raise
        raise err from None


def modules(x: Any) -> list:
    """Every non-leaf node of ``x`` (layers, containers), depth-first pre-order, once each.

    >>> modules({"enc": [1.0], "dec": (2.0, 3.0)})
    [{'enc': [1.0], 'dec': (2.0, 3.0)}, [1.0], (2.0, 3.0)]
    """
    return _run_collector("modules", x, isleaf, False)


# ----------------------------------------------------------------------------
# key paths
# ----------------------------------------------------------------------------
def _step(x: Any, key: Hashable) -> Any:
    ch = _walk.children(x)
    if isinstance(ch, dict):
        return ch[key]
    if isinstance(ch, (tuple, list)) and isinstance(key, int) and not isinstance(key, bool):
        return ch[key]
    raise KeyError(key)


def getkeypath(x: Any, path: Iterable[Hashable]) -> Any:
    """The node of ``x`` at ``path`` (a ``KeyPath`` or a tuple of keys).

    >>> getkeypath({"layers": ({"w": 1}, {"w": 2})}, KeyPath("layers", 1, "w"))
    2
    """
    node = x
    walked: list[Hashable] = []
    attrs: list[bool] = []
    for key in path:
        try:
            child = _step(node, key)
        except (KeyError, IndexError):
            raise KeyError(
                f"no child {key!r} at {KeyPath.make(walked, attrs)}; it has "
                f"{_keys_text(node)}.") from None
        walked.append(key)
        attrs.append(_walk.node_def(node).kind in (_K_NAMEDTUPLE, _K_RECORD))
        node = child
    return node


def _keys_text(node: Any) -> str:
    ch = _walk.children(node)
    if isinstance(ch, dict):
        return f"keys {list(ch)}"
    return f"{len(ch)} positional children"


def haskeypath(x: Any, path: Iterable[Hashable]) -> bool:
    """True when ``getkeypath(x, path)`` finds a node.

    >>> haskeypath([1, {"a": 2}], (1, "a")), haskeypath([1, {"a": 2}], (2,))
    (True, False)
    """
    node = x
    for key in path:
        try:
            node = _step(node, key)
        except (KeyError, IndexError):
            return False
    return True


# ----------------------------------------------------------------------------
# walks: the pure-Python protocol, for custom traversals
# ----------------------------------------------------------------------------
class AbstractWalk:
    """A traversal rule: called as ``walk(recurse, x, *ys)``, it decides how to recurse."""

    def __call__(self, recurse: Callable[..., Any], x: Any, *ys: Any) -> Any:
        raise NotImplementedError


class DefaultWalk(AbstractWalk):
    """Decompose ``x`` (pairing ``ys`` with it), recurse into the children, rebuild."""

    structural = False

    def __call__(self, recurse: Callable[..., Any], x: Any, *ys: Any) -> Any:
        if isleaf(x):
            return x
        ch = _walk.children(x)
        if isinstance(ch, dict):
            keys = list(ch)
        else:
            keys = list(range(len(ch)))
        rows = _walk_pairs(x, ch, keys, ys)
        attr = _walk.node_def(x).kind in (_K_NAMEDTUPLE, _K_RECORD)
        new = []
        for key, row in zip(keys, rows):
            try:
                new.append(recurse(*row))
            except BaseException as e:
                _walk.annotate(e, key, attr or (isinstance(key, str) and key.isidentifier()
                                                and not isinstance(x, dict)))
                raise
        newch: Any = dict(zip(keys, new)) if isinstance(ch, dict) else type(ch)(new)
        if self.structural:
            return _walk.rebuild_structure(x, newch)
        return _walk.rebuild(x, newch)


def _walk_pairs(x: Any, ch: Any, keys: list, ys: tuple) -> list[tuple]:
    values = list(ch.values()) if isinstance(ch, dict) else list(ch)
    if not ys:
        return [(v,) for v in values]
    others = [_align(x, ch, keys, y, i + 2) for i, y in enumerate(ys)]
    return [(v, *(o[j] for o in others)) for j, v in enumerate(values)]


def _align(x: Any, ch: Any, keys: list, y: Any, which: int) -> list:
    if isinstance(ch, dict):
        ych = y if isinstance(y, dict) else _walk.children(y)
        if not isinstance(ych, dict):
            raise _walk.TreeError(TypeError,
                f"tree {which} holds a value of type {type(y).__name__} at {{path}}, where "
                f"tree 1 has the node {type(x).__name__} with keys {keys!r}.")
        missing = [k for k in keys if k not in ych]
        if missing:
            raise _walk.TreeError(ValueError,
                f"tree {which} has no entry {missing[0]!r} at {{path}}, where tree 1 has one.")
        return [ych[k] for k in keys]
    ych = _walk.children(y) if type(y) is type(x) else y
    if not isinstance(ych, (tuple, list)):
        raise _walk.TreeError(TypeError,
            f"tree {which} holds a value of type {type(y).__name__} at {{path}}, where tree 1 "
            f"has the sequence node {type(x).__name__}.")
    if len(ych) < len(keys):
        raise _walk.TreeError(ValueError,
            f"tree {which} has {len(ych)} children at {{path}}, fewer than the {len(keys)} "
            f"of tree 1.")
    return list(ych[: len(keys)])


class StructuralWalk(DefaultWalk):
    """Like ``DefaultWalk`` but returns plain dicts/tuples/lists instead of rebuilding."""

    structural = True


class ExcludeWalk(AbstractWalk):
    """Apply ``fn(x, *ys)`` where ``exclude(x)`` is true; elsewhere delegate to ``walk``."""

    def __init__(self, walk: Callable[..., Any], fn: Callable[..., Any],
                 exclude: Callable[[Any], bool] = isleaf) -> None:
        self.walk, self.fn, self.exclude = walk, fn, exclude

    def __call__(self, recurse: Callable[..., Any], x: Any, *ys: Any) -> Any:
        if self.exclude(x):
            return self.fn(x, *ys)
        return self.walk(recurse, x, *ys)


class CachedWalk(AbstractWalk):
    """Map each cached node (``usecache``) once: repeats return the first result or ``prune``."""

    def __init__(self, walk: Callable[..., Any], *, prune: Any = _NO_PRUNE,
                 cache: dict | None | _DefaultCache = NEW_CACHE) -> None:
        self.walk, self.prune = walk, prune
        self.cache: dict | None = {} if cache is NEW_CACHE else cache  # type: ignore[assignment]
        _cache_arg(cache)

    def __call__(self, recurse: Callable[..., Any], x: Any, *ys: Any) -> Any:
        if self.cache is None or not usecache(x):
            return self.walk(recurse, x, *ys)
        key = id(x)
        hit = self.cache.get(key)
        if hit is not None:
            return hit[1] if self.prune is _NO_PRUNE else self.prune
        result = self.walk(recurse, x, *ys)
        self.cache[key] = (x, result)
        return result


def execute(walk: Callable[..., Any], x: Any, *ys: Any) -> Any:
    """Run ``walk`` from the root: ``recurse(*xs)`` calls ``walk(recurse, *xs)``.

    >>> class Doubler(AbstractWalk):
    ...     def __call__(self, recurse, x):
    ...         return 2 * x if isleaf(x) else DefaultWalk()(recurse, x)
    >>> execute(Doubler(), (1, [2, 3]))
    (2, [4, 6])
    """
    return _execute("execute", walk, x, ys)


def _execute(what: str, walk: Callable[..., Any], x: Any, ys: tuple) -> Any:
    def recurse(*xs: Any) -> Any:
        return walk(recurse, *xs)

    try:
        return walk(recurse, x, *ys)
    except RecursionError:
        raise ValueError(
            f"{what}: a custom walk recursed too deep: the tree is cyclic or deeper than Python's "
            "recursion limit allows (the default walks have no such limit).") from None
    except BaseException as e:
        err = _walk.finish_error(e, what)
        if err is e:
            raise
        raise err from None
