"""Run every public docstring example of the installed package as a doctest."""
import doctest
import importlib
import pkgutil
from pathlib import Path

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


DOCS = sorted((Path(__file__).resolve().parent.parent / "docs").glob("*.md"))


@pytest.mark.parametrize("page", DOCS, ids=[p.name for p in DOCS])
def test_user_guide_examples(page):
    result = doctest.testfile(str(page), module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} example(s) failed in docs/{page.name}"


def test_user_guide_pages_exist():
    assert {"trees.md", "flat.md"} <= {p.name for p in DOCS}


def test_readme_examples():
    readme = Path(__file__).resolve().parent.parent / "README.md"
    result = doctest.testfile(str(readme), module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
