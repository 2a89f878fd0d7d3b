"""Polars, imported at its first use instead of at start-up.

Why: ``cdrpipe process`` and the Kafka worker route JSONL entirely in the native core. Polars
serves the other input formats, the few values the core leaves to Python, the vault and the
offline tools, and importing it costs 0.15-0.2 s: a sixth of a 1M-record run. The modules on
the routing path name it through :data:`polars` (``from pipeline.lazy import polars as pl``),
which imports it when an attribute is first read. Thread-safe: the import system locks each
module while it loads, and every thread then gets the same module from ``sys.modules``.

``polars_hash`` is imported with it, because it registers the ``.chash`` expression namespace
that the format adapters use.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """A stand-in for a module that imports it (and ``then``, for their side effects) on first attribute read."""

    def __init__(self, name: str, then: tuple[str, ...] = ()) -> None:
        self._name = name
        self._then = then
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = importlib.import_module(self._name)
            for extra in self._then:
                importlib.import_module(extra)
            self._module = module
        return getattr(module, attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r} ({state})>"


polars: Any = LazyModule("polars", then=("polars_hash",))
