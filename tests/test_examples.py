"""The examples run end to end against the simulator (and moto for S3)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import API_KEY

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_runs_and_loses_no_row():
    proc = subprocess.run(
        [sys.executable, "examples/quickstart.py", "--rows", "120", "--latency", "0.05", "--sample", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 2% of calls fail with a 500 in the quickstart; retries recover every row.
    assert re.search(r"^rows: 120  errors: 0 ", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"dask-llm: +[\d.]+ s +\([\d,]+x faster\)", proc.stdout), proc.stdout


# ---------------------------------------------------------------- the other examples


def run_example(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI_", "AWS_"))}
    proc = subprocess.run([sys.executable, f"examples/{name}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180, env={**base, **(env or {})})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_local_server_example_needs_no_key(start_sim):
    sim = start_sim(api_key=None)  # a vLLM/Ollama-like server: no key
    proc = run_example("local_server.py", "--base-url", sim.url, "--model", "llama3.2", "--rows", "12")
    assert re.search(r"^rows: 12  errors: 0$", proc.stdout, re.MULTILINE), proc.stdout
    assert sim.stats()["successes"] == 12


def test_azure_example_calls_the_deployment(start_sim):
    sim = start_sim(models=("my-deployment",))  # any other name would be a 404
    proc = run_example("azure_openai.py", "--azure-endpoint", sim.azure_endpoint, "--deployment",
                       "my-deployment", "--rows", "10", env={"AZURE_OPENAI_API_KEY": API_KEY})  # fmt: skip
    assert re.search(r"^rows: 10  errors: 0$", proc.stdout, re.MULTILINE), proc.stdout


@pytest.mark.slow
def test_s3_to_s3_example_on_moto(start_sim, moto_s3):
    s3fs = pytest.importorskip("s3fs")
    sim = start_sim(api_key=None)  # as `dask-llm simulate` in the example's header
    url = moto_s3
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": url})
    # As its header says: the bucket is created by --make-input, the key comes from nowhere (a local server).
    args = ["s3_to_s3.py", "--input", "s3://tickets/in/", "--output", "s3://tickets/out/",
            "--checkpoint", "s3://tickets/runs/one/", "--s3-endpoint-url", url, "--base-url", sim.url]  # fmt: skip
    proc = run_example(*args, "--make-input", "40", env=creds)
    assert "wrote 40 rows to s3://tickets/out/  errors: 0" in proc.stdout, proc.stdout
    assert "resuming" not in proc.stdout
    assert fs.ls("tickets/runs/one/")  # the checkpoint is on S3 too
    assert sim.stats()["successes"] == 40
    again = run_example(*args, env=creds)
    assert "resuming: the checkpoint holds 40 answered rows" in again.stdout, again.stdout
    assert sim.stats()["successes"] == 40  # nothing paid twice


def test_structured_output_example_gives_typed_columns(start_sim):
    sim = start_sim()
    proc = run_example("structured_output.py", "--base-url", sim.url, "--rows", "12",
                       env={"OPENAI_API_KEY": API_KEY})  # fmt: skip
    # The dtypes printed for the three fields, from the schema alone.
    assert re.search(r"^service\s+category$", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"^severity\s+Int64$", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"^urgent\s+boolean$", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"^rows: 12  ok: 12  failed: 0", proc.stdout, re.MULTILINE), proc.stdout


@pytest.mark.slow
def test_spark_example_enriches_every_row():
    pytest.importorskip("pyspark")
    proc = run_example("spark_quickstart.py", "--rows", "120")
    assert "enriched 120 rows" in proc.stdout, proc.stderr[-2000:]
    counts = {line.split("|")[1].strip(): int(line.split("|")[2]) for line in proc.stdout.splitlines()
              if line.startswith("|") and line.split("|")[2].strip().isdigit()}  # fmt: skip
    assert sum(counts.values()) == 120
