"""scipy.optimize fits of the digits MLP to one loss: fluxtree against the same scipy call
fed by PyTorch and by JAX.

The job of ``fluxtree fit``: scikit-learn's digits (1,438 training images after the 80/20
split of ``fluxtree fit``, standardised), an MLP with tanh hidden layers of ``hidden``
units (32: the default of ``fluxtree fit``; 128,128: the small MLP of the derivatives
issue) in float64, mean logit cross-entropy, from the same initial vector, until the loss reaches
``TARGET`` (a callback raises ``StopIteration``), with trust-krylov and Newton-CG (exact
Hessian-vector products) and L-BFGS-B (gradients only).

- fluxtree: ``ft.optimize.minimize`` (one recorded forward pass per point serves ``fun``,
  ``jac`` and every ``hessp`` there).
- torch: ``torch.func.grad_and_value`` for fun/jac and ``torch.func.jvp(torch.func.grad(f))``
  for hessp; jax: ``jax.jit(jax.value_and_grad(f))`` and ``jax.jit`` of
  ``jax.jvp(jax.grad(f))`` (compiled in ``setup``).  Both from ``fluxtree.cli._anchors``,
  which ``fluxtree bench`` uses too; fun and jac of one point share one evaluation there as
  well.

Targets (optimize issue): with each method fluxtree reaches the loss faster than both
anchors with no more evaluations, and fluxtree's fastest second-order method beats the
fastest anchor's fastest method.  ``track_evaluations`` is fun + jac + hessp calls.
"""
from __future__ import annotations

from typing import Any

from .common import PROFILE, THREADS, Benchmark, ft, need_jax, need_torch, np

TARGET = 0.02
METHODS = ["trust-krylov", "Newton-CG", "L-BFGS-B"]
BACKENDS = ["fluxtree", "torch", "jax"]
HIDDEN = ["32", "128,128"]


def _problem(hidden: str) -> tuple[dict, Any, Any]:
    from fluxtree.cli import _data, _models
    data = _data.load("digits")
    spec = {"inputs": data.features, "hidden": _models.parse_hidden(hidden),
            "outputs": data.classes,
            "activation": "tanh", "batchnorm": False}
    return spec, data, _models.build(spec, seed=0)


class _Stop:
    def __call__(self, intermediate_result: Any) -> None:
        if intermediate_result.fun <= TARGET:
            raise StopIteration


def _options(method: str) -> dict:
    opts: dict = {"maxiter": 1000}
    if method == "Newton-CG":
        opts["xtol"] = 1e-12
    else:
        opts["gtol"] = 1e-12
    return opts


class FitDigitsToLoss(Benchmark):
    """Wall time of one fit to ``TARGET``, and the evaluations it took."""

    params = (HIDDEN, METHODS, BACKENDS)
    param_names = ("hidden", "method", "backend")
    timeout = 900
    number = 1
    repeat = (1, 5, 60.0) if PROFILE == "regular" else (1, 1, 10.0)
    warmup_time = 0.0

    def setup(self, hidden: str, method: str, backend: str) -> None:
        if backend == "torch":
            need_torch()
        if backend == "jax":
            need_jax()
        self.spec, self.data, self.model = _problem(hidden)
        self.threads = int(THREADS) if THREADS != "0" else None
        if backend == "fluxtree":
            self.feed = None
        else:
            from fluxtree.cli import _anchors
            x0 = ft.destructure(self.model)[0]
            self.feed = _anchors.make(backend, self.spec, self.data.X_train,
                                      self.data.Y_train, np.dtype(np.float64), x0=x0,
                                      threads=self.threads)

    def _fit(self, method: str) -> dict:
        if self.feed is not None:
            return self.feed.minimize(method, _options(method), _Stop())
        res, _ = ft.optimize.minimize(
            self.model, ft.losses.logitcrossentropy, (self.data.X_train, self.data.Y_train),
            method, options=_options(method), callback=_Stop(), progress=False,
            threads=self.threads)
        return {"loss": res.fun, **res.counts}

    def time_fit(self, hidden: str, method: str, backend: str) -> None:
        self._fit(method)

    def track_evaluations(self, hidden: str, method: str, backend: str) -> int:
        run = self._fit(method)
        if run["loss"] > TARGET:
            raise RuntimeError(f"{backend} {method} stopped at loss {run['loss']:.4g} > "
                               f"{TARGET}.")
        return int(run["fun"] + run["jac"] + run["hessp"])

    track_evaluations.unit = "calls"  # type: ignore[attr-defined]
