"""What each ``fluxtree`` sub-command does (the parser is in ``fluxtree.cli``)."""
from __future__ import annotations

import contextlib
import io
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from .. import distributed, losses, nn, optimize
from ..flat import destructure
from ..functors import fmap_with_path
from ..io import load, loadmodel_, save
from . import CommandError, _data, _models, _png

#: the ``format`` entry of checkpoints written by ``fluxtree fit``
CHECKPOINT_FORMAT = "fluxtree.fit/1"


def _spec(args: Any, data: _data.Dataset) -> dict[str, Any]:
    return {"inputs": data.features, "hidden": list(args.hidden), "outputs": data.classes,
            "activation": args.activation, "batchnorm": bool(args.batchnorm)}


def _arch(spec: dict[str, Any]) -> str:
    return "-".join(str(n) for n in [spec["inputs"], *spec["hidden"], spec["outputs"]])


def _accuracy(model: Any, X: np.ndarray, Y: np.ndarray) -> float:
    if X.shape[0] == 0:
        return float("nan")
    return float(np.mean(np.argmax(model(X), axis=1) == np.argmax(Y, axis=1)))


def _percent(a: float) -> str:
    return "-" if np.isnan(a) else f"{100 * a:.2f} %"


def _load_data(args: Any) -> _data.Dataset:
    return _data.load(args.dataset, test_fraction=getattr(args, "test_fraction", 0.2),
                      seed=args.seed, dtype=np.dtype(args.dtype).type)


class _Stop:
    """A scipy callback that stops once the loss reaches ``target`` (None: never)."""

    def __init__(self, target: float | None) -> None:
        self.target = target

    def __call__(self, intermediate_result: Any) -> None:
        if self.target is not None and intermediate_result.fun <= self.target:
            raise StopIteration


def _options(method: str, args: Any) -> dict[str, Any]:
    opts: dict[str, Any] = {"maxiter": args.max_iter}
    if method in ("Newton-CG",):
        opts["xtol"] = 1e-12                 # stop on the gradient, as the others do
    if method in ("trust-ncg", "trust-krylov", "trust-exact", "dogleg", "CG", "BFGS",
                  "trust-constr", "TNC", "L-BFGS-B"):
        opts["gtol"] = args.gtol
    return opts


# ----------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------
def _communicator(args: Any) -> Any:
    """MPI's world communicator for ``--mpi`` (None without it)."""
    if not getattr(args, "mpi", False):
        return None
    if args.batchnorm:
        raise CommandError("--batchnorm cannot be combined with --mpi: in training mode "
                           "BatchNorm would normalise each rank's shard with that shard's "
                           "own statistics.")
    try:
        return distributed.world()
    except ImportError as e:
        raise CommandError(f"--mpi: {e}") from None


def fit(args: Any) -> None:
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CommandError(f"--out {args.out!r} is a file; expected a folder.")
    comm = _communicator(args)
    if comm is not None and comm.Get_rank() != 0:
        with contextlib.redirect_stdout(io.StringIO()):      # rank 0 reports for all
            _fit(args, comm)
    else:
        _fit(args, comm)


def _fit(args: Any, comm: Any) -> None:
    data = _load_data(args)
    spec = _spec(args, data)
    dtype = np.dtype(args.dtype)
    model = _models.build(spec, seed=args.seed, dtype=dtype)
    n_params = destructure(model)[0].size
    what = ("exact Hessian-vector products" if args.curvature == "hessian"
            else "Gauss-Newton products")
    n_train = data.X_train.shape[0]
    print(f"fluxtree fit: {data.name}, {n_train} training / "
          f"{data.X_test.shape[0]} test observations, {data.features} features, "
          f"{data.classes} classes")
    train = (data.X_train, data.Y_train)
    if comm is not None:
        size = comm.Get_size()
        lo, hi = n_train // size, -(-n_train // size)
        print(f"MPI: {size} rank{'s' if size > 1 else ''}, "
              f"{lo if lo == hi else f'{lo}-{hi}'} training observations each")
        train = distributed.shard(train, comm)
    print(f"{args.method} ({what}), {dtype}, {n_params} parameters\n")
    print(str(model))
    print()
    t0 = time.perf_counter()
    result, fitted = optimize.minimize(
        model, losses.logitcrossentropy, train, args.method,
        options=_options(args.method, args), callback=_Stop(args.target_loss),
        progress=not args.no_progress, dtype=dtype, curvature=args.curvature,
        threads=args.threads, comm=comm)
    elapsed = time.perf_counter() - t0
    c = result.counts
    train_acc = _accuracy(fitted, data.X_train, data.Y_train)
    test_acc = _accuracy(fitted, data.X_test, data.Y_test)
    ckpt = os.path.join(args.out, f"model.{args.format}")
    png = os.path.join(args.out, "loss.png")
    if comm is None or comm.Get_rank() == 0:
        os.makedirs(args.out, exist_ok=True)
        save(ckpt, {"format": CHECKPOINT_FORMAT, "spec": spec, "dataset": data.name,
                    "preprocess": {"mean": data.mean, "scale": data.scale},
                    "fit": {"method": args.method, "curvature": args.curvature,
                            "loss": result.fun, "iterations": len(result.history) - 1},
                    "model": fitted})
        _png.write_png(png, _png.line_plot(
            result.history, title=f"{data.name}  {_arch(spec)}  {args.method}",
            ylabel="training loss"))
    print(f"result:       {result.message}")
    print(f"iterations:   {len(result.history) - 1}")
    print(f"loss:         {result.fun:.6g} (mean cross-entropy, training set)")
    print(f"accuracy:     train {_percent(train_acc)}, test {_percent(test_acc)}")
    print(f"time:         {elapsed:.2f} s")
    print(f"evaluations:  fun {c['fun']}, jac {c['jac']}, hessp {c['hessp']} "
          f"({c['forward']} forward passes)")
    print(f"checkpoint:   {ckpt}")
    print(f"loss curve:   {png}")
    if not np.isfinite(result.fun):
        raise CommandError(f"the optimisation diverged (loss {result.fun}).")


# ----------------------------------------------------------------------------
# summary and inspect
# ----------------------------------------------------------------------------
def _read_checkpoint(path: str) -> Any:
    if not os.path.exists(path):
        raise CommandError(f"checkpoint {path!r} does not exist.")
    if os.path.isdir(path):
        raise CommandError(f"checkpoint {path!r} is a folder; expected a .npz or "
                           f".safetensors file.")
    return load(path)


def model_from_checkpoint(path: str) -> tuple[Any, Any]:
    """The model stored by ``fluxtree fit`` in ``path``, and the whole checkpoint."""
    ckpt = _read_checkpoint(path)
    if not (isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT
            and "spec" in ckpt and "model" in ckpt):
        raise CommandError(f"{path!r} was not written by `fluxtree fit` (it has no model "
                           f"spec); `fluxtree inspect {path}` lists what it holds.")
    try:
        spec = _models.check_spec(ckpt["spec"])
    except ValueError as e:
        raise CommandError(f"{path!r} holds a damaged model spec: {e}") from None
    weights = [a for a in _arrays(ckpt["model"]) if a[1].dtype.kind == "f"]
    dtype = weights[0][1].dtype if weights else np.dtype(np.float64)
    model = _models.build(spec, dtype=dtype)
    try:
        loadmodel_(model, ckpt["model"])
    except (ValueError, TypeError) as e:
        raise CommandError(f"the model in {path!r} does not match its spec: {e}") from None
    return model, ckpt


def summary(args: Any) -> None:
    if args.checkpoint is not None:
        model, ckpt = model_from_checkpoint(args.checkpoint)
        fit = ckpt.get("fit", {})
        print(f"{args.checkpoint}: {ckpt.get('dataset', '?')}, fitted with "
              f"{fit.get('method', '?')} to loss {fit.get('loss', float('nan')):.6g}\n")
    else:
        data = _data.load(args.dataset, seed=args.seed)
        model = _models.build(_spec(args, data), seed=args.seed, dtype=np.dtype(args.dtype))
    print(str(model))


def _arrays(tree: Any) -> list[tuple[str, np.ndarray]]:
    found: list[tuple[str, Any]] = []

    def visit(path: Any, leaf: Any) -> Any:
        found.append((str(path), leaf))
        return leaf

    fmap_with_path(visit, tree)
    return [(p, a) for p, a in found if isinstance(a, np.ndarray)]


def inspect(args: Any) -> None:
    ckpt = _read_checkpoint(args.checkpoint)
    found: list[tuple[str, Any]] = []

    def visit(path: Any, leaf: Any) -> Any:
        found.append((str(path) or "(root)", leaf))
        return leaf

    fmap_with_path(visit, ckpt)
    arrays = [(p, a) for p, a in found if isinstance(a, np.ndarray)]
    others = [(p, v) for p, v in found if not isinstance(v, np.ndarray)]
    size = os.path.getsize(args.checkpoint)
    print(f"{args.checkpoint}: {len(arrays)} arrays, "
          f"{nn.show.underscorise(sum(a.size for _, a in arrays))} numbers, "
          f"{nn.show.format_bytes(sum(a.nbytes for _, a in arrays))} of data, file "
          f"{nn.show.format_bytes(size)}")
    if arrays:
        w = max(len("path"), *(len(p) for p, _ in arrays))
        print(f"\n{'path':<{w}}  {'dtype':<9} {'shape':<14} {'size':>10}")
        for p, a in arrays:
            print(f"{p:<{w}}  {a.dtype!s:<9} {a.shape!s:<14} "
                  f"{nn.show.underscorise(a.size):>10}")
        by_dtype: dict[str, int] = {}
        for _, a in arrays:
            by_dtype[str(a.dtype)] = by_dtype.get(str(a.dtype), 0) + a.size
        print("\ntotal: " + ", ".join(f"{nn.show.underscorise(n)} {d}"
                                      for d, n in by_dtype.items()))
    shown = [(p, v) for p, v in others if v != ()]
    if shown:
        print("\nvalues:")
        for p, v in shown:
            print(f"  {p} = {v!r}")


# ----------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------
def bench(args: Any) -> None:
    from . import _anchors
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - {"fluxtree", "torch", "jax"})
    if unknown or not backends:
        raise CommandError(f"--backends takes fluxtree, torch and jax, got "
                           f"{args.backends!r}.")
    if not args.methods:
        raise CommandError("--methods names no method.")
    if args.batchnorm and set(backends) - {"fluxtree"}:
        raise CommandError("the PyTorch and JAX anchors build plain MLPs; drop --batchnorm "
                           "or run --backends fluxtree.")
    if args.curvature != "hessian" and set(backends) - {"fluxtree"}:
        raise CommandError("the PyTorch and JAX anchors compute exact Hessian-vector "
                           "products; drop --curvature or run --backends fluxtree.")
    data = _load_data(args)
    spec = _spec(args, data)
    dtype = np.dtype(args.dtype)
    model = _models.build(spec, seed=args.seed, dtype=dtype)
    x0, re = destructure(model)
    print(f"fluxtree bench: {data.name}, MLP {_arch(spec)} ({spec['activation']}), "
          f"{x0.size} parameters, {dtype}, {data.X_train.shape[0]} observations, "
          f"{args.threads} thread(s) per backend, target loss {args.target_loss}")
    feeds: dict[str, Any] = {}
    for b in backends:
        if b == "fluxtree":
            feeds[b] = None
            continue
        try:
            feeds[b] = _anchors.make(b, spec, data.X_train, data.Y_train, dtype, x0=x0,
                                     threads=args.threads)
        except ImportError as e:
            print(f"  {b}: skipped ({e})")
    header = (f"\n{'method':<13} {'backend':<9} {'time (s)':>9} {'vs fluxtree':>11} "
              f"{'fun':>5} {'jac':>5} {'hessp':>6} {'loss':>10} {'train':>8} {'test':>8}")
    print(header)
    print("-" * (len(header) - 1))
    for method in args.methods:
        base = None
        for b, feed in feeds.items():
            times, run = [], None
            for _ in range(args.repeat):
                run = _run_one(method, feed, model, data, args, dtype)
                times.append(run["time"])
            assert run is not None
            t = statistics.median(times)
            if b == "fluxtree":
                base = t
            ratio = "" if base is None or b == "fluxtree" else f"{t / base:.2f}x"
            fitted = re(np.asarray(run["x"], dtype=dtype))
            print(f"{method:<13} {b:<9} {t:>9.3f} {ratio:>11} {run['fun']:>5} "
                  f"{run['jac']:>5} {run['hessp']:>6} {run['loss']:>10.4g} "
                  f"{_percent(_accuracy(fitted, data.X_train, data.Y_train)):>8} "
                  f"{_percent(_accuracy(fitted, data.X_test, data.Y_test)):>8}")
    print("\ntime: scipy.optimize.minimize from the same x0 until the loss reaches the "
          "target; JAX's compilation happens before the clock starts.")
    sys.stdout.flush()


def _run_one(method: str, feed: Any, model: Any, data: _data.Dataset, args: Any,
             dtype: np.dtype) -> dict[str, Any]:
    opts = _options(method, args)
    stop = _Stop(args.target_loss)
    if feed is None:
        t0 = time.perf_counter()
        result, _ = optimize.minimize(
            model, losses.logitcrossentropy, (data.X_train, data.Y_train), method,
            options=opts, callback=stop, progress=False, dtype=dtype,
            curvature=args.curvature, threads=args.threads)
        elapsed = time.perf_counter() - t0
        c = result.counts
        return {"time": elapsed, "x": result.x, "loss": result.fun, "fun": c["fun"],
                "jac": c["jac"], "hessp": c["hessp"]}
    return feed.minimize(method, opts, stop)
