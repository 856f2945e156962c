"""Type stubs for the compiled kernels module (ce/_kernels.pyx).

The Python-level functions here are internal (the public API is in ce/__init__.py);
the C-level API for other Cython packages is declared in _kernels.pxd.
"""
from typing import Any

import numpy as np
from numpy.typing import NDArray

_Floats = NDArray[np.floating[Any]]
_F64 = NDArray[np.float64]
_I64 = NDArray[np.int64]

MODE_FORWARD: int
MODE_FUSED: int
MODE_GRAD_LSE: int
MODE_SOFTMAX: int
MODE_LOG_SOFTMAX: int
TARGET_NONE: int
TARGET_INDEX: int
TARGET_DENSE: int

def max_threads() -> int: ...
def have_openmp() -> bool: ...
def simd_level() -> str: ...
def probe_bandwidth(kind: str, a: _F64, b: _F64, n_threads: int) -> float: ...
def check_labels(
    labels: _I64,
    n_classes: int,
    ignore_index: int,
    class_weight: _F64 | None,
    row_weight: _F64 | None,
) -> tuple[int, float, int]: ...
def plain_loss(
    logits: object,
    target: object,
    reduction: object,
    ignore_index: object,
    label_smoothing: object,
) -> np.floating[Any] | _Floats | None: ...
def plain_loss_and_grad(
    logits: object,
    target: object,
    reduction: object,
    ignore_index: object,
    label_smoothing: object,
    grad_output: object,
) -> tuple[np.floating[Any], _Floats] | None: ...
def run(
    mode: int,
    x: _Floats,
    target_kind: int,
    t: _Floats | None,
    g: _Floats | None,
    labels: _I64 | None,
    ignore_index: int,
    class_weight: _Floats | None,
    class_weight_sum: float,
    row_weight: _F64 | None,
    row_grad: _F64 | None,
    grad_scale: float,
    smoothing: float,
    z_loss: float,
    softcap: float,
    from_logits: bool,
    lse_in: _F64 | None,
    row_loss: _F64 | None,
    row_lse: _F64 | None,
    row_argmax: _I64 | None,
    row_rank: _I64 | None,
    n_threads: int,
    clip: float = 0.0,
) -> float: ...
