"""The ``fluxtree`` command: ``fit``, ``summary``, ``inspect``, ``bench``.

``fluxtree fit`` trains a multi-layer perceptron on a data set that ships with
scikit-learn (digits by default) with scipy's trust-krylov method and exact Hessian-vector
products, then prints the model, the accuracy, the time and the evaluation counts and
writes a checkpoint and a loss-curve PNG.  ``fluxtree summary`` prints a model (from the
options or a checkpoint), ``fluxtree inspect`` lists a checkpoint's arrays, and
``fluxtree bench`` runs the same fit with fluxtree, PyTorch and JAX derivatives side by
side.  See ``docs/cli.md``.

``mpiexec -n 4 fluxtree fit --mpi`` shards the training set over the MPI ranks (one
collective per evaluation, every rank in lock-step; see ``docs/distributed.md``); rank 0
prints and writes the outputs.  A rank that fails ends the whole job (``MPI_Abort``).

Exit codes: 0 on success, 1 when the command fails (a missing or damaged file, an
optimisation that fails), 2 for bad arguments, 130 when interrupted.

>>> from fluxtree.cli import build_parser
>>> args = build_parser().parse_args(["fit", "--hidden", "32,16", "--max-iter", "5"])
>>> args.command, args.hidden, args.max_iter, args.method
('fit', [32, 16], 5, 'trust-krylov')
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["build_parser", "load_fitted", "main"]


class CommandError(Exception):
    """A failure to report as ``fluxtree: error: ...`` with exit code 1."""


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def _nonnegative_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return n


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0.0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _hidden(text: str) -> list[int]:
    from ._models import parse_hidden
    try:
        return parse_hidden(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).rstrip(".")) from None


def _method_name(text: str) -> str:
    from ..optimize import METHODS
    for m in METHODS:
        if m.lower() == text.lower():
            return m
    raise argparse.ArgumentTypeError(f"unknown method {text!r}; expected one of "
                                     f"{', '.join(METHODS)}")


def _method_list(text: str) -> list[str]:
    return [_method_name(t.strip()) for t in text.split(",") if t.strip()]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", metavar="NAME",
                   help="digits, iris, wine, breast_cancer (read from scikit-learn's "
                        "package, no download) or a .npz file with arrays X and y "
                        "(default: digits)")
    p.add_argument("--hidden", type=_hidden, default=[32], metavar="SIZES",
                   help="hidden layer sizes, comma-separated, e.g. 64,64; 'none' for "
                        "no hidden layer (default: 32)")
    from ._models import ACTIVATIONS
    p.add_argument("--activation", choices=list(ACTIVATIONS), default="tanh",
                   help="activation of the hidden layers (default: tanh)")
    p.add_argument("--batchnorm", action="store_true",
                   help="follow each hidden Dense with a BatchNorm")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="precision of the model and its derivatives (default: float64)")
    p.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="seed of the initial weights and the train/test split (default: 0)")


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    _add_model_options(p)
    p.add_argument("--curvature", choices=["hessian", "gauss-newton"], default="hessian",
                   help="exact Hessian-vector products or Gauss-Newton ones (default: "
                        "hessian)")
    p.add_argument("--max-iter", type=_positive_int, default=200, metavar="N",
                   help="iteration limit of the optimiser (default: 200)")
    p.add_argument("--gtol", type=_positive_float, default=1e-5, metavar="G",
                   help="stop when the gradient norm is below G (default: 1e-5)")
    p.add_argument("--target-loss", type=_positive_float, default=None, metavar="L",
                   help="stop as soon as the training loss is at or below L")
    p.add_argument("--test-fraction", type=_fraction, default=0.2, metavar="F",
                   help="share of the data held out for testing (default: 0.2)")
    p.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                   help="BLAS threads of fluxtree's kernels during the fit (default: 1; "
                        "NumPy's own pool always runs 1 thread)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fluxtree`` command."""
    from .. import __version__
    parser = argparse.ArgumentParser(
        prog="fluxtree",
        description="Fit, print, inspect and benchmark fluxtree models.")
    parser.add_argument("--version", action="version", version=f"fluxtree {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    fit = sub.add_parser(
        "fit", help="train an MLP with scipy and exact Hessian-vector products",
        description="Train an MLP on a data set with scipy.optimize.minimize and exact "
                    "derivatives; print the model, accuracy, time and evaluation counts; "
                    "write a checkpoint and a loss-curve PNG into --out.")
    _add_fit_options(fit)
    fit.add_argument("--method", type=_method_name, default="trust-krylov",
                     help="scipy.optimize.minimize method (default: trust-krylov)")
    fit.add_argument("--out", default=".", metavar="DIR",
                     help="folder for model.npz and loss.png (default: the current "
                          "folder; created if missing)")
    fit.add_argument("--format", choices=["npz", "safetensors"], default="npz",
                     help="checkpoint format (default: npz)")
    fit.add_argument("--no-progress", action="store_true", help="no progress line")
    fit.add_argument("--mpi", action="store_true",
                     help="run under mpiexec: shard the training set over the MPI ranks "
                          "(needs mpi4py: pip install 'fluxtree[mpi]'); rank 0 prints and "
                          "writes the outputs")

    summary = sub.add_parser(
        "summary", help="print a model (from the options or a checkpoint)",
        description="Print the Flux-style summary of the model that `fluxtree fit` would "
                    "build with these options, or of the model in a checkpoint written by "
                    "`fluxtree fit`.")
    summary.add_argument("checkpoint", nargs="?", default=None,
                         help="a checkpoint written by `fluxtree fit`")
    _add_model_options(summary)

    inspect = sub.add_parser(
        "inspect", help="list the arrays and values in a checkpoint",
        description="List every array of a checkpoint (.npz or .safetensors) with its "
                    "path, dtype, shape and size, then the other values it holds.")
    inspect.add_argument("checkpoint", help="a .npz or .safetensors file")

    bench = sub.add_parser(
        "bench", help="the fit with fluxtree, PyTorch and JAX derivatives side by side",
        description="Run the same scipy fit with fun/jac/hessp from fluxtree, from "
                    "PyTorch (torch.func) and from JAX (jax.jit of jvp(grad)), where "
                    "installed, and print wall time, evaluations, final loss and "
                    "accuracy.")
    _add_fit_options(bench)
    bench.set_defaults(target_loss=0.02)
    bench.add_argument("--methods", type=_method_list,
                       default=["trust-krylov", "Newton-CG", "L-BFGS-B"], metavar="LIST",
                       help="comma-separated scipy methods (default: "
                            "trust-krylov,Newton-CG,L-BFGS-B)")
    bench.add_argument("--backends", default="fluxtree,torch,jax", metavar="LIST",
                       help="comma-separated, of fluxtree, torch, jax (default: all)")
    bench.add_argument("--repeat", type=_positive_int, default=1, metavar="N",
                       help="runs per cell; the table shows the median time (default: 1)")
    return parser


def load_fitted(path: str) -> tuple[Any, dict]:
    """The model in a checkpoint written by ``fluxtree fit``, and the whole checkpoint
    (``spec``, ``preprocess`` with the ``mean`` and ``scale`` to apply to new inputs,
    ``fit``); a ``CommandError`` when the file is missing or was not written by ``fit``."""
    from ._commands import model_from_checkpoint
    return model_from_checkpoint(path)


def _end_job(args: Any, error: BaseException) -> None:
    """Under ``--mpi``, abort every rank after this one failed: the others would wait in
    their next collective for ever.  A ``RankError`` means the ranks already stop together."""
    from ..distributed import RankError
    MPI = sys.modules.get("mpi4py.MPI")
    if not getattr(args, "mpi", False) or MPI is None or isinstance(error, RankError):
        return
    comm: Any = MPI.COMM_WORLD
    if comm.Get_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        comm.Abort(1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..distributed import RankError
    from . import _commands
    commands: dict[str, Callable[[Any], None]] = {
        "fit": _commands.fit, "summary": _commands.summary,
        "inspect": _commands.inspect, "bench": _commands.bench,
    }
    try:
        commands[args.command](args)
    except KeyboardInterrupt:
        print("fluxtree: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:                  # `fluxtree inspect ... | head`
        sys.stdout = open(os.devnull, "w")   # noqa: SIM115 - stays open until exit
        return 141
    except (CommandError, OSError, ValueError, RankError) as e:
        message = str(e) if not isinstance(e, OSError) or not e.filename else (
            f"{e.strerror}: {e.filename!r}")
        print(f"fluxtree {args.command}: error: {message}", file=sys.stderr)
        _end_job(args, e)
        return 1
    except Exception as e:
        if not getattr(args, "mpi", False):
            raise
        traceback.print_exc()
        _end_job(args, e)
        return 1
    return 0
