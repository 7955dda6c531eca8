"""Load a page in headless Chromium for tests: its DOM, and the requests it made.

:func:`load` runs ``chromium --headless --dump-dom`` once on a ``file://``
or ``http://`` URL and returns a :class:`Page`: the DOM after the page
loaded (and after ``--virtual-time-budget`` of virtual time, which lets
timers and fetches finish without waiting for them in real time), and every
network request of the run, read from Chromium's own net log. A request
whose initiator is an origin (``"null"`` for a ``file://`` page) was made by
the page; Chromium's own background requests have none
(:attr:`Request.from_page` tells them apart).

Bounded and tidy, whatever the page does:

- a hard timeout: ``--virtual-time-budget`` never returns while a request
  hangs, so the browser runs in its own process group, killed whole
  (zygote and renderers too) on timeout and after every run;
- a fresh profile directory per run, removed afterwards;
- offline by default: every host name but ``localhost``/``127.0.0.1``
  resolves to nothing (``--host-resolver-rules``), so nothing leaves the
  machine, yet each request the page attempts is still in the net log.

:func:`chromium_or_skip` finds the browser (``$CHROMIUM``, else ``chromium``,
``chromium-browser``, ``google-chrome`` on ``PATH``) and skips the test with
the reason when there is none, unless the environment variable ``CI`` is set:
then it fails, so that a CI machine without the browser cannot pass by
skipping. Install it with ``apt-get install -y chromium``.

Measured with Debian's Chromium 150 on 2 shared cores: a static page loads
in 1-1.5 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["FLAGS", "Page", "Request", "chromium_or_skip", "find_chromium", "load"]

#: Headless, no sandbox (containers, root), nothing the browser would do on its own.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
)
#: Every host name resolves to nothing except the loopback ones.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The Chromium executable: ``$CHROMIUM``, else the first of the usual names on ``PATH``."""
    named = os.environ.get("CHROMIUM")
    if named:
        return shutil.which(named) or (named if os.access(named, os.X_OK) else None)
    return next((found for found in map(shutil.which, _NAMES) if found), None)


def chromium_or_skip() -> str:
    """The Chromium executable; skips the test without one, fails instead when ``CI`` is set."""
    exe = find_chromium()
    if exe is None:
        reason = "headless Chromium is not installed (apt-get install -y chromium, or set CHROMIUM=/path/to/it)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip")
        pytest.skip(reason)
    return exe


@dataclass(frozen=True)
class Request:
    """A network request from the net log."""

    url: str
    method: str
    initiator: str

    @property
    def from_page(self) -> bool:
        """Made by a page (it has an initiating origin), not by the browser itself."""
        return self.initiator != "not an origin"


@dataclass(frozen=True)
class Page:
    url: str
    dom: str
    seconds: float
    requests: tuple[Request, ...] = ()
    stderr: str = field(default="", repr=False)

    @property
    def page_requests(self) -> list[Request]:
        """Requests the page made (subresources; for an ``http://`` page also its ``favicon.ico``)."""
        return [r for r in self.requests if r.from_page]


def _read_net_log(path: Path) -> tuple[Request, ...]:
    """The URL requests of a net log (tolerating one cut short by a kill)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ()
    try:
        log = json.loads(text)
    except ValueError:
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    out = []
    for event in log.get("events", []):
        params = event.get("params") or {}
        if event.get("type") == start_job and "url" in params:
            out.append(Request(params["url"], params.get("method", ""), str(params.get("initiator", ""))))
    return tuple(out)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def load(
    url: str,
    *,
    virtual_time_budget_ms: int | None = 2000,
    timeout: float = 45.0,
    offline: bool = True,
    extra_args: Sequence[str] = (),
) -> Page:
    """Load ``url`` headless and return its DOM and the requests made.

    Raises
    ------
    TimeoutError
        Chromium did not finish within ``timeout`` seconds (it was killed, with its children).
    RuntimeError
        Chromium exited with an error.
    """
    exe = chromium_or_skip()
    profile = Path(tempfile.mkdtemp(prefix="dask-llm-chromium-"))
    net_log = profile / "net-log.json"
    args = [exe, *FLAGS, f"--user-data-dir={profile}", f"--log-net-log={net_log}", *([OFFLINE] if offline else []),
            *extra_args, "--dump-dom"]  # fmt: skip
    if virtual_time_budget_ms is not None:
        args.append(f"--virtual-time-budget={virtual_time_budget_ms}")
    args.append(url)
    started = time.monotonic()
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: one kill takes every child
    )  # fmt: skip
    try:
        try:
            dom, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            _, stderr = proc.communicate()
            raise TimeoutError(f"chromium did not load {url} within {timeout:g} s; stderr:\n{stderr[-2000:]}") from None
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            raise RuntimeError(f"chromium exited with {proc.returncode} on {url}; stderr:\n{stderr[-2000:]}")
        return Page(url=url, dom=dom, seconds=seconds, requests=_read_net_log(net_log), stderr=stderr)
    finally:
        _kill_group(proc.pid)
        shutil.rmtree(profile, ignore_errors=True)
