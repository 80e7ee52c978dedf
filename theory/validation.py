"""Argument checks shared by every public function.

Each check raises ``ValueError`` whose message names the function, the argument, what is
allowed and what was given, in the style of scikit-learn's parameter validation::

    The 'rank' parameter of reduced_rank_regression must be an int in [1, 6]. Got 9 instead.

Checks run before any work starts, so a bad call never leaves half-computed state behind.
The module is public: `sims`, the command line and user code call the same checks.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

__all__ = [
    "check_int",
    "check_real",
    "check_array",
    "check_rng",
    "check_choice",
    "check_bool",
    "check_values",
    "check_seed",
    "check_entries",
    "check_memory",
    "memory_limit",
    "MAX_DIM",
    "MAX_COUNT",
    "MAX_ENTRIES",
]

#: Upper limits that refuse absurd sizes before anything is allocated (a call with d = 10**9 would
#: otherwise die in MemoryError or swap for minutes). They are far above every experiment here
#: (d <= 100, N <= 10**5): a dimension (d, m, a rank, a width, an image side) ...
MAX_DIM = 10_000
#: ... a count (samples, tasks, starts, repetitions, grid points, batch entries) ...
MAX_COUNT = 10**7
#: ... and the entries of the largest array a call builds (2**28 float64 = 2 GiB).
MAX_ENTRIES = 2**28


def _fail(func: str, name: str, allowed: str, value) -> ValueError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ValueError(f"The {name!r} parameter of {func} must be {allowed}. Got {shown} instead.")


def check_int(value, name: str, func: str, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer in ``[low, high]``; raise otherwise.

    Parameters
    ----------
    value : object
        The argument to check: an int (Python or numpy), not a bool.
    name : str
        The argument's name, as the message prints it.
    func : str
        The function whose argument it is, as the message prints it.
    low, high : int or None
        The allowed range, both ends included; None leaves that end open.

    Examples
    --------
    >>> from theory import validation as v
    >>> v.check_int(3, 'rank', 'reduced_rank_regression', low=1, high=6)
    3
    >>> try:
    ...     v.check_int(9, 'rank', 'reduced_rank_regression', low=1, high=6)
    ... except ValueError as e:
    ...     print(e)
    The 'rank' parameter of reduced_rank_regression must be an int in [1, 6]. Got 9 instead.
    """
    lo = "-inf" if low is None else str(low)
    hi = "inf" if high is None else str(high)
    allowed = f"an int in [{lo}, {hi}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise _fail(func, name, allowed, value)
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise _fail(func, name, allowed, value)
    return value


def check_real(
    value,
    name: str,
    func: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """Return ``value`` as a finite float in ``[low, high]`` (``(low, high]`` if ``low_open``).

    Parameters
    ----------
    value : object
        The argument to check: a real number (not a bool), finite.
    name : str
        The argument's name, as the message prints it.
    func : str
        The function whose argument it is, as the message prints it.
    low, high : float or None
        The allowed range; None leaves that end open.
    low_open : bool
        Exclude ``low`` itself (for a parameter that must be positive).

    Examples
    --------
    >>> from theory import validation as v
    >>> v.check_real(0.5, 'sigma', 'sample_tasks', low=0.0)
    0.5
    >>> try:
    ...     v.check_real(float('nan'), 'sigma', 'sample_tasks', low=0.0)
    ... except ValueError as e:
    ...     print(e)
    The 'sigma' parameter of sample_tasks must be a finite real number in [0, inf]. Got nan instead.
    """
    left = "(" if low_open else "["
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    allowed = f"a finite real number in {left}{lo}, {hi}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise _fail(func, name, allowed, value)
    value = float(value)
    if not np.isfinite(value):
        raise _fail(func, name, allowed, value)
    if low is not None and (value < low or (low_open and value == low)):
        raise _fail(func, name, allowed, value)
    if high is not None and value > high:
        raise _fail(func, name, allowed, value)
    return value


def check_array(value, name: str, func: str, *, ndim: int | tuple[int, ...], shape=None) -> np.ndarray:
    """Return ``value`` as a finite float64 array with the given number of dimensions.

    ``shape`` may fix some axes: a tuple with ``None`` where any length is allowed.

    Parameters
    ----------
    value : array_like
        The argument to check; converted to float64, every entry finite.
    name : str
        The argument's name, as the message prints it.
    func : str
        The function whose argument it is, as the message prints it.
    ndim : int or tuple of int
        The allowed numbers of dimensions.
    shape : tuple of int or None, optional
        The lengths of the trailing axes, None for an axis of any length.

    Examples
    --------
    >>> from theory import validation as v
    >>> import numpy as np
    >>> v.check_array([[1, 2], [3, 4]], 'M', 'best_rank_approx', ndim=2).dtype
    dtype('float64')
    >>> try:
    ...     v.check_array(np.ones(3), 'M', 'best_rank_approx', ndim=2)
    ... except ValueError as e:
    ...     print(e)
    The 'M' parameter of best_rank_approx must be an array with 2 dimensions. Got an array of shape (3,) instead.
    """
    ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        # An array (a memory map, a broadcast view) may describe far more entries than memory
        # holds: its float64 copy (unless it is one already) and the finiteness mask below are
        # allocated in full, so their size is checked first.
        try:
            entries = math.prod(int(n) for n in value.shape)
        except (TypeError, ValueError):
            entries = 0
        copy = not (isinstance(value, np.ndarray) and value.dtype == np.float64)
        check_memory(entries * (1 + 8 * copy), f"the {name!r} parameter (shape {tuple(value.shape)})", func)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(func, name, f"a real array with {_ndim_text(ndims)}", type(value).__name__) from None
    if arr.ndim not in ndims:
        raise ValueError(
            f"The {name!r} parameter of {func} must be an array with {_ndim_text(ndims)}. "
            f"Got an array of shape {arr.shape} instead."
        )
    if shape is not None:
        want = tuple(shape)
        got = arr.shape[-len(want):] if len(want) <= arr.ndim else arr.shape
        if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
            text = "(" + ", ".join("*" if w is None else str(w) for w in want) + ")"
            raise ValueError(
                f"The {name!r} parameter of {func} must have shape ending in {text}. "
                f"Got an array of shape {arr.shape} instead."
            )
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError(
            f"The {name!r} parameter of {func} must contain only finite values. "
            f"Got {int(np.sum(~np.isfinite(arr)))} non-finite entries (NaN or inf)."
        )
    return arr


def _ndim_text(ndims: tuple[int, ...]) -> str:
    if len(ndims) == 1:
        return f"{ndims[0]} dimensions"
    return " or ".join(str(n) for n in ndims) + " dimensions"


def check_rng(rng, func: str) -> np.random.Generator:
    """SPEC 7: accept a Generator, an int seed, a SeedSequence or None.

    Parameters
    ----------
    rng : numpy.random.Generator, numpy.random.SeedSequence, int >= 0 or None
        The argument to check; anything but a Generator is passed to ``numpy.random.default_rng``.
    func : str
        The function whose argument it is, as the message prints it.

    Examples
    --------
    >>> from theory import validation as v
    >>> rng = v.check_rng(0, 'sample_tasks')
    >>> type(rng).__name__
    'Generator'
    >>> try:
    ...     v.check_rng(-1, 'sample_tasks')
    ... except ValueError as e:
    ...     print(e)
    The 'rng' parameter of sample_tasks must be a numpy.random.Generator, a SeedSequence, a non-negative int or None. Got -1 instead.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, np.random.SeedSequence) or (
        isinstance(rng, numbers.Integral) and not isinstance(rng, bool) and int(rng) >= 0
    ):
        return np.random.default_rng(rng)
    raise _fail(func, "rng", "a numpy.random.Generator, a SeedSequence, a non-negative int or None", rng)


def check_choice(value, name: str, func: str, choices) -> str:
    """Return ``value`` if it is one of ``choices``.

    Parameters
    ----------
    value : object
        The argument to check: one of the strings in ``choices``.
    name : str
        The argument's name, as the message prints it.
    func : str
        The function whose argument it is, as the message prints it.
    choices : iterable of str
        The allowed values, listed by the message in this order.

    Examples
    --------
    >>> from theory import validation as v
    >>> v.check_choice('exact', 'method', 'fit_loraml', ('exact', 'paper'))
    'exact'
    >>> try:
    ...     v.check_choice('fast', 'method', 'fit_loraml', ('exact', 'paper'))
    ... except ValueError as e:
    ...     print(e)
    The 'method' parameter of fit_loraml must be one of 'exact', 'paper'. Got 'fast' instead.
    """
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        allowed = "one of " + ", ".join(repr(c) for c in choices)
        raise _fail(func, name, allowed, value)
    return value


def check_bool(value, name: str, func: str) -> bool:
    """Return ``value`` as a bool if it is one (Python or numpy); raise otherwise.

    >>> check_bool(True, "force", "run")
    True

    Parameters
    ----------
    value : object
        The argument to check: ``True`` or ``False`` (Python or numpy), not an int.
    name : str
        The argument's name, as the message prints it.
    func : str
        The function whose argument it is, as the message prints it.

    Examples
    --------
    >>> from theory import validation as v
    >>> v.check_bool(True, 'landing', 'recovery_phase_table')
    True
    >>> try:
    ...     v.check_bool(1, 'landing', 'recovery_phase_table')
    ... except ValueError as e:
    ...     print(e)
    The 'landing' parameter of recovery_phase_table must be a bool. Got 1 instead.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(func, name, "a bool", value)
    return bool(value)


def check_values(values, name: str, func: str, check, *, least: int = 1) -> tuple:
    """Return ``values`` as a tuple after ``check(v)`` on each; it must be a sequence (not a string)
    of at least ``least`` values. ``check`` raises naming ``name`` for a bad entry.

    Parameters
    ----------
    values : sequence
        The argument to check: an iterable other than a string, bytes or dict.
    name : str
        The argument's name, as the message prints it.
    func : str
        The function whose argument it is, as the message prints it.
    check : callable
        Called on each value; returns the checked value or raises naming ``name``.
    least : int
        The fewest values allowed.

    Examples
    --------
    >>> from theory import validation as v
    >>> v.check_values([2, 3], 'values', 'linear_sweep', lambda x: v.check_int(x, 'values', 'linear_sweep', low=1))
    (2, 3)
    >>> try:
    ...     v.check_values('23', 'values', 'linear_sweep', int)
    ... except ValueError as e:
    ...     print(e)
    The 'values' parameter of linear_sweep must be a sequence of at least 1 value(s). Got '23' instead.
    """
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or isinstance(values, dict):
        raise _fail(func, name, f"a sequence of at least {least} value(s)", values)
    values = tuple(values)
    if len(values) < least:
        raise _fail(func, name, f"a sequence of at least {least} value(s)", values)
    return tuple(check(v) for v in values)


def check_seed(value, name: str, func: str) -> int:
    """Return ``value`` if it is a seed: an int in [0, 2**63).

    Parameters
    ----------
    value : object
        The argument to check: an int in [0, 2**63).
    name : str
        The argument's name, as the message prints it.
    func : str
        The function whose argument it is, as the message prints it.

    Examples
    --------
    >>> from theory import validation as v
    >>> v.check_seed(7, 'seed', 'linear_sweep')
    7
    >>> try:
    ...     v.check_seed(-7, 'seed', 'linear_sweep')
    ... except ValueError as e:
    ...     print(e)
    The 'seed' parameter of linear_sweep must be an int in [0, 9223372036854775807]. Got -7 instead.
    """
    return check_int(value, name, func, low=0, high=2**63 - 1)


def check_entries(count, names: str, func: str, *, limit: int | None = None) -> int:
    """Refuse a call whose largest array would hold more than ``limit`` (MAX_ENTRIES) entries,
    before it is allocated; ``names`` says which arguments set the size (e.g. "'T', 'N' and 'd'").

    Parameters
    ----------
    count : int >= 0
        The number of entries of the largest array the call would build.
    names : str
        The arguments that set that size, as the message prints them (``"'N' and 'd'"``).
    func : str
        The function whose arguments they are, as the message prints it.
    limit : int or None, optional
        The most entries allowed; None: ``MAX_ENTRIES``.

    Examples
    --------
    >>> from theory import validation as v
    >>> v.check_entries(10 ** 6, "'N' and 'd'", 'sample_tasks')
    1000000
    >>> try:
    ...     v.check_entries(10 ** 12, "'N' and 'd'", 'sample_tasks')
    ... except ValueError as e:
    ...     print(e)
    The 'N' and 'd' parameters of sample_tasks ask for an array of 1e+12 entries; at most 2.68e+08 are allowed (memory). Use smaller sizes.
    """
    limit = MAX_ENTRIES if limit is None else limit
    count = check_int(count, "count", func, low=0)
    if count > limit:
        raise ValueError(f"The {names} parameters of {func} ask for an array of {count:.3g} entries; "
                         f"at most {limit:.3g} are allowed (memory). Use smaller sizes.")
    return count


def _cgroup_limit() -> int | None:
    """The memory limit of this process's control group (cgroup v2, else v1), if one is set."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def memory_limit() -> int | None:
    """Bytes of memory this process may use: the physical memory, or the control group's limit
    (a container, a batch job) where it is lower; ``None`` where neither can be read.

    Examples
    --------
    >>> from theory import validation as v
    >>> limit = v.memory_limit()
    >>> limit is None or limit > 2**20
    True
    """
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        physical = None
    limits = [b for b in (physical, _cgroup_limit()) if b is not None and b > 0]
    return min(limits) if limits else None


#: Needs up to this many bytes pass :func:`check_memory` without asking the system (every machine
#: that runs the toolkit has this much), so the check costs nothing on the common small calls.
_ALWAYS_FITS = 2**30


def _bytes_text(nbytes: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{nbytes:.0f} bytes"


def check_memory(nbytes, what: str, func: str) -> int:
    """Refuse a call whose arrays would need more than :func:`memory_limit` bytes, before any of
    them is allocated; ``what`` says which arguments set the size (e.g. "d = 3000, k = 1, T = 3").
    Returns ``nbytes``. Needs of at most 1 GiB always pass.

    Parameters
    ----------
    nbytes : int >= 0
        The bytes the call's arrays would need together.
    what : str
        The arguments that set that size, as the message should name them.
    func : str
        The caller's name, for the message.

    Returns
    -------
    int
        ``nbytes``.

    Raises
    ------
    ValueError
        ``nbytes`` exceeds :func:`memory_limit`; the message states both.

    Examples
    --------
    >>> from theory import validation as v
    >>> v.check_memory(2**20, "d = 10", "identifiability")
    1048576
    >>> try:
    ...     v.check_memory(3 * 2**50, "d = 10**5", "identifiability")
    ... except ValueError as e:
    ...     print(e)                                     # doctest: +ELLIPSIS
    identifiability with d = 10**5 would need about 3.07e+03 TiB of memory; this machine has ... Use smaller sizes.
    """
    nbytes = check_int(nbytes, "nbytes", "check_memory", low=0)
    if nbytes <= _ALWAYS_FITS:
        return nbytes
    limit = memory_limit()
    if limit is not None and nbytes > limit:
        raise ValueError(f"{func} with {what} would need about {_bytes_text(nbytes)} of memory; this machine has "
                         f"{_bytes_text(limit)}. Use smaller sizes.")
    return nbytes
