"""Suppression state per subject: a merge of requests that gives the same answer in any order.

Why a merge and not "the last request wins":

* The privacy app is at-least-once (see :mod:`pipeline.apps.runtime`): after a crash a
  request may be applied twice. Applying a request to a state that already holds it must
  change nothing.
* Requests reach the app through several partitions, so two requests about one subscriber can
  arrive out of order. Each request carries ``received`` (when the controller got it); the
  state keeps, per legal ground, the request that decides it, so a late-delivered old request
  cannot undo a newer one.

The grounds, and what ends them:

* ``objection`` (Art. 21) — stays until the subscriber withdraws it, which cdrpipe has no
  request type for: an objection is permanent here. The earliest objection is kept.
* ``erasure`` (Art. 17) — permanent; the earliest erasure request is kept.
* ``restriction`` (Art. 18) — on or off, decided by the newest of the restriction and
  restriction_lifted requests (by ``received``, ties broken by request id). Lifting a
  restriction never ends an objection or an erasure.

A subject is suppressed from analytics while any ground is in force. The state is a plain
JSON-able dict (it is the faust table's value and goes to the changelog), and holds tokens only.

Public API:
    ``TokenRequest``                      a request after tokenisation (no raw identifier)
    ``apply_request(state, request, now) -> dict``
    ``is_active(state) -> bool``, ``active_grounds(state) -> list[str]``
    ``suppression_records(state, now) -> list[(key, value)]``  what goes to privacy.suppressions
    ``erasure_notice(request, now) -> dict``                    what goes to privacy.erasures
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GROUNDS = ("objection", "restriction", "erasure")
ERASURE_TYPE = "cdrpipe.erasure-notice/1"


@dataclass(frozen=True)
class TokenRequest:
    """A validated request about one subject, as tokens (what crosses the internal topic)."""

    request_id: str
    type: str
    kind: str
    #: The subject's tokens under every key the app holds, current key first.
    tokens: tuple[str, ...]
    #: ISO-8601 UTC text (privacy-request ``received``); compared as text, which is exact for one format.
    received: str
    #: Kafka timestamp (ms) of the request on privacy.requests, for the request-to-effect latency.
    submitted_ms: int = 0

    @property
    def token(self) -> str:
        return self.tokens[0]

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "type": self.type, "kind": self.kind,
                "tokens": list(self.tokens), "received": self.received, "submitted_ms": self.submitted_ms}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "TokenRequest":
        return cls(str(doc["request_id"]), str(doc["type"]), str(doc["kind"]), tuple(doc["tokens"]),
                   str(doc["received"]), int(doc.get("submitted_ms") or 0))


def _order(entry: dict[str, Any]) -> tuple[str, str]:
    """Sort key of a decision: received time (same ISO format everywhere), then request id."""
    return (_norm_time(str(entry["received"])), str(entry["request_id"]))


def _norm_time(text: str) -> str:
    """Times in one comparable form: millisecond precision, Z (inputs may have 0-6 fraction digits)."""
    head, _, frac = text.rstrip("Z").partition(".")
    return f"{head}.{(frac + '000')[:3]}Z"


def apply_request(state: dict[str, Any] | None, req: TokenRequest, now: str) -> dict[str, Any]:
    """The state after ``req``; idempotent, and order-independent in which grounds are in force."""
    new: dict[str, Any] = dict(state) if state else {"kind": req.kind, "tokens": [], "objection": None,
                                                     "erasure": None, "restriction": None}
    decision = {"request_id": req.request_id, "received": _norm_time(req.received)}
    if req.type in ("objection", "erasure"):
        held = new.get(req.type)
        if held is None or _order(decision) < _order(held):
            new[req.type] = decision  # the earliest request is the one the ground rests on
    elif req.type in ("restriction", "restriction_lifted"):
        held = new.get("restriction")
        if held is None or _order(decision) >= _order(held):
            new["restriction"] = {**decision, "active": req.type == "restriction"}
    else:
        raise ValueError(f"unknown request type {req.type!r}")
    new["tokens"] = list(dict.fromkeys([*req.tokens, *new.get("tokens", [])]))
    new["last"] = {"type": req.type, "request_id": req.request_id, "received": decision["received"]}
    new["updated_at"] = now
    return new


def active_grounds(state: dict[str, Any] | None) -> list[str]:
    """The grounds in force, in :data:`GROUNDS` order."""
    if not state:
        return []
    out = []
    for ground in GROUNDS:
        held = state.get(ground)
        if held and (ground != "restriction" or held.get("active")):
            out.append(ground)
    return out


def is_active(state: dict[str, Any] | None) -> bool:
    """True while the subject must be kept out of analytics."""
    return bool(active_grounds(state))


def suppression_records(state: dict[str, Any], now: str) -> list[tuple[str, dict[str, Any]]]:
    """One compacted-topic record per token (every key the app knows), value as the follower reads it.

    A lifted restriction is published as ``active: false`` rather than as a tombstone: the record
    says when and by which request the subject came back, compaction keeps it as the latest
    value, and a follower that starts later reads the same answer. Followers treat a tombstone
    (null value) as inactive too, so an operator may still delete a key.
    """
    grounds = active_grounds(state)
    last = state.get("last") or {}
    return [(token, {"token": token, "active": bool(grounds),
                     "grounds": grounds, "type": last.get("type"), "request_id": last.get("request_id"),
                     "subject_kind": state.get("kind"), "updated_at": now})
            for token in state.get("tokens", [])]


def erasure_notice(req: TokenRequest, now: str) -> dict[str, Any]:
    """The privacy.erasures record for an erasure request (schemas/erasure-notice.v1.json)."""
    return {"type": ERASURE_TYPE, "request_id": req.request_id, "subject_kind": req.kind, "token": req.token,
            "tokens": list(req.tokens), "requested_at": _norm_time(req.received), "issued_at": now}
