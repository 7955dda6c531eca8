"""The progress display of ``dask-llm run``: a bar redrawn in place on a
terminal, plain periodic lines anywhere else (logs, CI, pipes).

No dependency: a carriage return and "erase to end of line" are all a
terminal needs for a one-line bar.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
from collections.abc import Callable
from typing import TextIO

from .._run._progress import Snapshot, Tally

__all__ = ["ProgressPrinter", "format_count", "format_duration", "render"]

#: Cost of a run so far from its token counts, or None when unknown.
CostFunction = Callable[[int, int], "float | None"]


def format_count(n: float) -> str:
    """``31332`` -> ``"31.3k"``: short enough for one terminal line."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def format_duration(seconds: float | None) -> str:
    """``3723`` -> ``"1h02m"``, ``75`` -> ``"1m15s"``, ``None`` -> ``"?"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def render(snap: Snapshot, cost: float | None = None, bar_width: int = 0, width: int | None = None) -> str:
    """One progress line, e.g.
    ``rows 1,200/10,000 (12%) | 48.1 rows/s | ETA 3m03s | 429s 3 | errors 1 | tokens 31.3k in, 1.2k out | $0.0123``.

    With ``width``, the line fits it: the bar goes, then the least telling
    parts that do not fit are left out (the rows are kept, the token counts
    go first), so a narrow terminal never wraps (a wrapped line cannot be
    redrawn in place).
    """
    total = snap.total
    if total:
        share = min(snap.done / total, 1.0)
        head = f"rows {snap.done:,}/{total:,} ({share:.0%})"
    else:
        share, head = 0.0, f"rows {snap.done:,}"
    rate = snap.rate if snap.recent_rate is None else snap.recent_rate
    # (priority, text): the lower the number, the longer a part survives a narrow terminal.
    parts: list[tuple[int, str]] = [(0, head), (2, f"{rate:,.1f} rows/s"), (1, f"ETA {format_duration(snap.eta)}")]
    if snap.batches:
        ended = f"batches {snap.batches_done:,}/{snap.batches:,} ended"
        parts.append((1, f"{ended}, {snap.batch_completed:,}/{snap.batch_requests:,} answered"))
    parts += [(4, f"429s {snap.rate_limited:,}"), (3, f"errors {snap.errors:,}")]
    parts.append((6, f"tokens {format_count(snap.prompt_tokens)} in, {format_count(snap.completion_tokens)} out"))
    if cost is not None:
        parts.append((5, f"${cost:,.4f}"))
    if snap.restored:
        parts.append((7, f"{snap.restored:,} from checkpoint"))

    def line(kept: list[tuple[int, str]], bar: int) -> str:
        texts = [text for _, text in kept]
        if bar and total:
            filled = int(share * bar)
            texts[0] = f"[{'#' * filled}{'.' * (bar - filled)}] {texts[0]}"
        return " | ".join(texts)

    text = line(parts, bar_width)
    if width is None or len(text) <= width:
        return text
    # Too wide: no bar, and the parts that fit, most telling first, in their order.
    kept: list[tuple[int, str]] = []
    for part in sorted(parts, key=lambda p: p[0]):
        trial = sorted([*kept, part], key=parts.index)
        if not kept or len(line(trial, 0)) <= width:
            kept = trial
    return line(kept, 0)[:width]


class ProgressPrinter:
    """Print a :class:`Tally` every ``interval`` seconds from a daemon thread.

    Parameters
    ----------
    tally : Tally
        What to show.
    stream : file
        Where to write (the command writes progress to stderr, so stdout
        holds only the result).
    tty : bool
        Redraw one line in place with a bar; otherwise one line per interval.
    interval : float
        Seconds between two updates.
    cost : callable, optional
        ``cost(prompt_tokens, completion_tokens)`` in dollars, or None when unknown.
    """

    def __init__(
        self,
        tally: Tally,
        stream: TextIO,
        tty: bool,
        interval: float,
        cost: CostFunction | None = None,
    ) -> None:
        self.tally = tally
        self.stream = stream
        self.tty = tty
        self.interval = interval
        self.cost = cost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dask-llm-progress", daemon=True)
        self._width = 0

    def __enter__(self) -> ProgressPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Print the last state and end the line; idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval + 1.0)
        self.show()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _columns(self) -> int:
        """The width of the terminal the stream writes to (``COLUMNS`` first,
        as everywhere; not stdout's, which is often redirected to a file)."""
        try:
            return int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            pass
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return shutil.get_terminal_size().columns

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.show()

    def show(self) -> None:
        snap = self.tally.snapshot()
        cost = self.cost(snap.prompt_tokens, snap.completion_tokens) if self.cost else None
        try:
            if self.tty:
                # \r back to column 0, \x1b[K erases what a longer line left;
                # cut to the width, or a wrapped line would not be redrawn.
                width = self._columns() - 1
                self.stream.write("\r" + render(snap, cost, bar_width=20, width=width) + "\x1b[K")
            else:
                self.stream.write(render(snap, cost) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # stream closed (e.g. a pipe's reader left)
            self._stop.set()
