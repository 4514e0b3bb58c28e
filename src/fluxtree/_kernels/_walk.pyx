# cython: language_level=3
"""Compiled traversal core: node dispatch, the identity cache, fmap and collection.

Every tree operation of fluxtree ends here.  A node is described by a ``NodeDef``
resolved once per exact type (tuple, list, dict, namedtuple, dataclass, ``@functor``
class, ``register``-ed class, or leaf) and kept in a type-keyed table, so the hot loop
does one pointer compare or one dict lookup per node.

Recursion is in C (no Python frames, no ``RecursionError``): acyclic trees tens of
thousands of levels deep are fine, and a cycle is reported as a ``ValueError`` naming
its path.  Errors raised inside the walk carry the path back up and are rewritten
once, at the entry point.
"""
import dataclasses
import types
import functools

import numpy as np

from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.long cimport PyLong_FromVoidPtr
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_GET_SIZE
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdint cimport int32_t, int64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc, realloc
cimport numpy as cnp

cnp.import_array()

# ----------------------------------------------------------------------------
# node kinds and definitions
# ----------------------------------------------------------------------------
cdef enum Kind:
    K_LEAF = 0
    K_TUPLE = 1
    K_LIST = 2
    K_DICT = 3
    K_NAMEDTUPLE = 4
    K_RECORD = 5
    K_CUSTOM = 6


cdef class NodeDef:
    """How one exact type is traversed: its kind, child fields and rebuild rule."""
    cdef readonly int kind
    cdef readonly bint cached          # identity-cache instances of this type
    cdef readonly tuple fields         # child names of records, in children order
    cdef readonly object make          # records: make(orig, values); dict/list subclasses: make(orig, items)
    cdef readonly object ctor          # records whose constructor takes the children in order
    cdef readonly object flatten       # custom: flatten(x) -> children
    cdef readonly object unflatten     # custom: unflatten(x, children) -> new
    cdef readonly bint has_trainable   # instances narrow their children with x.trainable()

    def __init__(self, int kind, bint cached, tuple fields=(), make=None,
                 flatten=None, unflatten=None, ctor=None):
        self.kind = kind
        self.ctor = ctor
        self.cached = cached
        self.fields = fields
        self.make = make
        self.flatten = flatten
        self.unflatten = unflatten


cdef object _ndarray = np.ndarray
cdef object _cupy_ndarray = None
try:  # CuPy arrays are leaves and cached like NumPy arrays; no GPU is touched here
    import cupy as _cupy
    _cupy_ndarray = _cupy.ndarray
except Exception:  # pragma: no cover - CuPy missing or broken
    pass

cdef NodeDef ARRAY_DEF = NodeDef(K_LEAF, True)
cdef NodeDef IMMUTABLE_LEAF = NodeDef(K_LEAF, False)
cdef NodeDef MUTABLE_LEAF = NodeDef(K_LEAF, True)
cdef NodeDef TUPLE_DEF = NodeDef(K_TUPLE, False)
cdef NodeDef LIST_DEF = NodeDef(K_LIST, True)
cdef NodeDef DICT_DEF = NodeDef(K_DICT, True)

#: user registrations (``register``, ``@functor``, ``leaf``), by exact type
cdef dict _explicit = {}
#: every type resolved so far (explicit ones included); cleared on registration
cdef dict _defs = {}

_IMMUTABLE_LEAF_TYPES = (
    type(None), bool, int, float, complex, str, bytes, range, slice, frozenset,
    type(Ellipsis), type(NotImplemented), np.generic, type, np.ufunc, np.dtype,
    types.FunctionType, types.BuiltinFunctionType, types.MethodType,
    types.BuiltinMethodType, types.MethodWrapperType, types.WrapperDescriptorType,
    types.ModuleType, functools.partial,
)


cdef NodeDef _dataclass_def(object t):
    fields = dataclasses.fields(t)
    if not fields:
        return IMMUTABLE_LEAF if t.__dataclass_params__.frozen else MUTABLE_LEAF
    children = tuple(f.name for f in fields if not f.metadata.get("static", False))
    init_names = tuple(f.name for f in fields if f.init)
    late_names = tuple(f.name for f in fields if not f.init)
    child_set = frozenset(children)

    def make(orig, values):
        given = dict(zip(children, values))
        kw = {n: given[n] if n in child_set else getattr(orig, n) for n in init_names}
        new = t(**kw)
        for n in late_names:
            object.__setattr__(new, n, given[n] if n in child_set else getattr(orig, n))
        return new

    positional = (len(children) == len(fields) and not late_names
                  and not any(getattr(f, "kw_only", False) for f in fields))
    return NodeDef(K_RECORD, not t.__dataclass_params__.frozen, children, make,
                   ctor=t if positional else None)


cdef NodeDef _resolve(object t):
    """Work out (and remember) how instances of the exact type ``t`` are traversed."""
    cdef NodeDef d
    spec = getattr(t, "__fluxtree_node__", None)
    if spec is not None:
        d = spec(t)            # @functor / leaf markers build their own def (subclasses too)
    elif issubclass(t, tuple) and hasattr(t, "_fields") and hasattr(t, "_make"):
        d = NodeDef(K_NAMEDTUPLE, False, tuple(t._fields), t._make)
    elif dataclasses.is_dataclass(t):
        d = _dataclass_def(t)
    elif issubclass(t, dict):
        d = NodeDef(K_DICT, True, (), _rebuild_dict_subclass)
    elif issubclass(t, list):
        d = NodeDef(K_LIST, True, (), _rebuild_list_subclass)
    elif issubclass(t, _IMMUTABLE_LEAF_TYPES) or issubclass(t, tuple):
        d = IMMUTABLE_LEAF
    elif _cupy_ndarray is not None and issubclass(t, _cupy_ndarray):
        d = ARRAY_DEF
    else:
        d = MUTABLE_LEAF       # arrays, RNGs, plain objects nobody registered
    _mark_trainable(d, t)
    _defs[t] = d
    return d


cdef void _mark_trainable(NodeDef d, object t):
    if d.kind == K_RECORD or d.kind == K_NAMEDTUPLE or d.kind == K_CUSTOM:
        d.has_trainable = callable(getattr(t, "trainable", None))


def _rebuild_dict_subclass(orig, items):
    new = orig.copy()
    new.clear()
    new.update(items)
    return new


def _rebuild_list_subclass(orig, items):
    import copy
    new = copy.copy(orig)
    new[:] = items
    return new


cdef inline NodeDef lookup(object x):
    t = type(x)
    if t is _ndarray:
        return ARRAY_DEF
    if t is tuple:
        return TUPLE_DEF if PyTuple_GET_SIZE(x) else IMMUTABLE_LEAF
    if t is list:
        return LIST_DEF
    if t is dict:
        return DICT_DEF
    cdef PyObject* p = PyDict_GetItem(_defs, t)
    if p != NULL:
        return <NodeDef>p
    return _resolve(t)


def register_def(object cls, NodeDef d):
    """Install ``d`` for exactly ``cls`` and forget every derived resolution."""
    _mark_trainable(d, cls)
    _explicit[cls] = d
    _defs.clear()
    _defs.update(_explicit)


def node_def(object x):
    """The ``NodeDef`` of ``x`` (for the Python layer and tests)."""
    return lookup(x)


def forget_resolutions():
    """Drop cached resolutions (after a class gained or lost a marker)."""
    _defs.clear()
    _defs.update(_explicit)


# ----------------------------------------------------------------------------
# the protocol: children / rebuild / isleaf / usecache
# ----------------------------------------------------------------------------
cpdef bint isleaf(object x):
    """True when ``x`` has no children: arrays, numbers, ``()``, strings, callables...

    >>> isleaf(1.0), isleaf(()), isleaf([]), isleaf((8, 9)), isleaf({})
    (True, True, False, False, False)
    """
    return lookup(x).kind == K_LEAF


cpdef bint usecache(object x):
    """True when the identity cache applies to ``x`` (mutable nodes and arrays).

    >>> import numpy as np
    >>> usecache(np.zeros(2)), usecache([1]), usecache((1, 2)), usecache(3), usecache("s")
    (True, True, False, False, False)
    """
    return lookup(x).cached


cdef object _custom_children(NodeDef d, object x):
    ch = d.flatten(x)
    if type(ch) is not tuple and type(ch) is not list and type(ch) is not dict:
        raise TypeError(
            f"flatten registered for {type(x).__name__} must return a tuple, list or dict "
            f"of children, got {type(ch).__name__}.")
    return ch


def children(object x):
    """The children of ``x``: a tuple, list or dict (field -> value for records); ``()`` for leaves."""
    cdef NodeDef d = lookup(x)
    cdef int k = d.kind
    if k == K_LEAF:
        return ()
    if k == K_TUPLE:
        return x
    if k == K_LIST:
        return list(x)
    if k == K_DICT:
        return dict(x)
    if k == K_NAMEDTUPLE:
        return dict(zip(d.fields, x))
    if k == K_RECORD:
        return {f: getattr(x, f) for f in d.fields}
    return _custom_children(d, x)


cdef list _keys_of(NodeDef d, object x, object ch):
    """Child keys in children order (for pairing, paths and rebuilding)."""
    cdef int k = d.kind
    if k == K_TUPLE or k == K_LIST:
        return list(range(len(x)))
    if k == K_DICT:
        return list(x.keys())
    if k == K_NAMEDTUPLE or k == K_RECORD:
        return list(d.fields)
    if type(ch) is dict:
        return list(ch.keys())
    return list(range(len(ch)))


def rebuild(object x, object new_children):
    """Rebuild a node like ``x`` from children given in the form ``children(x)`` has.

    Records also take a positional sequence in children order."""
    cdef NodeDef d = lookup(x)
    cdef int k = d.kind
    if k == K_LEAF:
        return x
    if k == K_TUPLE:
        return tuple(new_children)
    if k == K_LIST:
        return list(new_children) if d.make is None else d.make(x, list(new_children))
    if k == K_DICT:
        return dict(new_children) if d.make is None else d.make(x, dict(new_children))
    if k == K_NAMEDTUPLE or k == K_RECORD:
        values = _record_values(d, x, new_children)
        return d.make(values) if k == K_NAMEDTUPLE else d.make(x, values)
    return d.unflatten(x, new_children)


cdef tuple _record_values(NodeDef d, object x, object new_children):
    if isinstance(new_children, dict):
        missing = [f for f in d.fields if f not in new_children]
        if missing:
            raise ValueError(
                f"rebuilding {type(x).__name__} needs the children {list(d.fields)}, "
                f"got no value for {missing}.")
        return tuple(new_children[f] for f in d.fields)
    values = tuple(new_children)
    if len(values) != len(d.fields):
        raise ValueError(
            f"rebuilding {type(x).__name__} needs {len(d.fields)} children "
            f"{list(d.fields)}, got {len(values)}.")
    return values


def rebuild_structure(object x, object new_children):
    """The structural form of a rebuilt ``x``: dicts for records, else as ``children``."""
    cdef NodeDef d = lookup(x)
    cdef int k = d.kind
    if k == K_LEAF:
        return x
    if k == K_TUPLE:
        return tuple(new_children)
    if k == K_LIST:
        return list(new_children)
    if k == K_NAMEDTUPLE or k == K_RECORD:
        if isinstance(new_children, dict):
            return {f: new_children[f] for f in d.fields}
        return dict(zip(d.fields, new_children))
    if isinstance(new_children, dict):
        return dict(new_children)
    return type(new_children)(new_children)


cdef object _trainable_names(NodeDef d, object x):
    """The names ``x.trainable()`` keeps, checked against the children; None for all."""
    tr = x.trainable()
    if not isinstance(tr, dict):
        raise TreeError(TypeError,
            f"{type(x).__name__}.trainable() must return a dict of child name -> value "
            f"(a subset of its children), got {type(tr).__name__} at {{path}}.")
    names = frozenset(tr)
    fields = d.fields if d.kind != K_CUSTOM else tuple(_custom_children(d, x))
    unknown = [n for n in tr if n not in fields]
    if unknown:
        raise TreeError(ValueError,
            f"{type(x).__name__}.trainable() names {unknown}, which are not among its "
            f"children {list(fields)}, at {{path}}.")
    return names


cdef inline bint _numeric_typenum(int t):
    return (t == cnp.NPY_FLOAT16 or t == cnp.NPY_FLOAT or t == cnp.NPY_DOUBLE
            or t == cnp.NPY_LONGDOUBLE or t == cnp.NPY_CFLOAT or t == cnp.NPY_CDOUBLE
            or t == cnp.NPY_CLONGDOUBLE)


cpdef bint isnumeric(object x):
    """True for a float or complex array leaf (NumPy or CuPy): a parameter.

    >>> import numpy as np
    >>> isnumeric(np.zeros(2)), isnumeric(np.array(1j)), isnumeric(np.arange(2)), isnumeric(1.0)
    (True, True, False, False)
    """
    if type(x) is _ndarray or isinstance(x, _ndarray):
        return _numeric_typenum(cnp.PyArray_TYPE(<cnp.ndarray>x))
    if _cupy_ndarray is not None and isinstance(x, _cupy_ndarray):
        return x.dtype.kind in "fc"
    return False


# ----------------------------------------------------------------------------
# key paths
# ----------------------------------------------------------------------------
class KeyPath(tuple):
    """The location of a node: the keys from the root, read like Python.

    Record fields print as attributes, positions and dict keys as subscripts:
    ``str(path) == 'layers[1].weight'`` or ``'["enc"]'``.  Positions are 0-based.
    A ``KeyPath`` compares equal to the tuple of its keys.

    >>> kp = KeyPath.make(("layers", 1, "weight"), (True, False, True))
    >>> str(kp), kp == ("layers", 1, "weight")
    ('layers[1].weight', True)
    >>> str(KeyPath(2, "c"))
    '[2].c'
    >>> str(KeyPath.make(("enc", 0), (False, False)))
    '["enc"][0]'
    """

    def __new__(cls, *keys):
        self = tuple.__new__(cls, keys)
        self._attrs = tuple(type(k) is str and k.isidentifier() for k in keys)
        return self

    @classmethod
    def make(cls, keys, attrs):
        """A path from its keys and, for each, whether it is an attribute (record field)."""
        self = tuple.__new__(cls, keys)
        self._attrs = tuple(attrs)
        return self

    @property
    def attrs(self):
        """For each key, True when it names a record field (printed as ``.name``)."""
        return self._attrs

    def __add__(self, other):
        if isinstance(other, KeyPath):
            return KeyPath.make(tuple(self) + tuple(other), self._attrs + other._attrs)
        return KeyPath(*self, *other)

    def __str__(self):
        parts = []
        for k, a in zip(self, self._attrs):
            if a:
                parts.append(("." if parts else "") + str(k))
            elif type(k) is str and '"' not in k:
                parts.append(f'["{k}"]')
            else:
                parts.append(f"[{k!r}]")
        return "".join(parts) if parts else "<root>"

    def __repr__(self):
        return f"KeyPath({', '.join(repr(k) for k in self)})"

    def __hash__(self):
        return tuple.__hash__(self)

    def __eq__(self, other):
        return tuple.__eq__(self, other)

    def __ne__(self, other):
        return tuple.__ne__(self, other)


cdef object _ROOT = None    # paths travel as cons cells (parent, key, attr); None is the root


cdef inline object _child_path(object path, object key, bint attr):
    return (path, key, attr)


cdef object _keypath(object chain):
    """Materialise a cons-cell path into a KeyPath (only where f or exclude sees it)."""
    keys = []
    attrs = []
    while chain is not None:
        keys.append(chain[1])
        attrs.append(chain[2])
        chain = chain[0]
    return path_of(keys, attrs)


cdef inline bint _is_attr(NodeDef d, object key):
    if d.kind == K_NAMEDTUPLE or d.kind == K_RECORD:
        return True
    return d.kind == K_CUSTOM and type(key) is str and key.isidentifier()


def path_of(list keys, list attrs):
    """A ``KeyPath`` from keys collected innermost-first (as errors carry them)."""
    return KeyPath.make(tuple(reversed(keys)), tuple(reversed(attrs)))


# ----------------------------------------------------------------------------
# errors carrying their path
# ----------------------------------------------------------------------------
class TreeError(Exception):
    """Internal carrier: a ValueError/TypeError whose message needs the path of the node."""

    def __init__(self, exc_type, message):
        super().__init__(message)
        self.exc_type = exc_type
        self.message = message
        self.keys = []
        self.attrs = []

    def public(self, what):
        path = path_of(self.keys, self.attrs)
        return self.exc_type(f"{what}: {self.message.format(path=path)}")


cdef void _annotate(object exc, object key, bint attr):
    """Record one step of the path on an exception travelling up the tree."""
    if isinstance(exc, TreeError):
        exc.keys.append(key)
        exc.attrs.append(attr)
        return
    try:
        keys = exc.__dict__.setdefault("_fluxtree_keys", [])
        exc.__dict__.setdefault("_fluxtree_attrs", []).append(attr)
        keys.append(key)
    except Exception:   # an exception type without __dict__: no path note
        pass


def annotate(exc, key, bint attr):
    """Record one step of the path on an exception leaving a pure-Python walk."""
    _annotate(exc, key, attr)


def finish_error(exc, str what):
    """Turn an exception that escaped a walk into the one the user sees."""
    if isinstance(exc, TreeError):
        return exc.public(what)
    keys = getattr(exc, "_fluxtree_keys", None)
    if keys is not None:
        path = path_of(keys, exc._fluxtree_attrs)
        exc.add_note(f"fluxtree: raised in {what} at {path}")
        del exc._fluxtree_keys, exc._fluxtree_attrs
    return exc


cdef object _cycle_error():
    return TreeError(ValueError, "the tree contains itself: a cycle through {path}.")


# ----------------------------------------------------------------------------
# pairing the other trees' children with the first tree's
# ----------------------------------------------------------------------------
cdef object _by_position(NodeDef d, object x, object y):
    """The children of ``y`` to pair by position with those of the sequence-like node ``x``
    (a tuple, list, or custom node with positional children); None when ``y`` has none."""
    if d.kind == K_CUSTOM and type(y) is type(x):
        return _custom_children(d, y)
    cdef int yk = lookup(y).kind
    if yk == K_TUPLE or yk == K_LIST or yk == K_NAMEDTUPLE:
        return y
    return None


cdef tuple _paired(NodeDef d, object x, object xch, list keys, tuple ys):
    """For each other tree, the tuple of its children aligned to ``keys``."""
    cdef Py_ssize_t i, n = len(keys)
    cdef list out = []
    cdef NodeDef yd
    for i in range(len(ys)):
        y = ys[i]
        yd = lookup(y)
        if d.kind == K_TUPLE or d.kind == K_LIST or (d.kind == K_CUSTOM and type(xch) is not dict):
            seq = _by_position(d, x, y)
            if seq is None:
                raise TreeError(TypeError,
                    f"tree {i + 2} holds a value of type {type(y).__name__} at {{path}}, "
                    f"where tree 1 has the sequence node {type(x).__name__}.")
            if len(seq) < n:
                raise TreeError(ValueError,
                    f"tree {i + 2} has {len(seq)} children at {{path}}, fewer than the "
                    f"{n} of tree 1.")
            out.append(tuple(seq[:n]))
        else:
            if yd.kind == K_DICT:
                getter = y.__getitem__
            elif yd.kind == K_CUSTOM and type(y) is type(x):
                getter = _custom_children(d, y).__getitem__
            elif yd.kind == K_NAMEDTUPLE or yd.kind == K_RECORD:
                getter = functools.partial(getattr, y)
            else:
                raise TreeError(TypeError,
                    f"tree {i + 2} holds a value of type {type(y).__name__} at {{path}}, "
                    f"where tree 1 has the node {type(x).__name__} with keys {keys!r}.")
            vals = []
            for k in keys:
                try:
                    vals.append(getter(k))
                except (KeyError, AttributeError, TypeError):
                    raise TreeError(ValueError,
                        f"tree {i + 2} has no entry {k!r} at {{path}}, where tree 1 has one.")
            out.append(tuple(vals))
    return tuple(out)



# ----------------------------------------------------------------------------
# an identity table: the walks' cache, "seen" and "visiting" sets, without Python ints
# ----------------------------------------------------------------------------


cdef object _PENDING = object()     # value of a node whose walk is in progress


cdef class IdTable:
    """Open-addressing table keyed by object identity; holds strong references.

    Replaces ``{id(x): (x, value)}`` dicts on the hot paths: no int or tuple is
    allocated per entry, and keeping ``x`` referenced means an id is never reused
    while the table lives."""
    cdef uintptr_t* keys
    cdef PyObject** vals
    cdef Py_ssize_t cap, used

    def __cinit__(self):
        self.cap = 64
        self.used = 0
        self.keys = <uintptr_t*>calloc(self.cap, sizeof(uintptr_t))
        self.vals = <PyObject**>calloc(self.cap, sizeof(PyObject*))
        if self.keys == NULL or self.vals == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.keys != NULL:
            for i in range(self.cap):
                if self.keys[i] != 0:
                    Py_XDECREF(<PyObject*>self.keys[i])
                    Py_XDECREF(self.vals[i])
        free(self.keys)
        free(self.vals)

    cdef inline Py_ssize_t home(self, uintptr_t key) noexcept:
        return <Py_ssize_t>(((key >> 4) * <uintptr_t>0x9E3779B97F4A7C15) >> 17) & (self.cap - 1)

    cdef inline Py_ssize_t find(self, uintptr_t key) noexcept:
        cdef Py_ssize_t mask = self.cap - 1
        cdef Py_ssize_t i = self.home(key)
        while self.keys[i] != 0 and self.keys[i] != key:
            i = (i + 1) & mask
        return i

    cdef inline PyObject* get(self, object x) noexcept:
        """The value stored for ``x``, or NULL."""
        cdef Py_ssize_t i = self.find(<uintptr_t><PyObject*>x)
        return self.vals[i] if self.keys[i] != 0 else NULL

    cdef int put(self, object x, object value) except -1:
        cdef uintptr_t key = <uintptr_t><PyObject*>x
        cdef Py_ssize_t i = self.find(key)
        Py_INCREF(value)
        if self.keys[i] != 0:
            Py_XDECREF(self.vals[i])
            self.vals[i] = <PyObject*>value
            return 0
        Py_INCREF(x)
        self.keys[i] = key
        self.vals[i] = <PyObject*>value
        self.used += 1
        if 2 * self.used > self.cap:
            self.grow()
        return 0

    cdef void remove(self, object x) noexcept:
        """Delete ``x`` (backward-shift deletion keeps probe chains intact)."""
        cdef uintptr_t key = <uintptr_t><PyObject*>x
        cdef Py_ssize_t mask = self.cap - 1
        cdef Py_ssize_t i = self.find(key), j, h
        if self.keys[i] == 0:
            return
        Py_XDECREF(<PyObject*>self.keys[i])
        Py_XDECREF(self.vals[i])
        self.used -= 1
        j = i
        while True:
            j = (j + 1) & mask
            if self.keys[j] == 0:
                break
            h = self.home(self.keys[j])
            if (j > i and (h <= i or h > j)) or (j < i and (h <= i and h > j)):
                self.keys[i] = self.keys[j]
                self.vals[i] = self.vals[j]
                i = j
        self.keys[i] = 0
        self.vals[i] = NULL

    cdef int grow(self) except -1:
        cdef uintptr_t* old_keys = self.keys
        cdef PyObject** old_vals = self.vals
        cdef Py_ssize_t old_cap = self.cap, i, j
        new_keys = <uintptr_t*>calloc(2 * old_cap, sizeof(uintptr_t))
        new_vals = <PyObject**>calloc(2 * old_cap, sizeof(PyObject*))
        if new_keys == NULL or new_vals == NULL:
            free(new_keys)
            free(new_vals)
            raise MemoryError()
        self.keys = new_keys
        self.vals = new_vals
        self.cap = 2 * old_cap
        for i in range(old_cap):
            if old_keys[i] != 0:
                j = self.find(old_keys[i])
                self.keys[j] = old_keys[i]
                self.vals[j] = old_vals[i]
        free(old_keys)
        free(old_vals)
        return 0

# ----------------------------------------------------------------------------
# fmap / fmapstructure / fmap_with_path
# ----------------------------------------------------------------------------
cdef object _NO_PRUNE = object()
NO_PRUNE = _NO_PRUNE

#: tree levels walked on one C stack before the walk moves to a fresh thread's stack
cdef Py_ssize_t LEVELS_PER_STACK = 400
cdef Py_ssize_t FRESH_STACK_BYTES = 64 * 1024 * 1024


def _on_fresh_stack(fn, *args):
    """Run ``fn(*args)`` on a new thread with a large stack and wait for it.

    The recursion is in C, so depth is bounded by the C stack, not by Python's
    recursion limit: every ``LEVELS_PER_STACK`` levels the walk continues on a fresh
    stack, which makes depth unlimited while shallow trees never pay for a thread."""
    import threading
    box = [None, None]

    def target():
        try:
            box[0] = fn(*args)
        except BaseException as e:
            box[1] = e

    old = threading.stack_size(FRESH_STACK_BYTES)
    try:
        worker = threading.Thread(target=target, name="fluxtree-deep-walk")
        worker.start()
    finally:
        threading.stack_size(old)
    worker.join()
    if box[1] is not None:
        raise box[1]
    return box[0]


cdef class Mapper:
    """One ``fmap`` walk: DefaultWalk (or StructuralWalk) under Exclude and Cached walks."""
    cdef object f
    cdef object exclude           # None: isleaf
    cdef object prune
    cdef dict cache               # a user-supplied cache: {id(x): (x, result)}
    cdef IdTable table            # the default identity cache (None: no cache)
    cdef IdTable visiting         # mutable containers on the current path (no cache)
    cdef IdTable replacements     # leaf -> its replacement, for Restructure's rebuild
    cdef bint has_prune, structural, with_path, trainable_only
    cdef Py_ssize_t depth

    def __init__(self, f, exclude, cache, prune, bint structural, bint with_path,
                 bint trainable_only=False):
        """``cache``: True for a fresh identity cache, a dict to share one, None for none."""
        self.f = f
        self.exclude = exclude
        if cache is True:
            self.table = IdTable()
        elif cache is not None:
            self.cache = cache
        self.prune = prune
        self.has_prune = prune is not _NO_PRUNE
        self.structural = structural
        self.with_path = with_path
        self.trainable_only = trainable_only
        self.visiting = IdTable()

    def replace(self, list leaves, list replacements):
        """Put ``replacements[j]`` wherever ``leaves[j]`` (the same object) stands."""
        cdef Py_ssize_t j
        self.replacements = IdTable()
        for j in range(len(leaves)):
            self.replacements.put(leaves[j], replacements[j])
        return self

    def run(self, x, tuple ys):
        return self.visit(x, ys, _ROOT)

    cdef object visit(self, object x, tuple ys, object path):
        cdef NodeDef d = lookup(x)
        cdef object key = None
        cdef PyObject* hit
        cdef bint cached = d.cached and (self.table is not None or self.cache is not None)
        cdef bint excluded
        if self.replacements is not None and d.kind == K_LEAF and d.cached:
            hit = self.replacements.get(x)
            if hit != NULL:
                return <object>hit
        if cached:
            if self.table is not None:
                hit = self.table.get(x)
                if hit != NULL:
                    if <object>hit is _PENDING:
                        raise _cycle_error()
                    return self.prune if self.has_prune else <object>hit
            else:
                key = PyLong_FromVoidPtr(<void*>x)
                hit = PyDict_GetItem(self.cache, key)
                if hit != NULL:
                    return self.prune if self.has_prune else (<tuple>hit)[1]
        if self.exclude is None:
            excluded = d.kind == K_LEAF
        elif self.with_path:
            excluded = self.exclude(_keypath(path), x)
        else:
            excluded = self.exclude(x)
        if excluded:
            if self.f is None:
                r = x
            elif self.with_path:
                r = self.f(_keypath(path), x, *ys)
            elif not ys:
                r = self.f(x)
            elif PyTuple_GET_SIZE(ys) == 1:
                r = self.f(x, ys[0])
            else:
                r = self.f(x, *ys)
        elif d.kind == K_LEAF:
            r = x
        else:
            r = self.node(d, x, ys, path)
        if cached:
            if self.table is not None:
                self.table.put(x, r)
            else:
                PyDict_SetItem(self.cache, key, (x, r))
        return r

    cdef object node(self, NodeDef d, object x, tuple ys, object path):
        cdef IdTable marks = None
        if d.cached:
            # with the default cache, an in-progress entry doubles as the cycle check
            marks = self.table if self.table is not None else self.visiting
            if marks is self.visiting and marks.get(x) != NULL:
                raise _cycle_error()
            marks.put(x, _PENDING)
        self.depth += 1
        try:
            if self.depth % LEVELS_PER_STACK == 0:
                r = _on_fresh_stack(self.node_body_entry, d, x, ys, path)
            else:
                r = self.node_body(d, x, ys, path)
        finally:
            self.depth -= 1
            if marks is self.visiting and marks is not None:
                marks.remove(x)
        return r

    def node_body_entry(self, NodeDef d, x, tuple ys, path):
        return self.node_body(d, x, ys, path)

    cdef object assemble(self, NodeDef d, object x, object out):
        """Node ``x`` rebuilt (or, structurally, plain) from its mapped children.

        ``out`` is a dict for dict nodes, a list in children order otherwise."""
        cdef int k = d.kind
        if k == K_DICT or k == K_LIST:
            return out if d.make is None or self.structural else d.make(x, out)
        if k == K_TUPLE:
            return tuple(out)
        if self.structural:
            return dict(zip(d.fields, out))
        if k == K_NAMEDTUPLE:
            return d.make(out)
        if d.ctor is not None:
            return d.ctor(*out)
        return d.make(x, tuple(out))

    cdef object node_body(self, NodeDef d, object x, tuple ys, object path):
        cdef int k = d.kind
        cdef Py_ssize_t i, n
        cdef list out
        cdef tuple yrows = ()
        cdef list keys
        cdef object cur = _NOKEY
        cdef bint attr = False
        if self.with_path or k == K_CUSTOM or (self.trainable_only and d.has_trainable):
            return self.node_general(d, x, ys, path)
        if ys:
            return self.node_multi(d, x, ys, path)
        # single tree, no paths: the hot loops
        try:
            if k == K_TUPLE or k == K_LIST:
                n = len(x)
                out = [None] * n
                for i in range(n):
                    cur = i
                    out[i] = self.visit(x[i], (), None)
                cur = _NOKEY
                return self.assemble(d, x, out)
            if k == K_DICT:
                res = {}
                for kk, v in x.items():
                    cur = kk
                    res[kk] = self.visit(v, (), None)
                cur = _NOKEY
                return self.assemble(d, x, res)
            attr = True
            fields = d.fields
            n = len(fields)
            out = [None] * n
            if k == K_NAMEDTUPLE:
                for i in range(n):
                    cur = fields[i]
                    out[i] = self.visit(x[i], (), None)
            else:
                for i in range(n):
                    cur = fields[i]
                    out[i] = self.visit(getattr(x, cur), (), None)
            cur = _NOKEY
            return self.assemble(d, x, out)
        except BaseException as e:
            if cur is not _NOKEY:
                _annotate(e, cur, attr)
            raise

    cdef object node_multi(self, NodeDef d, object x, tuple ys, object path):
        """Several trees over tuple/list/dict/record nodes, read without copies.

        Any irregular pairing (a short sequence, a missing key, another node kind) is
        handed to ``node_general``, which raises the error with its message."""
        cdef int k = d.kind
        cdef Py_ssize_t i, j, n, m = len(ys)
        cdef list access = [None] * m         # per other tree: 0 index, 1 dict, 2 attribute
        cdef PyObject* got
        cdef object cur = _NOKEY
        cdef bint attr = k == K_RECORD or k == K_NAMEDTUPLE
        cdef NodeDef yd
        if m == 1:
            r = self.node_pair(d, x, ys[0])
            if r is not _NOKEY:
                return r
        for j in range(m):
            yd = lookup(ys[j])
            if k == K_TUPLE or k == K_LIST:
                if (yd.kind != K_TUPLE and yd.kind != K_LIST) or len(ys[j]) < len(x):
                    return self.node_general(d, x, ys, path)
                access[j] = 0
            elif yd.kind == K_DICT:
                access[j] = 1
            elif k != K_DICT and type(ys[j]) is type(x):
                access[j] = 0 if k == K_NAMEDTUPLE else 2
            else:
                return self.node_general(d, x, ys, path)
        if k == K_DICT:
            keys = list(x.keys())
            xvals = list(x.values())
        elif k == K_RECORD:
            keys = list(d.fields)
            xvals = [getattr(x, f) for f in d.fields]
        else:
            keys = None
            xvals = list(x)
        n = len(xvals)
        rows = []
        for i in range(n):
            row = [None] * m
            for j in range(m):
                if access[j] == 0:
                    row[j] = ys[j][i]
                elif access[j] == 1:
                    got = PyDict_GetItem(ys[j], keys[i] if keys is not None else d.fields[i])
                    if got == NULL:
                        return self.node_general(d, x, ys, path)
                    row[j] = <object>got
                else:
                    row[j] = getattr(ys[j], keys[i])
            rows.append(tuple(row))
        out = [None] * n
        try:
            for i in range(n):
                cur = i if keys is None and k != K_NAMEDTUPLE else (
                    d.fields[i] if keys is None else keys[i])
                out[i] = self.visit(xvals[i], <tuple>rows[i], None)
        except BaseException as e:
            _annotate(e, cur, attr)
            raise
        return self.assemble(d, x, dict(zip(keys, out)) if k == K_DICT else out)

    cdef object node_pair(self, NodeDef d, object x, object y):
        """Two trees, both dicts, both sequences or both the same record type; else _NOKEY."""
        cdef int k = d.kind
        cdef Py_ssize_t i, n
        cdef object cur = _NOKEY
        cdef bint attr = False
        cdef list out
        ty = type(y)
        try:
            if k == K_DICT and ty is dict:
                for kk in x:
                    if kk not in y:
                        return _NOKEY
                res = {}
                for kk, v in x.items():
                    cur = kk
                    res[kk] = self.visit(v, (<object>PyDict_GetItem(y, kk),), None)
                cur = _NOKEY
                return self.assemble(d, x, res)
            if (k == K_TUPLE or k == K_LIST) and (ty is tuple or ty is list):
                n = len(x)
                if len(y) < n:
                    return _NOKEY
                out = [None] * n
                for i in range(n):
                    cur = i
                    out[i] = self.visit(x[i], (y[i],), None)
                cur = _NOKEY
                return self.assemble(d, x, out)
            if k == K_RECORD and ty is type(x):
                attr = True
                fields = d.fields
                n = len(fields)
                out = [None] * n
                for i in range(n):
                    cur = fields[i]
                    out[i] = self.visit(getattr(x, cur), (getattr(y, cur),), None)
                cur = _NOKEY
                return self.assemble(d, x, out)
        except BaseException as e:
            if cur is not _NOKEY:
                _annotate(e, cur, attr)
            raise
        return _NOKEY

    cdef object node_general(self, NodeDef d, object x, tuple ys, object path):
        """Several trees, key paths or a registered custom node."""
        cdef int k = d.kind
        cdef Py_ssize_t i, j, n
        cdef object cur = None
        cdef bint attr = False
        xch = children(x) if k == K_CUSTOM else None
        keys = _keys_of(d, x, xch)
        n = len(keys)
        if k == K_CUSTOM:
            xvals = list(xch.values()) if type(xch) is dict else list(xch)
        elif k == K_DICT:
            xvals = list(x.values())
        elif k == K_RECORD:
            xvals = [getattr(x, f) for f in d.fields]
        else:
            xvals = list(x)
        allowed = (_trainable_names(d, x) if self.trainable_only and d.has_trainable
                   else None)
        yrows = _paired(d, x, xch, keys, ys) if ys else ()
        out = [None] * n
        try:
            for i in range(n):
                cur = keys[i]
                attr = _is_attr(d, cur)
                if allowed is not None and cur not in allowed:
                    out[i] = xvals[i]          # not trainable: carried over untouched
                    continue
                cys = tuple([yrows[j][i] for j in range(len(yrows))])
                cpath = _child_path(path, cur, attr) if self.with_path else None
                out[i] = self.visit(xvals[i], cys, cpath)
        except BaseException as e:
            _annotate(e, cur, attr)
            raise
        if k == K_DICT or (k == K_CUSTOM and type(xch) is dict):
            newch = dict(zip(keys, out))
        elif k == K_CUSTOM and type(xch) is tuple:
            newch = tuple(out)
        else:
            newch = out
        if self.structural:
            return rebuild_structure(x, newch)
        return rebuild(x, newch)


# ----------------------------------------------------------------------------
# collection: fcollect (all nodes, de-duplicated), fleaves (leaves, in order),
# and the parameter leaves behind destructure (trainable, numeric, de-duplicated)
# ----------------------------------------------------------------------------
cdef class Collector:
    """Depth-first pre-order collection of nodes or leaves."""
    cdef readonly list out
    cdef object exclude            # None: default (never for nodes, isleaf for leaves)
    cdef IdTable seen              # nodes already listed (fcollect); _PENDING while open
    cdef IdTable visiting          # mutable containers on the current path (fleaves)
    cdef bint leaves_only, trainable_only
    cdef Py_ssize_t depth

    def __init__(self, exclude, bint leaves_only, bint trainable_only=False):
        self.out = []
        self.exclude = exclude
        self.leaves_only = leaves_only
        self.trainable_only = trainable_only
        self.seen = IdTable()
        self.visiting = IdTable()

    def run(self, x):
        if self.leaves_only:
            self.leaves(x)
        else:
            self.nodes(x)
        return self.out

    cdef void nodes(self, object x) except *:
        cdef NodeDef d
        cdef PyObject* mark
        if self.exclude is not None and self.exclude(x):
            return
        d = lookup(x)
        if d.cached:
            mark = self.seen.get(x)
            if mark != NULL:
                if <object>mark is _PENDING:
                    raise _cycle_error()
                return
        self.out.append(x)
        if d.kind == K_LEAF:
            if d.cached:
                self.seen.put(x, None)
            return
        if d.cached:
            self.seen.put(x, _PENDING)
        self.descend(d, x)
        if d.cached:
            self.seen.put(x, None)

    cdef void leaves(self, object x) except *:
        cdef NodeDef d = lookup(x)
        if self.exclude is None:
            if d.kind == K_LEAF:
                self.leaf(x)
                return
        elif self.exclude(x):
            self.leaf(x)
            return
        elif d.kind == K_LEAF:
            return
        if d.cached:
            if self.visiting.get(x) != NULL:
                raise _cycle_error()
            self.visiting.put(x, None)
            self.descend(d, x)
            self.visiting.remove(x)
        else:
            self.descend(d, x)

    cdef void leaf(self, object x) except *:
        self.out.append(x)

    cdef void descend(self, NodeDef d, object x) except *:
        self.depth += 1
        try:
            if self.depth % LEVELS_PER_STACK == 0:
                _on_fresh_stack(self.each_child_entry, d, x)
            else:
                self.each_child(d, x)
        finally:
            self.depth -= 1

    def each_child_entry(self, NodeDef d, x):
        self.each_child(d, x)

    cdef void each_child(self, NodeDef d, object x) except *:
        cdef int k = d.kind
        cdef object cur = _NOKEY
        cdef Py_ssize_t i, n, pos = -1
        cdef bint attr = False
        allowed = _trainable_names(d, x) if self.trainable_only and d.has_trainable else None
        try:
            if k == K_TUPLE or k == K_LIST:
                n = len(x)
                for i in range(n):
                    pos = i
                    self.child(x[i])
            elif k == K_DICT:
                for kk, v in x.items():
                    cur = kk
                    self.child(v)
            elif k == K_NAMEDTUPLE or k == K_RECORD:
                attr = True
                fields = d.fields
                for i in range(len(fields)):
                    f = fields[i]
                    if allowed is not None and f not in allowed:
                        continue
                    cur = f
                    self.child(x[i] if k == K_NAMEDTUPLE else getattr(x, f))
            else:
                ch = _custom_children(d, x)
                items = ch.items() if type(ch) is dict else enumerate(ch)
                for kk, v in items:
                    if allowed is not None and kk not in allowed:
                        continue
                    cur = kk
                    attr = _is_attr(d, kk)
                    self.child(v)
        except BaseException as e:
            if pos >= 0:
                _annotate(e, pos, False)
            elif cur is not _NOKEY:
                _annotate(e, cur, attr)
            raise

    cdef inline void child(self, object v) except *:
        if self.leaves_only:
            self.leaves(v)
        else:
            self.nodes(v)


cdef object _NOKEY = object()


cdef class ParamCollector(Collector):
    """The parameters behind ``destructure``: trainable float/complex array leaves.

    ``out`` holds each parameter once (first occurrence order); ``occurrences`` the slot
    of every parameter position (None while there is no tie: then it is 0, 1, 2, ...).
    ``dtypes`` maps the NumPy type numbers seen to their dtypes, ``views`` lists the
    slots of arrays that do not own their memory (candidates for aliasing), ``foreign``
    counts non-NumPy (GPU) parameters, ``swapped`` flags a non-native byte order, and
    ``offsets()`` gives the start of each slot.
    """
    cdef readonly object occurrences
    cdef readonly dict dtypes
    cdef readonly list views
    cdef readonly Py_ssize_t foreign
    cdef readonly bint swapped
    cdef Py_ssize_t n_occ, last_type
    cdef IdTable seen_params          # the parameters listed so far
    cdef dict slot_of                 # id(parameter) -> slot, built at the first tie
    cdef int64_t* sizes
    cdef Py_ssize_t sizes_cap

    def __cinit__(self):
        self.sizes_cap = 64
        self.sizes = <int64_t*>malloc(self.sizes_cap * sizeof(int64_t))
        if self.sizes == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.sizes)

    def __init__(self):
        Collector.__init__(self, None, True, True)
        self.occurrences = None
        self.dtypes = {}
        self.views = []
        self.seen_params = IdTable()
        self.slot_of = None
        self.foreign = 0
        self.n_occ = 0
        self.last_type = -1

    cdef void leaf(self, object x) except *:
        cdef Py_ssize_t slot
        cdef int t
        cdef PyObject* hit
        cdef int64_t* grown
        if not isnumeric(x):
            return
        if self.seen_params.get(x) != NULL:       # a tie: rare, so slots are looked up lazily
            if self.occurrences is None:
                self.occurrences = list(range(self.n_occ))
                self.slot_of = {id(p): j for j, p in enumerate(self.out)}
            self.occurrences.append(self.slot_of[id(x)])
            self.n_occ += 1
            return
        slot = len(self.out)
        self.seen_params.put(x, None)
        if self.occurrences is not None:
            self.occurrences.append(slot)
            self.slot_of[id(x)] = slot
        self.n_occ += 1
        self.out.append(x)
        if slot == self.sizes_cap:
            grown = <int64_t*>realloc(self.sizes, 2 * self.sizes_cap * sizeof(int64_t))
            if grown == NULL:
                raise MemoryError()
            self.sizes = grown
            self.sizes_cap *= 2
        if isinstance(x, _ndarray):
            self.sizes[slot] = cnp.PyArray_SIZE(<cnp.ndarray>x)
            t = cnp.PyArray_TYPE(<cnp.ndarray>x)
            if t != self.last_type:
                self.last_type = t
                if t not in self.dtypes:
                    self.dtypes[t] = cnp.PyArray_DescrFromType(t)
            if cnp.PyArray_BASE(<cnp.ndarray>x) != NULL:
                self.views.append(slot)
            if not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>x):
                self.swapped = True
        else:
            self.sizes[slot] = x.size
            self.foreign += 1

    def offsets(self):
        """int64 array of slot starts, with the total length last."""
        cdef Py_ssize_t j, n = len(self.out)
        out = np.empty(n + 1, np.int64)
        cdef int64_t[::1] o = out
        cdef int64_t acc = 0
        for j in range(n):
            o[j] = acc
            acc += self.sizes[j]
        o[n] = acc
        return out


# ----------------------------------------------------------------------------
# pairing a second tree with a model's parameters (Restructure.flatten)
# ----------------------------------------------------------------------------
cdef class ParamPairer:
    """Walk a model and a tree of the same structure in lock-step.

    For each parameter occurrence of the model (trainable numeric leaf, every tied
    position included, in destructure's order) the value the tree holds there goes to
    ``out``; ``None`` where the tree holds ``None`` (no gradient) at or above it.  Each
    value is checked against the layout: a float or complex NumPy array of the slot's
    shape (``ndims[slot]`` dimensions, read from ``dims`` at ``dim_starts[slot]``).
    ``dtypes`` collects the dtypes of the values.
    """
    cdef readonly list out
    cdef readonly dict dtypes
    cdef readonly Py_ssize_t nones
    cdef readonly bint swapped        # some value is not in native byte order
    cdef IdTable visiting
    cdef list shapes                  # slot -> expected shape, for messages
    cdef object occurrences           # occurrence -> slot; None when there is no tie
    cdef const int32_t[::1] ndims
    cdef const int64_t[::1] dims
    cdef const int64_t[::1] dim_starts
    cdef Py_ssize_t count, depth, last_type

    def __init__(self, list shapes, occurrences, const int32_t[::1] ndims,
                 const int64_t[::1] dims, const int64_t[::1] dim_starts):
        self.out = []
        self.dtypes = {}
        self.visiting = IdTable()
        self.shapes = shapes
        self.occurrences = occurrences
        self.ndims = ndims
        self.dims = dims
        self.dim_starts = dim_starts
        self.count = 0
        self.last_type = -1

    def run(self, model, tree):
        self.visit(model, tree)
        return self.out

    cdef void value(self, object t) except *:
        cdef Py_ssize_t i, nd, slot, start
        cdef int tn
        cdef cnp.npy_intp* shape
        slot = self.count if self.occurrences is None else <Py_ssize_t>self.occurrences[self.count]
        self.count += 1
        if t is None:
            self.out.append(None)
            self.nones += 1
            return
        if type(t) is not _ndarray or not _numeric_typenum(cnp.PyArray_TYPE(<cnp.ndarray>t)):
            what = f"dtype {t.dtype}" if isinstance(t, _ndarray) else f"a {type(t).__name__}"
            raise TreeError(TypeError, f"expected a float or complex array at {{path}}, got {what}.")
        nd = cnp.PyArray_NDIM(<cnp.ndarray>t)
        shape = cnp.PyArray_DIMS(<cnp.ndarray>t)
        start = self.dim_starts[slot]
        if nd != self.ndims[slot]:
            raise TreeError(ValueError,
                f"expected shape {self.shapes[slot]} at {{path}}, got {t.shape}.")
        for i in range(nd):
            if shape[i] != self.dims[start + i]:
                raise TreeError(ValueError,
                    f"expected shape {self.shapes[slot]} at {{path}}, got {t.shape}.")
        tn = cnp.PyArray_TYPE(<cnp.ndarray>t)
        if tn != self.last_type:
            self.last_type = tn
            if tn not in self.dtypes:
                self.dtypes[tn] = cnp.PyArray_DescrFromType(tn)
        if not cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>t):
            self.swapped = True
        self.out.append(t)

    cdef void visit(self, object m, object t) except *:
        cdef NodeDef d = lookup(m)
        if d.kind == K_LEAF:
            if isnumeric(m):
                self.value(t)
            return
        if d.cached:
            if self.visiting.get(m) != NULL:
                raise _cycle_error()
            self.visiting.put(m, None)
        self.depth += 1
        try:
            if self.depth % LEVELS_PER_STACK == 0:
                _on_fresh_stack(self.node_entry, d, m, t)
            else:
                self.node(d, m, t)
        finally:
            self.depth -= 1
        if d.cached:
            self.visiting.remove(m)

    def node_entry(self, NodeDef d, m, t):
        self.node(d, m, t)

    cdef bint same_shape_node(self, NodeDef d, object m, object t) except -1:
        """Dict/dict, sequence/sequence and same-record pairs, read in place; else False."""
        cdef int k = d.kind
        cdef Py_ssize_t i, n
        cdef object cur = _NOKEY
        cdef PyObject* got
        tt = type(t)
        try:
            if k == K_DICT and tt is dict:
                for kk, v in m.items():
                    got = PyDict_GetItem(t, kk)
                    if got == NULL:
                        raise TreeError(ValueError,
                            f"expected an entry {kk!r} like the model's {type(m).__name__} "
                            f"at {{path}}; the tree has {list(t)}.")
                    cur = kk
                    self.visit(v, <object>got)
                    cur = _NOKEY
                return True
            if (k == K_TUPLE or k == K_LIST) and (tt is tuple or tt is list):
                n = len(m)
                if len(t) != n:
                    return False
                for i in range(n):
                    cur = i
                    self.visit(m[i], t[i])
                cur = _NOKEY
                return True
            if k == K_RECORD and tt is type(m):
                for f in d.fields:
                    cur = f
                    self.visit(getattr(m, f), getattr(t, f))
                return True
        except BaseException as e:
            if cur is not _NOKEY:
                _annotate(e, cur, k == K_RECORD)
            raise
        return False

    cdef void node(self, NodeDef d, object m, object t) except *:
        cdef int k = d.kind
        cdef Py_ssize_t i, n
        cdef object cur = _NOKEY
        cdef bint attr = k == K_RECORD or k == K_NAMEDTUPLE
        if t is not None and not d.has_trainable and self.same_shape_node(d, m, t):
            return
        allowed = _trainable_names(d, m) if d.has_trainable else None
        if k == K_CUSTOM:
            mch = _custom_children(d, m)
            if type(mch) is dict:
                keys = list(mch)
                mvals = list(mch.values())
            else:
                keys = list(range(len(mch)))
                mvals = list(mch)
        elif k == K_DICT:
            keys = list(m.keys())
            mvals = list(m.values())
        elif k == K_RECORD:
            keys = list(d.fields)
            mvals = [getattr(m, f) for f in d.fields]
        elif k == K_NAMEDTUPLE:
            keys = list(d.fields)
            mvals = list(m)
        else:
            keys = None
            mvals = m
        n = len(mvals)
        if t is None:
            tvals = None
        elif keys is None or (k == K_CUSTOM and type(mch) is not dict):
            tvals = _by_position(d, m, t)
            if tvals is None:
                raise TreeError(TypeError,
                    f"expected a sequence like the model's {type(m).__name__} at {{path}}, "
                    f"got {type(t).__name__}.")
            if len(tvals) != n:
                raise TreeError(ValueError,
                    f"expected {n} children like the model's {type(m).__name__} at "
                    f"{{path}}, got {len(tvals)}.")
        else:
            tvals = self.keyed(d, m, t, keys, allowed)
        try:
            for i in range(n):
                cur = i if keys is None else keys[i]
                if allowed is not None and cur not in allowed:
                    continue
                if k == K_CUSTOM:
                    attr = _is_attr(d, cur)
                self.visit(mvals[i], None if tvals is None else tvals[i])
        except BaseException as e:
            if cur is not _NOKEY:
                _annotate(e, cur, attr)
            raise

    cdef list keyed(self, NodeDef d, object m, object t, list keys, object allowed):
        cdef NodeDef td = lookup(t)
        if td.kind == K_DICT:
            src = t
        elif td.kind == K_RECORD or td.kind == K_NAMEDTUPLE or (
                td.kind == K_CUSTOM and type(t) is type(m)):
            src = children(t)
        else:
            raise TreeError(TypeError,
                f"expected a dict or a {type(m).__name__} like the model at {{path}}, "
                f"got {type(t).__name__}.")
        vals = []
        for key in keys:
            if key in src:
                vals.append(src[key])
            elif allowed is not None and key not in allowed:
                vals.append(None)          # not trainable: a gradient need not mention it
            else:
                raise TreeError(ValueError,
                    f"expected an entry {key!r} like the model's {type(m).__name__} at "
                    f"{{path}}; the tree has {list(src)}.")
        return vals
