"""The block cache NumPy allocates through during derivative sweeps (_kernels/_memory)."""
import threading

import numpy as np
import pytest

import fluxtree as ft
from fluxtree._kernels import _memory

BIG = 200_000          # float64 elements: 1.6 MB, above the cache's 64 KiB floor


@pytest.fixture(autouse=True)
def empty_cache():
    _memory.release()
    yield
    _memory.release()
    _memory.set_limit(512 * 2**20)


def test_freed_blocks_are_kept_and_reused():
    with _memory.block_cache():
        a = np.ones(BIG)
        address = a.ctypes.data
    del a
    assert _memory.cached_bytes() == BIG * 8
    with _memory.block_cache():
        b = np.empty(BIG)
    assert b.ctypes.data == address
    assert _memory.cached_bytes() == 0


def test_reused_block_is_zeroed_for_zeros():
    with _memory.block_cache():
        a = np.full(BIG, 7.0)
    del a
    with _memory.block_cache():
        z = np.zeros(BIG)
    assert not z.any()


def test_small_arrays_and_arrays_made_outside_bypass_the_cache():
    with _memory.block_cache():
        small = np.ones(100)
    outside = np.ones(BIG)
    del small, outside
    assert _memory.cached_bytes() == 0


def test_a_block_much_larger_than_the_request_is_not_used():
    with _memory.block_cache():
        a = np.ones(4 * BIG)
    del a
    with _memory.block_cache():
        b = np.ones(BIG)
    assert _memory.cached_bytes() == 4 * BIG * 8
    del b


def test_limit_and_release():
    _memory.set_limit(BIG * 8)
    with _memory.block_cache():
        a, b = np.ones(BIG), np.ones(BIG)
    del a, b
    assert _memory.cached_bytes() == BIG * 8
    assert _memory.release() == BIG * 8
    assert _memory.cached_bytes() == 0


def test_the_handler_is_restored_and_is_per_thread():
    seen = []

    def other():
        seen.append(np.ones(BIG))

    with _memory.block_cache():
        t = threading.Thread(target=other)
        t.start()
        t.join()
    seen.clear()
    assert _memory.cached_bytes() == 0
    np.ones(BIG)
    assert _memory.cached_bytes() == 0


def test_repeated_gradients_reuse_memory_and_agree():
    rng = np.random.default_rng(0)
    m = ft.Chain(ft.Dense(32, 64, ft.tanh, rng=rng, dtype=np.float64), ft.Dense(64, 4, rng=rng,
                                                                            dtype=np.float64))
    flat, re = ft.destructure(m)
    x, y = rng.standard_normal((512, 32)), rng.standard_normal((512, 4))
    f = lambda v: ft.losses.mse(re(v)(x), y)  # noqa: E731
    first = ft.gradient(f, flat)[0]
    assert _memory.cached_bytes() > 0
    for _ in range(3):
        np.testing.assert_array_equal(ft.gradient(f, flat)[0], first)
        np.testing.assert_array_equal(ft.hvp(f, flat, first), ft.hvp(f, flat, first))
