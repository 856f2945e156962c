"""Type stubs for the compiled kernels module (ce/_kernels.pyx).

The Python-level names here are internal (the public API is in ce/__init__.py);
the C-level API for other Cython packages is declared in _kernels.pxd.
"""
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from typing_extensions import disjoint_base

from ._args import Reduction

_Floats = NDArray[np.floating[Any]]
_F64 = NDArray[np.float64]
_I64 = NDArray[np.int64]

NO_TARGET: object
PARALLEL_MIN_LOGITS: int

def max_threads() -> int: ...
def have_openmp() -> bool: ...
def simd_level() -> str: ...

SIMD_LEVELS: dict[str, int]

def simd_levels() -> list[str]: ...
def _set_simd(level: str | None) -> str | None: ...
def _thresholds() -> dict[str, int]: ...
def probe_bandwidth(kind: str, a: _F64, b: _F64, n_threads: int) -> float: ...
def check_labels(
    labels: _I64,
    n_classes: int,
    ignore_index: int,
    class_weight: _F64 | None,
    row_weight: _F64 | None,
) -> tuple[int, float, int]: ...

@disjoint_base
class Call:
    """One validated call: its inputs and options, and the C problem struct."""

    n_threads: int
    reduction: Reduction
    dtype: np.dtype[Any]
    axes: tuple[int, ...]
    name: str
    x: _Floats
    labels: _I64 | None
    target_rows: _Floats | None
    class_weight: _Floats | None
    class_weight_64: _F64 | None
    row_weight: _F64 | None
    upstream_grad: _F64 | None
    lse_in: _F64 | None
    weight_total: float
    def __init__(
        self,
        *,
        logits: ArrayLike,
        target: ArrayLike | object = ...,
        axis: int | tuple[int, ...] = -1,
        reduction: Reduction = "mean",
        weight: ArrayLike | None = None,
        sample_weight: ArrayLike | None = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        from_logits: bool = True,
        n_threads: int | None = None,
        z_loss: float = 0.0,
        softcap: float | None = None,
        grad_output: ArrayLike = 1.0,
        lse: ArrayLike | None = None,
        name: str = "logits",
    ) -> None: ...
    @property
    def n_rows(self) -> int: ...
    @property
    def n_classes(self) -> int: ...
    @property
    def ignore_index(self) -> int: ...
    @property
    def from_logits(self) -> bool: ...
    @property
    def has_labels(self) -> bool: ...
    @property
    def grad_scale(self) -> float: ...
    def result(self, total: float, row_loss: _F64 | None = None) -> Any: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def rest(self) -> tuple[int, ...]: ...
    @property
    def rows(self) -> _Floats: ...
    def arrays(self) -> list[NDArray[Any]]: ...

def _set_half_portable(on: bool) -> None: ...
def _half_round(src: NDArray[np.float32], bf: bool) -> NDArray[np.uint16]: ...
def solve(
    call: Call,
    *,
    grad: _Floats | None = None,
    softmax: _Floats | None = None,
    log_softmax: _Floats | None = None,
    row_loss: _F64 | None = None,
    row_lse: _F64 | None = None,
    row_argmax: _I64 | None = None,
    row_rank: _I64 | None = None,
) -> float: ...
def loss(call: Call) -> Any: ...
def loss_and_lse(call: Call) -> tuple[Any, _F64]: ...
def gradient(call: Call, out: _Floats | None = None) -> _Floats: ...
def loss_and_gradient(
    call: Call, out: _Floats | None = None, return_lse: bool = False
) -> tuple[Any, _Floats] | tuple[Any, _Floats, _Floats]: ...
def output_for(call: Call, out: _Floats | None = None) -> tuple[_Floats, _Floats, _Floats | None]: ...
def score_counts(call: Call, ks: tuple[int, ...]) -> tuple[Any, ...] | None: ...
