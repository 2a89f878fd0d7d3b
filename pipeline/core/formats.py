"""Input formats: each turns a batch of raw records into raw-v1 columns, registered by name.

An adapter has the signature of :func:`pipeline.core.parse.parse_batch`: it gets the batch
(records and the same records joined by newlines) and the fixed raw-v1 schema, and returns
:class:`~pipeline.core.parse.Parsed` — a frame of raw-v1 fields as text with the input
``row`` of each, plus the rows it could not read and why. Everything after parsing
(validation, normalisation, tokens, sealing) is shared, so a new switch format costs
only its parsing, and the retention vault always keeps the record exactly as it arrived.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import polars as pl

from pipeline.core.parse import Parsed, parse_batch

Adapter = Callable[..., Parsed]
#: Adapter options a runner may pass (``max_bytes``, ``max_depth``, ``mapping`` for csv…).
FORMATS: dict[str, Adapter] = {"jsonl": parse_batch}


def register_format(name: str) -> Callable[[Adapter], Adapter]:
    """Register an adapter under the name `--format` uses."""
    def add(fn: Adapter) -> Adapter:
        FORMATS[name] = fn
        return fn
    return add


def get_format(name: str) -> Adapter:
    """The adapter for ``name``; a clear error listing the known formats otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown input format {name!r}; known: {', '.join(sorted(FORMATS))}") from None


def parse_records(fmt: str, records: Sequence[bytes], buf: bytes, schema: dict[str, pl.DataType],
                  **options: object) -> Parsed:
    """Parse one batch with the named adapter."""
    return get_format(fmt)(records, buf, schema, **options)


try:
    import pipeline.formats  # noqa: E402,F401  (registers asterisk-csv, freeswitch-json, acc, csv)
except ImportError:  # partially initialised during a circular import; the next get_format caller has it
    pass
