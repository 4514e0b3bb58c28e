"""DataLoader: SPEC Part B §3.6 cases 1-15, translated batch first (Part A.2).

Julia's ``X = reshape(1:10, 2, 5)`` (5 observations as columns) becomes ``X`` of shape
``(5, 2)`` with rows ``[1, 2], [3, 4], ...``; ``X[:, 1:2]`` becomes ``X[0:2]``.  The
``parallel``, ``buffer`` and ``num_workers`` options and ``mapobs`` are not provided;
``gpu(loader)`` belongs to the device module.
"""
from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest

import fluxtree as ft
from fluxtree.data import DataLoader, batch, summary

X = np.arange(1, 11).reshape(5, 2)
Y = np.arange(1, 6)


def batches(d):
    return list(d)


# ---------------------------------------------------------------------------
# SPEC §3.6 cases
# ---------------------------------------------------------------------------
def test_case01_batches_of_two():
    d = DataLoader(X, batchsize=2)
    got = batches(d)
    assert len(d) == 3 and len(got) == 3
    np.testing.assert_array_equal(got[0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(got[1], [[5, 6], [7, 8]])
    np.testing.assert_array_equal(got[2], [[9, 10]])
    assert all(isinstance(b, np.ndarray) and b.ndim == 2 for b in got)
    assert got[2].shape == (1, 2)


def test_case02_partial_false():
    d = DataLoader(X, batchsize=2, partial=False)
    got = batches(d)
    assert len(d) == 2 and len(got) == 2
    np.testing.assert_array_equal(got[0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(got[1], [[5, 6], [7, 8]])


def test_case03_one_tuple():
    got = batches(DataLoader((X,), batchsize=2, partial=False))
    assert len(got) == 2
    assert all(type(b) is tuple and len(b) == 1 for b in got)
    np.testing.assert_array_equal(got[0][0], X[0:2])
    np.testing.assert_array_equal(got[1][0], X[2:4])


def test_case04_tuple_of_two():
    got = batches(DataLoader((X, Y), batchsize=2))
    assert len(got) == 3
    for b, (i, j) in zip(got, [(0, 2), (2, 4), (4, 5)]):
        assert type(b) is tuple
        np.testing.assert_array_equal(b[0], X[i:j])
        np.testing.assert_array_equal(b[1], Y[i:j])
    np.testing.assert_array_equal(got[2][1], [5])
    assert got[2][0].shape == (1, 2)


def test_case05_namedtuple():
    XY = collections.namedtuple("XY", "x y")
    got = batches(DataLoader(XY(x=X, y=Y), batchsize=2))
    assert len(got) == 3 and all(type(b) is XY for b in got)
    np.testing.assert_array_equal(got[0].x, X[0:2])
    np.testing.assert_array_equal(got[0].y, [1, 2])


def test_case06_default_batchsize_one():
    d = DataLoader(np.zeros((10, 2)))
    got = batches(d)
    assert d.batchsize == 1 and len(got) == 10
    assert all(b.shape == (1, 2) for b in got)
    for x, y in DataLoader((np.ones((10, 2)), np.full(10, 5))):
        assert x.shape == (1, 2)
        np.testing.assert_array_equal(y, [5])


def test_case07_range_partial_false():
    got = batches(DataLoader(range(1, 13), batchsize=5, partial=False))
    assert [list(b) for b in got] == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]


def test_case08_range_first_batch():
    first = next(iter(DataLoader(range(1, 11), batchsize=2)))
    assert list(first) == [1, 2]


def test_case09_dict():
    rng = np.random.default_rng(0)
    data = {"x": rng.random((4, 2)), "y": rng.random(4)}
    got = batches(DataLoader(data, batchsize=2))
    assert len(got) == 2 and type(got[0]) is dict and list(got[0]) == ["x", "y"]
    np.testing.assert_array_equal(got[0]["x"], data["x"][0:2])
    np.testing.assert_array_equal(got[0]["y"], data["y"][0:2])


def test_case10_collate_false_true_none():
    M = np.arange(200).reshape(20, 10)
    lists = batches(DataLoader(M, batchsize=2, collate=False))
    assert len(lists) == 10
    for i, b in enumerate(lists):
        assert type(b) is list and len(b) == 2
        np.testing.assert_array_equal(b[0], M[2 * i])
        np.testing.assert_array_equal(b[1], M[2 * i + 1])
    stacked = batches(DataLoader(M, batchsize=2, collate=True))
    sliced = batches(DataLoader(M, batchsize=2, collate=None))
    for i in range(10):
        np.testing.assert_array_equal(stacked[i], M[2 * i: 2 * i + 2])
        np.testing.assert_array_equal(sliced[i], M[2 * i: 2 * i + 2])
        assert stacked[i].shape == sliced[i].shape == (2, 10)


def test_case11_custom_collate():
    def collate(obs):
        return np.stack([o[0] for o in obs]), "".join(o[1] for o in obs)

    data = (np.random.default_rng(0).random((4, 10)), ["a", "b", "c", "d"])
    x, s = next(iter(DataLoader(data, batchsize=2, collate=collate)))
    assert s == "ab" and x.shape == (2, 10)
    np.testing.assert_array_equal(x, data[0][0:2])


def test_case12_collate_join():
    d = DataLoader(["a", "b", "c", "d"], batchsize=2, collate="".join)
    assert next(iter(d)) == "ab"
    assert batches(d) == ["ab", "cd"]


def test_case13_int8_sizes():
    data = np.random.default_rng(0).integers(-128, 127, (64, 10), dtype=np.int8)
    got = batches(DataLoader(data, batchsize=30))
    assert [b.shape for b in got] == [(30, 10), (30, 10), (4, 10)]
    assert all(b.dtype == np.int8 for b in got)
    assert [summary(b) for b in got] == ["30×10 ndarray[int8]"] * 2 + ["4×10 ndarray[int8]"]


def test_case14_shuffle():
    data = np.arange(100).reshape(50, 2)

    def first(rng):
        return next(iter(DataLoader(data, batchsize=5, shuffle=True, rng=rng)))

    np.testing.assert_array_equal(first(np.random.default_rng(1)),
                                  first(np.random.default_rng(1)))
    np.testing.assert_array_equal(first(7), first(7))
    assert not np.array_equal(first(None), first(None))      # 1 in 50!/45! to fail
    d = DataLoader(range(1, 11), shuffle=True)
    pairs = list(zip(d, d))
    a = [b[0] for b, _ in pairs]
    c = [b[0] for _, b in pairs]
    assert sorted(a) == sorted(c) == list(range(1, 11))
    assert a != c


def test_case15_train_loop():
    theta = np.ones(2)
    d = DataLoader(np.zeros((10, 2)))
    for _epoch in range(10):
        for x in d:
            grad = 2 * (theta - x).sum(axis=0)      # d/dθ sum((x - θ)²)
            theta = theta - 0.1 * grad              # Descent(0.1)
    assert np.linalg.norm(theta) < 1e-4


# ---------------------------------------------------------------------------
# batch size, partial, single observations
# ---------------------------------------------------------------------------
def test_single_observations_with_nonpositive_batchsize():
    for bs in (0, -1):
        d = DataLoader((X, Y), batchsize=bs)
        got = batches(d)
        assert len(d) == 5 and len(got) == 5
        np.testing.assert_array_equal(got[0][0], [1, 2])
        assert got[0][0].shape == (2,) and got[4][1] == 5


def test_batchsize_larger_than_n_warns():
    with pytest.warns(UserWarning, match="decreasing the batch-size to 5"):
        d = DataLoader(X, batchsize=8)
    assert d.batchsize == 5 and len(d) == 1
    np.testing.assert_array_equal(next(iter(d)), X)


@pytest.mark.parametrize("n, bs", [(n, bs) for n, bs in itertools.product(range(12), range(1, 6))
                                    if n >= bs or n == 0])
def test_lengths(n, bs):
    full = DataLoader(np.arange(n), batchsize=bs)
    drop = DataLoader(np.arange(n), batchsize=bs, partial=False)
    assert len(full) == -(-n // bs) == len(batches(full))
    assert len(drop) == n // bs == len(batches(drop))
    assert [int(v) for b in batches(full) for v in b] == list(range(n))


def test_empty_data():
    d = DataLoader(np.zeros((0, 3)), batchsize=4)
    assert len(d) == 0 and batches(d) == []
    assert str(d) == "0-element DataLoader(ndarray, batchsize=4)"


def test_three_dimensional_arrays():
    imgs = np.arange(5 * 3 * 4).reshape(5, 3, 4)
    got = batches(DataLoader(imgs, batchsize=2))
    assert [b.shape for b in got] == [(2, 3, 4), (2, 3, 4), (1, 3, 4)]


def test_nested_containers():
    data = {"in": (X, Y), "w": np.ones(5)}
    b = next(iter(DataLoader(data, batchsize=2)))
    assert list(b) == ["in", "w"] and type(b["in"]) is tuple
    np.testing.assert_array_equal(b["in"][0], X[:2])
    np.testing.assert_array_equal(b["w"], [1, 1])


def test_sequence_data_strings():
    words = ["a", "b", "c", "d", "e"]
    assert batches(DataLoader(words, batchsize=2)) == [["a", "b"], ["c", "d"], ["e"]]
    assert batches(DataLoader(words, batchsize=-1)) == words


def test_dataset_class_without_slicing():
    class Squares:
        def __len__(self):
            return 5

        def __getitem__(self, k):
            if not isinstance(k, int):
                raise TypeError("integer index only")
            return k * k

    assert batches(DataLoader(Squares(), batchsize=2)) == [[0, 1], [4, 9], [16]]
    np.testing.assert_array_equal(next(iter(DataLoader(Squares(), batchsize=3, collate=True))),
                                  [0, 1, 4])
    got = batches(DataLoader(Squares(), batchsize=2, shuffle=True, rng=0))
    assert sorted(sum(got, [])) == [0, 1, 4, 9, 16]


# ---------------------------------------------------------------------------
# views, copies, shuffling
# ---------------------------------------------------------------------------
def test_unshuffled_batches_are_views():
    for b in DataLoader(X, batchsize=2):
        assert np.shares_memory(b, X)


def test_shuffled_batches_are_copies_and_cover_data():
    d = DataLoader((X, Y), batchsize=2, shuffle=True, rng=3)
    got = batches(d)
    xs = np.concatenate([b[0] for b in got])
    ys = np.concatenate([b[1] for b in got])
    assert not any(np.shares_memory(b[0], X) for b in got)
    assert sorted(ys.tolist()) == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(xs, X[ys - 1])               # rows stay paired


def test_new_order_every_epoch_and_reproducible():
    def orders(seed):
        d = DataLoader(np.arange(20), batchsize=4, shuffle=True, rng=np.random.default_rng(seed))
        return [np.concatenate(batches(d)).tolist() for _ in range(3)]

    a, b = orders(5), orders(5)
    assert a == b
    assert a[0] != a[1] or a[1] != a[2]
    assert all(sorted(o) == list(range(20)) for o in a)


def test_shuffle_draws_from_given_generator():
    g = np.random.default_rng(11)
    d = DataLoader(np.arange(10), batchsize=10, shuffle=True, rng=g)
    assert d.rng is g
    got = next(iter(d))
    np.testing.assert_array_equal(got, np.random.default_rng(11).permutation(10))


def test_iteration_does_not_mutate_loader():
    data = (X, Y)
    d = DataLoader(data, batchsize=2, shuffle=True, rng=0)
    before = (d.data, d.batchsize, d.shuffle, d.partial, d.collate, d.rng, len(d))
    batches(d)
    it1, it2 = iter(d), iter(d)
    first1, first2 = next(it1), next(it2)
    assert (d.data, d.batchsize, d.shuffle, d.partial, d.collate, d.rng, len(d)) == before
    assert d.data is data
    assert len(batches(it1)) == 2 and len(batches(it2)) == 2
    assert first1 is not first2


def test_two_simultaneous_iterations_differ():
    d = DataLoader(np.arange(30), batchsize=30, shuffle=True, rng=2)
    a, b = zip(*zip(d, d))
    assert not np.array_equal(a[0], b[0])


def test_rng_default_is_a_generator():
    d = DataLoader(X)
    assert isinstance(d.rng, np.random.Generator)
    assert isinstance(DataLoader(X, rng=4).rng, np.random.Generator)
    rs = np.random.RandomState(0)
    assert DataLoader(X, shuffle=True, rng=rs).rng is rs


def test_shuffled_single_observations():
    got = batches(DataLoader(range(6), batchsize=-1, shuffle=True, rng=1))
    assert sorted(got) == list(range(6)) and got != list(range(6))


# ---------------------------------------------------------------------------
# collate
# ---------------------------------------------------------------------------
def test_collate_true_fieldwise():
    XY = collections.namedtuple("XY", "x y")
    b = next(iter(DataLoader(XY(X, Y), batchsize=2, collate=True)))
    assert type(b) is XY
    np.testing.assert_array_equal(b.x, X[0:2])
    np.testing.assert_array_equal(b.y, [1, 2])
    d = next(iter(DataLoader({"x": X, "name": list("abcde")}, batchsize=3, collate=True)))
    np.testing.assert_array_equal(d["x"], X[0:3])
    assert d["name"] == ["a", "b", "c"]


def test_collate_false_tuples():
    b = next(iter(DataLoader((X, Y), batchsize=2, collate=False)))
    assert type(b) is list and len(b) == 2 and type(b[0]) is tuple
    np.testing.assert_array_equal(b[1][0], [3, 4])
    assert b[1][1] == 2


def test_collate_with_shuffle():
    got = batches(DataLoader(X, batchsize=2, shuffle=True, rng=0, collate=True))
    rows = np.concatenate(got)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, X.tolist()))
    assert [b.shape for b in got] == [(2, 2), (2, 2), (1, 2)]


def test_batch_helper():
    assert batch([]) == []
    np.testing.assert_array_equal(batch([1, 2, 3]), [1, 2, 3])
    got = batch([{"a": np.zeros(2)}, {"a": np.ones(2)}])
    assert got["a"].shape == (2, 2)


# ---------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------
def test_repr_lists_non_default_options():
    assert repr(DataLoader(X)) == "DataLoader(ndarray)"
    assert repr(DataLoader(X, batchsize=2)) == "DataLoader(ndarray, batchsize=2)"
    assert repr(DataLoader(X, batchsize=2, shuffle=True, partial=False)) == \
        "DataLoader(ndarray, shuffle=True, batchsize=2, partial=False)"
    assert repr(DataLoader(["a"], collate="".join)) == "DataLoader(list, collate=str.join)"
    assert repr(DataLoader(X, collate=True)) == "DataLoader(ndarray, collate=True)"
    assert repr(DataLoader(X, rng=1)) == "DataLoader(ndarray, rng=Generator(PCG64))"
    assert repr(DataLoader((X, Y))) == "DataLoader(tuple[ndarray, ndarray])"
    assert repr(DataLoader({"x": X, "y": range(5)})) == "DataLoader(dict[ndarray, range])"


def test_str_with_first_element():
    XY = collections.namedtuple("XY", "x y")
    d = DataLoader(XY(np.ones((10, 2)), np.arange(10)), batchsize=3)
    assert str(d) == (
        "4-element DataLoader(XY[ndarray, ndarray], batchsize=3)\n"
        "  with first element:\n"
        "  XY(x=3×2 ndarray[float64], y=3-element ndarray[int64])")
    assert str(DataLoader(X, batchsize=2)).splitlines()[-1] == "  2×2 ndarray[int64]"
    assert str(DataLoader(X, batchsize=-1)).splitlines()[-1] == "  2-element ndarray[int64]"
    assert str(DataLoader(range(4), batchsize=2)).splitlines()[-1] == "  2-element range"


def test_str_does_not_draw_from_rng():
    g = np.random.default_rng(0)
    d = DataLoader(X, batchsize=2, shuffle=True, rng=g)
    state = g.bit_generator.state
    str(d)
    assert g.bit_generator.state == state


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
def test_mismatched_lengths():
    with pytest.raises(ValueError, match=r"All data containers must have the same number of "
                                         r"observations, got 5 at \[0\], 4 at \[1\]\."):
        DataLoader((X, np.arange(4)))
    with pytest.raises(ValueError, match=r"got 5 at \['x'\], 3 at \['y'\]"):
        DataLoader({"x": X, "y": [1, 2, 3]})


@pytest.mark.parametrize("data, exc, match", [
    (3.0, TypeError, "DataLoader needs data with __len__ and __getitem__.*got float"),
    ((X, 3), TypeError, r"got int at \[1\]"),
    (np.float64(1.0), TypeError, "got float64"),
    (np.array(1.0), ValueError, "0-dimensional array at data"),
    ((), ValueError, "at least one data container"),
    ({}, ValueError, "at least one data container"),
])
def test_bad_data(data, exc, match):
    with pytest.raises(exc, match=match):
        DataLoader(data)


@pytest.mark.parametrize("kw, match", [
    ({"batchsize": 2.0}, "batchsize must be an int, got float"),
    ({"batchsize": True}, "batchsize must be an int, got bool"),
    ({"shuffle": 1}, "shuffle must be True or False, got int"),
    ({"partial": None}, "partial must be True or False, got NoneType"),
    ({"rng": "seed"}, "rng must be a numpy.random.Generator.*got str"),
    ({"collate": "stack"}, "collate must be None, True, False or a function.*got str"),
])
def test_bad_options(kw, match):
    with pytest.raises(TypeError, match=match):
        DataLoader(X, **kw)


def test_numpy_integer_batchsize():
    assert DataLoader(X, batchsize=np.int64(2)).batchsize == 2


def test_exported():
    assert ft.DataLoader is DataLoader


def test_backend_arrays(xp):
    data = xp.arange(10).reshape(5, 2)
    d = DataLoader((data, xp.arange(5)), batchsize=2)
    got = list(d)
    assert all(isinstance(b[0], type(data)) for b in got)
    assert [b[0].shape for b in got] == [(2, 2), (2, 2), (1, 2)]
    shuffled = list(DataLoader(data, batchsize=2, shuffle=True, rng=0))
    assert sorted(np.concatenate([xp.asnumpy(b) if xp is not np else b
                                  for b in shuffled])[:, 0].tolist()) == [0, 2, 4, 6, 8]
    stacked = next(iter(DataLoader(data, batchsize=2, collate=True)))
    assert isinstance(stacked, type(data)) and stacked.shape == (2, 2)
    assert summary(got[0]).startswith("(2×2 ")
