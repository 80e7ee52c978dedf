"""Private helpers shared by the LoRA-One modules: argument checks and small array operations."""

from __future__ import annotations

import numpy as np

from ..validation import check_array, check_choice

_MODELS = ("linear", "relu")


def _check_data(X, Y, func):
    X = check_array(X, "X", func, ndim=(2, 3, 4))
    Y = check_array(Y, "Y", func, ndim=(2, 3, 4))
    try:
        ok = X.shape[-2] == Y.shape[-2] and np.broadcast_shapes(X.shape[:-2], Y.shape[:-2]) is not None
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"The 'X' and 'Y' parameters of {func} must have the same number of rows N and "
            f"broadcastable batch axes (..., N, ·). Got X of shape {X.shape} and Y of shape {Y.shape}."
        )
    if X.shape[-2] < 1 or X.shape[-1] < 1 or Y.shape[-1] < 1:
        raise ValueError(f"The 'X' and 'Y' parameters of {func} must have N, d, m >= 1. "
                         f"Got X of shape {X.shape} and Y of shape {Y.shape}.")
    return X, Y


def _check_W0(W0, d, m, func, name="W0"):
    return check_array(W0, name, func, ndim=(2, 3, 4), shape=(d, m))


def _check_factors(A, B, d, m, func, names=("A0", "B0")):
    A = check_array(A, names[0], func, ndim=(2, 3, 4), shape=(d, None))
    r = A.shape[-1]
    if not 1 <= r <= min(d, m):
        raise ValueError(f"The {names[0]!r} parameter of {func} must have shape (..., {d}, r) with "
                         f"1 <= r <= {min(d, m)}. Got shape {A.shape}.")
    B = check_array(B, names[1], func, ndim=(2, 3, 4), shape=(r, m))
    return A, B


def _check_model(model, func):
    return check_choice(model, "model", func, _MODELS)


def _relu(Z):
    return np.maximum(Z, 0.0)


def _T(M):
    return np.swapaxes(M, -1, -2)
