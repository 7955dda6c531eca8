"""``df.llm.enrich(...)`` on pandas and dask frames, registered without
importing either library.

``import dask_llm`` must stay light (the command line's ``--help`` and the
simulator import it), while ``df.llm`` must work on any frame created after
``import dask_llm``. So the accessor is registered at once for a library
already imported, and otherwise the moment the library finishes importing,
by a small import hook that wraps only those two modules' loaders.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["LLMAccessor", "install"]


class LLMAccessor:
    """The ``.llm`` namespace of a DataFrame.

    ``df.llm.enrich(prompt=..., column=..., model=...)`` is
    ``dask_llm.enrich(df, ...)``: lazy on a dask frame, eager on a pandas one.
    """

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def enrich(self, prompt: str, column: str, model: str, **kwargs: Any) -> Any:
        """``dask_llm.enrich(df, prompt, column, model, **kwargs)``; see :func:`dask_llm.enrich`."""
        from ._api import enrich

        return enrich(self._obj, prompt, column, model, **kwargs)


def _register_pandas(module: ModuleType) -> None:
    module.api.extensions.register_dataframe_accessor("llm")(LLMAccessor)


def _register_dask(module: ModuleType) -> None:
    from dask.dataframe.extensions import register_dataframe_accessor

    register_dataframe_accessor("llm")(LLMAccessor)


_REGISTER = {"pandas": _register_pandas, "dask.dataframe": _register_dask}
_done: set[str] = set()
_lock = threading.Lock()


def _register(name: str) -> None:
    with _lock:
        if name in _done:
            return
        _done.add(name)
    _REGISTER[name](sys.modules[name])


class _Loader(importlib.abc.Loader):
    """The module's own loader, then the registration."""

    def __init__(self, inner: importlib.abc.Loader, name: str) -> None:
        self._inner = inner
        self._name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _register(self._name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _REGISTER or fullname in _done:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, fullname)
                return spec
        return None


def install() -> None:
    """Register ``.llm`` on pandas and dask frames, now or when they are imported."""
    pending = False
    for name in _REGISTER:
        if name in sys.modules:
            _register(name)
        else:
            pending = True
    if pending and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
