"""What every result type of ``theory`` shares: field-by-field equality that works on arrays.

A frozen dataclass compares its fields as a tuple, and ``==`` on two numpy arrays returns an
array, so the generated ``__eq__`` raises "truth value of an array is ambiguous". Result types
inherit :class:`ArrayFields` instead (and are declared with ``eq=False`` so that the dataclass
machinery does not replace it): two results are equal when they are of the same type and every
field is equal, arrays by shape and value (NaN equal to NaN). They are not hashable.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["ArrayFields"]


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (np.ndarray, np.generic, float)) or isinstance(b, (np.ndarray, np.generic, float)):
        a, b = np.asarray(a), np.asarray(b)
        numeric = a.dtype.kind in "biufc" and b.dtype.kind in "biufc"
        return bool(np.array_equal(a, b, equal_nan=numeric))
    return bool(a == b)


class ArrayFields:
    """Mixin for frozen result dataclasses whose fields hold numpy arrays."""

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self))

    __hash__ = None
