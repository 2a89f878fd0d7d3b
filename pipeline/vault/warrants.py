"""Registered warrants: a query is answered only inside the scope of an active, unexpired warrant.

A warrant reference typed at query time proves nothing, so warrants are registered first
(``cdrpipe vault warrant add``) with what the authorisation covers: the issuing authority, the
one officer it authorises, its targets, the time window of communications it covers, and when
it expires. ``vault query --warrant ID`` is then refused, with the reason and no data, unless
the warrant is registered, not revoked, not expired, names the querying officer, lists the
target, and covers the whole window. Adding, listing and revoking are audit entries.

Targets are normalised with the pipeline's normalisers (``07700 900123`` in the warrant and
``+447700900123`` in a query are one target) and stored only as the audit log's keyed digest of
the canonical value (``BlindIndexer.audit_digest``): someone who copies the database learns how
many targets a warrant has, never who they are.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.core.normalise import normalise_one
from pipeline.vault.backend import Database, SqliteDatabase
from pipeline.vault.index import TARGET_KINDS, BlindIndexer

WARRANT_TYPE = "cdrpipe.warrant/1"


class WarrantError(Exception):
    """A warrant cannot be registered or does not cover a query; the message says why, never a target."""


@dataclass(frozen=True)
class Warrant:
    """One registered warrant (times in µs since the epoch; targets as ``(kind, keyed digest)``)."""

    id: str
    authority: str
    officer: str
    targets: tuple[tuple[str, str], ...]
    start_us: int
    end_us: int
    expires_us: int
    created: str
    revoked: str | None = None
    revoked_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": WARRANT_TYPE, "id": self.id, "authority": self.authority, "officer": self.officer,
                "targets": [{"kind": k, "digest": d} for k, d in self.targets], "start_us": self.start_us,
                "end_us": self.end_us, "expires_us": self.expires_us, "created": self.created,
                "revoked": self.revoked, "revoked_by": self.revoked_by}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Warrant":
        return cls(str(doc["id"]), str(doc["authority"]), str(doc["officer"]),
                   tuple((str(t["kind"]), str(t["digest"])) for t in doc["targets"]), int(doc["start_us"]),
                   int(doc["end_us"]), int(doc["expires_us"]), str(doc["created"]), doc.get("revoked"),
                   doc.get("revoked_by"))

    def state(self, now_us: int) -> str:
        return "revoked" if self.revoked else "expired" if now_us >= self.expires_us else "active"


def parse_targets(text: str, region: str, indexer: BlindIndexer) -> tuple[tuple[str, str], ...]:
    """``T1,T2,…`` (each ``[kind:]value``, kind msisdn by default) as sorted, distinct ``(kind, digest)``.

    A value that cannot be read is named by its position only: the message never echoes it.
    """
    out = set()
    items = [t.strip() for t in (text or "").split(",")]
    if not any(items):
        raise WarrantError("--targets is required: the identifiers the warrant names, comma-separated")
    for pos, item in enumerate(items, 1):
        if not item:
            raise WarrantError(f"--targets: item {pos} is empty")
        kind, _, value = item.partition(":")
        if kind.lower() in TARGET_KINDS and value:
            kind = kind.lower()
        else:
            kind, value = "msisdn", item
        try:
            canonical = normalise_one(kind, value, region=region)
        except ValueError as exc:  # unknown region
            raise WarrantError(str(exc)) from None
        if canonical is None:
            raise WarrantError(f"--targets: item {pos} cannot be read as {kind} (value not shown); write it as a "
                               "number in any format, or imsi:…/imei:…")
        out.add((kind, indexer.audit_digest(kind, canonical)))
    return tuple(sorted(out))


class WarrantRegister:
    """The ``warrants`` table of a vault database."""

    def __init__(self, conn: Database | sqlite3.Connection) -> None:
        self._conn = conn if isinstance(conn, Database) else SqliteDatabase(conn)

    def __repr__(self) -> str:
        return "WarrantRegister()"

    def get(self, warrant_id: str) -> Warrant | None:
        row = self._conn.execute("SELECT doc FROM warrants WHERE id = ?", (warrant_id,)).fetchone()
        return Warrant.from_json(orjson.loads(row[0])) if row else None

    def all(self) -> list[Warrant]:
        return [Warrant.from_json(orjson.loads(doc)) for (doc,) in
                self._conn.execute("SELECT doc FROM warrants ORDER BY id")]

    def add(self, warrant: Warrant) -> None:
        """Register (inside the caller's transaction); a warrant id is registered once, ever."""
        try:
            self._conn.execute("INSERT INTO warrants (id, doc) VALUES (?, ?)",
                               (warrant.id, orjson.dumps(warrant.to_json()).decode()))
        except self._conn.unique_violation:
            raise WarrantError(f"warrant {warrant.id} is already registered (a warrant id is used once; register "
                               "a renewal under its own reference)") from None

    def revoke(self, warrant: Warrant, when: str, by: str) -> Warrant:
        """Mark revoked (inside the caller's transaction); it stays listed, and is never active again."""
        done = Warrant(**{**warrant.__dict__, "revoked": when, "revoked_by": by})
        self._conn.execute("UPDATE warrants SET doc = ? WHERE id = ?",
                           (orjson.dumps(done.to_json()).decode(), warrant.id))
        return done


def check_scope(warrant: Warrant | None, warrant_id: str, officer: str, target: tuple[str, str],
                start_us: int, end_us: int, now_us: int, iso: Any) -> Warrant:
    """The warrant if it covers this query; else :class:`WarrantError` saying why (and nothing is read)."""
    if warrant is None:
        raise WarrantError(f"warrant {warrant_id} is not registered: register it with `cdrpipe vault warrant add` "
                           "(authority, officer, targets, window, expiry) before querying under it")
    if warrant.revoked:
        raise WarrantError(f"warrant {warrant_id} was revoked at {warrant.revoked}: it authorises nothing")
    if now_us >= warrant.expires_us:
        raise WarrantError(f"warrant {warrant_id} expired at {iso(warrant.expires_us)}: it authorises nothing")
    if officer != warrant.officer:
        raise WarrantError(f"warrant {warrant_id} does not authorise officer {officer}")
    if target not in warrant.targets:
        raise WarrantError(f"the target is not one of the {len(warrant.targets)} target(s) of warrant {warrant_id}")
    if start_us < warrant.start_us or end_us > warrant.end_us:
        raise WarrantError(f"the window {iso(start_us)} to {iso(end_us)} is not inside warrant {warrant_id}'s window "
                           f"{iso(warrant.start_us)} to {iso(warrant.end_us)}")
    return warrant
