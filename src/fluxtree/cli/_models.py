"""Model specs for the ``fluxtree`` command: ``--hidden 64,64`` and friends, as a ``Chain``.

A spec is a small dict of plain values (so a checkpoint can carry it):
``{"inputs": 64, "hidden": [64, 64], "outputs": 10, "activation": "tanh",
"batchnorm": False}``.  The model is ``Chain(Dense(64 => 64, tanh), Dense(64 => 64,
tanh), Dense(64 => 10))``; with ``batchnorm`` each hidden ``Dense`` has no activation and is
followed by ``BatchNorm(h, act)``.  The last layer gives logits (no activation).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import nn

__all__ = ["ACTIVATIONS", "build", "check_spec", "parse_hidden"]

ACTIVATIONS: dict[str, nn.Activation] = {
    a.name: a for a in (nn.identity, nn.relu, nn.tanh, nn.sigmoid, nn.softplus, nn.gelu,
                        nn.elu, nn.leakyrelu, nn.swish)
}


def parse_hidden(text: str) -> list[int]:
    """``"64,64" -> [64, 64]``; ``""`` or ``"none"`` for no hidden layer."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return []
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"hidden sizes must be positive integers separated by commas "
                             f"(like 64,64), got {text!r}.")
        sizes.append(int(part))
    return sizes


def check_spec(spec: Any) -> dict[str, Any]:
    """``spec`` validated (a dict with the keys above), or a ValueError saying what is wrong."""
    if not isinstance(spec, dict):
        raise ValueError(f"a model spec must be a dict, got {type(spec).__name__}.")
    missing = {"inputs", "hidden", "outputs", "activation", "batchnorm"} - set(spec)
    if missing:
        raise ValueError(f"the model spec lacks {sorted(missing)}.")
    sizes = [spec["inputs"], *spec["hidden"], spec["outputs"]]
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise ValueError(f"the model spec's layer sizes must be positive ints, got {sizes}.")
    if spec["activation"] not in ACTIVATIONS:
        raise ValueError(f"unknown activation {spec['activation']!r}: expected one of "
                         f"{', '.join(ACTIVATIONS)}.")
    if not isinstance(spec["batchnorm"], bool):
        raise ValueError(f"the model spec's batchnorm must be True or False, got "
                         f"{spec['batchnorm']!r}.")
    return spec


def build(spec: dict[str, Any], *, seed: int = 0, dtype: Any = np.float64) -> nn.Chain:
    """The ``Chain`` a spec describes, Glorot-initialised from ``seed``, in ``dtype``."""
    spec = check_spec(spec)
    rng = np.random.default_rng(seed)
    act = ACTIVATIONS[spec["activation"]]
    layers: list[Any] = []
    n_in = spec["inputs"]
    for h in spec["hidden"]:
        if spec["batchnorm"]:
            layers += [nn.Dense(n_in, h, rng=rng, dtype=dtype), nn.BatchNorm(h, act)]
        else:
            layers.append(nn.Dense(n_in, h, act, rng=rng, dtype=dtype))
        n_in = h
    layers.append(nn.Dense(n_in, spec["outputs"], rng=rng, dtype=dtype))
    model = nn.Chain(*layers)
    if spec["batchnorm"]:
        from ..precision import f32, f64
        model = f64(model) if np.dtype(dtype) == np.float64 else f32(model)
    return model
