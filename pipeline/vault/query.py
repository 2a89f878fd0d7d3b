"""Lawful-intercept search: the records where a target is a party, exactly, in time order.

A search normalises nothing itself: the caller passes the target's canonical form (from
``pipeline.core.normalise``), so ``07700 900123`` and ``+447700900123`` are one target.
Then, for each stored day in the window: compute that day's blind index of the target, seek
it in the day's index, decrypt the hits with the day's key, and re-check each decrypted
record with the pipeline's parser and normalisers. The re-check makes the answer exact by
construction: an index collision or a forged index row can only cost a decrypt, never put a
stranger's record into a warrant's answer.

What cannot be returned is reported, never silently skipped: hits in days whose key was
destroyed by a purge (``unreadable``), and ciphertexts that fail authentication
(``integrity_failures``: altered bytes, or a ciphertext moved to another record or day).

Every search is audited: :func:`audited_search` (and :func:`query_under_warrant`, which checks the
warrant's scope first and audits a refusal too) returns records only once their audit entry is
written. No entry, no records; there is no other public way to search the vault.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pipeline.core.normalise import PhoneNormaliser
from pipeline.errors import FatalError, UsageError
from pipeline.vault.audit import AuditError, AuditLog, disclosed
from pipeline.vault.index import BlindIndexer
from pipeline.vault.readers import normalised_parties, read_parties_as
from pipeline.vault.keystore import KeyDestroyedError, Keystore, KeystoreError, RecordIntegrityError, day_date, day_number
from pipeline.vault.store import DAY_US, RecordStore, StoreError
from pipeline.vault.warrants import WarrantError, WarrantRegister, check_scope
from pipeline.vault.window import iso


@dataclass(frozen=True)
class FoundRecord:
    """One decrypted record and where it came from (the raw bytes are never in the repr)."""

    record_ref: str
    ts_us: int
    parsed: bool  # read by some input format (see ``reader``)
    sealed_time: bool
    source_name: str
    partition: int | None
    offset: int | None
    raw: bytes = field(repr=False)
    #: The ``readers`` id the record was indexed with (1: raw v1 JSONL; 0: no format could read it).
    reader: int = 1


@dataclass
class SearchResult:
    """Records found (time order) and everything that matched but cannot be returned."""

    records: list[FoundRecord] = field(default_factory=list)
    #: Day -> hits whose day key was destroyed (a database copy restored from before a purge).
    unreadable: dict[int, int] = field(default_factory=dict)
    #: ``(record_id, day)`` of ciphertexts that failed authentication.
    integrity_failures: list[tuple[str, int]] = field(default_factory=list)
    #: Index hits that were not the target once decrypted (collision or forged index row).
    mismatches: int = 0

    @property
    def unreadable_count(self) -> int:
        return sum(self.unreadable.values())


def window_days(start_us: int, end_us: int, stored: dict[int, str]) -> list[int]:
    """Stored days that overlap ``[start_us, end_us)``."""
    if end_us <= start_us:
        return []
    first, last = start_us // DAY_US, (end_us - 1) // DAY_US
    return [day for day in stored if first <= day <= last]


class _Searcher:
    """Runs searches against one store and keystore with one index key (internal: see :func:`audited_search`)."""

    def __init__(self, store: RecordStore, keystore: Keystore, indexer: BlindIndexer) -> None:
        self.store = store
        self.keystore = keystore
        self.indexer = indexer
        self._phones = PhoneNormaliser(store.region)

    def __repr__(self) -> str:
        return f"_Searcher(store={self.store!r})"

    def search(self, kind: str, canonical: str, start_us: int, end_us: int, *, not_before_us: int = 0) -> SearchResult:
        """Records in ``[start_us, end_us)`` where ``canonical`` (of ``kind``) is a party.

        Nothing before ``not_before_us`` (the retention cut-off) is ever returned, whatever the
        window, even when the purge has not run yet.
        """
        start_us = max(start_us, not_before_us)
        result = SearchResult()
        stored = self.store.partitions()
        candidates: list[FoundRecord] = []
        for day in window_days(start_us, end_us, stored):
            rows = self.store.find(day, self.indexer.one(kind, day, canonical), start_us, end_us)
            candidates.extend(self._decrypt(day, stored[day], rows, result))
        keep = self._is_party(kind, canonical, candidates)
        result.mismatches = len(candidates) - sum(keep)
        result.records = sorted((r for r, ok in zip(candidates, keep) if ok), key=lambda r: (r.ts_us, r.record_ref))
        return result

    def search_unparsed(self, start_us: int, end_us: int, *, not_before_us: int = 0) -> SearchResult:
        """Records no input format could read (so not indexed), sealed within ``[start_us, end_us)``."""
        start_us = max(start_us, not_before_us)
        result = SearchResult()
        stored = self.store.partitions()
        for day in window_days(start_us, end_us, stored):
            rows = self.store.unparsed(day, start_us, end_us)
            result.records.extend(self._decrypt(day, stored[day], rows, result))
        result.records.sort(key=lambda r: (r.ts_us, r.record_ref))
        return result

    def _decrypt(self, day: int, kid: str, rows: list[tuple[object, ...]], result: SearchResult) -> list[FoundRecord]:
        """Open the day's hits; destroyed keys and failed authentication are counted, not raised."""
        if not rows:
            return []
        try:
            cipher = self.keystore.cipher_for_read(day, kid)
        except KeyDestroyedError:
            result.unreadable[day] = result.unreadable.get(day, 0) + len(rows)
            return []
        out = []
        for _rid, record_id, ts, parsed, sealed_time, src, part, off, ct in rows:
            try:
                raw = cipher.open(str(record_id), bytes(ct))  # type: ignore[arg-type]
            except RecordIntegrityError:
                result.integrity_failures.append((str(record_id), day))
                continue
            out.append(FoundRecord(str(record_id), int(ts), bool(parsed), bool(sealed_time), str(src),  # type: ignore[arg-type]
                                   part, off, raw, int(parsed)))  # type: ignore[arg-type]
        return out

    def _is_party(self, kind: str, canonical: str, records: list[FoundRecord]) -> list[bool]:
        """Per record: is ``canonical`` one of its normalised party identifiers (the exact re-check)."""
        if not records:
            return []
        readers = self.store.readers()
        parties = read_parties_as([r.raw for r in records], [readers.get(r.reader) for r in records])
        values = normalised_parties(parties, self._phones)
        rows = set(values.filter((pl.col("kind") == kind) & (pl.col("value") == canonical))["row"].to_list())
        return [i in rows for i in range(len(records))]


def describe_unreadable(result: SearchResult) -> str:
    """One line for operators: which days held hits that can no longer be decrypted, and why."""
    days = ", ".join(f"{day_date(d)} ({n})" for d, n in sorted(result.unreadable.items()))
    return (f"{result.unreadable_count} matching record(s) are in days whose keys were destroyed by a purge: {days}. "
            "They cannot be read (this database copy predates the purge); they are not returned.")


def audited_search(store: RecordStore, keystore: Keystore, indexer: BlindIndexer, audit: AuditLog, kind: str,
                   canonical: str, start_us: int, end_us: int, *, not_before_us: int,
                   entry: Callable[[SearchResult], dict[str, Any]],
                   before_entry: Callable[[], object] | None = None) -> tuple[SearchResult, dict[str, Any]]:
    """Search, then write the audit entry ``entry(result)``, and only then return the records with the entry.

    ``before_entry`` runs after the search and before the entry (a query makes its private output
    file there, so an output that cannot be written leaves no entry). Nothing before
    ``not_before_us`` (the retention cut-off) is returned.

    Raises:
        FatalError: the store or keystore cannot be read, or the entry cannot be written (nothing is returned).
    """
    try:
        result = _Searcher(store, keystore, indexer).search(kind, canonical, start_us, end_us,
                                                            not_before_us=not_before_us)
    except (KeystoreError, StoreError) as exc:
        raise FatalError(str(exc)) from None
    fields = entry(result)
    if before_entry is not None:
        before_entry()
    try:
        return result, audit.append(fields)  # before any output: no audit entry, no records
    except AuditError as exc:
        raise FatalError(str(exc)) from None


@dataclass(frozen=True)
class WarrantQuery:
    """What a lawful-intercept query asks: under which warrant, by whom, for which target and window."""

    warrant: str
    officer: str
    kind: str
    canonical: str  # the target's normalised form; never logged or audited in clear
    start_us: int
    end_us: int
    retention: str
    cutoff: _dt.date  # the retention cut-off: nothing before it is returned
    output_format: str


def query_under_warrant(store: RecordStore, keystore: Keystore, indexer: BlindIndexer, audit: AuditLog,
                        query: WarrantQuery, *, now_us: int,
                        before_entry: Callable[[], object] | None = None) -> tuple[SearchResult, dict[str, Any]]:
    """The records a warrant allows, audited: the scope is checked first (a refusal is audited, nothing read).

    Raises:
        UsageError: the warrant does not cover the query ("refused, nothing was read").
        FatalError: as :func:`audited_search`, or a refusal that could not be audited.
    """
    digest = indexer.audit_digest(query.kind, query.canonical)
    asked: dict[str, Any] = {
        "officer": query.officer, "warrant": query.warrant,
        "target": {"kind": query.kind, "digest": digest, "index_kid": indexer.kid},
        "window": {"from": iso(query.start_us), "to": iso(query.end_us)},
    }
    try:
        check_scope(WarrantRegister(store.db).get(query.warrant), query.warrant, query.officer, (query.kind, digest),
                    query.start_us, query.end_us, now_us, iso)
    except WarrantError as exc:
        try:  # a refused attempt is evidence too
            audit.append({"action": "query_refused", **asked, "reason": str(exc)})
        except AuditError as audit_exc:
            raise FatalError(f"{exc}; and the refusal could not be audited: {audit_exc}") from None
        raise UsageError(f"refused, nothing was read: {exc}") from None

    def entry(result: SearchResult) -> dict[str, Any]:
        return {"action": "query", **asked,
                "retention": {"period": query.retention, "cutoff": query.cutoff.isoformat()},
                "result_count": len(result.records), "unreadable_count": result.unreadable_count,
                "integrity_failures": len(result.integrity_failures), "format": query.output_format,
                "disclosed": disclosed([r.record_ref for r in result.records])}

    return audited_search(store, keystore, indexer, audit, query.kind, query.canonical, query.start_us, query.end_us,
                          not_before_us=day_number(query.cutoff) * DAY_US, entry=entry, before_entry=before_entry)
