"""Build the extension against the installed ce's ce/_kernels.pxd."""
import os

import ce
from Cython.Build import cythonize
from setuptools import Extension, setup

CE_SITE = os.path.dirname(os.path.dirname(ce.__file__))  # the directory holding ce/_kernels.pxd

setup(
    name="ce-cython-example",  # also in pyproject.toml; without it an old setuptools says UNKNOWN
    ext_modules=cythonize(
        [Extension("ce_cython_example._loss", ["ce_cython_example/_loss.pyx"])],
        include_path=[CE_SITE],
        compiler_directives={"language_level": 3},
    ),
)
