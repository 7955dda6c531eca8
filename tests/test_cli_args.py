"""Pieces of the command line that need no subprocess: the resume command,
storage options and formats."""

from __future__ import annotations

import shlex

import pytest

from dask_llm._cli_run import parse_storage_options, resume_command
from dask_llm._errors import ConfigError
from dask_llm._io import format_of


def test_resume_command_is_the_same_run_without_overwrite_or_secrets():
    argv = ["run", "in.csv", "out dir/", "--prompt", "Classify: {text}", "--column", "label", "--model", "m",
            "--api-key", "sk-secret", "--checkpoint", "s3://b/ck", "--overwrite",
            "--storage-option", "key=AKIA", "--storage-option=secret=shh",
            "--storage-option", "client_kwargs.endpoint_url=http://h:9000"]  # fmt: skip
    line = resume_command(argv)
    assert "sk-secret" not in line and "AKIA" not in line and "shh" not in line
    assert shlex.split(line) == [
        "dask-llm", "run", "in.csv", "out dir/", "--prompt", "Classify: {text}", "--column", "label",
        "--model", "m", "--api-key", "***", "--checkpoint", "s3://b/ck",
        "--storage-option", "key=***", "--storage-option=secret=***",
        "--storage-option", "client_kwargs.endpoint_url=http://h:9000",
    ]  # fmt: skip


def test_storage_options_parse_json_values_and_nest_dotted_keys():
    options = parse_storage_options(["anon=false", "client_kwargs.endpoint_url=http://h:9000",
                                     "client_kwargs.region_name=eu-west-1", "block_size=1048576"])  # fmt: skip
    assert options == {
        "anon": False,
        "block_size": 1048576,
        "client_kwargs": {"endpoint_url": "http://h:9000", "region_name": "eu-west-1"},
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_storage_options(["no-equals-sign"])


@pytest.mark.parametrize(
    "path, fmt",
    [("a.csv", "csv"), ("s3://b/a.CSV.gz", "csv"), ("a.jsonl", "jsonl"), ("a.ndjson", "jsonl"),
     ("a.json", "jsonl"), ("a.parquet", "parquet"), ("dir/", "parquet"), ("data/*.csv", "csv")],
)  # fmt: skip
def test_format_follows_the_name(path, fmt):
    assert format_of(path) == fmt
