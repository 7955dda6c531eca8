"""Shared fixtures: simulators and clusters that tests start and stop themselves.

Every server binds 127.0.0.1 on a free port (port 0) and is stopped at
teardown; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator

import pytest

from dask_llm import Endpoint
from dask_llm.simulator import Simulator, SimulatorConfig

API_KEY = "test-key"


@pytest.fixture
def start_sim() -> Iterator[Callable[..., Simulator]]:
    """Start in-process simulators with the given config fields; all are
    stopped at teardown."""
    started: list[Simulator] = []

    def start(**config: object) -> Simulator:
        config.setdefault("api_key", API_KEY)
        sim = Simulator(SimulatorConfig(**config))  # type: ignore[arg-type]
        sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(start_sim: Callable[..., Simulator]) -> Simulator:
    """A fast, faultless simulator that echoes the user message."""
    return start_sim(mode="echo")


def endpoint_for(sim: Simulator, **overrides: object) -> Endpoint:
    fields: dict[str, object] = {"base_url": sim.url, "api_key": API_KEY, "timeout": 10.0}
    fields.update(overrides)
    return Endpoint(**fields)  # type: ignore[arg-type]


@contextlib.contextmanager
def local_process_cluster(workers: int) -> Iterator[object]:
    """A Client on a LocalCluster of ``workers`` worker *processes*, two
    task threads each, its dashboard on a free loopback port."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=workers, threads_per_worker=2, processes=True, dashboard_address="127.0.0.1:0") as lc,
        Client(lc) as client,
    ):
        client.wait_for_workers(workers, timeout=60)
        yield client


@pytest.fixture(scope="module")
def process_cluster() -> Iterator[object]:
    """A LocalCluster of 2 worker processes and a Client on it, shared by
    the tests of a module (starting one takes seconds)."""
    with local_process_cluster(2) as client:
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """The endpoint URL of a moto S3 server on 127.0.0.1, started once for
    the session and stopped at its end. Credentials: ``testing``/``testing``."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
