"""Type stubs for the compiled exact-sum module (ce/_exact.pyx); internal."""
import numpy as np
from numpy.typing import NDArray

POS_INF: int
NEG_INF: int
NAN: int

def exact_sum(values: NDArray[np.float64], mask: NDArray[np.bool_] | None = None) -> tuple[int, int]: ...
