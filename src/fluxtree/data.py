"""Data: ``DataLoader``, an iterator over mini-batches (MLUtils' ``DataLoader``, batch first).

Observations lie along axis 0 of every array (``X`` of shape ``(n, features)`` holds ``n``
observations).  The data may be

* an array (NumPy, or anything with ``shape`` and NumPy-style indexing, such as CuPy);
* a tuple, namedtuple or dict of such containers, nested freely: every container is sliced in
  parallel, and a batch has the same structure as the data;
* any other object with ``__len__`` and ``__getitem__`` (a ``range``, a list of strings, a
  dataset class): the length is the number of observations.

How a batch is taken from one container (``idx`` the observation numbers of the batch):

================================  ======================  =============================
container                         in order                shuffled
================================  ======================  =============================
array                             ``x[i:j]`` (a view)     ``x[idx]`` (a copy)
list, range, str, other Sequence  ``x[i:j]``              ``[x[k] for k in idx]``
other object with ``__getitem__`` ``[x[k] for k in idx]`` ``[x[k] for k in idx]``
================================  ======================  =============================

A single observation is ``x[k]`` (axis 0 dropped).
"""
from __future__ import annotations

import collections.abc
import math
import operator
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["DataLoader", "DeviceLoader", "batch", "summary"]


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _is_container(x: Any) -> bool:
    """Tuples, namedtuples and dicts hold several data containers sliced in parallel."""
    return isinstance(x, (tuple, dict))


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "ndim") and not isinstance(x, np.generic)


def _path_text(path: tuple) -> str:
    return "".join(f"[{k!r}]" if isinstance(k, str) else f"[{k}]" for k in path) or "data"


def _items(x: Any) -> list[tuple[Any, Any]]:
    if isinstance(x, dict):
        return list(x.items())
    return list(enumerate(x))


def _numobs_all(x: Any, path: tuple, found: list[tuple[str, int]]) -> None:
    if _is_container(x):
        if len(x) == 0:
            raise ValueError(
                f"DataLoader needs at least one data container, got an empty "
                f"{type(x).__name__} at {_path_text(path)}.")
        for k, v in _items(x):
            _numobs_all(v, (*path, k), found)
        return
    if _is_array(x):
        if x.ndim == 0:
            raise ValueError(
                f"DataLoader needs observations along axis 0, got a 0-dimensional array at "
                f"{_path_text(path)}.")
        found.append((_path_text(path), int(x.shape[0])))
        return
    if not (hasattr(x, "__len__") and hasattr(x, "__getitem__")):
        raise TypeError(
            f"DataLoader needs data with __len__ and __getitem__ (an array, a tuple, "
            f"namedtuple or dict of them, or a sequence), got {type(x).__name__} at "
            f"{_path_text(path)}.")
    found.append((_path_text(path), len(x)))


def _numobs(data: Any) -> int:
    found: list[tuple[str, int]] = []
    _numobs_all(data, (), found)
    counts = {n for _, n in found}
    if len(counts) > 1:
        got = ", ".join(f"{n} at {p}" for p, n in found)
        raise ValueError(
            f"All data containers must have the same number of observations, got {got}.")
    return found[0][1]


def _rebuild(x: Any, values: list) -> Any:
    """A container like ``x`` (tuple, namedtuple, dict) holding ``values``."""
    if isinstance(x, dict):
        out = dict(zip(x.keys(), values))
        if type(x) is dict:
            return out
        try:
            return type(x)(out)
        except TypeError:
            return out
    if _is_namedtuple(x):
        return type(x)(*values)
    return tuple(values)


def _getobs(x: Any, k: int) -> Any:
    """Observation ``k`` of the data (axis 0 dropped)."""
    if _is_container(x):
        return _rebuild(x, [_getobs(v, k) for _, v in _items(x)])
    return x[k]


def _getrange(x: Any, i: int, j: int) -> Any:
    """Observations ``i:j`` in order: slices of arrays and sequences (views of arrays)."""
    if _is_container(x):
        return _rebuild(x, [_getrange(v, i, j) for _, v in _items(x)])
    if _is_array(x) or isinstance(x, collections.abc.Sequence):
        return x[i:j]
    return [x[k] for k in range(i, j)]


def _getindices(x: Any, idx: np.ndarray) -> Any:
    """Observations ``idx`` (an integer array): fancy indexing of arrays (a copy)."""
    if _is_container(x):
        return _rebuild(x, [_getindices(v, idx) for _, v in _items(x)])
    if _is_array(x):
        return x[idx]
    return [x[int(k)] for k in idx]


def _is_number(x: Any) -> bool:
    return isinstance(x, (bool, int, float, complex, np.generic))


def batch(observations: list) -> Any:
    """Stack a list of observations into one batch along a new axis 0 (MLUtils' ``batch``).

    Arrays are stacked with ``np.stack`` (which CuPy arrays take over); tuples, namedtuples
    and dicts are batched field by field; numbers become a 1-D array; a list of anything else
    is returned as it is.

    >>> import numpy as np
    >>> batch([np.array([1, 2]), np.array([3, 4])])
    array([[1, 2],
           [3, 4]])
    >>> batch([(np.zeros(2), 0), (np.ones(2), 1)])
    (array([[0., 0.],
           [1., 1.]]), array([0, 1]))
    >>> batch(["a", "b"])
    ['a', 'b']
    """
    if not observations:
        return observations
    first = observations[0]
    if _is_container(first):
        keys = [k for k, _ in _items(first)]
        return _rebuild(first, [batch([o[k] for o in observations]) for k in keys])
    if _is_array(first):
        return np.stack(observations)
    if all(_is_number(o) for o in observations):
        return np.asarray(observations)
    return observations


def _type_text(x: Any) -> str:
    """The type of the data, with the types of the containers inside a tuple or dict."""
    if isinstance(x, np.ndarray):
        return type(x).__name__
    if _is_container(x):
        inner = ", ".join(_type_text(v) for _, v in _items(x))
        return f"{type(x).__name__}[{inner}]"
    mod = type(x).__module__.split(".", 1)[0]
    if mod in ("builtins", "numpy", "__main__"):
        return type(x).__name__
    return f"{mod}.{type(x).__name__}"


def summary(x: Any) -> str:
    """A one-line description of a batch: shapes and dtypes instead of values.

    Arrays read ``2×3 ndarray[float64]`` (``3-element`` for 1-D, ``0-dimensional`` for 0-D;
    other backends are named with their module, ``cupy.ndarray``); tuples, namedtuples and
    dicts show the summary of each field in their own syntax; objects with a length read
    ``4-element list``; anything else gives its type name.

    >>> import collections, numpy as np
    >>> summary(np.zeros((2, 3)))
    '2×3 ndarray[float64]'
    >>> Batch = collections.namedtuple("Batch", "x y")
    >>> summary(Batch(np.zeros((2, 3)), np.arange(3)))
    'Batch(x=2×3 ndarray[float64], y=3-element ndarray[int64])'
    >>> summary({"x": np.zeros((2, 3), dtype=np.float32), "label": ["a", "b"]})
    "{'x': 2×3 ndarray[float32], 'label': 2-element list}"
    >>> summary((range(2),))
    '(2-element range,)'
    """
    if _is_namedtuple(x):
        return f"{type(x).__name__}(" + ", ".join(
            f"{f}={summary(v)}" for f, v in zip(type(x)._fields, x)) + ")"
    if isinstance(x, tuple):
        parts = [summary(v) for v in x]
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k!r}: {summary(v)}" for k, v in x.items()) + "}"
    name = _type_text(x)
    if _is_array(x) and hasattr(x, "dtype"):
        shape = tuple(x.shape)
        if len(shape) == 0:
            size = "0-dimensional"
        elif len(shape) == 1:
            size = f"{shape[0]}-element"
        else:
            size = "×".join(str(s) for s in shape)
        return f"{size} {name}[{x.dtype}]"
    if hasattr(x, "__len__") and not isinstance(x, (str, bytes)):
        try:
            return f"{len(x)}-element {name}"
        except TypeError:
            pass
    return name


def _make_rng(rng: Any) -> np.random.Generator | np.random.RandomState:
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, (np.random.Generator, np.random.RandomState)):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(
        f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}.")


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}.")
    return bool(value)


class DataLoader:
    """An iterable over mini-batches of ``data``, observations along axis 0.

    Each item is a batch of ``batchsize`` observations taken from every container of
    ``data`` in parallel (see the module docstring): ``X[0:2]``, ``X[2:4]``, ... for an array,
    with axis 0 kept even for a batch of one; a tuple / namedtuple / dict of such batches for a
    tuple / namedtuple / dict of containers.  With ``batchsize <= 0`` each item is a single
    observation ``X[k]`` (axis 0 dropped, and ``collate`` unused).  When there are fewer
    observations ``n`` than ``batchsize``, a ``UserWarning`` says so and ``batchsize`` becomes
    ``n``.

    Parameters
    ----------
    data
        An array, a tuple / namedtuple / dict of containers (all with the same number of
        observations, else ``ValueError``), or any object with ``__len__`` and
        ``__getitem__``.  Kept as it is: ``loader.data is data``.
    batchsize : int, default 1
        Observations per batch; ``<= 0`` for single observations.
    shuffle : bool, default False
        Draw a new random order of the observations at the start of every iteration
        (every ``for`` loop, every ``iter(loader)``), from ``rng``.  Iterating changes
        nothing in the loader but the state of ``rng``, so two iterations at once (``zip(d,
        d)``) see different orders.  Shuffled array batches are fancy-indexed copies; batches
        in order are slices (views of the data).
    partial : bool, default True
        Keep the last batch when it is smaller than ``batchsize`` (``False`` drops it).
        ``len(loader)`` is ``ceil(n / batchsize)`` or ``floor(n / batchsize)``.
    rng : numpy.random.Generator, int or None
        The random generator used for shuffling (and only for that); an int seeds a new
        ``np.random.default_rng``; ``None`` makes a fresh, unseeded one.
    collate : None, bool or callable, default None
        ``None``: slice every container (above).  ``False``: a batch is the list of its
        single observations.  ``True``: those observations stacked along a new axis 0
        (``np.stack``; tuples and dicts field by field; see ``batch``).  A callable: applied
        to the list of observations.

    Printing follows Flux: ``repr`` names the type of the data and the options that differ
    from their defaults; ``str`` adds the number of batches and a ``summary`` of the first
    one (shapes and dtypes; for a shuffled loader the first batch in order, so that printing
    never draws from ``rng``).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.arange(10).reshape(5, 2)
    >>> d = DataLoader(X, batchsize=2)
    >>> len(d), [b.shape for b in d]
    (3, [(2, 2), (2, 2), (1, 2)])
    >>> d
    DataLoader(ndarray, batchsize=2)
    >>> print(DataLoader((X, np.arange(5)), batchsize=2, partial=False))
    2-element DataLoader(tuple[ndarray, ndarray], batchsize=2, partial=False)
      with first element:
      (2×2 ndarray[int64], 2-element ndarray[int64])
    >>> [list(b) for b in DataLoader(range(5), batchsize=2, shuffle=True, rng=0)]
    [[2, 4], [3, 0], [1]]
    """

    __slots__ = ("data", "batchsize", "shuffle", "partial", "rng", "collate", "nobs",
                 "_rng_given")

    data: Any
    batchsize: int
    shuffle: bool
    partial: bool
    rng: np.random.Generator | np.random.RandomState
    collate: bool | Callable[[list], Any] | None
    nobs: int
    _rng_given: bool

    def __init__(self, data: Any, batchsize: int = 1, shuffle: bool = False,
                 partial: bool = True, rng: Any = None,
                 collate: bool | Callable[[list], Any] | None = None) -> None:
        if isinstance(batchsize, (bool, np.bool_)):
            raise TypeError("batchsize must be an int, got bool.")
        try:
            bs = operator.index(batchsize)
        except TypeError:
            raise TypeError(
                f"batchsize must be an int, got {type(batchsize).__name__}.") from None
        shuffle = _check_bool("shuffle", shuffle)
        partial = _check_bool("partial", partial)
        if not (collate is None or isinstance(collate, bool) or callable(collate)):
            raise TypeError(
                f"collate must be None, True, False or a function of the list of "
                f"observations, got {type(collate).__name__}.")
        n = _numobs(data)
        if 0 < n < bs:
            warnings.warn(
                f"Number of observations less than batch-size, decreasing the batch-size "
                f"to {n}.", UserWarning, stacklevel=2)
            bs = n
        self.data = data
        self.batchsize = bs
        self.shuffle = shuffle
        self.partial = partial
        self._rng_given = rng is not None
        self.rng = _make_rng(rng)
        self.collate = collate
        self.nobs = n

    def __len__(self) -> int:
        n, bs = self.nobs, self.batchsize
        if bs <= 0:
            return n
        return math.ceil(n / bs) if self.partial else n // bs

    def __iter__(self) -> Iterator[Any]:
        order = self.rng.permutation(self.nobs) if self.shuffle else None
        return self._batches(order)

    def _batches(self, order: np.ndarray | None) -> Iterator[Any]:
        data, n, bs = self.data, self.nobs, self.batchsize
        if bs <= 0:
            for k in range(n):
                yield _getobs(data, k if order is None else int(order[k]))
            return
        for b in range(len(self)):
            i, j = b * bs, min((b + 1) * bs, n)
            if self.collate is None:
                if order is None:
                    yield _getrange(data, i, j)
                else:
                    yield _getindices(data, order[i:j])
                continue
            ks = range(i, j) if order is None else (int(k) for k in order[i:j])
            obs = [_getobs(data, k) for k in ks]
            if self.collate is False:
                yield obs
            elif self.collate is True:
                yield batch(obs)
            else:
                yield self.collate(obs)

    def _options(self) -> list[str]:
        opts = []
        if self.shuffle:
            opts.append("shuffle=True")
        if self.batchsize != 1:
            opts.append(f"batchsize={self.batchsize}")
        if not self.partial:
            opts.append("partial=False")
        if self.collate is not None:
            c = self.collate
            text = repr(c) if isinstance(c, bool) else getattr(c, "__qualname__", repr(c))
            opts.append(f"collate={text}")
        if self._rng_given:
            rng = self.rng
            if isinstance(rng, np.random.Generator):
                opts.append(f"rng=Generator({type(rng.bit_generator).__name__})")
            else:
                opts.append(f"rng={type(rng).__name__}")
        return opts

    def __repr__(self) -> str:
        return f"DataLoader({', '.join([_type_text(self.data), *self._options()])})"

    def __str__(self) -> str:
        text = f"{len(self)}-element {self!r}"
        if len(self) == 0:
            return text
        first = next(self._batches(None))
        return f"{text}\n  with first element:\n  {summary(first)}"

    def __fluxtree_device__(self, move: Callable[[Any], Any]) -> DeviceLoader:
        """``gpu(loader)`` / ``cpu(loader)``: the loader with each batch moved as it is made."""
        return DeviceLoader(self, move)


class DeviceLoader:
    """A ``DataLoader`` whose batches are moved to a device as they are produced: what
    ``fluxtree.gpu(loader)`` and ``fluxtree.cpu(loader)`` return.

    Same length, batches and shuffling as ``loader`` (a new order every epoch); each batch is
    ``move(batch)`` (``fluxtree.gpu`` or ``fluxtree.cpu``), made only when the iteration asks
    for it.  The data stay where they are, and no reference to an earlier batch is kept, so a
    GPU batch's memory goes back to CuPy's pool as soon as the loop moves on to the next one
    (unless the caller keeps it).  Moving a ``DeviceLoader`` again replaces ``move``.

    Examples
    --------
    >>> import numpy as np
    >>> moved = []
    >>> def tenfold(b):
    ...     moved.append(b.tolist())
    ...     return b * 10
    >>> d = DeviceLoader(DataLoader(np.arange(5), batchsize=2), tenfold)
    >>> len(d), moved
    (3, [])
    >>> it = iter(d)
    >>> next(it), moved
    (array([ 0, 10]), [[0, 1]])
    >>> d
    tenfold(DataLoader(ndarray, batchsize=2))
    """

    __slots__ = ("loader", "move")

    loader: DataLoader
    move: Callable[[Any], Any]

    def __init__(self, loader: DataLoader, move: Callable[[Any], Any]) -> None:
        if not isinstance(loader, DataLoader):
            raise TypeError(f"DeviceLoader needs a DataLoader, got {type(loader).__name__}.")
        if not callable(move):
            raise TypeError(f"DeviceLoader needs a callable move, got {type(move).__name__}.")
        self.loader = loader
        self.move = move

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        move = self.move
        for b in self.loader:
            yield move(b)

    def __fluxtree_device__(self, move: Callable[[Any], Any]) -> DeviceLoader:
        return DeviceLoader(self.loader, move)

    def __repr__(self) -> str:
        name = getattr(self.move, "__name__", type(self.move).__name__)
        return f"{name}({self.loader!r})"

    def __str__(self) -> str:
        text = f"{len(self)}-element {self!r}"
        if len(self) == 0:
            return text
        first = self.move(next(self.loader._batches(None)))
        return f"{text}\n  with first element:\n  {summary(first)}"
