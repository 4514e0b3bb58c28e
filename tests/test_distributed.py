"""fluxtree.distributed and the comm= support of Objective, minimize and `fluxtree fit --mpi`.

In-process tests use MPI.COMM_SELF (one rank).  The 2-rank tests run this file as a script
under `mpiexec -n 2` (the `_case_*` functions below, one launch per case) and compare what
each rank saved with the 1-process results computed here.  Everything skips, with the
reason, when mpi4py or mpiexec is missing, unless FLUXTREE_REQUIRE_MPI=1 (CI) makes that a
failure.
"""
import doctest
import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fluxtree as ft
from fluxtree import distributed
from fluxtree.cli import load_fitted
from fluxtree.cli import main as cli_main
from fluxtree.distributed import RankError, _shard_range, allreduce_, bcast_
from fluxtree.optimize import Objective

try:
    from mpi4py import MPI
except ImportError:                                   # the [mpi] extra is not installed
    MPI = None

#: the mpiexec of this Python's environment (the mpich wheel puts it there), else PATH's
_BESIDE = os.path.join(os.path.dirname(sys.executable), "mpiexec")
MPIEXEC = _BESIDE if os.access(_BESIDE, os.X_OK) else shutil.which("mpiexec")
REQUIRED = os.environ.get("FLUXTREE_REQUIRE_MPI") == "1"
needs_mpi4py = pytest.mark.skipif(
    MPI is None, reason="mpi4py is not installed (python -m pip install 'fluxtree[mpi]')")
needs_mpiexec = pytest.mark.skipif(
    MPI is None or MPIEXEC is None,
    reason="needs mpi4py and an mpiexec on PATH (python -m pip install 'fluxtree[mpi]')")

def test_mpi_is_here_when_required():
    if not REQUIRED:
        pytest.skip("FLUXTREE_REQUIRE_MPI is not 1")
    assert MPI is not None, "FLUXTREE_REQUIRE_MPI=1 but mpi4py does not import"
    assert MPIEXEC is not None, "FLUXTREE_REQUIRE_MPI=1 but there is no mpiexec"


RANKS = 2
TIMEOUT = 120                       # seconds for one mpiexec launch (a hang fails the test)
SRC = str(Path(ft.__file__).resolve().parent.parent)      # the fluxtree the tests import
DOCS = Path(__file__).resolve().parent.parent / "docs" / "distributed.md"

RNG = np.random.default_rng(7)
X = RNG.standard_normal((41, 3))                          # 41 rows: shards of 21 and 20
Y = np.eye(3)[(X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (X[:, 2] > 0.8)]
POINT = RNG.standard_normal(38)                           # a point and directions in the
DIRS = RNG.standard_normal((38, 3))                       # 38-parameter space of mlp()


def mlp(seed=0, bn=False):
    rng = np.random.default_rng(seed)
    layers = [ft.Dense(3, 5, None if bn else ft.tanh, rng=rng, dtype=np.float64)]
    if bn:
        layers.append(ft.BatchNorm(5, ft.tanh))
    return ft.Chain(*layers, ft.Dense(5, 3, rng=rng, dtype=np.float64))


def summed_mse(yhat, y):
    return ft.losses.mse(yhat, y, agg="sum")


#: (name, loss, data of the whole set, Objective keywords): the cases both runs evaluate
def cases(comm=None):
    part = (lambda d: d) if comm is None else (lambda d: distributed.shard(d, comm))
    if comm is None:
        loader = ft.DataLoader((X[:40], Y[:40]), batchsize=10)
    else:   # rank r holds 20 rows = global batches 2r and 2r+1 of the loader above
        loader = ft.DataLoader(distributed.shard((X[:40], Y[:40]), comm), batchsize=10)
    return [
        ("mean", ft.losses.logitcrossentropy, part((X, Y)), {}),
        ("gauss-newton", ft.losses.logitcrossentropy, part((X, Y)),
         {"curvature": "gauss-newton"}),
        ("sum", functools.partial(ft.losses.mse, agg="sum"), part((X, Y)), {}),
        ("explicit-agg", summed_mse, part((X, Y)), {} if comm is None else {"agg": "sum"}),
        ("loader", ft.losses.logitcrossentropy, loader, {}),
        ("float32", ft.losses.logitcrossentropy, part((X, Y)), {"dtype": np.float32}),
    ]


def evaluate(obj):
    x = obj.x0 + 0.1 * POINT
    return {"fun": np.array(obj.fun(x)), "jac": obj.jac(x.copy()),
            "hessp": obj.hessp(x.copy(), DIRS[:, 0]), "hess": obj.hess(x).matmat(DIRS),
            "x0": obj.x0}


def tied_tree(rank, n=5):
    """Arrays of every kind allreduce_ meets: a tie, float32, complex, a Fortran-order
    array, a strided view, an integer array (not a parameter) and a string."""
    w = np.full(n, 1.0 + rank)
    f = np.asfortranarray(np.arange(6.0).reshape(2, 3) * (rank + 1))
    big = np.arange(12.0) + 100 * rank
    return {"w": w, "again": w, "f32": np.full(3, 2.0 + rank, np.float32),
            "z": np.array([1 + 1j * rank]), "fortran": f, "view": big[::3],
            "steps": np.arange(3) + rank, "name": "tied"}


def views(rank):
    """A model whose parameters are views of one vector, as ``re(v, copy=False)`` makes."""
    flat, re_ = ft.destructure(mlp())
    v = np.arange(flat.size, dtype=flat.dtype) * (rank + 1)
    return v, re_(v, copy=False)


# ----------------------------------------------------------------------------
# the 2-rank scripts (run as `mpiexec -n 2 python test_distributed.py CASE OUT`)
# ----------------------------------------------------------------------------
def _case_objective(out):
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    saved = {}
    for name, loss, data, kw in cases(comm):
        # each rank starts from its own random model: the Objective sends rank 0's
        obj = Objective(mlp(seed=rank), loss, data, comm=comm, **kw)
        for key, value in evaluate(obj).items():
            saved[f"{name}/{key}"] = value
    for op in ("sum", "mean", "max", "min"):
        tree = tied_tree(rank)
        if op in ("max", "min"):                          # real trees only
            del tree["z"]
        same = allreduce_(tree, comm, op)
        assert same is tree and tree["again"] is tree["w"]
        for key in ("w", "f32", "fortran", "view", "steps"):
            saved[f"allreduce-{op}/{key}"] = tree[key]
        if op in ("sum", "mean"):
            saved[f"allreduce-{op}/z"] = tree["z"]
        assert tree["fortran"].flags.f_contiguous
    buf = np.zeros(3, np.float32)
    tree = {"a": np.full(3, rank + 1.0, np.float32)}
    allreduce_(tree, comm, buffer=buf)
    saved["buffer"] = buf
    for fn in ("allreduce_", "bcast_"):          # views of one vector: reduced where they are
        v, model = views(rank)
        if fn == "allreduce_":
            allreduce_(model, comm, "sum")
        else:
            bcast_(model, comm, root=1)
        assert all(a.base is v for a in ft.trainables(model))
        saved[f"views-{fn}"] = v
    tree = tied_tree(rank)
    bcast_(tree, comm, root=1)
    for key in ("w", "again", "f32", "z", "fortran", "view", "steps"):
        saved[f"bcast/{key}"] = tree[key]
    for method in ("trust-krylov", "L-BFGS-B"):
        res, fitted = ft.optimize.minimize(
            mlp(seed=rank), ft.losses.logitcrossentropy, distributed.shard((X, Y), comm),
            method, options={"maxiter": 15}, comm=comm, progress=True)
        saved[f"fit-{method}/x"] = res.x
        saved[f"fit-{method}/history"] = np.array(res.history)
        saved[f"fit-{method}/model"] = ft.destructure(fitted)[0]
    np.savez(os.path.join(out, f"rank{rank}.npz"), **saved)


def _case_failure(out):
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    caught = {}
    # 1. rank 1's data are unusable: every rank leaves the constructor with an error
    data = distributed.shard((X, Y), comm) if rank == 0 else ("not", "arrays")
    try:
        Objective(mlp(), ft.losses.logitcrossentropy, data, comm=comm)
    except (TypeError, RankError) as e:
        caught["init"] = [type(e).__name__, str(e)]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(caught, fh)
    # 2. rank 1's loss raises during the fit; nothing catches it, the script must end
    calls = [0]

    def flaky(yhat, y):
        calls[0] += 1
        if rank == 1 and calls[0] == 4:
            raise FloatingPointError("rank 1's loss failed on purpose")
        return ft.losses.logitcrossentropy(yhat, y)

    ft.optimize.minimize(mlp(), flaky, distributed.shard((X, Y), comm), comm=comm,
                         agg="mean", progress=False)
    print("not reached", flush=True)


def mpirun(case, out, ranks=RANKS):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, __file__, case, str(out)],
                          check=False, capture_output=True, text=True, env=env,
                          timeout=TIMEOUT)
    return proc, time.perf_counter() - t0


# ----------------------------------------------------------------------------
# 2 ranks against 1 process
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    if MPI is None or MPIEXEC is None:
        pytest.skip("needs mpi4py and an mpiexec on PATH (python -m pip install "
                    "'fluxtree[mpi]')")
    out = tmp_path_factory.mktemp("objective")
    proc, _ = mpirun("objective", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [dict(np.load(out / f"rank{r}.npz")) for r in range(RANKS)]
    return ranks, proc


@needs_mpiexec
@pytest.mark.parametrize("case", [c[0] for c in cases()])
def test_two_rank_objective_equals_one_process_on_the_whole_data(two_ranks, case):
    ranks, _ = two_ranks
    _, loss, data, kw = next(c for c in cases() if c[0] == case)
    want = evaluate(Objective(mlp(seed=0), loss, data, **kw))
    tol = 1e-6 if kw.get("dtype") == np.float32 else 1e-13
    for saved in ranks:
        np.testing.assert_array_equal(saved[f"{case}/x0"], want["x0"])   # rank 0's model
        for key in ("fun", "jac", "hessp", "hess"):
            np.testing.assert_allclose(saved[f"{case}/{key}"], want[key], rtol=tol,
                                       atol=tol * np.abs(want[key]).max(), err_msg=key)
    for key in ("fun", "jac", "hessp", "hess"):             # and the same bits everywhere
        np.testing.assert_array_equal(ranks[0][f"{case}/{key}"], ranks[1][f"{case}/{key}"])


@needs_mpiexec
@pytest.mark.parametrize("method", ["trust-krylov", "L-BFGS-B"])
def test_both_ranks_end_with_identical_parameters(two_ranks, method):
    ranks, proc = two_ranks
    for key in ("x", "history", "model"):
        a, b = ranks[0][f"fit-{method}/{key}"], ranks[1][f"fit-{method}/{key}"]
        assert a.tobytes() == b.tobytes(), key
    assert len(ranks[0][f"fit-{method}/history"]) > 5
    lines = io.StringIO()
    res, _ = ft.optimize.minimize(mlp(), ft.losses.logitcrossentropy, (X, Y), method,
                                  options={"maxiter": 15}, progress=lines)
    np.testing.assert_allclose(ranks[0][f"fit-{method}/history"][0], res.history[0],
                               rtol=1e-14)
    # both ranks were asked for a progress line; rank 0 alone draws it
    assert proc.stderr.count(f"{method} [") == lines.getvalue().count(f"{method} [") > 0


@needs_mpiexec
def test_two_rank_allreduce_and_bcast(two_ranks):
    ranks, _ = two_ranks
    trees = [tied_tree(r) for r in range(RANKS)]
    for key in ("w", "f32", "fortran", "view"):
        stack = np.stack([t[key] for t in trees])
        for op, want in (("sum", stack.sum(0)), ("mean", stack.mean(0)),
                         ("max", stack.max(0)), ("min", stack.min(0))):
            for saved in ranks:
                got = saved[f"allreduce-{op}/{key}"]
                assert got.dtype == trees[0][key].dtype
                np.testing.assert_array_equal(got, want.astype(got.dtype))
    for saved in ranks:
        # the tied array is reduced once: 1 + 2, not (1 + 2) * 2
        np.testing.assert_array_equal(saved["allreduce-sum/w"], np.full(5, 3.0))
        np.testing.assert_array_equal(saved["allreduce-sum/z"], [2 + 1j])
        np.testing.assert_array_equal(saved["buffer"], np.full(3, 3.0))
        for key in ("w", "again", "f32", "z", "fortran", "view"):
            np.testing.assert_array_equal(saved[f"bcast/{key}"], trees[1][key])
    for saved in ranks:
        np.testing.assert_array_equal(saved["views-allreduce_"], views(0)[0] + views(1)[0])
        np.testing.assert_array_equal(saved["views-bcast_"], views(1)[0])
    # integer arrays are not parameters: each rank keeps its own
    np.testing.assert_array_equal(ranks[0]["allreduce-sum/steps"], trees[0]["steps"])
    np.testing.assert_array_equal(ranks[1]["allreduce-sum/steps"], trees[1]["steps"])
    np.testing.assert_array_equal(ranks[1]["bcast/steps"], trees[1]["steps"])


@needs_mpiexec
def test_a_rank_that_raises_ends_the_job_with_its_error(tmp_path):
    proc, elapsed = mpirun("failure", tmp_path)
    assert proc.returncode != 0 and elapsed < TIMEOUT
    assert "not reached" not in proc.stdout
    # the failing rank reports its own error, the other one why it stopped
    assert "FloatingPointError: rank 1's loss failed on purpose" in proc.stderr
    assert re.search(r"RankError: Objective\.\w+: 1 of 2 ranks raised an error", proc.stderr)
    init = [json.loads((tmp_path / f"rank{r}.json").read_text())["init"] for r in range(2)]
    assert init[0][0] == "RankError" and "1 of 2 ranks" in init[0][1]
    assert init[1][0] == "TypeError" and "must be an array" in init[1][1]


@needs_mpiexec
def test_fluxtree_fit_mpi(tmp_path, capsys):
    args = ["fit", "--dataset", "iris", "--hidden", "6", "--max-iter", "12", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([MPIEXEC, "-n", str(RANKS), sys.executable, "-m", "fluxtree", *args,
                           "--mpi", "--out", str(tmp_path / "mpi")],
                          check=False, capture_output=True, text=True, env=env,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("fluxtree fit: iris") == 1 and out.count("checkpoint:") == 1  # rank 0
    assert "MPI: 2 ranks, 60 training observations each" in out
    assert sorted(p.name for p in (tmp_path / "mpi").iterdir()) == ["loss.png", "model.npz"]
    assert cli_main([*args, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    _, sharded = load_fitted(str(tmp_path / "mpi" / "model.npz"))
    _, single = load_fitted(str(tmp_path / "one" / "model.npz"))
    assert sharded["fit"]["iterations"] == single["fit"]["iterations"] == 12
    # the same fit up to round-off, which trust-region steps amplify slowly (5e-11 here
    # after 12 iterations; 4e-3 after 25, where the loss is 1e-4)
    np.testing.assert_allclose(sharded["fit"]["loss"], single["fit"]["loss"], rtol=1e-7)


# ----------------------------------------------------------------------------
# one process: the same code paths on MPI.COMM_SELF, and the errors
# ----------------------------------------------------------------------------
@needs_mpi4py
@pytest.mark.parametrize("case", [c[0] for c in cases()])
def test_one_rank_communicator_gives_the_same_bits_as_none(case):
    _, loss, data, kw = next(c for c in cases() if c[0] == case)
    comm_kw = dict(kw, agg="sum") if case == "explicit-agg" else kw
    got = evaluate(Objective(mlp(), loss, data, comm=MPI.COMM_SELF, **comm_kw))
    want = evaluate(Objective(mlp(), loss, data, **kw))
    for key in want:
        assert got[key].tobytes() == want[key].tobytes(), key


@needs_mpi4py
def test_objective_comm_repr_and_minimize():
    obj = Objective(mlp(), ft.losses.logitcrossentropy, (X, Y), comm=MPI.COMM_SELF)
    assert repr(obj).endswith("hessian, rank 0 of 1)")
    res, _ = ft.optimize.minimize(mlp(), ft.losses.logitcrossentropy, (X, Y),
                                  options={"maxiter": 5}, progress=False, comm=MPI.COMM_SELF)
    ref, _ = ft.optimize.minimize(mlp(), ft.losses.logitcrossentropy, (X, Y),
                                  options={"maxiter": 5}, progress=False)
    assert res.x.tobytes() == ref.x.tobytes()


@needs_mpi4py
def test_objective_comm_errors():
    comm = MPI.COMM_SELF
    with pytest.raises(TypeError, match=r"comm must be an mpi4py intra-communicator .* got "
                                        r"str\."):
        Objective(mlp(), ft.losses.mse, (X, Y), comm="world")
    with pytest.raises(ValueError, match=r"agg says how the ranks' shards combine; it needs "
                                         r"comm\."):
        Objective(mlp(), ft.losses.mse, (X, Y), agg="mean")
    with pytest.raises(ValueError, match=r"summed_mse does not say how .* pass agg='mean' or "
                                         r"agg='sum'\."):
        Objective(mlp(), summed_mse, (X, Y), comm=comm)
    with pytest.raises(ValueError, match=r"agg must be 'mean' or 'sum', got 'max'\."):
        Objective(mlp(), summed_mse, (X, Y), comm=comm, agg="max")
    with pytest.raises(ValueError, match=r"BatchNorm layers must be in test mode"):
        Objective(mlp(bn=True), ft.losses.mse, (X, Y), comm=comm)
    Objective(ft.testmode_(mlp(bn=True)), ft.losses.mse, (X, Y), comm=comm)
    with pytest.raises(ValueError, match=r"rank 0 holds no observations \(inputs of shape "
                                         r"\(0, 3\)\)"):
        Objective(mlp(), ft.losses.mse, (X[:0], Y[:0]), comm=comm)
    # a loss that raises on the only rank raises its own error, not RankError
    obj = Objective(mlp(), lambda yhat, y: 1 / 0, (X, Y), comm=comm, agg="mean")
    with pytest.raises(ZeroDivisionError):
        obj.fun(obj.x0)


@needs_mpi4py
def test_allreduce_and_bcast_on_one_rank_keep_the_values_and_the_objects():
    tree = tied_tree(0)
    before = {k: np.copy(v) for k, v in tree.items() if isinstance(v, np.ndarray)}
    ids = {k: id(v) for k, v in tree.items()}
    for op in ("sum", "mean", "max", "min"):
        real = {k: v for k, v in tree.items() if k != "z"} if op in ("max", "min") else tree
        assert allreduce_(real, MPI.COMM_SELF, op) is real
    assert bcast_(tree, MPI.COMM_SELF) is tree
    assert {k: id(v) for k, v in tree.items()} == ids
    for k, v in before.items():
        np.testing.assert_array_equal(tree[k], v)
    v, model = views(0)
    want, sentinel = v.copy(), np.full(v.size, -1.0)
    assert allreduce_(model, MPI.COMM_SELF, "mean", buffer=sentinel) is model
    np.testing.assert_array_equal(v, want)
    assert (sentinel == -1).all()                  # reduced in v itself: nothing packed
    empty = {"n": np.arange(3), "s": "x"}
    assert allreduce_(empty, MPI.COMM_SELF) is empty
    half = {"h": np.array([1.5, 2.5], np.float16)}                # travels as float32
    allreduce_(half, MPI.COMM_SELF, "mean")
    assert half["h"].dtype == np.float16 and half["h"].tolist() == [1.5, 2.5]


@needs_mpi4py
def test_allreduce_and_bcast_errors():
    comm = MPI.COMM_SELF
    tree = {"a": np.ones(3), "b": np.ones(2, np.float32)}
    with pytest.raises(TypeError, match=r"allreduce_: comm must be an mpi4py "
                                        r"intra-communicator such as MPI.COMM_WORLD, got int\."):
        allreduce_(tree, 0)
    with pytest.raises(ValueError, match=r"op must be one of 'sum', 'mean', 'max', 'min', got "
                                         r"'prod'\."):
        allreduce_(tree, comm, "prod")
    with pytest.raises(TypeError, match=r"op='max' needs real arrays; the tree holds "
                                        r"complex128 ones\."):
        allreduce_({"z": np.ones(2, complex)}, comm, "max")
    with pytest.raises(ValueError, match=r"buffer must be a 1-D vector of length 5, got shape "
                                         r"\(4,\)\."):
        allreduce_(tree, comm, buffer=np.empty(4))
    with pytest.raises(TypeError, match=r"buffer must be a writeable contiguous float64 "
                                        r"vector, got dtype float32\."):
        allreduce_(tree, comm, buffer=np.empty(5, np.float32))
    ro = np.empty(5)
    ro.flags.writeable = False
    with pytest.raises(TypeError, match=r"got a read-only vector of dtype float64\."):
        bcast_(tree, comm, buffer=ro)
    frozen = np.ones(2)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"parameter 1 of the tree \(shape \(2,\)\) is "
                                         r"read-only"):
        allreduce_({"a": np.ones(1), "b": frozen}, comm)
    with pytest.raises(ValueError, match=r"bcast_: root must be a rank of the communicator, 0 "
                                         r"to 0, got 1\."):
        bcast_(tree, comm, root=1)
    with pytest.raises(ValueError, match=r"root must be a rank .* got True\."):
        bcast_(tree, comm, root=True)


@needs_mpi4py
def test_shard():
    comm = MPI.COMM_SELF
    Xs, Ys = distributed.shard((X, Y), comm)
    assert Xs.base is X and Xs.shape == X.shape and Ys.shape == Y.shape
    assert isinstance(distributed.shard([X, Y], comm), list)
    assert distributed.shard(X, comm).shape == X.shape
    with pytest.raises(ValueError, match=r"the arrays must have the same number of rows, got "
                                         r"\[41, 40\]\."):
        distributed.shard((X, Y[:40]), comm)
    with pytest.raises(TypeError, match=r"expected arrays with a leading axis of rows, got "
                                        r"float at position 1\."):
        distributed.shard((X, 1.0), comm)
    with pytest.raises(ValueError, match=r"got an empty tuple\."):
        distributed.shard((), comm)
    assert distributed.world() is MPI.COMM_WORLD


@pytest.mark.parametrize("n", [0, 1, 5, 40, 41])
@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_shard_range_splits_like_array_split(n, size):
    want = [(int(p[0]), int(p[-1]) + 1) if p.size else None
            for p in np.array_split(np.arange(n), size)]
    got = [_shard_range(n, r, size) for r in range(size)]
    assert [g if g[0] < g[1] else None for g in got] == want
    assert [b - a for a, b in got] == [p.size for p in np.array_split(np.arange(n), size)]


def test_without_mpi4py_the_errors_say_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)         # as if it were not installed
    with pytest.raises(ImportError, match=r"needs mpi4py and an MPI library: python -m pip "
                                          r"install \"fluxtree\[mpi\]\""):
        distributed.world()
    with pytest.raises(ImportError, match=r"fluxtree\[mpi\]"):
        Objective(mlp(), ft.losses.mse, (X, Y), comm=object())
    assert cli_main(["fit", "--mpi", "--dataset", "iris", "--no-progress"]) == 1
    assert "fluxtree fit: error: --mpi: fluxtree.distributed needs mpi4py" in \
        capsys.readouterr().err
    obj = Objective(mlp(), ft.losses.mse, (X, Y))         # everything else works
    assert obj.fun(obj.x0) > 0


def test_fit_mpi_rejects_batchnorm(capsys):
    assert cli_main(["fit", "--mpi", "--batchnorm", "--no-progress"]) == 1
    assert "--batchnorm cannot be combined with --mpi" in capsys.readouterr().err


@needs_mpi4py
@pytest.mark.parametrize("where", ["docs/distributed.md", "fluxtree.distributed"])
def test_the_skipped_examples_run_on_one_rank(where):
    """The MPI examples of the guide and the docstrings are marked +SKIP (they need
    mpi4py); here, where mpi4py is installed, they run on one rank with the marks off."""
    if where.endswith(".md"):
        text = DOCS.read_text()
        tests = [doctest.DocTestParser().get_doctest(text, {}, DOCS.name, str(DOCS), 0)]
    else:
        tests = doctest.DocTestFinder().find(distributed)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    skipped = 0
    for test in tests:
        for example in test.examples:
            skipped += example.options.pop(doctest.SKIP, False)
        runner.run(test)
    assert runner.failures == 0 and skipped >= 5


if __name__ == "__main__":          # one rank of a 2-rank case: CASE OUT
    globals()[f"_case_{sys.argv[1]}"](sys.argv[2])
