"""Input formats by the name ``--format`` uses: raw v1 JSONL and the switch adapters.

An adapter has the signature of :func:`pipeline.core.parse.parse_batch`: it gets the batch
(records and the same records joined by newlines) and the fixed raw-v1 schema, and returns
:class:`~pipeline.core.parse.Parsed`: a frame of raw-v1 fields as text with the input ``row``
of each, plus the rows it could not read and why. Everything after parsing (validation,
normalisation, tokens, sealing) is shared, so a new switch format costs only its parsing, and
the retention vault always keeps the record exactly as it arrived.

:data:`FORMATS` is the one registry, written out here: every adapter module is imported
eagerly, so a broken adapter fails at import instead of passing for an unknown format.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from pipeline.lazy import polars as pl

from pipeline.core.parse import Parsed, parse_batch
from pipeline.formats import acc, asterisk, csv_mapped, freeswitch
from pipeline.formats.common import FORMAT_REASON_DETAIL
from pipeline.formats.csv_mapped import MappingError, MappingSpec, load_mapping

#: Adapter options a runner may pass: ``max_bytes``, ``max_depth``, ``mapping`` (csv, asterisk-csv, acc).
Adapter = Callable[..., Parsed]
FORMATS: dict[str, Adapter] = {
    "jsonl": parse_batch,
    "asterisk-csv": asterisk.parse_asterisk_csv,
    "freeswitch-json": freeswitch.parse_freeswitch_json,
    "acc": acc.parse_acc,
    "csv": csv_mapped.parse_csv,
}
#: The switch formats, with whether they need ``--mapping``.
FORMAT_NAMES = {"asterisk-csv": False, "freeswitch-json": False, "acc": False, "csv": True}


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


def check_format_options(fmt: str, options: tuple[tuple[str, object], ...]) -> None:
    """Fail fast at start-up (not per batch) when a format's options are missing or invalid."""
    opts = dict(options)
    unknown = set(opts) - {"mapping"}
    if fmt in FORMAT_NAMES and unknown:
        raise MappingError(f"format {fmt}: unknown option(s) {', '.join(sorted(unknown))}")
    mapping = opts.get("mapping")
    if fmt == "csv" and mapping is None:
        raise MappingError("--format csv needs --mapping FILE (which column is cli, dialled, start, duration)")
    if mapping is not None:
        default = {"asterisk-csv": asterisk.DEFAULT, "acc": acc.DEFAULT}.get(fmt)
        if fmt in ("csv", "asterisk-csv", "acc"):
            csv_mapped.resolve(default, mapping)
        elif fmt != "freeswitch-json":
            raise MappingError(f"format {fmt} takes no --mapping")


__all__ = ["FORMATS", "FORMAT_NAMES", "FORMAT_REASON_DETAIL", "Adapter", "MappingError", "MappingSpec",
           "check_format_options", "get_format", "load_mapping", "parse_records"]
