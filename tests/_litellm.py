"""Start LiteLLM's proxy, a real third-party OpenAI-compatible server, for tests.

LiteLLM lives in its own virtual environment (``.venv-litellm``, made by
``ci/test.sh``), never in the project's: the tests find its ``litellm``
executable through the environment variable ``DASK_LLM_LITELLM`` (a path,
relative ones taken from the repository root), else at
``.venv-litellm/bin/litellm``. Without either they skip; with the variable
set to a path that is not an executable they fail, since whoever set it
(CI) meant the proxy to be there.

:func:`litellm_proxy` writes a config into a directory, starts
``litellm --config ... --host 127.0.0.1 --port <free port>`` with
``LITELLM_MASTER_KEY`` set and offline settings (no remote cost map, no
database), waits for ``/health/liveliness`` with a bounded loop, yields a
:class:`LiteLLMProxy` that unpacks to ``(base_url, master_key)``, and stops
the proxy (SIGTERM to its process group, SIGKILL after a bounded wait). Its
output goes to ``litellm.log`` in the same directory and is quoted in every
failure.

Facts about LiteLLM 1.106.2 that the configs rely on (measured, see
``tests/test_litellm_proxy.py``):

- ``rpm:`` on a model is only *enforced* with
  ``routing_strategy: usage-based-routing-v2``; under the default
  ``simple-shuffle`` every request is admitted and the
  ``x-ratelimit-remaining-requests`` header just goes negative.
- With usage-based-routing-v2 but ``num_retries`` left at its default, a
  request over the limit is retried inside the proxy (held for tens of
  seconds) instead of answered 429; ``num_retries: 0`` makes it refuse at
  once. ``enable_pre_call_checks`` is not needed for the refusal, but it
  makes the count atomic under concurrent requests.
- The count is per model per UTC wall-clock minute, and a request is
  refused once ``count + 1 >= rpm``: at most ``rpm - 1`` requests succeed in
  a minute. The 429 always says ``llm_provider-retry-after: 60``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

#: Environment variable naming the ``litellm`` executable (set by ci/test.sh).
ENV_VAR = "DASK_LLM_LITELLM"
#: Where ci/test.sh installs it.
DEFAULT_EXECUTABLE = ROOT / ".venv-litellm" / "bin" / "litellm"

MASTER_KEY = "sk-dask-llm-test-master"

#: Settings under which ``rpm:`` on a model is enforced with an immediate 429.
RATE_LIMITED_ROUTER_SETTINGS: dict[str, Any] = {
    "routing_strategy": "usage-based-routing-v2",
    "enable_pre_call_checks": True,
    "num_retries": 0,
}

#: Environment for the proxy on top of the caller's: no network at startup
#: (the model cost map is read from the package, not fetched from GitHub),
#: no database, no feedback banner, unbuffered output for the log.
OFFLINE_ENV: dict[str, str] = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
    "PYTHONUNBUFFERED": "1",
}
#: Variables of the caller's environment that would make the proxy reach out
#: (a database, a config from a bucket, telemetry exporters).
DROPPED_ENV = (
    "DATABASE_URL",
    "DIRECT_URL",
    "DATABASE_URL_READ_REPLICA",
    "REDIS_HOST",
    "REDIS_URL",
    "LITELLM_CONFIG_BUCKET_NAME",
    "LITELLM_CONFIG_BUCKET_TYPE",
    "LITELLM_LICENSE",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER",
)

STARTUP_TIMEOUT = 180.0
STOP_TIMEOUT = 10.0


def find_executable() -> str | None:
    """The ``litellm`` executable to use, or None when there is none.

    Raises
    ------
    pytest.fail.Exception
        When ``DASK_LLM_LITELLM`` is set but names no executable.
    """
    configured = os.environ.get(ENV_VAR)
    if configured:
        path = Path(configured)
        if not path.is_absolute():
            path = ROOT / path
        if not (path.is_file() and os.access(path, os.X_OK)):
            pytest.fail(f"{ENV_VAR}={configured!r} is not an executable file ({path})")
        return str(path)
    if DEFAULT_EXECUTABLE.is_file() and os.access(DEFAULT_EXECUTABLE, os.X_OK):
        return str(DEFAULT_EXECUTABLE)
    return None


def require_executable() -> str:
    """The ``litellm`` executable, or skip the test with the reason."""
    executable = find_executable()
    if executable is None:
        pytest.skip(
            f"LiteLLM's proxy is not installed: set {ENV_VAR} to a litellm executable "
            f"(bash ci/test.sh installs one into .venv-litellm and sets it)"
        )
    return executable


def mock_model(name: str, response: str = "hello from the mock", **params: Any) -> dict[str, Any]:
    """A model entry that answers `response` without any provider.

    Its usage block is LiteLLM's fixed mock usage (10 prompt, 20 completion
    tokens), whatever the prompt.
    """
    return {
        "model_name": name,
        "litellm_params": {"model": f"openai/{name}", "mock_response": response, **params},
    }


def upstream_model(
    name: str, api_base: str, *, api_key: str = "none", upstream_name: str | None = None, **params: Any
) -> dict[str, Any]:
    """A model entry the proxy forwards to the OpenAI-compatible server at
    `api_base` (e.g. ``Simulator.url``, ending in ``/v1``) as model
    `upstream_name` (default: `name`). LiteLLM's openai provider needs some
    api_key even when the upstream asks for none."""
    return {
        "model_name": name,
        "litellm_params": {
            "model": f"openai/{upstream_name or name}",
            "api_base": api_base,
            "api_key": api_key,
            **params,
        },
    }


def proxy_config(
    models: Sequence[Mapping[str, Any]],
    *,
    router_settings: Mapping[str, Any] | None = None,
    litellm_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config document for `models` (LiteLLM 1.106 has no telemetry to turn off)."""
    config: dict[str, Any] = {"model_list": [dict(model) for model in models]}
    if litellm_settings:
        config["litellm_settings"] = dict(litellm_settings)
    if router_settings:
        config["router_settings"] = dict(router_settings)
    return config


@dataclass
class LiteLLMProxy:
    """A running proxy; unpacks to ``(base_url, master_key)``."""

    base_url: str
    master_key: str
    log_path: Path
    config_path: Path
    startup_seconds: float
    process: subprocess.Popen[bytes] = field(repr=False)

    def __iter__(self) -> Iterator[str]:
        return iter((self.base_url, self.master_key))

    @property
    def root_url(self) -> str:
        """The URL without ``/v1`` (health endpoints live there)."""
        return self.base_url.removesuffix("/v1")

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<no log: {error}>"
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proxy_env(master_key: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in DROPPED_ENV}
    env.update(OFFLINE_ENV)
    env["LITELLM_MASTER_KEY"] = master_key
    env.update(extra or {})
    return env


def _alive(root_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{root_url}/health/liveliness", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the proxy's process group, SIGKILL it if still there after `timeout`."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)  # its own session: start_new_session=True
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def litellm_proxy(
    directory: Path,
    models: Sequence[Mapping[str, Any]],
    *,
    router_settings: Mapping[str, Any] | None = None,
    litellm_settings: Mapping[str, Any] | None = None,
    master_key: str = MASTER_KEY,
    executable: str | None = None,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> Iterator[LiteLLMProxy]:
    """Run LiteLLM's proxy with `models` on 127.0.0.1 for the ``with`` block.

    `directory` receives ``litellm.yaml`` and ``litellm.log``. Skips the
    test when LiteLLM is not installed (see :func:`require_executable`);
    fails with the log's tail when the proxy exits or is not alive within
    `startup_timeout` seconds (its imports alone take ~10 s here).
    """
    executable = executable or require_executable()
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "litellm.yaml"
    config_path.write_text(
        yaml.safe_dump(
            proxy_config(models, router_settings=router_settings, litellm_settings=litellm_settings),
            sort_keys=False,
        )
    )
    log_path = directory / "litellm.log"
    port = free_port()
    root_url = f"http://127.0.0.1:{port}"
    command = [executable, "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            cwd=directory,
            env=_proxy_env(master_key, env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = started + startup_timeout
        while not _alive(root_url):
            if process.poll() is not None:
                pytest.fail(
                    f"litellm exited with {process.returncode} during startup; log {log_path}:\n{log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"litellm not alive at {root_url} after {startup_timeout:.0f} s; "
                    f"log {log_path}:\n{log_tail(log_path)}"
                )
            time.sleep(0.2)
        proxy = LiteLLMProxy(
            base_url=f"{root_url}/v1",
            master_key=master_key,
            log_path=log_path,
            config_path=config_path,
            startup_seconds=time.monotonic() - started,
            process=process,
        )
        print(f"litellm proxy alive at {root_url} after {proxy.startup_seconds:.1f} s")
        yield proxy
    finally:
        _stop(process)


def litellm_version(executable: str | None = None) -> str:
    """The installed LiteLLM's version, read from its venv without importing it."""
    executable = executable or require_executable()
    python = Path(executable).with_name("python")
    if not python.exists():
        python = Path(shutil.which("python3") or "python3")
    result = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()
