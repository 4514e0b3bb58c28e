"""``loadmodel_``: a checked, in-place copy of the arrays of one tree into another."""
from __future__ import annotations

import bisect
import itertools
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from .._kernels import _walk
from .._kernels._walk import KeyPath
from ._common import _host, _is_array, _short

__all__ = ["loadmodel_"]

_K_NAMEDTUPLE = 4
_K_RECORD = 5
_K_CUSTOM = 6

_ZERO = object()          # plan: fill the destination with zeros (loaded from False)


def _path(chain: Any) -> KeyPath:
    keys: list = []
    attrs: list = []
    while chain is not None:
        keys.append(chain[1])
        attrs.append(chain[2])
        chain = chain[0]
    return _walk.path_of(keys, attrs)


class _LoadError(Exception):
    def __init__(self, exc_type: type[Exception], message: str) -> None:
        super().__init__(message)
        self.exc_type = exc_type


def _fail(chain: Any, message: str, exc_type: type[Exception] = ValueError) -> _LoadError:
    return _LoadError(exc_type, message.replace("{path}", str(_path(chain)), 1))


def _child_items(ch: Any, filt: Callable[[Any], bool] | None) -> tuple[bool, list]:
    """(is_dict, [(key, value)]) of a children collection, entries failing ``filt`` dropped."""
    if isinstance(ch, dict):
        items = list(ch.items())
        is_dict = True
    else:
        items = list(enumerate(ch))
        is_dict = False
    if filt is not None:
        items = [(k, v) for k, v in items if filt(v)]
    return is_dict, items


def _is_attr(d: Any, key: Any) -> bool:
    kind = _walk.node_def(d).kind
    if kind in (_K_NAMEDTUPLE, _K_RECORD):
        return True
    return kind == _K_CUSTOM and type(key) is str and key.isidentifier()


def _check_cast(d: Any, s: Any, chain: Any) -> None:
    if d.dtype == s.dtype:
        return
    if s.dtype.kind == "c" and d.dtype.kind != "c":
        raise _fail(chain, f"cannot load a {s.dtype} array into the {d.dtype} array at "
                    "{path}: the imaginary part would be lost.", TypeError)
    if not np.can_cast(s.dtype, d.dtype, casting="same_kind"):
        raise _fail(chain, f"cannot load a {s.dtype} array into the {d.dtype} array at "
                    "{path} (not a same-kind cast).", TypeError)


class _Planner:
    """Walks dst and src together, checks every rule, and lists the copies to make."""

    def __init__(self, filt: Callable[[Any], bool] | None) -> None:
        self.filt = filt
        self.plan: list[tuple[Any, Any]] = []              # (dst array, src array or _ZERO)
        self.seen: dict[int, tuple[Any, Any, Any]] = {}    # id(dst) -> (dst, source, chain)

    def run(self, dst: Any, src: Any) -> None:
        active: set[int] = set()
        stack: list[tuple] = [(dst, src, None)]
        while stack:
            frame = stack.pop()
            if frame[0] is _EXIT:
                active.discard(frame[1])
                continue
            d, s, chain = frame
            if _walk.isleaf(d):
                self.leaf(d, s, chain)
                continue
            if _walk.usecache(d):
                if id(d) in active:
                    raise _fail(chain, "the destination contains itself: a cycle through "
                                "{path}.")
                active.add(id(d))
                stack.append((_EXIT, id(d)))
            pairs = self.pair(d, s, chain)
            for key, dc, sc in reversed(pairs):
                stack.append((dc, sc, (chain, key, _is_attr(d, key))))

    def pair(self, d: Any, s: Any, chain: Any) -> list[tuple[Any, Any, Any]]:
        d_dict, d_items = _child_items(_walk.children(d), self.filt)
        if _walk.isleaf(s) and not isinstance(s, dict):
            raise _fail(chain, f"the structures do not match at {{path}}: dst has a "
                        f"{type(d).__name__} node with {_keys_text(d_dict, d_items)}, src "
                        f"has the leaf {_short(s)}.")
        s_dict, s_items = _child_items(s if isinstance(s, dict) else _walk.children(s),
                                       self.filt)
        if d_dict and s_dict:
            dmap = dict(d_items)
            if dmap.keys() != {k for k, _ in s_items}:
                smap = dict(s_items)
                lacks = [k for k in dmap if k not in smap]
                extra = [k for k in smap if k not in dmap]
                raise _fail(chain, f"the structures do not match at {{path}}: tried to load "
                            f"src keys {list(smap)} into dst keys {list(dmap)} (src lacks "
                            f"{lacks}, has extra {extra}).")
            return [(k, dmap[k], v) for k, v in s_items]
        if not d_dict and not s_dict:
            if len(d_items) != len(s_items):
                raise _fail(chain, f"the structures do not match at {{path}}: tried to load "
                            f"{len(s_items)} src children into {len(d_items)} dst children.")
            return [(dk, dv, sv) for (dk, dv), (_, sv) in zip(d_items, s_items)]
        raise _fail(chain, f"the structures do not match at {{path}}: tried to load src "
                    f"{_keys_text(s_dict, s_items)} into dst {_keys_text(d_dict, d_items)}.")

    def leaf(self, d: Any, s: Any, chain: Any) -> None:
        if _is_array(d):
            prior = self.seen.get(id(d))
            if prior is not None:
                self.tie(d, s, chain, prior)
                return
            if _is_array(s):
                if tuple(s.shape) != tuple(d.shape):
                    raise _fail(chain, f"expected an array of shape {tuple(d.shape)} at "
                                f"{{path}}, got shape {tuple(s.shape)}.")
                _check_cast(d, s, chain)
                source: Any = s
            elif type(s) is bool or type(s) is np.bool_:
                if s:
                    raise _fail(chain, "cannot copy the boolean parameter True into the "
                                "array at {path}; only False (an absent parameter) loads, "
                                "as zeros.")
                source = _ZERO
            else:
                raise _fail(chain, f"tried to copy {_short(s)} into an array destination "
                            "at {path}; this is not allowed.")
            if isinstance(d, np.ndarray) and not d.flags.writeable:
                raise _fail(chain, "the destination array at {path} is read-only.")
            self.seen[id(d)] = (d, source, chain)
            self.plan.append((d, source))
            return
        if type(d) is bool or type(d) is np.bool_:
            if _is_array(s) and d:
                raise _fail(chain, "cannot copy a non-zero parameter into the boolean "
                            "parameter True at {path}.")
            return
        if _is_array(s):
            raise _fail(chain, f"tried to copy an array to {_short(d)} at {{path}}; this is "
                        "not allowed.")

    def tie(self, d: Any, s: Any, chain: Any, prior: tuple) -> None:
        _, source, first = prior
        if source is _ZERO:
            holds = None
        elif source is s:
            return
        else:
            holds = source if source.dtype == d.dtype else source.astype(d.dtype)
        if _is_array(s):
            if holds is None:
                equal = tuple(s.shape) == tuple(d.shape) and not np.any(_host(s))
            else:
                equal = bool(np.array_equal(_host(holds), _host(s)))
            if not equal:
                raise _fail(chain, "encountered tied destination parameters with untied and "
                            "mismatched sources at {path} (the array there was loaded from "
                            f"a different source at {_path(first)}).")
            return
        if type(s) is bool or type(s) is np.bool_:
            if s or (holds is not None and np.any(_host(holds))):
                raise _fail(chain, "encountered a tied parameter with a boolean source at "
                            "some nodes and non-boolean sources at others, at {path} "
                            f"(first loaded at {_path(first)}).")
            return
        raise _fail(chain, f"tried to copy {_short(s)} into an array destination at "
                    "{path}; this is not allowed.")


class _Exit:
    pass


_EXIT = _Exit()


def _keys_text(is_dict: bool, items: list) -> str:
    if is_dict:
        return f"keys {[k for k, _ in items]}"
    return f"{len(items)} positional children"


def _bounds(a: np.ndarray) -> tuple[int, int]:
    lo, hi = np.lib.array_utils.byte_bounds(a)
    return lo, hi


def _snapshot_overlaps(plan: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Copy the sources that overlap another destination, so the copy order cannot matter."""
    dsts = sorted(_bounds(d) + (id(d),) for d, _ in plan if isinstance(d, np.ndarray) and d.size)
    if not dsts:
        return plan
    starts = [lo for lo, _, _ in dsts]
    reach = list(itertools.accumulate((hi for _, hi, _ in dsts), max))
    out = []
    for d, s in plan:
        if isinstance(s, np.ndarray) and s.size and s is not d:
            lo, hi = _bounds(s)
            j = bisect.bisect_left(starts, hi) - 1      # destinations starting before hi
            while j >= 0 and reach[j] > lo:
                if dsts[j][1] > lo and dsts[j][2] != id(d):
                    s = s.copy()
                    break
                j -= 1
        out.append((d, s))
    return out


def loadmodel_(dst: Any, src: Any, *, filter: Callable[[Any], bool] | None = None) -> Any:
    """Copy every array of ``src`` (a model or a ``state``) into ``dst``, in place; return ``dst``.

    Walks both trees together: record fields and dict keys are matched by name (as sets; a
    record loads from a dict with its field names), tuples and lists by position.  Arrays
    are copied into ``dst``'s arrays (cast to their dtypes; complex into real is a
    ``TypeError``).  Non-array leaves of ``dst`` (activations, rates, flags) are never
    written or compared.  ``False`` (an absent bias) loads into an array as zeros, and an
    array loads into ``False`` as nothing.  A tied destination array is written once; its
    other sources must agree.  ``filter(v)`` drops children (of both trees) for which it is
    false.  The whole tree is checked before anything is copied: on an error ``dst`` is
    unchanged.

    >>> import numpy as np
    >>> dst = {"w": np.zeros(2), "b": np.zeros(1), "act": "relu"}
    >>> _ = loadmodel_(dst, {"b": False, "w": np.array([1, 2]), "act": ()})
    >>> dst
    {'w': array([1., 2.]), 'b': array([0.]), 'act': 'relu'}
    >>> loadmodel_(dst, {"w": np.ones(3), "b": False, "act": ()})
    Traceback (most recent call last):
    ...
    ValueError: loadmodel_: expected an array of shape (2,) at ["w"], got shape (3,).
    """
    if filter is not None and not callable(filter):
        raise TypeError(f"loadmodel_: filter must be callable, got {type(filter).__name__}.")
    planner = _Planner(filter)
    try:
        planner.run(dst, src)
    except _LoadError as e:
        raise e.exc_type(f"loadmodel_: {e}") from None
    for d, s in _snapshot_overlaps(planner.plan):
        if isinstance(d, np.ndarray):
            if s is _ZERO:
                d.fill(0)
            else:
                np.copyto(d, _host(s), casting="same_kind")
        else:
            cp = sys.modules["cupy"]
            d[...] = 0 if s is _ZERO else cp.asarray(s).astype(d.dtype, copy=False)
    return dst
