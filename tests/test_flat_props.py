"""Property tests of destructure / Restructure on random models.

Random nested trees of tuples, lists, dicts, namedtuples, records (``@functor`` classes,
dataclasses, a record whose ``trainable()`` narrows its children) hold random
float16/32/64 and complex64/128 arrays of random shapes (0-d and size 0 included, some
F-ordered or strided), random non-parameter leaves, and random ties (an array or a whole
subtree reached twice).  Checked: ``re(flat)`` gives the model back leaf by leaf (dtypes,
shapes, values; ties as ties; everything else the same objects), ``re.flatten(model)``
is ``flat``, ``destructure(re(v))[0]`` is ``v`` projected through the leaf dtypes, the
``copy=False`` round trip, and ``flat.dtype == np.result_type(*params)``.
"""
from __future__ import annotations

import collections
import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import fluxtree as ft
from tests.helpers import FrozenPoint, NormLike, Point
from tests.helpers import Foo as Rec

NT = collections.namedtuple("NT", "p q")

DTYPES = [np.float16, np.float32, np.float64, np.complex64, np.complex128]
OTHER_LEAVES = [None, "relu", 3, 2.5, True, np.sin, len, (), b"x"]


def _values(rng, shape, dtype):
    """Small integers (exact in float16), imaginary parts for complex dtypes."""
    a = rng.integers(-40, 40, size=shape).astype(np.float64)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.integers(-40, 40, size=shape)
    return a.astype(dtype)


@st.composite
def param(draw, rng):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    a = _values(rng, shape, dtype)
    if layout == "F":
        a = np.asfortranarray(a)
    elif layout == "strided" and a.ndim:
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype)
        big[..., ::2] = a
        a = big[..., ::2]                          # a view of a buffer nobody else uses
    return a


@st.composite
def other_leaf(draw, rng):
    kind = draw(st.integers(0, len(OTHER_LEAVES) + 2))
    if kind == len(OTHER_LEAVES):
        return rng.integers(0, 9, size=draw(st.integers(0, 3)))        # int array
    if kind == len(OTHER_LEAVES) + 1:
        return np.array([True, False])
    if kind == len(OTHER_LEAVES) + 2:
        return np.float64(1.5)                                         # a NumPy scalar
    return OTHER_LEAVES[kind]


@st.composite
def models(draw, max_depth=4):
    """A random model; returns it with the list of its (unique) parameter arrays."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    params: list = []
    subtrees: list = []

    def node(depth):
        choice = draw(st.integers(0, 11 if depth < max_depth else 3))
        if choice <= 1:
            if params and draw(st.integers(0, 3)) == 0:
                return draw(st.sampled_from(params))                  # a tied array
            p = draw(param(rng))
            params.append(p)
            return p
        if choice == 2:
            return draw(other_leaf(rng))
        if choice == 3 and subtrees:
            return draw(st.sampled_from(subtrees))                    # a shared subtree
        n = draw(st.integers(0, 3))
        kids = [node(depth + 1) for _ in range(n)]
        kind = choice % 8
        if kind == 0:
            out = tuple(kids)
        elif kind == 1:
            out = list(kids)
        elif kind == 2:
            out = {f"k{i}": c for i, c in enumerate(kids)}
        elif kind == 3:
            out = NT(node(depth + 1), node(depth + 1))
        elif kind == 4:
            out = Rec(node(depth + 1), node(depth + 1))
        elif kind == 5:
            out = Point(node(depth + 1), node(depth + 1))
        elif kind == 6:
            out = FrozenPoint(node(depth + 1), node(depth + 1))
        else:
            out = NormLike(node(depth + 1), node(depth + 1), node(depth + 1),
                           node(depth + 1), draw(other_leaf(rng)))
        subtrees.append(out)
        return out

    return node(0)


def destructure_quiet(model):
    """destructure, failing on any warning (random models never alias memory)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return ft.destructure(model)


def check_rebuilt(model, rebuilt, ties: dict, values=None):
    """``rebuilt`` has ``model``'s structure; trainable arrays are new arrays of the same
    dtype and shape (holding ``values[id(param)]``, default the param's own values);
    everything else is the same object.  ``ties`` collects id(param) -> id(new array)."""
    assert type(rebuilt) is type(model)
    if ft.isleaf(model):
        if ft.isnumeric(model):
            assert isinstance(rebuilt, np.ndarray)
            assert rebuilt.dtype == model.dtype and rebuilt.shape == model.shape
            expected = model if values is None else values[id(model)]
            np.testing.assert_array_equal(rebuilt, expected)
            assert ties.setdefault(id(model), id(rebuilt)) == id(rebuilt)   # tie kept
        else:
            assert rebuilt is model
        return
    ch, rch, tr = ft.children(model), ft.children(rebuilt), ft.trainable(model)
    assert type(rch) is type(ch) and len(rch) == len(ch)
    keys = list(ch) if isinstance(ch, dict) else range(len(ch))
    if isinstance(ch, dict):
        assert list(rch) == list(ch)
    for k in keys:
        if isinstance(tr, dict) and k not in tr:
            assert rch[k] is ch[k]                      # non-trainable: carried over
        else:
            check_rebuilt(ch[k], rch[k], ties, values)


def check_ties(ties: dict, params: list):
    assert set(ties) <= {id(p) for p in params}
    assert len(set(ties.values())) == len(ties)          # different params stay different
    assert not set(ties.values()) & {id(p) for p in params}  # all new arrays


def project(v, layout, flat_dtype):
    """``v`` as the rebuilt leaves hold it, read back at the flat dtype."""
    out = np.empty(len(v), flat_dtype)
    for j, p in enumerate(layout.params):
        lo, hi = layout.offsets[j], layout.offsets[j + 1]
        part = v[lo:hi]
        if p.dtype.kind != "c" and part.dtype.kind == "c":
            part = part.real
        out[lo:hi] = part.astype(p.dtype)
    return out


def slice_values(v, layout):
    """id(param) -> the values its rebuilt array must hold: its slice of ``v``, projected."""
    out = {}
    for j, p in enumerate(layout.params):
        part = v[layout.offsets[j]:layout.offsets[j + 1]].reshape(p.shape)
        if p.dtype.kind != "c" and part.dtype.kind == "c":
            part = part.real
        out[id(p)] = part.astype(p.dtype)
    return out


def random_vector(seed, n, dtype):
    rng = np.random.default_rng(seed)
    v = rng.integers(-60, 60, size=n).astype(np.float64)
    if np.dtype(dtype).kind == "c":
        v = v + 1j * rng.integers(-60, 60, size=n)
    return v.astype(dtype)


# ----------------------------------------------------------------------------------------
@given(models())
def test_round_trip_restores_the_model(model):
    flat, re = destructure_quiet(model)
    params = ft.trainables(model)
    assert flat.ndim == 1 and flat.size == len(re) == sum(p.size for p in params)
    ties: dict = {}
    check_rebuilt(model, re(flat), ties)
    check_ties(ties, params)
    assert set(ties) == {id(p) for p in params}


@given(models())
def test_flat_dtype_is_result_type_of_the_params(model):
    flat, re = destructure_quiet(model)
    params = ft.trainables(model)
    expected = np.result_type(*params) if params else np.dtype(np.float32)
    assert flat.dtype == expected == re.dtype


@given(models())
def test_flat_is_the_params_in_c_order(model):
    flat, re = destructure_quiet(model)
    params = ft.trainables(model)
    expected = (np.concatenate([p.ravel(order="C").astype(flat.dtype) for p in params])
                if params else np.zeros(0, np.float32))
    np.testing.assert_array_equal(flat, expected)
    assert [p is q for p, q in zip(re.layout.params, params)] == [True] * len(params)
    assert len(re.paths) == len(params)
    for path, p in zip(re.paths, params):
        assert ft.getkeypath(model, path) is p


@given(models())
def test_flatten_of_the_model_is_flat(model):
    flat, re = destructure_quiet(model)
    out = re.flatten(model)
    assert out.dtype == flat.dtype
    np.testing.assert_array_equal(out, flat)
    buf = np.full(len(re), 99, flat.dtype if flat.dtype.kind in "fc" else np.float64)
    assert re.flatten(model, out=buf) is buf
    np.testing.assert_array_equal(buf, flat)


@given(models(), st.integers(0, 2 ** 32 - 1), st.sampled_from(DTYPES + [np.int64]))
def test_destructure_of_rebuild_is_v_projected(model, seed, vdtype):
    flat, re = destructure_quiet(model)
    v = random_vector(seed, len(re), vdtype)
    v_before = v.copy()
    rebuilt = re(v)
    np.testing.assert_array_equal(v, v_before)                   # v is not modified
    flat2, re2 = destructure_quiet(rebuilt)
    assert flat2.dtype == flat.dtype
    np.testing.assert_array_equal(flat2, project(v, re.layout, flat.dtype))
    assert len(re2) == len(re)
    # the model is untouched
    np.testing.assert_array_equal(re.flatten(model), flat)


@given(models(), st.integers(0, 2 ** 32 - 1))
def test_rebuild_then_flatten_with_the_same_layout(model, seed):
    flat, re = destructure_quiet(model)
    v = random_vector(seed, len(re), flat.dtype)
    np.testing.assert_array_equal(re.flatten(re(v)), project(v, re.layout, flat.dtype))


@given(models(), st.integers(0, 2 ** 32 - 1))
def test_rebuilt_values_come_from_their_slices(model, seed):
    flat, re = destructure_quiet(model)
    v = random_vector(seed, len(re), flat.dtype)
    lay = re.layout
    values = slice_values(v, lay)
    ties: dict = {}
    check_rebuilt(model, re(v), ties, values)
    check_ties(ties, lay.params)


@given(models(), st.integers(0, 2 ** 32 - 1))
def test_copy_false_round_trip(model, seed):
    flat, re = destructure_quiet(model)
    v = random_vector(seed, len(re), flat.dtype)
    lay = re.layout
    values = slice_values(v, lay)
    rebuilt = re(v, copy=False)
    ties: dict = {}
    check_rebuilt(model, rebuilt, ties, values)
    new = ft.trainables(rebuilt)
    assert len(new) == len(lay.params)
    for p, q in zip(lay.params, new):
        if q.size:
            assert np.shares_memory(q, v) == (p.dtype == v.dtype)
    before = re.flatten(rebuilt)
    np.testing.assert_array_equal(before, project(v, lay, v.dtype))
    # writing through the vector shows up in the views, not in the copies
    viewed = np.zeros(len(v), bool)
    for j, p in enumerate(lay.params):
        viewed[lay.offsets[j]:lay.offsets[j + 1]] = p.dtype == v.dtype
    v += 1
    np.testing.assert_array_equal(re.flatten(rebuilt), np.where(viewed, before + 1, before))


@given(models(), st.integers(0, 2 ** 32 - 1))
def test_flatten_of_rebuilt_trees_sums_ties(model, seed):
    """Packing a tree with a fresh array at every parameter position (as a gradient has):
    tied positions add up, each slot is the sum of its positions."""
    flat, re = destructure_quiet(model)
    lay = re.layout
    rng = np.random.default_rng(seed)
    drawn: list = []

    def fresh(p):
        g = _values(rng, p.shape, p.dtype)
        drawn.append((id(p), g))
        return g

    grad = _fresh_tree(model, fresh)
    expected = np.zeros(len(re), np.result_type(flat.dtype, *[g for _, g in drawn]))
    slot = {id(p): j for j, p in enumerate(lay.params)}
    for pid, g in drawn:
        if pid in slot:
            j = slot[pid]
            expected[lay.offsets[j]:lay.offsets[j + 1]] += g.ravel()
    np.testing.assert_array_equal(re.flatten(grad), expected)


def _fresh_tree(model, fresh):
    """``model`` with a new array at every trainable numeric position (no cache), None
    elsewhere, records as dicts."""
    if ft.isleaf(model):
        return fresh(model) if ft.isnumeric(model) else None
    ch, tr = ft.children(model), ft.trainable(model)
    if isinstance(ch, dict):
        return {k: _fresh_tree(v, fresh) if k in tr else "junk" for k, v in ch.items()}
    return type(ch)(_fresh_tree(v, fresh) for v in ch)          # a list stays a list


@settings(max_examples=30)
@given(st.lists(st.sampled_from(DTYPES), min_size=0, max_size=6))
def test_result_type_of_any_dtype_mix(dtypes):
    model = [np.ones(2, d) for d in dtypes]
    flat, re = destructure_quiet(model)
    assert flat.dtype == (np.result_type(*dtypes) if dtypes else np.float32)
    r = re(flat)
    assert [a.dtype for a in r] == [np.dtype(d) for d in dtypes]
