"""The dask-llm console script, run for real in a subprocess."""

from __future__ import annotations

import json
import select
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest


def dask_llm_command() -> list[str]:
    script = shutil.which("dask-llm", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "dask_llm._cli"]


def test_simulate_serves_until_interrupted():
    proc = subprocess.Popen(
        [*dask_llm_command(), "simulate", "--port", "0", "--mode", "echo", "--latency", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the simulator printed nothing within 30 s"
        line = proc.stdout.readline()
        assert line.startswith("dask-llm simulator listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
        request = urllib.request.Request(
            f"{url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
        assert answer["choices"][0]["message"]["content"] == "hi"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_unknown_command_exits_2():
    proc = subprocess.run([*dask_llm_command(), "frobnicate"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
