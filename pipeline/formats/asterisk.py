"""Asterisk ``cdr_csv`` (Master.csv): 18 columns, no header, one row per call leg.

Mapped: ``src`` -> cli (the number inside ``clid``, ``"Name" <253-433-5862>``, when ``src`` is
empty; the display name is never read), ``dst`` -> dialled, ``start`` -> start, ``billsec``
(talk time, what is billed) -> duration, ``disposition`` -> status, ``uniqueid`` -> record_id.

One call writes several rows with one ``uniqueid`` (a NO ANSWER leg, then the ANSWERED one),
so the record id is ``<uniqueid>-<first 8 hex of SHA-256 of the raw row>``: the same row always
gets the same id (replays and backfills deduplicate), legs of one call differ because their
rows differ (disposition, answer time, billsec, channel), and it does not depend on offsets
or on where the row sits in its batch, unlike a row counter. Byte-identical rows do occur (two
ring-group legs whose channels were blanked): the second and later copies *in one batch* get
``-2``, ``-3``… appended, so a replay of the same batches gives the same ids; identical legs split
across two batches would share an id (they are adjacent rows, so this is rare). A row without a
uniqueid gets ``asterisk-<32 hex of the row's SHA-256>``: 128 bits, because the vault deduplicates
on the id and such rows have nothing else to tell them apart. None of these ids (a uniqueid is the
call's start second) leaves the sealed payload as it is: outside it the pipeline carries the
keyed ``record_ref`` (see ``pipeline.core.tokenise``).

Asterisk writes local time without a zone unless ``usegmtime=yes``; naive times are read as
UTC unless a mapping sets ``timezone``. A ``--mapping`` file may override any part of this
layout (e.g. ``[csv] timezone = "America/Chicago"``, or ``[map] duration = "duration"``).
"""
from __future__ import annotations

from collections.abc import Sequence

from pipeline.lazy import polars as pl

from pipeline.core.parse import DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_BYTES, Parsed
from pipeline.formats.csv_mapped import MappingSpec, parse_delimited, resolve

COLUMNS = ("accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp", "lastdata", "start",
           "answer", "end", "duration", "billsec", "disposition", "amaflags", "uniqueid", "userfield")

DEFAULT = MappingSpec(
    delimiter=",", quote='"', header=False, comment=None, columns=COLUMNS, column_counts=(len(COLUMNS),),
    sources=(("src", "cli"), ("clid", "cli"), ("dst", "dialled"), ("start", "start"), ("billsec", "duration"),
             ("disposition", "status"), ("uniqueid", "record_id")),
    constants=(("call_type", "voice"),), duration_unit="s", record_id_suffix=True, name="asterisk")


def parse_asterisk_csv(records: Sequence[bytes], buf: bytes, schema: dict[str, pl.DataType], *,
                       max_bytes: int = DEFAULT_MAX_RECORD_BYTES, max_depth: int = DEFAULT_MAX_DEPTH,
                       mapping: MappingSpec | None = None) -> Parsed:
    """Master.csv rows as raw v1 columns; a mapping may override the default layout."""
    return parse_delimited(records, buf, schema, resolve(DEFAULT, mapping), max_bytes)
