"""Checkpoints: ``ft.save`` / ``ft.load`` against ``np.save`` / ``np.load`` and ``np.savez``.

Case (layers issue): a state of 100 M float32 parameters (100 arrays of 1 M; 400 MB) saved
to and loaded from a temporary directory, as ``.npz`` and as ``.safetensors``.
Target: save and load at >= 0.5x the bandwidth of ``np.save`` / ``np.load`` of the same
bytes (one 400 MB array), i.e. ``track_*_ratio_*`` >= 0.5.

``ft.save`` is atomic: it writes a temporary file, ``fsync``s it, renames it over the
target and ``fsync``s the directory.  ``np.save`` does none of that, so its time is the
page-cache write only; ``time_numpy_save_fsync`` (``np.save`` then ``os.fsync``) is the
like-for-like anchor, and the ratios are given against both.  Loads read files that were
just written (warm page cache) unless the class name says ``Cold``: ``LoadCold`` evicts
the file's pages (``posix_fadvise(DONTNEED)`` after an ``fsync``) before every sample.

Timing: one call per sample (``number = 1``) and few samples; a sample moves 400 MB.
``FLUXTREE_BENCH_TMPDIR`` picks the directory (default: ``tempfile``'s), which should sit
on the disk being measured.  The ``fast`` profile uses a tenth of the size.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from .common import PROFILE, Benchmark, ft, median_seconds, np

#: 100 arrays of 1 M float32 (fast: 100 k): 400 MB (40 MB)
N_ARRAYS = 100
ARRAY_SIZE = 1_000_000 if PROFILE == "regular" else 100_000
#: samples per ratio in the track_* methods
TRACK_REPEAT = 5 if PROFILE == "regular" else 2

_FORMATS = ["npz", "safetensors"]


def io_state(n: int = N_ARRAYS, size: int = ARRAY_SIZE, seed: int = 0) -> dict:
    """``{"layers": [{"weight": (size,) float32}, ...]}``: ``n * size`` parameters."""
    return {"layers": [{"weight": np.full(size, (seed + i) % 97, dtype=np.float32)}
                       for i in range(n)]}


def io_flat(n: int = N_ARRAYS, size: int = ARRAY_SIZE) -> np.ndarray:
    """One float32 array with the bytes of ``io_state``."""
    return np.full(n * size, 1, dtype=np.float32)


def np_save_fsync(path: str, a: np.ndarray) -> None:
    """``np.save`` then ``os.fsync`` of the file (what an atomic save must at least do)."""
    with open(path, "wb") as f:
        np.save(f, a)
        f.flush()
        os.fsync(f.fileno())


def np_savez_fsync(path: str, arrays: dict) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def np_load_npz(path: str) -> dict:
    """Every member of an ``.npz`` read into memory (``np.load`` alone reads lazily)."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def evict(path: str) -> None:
    """Drop ``path``'s pages from the page cache (written back first), where supported."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


#: per-process memo: the trees and the directory with the files to load
_STATE: dict = {}


def _cleanup() -> None:
    state = _STATE.pop("io", None)
    if state is not None:
        shutil.rmtree(state["tmpdir"], ignore_errors=True)


class _IOCase(Benchmark):
    """Shared setup: the state tree, the flat array and a per-process tmp dir (removed at
    exit); the files to load are written the first time a benchmark needs them."""

    number = 1
    repeat = (1, 5, 60.0) if PROFILE == "regular" else (1, 2, 10.0)
    warmup_time = 0
    rounds = 1
    timeout = 600

    def setup(self, *params):
        state = _STATE.get("io")
        if state is None:
            tmpdir = tempfile.mkdtemp(prefix="fluxtree-bench-io-",
                                      dir=os.environ.get("FLUXTREE_BENCH_TMPDIR"))
            atexit.register(_cleanup)
            tree = io_state()
            state = {"tmpdir": tmpdir, "tree": tree, "flat": io_flat(),
                     "arrays": {f"p{i}": lay["weight"] for i, lay in enumerate(tree["layers"])}}
            state["nbytes"] = state["flat"].nbytes
            names = {"npz": "x.npz", "safetensors": "x.safetensors", "npy": "x.npy",
                     "npz_numpy": "x_numpy.npz"}
            state["load_paths"] = {k: os.path.join(tmpdir, "load_" + v)
                                   for k, v in names.items()}
            state["save_paths"] = {k: os.path.join(tmpdir, "save_" + v)
                                   for k, v in names.items()}
            _STATE["io"] = state
        self.__dict__.update(state)

    def _load_path(self, what: str) -> str:
        """The file to load for ``what``, written (and fsync-ed) on first use."""
        p = self.load_paths[what]
        if not os.path.exists(p):
            if what in _FORMATS:
                ft.save(p, self.tree)
            elif what == "npy":
                np_save_fsync(p, self.flat)
            else:
                np_savez_fsync(p, self.arrays)
        return p

    # the callables, for the ratios ------------------------------------------------------
    def _save_fn(self, what):
        if what in _FORMATS:
            p = self.save_paths[what]
            return lambda: ft.save(p, self.tree)
        p = self.save_paths["npy"]
        if what == "npy":
            return lambda: np.save(p, self.flat)
        if what == "npy_fsync":
            return lambda: np_save_fsync(p, self.flat)
        p = self.save_paths["npz_numpy"]
        if what == "npz_numpy":
            return lambda: np.savez(p, **self.arrays)
        if what == "npz_numpy_fsync":
            return lambda: np_savez_fsync(p, self.arrays)
        raise ValueError(what)

    def _load_fn(self, what):
        p = self._load_path(what)
        if what in _FORMATS:
            return lambda: ft.load(p)
        if what == "npy":
            return lambda: np.load(p)
        if what == "npz_numpy":
            return lambda: np_load_npz(p)
        raise ValueError(what)

    def _gbps(self, fn, before=None):
        if before is None:
            return 1e-9 * self.nbytes / median_seconds(fn, repeat=TRACK_REPEAT, min_time=0)
        times = []
        for _ in range(TRACK_REPEAT):
            before()
            times.append(median_seconds(fn, repeat=1, min_time=0))
        return 1e-9 * self.nbytes / sorted(times)[len(times) // 2]


class Save(_IOCase):
    """``ft.save`` (atomic, fsync-ed) versus ``np.save`` (with and without fsync), ``np.savez``."""

    params = [_FORMATS]
    param_names = ["format"]

    def time_fluxtree_save(self, fmt):
        ft.save(self.save_paths[fmt], self.tree)

    def time_numpy_save(self, fmt):
        np.save(self.save_paths["npy"], self.flat)

    def time_numpy_save_fsync(self, fmt):
        np_save_fsync(self.save_paths["npy"], self.flat)

    def time_numpy_savez(self, fmt):
        np.savez(self.save_paths["npz_numpy"], **self.arrays)

    def track_fluxtree_save_gbps(self, fmt):
        return self._gbps(self._save_fn(fmt))

    track_fluxtree_save_gbps.unit = "GB/s"

    def track_numpy_save_fsync_gbps(self, fmt):
        return self._gbps(self._save_fn("npy_fsync"))

    track_numpy_save_fsync_gbps.unit = "GB/s"

    def track_save_ratio_to_numpy_save_fsync(self, fmt):
        """ft.save GB/s / (np.save + fsync) GB/s (target >= 0.5)."""
        return self._gbps(self._save_fn(fmt)) / self._gbps(self._save_fn("npy_fsync"))

    track_save_ratio_to_numpy_save_fsync.unit = "ratio"

    def track_save_ratio_to_numpy_save(self, fmt):
        """ft.save GB/s / np.save GB/s without fsync (page cache only; stricter)."""
        return self._gbps(self._save_fn(fmt)) / self._gbps(self._save_fn("npy"))

    track_save_ratio_to_numpy_save.unit = "ratio"


class Load(_IOCase):
    """``ft.load`` versus ``np.load`` of one 400 MB ``.npy`` and of ``np.savez``'s file (warm)."""

    params = [_FORMATS]
    param_names = ["format"]

    def setup(self, fmt):
        _IOCase.setup(self, fmt)
        for key in (fmt, "npy", "npz_numpy"):
            self._load_path(key)

    def time_fluxtree_load(self, fmt):
        ft.load(self._load_path(fmt))

    def time_numpy_load(self, fmt):
        np.load(self._load_path("npy"))

    def time_numpy_load_npz(self, fmt):
        np_load_npz(self._load_path("npz_numpy"))

    def track_fluxtree_load_gbps(self, fmt):
        return self._gbps(self._load_fn(fmt))

    track_fluxtree_load_gbps.unit = "GB/s"

    def track_numpy_load_gbps(self, fmt):
        return self._gbps(self._load_fn("npy"))

    track_numpy_load_gbps.unit = "GB/s"

    def track_load_ratio_to_numpy_load(self, fmt):
        """ft.load GB/s / np.load GB/s (target >= 0.5)."""
        return self._gbps(self._load_fn(fmt)) / self._gbps(self._load_fn("npy"))

    track_load_ratio_to_numpy_load.unit = "ratio"


class LoadCold(_IOCase):
    """``Load`` with the file's pages evicted before every sample (reads hit the disk)."""

    params = [_FORMATS]
    param_names = ["format"]

    def setup(self, fmt):
        _IOCase.setup(self, fmt)
        for key in (fmt, "npy"):
            evict(self._load_path(key))

    def time_fluxtree_load(self, fmt):
        ft.load(self._load_path(fmt))

    def time_numpy_load(self, fmt):
        np.load(self._load_path("npy"))

    def track_load_ratio_to_numpy_load(self, fmt):
        """ft.load GB/s / np.load GB/s, cold (target >= 0.5)."""
        a, b = self._load_path(fmt), self._load_path("npy")
        return (self._gbps(self._load_fn(fmt), lambda: evict(a))
                / self._gbps(self._load_fn("npy"), lambda: evict(b)))

    track_load_ratio_to_numpy_load.unit = "ratio"
