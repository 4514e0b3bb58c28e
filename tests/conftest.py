"""Shared test configuration: hypothesis profiles, GPU marker handling, the `xp` fixture."""
import os

import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

try:
    import cupy

    HAS_GPU = bool(cupy.is_available())
except ImportError:
    cupy, HAS_GPU = None, False


def pytest_collection_modifyitems(config, items):
    if not HAS_GPU:
        skip = pytest.mark.skip(reason="needs a CUDA device (cupy.is_available() is False)")
        for item in items:
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip)


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    return __import__(request.param)
