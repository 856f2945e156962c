"""Exact float64 sums that merge without rounding (the totals of a `ce.Score`).

An `ExactSum` is the exact sum of some float64 values: the finite ones as one
Python integer in units of 2^-1074 (every finite double is an integer multiple
of it), the non-finite ones as flags. Adding two is exact, so any split of the
values into parts, merged in any order, gives the same total; `float()` rounds
it once, to nearest (ties to even). The C loop is in _ce_exact.h.
"""
import math

import numpy as np

from ._exact import NAN, NEG_INF, POS_INF, exact_sum

_UNIT = 1 << 1074  # 2^1074: the integer of 1.0


class ExactSum:
    """The exact sum of float64 values; ``a + b`` merges, ``float(a)`` rounds once."""

    __slots__ = ("units", "special")

    def __init__(self, units=0, special=0):
        self.units = units       # int: sum of the finite values, in units of 2^-1074
        self.special = special   # POS_INF | NEG_INF | NAN flags of the non-finite ones

    @classmethod
    def of_float(cls, value):
        """The sum of the single value `value` (a float or an int)."""
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return cls(int(value) * _UNIT)
        v = float(value)
        if math.isnan(v):
            return cls(0, NAN)
        if math.isinf(v):
            return cls(0, POS_INF if v > 0 else NEG_INF)
        num, den = v.as_integer_ratio()   # den is a power of two <= 2^1074
        return cls(num * (_UNIT // den))

    @classmethod
    def of_array(cls, values, where=None):
        """The sum of a 1-D float64 array (over the True entries of the bool array `where`)."""
        values = np.require(values, np.float64, "A")  # aligned (pickled buffers may not be)
        if where is not None:
            where = np.require(where, np.bool_, ("C", "A"))
        units, special = exact_sum(values, where)
        return cls(units, special)

    def __add__(self, other):
        if not isinstance(other, ExactSum):
            return NotImplemented
        return ExactSum(self.units + other.units, self.special | other.special)

    def __eq__(self, other):
        if not isinstance(other, ExactSum):
            return NotImplemented
        return self.units == other.units and self.special == other.special

    __hash__ = None  # type: ignore[assignment]

    def __float__(self):
        """The sum rounded to nearest; inf + -inf (or any NaN) is NaN, as in float arithmetic."""
        if self.special & NAN or self.special == POS_INF | NEG_INF:
            return math.nan
        if self.special:
            return math.inf if self.special == POS_INF else -math.inf
        try:
            return self.units / _UNIT   # int / int: correctly rounded
        except OverflowError:
            return math.inf if self.units > 0 else -math.inf

    def __repr__(self):
        return f"ExactSum({float(self)!r})"
