"""Build the Cython kernels, with OpenMP when the compiler has it.

OpenMP is probed by compiling a tiny program; without it the extension is built
serial (with a warning). Set CE_REQUIRE_OPENMP=1 to make that an error (wheels).
Never fast-math (it breaks the exp rounding trick and NaN propagation) and never a
native-arch flag: runtime dispatch picks AVX-512/AVX2 instead.
"""
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings

import Cython
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def _compiler():
    return os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0] or "cc"


def _env_flags(*names):
    """Flags from environment variables, as the real compile and link see them."""
    return [flag for name in names for flag in shlex.split(os.environ.get(name, ""))]


def openmp_flags():
    """Return (compile, link) flags for OpenMP, or None when unavailable."""
    if sys.platform == "win32":
        return ["/openmp"], []
    if sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    source = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    cc = _compiler()
    if shutil.which(cc) is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        for cflags, ldflags in candidates:
            cmd = [cc, *_env_flags("CPPFLAGS", "CFLAGS", "CE_EXTRA_CFLAGS"), *cflags, src,
                   "-o", os.path.join(tmp, "probe"), *ldflags,
                   *_env_flags("LDFLAGS", "CE_EXTRA_LDFLAGS")]
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                return cflags, ldflags
    return None


def build_flags():
    """(compile, link) flags of the shipping build; tools/check_vectorized.py compiles with them."""
    if sys.platform == "win32":
        compile_args, link_args = ["/O2"], []
    else:
        # -fno-trapping-math lets gcc if-convert the select loops; it does not
        # change any result (we never read FP exception flags).
        compile_args = ["-O3", "-fno-trapping-math", "-fno-math-errno"]
        link_args = []
    omp = openmp_flags()
    if omp is None:
        msg = "OpenMP not found: building ce without threads (serial kernels)"
        if os.environ.get("CE_REQUIRE_OPENMP", "") not in ("", "0"):
            raise RuntimeError(msg + " and CE_REQUIRE_OPENMP is set")
        warnings.warn(msg)
        if sys.platform != "win32":
            compile_args.append("-fopenmp-simd")
    else:
        compile_args += omp[0]
        link_args += omp[1]
    extra = os.environ.get("CE_EXTRA_CFLAGS", "").split()
    return compile_args + extra, link_args + os.environ.get("CE_EXTRA_LDFLAGS", "").split()


# The Cython directives of every extension: this dict is their one source (the .pyx files have no
# `# cython:` header; tools/check_vectorized.py passes these to cython too).
# ce keeps no state that needs the GIL (README, "Free-threaded CPython"): a free-threaded CPython
# need not turn the GIL back on when it imports the extension. The directive is Cython >= 3.1's.
CYTHON_3_1 = tuple(int(part) for part in Cython.__version__.split(".")[:2]) >= (3, 1)
COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    **({"freethreading_compatible": True} if CYTHON_3_1 else {}),
}
KERNEL_HEADERS = ["src/ce/_ce_core.h", "src/ce/_ce_row.h", "src/ce/_ce_half.h", "src/ce/_ce_score.h",
                  "src/ce/_ce_transpose.h"]


def extensions(compile_args, link_args):
    return [
        Extension(
            "ce._kernels",
            ["src/ce/_kernels.pyx"],
            include_dirs=[np.get_include(), "src/ce"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            depends=[*KERNEL_HEADERS, "src/ce/_ce_exact.h", "src/ce/_kernels.pxd"],
        ),
        Extension(  # exact float64 sums for Score (no OpenMP, no SIMD dispatch needed)
            "ce._exact",
            ["src/ce/_exact.pyx"],
            include_dirs=[np.get_include(), "src/ce"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
            extra_compile_args=[a for a in compile_args if "openmp" not in a] + (
                [] if sys.platform == "win32" else ["-fopenmp-simd"]),
            extra_link_args=[a for a in link_args if "openmp" not in a and a != "-lomp"],
            depends=["src/ce/_ce_exact.h"],
        ),
    ]


if __name__ == "__main__":  # setuptools runs this file as __main__; tools import it for its values
    setup(ext_modules=cythonize(extensions(*build_flags()), compiler_directives=COMPILER_DIRECTIVES))
