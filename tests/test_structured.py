"""Structured output: a Pydantic model or a JSON schema -> typed columns,
validated answers, retries of invalid ones; real HTTP to the simulator."""

from __future__ import annotations

import enum
import json
from typing import Literal

import dask.dataframe as dd
import openai
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pydantic
import pytest

import dask_llm
from dask_llm import RetryPolicy
from dask_llm._core._structured import InvalidAnswer, StructuredOutput, structured_output
from dask_llm.simulator import expected_answer

from .conftest import API_KEY, endpoint_for

FAST_RETRY = RetryPolicy(max_attempts=8, backoff_initial=0.01, backoff_max=0.05)


class Severity(str, enum.Enum):
    low = "low"
    medium = "medium"
    high = "high"


class Location(pydantic.BaseModel):
    region: str
    zone: int


class Triage(pydantic.BaseModel):
    service: Literal["compute", "storage", "database"]
    severity: Severity
    confidence: float = pydantic.Field(ge=0, le=1)
    priority: int = pydantic.Field(ge=1, le=5)
    urgent: bool
    tags: list[str]
    location: Location
    note: str | None = None


# The same shape as a plain JSON schema, for users without Pydantic.
TRIAGE_SCHEMA = {
    "title": "Triage",
    "type": "object",
    "properties": {
        "service": {"type": "string", "enum": ["compute", "storage", "database"]},
        "severity": {"type": "string", "enum": ["low", "medium", "high"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "urgent": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "location": {
            "type": "object",
            "properties": {"region": {"type": "string"}, "zone": {"type": "integer"}},
        },
    },
}

EXPECTED_TYPES = {
    "service": pa.dictionary(pa.int8(), pa.string()),
    "severity": pa.dictionary(pa.int8(), pa.string()),
    "confidence": pa.float64(),
    "priority": pa.int64(),
    "urgent": pa.bool_(),
    "tags": pa.list_(pa.string()),
    "location": pa.struct([("region", pa.string()), ("zone", pa.int64())]),
}


def tickets(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": range(n), "title": [f"ticket {i} is broken" for i in range(n)]})


def messages_for(title: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Triage: {title}"}]


# -- the schema and its columns, without a server ------------------------------


@pytest.mark.parametrize("output", [Triage, TRIAGE_SCHEMA], ids=["pydantic", "json-schema"])
def test_output_columns_and_strict_response_format(output):
    spec = structured_output(output)
    dtypes = spec.dtypes
    assert list(dtypes)[:7] == list(EXPECTED_TYPES)
    assert dtypes["service"] == pd.CategoricalDtype(["compute", "storage", "database"])
    assert dtypes["priority"] == "Int64" and dtypes["confidence"] == "Float64" and dtypes["urgent"] == "boolean"
    fmt = spec.response_format
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    # Strict mode: every object closed, every property required.
    schema = fmt["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == set(schema["properties"])


@pytest.mark.parametrize("output", [Triage, TRIAGE_SCHEMA], ids=["pydantic", "json-schema"])
def test_answers_that_do_not_fit_are_refused(output):
    spec = structured_output(output)
    good = {"service": "compute", "severity": "low", "confidence": 0.5, "priority": 2, "urgent": True,
            "tags": ["a"], "location": {"region": "eu", "zone": 1}}  # fmt: skip
    assert spec.parse(json.dumps(good))["service"] == "compute"
    for bad in ['{"service": "compute"', json.dumps({**good, "service": "dns"}), json.dumps({**good, "urgent": "yes"}),
                json.dumps({k: v for k, v in good.items() if k != "priority"})]:  # fmt: skip
        with pytest.raises(InvalidAnswer):
            spec.parse(bad)


def test_not_an_object_schema_is_a_config_error():
    with pytest.raises(dask_llm.ConfigError):
        structured_output({"type": "string"})
    with pytest.raises(dask_llm.ConfigError):
        structured_output(42)


# -- the simulator answers structured requests ---------------------------------


def test_simulator_answers_fit_the_requested_schema(start_sim):
    sim = start_sim(mode="label")
    client = openai.OpenAI(base_url=sim.url, api_key=API_KEY, max_retries=0)
    spec = structured_output(Triage)
    answers = set()
    for i in range(20):
        messages = messages_for(f"ticket {i}")
        reply = client.chat.completions.create(model="m", messages=messages, response_format=spec.response_format)
        content = reply.choices[0].message.content
        assert content == expected_answer(messages, response_format=spec.response_format)
        parsed = Triage.model_validate_json(content)  # fits, constraints included
        answers.add((parsed.service, parsed.severity, parsed.priority))
    assert len(answers) > 3  # the values vary with the prompt


def test_simulator_invalid_json_rate(start_sim):
    sim = start_sim(mode="label", invalid_json_rate=0.5, seed=1)
    client = openai.OpenAI(base_url=sim.url, api_key=API_KEY, max_retries=0)
    spec = structured_output(TRIAGE_SCHEMA)
    bad = 0
    for i in range(40):
        reply = client.chat.completions.create(
            model="m", messages=messages_for(f"t{i}"), response_format=spec.response_format
        )
        try:
            spec.parse(reply.choices[0].message.content)
        except InvalidAnswer:
            bad += 1
    assert 8 <= bad <= 32
    assert sim.stats()["faults"]["invalid_json"] == bad
    # Requests without a JSON format are never affected.
    plain = client.chat.completions.create(model="m", messages=messages_for("x"))
    assert plain.choices[0].message.content == expected_answer(messages_for("x"))


# -- enrich(output=...) end to end ----------------------------------------------


def test_typed_columns_round_trip_through_parquet(start_sim, tmp_path):
    sim = start_sim(mode="label")
    ddf = dd.from_pandas(tickets(60), npartitions=3)
    out = dask_llm.enrich(ddf, "Triage: {title}", column="triage", model="m", endpoint=endpoint_for(sim), output=Triage)
    assert out.dtypes["priority"] == "Int64" and sim.stats()["requests"] == 0  # lazy, exact meta
    out.to_parquet(tmp_path / "good", write_index=False)

    # A run where every answer is invalid: all-null typed columns, same schema.
    bad_sim = start_sim(mode="label", invalid_json_rate=1.0)
    bad = dask_llm.enrich(
        tickets(5), "Triage: {title}", column="triage", model="m", endpoint=endpoint_for(bad_sim),
        output=Triage, retry=RetryPolicy(max_attempts=1),
    )  # fmt: skip
    assert bad["triage_error"].notna().all() and bad["priority"].isna().all()
    bad.to_parquet(tmp_path / "good" / "zz-bad.parquet", index=False)

    table = pq.read_table(tmp_path / "good")  # one dataset: every file has one schema
    for name, typ in EXPECTED_TYPES.items():
        assert table.schema.field(name).type == typ, name
    # Plain to_pandas() would trip over pandas' own metadata for list/struct
    # columns (pandas-dev/pandas#53011); rows as Python objects sidestep it.
    back = table.to_pylist()[:60]
    response_format = structured_output(Triage).response_format
    for row in back:
        title = row["title"]
        assert row["triage_error"] is None
        expected = json.loads(expected_answer(messages_for(title), response_format=response_format))
        assert row["triage"] == json.dumps(expected)  # the raw answer is kept
        assert row["service"] == expected["service"] and row["priority"] == expected["priority"]
        assert row["confidence"] == pytest.approx(expected["confidence"])
        assert list(row["tags"]) == expected["tags"] and row["location"] == expected["location"]


def test_invalid_answers_are_retried_then_reported(start_sim):
    sim = start_sim(mode="label", invalid_json_rate=0.3, seed=5)
    out = dask_llm.enrich(
        tickets(80), "Triage: {title}", column="t", model="m", endpoint=endpoint_for(sim),
        output=TRIAGE_SCHEMA, retry=FAST_RETRY, threads=8,
    )  # fmt: skip
    stats = sim.stats()
    assert out["t_error"].isna().all() and out["service"].notna().all()
    assert int((out["t_attempts"] - 1).sum()) == stats["faults"]["invalid_json"] > 0
    # Invalid answers are billed too, and counted.
    assert out["t_prompt_tokens"].sum() == stats["prompt_tokens"]

    sim = start_sim(mode="label", invalid_json_rate=1.0)
    out = dask_llm.enrich(
        tickets(10), "Triage: {title}", column="t", model="m", endpoint=endpoint_for(sim),
        output=TRIAGE_SCHEMA, retry=RetryPolicy(max_attempts=3, backoff_initial=0.01),
    )  # fmt: skip
    assert out["t_error"].str.startswith("invalid structured answer").all()
    assert out["t_error"].str.contains("after 3 attempts").all()
    assert (out["t_attempts"] == 3).all() and sim.stats()["requests"] == 30
    assert out["t"].notna().all()  # the raw (broken) answer is kept for inspection
    assert out["service"].isna().all()


@pytest.mark.parametrize("output", [Triage, TRIAGE_SCHEMA], ids=["pydantic", "json-schema"])
def test_structured_columns_come_back_from_a_checkpoint(start_sim, tmp_path, output, monkeypatch):
    sim = start_sim(mode="label")
    ddf = dd.from_pandas(tickets(30), npartitions=2)
    kwargs = dict(column="t", model="m", endpoint=endpoint_for(sim), output=output, checkpoint=str(tmp_path))
    first = dask_llm.enrich(ddf, "Triage: {title}", **kwargs).compute(scheduler="threads")
    # The typed columns come back as the dataset files hold them: a resume
    # parses no answer again (at 1M rows that would cost more than the rest).
    monkeypatch.setattr(StructuredOutput, "parse", lambda self, text: pytest.fail("an answer parsed again"))
    again = dask_llm.enrich(ddf, "Triage: {title}", **kwargs).compute(scheduler="threads")
    assert sim.stats()["requests"] == 30  # the second run called nothing
    pd.testing.assert_frame_equal(again, first)
    other = dask_llm.enrich(ddf.repartition(npartitions=3), "Triage: {title}", **kwargs).compute(scheduler="threads")
    assert sim.stats()["requests"] == 30  # nor does another layout
    pd.testing.assert_frame_equal(other, first)


def test_output_config_errors(sim):
    with pytest.raises(dask_llm.ConfigError, match="response_format"):
        dask_llm.enrich(tickets(2), "{title}", column="t", model="m", endpoint=endpoint_for(sim),
                        output=Triage, params={"response_format": {"type": "json_object"}})  # fmt: skip
    with pytest.raises(dask_llm.ConfigError, match="already exist"):
        dask_llm.enrich(tickets(2).rename(columns={"id": "service"}), "{title}", column="t", model="m",
                        endpoint=endpoint_for(sim), output=Triage)  # fmt: skip
    assert sim.stats()["requests"] == 0
