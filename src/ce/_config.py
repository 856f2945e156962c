"""Build and runtime facts: OpenMP, the SIMD level picked at load time."""
from typing import Any

from . import _kernels


def show_config(print_out: bool = True) -> dict[str, Any]:
    """Return (and print) how ce was built and what it runs on."""
    info = {
        "openmp": _kernels.have_openmp(),
        "max_threads": _kernels.max_threads(),
        "simd": _kernels.simd_level(),
    }
    if print_out:
        for key, value in info.items():
            print(f"{key:12s} {value}")
    return info
