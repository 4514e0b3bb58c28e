"""Build the Cython extensions; all metadata lives in pyproject.toml."""
import os
import sys
from glob import glob

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def openmp_flags():
    if os.environ.get("FLUXTREE_NO_OPENMP"):
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    if sys.platform == "darwin":
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


omp_c, omp_l = openmp_flags()
opt = ["/O2"] if sys.platform == "win32" else ["-O3"]
extensions = [
    Extension(
        name=path[len("src/"):-len(".pyx")].replace(os.sep, "."),
        sources=[path],
        include_dirs=[np.get_include(), "include"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
        extra_compile_args=opt + omp_c,
        extra_link_args=omp_l,
    )
    for path in sorted(glob("src/**/*.pyx", recursive=True))
]
setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
            "freethreading_compatible": True,
        },
        annotate=bool(os.environ.get("CYTHON_ANNOTATE")),
    )
)
