"""How the report writes numbers, durations, times and text: one place, so
the page, the charts and the PNGs say the same thing the same way."""

from __future__ import annotations

import datetime
import math

__all__ = ["clock", "compact", "count", "duration", "money", "offset", "seconds", "truncate"]


def count(n: float | None) -> str:
    """``1234`` -> ``"1,234"``; ``None`` -> ``"-"``."""
    return "-" if n is None else f"{n:,.0f}"


def compact(n: float) -> str:
    """A short axis label: ``950`` -> ``"950"``, ``31332`` -> ``"31.3k"``, ``0.25`` -> ``"0.25"``."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}" if n != int(n) else f"{int(n)}"


def money(usd: float | None) -> str:
    """``0.01234`` -> ``"$0.0123"``; ``None`` -> ``"unknown"``."""
    return "unknown" if usd is None else f"${usd:,.4f}"


def seconds(s: float | None) -> str:
    """A latency or a span: ``0.4213`` -> ``"0.421 s"``, ``75`` -> ``"1m15s"``."""
    if s is None or not math.isfinite(s):
        return "-"
    if s < 10:
        return f"{s:.3g} s"
    if s < 60:
        return f"{s:.1f} s"
    return duration(s)


def duration(s: float) -> str:
    """Whole units: ``3723`` -> ``"1h02m"``, ``75`` -> ``"1m15s"``, ``42`` -> ``"42s"``."""
    whole = int(round(s))
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"


def offset(s: float, step: float) -> str:
    """A tick of a time axis, ``s`` seconds after its origin, ticks ``step`` apart."""
    if step < 1:
        return f"{s:.1f}s"
    if step < 60 and s < 60:
        return f"{s:.0f}s"
    whole = int(round(s))
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}" if whole % 3600 else f"{whole // 3600}h"
    return f"{whole // 60}m{whole % 60:02d}" if whole % 60 else f"{whole // 60}m"


def clock(t: float | None) -> str:
    """A unix time as ``"2026-11-23 17:14:43 UTC"``."""
    if t is None or not math.isfinite(t):
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def truncate(text: object, width: int = 80) -> str:
    """One line of at most ``width`` characters (an ellipsis marks a cut)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    line = " ".join(str(text).split())
    return line if len(line) <= width else line[: width - 1] + "\u2026"
