"""Data sets for ``fluxtree fit``: the classification tables that scikit-learn ships.

scikit-learn's wheel carries a few small data sets as CSV files inside the package
(``sklearn/datasets/data``).  They are read straight from there, without importing
scikit-learn (which would cost a second) and without any download.  A ``.npz`` file with
arrays ``X`` (observations, features) and ``y`` (integer class labels) works too.

Features are standardised with the mean and standard deviation of the training part, and
labels become one-hot rows (batch first, class axis 1).
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["DATASETS", "Dataset", "load", "split"]

#: name -> its file in sklearn/datasets/data
DATASETS: dict[str, str] = {
    "digits": "digits.csv.gz",
    "iris": "iris.csv",
    "wine": "wine_data.csv",
    "breast_cancer": "breast_cancer.csv",
}


@dataclass
class Dataset:
    """A classification table split into training and test parts, ready for a model."""

    name: str
    X_train: np.ndarray
    Y_train: np.ndarray          # one-hot, (n_train, classes)
    X_test: np.ndarray
    Y_test: np.ndarray
    mean: np.ndarray             # the standardisation, from the training part
    scale: np.ndarray

    @property
    def features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def classes(self) -> int:
        return int(self.Y_train.shape[1])


def _sklearn_data_dir() -> str:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled data sets come with scikit-learn, which is not installed; "
            "install it with `python -m pip install scikit-learn`, or pass a .npz file "
            "with arrays X and y to --dataset.")
    return os.path.join(next(iter(spec.submodule_search_locations)), "datasets", "data")


def _read_sklearn_csv(name: str) -> tuple[np.ndarray, np.ndarray]:
    path = os.path.join(_sklearn_data_dir(), DATASETS[name])
    with open(path, "rb") as fh:
        raw = fh.read()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    lines = raw.decode("ascii").strip().splitlines()
    # every file but digits starts with "n_samples,n_features,class names..."
    if name != "digits":
        lines = lines[1:]
    n_cols = lines[0].count(",") + 1
    table = np.array(",".join(lines).split(","), dtype=np.float64).reshape(len(lines), n_cols)
    return table[:, :-1], table[:, -1].astype(np.int64)


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"data set file {path!r} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "X" not in f.files or "y" not in f.files:
                raise ValueError(f"data set file {path!r} must hold arrays 'X' and 'y', got "
                                 f"{sorted(f.files)}.")
            X, y = f["X"], f["y"]
    except (OSError, EOFError) as e:  # not a zip file, truncated
        raise ValueError(f"data set file {path!r} is not a readable .npz file ({e}).") from None
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"data set file {path!r}: expected X of shape (n, features) and y "
                         f"of shape (n,), got {X.shape} and {y.shape}.")
    if X.dtype.kind not in "biuf" or y.dtype.kind not in "biu":
        raise ValueError(f"data set file {path!r}: expected numeric X and integer labels y, "
                         f"got dtypes {X.dtype} and {y.dtype}.")
    return X.astype(np.float64), y.astype(np.int64)


def read(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The features ``X`` (float64) and integer labels ``y`` of a bundled set or a ``.npz``."""
    if name in DATASETS:
        return _read_sklearn_csv(name)
    if name.endswith(".npz"):
        return _read_npz(name)
    raise ValueError(f"unknown data set {name!r}: expected one of {', '.join(DATASETS)} or a "
                     f"path to a .npz file with arrays X and y.")


def split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a random split of ``n`` observations: (train, test), each sorted."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"the test fraction must be in [0, 1), got {test_fraction}.")
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * test_fraction)
    if n - n_test < 2:
        raise ValueError(f"a test fraction of {test_fraction} leaves {n - n_test} training "
                         f"observations of {n}; at least 2 are needed.")
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def load(name: str, *, test_fraction: float = 0.2, seed: int = 0,
         dtype: type = np.float64) -> Dataset:
    """Read, split, standardise and one-hot encode a data set (see the module docstring)."""
    X, y = read(name)
    labels = np.unique(y)
    codes = np.searchsorted(labels, y)
    train, test = split(X.shape[0], test_fraction, seed)
    mean = X[train].mean(axis=0)
    scale = X[train].std(axis=0)
    scale[scale == 0] = 1.0                      # constant columns (digits' corner pixels)
    Z = ((X - mean) / scale).astype(dtype)
    onehot: np.ndarray = np.eye(len(labels), dtype=dtype)[codes]
    return Dataset(os.path.basename(name), Z[train], onehot[train], Z[test], onehot[test],
                   mean, scale)
