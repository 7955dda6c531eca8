"""Prompt templates over dataframe columns.

A template is a ``str.format`` string whose fields are column names:
``"Classify: {title}\\n{body}"``. Everything about it that can be wrong is
checked before any data is read, so a typo is a :class:`TemplateError` at
``enrich()`` time, not a million failed calls:

- a field that names no column, or a column the frame has twice;
- positional fields, attribute or index access (``{a.b}``, ``{a[0]}``);
- conversions other than ``!s``, ``!r``, ``!a``; nested fields in a format
  spec (``{a:{b}}``);
- a format spec that does not apply to the column's type (``{text:.1f}``).

What only the data can break is the row's error, never the partition's: a
missing value renders as an empty string (its format spec is not applied),
and a value that cannot be formatted or encoded (a lone surrogate) makes
:meth:`Prompt.render` return a :class:`RenderError` for that row.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pandas as pd

from .._errors import TemplateError

__all__ = ["Prompt", "RenderError", "messages_fingerprint"]

Messages = list[dict[str, str]]

_CONVERSIONS = {None: None, "s": str, "r": repr, "a": ascii}


@dataclass(frozen=True)
class _Field:
    literal: str
    name: str | None
    spec: str
    conversion: str | None


def _parse(template: str, what: str) -> tuple[_Field, ...]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"{what} is not a valid template ({exc}): {template!r}") from None
    fields = []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            if name == "" or name.isdigit():
                raise TemplateError(
                    f"{what} has a positional field {{{name}}}; name a column instead, "
                    f"e.g. {{title}}. Write {{{{ and }}}} for literal braces."
                )
            # "{a.b}" and "{a[0]}" would be attribute/index access on the value; a
            # column name containing '.' or '[' cannot be written as a field.
            if name.split(".", 1)[0].split("[", 1)[0] != name:
                raise TemplateError(
                    f"{what} field {{{name}}} uses attribute or index access; only plain column names are supported"
                )
            if conversion not in _CONVERSIONS:
                raise TemplateError(f"{what} field {{{name}!{conversion}}}: the conversion must be !s, !r or !a")
            if spec and ("{" in spec or "}" in spec):
                raise TemplateError(f"{what} field {{{name}:{spec}}} nests a field in its format spec; not supported")
        fields.append(_Field(literal, name, spec or "", conversion))
    return tuple(fields)


class RenderError(str):
    """Why one row's prompt could not be rendered (a ``str``: the row's error)."""


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # list-like cells: pd.isna is elementwise
        return False


def _format(fields: Sequence[_Field], row: dict[str, Any]) -> str:
    out = []
    for f in fields:
        out.append(f.literal)
        if f.name is None:
            continue
        value = row[f.name]
        if _missing(value):
            # A missing value renders as an empty string, not as "nan" or
            # "<NA>", which a model would read as content.
            continue
        convert = _CONVERSIONS[f.conversion]
        out.append(format(convert(value) if convert else value, f.spec))
    return "".join(out)


@dataclass(frozen=True)
class Prompt:
    """A user-message template and an optional system message.

    Parameters
    ----------
    template : str
        ``str.format`` template; each ``{field}`` is a column name.
    system : str, optional
        System message; may name columns too.
    """

    template: str
    system: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or not self.template.strip():
            raise TemplateError("prompt must be a non-empty string template")
        if self.system is not None and not isinstance(self.system, str):
            raise TemplateError("system must be a string template")
        _ = self.columns  # parse now: a malformed template fails at construction

    @cached_property
    def _user_fields(self) -> tuple[_Field, ...]:
        return _parse(self.template, "prompt")

    @cached_property
    def _system_fields(self) -> tuple[_Field, ...] | None:
        return None if self.system is None else _parse(self.system, "system message")

    @cached_property
    def columns(self) -> tuple[str, ...]:
        """The columns the prompt reads, in order of first appearance."""
        cols: list[str] = []
        for f in (*self._user_fields, *(self._system_fields or ())):
            if f.name is not None and f.name not in cols:
                cols.append(f.name)
        return tuple(cols)

    def check_columns(self, available: Iterable[Any], dtypes: pd.Series | None = None) -> None:
        """Raise :class:`TemplateError` naming every missing or ambiguous
        column, or a format spec that does not apply to a column's type.

        Parameters
        ----------
        available : iterable
            The frame's column labels (duplicates included).
        dtypes : pandas.Series, optional
            The frame's dtypes by column, to check format specs against.
        """
        labels = [str(c) for c in available]
        have = set(labels)
        missing = [c for c in self.columns if c not in have]
        if missing:
            in_prompt = {f.name for f in self._user_fields}
            where = "prompt" if any(c in in_prompt for c in missing) else "system message"
            raise TemplateError(
                f"{where} names column(s) {', '.join(map(repr, missing))} that the frame "
                f"does not have; available: {', '.join(map(repr, sorted(have))) or 'none'}"
            )
        twice = [c for c in self.columns if labels.count(c) > 1]
        if twice:
            raise TemplateError(
                f"prompt reads column(s) {', '.join(map(repr, twice))}, which the frame has more than once; "
                f"rename them first"
            )
        if dtypes is None:
            return
        by_name = {str(k): v for k, v in dtypes.items()}
        for f in (*self._user_fields, *(self._system_fields or ())):
            if f.name is None or not f.spec:
                continue
            dtype = by_name.get(f.name)
            sample = _sample(dtype)
            if sample is None:
                continue  # an object column may hold anything: rows that do not fit fail alone
            convert = _CONVERSIONS[f.conversion]
            try:
                format(convert(sample) if convert else sample, f.spec)
            except (ValueError, TypeError) as exc:
                raise TemplateError(
                    f"prompt field {{{f.name}:{f.spec}}}: the format spec does not apply to column "
                    f"{f.name!r} of type {dtype} ({exc})"
                ) from None

    def render(self, frame: pd.DataFrame) -> list[Messages | RenderError]:
        """The chat messages of every row of ``frame``, in row order; a row
        that cannot be rendered gets a :class:`RenderError` instead."""
        cols = list(self.columns)
        # One pass per column, not per cell: row dicts built from column lists.
        values = {c: frame[c].tolist() for c in cols}
        user, system = self._user_fields, self._system_fields
        out: list[Messages | RenderError] = []
        for i in range(len(frame)):
            row = {c: values[c][i] for c in cols}
            try:
                msgs: Messages = []
                if system is not None:
                    msgs.append({"role": "system", "content": _format(system, row)})
                msgs.append({"role": "user", "content": _format(user, row)})
                for m in msgs:
                    m["content"].encode("utf-8")
            except UnicodeEncodeError as exc:
                out.append(RenderError(f"cannot render the prompt: a value cannot be encoded as UTF-8 ({exc.reason} "
                                       f"at position {exc.start})"))  # fmt: skip
                continue
            except (ValueError, TypeError) as exc:
                out.append(RenderError(f"cannot render the prompt: {type(exc).__name__}: {exc}"))
                continue
            out.append(msgs)
        return out


def _sample(dtype: Any) -> Any:
    """A value of the kind a column of ``dtype`` holds, to try a format spec
    on; ``None`` when the dtype says nothing (object columns)."""
    if dtype is None or (getattr(dtype, "kind", "O") == "O" and not isinstance(dtype, pd.StringDtype)):
        return None
    if pd.api.types.is_bool_dtype(dtype):
        return True
    if pd.api.types.is_integer_dtype(dtype):
        return 1
    if pd.api.types.is_float_dtype(dtype):
        return 1.5
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return pd.Timestamp("2024-01-02")
    if pd.api.types.is_string_dtype(dtype):
        return ""
    return None


def messages_fingerprint(messages: Sequence[Messages]) -> str:
    """A stable hex digest of the messages of a sequence of rows."""
    h = hashlib.sha256()
    for msgs in messages:
        h.update(json.dumps(msgs, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\x1e")
    return h.hexdigest()
