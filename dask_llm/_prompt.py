"""Prompt templates over dataframe columns.

A template is a ``str.format`` string whose fields are column names:
``"Classify: {title}\\n{body}"``. The columns it names are known before any
data is read, so a typo is a :class:`TemplateError` at ``enrich()`` time, not
a million failed calls.
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

from ._errors import TemplateError

__all__ = ["Prompt", "messages_fingerprint"]

Messages = list[dict[str, str]]


def _fields(template: str, what: str) -> tuple[str, ...]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"{what} is not a valid template ({exc}): {template!r}") from None
    names: list[str] = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise TemplateError(
                f"{what} has a positional field {{{name}}}; name a column instead, "
                f"e.g. {{title}}. Write {{{{ and }}}} for literal braces."
            )
        # "{a.b}" and "{a[0]}" would be attribute/index access on the value; a
        # column name containing '.' or '[' cannot be written as a field.
        base = name.split(".", 1)[0].split("[", 1)[0]
        if base != name:
            raise TemplateError(
                f"{what} field {{{name}}} uses attribute or index access; "
                f"only plain column names are supported"
            )
        if base not in names:
            names.append(base)
    return tuple(names)


def _text(value: Any) -> Any:
    # A missing value renders as an empty string, not as "nan" or "<NA>",
    # which a model would read as content.
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):  # list-like cells: pd.isna is elementwise
        pass
    return value


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
        self.columns  # parse now: a malformed template fails at construction

    @cached_property
    def columns(self) -> tuple[str, ...]:
        """The columns the prompt reads, in order of first appearance."""
        cols = list(_fields(self.template, "prompt"))
        if self.system is not None:
            cols += [c for c in _fields(self.system, "system message") if c not in cols]
        return tuple(cols)

    def check_columns(self, available: Iterable[Any]) -> None:
        """Raise :class:`TemplateError` naming every missing column."""
        have = {str(c) for c in available}
        missing = [c for c in self.columns if c not in have]
        if missing:
            raise TemplateError(
                f"prompt names column(s) {', '.join(map(repr, missing))} that the frame "
                f"does not have; available: {', '.join(map(repr, sorted(have))) or 'none'}"
            )

    def render(self, frame: pd.DataFrame) -> list[Messages]:
        """The chat messages of every row of ``frame``, in row order."""
        cols = list(self.columns)
        # One pass per column, not per cell: row dicts built from column lists.
        values = {c: [_text(v) for v in frame[c].tolist()] for c in cols}
        out: list[Messages] = []
        for i in range(len(frame)):
            row = {c: values[c][i] for c in cols}
            msgs: Messages = []
            if self.system is not None:
                msgs.append({"role": "system", "content": self.system.format_map(row)})
            msgs.append({"role": "user", "content": self.template.format_map(row)})
            out.append(msgs)
        return out


def messages_fingerprint(messages: Sequence[Messages]) -> str:
    """A stable hex digest of the messages of a sequence of rows."""
    h = hashlib.sha256()
    for msgs in messages:
        h.update(json.dumps(msgs, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\x1e")
    return h.hexdigest()
