"""Pieces of the command line that need no subprocess: the resume command,
storage options and formats."""

from __future__ import annotations

import shlex

import pytest

from dask_llm._errors import ConfigError
from dask_llm.cli import build_parser, main
from dask_llm.cli._io import format_of
from dask_llm.cli._run import parse_storage_options, resume_command


def _parsed(argv: list[str]) -> tuple[str, list[str]]:
    args = build_parser().parse_args(argv)
    return resume_command(args, args.parser)


def test_resume_command_is_the_same_run_without_overwrite_or_secrets():
    argv = ["run", "in.csv", "out dir/", "--prompt", "Classify: {text}", "--column", "label", "--model", "m",
            "--api-key", "sk-secret", "--checkpoint", "s3://b/ck", "--overwrite",
            "--storage-option", "key=AKIA", "--storage-option=secret=shh",
            "--storage-option", "client_kwargs.endpoint_url=http://h:9000"]  # fmt: skip
    line, needed = _parsed(argv)
    assert "sk-secret" not in line and "AKIA" not in line and "shh" not in line and "***" not in line
    assert needed == ["OPENAI_API_KEY", "DASK_LLM_STORAGE_KEY", "DASK_LLM_STORAGE_SECRET"]
    # The line can be pasted: the shell expands the variables.
    expanded = shlex.split(line.replace("$OPENAI_API_KEY", "K1").replace("$DASK_LLM_STORAGE_KEY", "K2")
                           .replace("$DASK_LLM_STORAGE_SECRET", "K3"))  # fmt: skip
    again = build_parser().parse_args(expanded[1:])
    assert again.api_key == "K1" and again.storage_option == [
        "key=K2",
        "secret=K3",
        "client_kwargs.endpoint_url=http://h:9000",
    ]
    assert again.prompt == "Classify: {text}" and again.output == "out dir/" and not again.overwrite


def test_abbreviated_options_are_refused_and_their_secrets_not_printed(capsys):
    for argv in (["run", "a.csv", "b.csv", "--prompt", "p", "--column", "c", "--model", "m", "--api-ke", "sk-abcdefgh123"],
                 ["run", "a.csv", "b.csv", "--prompt", "p", "--column", "c", "--model", "m",
                  "--storage-opt", "secret=hunter22"]):  # fmt: skip
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "unrecognized arguments" in err
        assert "sk-abcdefgh123" not in err and "hunter22" not in err


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
