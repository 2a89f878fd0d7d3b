"""The purge (crypto-shredding): which days have expired, and the order that makes them unreadable everywhere.

The order is the rule: first destroy the days' keys (once they are gone every copy of those days,
backups included, is unreadable, and no late record can re-open a day), then drop the days'
records, then write the audit entry. A purge that cannot be audited (the log has lost entries
since the keystore's anchor) does not start.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from pipeline.errors import FatalError, UsageError
from pipeline.vault.audit import AuditError, AuditLog
from pipeline.vault.keystore import day_date, day_number
from pipeline.vault.retention import LEGAL_RETENTION, retention_cutoff
from pipeline.vault.retention import period as retention_period
from pipeline.vault.session import Vault


@dataclass(frozen=True)
class Purged:
    """What a purge did, for its summary line (counts and dates only)."""

    cutoff: _dt.date
    days: list[int]
    keys_destroyed: int
    records: int
    audit_seq: int


def purge_cutoff(today: _dt.date, *, before: str | None, retention: str | None, allow_early: bool) -> _dt.date:
    """The first day to keep: ``before`` (a date), else the retention period's cut-off.

    A cut-off later than the legal retention period's (IPA 2016 s.87(3): 12 months) would destroy
    records the law requires to be kept: a usage error unless ``allow_early``.
    """
    if before and retention:
        raise UsageError("give --before DATE or --retention PERIOD, not both")
    if before:
        try:
            cutoff = _dt.date.fromisoformat(before)
        except ValueError:
            raise UsageError(f"--before {before!r} is not a date (YYYY-MM-DD)") from None
    else:
        cutoff = retention_cutoff(today, retention_period(retention))
    legal = retention_cutoff(today, LEGAL_RETENTION)
    if cutoff > legal and not allow_early:
        raise UsageError(f"purging before {cutoff} would destroy records younger than the legal retention period "
                         f"(only days before {legal} have completed {LEGAL_RETENTION}). If the retention notice "
                         "really allows it, add --allow-early.")
    return cutoff


def expired_days(vault: Vault, cutoff: _dt.date) -> list[int]:
    """Days before ``cutoff`` that still have records or a day key."""
    limit = day_number(cutoff)
    return sorted({d for d in [*vault.store.partitions(), *vault.keystore.days()] if d < limit})


def purge(vault: Vault, audit: AuditLog, cutoff: _dt.date, operator: str) -> Purged:
    """Destroy the day keys before ``cutoff``, then drop those days, then audit it (see the module docstring)."""
    limit = day_number(cutoff)
    days = expired_days(vault, cutoff)
    gap = audit.gap()
    if gap is not None:
        raise FatalError(f"the audit log ends at entry #{gap[0]} but the keystore last saw #{gap[1]}: record the "
                         "loss with `cdrpipe vault audit acknowledge-gap` first, so this purge can be audited")
    # First: once the keys are gone, every copy is unreadable (and no late record re-opens a day).
    destroyed = vault.keystore.destroy(days, before=limit)
    records = vault.store.drop_days(days)
    try:
        entry = audit.append({"action": "purge", "operator": operator, "cutoff": cutoff.isoformat(),
                              "days": [str(day_date(d)) for d in days], "records_purged": records,
                              "keys_destroyed": len(destroyed)})
    except AuditError as exc:
        raise FatalError(f"purge done but not audited: {exc}") from None
    return Purged(cutoff, days, len(destroyed), records, entry["seq"])
