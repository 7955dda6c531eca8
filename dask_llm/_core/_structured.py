"""Structured output: a Pydantic model or a JSON schema -> typed columns.

``enrich(..., output=Ticket)`` asks the provider for an answer that fits the
schema (``response_format`` of type ``json_schema``, strict), checks the answer
against it, and spreads its fields over typed columns::

    Ticket(service: Literal[...], severity: int, confidence: float)
        -> service (category), severity (Int64), confidence (Float64)

The column types come from the schema alone, never from the data, so an
all-null column keeps its type and every partition has one Arrow schema:

=================================  =============================================
JSON schema                        column dtype
=================================  =============================================
``string``                         ``string[pyarrow]``
``string`` with ``enum``           ``category`` with exactly those categories
``integer``                        ``Int64``
``number``                         ``Float64``
``boolean``                        ``boolean``
``array`` / ``object``             ``pd.ArrowDtype`` list / struct of the above
anything else (no ``type``)        ``string[pyarrow]`` holding the JSON text
=================================  =============================================

Pydantic is not a dependency: a model is recognised by its
``model_json_schema`` / ``model_validate_json`` methods, and then validates
the answer itself (its own types, constraints and validators). A plain JSON
schema is checked by :func:`check`, a small validator of the keywords that
decide the columns (``type``, ``enum``, ``const``, ``required``,
``properties``, ``additionalProperties: false``, ``items``, ``anyOf``,
``$ref``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .._errors import ConfigError

__all__ = ["InvalidAnswer", "StructuredOutput", "check", "structured_output"]

STRING = pd.StringDtype("pyarrow")

_SCALAR_ARROW = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}
_SCALAR_PANDAS: dict[str, Any] = {"string": STRING, "integer": "Int64", "number": "Float64", "boolean": "boolean"}


class InvalidAnswer(ValueError):
    """An answer that is not JSON or does not fit the schema."""


@dataclass(frozen=True, eq=False)
class StructuredOutput:
    """What ``output=`` turned into; travels inside the task graph.

    Parameters
    ----------
    name : str
        Schema name sent to the provider.
    schema : dict
        The JSON schema, in the strict form sent to the provider.
    columns : tuple of (str, dtype)
        One typed column per top-level property, in schema order.
    model : type, optional
        The Pydantic model that validates answers; ``None`` for a plain schema.
    """

    name: str
    schema: dict[str, Any]
    columns: tuple[tuple[str, Any], ...]
    model: Any = None

    @property
    def dtypes(self) -> dict[str, Any]:
        return dict(self.columns)

    @property
    def response_format(self) -> dict[str, Any]:
        """The request's ``response_format``."""
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": self.schema, "strict": True}}

    def parse(self, text: str) -> dict[str, Any]:
        """The answer's fields, validated.

        Raises
        ------
        InvalidAnswer
            Not JSON, or not an object that fits the schema.
        """
        if self.model is not None:
            try:
                # strict: "yes" is not a boolean, "3" not an integer: the
                # answer must fit the schema that was sent, not a lenient reading.
                value = self.model.model_validate_json(text, strict=True)
            except ValueError as exc:  # pydantic.ValidationError is a ValueError
                raise InvalidAnswer(_pydantic_problem(exc)) from None
            # mode="json": enums become their values, which is what the
            # category columns hold.
            return dict(value.model_dump(mode="json"))
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise InvalidAnswer(f"not JSON: {exc}") from None
        problem = check(value, self.schema)
        if problem is not None:
            raise InvalidAnswer(problem)
        return dict(value)

    def to_columns(self, answers: Sequence[str | None], index: pd.Index) -> pd.DataFrame:
        """The typed columns of ``answers`` (``None``: a failed row; all its
        fields are null). Answers are parsed again here, which is what lets a
        checkpoint store only the raw text."""
        values: dict[str, list[Any]] = {name: [] for name, _ in self.columns}
        for text in answers:
            fields: Mapping[str, Any] = {}
            if text is not None:
                try:
                    fields = self.parse(text)
                except InvalidAnswer:
                    fields = {}
            for name, dtype in self.columns:
                values[name].append(_cell(fields.get(name), dtype))
        return pd.DataFrame({name: pd.array(values[name], dtype=dtype) for name, dtype in self.columns}, index=index)

    def from_arrow(self, table: pa.Table, index: pd.Index) -> pd.DataFrame | None:
        """The typed columns as ``table`` holds them (a checkpoint's dataset
        files, written from :meth:`to_columns`), without parsing anything;
        ``None`` when a column is missing or does not convert."""
        try:
            columns = {name: _from_arrow(table.column(name), dtype) for name, dtype in self.columns}
        except (KeyError, TypeError, ValueError, pa.ArrowException):
            return None
        return pd.DataFrame(columns, index=index)


def _from_arrow(values: pa.ChunkedArray, dtype: Any) -> Any:
    dtype = pd.api.types.pandas_dtype(dtype)
    if isinstance(dtype, pd.CategoricalDtype):
        # Stored as a dictionary column, whose own categories are those the
        # file saw: each value's position among the dtype's categories.
        categories = pa.array(dtype.categories.astype(str).tolist(), type=pa.string())
        codes = pc.index_in(values.cast(pa.string()), value_set=categories).fill_null(-1)
        return pd.Categorical.from_codes(codes.to_numpy(), dtype=dtype)
    if isinstance(dtype, pd.ArrowDtype):
        values = values.cast(dtype.pyarrow_dtype)
    return dtype.__from_arrow__(values)


def structured_output(output: Any) -> StructuredOutput:
    """Turn ``output=`` (a Pydantic model class or a JSON schema dict) into
    a :class:`StructuredOutput`.

    Raises
    ------
    ConfigError
        ``output`` is neither, or its schema is not an object with properties.
    """
    if isinstance(output, type) and hasattr(output, "model_json_schema") and hasattr(output, "model_validate_json"):
        raw, model, name = output.model_json_schema(), output, output.__name__
    elif isinstance(output, Mapping):
        raw, model = copy.deepcopy(dict(output)), None
        name = str(raw.get("title") or "output")
    else:
        raise ConfigError(f"output= must be a Pydantic model class or a JSON schema dict, got {type(output).__name__}")
    schema = _strict(raw)
    top = _resolve(schema, schema)
    props = top.get("properties")
    if top.get("type") != "object" or not isinstance(props, Mapping) or not props:
        raise ConfigError("output= must describe a JSON object with at least one property")
    columns = tuple((str(key), _pandas_dtype(sub, schema)) for key, sub in props.items())
    return StructuredOutput(re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "output", schema, columns, model)


# -- schema -> dtypes ---------------------------------------------------------


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow ``$ref`` (local ``#/...`` only) and drop a nullable ``anyOf``."""
    for _ in range(32):  # bounded: a self-referencing $ref must not loop forever
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target[part]
            node = target
            continue
        options = node.get("anyOf")
        if isinstance(options, list):
            # Optional[X] is anyOf [X, null]: every column is nullable anyway.
            real = [o for o in options if o.get("type") != "null"]
            if len(real) == 1:
                node = real[0]
                continue
        return node
    raise ConfigError("output= schema has a $ref cycle; recursive schemas cannot be columns")


def _kind(node: Mapping[str, Any]) -> str | None:
    kind = node.get("type")
    if isinstance(kind, list):  # ["string", "null"]
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind is None and "enum" in node:
        values = node["enum"]
        if values and all(isinstance(v, str) for v in values):
            return "string"
    return kind if isinstance(kind, str) else None


def _pandas_dtype(node: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    node = _resolve(node, root)
    kind = _kind(node)
    enum = node.get("enum")
    if kind == "string" and isinstance(enum, list) and enum:
        return pd.CategoricalDtype([str(v) for v in enum if v is not None])
    if kind in _SCALAR_PANDAS:
        return _SCALAR_PANDAS[kind]
    if kind in ("array", "object"):
        return pd.ArrowDtype(_arrow_type(node, root, depth=0))
    return STRING  # no usable type: keep the JSON text


def _arrow_type(node: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> pa.DataType:
    if depth > 16:
        raise ConfigError("output= schema nests too deeply to be a column")
    node = _resolve(node, root)
    kind = _kind(node)
    if kind in _SCALAR_ARROW:
        return _SCALAR_ARROW[kind]
    if kind == "array":
        return pa.list_(_arrow_type(node.get("items") or {}, root, depth + 1))
    if kind == "object" and isinstance(node.get("properties"), Mapping) and node["properties"]:
        return pa.struct([(k, _arrow_type(v, root, depth + 1)) for k, v in node["properties"].items()])
    return pa.string()  # free-form: JSON text


def _cell(value: Any, dtype: Any) -> Any:
    if value is None:
        return None
    if dtype is STRING and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a free-form field
    if isinstance(dtype, pd.ArrowDtype):
        return _arrow_value(value, dtype.pyarrow_dtype)
    return value


def _arrow_value(value: Any, typ: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_list(typ):
        return [_arrow_value(v, typ.value_type) for v in value] if isinstance(value, list) else None
    if pa.types.is_struct(typ):
        if not isinstance(value, Mapping):
            return None
        return {typ.field(i).name: _arrow_value(value.get(typ.field(i).name), typ.field(i).type)
                for i in range(typ.num_fields)}  # fmt: skip
    if pa.types.is_string(typ) and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return value


# -- the strict form sent to the provider -------------------------------------


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema in the form OpenAI's strict structured outputs accept:
    every object closed (``additionalProperties: false``) with all its
    properties required, and no ``default`` keys. Optional fields stay
    nullable through their ``anyOf [..., null]``, so the meaning is kept."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) for k, v in node.items() if k != "default"}
        if out.get("type") == "object" and isinstance(out.get("properties"), dict):
            out["additionalProperties"] = False
            out["required"] = list(out["properties"])
        return out

    return walk(schema)


# -- a small validator for plain JSON schemas ---------------------------------

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def check(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, path: str = "$") -> str | None:
    """Why ``value`` does not fit ``schema``, or ``None`` when it does.

    Covers the keywords that shape columns; others (``pattern``,
    ``minimum``, ...) are the provider's and a Pydantic model's business.
    """
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return check(value, target, root, path)
    if "anyOf" in schema and all(check(value, option, root, path) is not None for option in schema["anyOf"]):
        return f"{path}: matches none of the allowed forms"
    if "const" in schema and value != schema["const"]:
        return f"{path}: expected {schema['const']!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: {value!r} is not one of {schema['enum']!r}"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if not any(_is(value, k) for k in kinds):
            return f"{path}: expected {' or '.join(map(str, kinds))}, got {type(value).__name__}"
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key in schema.get("required") or ():
            if key not in value:
                return f"{path}: missing field {key!r}"
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(props))
            if extra:
                return f"{path}: unexpected field(s) {', '.join(map(repr, extra))}"
        for key, sub in props.items():
            if key in value:
                problem = check(value[key], sub, root, f"{path}.{key}")
                if problem is not None:
                    return problem
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            problem = check(item, schema["items"], root, f"{path}[{i}]")
            if problem is not None:
                return problem
    return None


def _is(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False  # JSON true is not 1
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _JSON_TYPES.get(kind, (object,)))


def _pydantic_problem(exc: ValueError) -> str:
    """The first problem of a pydantic ValidationError, on one line."""
    errors = getattr(exc, "errors", None)
    try:
        found = errors() if callable(errors) else []
    except Exception:  # not a pydantic error after all
        found = []
    if not found:
        return _one_line(str(exc))
    first = found[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "$"
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return _one_line(f"{where}: {first.get('msg', 'invalid')}{more}")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
