"""The dask-llm console script, run for real in a subprocess against the simulator."""

from __future__ import annotations

import fcntl
import importlib.util
import io
import json
import os
import pty
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import openai
import pandas as pd
import pytest

from dask_llm.simulator import expected_answer

from .conftest import API_KEY

#: Bound on any one command; a run here takes seconds.
TIMEOUT = 120


def dask_llm_command() -> list[str]:
    script = shutil.which("dask-llm", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "dask_llm.cli"]


def clean_env() -> dict[str, str]:
    """This environment without endpoint settings, so that only the flags count."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI_"))}


def dask_llm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dask_llm_command(), *args], capture_output=True, text=True, timeout=TIMEOUT, env=env or clean_env()
    )


def tickets(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": range(n), "text": [f"my VM number {i} does not start" for i in range(n)]})


def answers(frame: pd.DataFrame, prompt: str = "Classify: {text}") -> list[str]:
    """What the simulator answers to each row (label mode)."""
    return [expected_answer([{"role": "user", "content": prompt.format(text=t)}]) for t in frame["text"]]


def run_args(sim, src: Path | str, dst: Path | str, *extra: str) -> list[str]:
    return [
        "run", str(src), str(dst), "--prompt", "Classify: {text}", "--column", "label", "--model", "m",
        "--base-url", sim.url, "--api-key", API_KEY, "--progress-interval", "0.2", *extra,
    ]  # fmt: skip


def progress_lines(stderr: str) -> list[tuple[int, int]]:
    """(done, total) of each plain progress line."""
    return [
        (int(a.replace(",", "")), int(b.replace(",", "")))
        for a, b in re.findall(r"^rows ([\d,]+)/([\d,]+)", stderr, re.M)
    ]


def wait_for_progress(proc: subprocess.Popen[str], rows: int, timeout: float = 90) -> str:
    """The stderr a running command printed until its progress reached ``rows``."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if ready:
            line = proc.stderr.readline()
            seen += line
            if not line or any(done >= rows for done, _ in progress_lines(line)):
                break
    assert progress_lines(seen), f"no progress within {timeout} s: {seen}"
    return seen


# ---------------------------------------------------------------- run


def test_run_csv_to_csv_with_progress_and_summary(start_sim, tmp_path):
    sim = start_sim(latency=0.02)
    frame = tickets(120)
    frame.to_csv(tmp_path / "in.csv", index=False)
    proc = dask_llm(*run_args(sim, tmp_path / "in.csv", tmp_path / "out.csv", "--partitions", "3", "--threads", "4"))
    assert proc.returncode == 0, proc.stderr
    out = pd.read_csv(tmp_path / "out.csv")
    assert out["id"].tolist() == list(range(120))  # every row, in order, input columns kept
    assert out["label"].tolist() == answers(frame)
    assert out["label_error"].isna().all()
    # Progress: plain lines (stderr is not a terminal) that end at all rows.
    lines = progress_lines(proc.stderr)
    assert lines and lines[-1] == (120, 120), proc.stderr
    assert "Traceback" not in proc.stderr
    # The summary, on stdout.
    assert re.search(r"^rows: 120  ok: 120  failed: 0$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^tokens: [\d,]+ in, 120 out  cost: unknown", proc.stdout, re.M), proc.stdout  # model "m"
    assert re.search(r"^wall time: [\d.]+ s  achieved: [\d,]+ calls/min", proc.stdout, re.M), proc.stdout
    assert re.search(r"^rows called in this run: 120 \([\d.,]+ rows/s\)$", proc.stdout, re.M), proc.stdout
    # Writing the output and summing its columns called the model once per row.
    assert sim.stats()["successes"] == 120


def test_run_jsonl_to_parquet_on_the_sync_scheduler(start_sim, tmp_path):
    sim = start_sim(latency=0.0)
    frame = tickets(30)
    frame.to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    proc = dask_llm(*run_args(sim, tmp_path / "in.jsonl", tmp_path / "out", "--scheduler", "sync", "--partitions", "2"))
    assert proc.returncode == 0, proc.stderr
    out = pd.read_parquet(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert out["label"].tolist() == answers(frame)
    assert str(out["label_prompt_tokens"].dtype) == "Int64"


@pytest.mark.parametrize("name", ["in.json", "in.json.gz"])
def test_a_json_array_input_reads_as_its_objects(start_sim, tmp_path, name):
    # A *.json file is as often one JSON array as JSON Lines.
    sim = start_sim(latency=0.0)
    frame = tickets(12)
    frame.to_json(tmp_path / name, orient="records", indent=2)
    proc = dask_llm(*run_args(sim, tmp_path / name, tmp_path / "out.csv", "--partitions", "3"))
    assert proc.returncode == 0, proc.stderr
    out = pd.read_csv(tmp_path / "out.csv")
    assert out["id"].tolist() == list(range(12))
    assert out["label"].tolist() == answers(frame)


def test_jsonl_output_of_fewer_rows_than_partitions_has_no_blank_lines(start_sim, tmp_path):
    sim = start_sim(latency=0.0)
    tickets(2).to_csv(tmp_path / "in.csv", index=False)
    proc = dask_llm(*run_args(sim, tmp_path / "in.csv", tmp_path / "out.jsonl", "--partitions", "5"))
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["label"] for line in lines] == answers(tickets(2)), "one JSON object per line"


def test_a_reordered_input_resumes_free_and_status_counts_its_rows(start_sim, tmp_path):
    # dd.read_csv numbers rows by position: the reversed file renumbers every row.
    sim = start_sim(latency=0.0)
    frame = tickets(40)
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.iloc[::-1].to_csv(tmp_path / "rev.csv", index=False)
    ckpt = tmp_path / "ckpt"
    for name in ("a.csv", "rev.csv", "a.csv"):
        proc = dask_llm(
            *run_args(sim, tmp_path / name, tmp_path / f"out-{name}", "--checkpoint", ckpt, "--partitions", "3")
        )
        assert proc.returncode == 0, proc.stderr
    assert sim.stats()["successes"] == 40, "the reordered runs call nothing"
    # The totals count every row of the output; a line says what this run paid.
    assert re.search(r"^calls: 40 ", proc.stdout, re.M), proc.stdout
    assert "paid in this run: 0 calls, 0 in, 0 out tokens (" in proc.stdout, proc.stdout
    status = dask_llm("status", str(ckpt))
    assert "rows done: 40 of 40 (100%)" in status.stdout and "holds 80 row identities" in status.stdout, status.stdout
    assert "dataset: 40 rows in 3 files" in status.stdout, status.stdout
    assert len(pd.read_parquet(ckpt)) == 40


def test_failed_rows_exit_1_with_their_count(start_sim, tmp_path):
    # Every call fails with a 500 and a row gets one attempt: every row fails.
    sim = start_sim(latency=0.0, fail_rate=1.0)
    tickets(10).to_parquet(tmp_path / "in.parquet")
    proc = dask_llm(*run_args(sim, tmp_path / "in.parquet", tmp_path / "out.jsonl", "--max-attempts", "1"))
    assert proc.returncode == 1, proc.stderr
    assert "10 of 10 rows failed" in proc.stderr
    assert re.search(r"^rows: 10  ok: 0  failed: 10$", proc.stdout, re.M), proc.stdout
    out = pd.read_json(tmp_path / "out.jsonl", lines=True)
    assert out["label_error"].str.contains("500").all()


def test_partitions_are_chosen_from_the_rows_and_the_parallelism(start_sim, tmp_path):
    sim = start_sim(latency=0.0)
    frame = tickets(300)
    frame.to_csv(tmp_path / "in.csv", index=False)  # one 64 MB block: one partition as read
    proc = dask_llm(*run_args(sim, tmp_path / "in.csv", tmp_path / "out.csv", "--threads", "4", "--workers", "2"))
    assert proc.returncode == 0, proc.stderr
    # 300 rows / (4 threads x 8 calls) -> 10 partitions, more than the 2 at a time.
    assert "300 rows in 10 partitions" in proc.stderr, proc.stderr
    assert pd.read_csv(tmp_path / "out.csv")["label"].tolist() == answers(frame)


def test_progress_fits_a_narrow_terminal(start_sim, tmp_path):
    sim = start_sim(latency=0.05)
    tickets(200).to_csv(tmp_path / "in.csv", index=False)
    # stderr on a pseudo-terminal 60 columns wide (stdout redirected, as with `> out.txt`).
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
    env = {k: v for k, v in clean_env().items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([*dask_llm_command(), *run_args(sim, tmp_path / "in.csv", tmp_path / "out.csv",
                            "--threads", "8")], stdout=subprocess.PIPE, stderr=slave, env=env)  # fmt: skip
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the other side closed
                    break
                if not chunk:
                    break
                seen += chunk
        proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, seen.decode(errors="replace")
    redraws = [r.removesuffix("\x1b[K") for r in seen.decode().replace("\r\n", "\n").split("\r")]
    bars = [r for r in redraws if r.startswith("rows ") or r.startswith("[")]
    assert bars, seen
    assert all(len(r.strip("\n")) < 60 for r in bars), [r for r in bars if len(r) >= 60]
    assert any("rows 200/200 (100%)" in r and "ETA" in r for r in bars), bars[-3:]


def test_messages_name_the_flags_not_the_keyword_arguments(start_sim, tmp_path):
    sim = start_sim(latency=0.0)
    tickets(5).to_csv(tmp_path / "in.csv", index=False)
    ckpt = str(tmp_path / "ckpt")
    first = dask_llm(*run_args(sim, tmp_path / "in.csv", tmp_path / "out.csv", "--checkpoint", ckpt))
    assert first.returncode == 0, first.stderr
    argv = run_args(sim, tmp_path / "in.csv", tmp_path / "out.csv", "--checkpoint", ckpt)
    argv[argv.index("--prompt") + 1] = "Another prompt: {text}"
    changed = dask_llm(*argv)
    assert changed.returncode == 2, changed.stderr
    assert "--overwrite" in changed.stderr and "overwrite=" not in changed.stderr, changed.stderr


#: S3 options pointing at a port where nothing listens.
DEAD_S3 = ["--storage-option", "key=a", "--storage-option", "secret=b",
           "--storage-option", "client_kwargs.endpoint_url=http://127.0.0.1:9"]  # fmt: skip

#: Bad inputs, each with a piece of its one-line message. "{tmp}" is a folder
#: holding in.csv (columns id, text), "{url}" a running simulator.
BAD_INPUTS = {
    "missing input": (["run", "{tmp}/nope.csv", "{tmp}/o.csv", "--base-url", "{url}"], "input '{tmp}/nope.csv' does not exist"),
    "unknown column": (["run", "{tmp}/in.csv", "{tmp}/o.csv", "--base-url", "{url}", "--prompt", "{{nope}}"], "'nope'"),
    "bad template": (["run", "{tmp}/in.csv", "{tmp}/o.csv", "--base-url", "{url}", "--prompt", "{{text"], "not a valid template"),
    "bad endpoint URL": (["run", "{tmp}/in.csv", "{tmp}/o.csv", "--base-url", "ftp://host/v1"], "http:// or https://"),
    "bad input URL": (["run", "nosuchfs://bucket/in.csv", "{tmp}/o.csv", "--base-url", "{url}"], "cannot open input"),
    "no credentials": (["run", "{tmp}/in.csv", "{tmp}/o.csv"], "no API key for https://api.openai.com/v1: pass --api-key"),
    "output is input": (["run", "{tmp}/in.csv", "{tmp}/in.csv", "--base-url", "{url}"], "is the input"),
    "output is the checkpoint": (["run", "{tmp}/in.csv", "{tmp}/same", "--base-url", "{url}", "--checkpoint", "{tmp}/same"],
                                 "and --checkpoint '{tmp}/same' overlap"),
    "retry without checkpoint": (["run", "{tmp}/in.csv", "{tmp}/o.csv", "--base-url", "{url}", "--retry-errors"],
                                 "--retry-errors needs --checkpoint"),
    "rpm 0": (["run", "{tmp}/in.csv", "{tmp}/o.csv", "--base-url", "{url}", "--rpm", "0"],
              "--rpm must be a positive number, got 0"),
    "output under a file": (["run", "{tmp}/in.csv", "{tmp}/in.csv/o.csv", "--base-url", "{url}"],
                            "output '{tmp}/in.csv/o.csv': '{tmp}/in.csv' is a file, not a folder"),
    "output of no format": (["run", "{tmp}/in.csv", "{tmp}/o.txt", "--base-url", "{url}"],
                            "output '{tmp}/o.txt': no format is named .txt; write a *.csv or *.jsonl file"),
    "input not Parquet": (["run", "{tmp}/in.txt", "{tmp}/o.csv", "--base-url", "{url}"],
                          "cannot read input '{tmp}/in.txt' as Parquet (the format follows the name"),
    "input not CSV": (["run", "{tmp}/empty.csv", "{tmp}/o.csv", "--base-url", "{url}"],
                      "cannot read input '{tmp}/empty.csv' as CSV: "),
    "no checkpoint": (["status", "{tmp}/nothing-here"], "no dask-llm checkpoint"),
    "S3 without credentials": (["run", "s3://bucket/in.csv", "{tmp}/o.csv", "--base-url", "{url}"],
                               "input 's3://bucket/in.csv': no AWS credentials found: set AWS_ACCESS_KEY_ID"),
    "S3 endpoint down": (["run", "s3://bucket/in.csv", "{tmp}/o.csv", "--base-url", "{url}", *DEAD_S3],
                         "input 's3://bucket/in.csv': cannot connect to the storage endpoint"),
    "checkpoint endpoint down": (["run", "{tmp}/in.csv", "{tmp}/o.csv", "--base-url", "{url}", "--checkpoint",
                                  "s3://bucket/ck", *DEAD_S3], "checkpoint 's3://bucket/ck': cannot connect"),
    "gs:// without gcsfs": (["run", "{tmp}/in.csv", "gs://b/o.csv", "--base-url", "{url}"],
                            "output 'gs://b/o.csv' needs the gs:// filesystem: pip install 'dask-llm[gcs]'"),
    "az:// without adlfs": (["run", "az://c/in.csv", "{tmp}/o.csv", "--base-url", "{url}"],
                            "input 'az://c/in.csv' needs the az:// filesystem: pip install 'dask-llm[azure]'"),
}  # fmt: skip


def test_bad_input_is_one_line_and_exit_2(sim, tmp_path):
    tickets(3).to_csv(tmp_path / "in.csv", index=False)
    tickets(3).to_csv(tmp_path / "in.txt", index=False)  # a CSV, by a name that says nothing
    (tmp_path / "empty.csv").write_text("")
    fill = {"tmp": str(tmp_path), "url": sim.url}
    procs = {}
    # No AWS credentials anywhere, and no instance metadata to ask (no network here).
    env = {k: v for k, v in clean_env().items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))  # fmt: skip
    cases = [c for c in BAD_INPUTS if not (c.startswith("gs://") and importlib.util.find_spec("gcsfs"))]
    cases = [c for c in cases if not (c.startswith("az://") and importlib.util.find_spec("adlfs"))]
    # All at once: each is a fresh interpreter importing dask and openai.
    for case in cases:
        args = BAD_INPUTS[case][0]
        argv = [a.format(**fill) for a in args]
        if argv[0] == "run":
            argv += ["--column", "label", "--model", "m"]
            if "--prompt" not in argv:
                argv += ["--prompt", "Classify: {text}"]
        procs[case] = subprocess.Popen([*dask_llm_command(), *argv], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    for case, proc in procs.items():
        _, stderr = proc.communicate(timeout=TIMEOUT)
        command = BAD_INPUTS[case][0][0]
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, (case, stderr)
        assert len(lines) == 1 and "Traceback" not in stderr, (case, stderr)
        assert lines[0].startswith(f"dask-llm {command}: error: "), (case, stderr)
        assert BAD_INPUTS[case][1].format(**fill) in lines[0], (case, stderr)
    assert sim.stats()["requests"] == 0  # all refused before any call


def test_verbose_shows_the_traceback(tmp_path):
    proc = dask_llm("run", str(tmp_path / "nope.csv"), "o.csv", "--prompt", "x", "--column", "c",
                    "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--verbose")  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr


# ---------------------------------------------------------------- Ctrl+C, status, resume


@pytest.mark.slow
def test_ctrl_c_keeps_finished_rows_and_the_printed_command_resumes(start_sim, tmp_path):
    sim = start_sim(latency=0.15)  # 8 calls in flight: ~50 rows/s, ~6 s for all
    frame = tickets(300)
    frame.to_parquet(tmp_path / "in.parquet")
    ckpt = tmp_path / "ckpt"
    argv = run_args(sim, tmp_path / "in.parquet", tmp_path / "out", "--checkpoint", str(ckpt),
                    "--scheduler", "local", "--workers", "2", "--partitions", "4", "--threads", "4")  # fmt: skip
    # A session of its own, so that SIGINT goes to the whole process group,
    # worker processes included, as Ctrl+C in a terminal does.
    proc = subprocess.Popen([*dask_llm_command(), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean_env(), start_new_session=True)  # fmt: skip
    try:
        seen = wait_for_progress(proc, 60)
        os.killpg(proc.pid, signal.SIGINT)
        _stdout, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    stderr = seen + rest
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    called_before = sim.stats()["successes"]
    assert 60 <= called_before < 300, stderr

    # The exact command to resume, on one line, with the key as a variable
    # reference: it can be pasted into a shell where the key is set.
    resume = re.search(r"resume with:\n  (dask-llm run .*)\n", stderr)
    assert resume, stderr
    line = resume.group(1)
    assert API_KEY not in stderr and "--overwrite" not in line
    assert '--api-key "$OPENAI_API_KEY"' in line

    status = dask_llm("status", str(ckpt))
    assert status.returncode == 0, status.stderr
    saved = int(re.search(r"rows done: ([\d,]+) of 300", status.stdout).group(1).replace(",", ""))
    assert saved >= 60, status.stdout  # at least what the progress had shown
    assert "resume: dask-llm run" in status.stdout

    command = shlex.join(dask_llm_command()) + line.removeprefix("dask-llm")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=TIMEOUT,
                          env={**clean_env(), "OPENAI_API_KEY": API_KEY})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(r"^rows: 300  ok: 300  failed: 0$", done.stdout, re.M), done.stdout
    assert f"rows called in this run: {300 - saved:,} " in done.stdout, done.stdout
    assert f"{saved:,} from checkpoint" in done.stderr
    out = pd.read_parquet(tmp_path / "out")
    assert out["id"].tolist() == list(range(300))
    assert out["label"].tolist() == answers(frame)
    # Rows saved before Ctrl+C were not paid for again.
    assert sim.stats()["successes"] - called_before == 300 - saved


def _interrupt_once(argv: list[str], ready: Callable[[], bool]) -> tuple[int, str]:
    """Start ``dask-llm`` in a session of its own, SIGINT the group once ``ready()``; (exit status, stderr)."""
    proc = subprocess.Popen([*dask_llm_command(), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean_env(), start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode, stderr


def _batches(sim) -> list:
    client = openai.OpenAI(base_url=sim.url, api_key=API_KEY, max_retries=0)
    return list(client.batches.list(limit=100))


def test_sigterm_stops_like_ctrl_c_and_exits_143(start_sim, tmp_path):
    # What `kill` or a batch system's time limit sends: finished rows kept,
    # the resume command printed, and the exit status of a SIGTERM death.
    sim = start_sim(latency=0.1)
    tickets(200).to_csv(tmp_path / "in.csv", index=False)
    ckpt = tmp_path / "ckpt"
    argv = run_args(sim, tmp_path / "in.csv", tmp_path / "out.csv", "--checkpoint", str(ckpt),
                    "--scheduler", "threads", "--partitions", "4", "--threads", "4")  # fmt: skip
    proc = subprocess.Popen([*dask_llm_command(), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean_env())  # fmt: skip
    try:
        seen = wait_for_progress(proc, 30)
        proc.send_signal(signal.SIGTERM)
        _stdout, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    stderr = seen + rest
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "resume with:" in stderr, stderr
    status = dask_llm("status", str(ckpt))
    saved = int(re.search(r"rows done: ([\d,]+) of 200", status.stdout).group(1).replace(",", ""))
    assert 30 <= saved < 200, status.stdout


def test_batch_ctrl_c_leaves_the_batches_and_the_printed_command_collects_them(start_sim, tmp_path):
    sim = start_sim(batch_turnaround=6.0)
    frame = tickets(240)
    frame.to_parquet(tmp_path / "in.parquet")
    ckpt = tmp_path / "ckpt"
    argv = run_args(sim, tmp_path / "in.parquet", tmp_path / "out.csv", "--checkpoint", str(ckpt), "--batch",
                    "--batch-poll-interval", "0.2", "--partitions", "4", "--workers", "2")  # fmt: skip
    code, stderr = _interrupt_once(argv, lambda: len(_batches(sim)) == 4)
    assert code == 130 and "Traceback" not in stderr, stderr
    assert "4 batches keep running at the provider" in stderr, stderr
    collect = re.search(r"same command .*:\n  (dask-llm run .*)\n", stderr)
    assert collect and "--batch" in collect.group(1), stderr
    assert re.search(r"cancel them with:\n  dask-llm run .* --batch .*--cancel\n", stderr), stderr

    status = dask_llm("status", str(ckpt))
    assert status.returncode == 0, status.stderr
    assert re.search(r"^batches: 4 \(.*\); requests [\d,]+/240 answered", status.stdout, re.M), status.stdout

    command = shlex.join(dask_llm_command()) + collect.group(1).removeprefix("dask-llm")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=TIMEOUT,
                          env={**clean_env(), "OPENAI_API_KEY": API_KEY})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert pd.read_csv(tmp_path / "out.csv")["label"].tolist() == answers(frame)
    assert len(_batches(sim)) == 4, "re-attached: no new batch"
    assert set(sim.stats()["success_by_prompt"].values()) == {1}, "no row paid twice"
    assert re.search(r"batches 4/4 ended, 240/240 answered", done.stderr), done.stderr
    status = dask_llm("status", str(ckpt))
    assert "batches: 4 (4 completed); requests 240/240 answered" in status.stdout, status.stdout


@pytest.mark.slow
def test_batch_cancel_stops_the_batches_and_a_rerun_pays_only_the_rest(start_sim, tmp_path):
    sim = start_sim(batch_turnaround=20.0)  # ends long after the cancel (a CLI start takes seconds)
    frame = tickets(120)
    frame.to_csv(tmp_path / "in.csv", index=False)
    # No checkpoint: the batches are found by their metadata.
    argv = run_args(sim, tmp_path / "in.csv", tmp_path / "out.csv", "--batch", "--batch-poll-interval", "0.2",
                    "--partitions", "2")  # fmt: skip

    def half_answered() -> bool:
        made = _batches(sim)
        return len(made) == 2 and all(b.request_counts.completed > 10 for b in made)

    code, stderr = _interrupt_once(argv, half_answered)
    assert code == 130, stderr
    cancelled = dask_llm(*argv, "--cancel")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelling 2 of the run's 2 batches" in cancelled.stdout, cancelled.stdout
    deadline = time.monotonic() + 30
    while {b.status for b in _batches(sim)} != {"cancelled"}:
        assert time.monotonic() < deadline, [b.status for b in _batches(sim)]
        time.sleep(0.1)
    paid = sim.stats()["successes"]
    assert 20 < paid < 120

    done = dask_llm(*argv)
    assert done.returncode == 0, done.stderr
    assert pd.read_csv(tmp_path / "out.csv")["label"].tolist() == answers(frame)
    assert set(sim.stats()["success_by_prompt"].values()) == {1}, "the cancelled batches' answers were kept"
    follow_ups = [b for b in _batches(sim) if b.status != "cancelled"]
    assert sum(b.request_counts.total for b in follow_ups) == 120 - paid  # only the rest went again


@pytest.mark.slow
def test_run_on_a_remote_scheduler_reports_progress(start_sim, tmp_path, process_cluster):
    sim = start_sim(latency=0.02)
    frame = tickets(80)
    frame.to_csv(tmp_path / "in.csv", index=False)
    address = process_cluster.scheduler.address
    proc = dask_llm(*run_args(sim, tmp_path / "in.csv", tmp_path / "out.csv", "--scheduler", address,
                              "--partitions", "4", "--threads", "4", "--rpm", "6000"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"cluster at {address} (2 workers)" in proc.stderr
    assert progress_lines(proc.stderr)[-1] == (80, 80), proc.stderr
    assert pd.read_csv(tmp_path / "out.csv")["label"].tolist() == answers(frame)


@pytest.mark.slow
def test_run_and_status_from_s3_to_s3(start_sim, moto_s3):
    s3fs = pytest.importorskip("s3fs")
    sim = start_sim(latency=0.0)
    url = moto_s3
    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": url})
    fs.mkdir("data")
    frame = tickets(50)
    fs.pipe("data/in.csv", frame.to_csv(index=False).encode())
    options = ["--storage-option", "key=testing", "--storage-option", "secret=testing",
               "--storage-option", f"client_kwargs.endpoint_url={url}"]  # fmt: skip
    proc = dask_llm(*run_args(sim, "s3://data/in.csv", "s3://data/out.jsonl", "--partitions", "2",
                              "--checkpoint", "s3://data/runs/one/", *options))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = pd.read_json(io.BytesIO(fs.cat("data/out.jsonl")), lines=True)
    assert out["label"].tolist() == answers(frame)
    assert [p for p in fs.ls("data") if p.rpartition("/")[2].startswith(".")] == []  # no parts left over
    status = dask_llm("status", "s3://data/runs/one/", *options)
    assert status.returncode == 0, status.stderr
    assert "rows done: 50 of 50 (100%)  errors: 0" in status.stdout
    # No secret is stored or printed: the resume command refers to variables.
    assert '"secret=$DASK_LLM_STORAGE_SECRET"' in status.stdout and "testing" not in status.stdout
    assert b"testing" not in fs.cat("data/runs/one/_dask_llm/cli-run.json")


# ---------------------------------------------------------------- bench


def test_bench_sweeps_until_429_and_recommends(start_sim, tmp_path):
    # 0.1 s per call and 3,000 requests per minute (50/s): 1, 2 and 4 calls in
    # flight fit under the limit (10, 20, 40 calls/s); 8 would need 80/s.
    sim = start_sim(latency=0.1, latency_sd=0.0, rpm=3000, burst_seconds=0.5)
    png = tmp_path / "bench.png"
    proc = dask_llm("bench", "--base-url", sim.url, "--api-key", API_KEY, "--model", "m",
                    "--max-calls", "300", "--max-seconds", "60", "--plot", str(png))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = [line.split() for line in proc.stdout.splitlines() if re.match(r"^\s+\d+\s+\d+", line)]
    assert [int(row[0]) for row in table][:3] == [1, 2, 4], proc.stdout
    assert "p95 s" in proc.stdout and "calls/s" in proc.stdout
    assert re.search(r"^stopped: 429 rate limits at \d+ calls in flight", proc.stdout, re.M), proc.stdout
    assert re.search(r"^use about \d+ calls in flight .* --max-concurrency \d+", proc.stdout, re.M)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_says_when_the_plateau_was_not_reached(start_sim):
    # No limit, a steady 0.1 s: throughput doubles with each level until the calls run out.
    sim = start_sim(latency=0.1, latency_sd=0.0)
    proc = dask_llm("bench", "--base-url", sim.url, "--api-key", API_KEY, "--model", "m", "--max-calls", "60")
    assert proc.returncode == 0, proc.stderr
    assert "stopped: call or time budget used up" in proc.stdout, proc.stdout
    # 10 + 10 + 16 calls at 1, 2 and 4 in flight; 8 in flight needs 32 more.
    assert re.search(r"^plateau not reached: throughput was still growing at 4 calls in flight "
                     r"\([\d.]+ calls/s\); measure 8 with --max-calls 68\.", proc.stdout, re.M), proc.stdout  # fmt: skip
    assert "use about" not in proc.stdout


def test_bench_wrong_key_is_exit_2(start_sim):
    sim = start_sim()
    proc = dask_llm("bench", "--base-url", sim.url, "--api-key", "wrong", "--model", "m", "--max-calls", "20")
    assert proc.returncode == 2
    assert "refused" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- simulate


def test_simulate_serves_until_interrupted():
    proc = subprocess.Popen(
        [*dask_llm_command(), "simulate", "--port", "0", "--mode", "echo", "--latency", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
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
