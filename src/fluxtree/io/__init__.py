"""Model state: ``state``, ``loadmodel_`` and checkpoints (``save`` / ``load``).

``state(model)`` is the model as plain data: dicts, tuples, lists, arrays (the model's own
objects), numbers, strings and ``None``; every other leaf (activation functions, RNGs,
types) becomes ``()``.  ``loadmodel_(dst, src)`` copies the arrays of a model or a state
into a model of the same architecture, in place, after checking the whole tree.

``save(path, x)`` writes ``state(x)`` as ``.npz`` or ``.safetensors`` (chosen by the
extension); ``load(path)`` reads it back.  Both formats keep the tree in a JSON metadata
entry (tuples apart from lists, dict key types, numbers, strings, ``None``, ``()``), store
each array once under its key path (``layers[0].weight``; tied arrays once, and they come
back tied), and never pickle.  Writes are atomic: a temporary file in the same directory,
flushed and ``fsync``-ed, then renamed over the target.

Safetensors has no complex dtype: a complex64 (complex128) array is stored as an F32 (F64)
tensor with a trailing axis of length 2 (real, imaginary: its own bytes) and the metadata
marks it complex, so ``load`` gives back the complex array.  Other readers see the pair.
"""
from .checkpoint import load as load
from .checkpoint import save as save
from .loadmodel import loadmodel_ as loadmodel_
from .state import state as state

__all__ = ["load", "loadmodel_", "save", "state"]
