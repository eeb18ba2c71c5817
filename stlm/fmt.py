"""Numbers as stlm prints them: counts with a unit (12.35M), statistics (0.1234, n/a), intervals, config values.

Below everything (no stlm import), so the model code, the sweep and the reports all print a number the same way.
"""

from __future__ import annotations

import math
from typing import Any

BIG = 10_000  # from here on a statistic prints as a whole number with thousands separators


def si(n: float, fixed: bool = False) -> str:
    """A count with a unit: 12_345_678 -> '12.35M', 123_456_789 -> '123.5M' (fixed: always two decimals,
    '123.46M'), 950 -> '950'."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.{2 if fixed or abs(n) / div < 100 else 1}f}{unit}"
    return f"{n:g}" if isinstance(n, float) and not math.isfinite(n) else str(int(n))


def gib(n_bytes: float) -> str:
    """Bytes as memory is spoken of: 12.3 GiB."""
    return f"{n_bytes / 2**30:.1f} GiB"


def missing(x: Any) -> bool:
    """None or NaN: a value that prints as n/a."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def stat(x: float | None, signed: bool = False) -> str:
    """A statistic: 1.2346 (+0.0123 signed), 1,234,567 past BIG, n/a when missing."""
    if missing(x):
        return "n/a"
    if abs(x) >= BIG:
        return f"{x:+,.0f}" if signed else f"{x:,.0f}"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def ci(lo: float | None, hi: float | None, signed: bool = False) -> str:
    """An interval '[lo, hi]' of two statistics; n/a without one."""
    if lo is None:
        return "n/a"
    return f"[{stat(lo, signed)}, {stat(hi, signed)}]"


def num(v: Any, spec: str = ".4g") -> str:
    """A float in `spec`, anything else as text, '-' for None (a table cell)."""
    if isinstance(v, float):
        return format(v, spec)
    return "-" if v is None else str(v)


def setting(v: Any) -> str:
    """A config value as a sweep file spells it: true, null, 0.001 (arm names are built from these)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "null"
    return str(v)
