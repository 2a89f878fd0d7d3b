"""``vault reindex``: read again, with the right input format, records the vault could not date or index.

A vault filled before it knew a stream's format (or before it could read non-JSON records at
all) holds those records unindexed, filed under the day their segment was sealed: a target
query cannot find them, and their retention clock starts at ingest instead of at the call. For
every record still filed by ``sealed_at``, reindex decrypts it, reads it with ``--format`` /
``--mapping`` (else the sniffer), and when that now yields its parties or its call start, files
it again exactly as ingest would have: under its call-start day, indexed, re-encrypted under
that day's key, with the reader remembered for the query's re-check. The raw bytes are not
changed (they are the evidence). A record whose call start is already past retention, or whose
day was purged, is removed (``expired``), as ingest would not have stored it.

Each day's moves are one transaction: the old rows, their index keys and record ids go, and the
new rows come, together. The run is one audit entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.vault.index import RID_BITS, BlindIndexer
from pipeline.vault.ingest import Ingester, IngestTotals
from pipeline.vault.keystore import KeyDestroyedError
from pipeline.vault.readers import UNREAD, normalised_parties, read_parties, read_parties_as


@dataclass
class ReindexTotals:
    """What a reindex did: ``candidates = reindexed + expired + unchanged``."""

    candidates: int = 0
    reindexed: int = 0
    expired: int = 0
    unchanged: int = 0
    unreadable_days: int = 0

    def summary(self) -> dict[str, int]:
        return dict(self.__dict__)


def reindex(ingester: Ingester, indexer: BlindIndexer) -> ReindexTotals:
    """File again every record of the store that is filed by ``sealed_at`` and can now be read better."""
    store, keystore = ingester.store, ingester.keystore
    readers = store.readers()
    ids = {r: i for i, r in readers.items()}
    totals = ReindexTotals()
    for day, kid in store.partitions().items():
        rows = store.sealed_time_rows(day)
        if not rows:
            continue
        try:
            cipher = keystore.cipher_for_read(day, kid)
        except KeyDestroyedError:
            totals.unreadable_days += 1
            continue
        raws = [cipher.open(str(r[1]), bytes(r[8])) for r in rows]  # type: ignore[arg-type]
        totals.candidates += len(rows)
        now = read_parties(raws, ingester.reader)
        move = [i for i, (row, reader, start) in enumerate(zip(rows, now.readers, now.start.to_list()))
                if reader is not None and (ids.get(reader, UNREAD) != row[3] or start is not None)]
        totals.unchanged += len(rows) - len(move)
        if not move:
            continue
        moved = [rows[i] for i in move]
        # The index keys the records were filed under (their old reader, their old day).
        before = read_parties_as([raws[i] for i in move], [readers.get(int(r[3])) for r in moved])  # type: ignore[arg-type]
        old_keys = [(indexer.one(kind, day, value) << RID_BITS) | int(moved[row][0])  # type: ignore[arg-type]
                    for row, kind, value in normalised_parties(before, ingester.phones).iter_rows()]
        cols: dict[str, list[Any]] = {
            "record_id": [str(r[1]) for r in moved], "raw": [raws[i] for i in move], "src": [r[5] for r in moved],
            "part": [r[6] for r in moved], "off": [r[7] for r in moved], "sealed": [int(r[2]) for r in moved]}  # type: ignore[call-overload]
        batch = IngestTotals(records=len(moved))
        days = ingester._rows(cols, batch, dedupe=False)
        with store.transaction():
            store.remove_records(day, [int(r[0]) for r in moved], old_keys, cols["record_id"])  # type: ignore[call-overload]
            for new in days:
                store.ensure_partition(new.day, new.kid)
                store.insert_day(new.day, new.records, new.index, new.ids)
        totals.reindexed += batch.stored
        totals.expired += batch.expired
    return totals
