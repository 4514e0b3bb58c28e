"""Run every public docstring example of the installed package as a doctest."""
import doctest
import importlib
import pkgutil

import pytest

import fluxtree

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(fluxtree.__path__, "fluxtree.")
    if not m.name.split(".")[-1].startswith("_") and ".cuda" not in m.name
) + ["fluxtree", "fluxtree._kernels._walk"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
