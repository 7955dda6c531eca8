"""``dask-llm run INPUT OUTPUT``: enrich a file from the command line.

The steps, in the order a failure would stop them: check every argument
and path (exit 2, before any call) -> open the scheduler -> count the rows
-> build the lazy enrichment -> compute it while a progress line runs ->
join the output -> print the summary (exit 1 when rows failed).

Ctrl+C cancels the run everywhere (see :mod:`dask_llm._run._progress`), waits
for the running partitions to save their finished rows, and prints the
command that resumes the run (exit 130).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from .._api import enrich
from .._batchapi import BatchAPI
from .._budget import Budget
from .._config import Endpoint, RetryPolicy
from .._core._schema import OutputColumns
from .._core._store import open_store
from .._cost._pricing import price_for
from .._cost._summary import RunSummary
from .._errors import ConfigError
from .._observe import JOBS_TOPIC
from .._run._progress import ProgressChannel, Snapshot, Tally, cancel, collect
from ._io import TOTALS, Output, auto_partitions, read_input
from ._progress_line import ProgressPrinter
from ._scheduler import Scheduler, open_scheduler
from ._storage import storage_errors

__all__ = ["RUN_INFO", "parse_storage_options", "resume_command", "run"]

#: Written into a checkpoint by ``dask-llm run``, read by ``dask-llm status``.
RUN_INFO = "_dask_llm/cli-run.json"

#: The signal that stopped the run (SIGINT unless ``kill`` sent SIGTERM).
_stopped_by = signal.SIGINT


def interrupted_status() -> int:
    """Exit status of a stopped run, as shells report a death by its signal:
    130 after Ctrl+C, 143 after SIGTERM."""
    return 128 + int(_stopped_by)


def parse_storage_options(items: Sequence[str]) -> dict[str, Any]:
    """``["anon=false", "client_kwargs.endpoint_url=http://h"]`` ->
    ``{"anon": False, "client_kwargs": {"endpoint_url": "http://h"}}``.

    Raises
    ------
    ConfigError
        An item without ``=``.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--storage-option takes KEY=VALUE, got {item!r}")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        *parents, leaf = key.split(".")
        node = options
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--storage-option {key!r} nests under a value that is not a mapping")
        node[leaf] = value
    return options


_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "passwd")
#: Options never repeated on a command line that is printed or stored.
_DROPPED = {"overwrite", "verbose", "cancel"}


def _secret(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_WORDS)


def resume_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[str, list[str]]:
    """The command line that resumes this run, and the environment variables
    it refers to.

    Built from the *parsed* options, not the words typed, so that secrets
    are found by what they are, however they were spelled: the API key
    becomes ``"$OPENAI_API_KEY"`` (or Azure's), a secret storage option
    ``"secret=$DASK_LLM_STORAGE_SECRET"``, and the line can be pasted once
    those are set. ``--overwrite`` is left out: it would discard what the
    checkpoint holds.
    """
    words = ["dask-llm", "run"]
    needed: list[str] = []
    for action in parser._actions:
        dest = action.dest
        if dest in ("help", "argv", "handler", "command", "parser") or dest in _DROPPED:
            continue
        value = getattr(args, dest, None)
        if not action.option_strings:  # positional
            words.append(str(value))
            continue
        flag = max(action.option_strings, key=len)
        if value is None or (value == action.default and not isinstance(value, list)):
            continue
        if isinstance(action, argparse._StoreTrueAction):
            if value:
                words.append(flag)
        elif dest == "api_key":
            variable = "AZURE_OPENAI_API_KEY" if getattr(args, "azure_endpoint", None) else "OPENAI_API_KEY"
            words += [flag, f"${variable}"]
            needed.append(variable)
        elif isinstance(value, list):
            for item in value:
                key, sep, _ = str(item).partition("=")
                if sep and _secret(key.rsplit(".", 1)[-1]):
                    variable = "DASK_LLM_STORAGE_" + "".join(c if c.isalnum() else "_" for c in key).upper()
                    words += [flag, f"{key}=${variable}"]
                    needed.append(variable)
                else:
                    words += [flag, str(item)]
        else:
            words += [flag, str(getattr(value, "raw", value))]
    # Quote everything but the variable references, which the shell must expand.
    quoted = []
    for word in words:
        if "$" in word and any(word.endswith(f"${v}") for v in needed):
            head, _, var = word.rpartition("$")
            quoted.append(f'"{head}${var}"' if head else f'"${var}"')
        else:
            quoted.append(shlex.quote(word))
    return " ".join(quoted), needed


def cost_function(model: str) -> Callable[[int, int], float] | None:
    """``cost(prompt_tokens, completion_tokens)`` in dollars for ``model``
    from the library's price table, or None when the model has no price
    (then cost is shown as unknown, never as a silent zero)."""
    price = price_for(model)
    return price.cost if price is not None else None


def summarize(totals: pd.DataFrame, model: str, wall: float, this_run: Snapshot | None = None) -> RunSummary:
    """The run summary, from the per-partition :data:`~dask_llm.cli._io.TOTALS`
    that the output tasks returned.

    The achieved calls and tokens per minute count only what this run called
    (``this_run``, the progress tally): rows restored from a checkpoint took
    no time, and counting them would report rates the endpoint never saw.
    """
    sums: dict[str, Any] = {name: int(totals[name].sum()) for name in TOTALS if name != "rate_limited"}
    counted = totals["rate_limited"].dropna()
    sums["rate_limited"] = int(counted.sum()) if len(counted) else None
    price = price_for(model)
    summary = RunSummary(
        **sums, cost=price.cost(sums["prompt_tokens"], sums["completion_tokens"]) if price else None, model=model
    )
    return summarize_run(summary, wall, this_run)


def summarize_run(summary: RunSummary, wall: float, this_run: Snapshot | None = None) -> RunSummary:
    """``summary`` with the wall time and the achieved rates of this run:
    calls and tokens it made itself (``this_run``), per minute of ``wall``."""
    per_minute = 60.0 / wall if wall > 0 else None
    calls = this_run.calls if this_run else summary.calls
    tokens = (
        this_run.prompt_tokens + this_run.completion_tokens
        if this_run
        else summary.prompt_tokens + summary.completion_tokens
    )
    return dataclasses.replace(
        summary,
        wall_time=wall,
        rpm=calls * per_minute if per_minute else None,
        tpm=tokens * per_minute if per_minute else None,
    )


def print_summary(summary: RunSummary, progress: Snapshot, output: str, stream: Any) -> None:
    """The summary, plus what only this run knows: rows restored from the
    checkpoint (not called, not paid again) and where the output went."""
    called = summary.rows - progress.restored
    rate = called / summary.wall_time if summary.wall_time else 0.0
    lines = [
        str(summary),
        f"rows called in this run: {called:,} ({rate:,.1f} rows/s)"
        + (f", {progress.restored:,} from the checkpoint" if progress.restored else ""),
    ]
    if progress.restored:
        # The lines above count every row of the output; say what this run paid.
        cost_of = cost_function(summary.model) if summary.model else None
        cost = cost_of(progress.prompt_tokens, progress.completion_tokens) if cost_of is not None else None
        lines.append(
            f"paid in this run: {progress.calls:,} calls, {progress.prompt_tokens:,} in, "
            f"{progress.completion_tokens:,} out tokens"
            + (f", ${cost:,.4f}" if cost is not None else "")
            + " (the lines above also count the checkpoint's rows)"
        )
    lines.append(f"output: {output}")
    stream.write("\n".join(lines) + "\n")
    stream.flush()


def resolve_endpoint(args: argparse.Namespace) -> Endpoint:
    """The endpoint the options and environment name, checked.

    Raises
    ------
    ConfigError
        No key for a hosted API, or a malformed URL; worded for the command line.
    """
    endpoint = Endpoint(
        base_url=args.base_url, api_key=args.api_key, azure_endpoint=args.azure_endpoint,
        api_version=args.api_version, timeout=args.timeout, api_key_env=getattr(args, "api_key_env", None),
    )  # fmt: skip
    try:
        return endpoint.resolve()
    except ConfigError as exc:
        if "no API key" not in str(exc):
            raise
        variable = "AZURE_OPENAI_API_KEY" if endpoint.is_azure else "OPENAI_API_KEY"
        raise ConfigError(
            f"no API key for {endpoint.display_url}: pass --api-key or set {variable} "
            f"(a local server needs --base-url and no key)"
        ) from None


def run(args: argparse.Namespace) -> int:
    """Run ``dask-llm run``; see the module docstring."""
    err = sys.stderr
    for name in ("threads", "workers", "partitions", "max_tokens", "max_concurrency", "max_attempts"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("rpm", "tpm", "timeout"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ConfigError(f"--{name} must be a positive number, got {value:g}")
    needing = [flag for flag, on in (("--retry-errors", args.retry_errors), ("--overwrite", args.overwrite)) if on]
    if needing and not args.checkpoint:
        raise ConfigError(f"{' and '.join(needing)} need{'s' if len(needing) == 1 else ''} --checkpoint")
    options = parse_storage_options(args.storage_option)
    endpoint = resolve_endpoint(args)
    budget: Budget | bool | None = False if args.no_budget else None  # None: the adaptive default
    if args.max_concurrency or args.rpm or args.tpm:
        budget = Budget(max_concurrency=args.max_concurrency, rpm=args.rpm, tpm=args.tpm)
    if args.cancel and not args.batch:
        raise ConfigError("--cancel cancels the batches of a --batch run: add --batch")
    batch = BatchAPI(poll_interval=args.batch_poll_interval) if args.batch else None
    if batch is not None and getattr(args, "engine", "dask") == "spark":
        raise ConfigError("--batch is not available with --engine spark yet; use --engine dask")
    if getattr(args, "engine", "dask") == "spark":
        from ._spark import run_spark

        spark_kwargs: dict[str, Any] = dict(
            endpoint=endpoint, system=args.system, threads=args.threads, temperature=args.temperature,
            max_tokens=args.max_tokens, budget=budget, checkpoint=args.checkpoint,
            storage_options=options if args.checkpoint else None,
            retry_errors=args.retry_errors, overwrite=args.overwrite,
            retry=RetryPolicy(max_attempts=args.max_attempts), progress=ProgressChannel.new(),
        )  # fmt: skip
        _stop_on_sigterm()
        return run_spark(args, spark_kwargs)
    with storage_errors("input", args.input):
        ddf = read_input(args.input, options, args.partitions)
    if args.cancel:
        return _cancel_batches(args, ddf, endpoint, options)
    with storage_errors("output", args.output):
        output = Output(args.output, options)
        output.check(args.input, args.checkpoint)
    outputs = OutputColumns(args.column)
    channel = ProgressChannel.new()
    tty = err.isatty()
    interval = args.progress_interval or (0.5 if tty else 10.0)

    _stop_on_sigterm()
    with open_scheduler(args.scheduler, args.workers, args.verbose) as sched:
        kwargs: dict[str, Any] = dict(
            endpoint=endpoint, system=args.system, threads=args.threads, temperature=args.temperature,
            max_tokens=args.max_tokens, budget=budget, checkpoint=args.checkpoint,
            storage_options=options if args.checkpoint else None,
            retry_errors=args.retry_errors, overwrite=args.overwrite,
            retry=RetryPolicy(max_attempts=args.max_attempts), progress=channel, batch=batch,
        )  # fmt: skip
        with storage_errors("input", args.input):
            total = len(ddf)
        if args.partitions is None:
            # Chosen from the rows and the parallelism: a CSV is otherwise one partition per 64 MB.
            wanted = auto_partitions(total, sched.parallel, args.threads)
            if wanted != ddf.npartitions:
                ddf = ddf.repartition(npartitions=wanted)
        with storage_errors("checkpoint", args.checkpoint or ""):
            out = enrich(ddf, args.prompt, args.column, args.model, **kwargs)
        if sched.client is not None:
            # The dashboard page shows "of N" with the row count this command knows.
            sched.client.log_event(JOBS_TOPIC, {"topic": channel.topic, "total": total})
        if args.checkpoint:
            _save_run_info(args, options, total, ddf.npartitions)
        with storage_errors("output", args.output):
            lazy = output.write(out, outputs)
        where = sched.description + (f"; progress page {sched.dashboard}" if sched.dashboard else "")
        err.write(
            f"dask-llm run: {total:,} rows in {ddf.npartitions} partitions, model {args.model} "
            f"at {endpoint.display_url}; {where}\n"
        )
        err.flush()
        tally = Tally(total)
        start = time.monotonic()
        printer = ProgressPrinter(tally, err, tty, interval, cost_function(args.model))
        with collect(channel, tally, sched.client):
            try:
                with printer:
                    totals = _compute(lazy, sched)
                    wall = time.monotonic() - start
                    # The last batches may still be on their way from the
                    # workers: let them land (bounded), so the last line
                    # shows every row.
                    _wait_for(lambda: tally.snapshot().done >= total, 2.0)
            except KeyboardInterrupt:
                # Still subscribed: the rows the partitions finish while
                # they stop are counted too.
                _stop_everywhere(channel, sched)
                output.abort()
                _print_interrupted(args, tally.snapshot(), err)
                return interrupted_status()
            except BaseException:
                output.abort()
                raise
    with storage_errors("output", args.output):
        output.finish(list(out.columns))
    summary = summarize(totals, args.model, wall, tally.snapshot())
    print_summary(summary, tally.snapshot(), args.output, sys.stdout)
    if summary.rows_failed:
        hint = (
            "rerun the same command with --retry-errors to call them again"
            if args.checkpoint else "their errors are in the column " + repr(outputs.error)
        )  # fmt: skip
        err.write(f"dask-llm run: {summary.rows_failed:,} of {summary.rows:,} rows failed; {hint}\n")
        return 1
    return 0


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def _stop_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a batch system's time limit) stop the run the
    way Ctrl+C does: cancelled everywhere, finished rows kept."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum: int, frame: object) -> None:
        global _stopped_by
        _stopped_by = signal.SIGTERM
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _compute(lazy: Any, sched: Scheduler) -> pd.DataFrame:
    if sched.client is None:
        return lazy.compute()
    future = sched.client.compute(lazy)
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()
        raise


def _stop_everywhere(channel: ProgressChannel, sched: Scheduler, timeout: float = 30.0) -> None:
    """Cancel the run in every process and wait (bounded) until its running
    partitions have stopped, so their finished rows are journaled before the
    cluster goes away."""
    from .._run import _progress

    cancel(channel.topic)
    client = sched.client
    deadline = time.monotonic() + timeout
    try:
        if client is not None:
            client.run(cancel, channel.topic, on_error="ignore")
        while time.monotonic() < deadline:
            if client is not None:
                busy = sum(client.run(_progress.active, channel.topic, on_error="ignore").values() or [0])
            else:
                busy = _progress.active(channel.topic)
            if not busy:
                # Their last batches are sent; give them a moment to arrive.
                time.sleep(channel.interval + 0.2)
                return
            time.sleep(0.1)
    except KeyboardInterrupt:  # a second Ctrl+C: stop waiting
        return
    except Exception:  # the cluster is going away anyway
        return


def _cancel_batches(args: argparse.Namespace, ddf: Any, endpoint: Endpoint, options: Mapping[str, Any]) -> int:
    """``--batch --cancel``: cancel the run's batches (those its checkpoint
    recorded, else those the provider lists under the run's fingerprint)."""
    from .._api import run_fingerprint
    from .._run._batch import cancel_run

    spec = run_fingerprint(
        ddf, args.prompt, args.column, args.model, endpoint=endpoint, system=args.system,
        temperature=args.temperature, max_tokens=args.max_tokens,
    )  # fmt: skip
    store = open_store(args.checkpoint, options) if args.checkpoint else None
    states = cancel_run(endpoint, spec, store)
    stopped = [s for s in states if s.status == "cancelling"]
    out = sys.stdout
    if not states:
        out.write("dask-llm run: this run has no batches at the provider; nothing to cancel\n")
        return 0
    out.write(f"dask-llm run: cancelling {len(stopped):,} of the run's {len(states):,} batches "
              f"({len(states) - len(stopped):,} had already ended)\n")  # fmt: skip
    for state in states:
        out.write(f"  {state.ref.batch_id}  {state.status}  {state.completed:,}/{state.total:,} answered\n")
    out.write(
        "Their answered rows are billed and kept by the provider: run the command again without "
        "--cancel to collect them (the rest are sent again).\n"
    )
    out.flush()
    return 0


def _print_interrupted(args: argparse.Namespace, snap: Snapshot, err: Any) -> None:
    err.write(f"dask-llm run: interrupted; {snap.done:,} of {snap.total or 0:,} rows finished.\n")
    if args.batch:
        hint, needed = resume_command(args, args.parser)
        running = max(snap.batches - snap.batches_done, 0)
        err.write(
            f"{running:,} batches keep running at the provider (they are billed whether or not they are "
            f"collected).\nCollect their answers later with the same command (it creates no new batch for "
            f"them):\n  {hint}\nor cancel them with:\n  {hint} --cancel\n"
        )
        if needed:
            err.write(f"  (with {', '.join(needed)} set: secrets are not repeated)\n")
        err.flush()
        return
    if args.checkpoint:
        err.write(
            f"Finished rows are saved in the checkpoint {args.checkpoint}; resume with:\n  {_resume_hint(args)}\n"
        )
    else:
        err.write(
            "Finished rows were not kept: there is no --checkpoint. Add --checkpoint PATH "
            "to make the next run resumable.\n"
        )
    err.flush()


def _resume_hint(args: argparse.Namespace) -> str:
    line, needed = resume_command(args, args.parser)
    if needed:
        line += f"\n  (with {', '.join(needed)} set: secrets are not repeated)"
    return line


def _save_run_info(args: argparse.Namespace, options: Mapping[str, Any], total: int, partitions: int) -> None:
    """Record the command and the input's size in the checkpoint, for
    ``dask-llm status`` (best effort: a run does not fail for it)."""
    info = {
        "command": _resume_hint(args),
        "rows": total,
        "partitions": partitions,
        "input": args.input,
        "output": args.output,
        "model": args.model,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        open_store(args.checkpoint, options).write(RUN_INFO, json.dumps(info, indent=2).encode())
    except Exception:
        pass
