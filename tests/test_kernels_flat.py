"""Oracle and property tests for the pack/scatter kernels (fluxtree._kernels._flat)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxtree._kernels import _flat

DTYPES = [np.float16, np.float32, np.float64, np.complex64, np.complex128]
DST_DTYPES = DTYPES
ORDERS = ["C", "F", "strided", "reversed", "0-d", "empty"]


def _values(rng, shape, dtype):
    a = np.asarray(rng.standard_normal(shape) * 10.0)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * np.asarray(rng.standard_normal(shape) * 10.0)
    return np.asarray(a).astype(dtype)


def _leaf(rng, dtype, order):
    if order == "C":
        return _values(rng, (3, 5), dtype)
    if order == "F":
        return np.asfortranarray(_values(rng, (4, 3, 2), dtype))
    if order == "strided":
        return _values(rng, (4, 9), dtype)[1:, ::2]
    if order == "reversed":
        return _values(rng, (3, 4, 5), dtype)[::-1, :, 3:0:-2].transpose(2, 0, 1)
    if order == "0-d":
        return _values(rng, (), dtype)
    return _values(rng, (3, 0, 2), dtype)


def _cast(a, dtype):
    """NumPy oracle: ravel in C order, keep the real part for complex -> real."""
    a = np.ravel(a, order="C")
    if a.dtype.kind == "c" and np.dtype(dtype).kind != "c":
        a = a.real
    return np.asarray(a).astype(dtype)


def _offsets(leaves):
    sizes = [leaf.size for leaf in leaves]
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64), sum(sizes)


def _grid_leaves(src):
    rng = np.random.default_rng(1234)
    return [_leaf(rng, src, order) for order in ORDERS]


@pytest.mark.parametrize("dst", DST_DTYPES)
@pytest.mark.parametrize("src", DTYPES)
def test_gather_oracle(src, dst):
    leaves = _grid_leaves(src)
    offsets, total = _offsets(leaves)
    out = np.full(total, 7, dst)
    _flat.gather(leaves, offsets, out)
    np.testing.assert_array_equal(out, np.concatenate([_cast(a, dst) for a in leaves]))


@pytest.mark.parametrize("dst", DST_DTYPES)
@pytest.mark.parametrize("src", DTYPES)
def test_gather_add_oracle(src, dst):
    leaves = _grid_leaves(src)
    offsets, total = _offsets(leaves)
    start = _values(np.random.default_rng(5), total, dst)
    out = start.copy()
    _flat.gather_add(leaves, offsets, out)
    expected = start + np.concatenate([_cast(a, dst) for a in leaves])
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dst", DST_DTYPES)
@pytest.mark.parametrize("src", DTYPES)
def test_scatter_oracle(src, dst):
    shapes = [(3, 5), (4, 3, 2), (), (3, 0, 2), (7,)]
    outs = [np.full(shape, 7, dst) for shape in shapes]
    offsets, total = _offsets(outs)
    v = _values(np.random.default_rng(9), total + 3, src)
    offsets = offsets + 2  # start away from v[0]
    _flat.scatter(v, offsets, outs)
    for o, off in zip(outs, offsets):
        np.testing.assert_array_equal(o, _cast(v[off : off + o.size], dst).reshape(o.shape))


def test_gather_add_tied_offsets_sum_in_order():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((3, 2), np.float64).T
    out = np.zeros(8, np.float32)
    _flat.gather_add([a, b, a], np.array([0, 0, 2], np.int64), out)
    expected = np.zeros(8, np.float32)
    expected[0:6] += a.ravel()
    expected[0:6] += 1
    expected[2:8] += a.ravel()
    np.testing.assert_array_equal(out, expected)


def test_gather_leaves_untouched_elements_alone():
    out = np.full(10, -1.0)
    _flat.gather([np.ones(2), np.ones((2, 1))], np.array([1, 6], np.int64), out)
    np.testing.assert_array_equal(out, [-1, 1, 1, -1, -1, -1, 1, 1, -1, -1])


def test_empty_lists_are_noops():
    out = np.zeros(3)
    _flat.gather([], np.zeros(0, np.int64), out)
    _flat.gather_add([], np.zeros(0, np.int64), out)
    _flat.scatter(out, np.zeros(0, np.int64), [])
    np.testing.assert_array_equal(out, 0)


def test_complex_to_real_is_silent_real_part():
    v = np.array([1 + 2j, 3 - 4j], np.complex128)
    o = np.empty(2, np.float32)
    _flat.scatter(v, np.zeros(1, np.int64), [o])  # filterwarnings=error: no ComplexWarning
    np.testing.assert_array_equal(o, [1, 3])


def test_real_to_complex_add_keeps_imaginary_part():
    out = np.array([1 + 1j, 2 + 2j], np.complex64)
    _flat.gather_add([np.array([10.0, 20.0])], np.zeros(1, np.int64), out)
    np.testing.assert_array_equal(out, [11 + 1j, 22 + 2j])


def test_float16_rounding_and_specials_match_numpy():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(200_000) * 10.0 ** rng.integers(-9, 6, 200_000)
    tie = 2.0**-24 * np.array([0.5, 1.5, 2.5, 1.0000001 * 0.5])  # subnormal ties
    edge = [65504.0, 65519.99, 65520.0, 2.0**-14, -0.0, np.inf, -np.inf, np.nan, 1e-300, 1e300]
    x = np.concatenate([x, tie, -tie, edge])
    for dtype in (np.float64, np.float32):
        with np.errstate(over="ignore"):
            xs = x.astype(dtype)
            expected = xs.astype(np.float16)
        out = np.empty(x.size, np.float16)
        _flat.gather([xs], np.zeros(1, np.int64), out)
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(np.signbit(out), np.signbit(expected))
    every_half = np.arange(2**16, dtype=np.uint16).view(np.float16)
    out = np.empty(every_half.size, np.float64)
    _flat.gather([every_half], np.zeros(1, np.int64), out)
    np.testing.assert_array_equal(out, every_half.astype(np.float64))


@pytest.mark.parametrize("nthreads", [0, 2, 3])
def test_big_parallel_gather_scatter_exact(nthreads):
    """A few MB of output takes the OpenMP path; slice borders fall inside strided leaves."""
    assert 2_000_000 * 4 > _flat.PARALLEL_MIN_BYTES
    rng = np.random.default_rng(11)
    leaves = [
        rng.standard_normal((700, 1001)).astype(np.float32),
        np.asfortranarray(rng.standard_normal((999, 701))),  # float64, F order
        rng.standard_normal((300, 2000)).astype(np.float32)[::-1, ::3],
        (rng.standard_normal((321, 17)) + 1j).astype(np.complex64).T,
        rng.standard_normal(5).astype(np.float16),
    ]
    offsets, total = _offsets(leaves)
    out = np.empty(total, np.float64)
    _flat.gather(leaves, offsets, out, nthreads=nthreads)
    expected = np.concatenate([_cast(a, np.float64) for a in leaves])
    np.testing.assert_array_equal(out, expected)

    tied = np.zeros(total, np.float64)
    _flat.gather_add(leaves + leaves[:2], np.concatenate([offsets, offsets[:2]]), tied, nthreads=nthreads)
    twice = expected.copy()
    twice[: offsets[2]] *= 2
    np.testing.assert_array_equal(tied, twice)

    outs = [np.empty(a.shape, a.dtype) for a in leaves]
    _flat.scatter(out, offsets, outs, nthreads=nthreads)
    for o, a in zip(outs, leaves):
        np.testing.assert_array_equal(o, _cast(a, np.float64).astype(a.dtype).reshape(a.shape))


def test_big_same_dtype_memcpy_path():
    rng = np.random.default_rng(12)
    leaves = [rng.standard_normal(n).astype(np.float32) for n in (1_000_003, 7, 600_001)]
    offsets, total = _offsets(leaves)
    out = np.empty(total, np.float32)
    _flat.gather(leaves, offsets, out)
    np.testing.assert_array_equal(out, np.concatenate(leaves))
    outs = [np.empty_like(a) for a in leaves]
    _flat.scatter(out, offsets, outs)
    for o, a in zip(outs, leaves):
        np.testing.assert_array_equal(o, a)


@st.composite
def _cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dst = draw(st.sampled_from(DST_DTYPES))
    leaves = []
    for _ in range(draw(st.integers(0, 6))):
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
        base = _values(rng, tuple(2 * s + 1 for s in shape), draw(st.sampled_from(DTYPES)))
        index = tuple(
            slice(draw(st.integers(0, 1)), None, draw(st.sampled_from([1, 2, -1])))
            if step_ok
            else slice(None)
            for step_ok in draw(st.lists(st.booleans(), min_size=len(shape), max_size=len(shape)))
        )
        view = base[index + (Ellipsis,)]  # a view even when 0-d
        if draw(st.booleans()):
            view = view.T
        leaves.append(view)
    gaps = [draw(st.integers(0, 3)) for _ in leaves]
    offsets, pos = [], 0
    for leaf, gap in zip(leaves, gaps):
        pos += gap
        offsets.append(pos)
        pos += leaf.size
    return leaves, np.array(offsets, np.int64), pos + draw(st.integers(0, 2)), dst


@settings(max_examples=150, deadline=None)
@given(_cases())
def test_property_gather_scatter_round_trip(case):
    leaves, offsets, length, dst = case
    out = np.zeros(length, dst)
    _flat.gather(leaves, offsets, out)
    expected = np.zeros(length, dst)
    for a, off in zip(leaves, offsets):
        expected[off : off + a.size] = _cast(a, dst)
    np.testing.assert_array_equal(out, expected)

    added = np.ones(length, dst)
    _flat.gather_add(leaves, offsets, added)
    np.testing.assert_array_equal(added, np.ones(length, dst) + expected)

    outs = [np.empty(a.shape, a.dtype) for a in leaves]
    _flat.scatter(out, offsets, outs)
    for o, a, off in zip(outs, leaves, offsets):
        np.testing.assert_array_equal(o, _cast(out[off : off + a.size], a.dtype).reshape(a.shape))
        if np.can_cast(a.dtype, dst, "safe"):
            np.testing.assert_array_equal(o, a)  # lossless round trip
