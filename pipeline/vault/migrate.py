"""``vault migrate``: copy a SQLite vault into PostgreSQL, audit chain included, and prove the copy.

Why a copy and not a re-ingest: the records' ciphertexts, row ids, index keys, day keys, the
audit chain, its anchor and the warrants are evidence and state that re-ingesting would not
reproduce (the sealed segments are long gone from Kafka, the audit log exists only here). So
everything moves byte for byte: ciphertexts stay bound to (day, record id) and wrapped keys to
(day, key id), neither of which depends on where they are stored, and the keyring is the same.

Then it verifies, reading the target back: per day the same records (a SHA-256 over every
column of every row, in row-id order), the same index keys; the same warrants and readers; the
audit log byte for byte, and its chain against the copied anchor; the same day keys and
tombstones. Only then is the migration itself appended to the target's audit log (so a
half-copied vault is never chained on). The source is never written.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.vault.audit import verify_chain
from pipeline.vault.keystore import Keystore, day_date
from pipeline.vault.postgres import PostgresStore
from pipeline.vault.store import RecordStore, StoreError

#: Records copied per COPY (bounds memory whatever a day holds).
CHUNK = 20_000
#: Tables copied row for row, with the columns both backends share.
_PLAIN = (("readers", "id, format, mapping", "id"), ("warrants", "id, doc", "id"), ("audit", "seq, entry", "seq"),
          ("quarantine", "received_at, segment_id, reason, envelope", "id"))


class MigrateError(Exception):
    """The target is not empty, or the copy does not match its source (the message names what differs)."""


@dataclass
class MigrateReport:
    days: int = 0
    records: int = 0
    index_keys: int = 0
    audit_entries: int = 0
    warrants: int = 0
    day_keys: int = 0
    destroyed_keys: int = 0
    checks: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _rows(store: RecordStore, table: str, columns: str, order: str) -> list[tuple[Any, ...]]:
    # Table and column names are this module's constants (_PLAIN), never an input.
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
            for row in store.db.execute(f"SELECT {columns} FROM {table} ORDER BY {order}")]


def _day_digest(store: RecordStore, day: int) -> tuple[int, str]:
    """Rows of ``day`` and SHA-256 over all their columns, in row-id order."""
    digest, count, after = hashlib.sha256(), 0, 0
    while True:
        rows = store.day_rows(day, after, CHUNK)
        if not rows:
            return count, digest.hexdigest()
        for row in rows:
            digest.update(orjson.dumps([*row[:8], bytes(row[8]).hex()]))  # type: ignore[arg-type]
        count += len(rows)
        after = int(rows[-1][0])  # type: ignore[call-overload]


def migrate(source: RecordStore, source_keys: Keystore, target: PostgresStore, target_keys: Keystore,
            progress: Callable[[str], None] = lambda _m: None) -> MigrateReport:
    """Copy ``source`` (and its keystore) into the empty ``target``, then verify the copy."""
    if target.partitions() or target.audit_count() or _rows(target, "warrants", "id", "id"):
        raise MigrateError(f"{target.path} already holds a vault's records, warrants or audit entries: "
                           "migrate into an empty database")
    if target.region != source.region:
        raise MigrateError(f"{target.path} indexes national numbers as {target.region}, the source as "
                           f"{source.region}: create the target with --region {source.region}")
    report = MigrateReport()
    # Keys first: a record copied without its day key could never be read.
    state = source_keys.export_state()
    target_keys.import_state(state)
    report.day_keys, report.destroyed_keys = len(state["day_keys"]), len(state["destroyed"])

    with target.transaction() as db:
        for key in ("audit_witness",):
            value = source.meta(key)
            if value is not None:
                db.execute("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                           (key, value))
        db.execute("DELETE FROM readers")  # the target's own registrations: the source's ids are the ones in use
        for table, columns, order in _PLAIN:
            rows = _rows(source, table, columns, order)
            marks = ", ".join("?" * len(columns.split(",")))
            db.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
    target.continue_identities()

    partitions = source.partitions()
    for day, kid in partitions.items():
        target.prepare_days([(day, kid)])
        after, last = 0, 0
        with target.transaction():
            target.ensure_partition(day, kid)
            while True:
                rows = source.day_rows(day, after, CHUNK)
                if not rows:
                    break
                after = last = int(rows[-1][0])  # type: ignore[call-overload]
                target.insert_day(day, [(*r[:8], bytes(r[8])) for r in rows], [], [str(r[1]) for r in rows])  # type: ignore[arg-type]
                report.records += len(rows)
            index = source.day_index(day)
            target.db.execute("INSERT INTO blind_index (day, k) SELECT ?, unnest(?::bigint[])", (day, index))
            report.index_keys += len(index)
        target.continue_rids(day, last + 1)
        report.days += 1
        progress(f"{day_date(day)}: copied")

    _verify(source, source_keys, target, target_keys, partitions, report)
    return report


def _verify(source: RecordStore, source_keys: Keystore, target: RecordStore, target_keys: Keystore,
            partitions: dict[int, str], report: MigrateReport) -> None:
    """Read the target back and compare it with the source; raise :class:`MigrateError` at the first difference."""
    if target.partitions() != partitions:
        raise MigrateError("the target's days (or their key ids) differ from the source's")
    for day in partitions:
        if _day_digest(source, day) != _day_digest(target, day):
            raise MigrateError(f"the records of {day_date(day)} differ between the source and the target")
        if source.day_index(day) != target.day_index(day):
            raise MigrateError(f"the index of {day_date(day)} differs between the source and the target")
    report.checks.append(f"records and index of {len(partitions)} day(s) identical")
    for table, columns, order in _PLAIN:
        if _rows(source, table, columns, order) != _rows(target, table, columns, order):
            raise MigrateError(f"the {table} rows differ between the source and the target")
    report.warrants = len(_rows(target, "warrants", "id", "id"))
    entries = _rows(target, "audit", "seq, entry", "seq")
    report.audit_entries = len(entries)
    report.checks.append("readers, warrants, quarantine and audit entries identical")
    if source_keys.export_state() != target_keys.export_state():
        raise MigrateError("the day keys, tombstones or audit anchor differ between the source and target keystores")
    verdict = verify_chain(entries, None, target_keys.audit_anchor())
    if not verdict.ok:
        raise MigrateError(f"the copied audit log does not verify at entry #{verdict.first_bad}: {verdict.reason}")
    if entries and target_keys.audit_anchor() is None:
        raise MigrateError("the copied audit log has entries but the target keystore no anchor")
    report.checks.append(f"audit chain of {len(entries)} entries verifies against the copied anchor")


def describe(error: Exception) -> str:
    """One line for a failed migration (store errors already name the database without credentials)."""
    return str(error) if isinstance(error, (MigrateError, StoreError)) else type(error).__name__
