"""Data parallelism over MPI: evaluations per second with 1 and 2 ranks, one ``allreduce_``
of a 10 M-parameter tree against ``np.copyto`` of the same bytes, and a fit to a loss.

asv runs benchmarks in one process; these figures need several.  So each class launches
``mpiexec -n R python bench_distributed.py WHAT OUT`` (this file as a script: the
``_worker_*`` functions) once per rank count in ``setup_cache``, with BLAS and OpenMP
pinned to 1 thread per rank, and its ``track_*`` methods return what rank 0 measured.
Every time is the slowest rank's (a collective waits for it), median over repeats.  Skipped
(NotImplementedError) without mpi4py or an ``mpiexec`` on PATH.

- ``Evaluations``: the digits problem of ``bench_optimize`` (1,438 standardised images,
  MLP 64-128-128-10 in float64, mean logit cross-entropy), the training rows sharded over
  the ranks.  ``points``: new points per second, each ``fun`` + ``jac`` (one forward and
  one backward pass over the rank's rows, one scalar and one vector ``Allreduce``);
  ``hessp``: Hessian-vector products per second at a recorded point (one ``Allreduce``
  each).
- ``AllreduceTree``: 10 float32 arrays of 1 M (fast: 100 k) elements; ``allreduce_`` with a
  reused buffer (pack, one ``Allreduce``, write back), ``allreduce_`` of the same tree made
  of views of one vector (``re(v, copy=False)``: nothing to pack), the ``Allreduce`` of the
  packed vector alone, and ``np.copyto`` of a vector of the same bytes, all in one run.
- ``Fit``: ``ft.optimize.minimize`` with trust-krylov on the same problem until the loss
  reaches 0.02 (every rank in lock-step).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

try:
    from .common import PROFILE, Benchmark
except ImportError:           # run as a script by mpiexec: only the workers below are used
    PROFILE = os.environ.get("FLUXTREE_BENCH_PROFILE", "regular")
    Benchmark = object  # type: ignore[assignment,misc]

RANKS = [1, 2]
HIDDEN = "128,128"
TARGET = 0.02
N_ARRAYS = 10
ARRAY_SIZE = 1_000_000 if PROFILE == "regular" else 100_000
POINTS = 30 if PROFILE == "regular" else 5
PRODUCTS = 100 if PROFILE == "regular" else 10
REPEAT = 7 if PROFILE == "regular" else 2


# ----------------------------------------------------------------------------
# the launcher (asv's process)
# ----------------------------------------------------------------------------
def _launch(what: str, ranks: int) -> dict:
    """Run ``_worker_<what>`` on ``ranks`` ranks; what rank 0 wrote."""
    try:
        import mpi4py  # noqa: F401
    except ImportError as e:
        raise NotImplementedError(f"mpi4py is not installed: {e}") from None
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")   # the mpich wheel's
    mpiexec = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if mpiexec is None:
        raise NotImplementedError("no mpiexec on PATH")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", FLUXTREE_BENCH_PROFILE=PROFILE)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        proc = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, __file__, what, out],
                              check=False, capture_output=True, text=True, env=env,
                              timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"mpiexec -n {ranks} {what} failed:\n{proc.stderr[-2000:]}")
        with open(out) as fh:
            return json.load(fh)


class _MPI(Benchmark):
    """``track_*`` read what ``setup_cache`` measured: one launch per rank count (asv
    shares a ``setup_cache`` between classes that inherit it, so each class defines its
    own)."""

    params = (RANKS,)
    param_names = ("ranks",)
    timeout = 900


class Evaluations(_MPI):
    def setup_cache(self) -> dict:
        return {r: _launch("evaluations", r) for r in RANKS}

    def track_points_per_second(self, cache: dict, ranks: int) -> float:
        return cache[ranks]["points_per_second"]

    def track_hessp_per_second(self, cache: dict, ranks: int) -> float:
        return cache[ranks]["hessp_per_second"]

    def track_points_speedup(self, cache: dict, ranks: int) -> float:
        return cache[ranks]["points_per_second"] / cache[1]["points_per_second"]

    track_points_per_second.unit = "points/s"  # type: ignore[attr-defined]
    track_hessp_per_second.unit = "products/s"  # type: ignore[attr-defined]
    track_points_speedup.unit = "x"  # type: ignore[attr-defined]


class AllreduceTree(_MPI):
    def setup_cache(self) -> dict:
        return {r: _launch("allreduce", r) for r in RANKS}

    def track_allreduce_seconds(self, cache: dict, ranks: int) -> float:
        return cache[ranks]["allreduce_"]

    def track_allreduce_views_seconds(self, cache: dict, ranks: int) -> float:
        return cache[ranks]["allreduce_ views"]

    def track_mpi_allreduce_seconds(self, cache: dict, ranks: int) -> float:
        return cache[ranks]["Allreduce"]

    def track_copyto_seconds(self, cache: dict, ranks: int) -> float:
        return cache[ranks]["copyto"]

    def track_allreduce_over_copyto(self, cache: dict, ranks: int) -> float:
        return cache[ranks]["allreduce_"] / cache[ranks]["copyto"]

    track_allreduce_seconds.unit = "s"  # type: ignore[attr-defined]
    track_allreduce_views_seconds.unit = "s"  # type: ignore[attr-defined]
    track_mpi_allreduce_seconds.unit = "s"  # type: ignore[attr-defined]
    track_copyto_seconds.unit = "s"  # type: ignore[attr-defined]
    track_allreduce_over_copyto.unit = "x"  # type: ignore[attr-defined]


class Fit(_MPI):
    def setup_cache(self) -> dict:
        return {r: _launch("fit", r) for r in RANKS}

    def track_fit_seconds(self, cache: dict, ranks: int) -> float:
        return cache[ranks]["seconds"]

    def track_fit_evaluations(self, cache: dict, ranks: int) -> int:
        return cache[ranks]["evaluations"]

    track_fit_seconds.unit = "s"  # type: ignore[attr-defined]
    track_fit_evaluations.unit = "calls"  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------
# the workers (each rank of an mpiexec launch)
# ----------------------------------------------------------------------------
def _problem(comm: Any) -> tuple[Any, Any]:
    """The digits MLP and this rank's shard of the training rows."""
    import fluxtree as ft
    from fluxtree.cli import _data, _models
    data = _data.load("digits")
    spec = {"inputs": data.features, "hidden": _models.parse_hidden(HIDDEN),
            "outputs": data.classes, "activation": "tanh", "batchnorm": False}
    return _models.build(spec, seed=0), ft.distributed.shard((data.X_train, data.Y_train),
                                                             comm)


def _slowest(comm: Any, seconds: float) -> float:
    from mpi4py import MPI
    return float(comm.allreduce(seconds, op=MPI.MAX))


def _timed(comm: Any, fn: Any, n: int) -> float:
    """Median over ``REPEAT`` of the slowest rank's seconds per call of ``fn`` (n calls)."""
    fn()
    samples = []
    for _ in range(REPEAT):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append(_slowest(comm, (time.perf_counter() - t0) / n))
    return statistics.median(samples)


def _worker_evaluations(comm: Any) -> dict:
    import fluxtree as ft
    model, shard = _problem(comm)
    obj = ft.optimize.Objective(model, ft.losses.logitcrossentropy, shard, comm=comm)
    rng = np.random.default_rng(0)
    steps = 1e-3 * rng.standard_normal((2 * POINTS, len(obj)))
    state = {"k": 0}

    def new_point() -> None:                     # never in the two-point cache
        state["k"] += 1
        x = obj.x0 + steps[state["k"] % len(steps)] * (1 + state["k"])
        obj.fun(x)
        obj.jac(x)

    x0, v = obj.x0.copy(), rng.standard_normal(len(obj))
    obj.jac(x0)
    return {"points_per_second": 1.0 / _timed(comm, new_point, POINTS),
            "hessp_per_second": 1.0 / _timed(comm, lambda: obj.hessp(x0, v), PRODUCTS),
            "parameters": len(obj), "rows_on_rank_0": int(shard[0].shape[0])}


def _worker_allreduce(comm: Any) -> dict:
    from mpi4py import MPI

    import fluxtree as ft
    tree = [np.full(ARRAY_SIZE, comm.Get_rank() + j, np.float32) for j in range(N_ARRAYS)]
    buf = np.empty(N_ARRAYS * ARRAY_SIZE, np.float32)
    src, dst = np.ones_like(buf), np.empty_like(buf)
    flat, re = ft.destructure(tree)
    views = re(flat, copy=False)
    reps = 10 if PROFILE == "regular" else 3
    out = {"allreduce_": _timed(comm, lambda: ft.distributed.allreduce_(tree, comm,
                                                                         buffer=buf), reps),
           "allreduce_ views": _timed(comm, lambda: ft.distributed.allreduce_(views, comm),
                                      reps),
           "Allreduce": _timed(comm, lambda: comm.Allreduce(MPI.IN_PLACE, buf), reps),
           "copyto": _timed(comm, lambda: np.copyto(dst, src), reps),
           "parameters": int(buf.size), "bytes": int(buf.nbytes)}
    return out


def _worker_fit(comm: Any) -> dict:
    import fluxtree as ft
    model, shard = _problem(comm)

    def stop(intermediate_result: Any) -> None:
        if intermediate_result.fun <= TARGET:
            raise StopIteration

    def fit() -> dict:
        res, _ = ft.optimize.minimize(model, ft.losses.logitcrossentropy, shard,
                                      "trust-krylov", options={"maxiter": 1000, "gtol": 1e-12},
                                      callback=stop, progress=False, comm=comm)
        return res.counts

    counts = fit()
    seconds = _timed(comm, fit, 1)
    return {"seconds": seconds, "evaluations": counts["fun"] + counts["jac"] + counts["hessp"]}


if __name__ == "__main__":                         # mpiexec -n R python THIS WHAT OUT
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    result = globals()[f"_worker_{sys.argv[1]}"](world)
    if world.Get_rank() == 0:
        result["ranks"] = world.Get_size()
        with open(sys.argv[2], "w") as fh:
            json.dump(result, fh)
