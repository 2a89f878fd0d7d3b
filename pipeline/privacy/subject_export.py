"""`cdrpipe privacy export`: what cdrpipe holds about one subscriber, for access and portability.

The export answers GDPR Art. 15 (access) and Art. 20 (portability) for the data cdrpipe holds:

* **analytics** — the subject's records in ``cdr.analytics`` (or analytics files), found by the
  subject's tokens (:mod:`pipeline.privacy.analytics_source`). The subject's own tokens are shown
  as the subject's number; the other party stays a token.
* **retained** — the subject's calls in the lawful-retention vault, from the extract the vault's
  custodian made with ``cdrpipe vault subject-access`` (:mod:`pipeline.vault.subject_access`),
  which already shows the other party as on an itemised bill and withheld callers withheld.

Both become rows of one shape (``schemas/subject-export.v1.json#/$defs/record``), so the JSON and
the CSV export carry the same columns. The JSON adds the request, the window, per-source counts
and a fixed description of each processing (purpose, legal basis, retention).

Withheld callers (CLIR) in analytics: an analytics record has the caller's token even when the
caller withheld their number, and a token the subject also sees on their own outgoing calls would
identify that caller. So an incoming call's caller token is shown **only** when the vault
extract says the same record's caller presented their number; otherwise (withheld, or no extract
to tell) it is shown as ``withheld``. This fails closed.

The tipping-off exemption is enforced by construction, in three places:

1. the vault extract never contains anything about warrants or the audit log
   (:mod:`pipeline.vault.subject_access`: it reads records only);
2. this module copies only the fields of ``$defs/record`` from the extract (:func:`_retained_rows`),
   so even an extract with extra fields could not carry them into an export;
3. the export schema is closed (``additionalProperties: false`` everywhere) and has no field for
   a disclosure, a warrant, an officer or an audit entry.
"""
from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from pipeline.errors import FatalError, UsageError

EXPORT_TYPE = "cdrpipe.subject-export/1"
FORMATS = ("json", "csv")
#: The columns of every export row (JSON objects and CSV header), in order.
RECORD_FIELDS = ("source", "record_id", "start", "time_precision", "duration", "direction", "subject_number",
                 "other_party", "other_party_form", "other_party_class", "call_type", "status", "cell_id", "ip",
                 "imsi", "imei")
#: What each store is for, identical in every export (Art. 15(1)(a)-(d), (h)); nothing in it is per subject.
PROCESSING = (
    {"source": "analytics",
     "purpose": "network and service analytics on pseudonymised call records: numbers, IMSI and IMEI are "
                "replaced by keyed tokens, call times are rounded to the hour, cells to the location area and "
                "IP addresses to the network",
     "legal_basis": "legitimate interests (GDPR Art. 6(1)(f)); you may object (Art. 21)",
     "retention": "26 months",
     "recipients": "the operator's analytics teams; aggregate figures only about groups of at least k subscribers"},
    {"source": "retained",
     "purpose": "retention of communications data required by law (call records kept unaltered and encrypted)",
     "legal_basis": "legal obligation (GDPR Art. 6(1)(c)); not subject to erasure or objection (Art. 17(3)(b))",
     "retention": "12 months from the day of each call, then destroyed",
     "recipients": "none, except where the law requires the operator to provide the data"},
)


# --------------------------------------------------------------------------- rows

def _token_view(token: Any, cls: Any, subject_tokens: set[str], subject: str) -> tuple[str | None, str, Any]:
    """(shown, form, class) of a party token: the subject's own tokens become their number."""
    if token is None:
        return None, "withheld" if cls == "withheld" else "none", cls
    if token in subject_tokens:
        return subject, "number", cls
    return str(token), "token", cls


def analytics_rows(records: list[dict[str, Any]], subject_tokens: set[str], subject: str,
                   presented: set[str]) -> list[dict[str, Any]]:
    """Export rows of the subject's analytics records; ``presented``: record ids whose caller showed their number."""
    rows = []
    for doc in records:
        caller, callee = doc.get("cli") in subject_tokens, doc.get("dialled") in subject_tokens
        direction = "self" if caller and callee else "outgoing" if caller else "incoming"
        if direction == "incoming":
            if doc.get("record_id") in presented and doc.get("cli") is not None:
                shown, form, cls = _token_view(doc.get("cli"), doc.get("cli_class"), subject_tokens, subject)
            else:  # withheld, or not known to be presented: fail closed
                shown, form, cls = None, "withheld", None
        else:
            shown, form, cls = _token_view(doc.get("dialled"), doc.get("dialled_class"), subject_tokens, subject)
        own = direction != "incoming"
        rows.append({
            "source": "analytics", "record_id": doc.get("record_id"), "start": doc.get("start"),
            "time_precision": "hour", "duration": doc.get("duration"), "direction": direction,
            "subject_number": subject, "other_party": shown, "other_party_form": form, "other_party_class": cls,
            "call_type": doc.get("call_type"), "status": doc.get("status"),
            **{name: (doc.get(name) if own else None) for name in ("cell_id", "ip", "imsi", "imei")},
        })
    return rows


def _retained_rows(extract: dict[str, Any]) -> list[dict[str, Any]]:
    """The extract's rows, copied field by field (exemption guard 2 in the module docstring)."""
    rows = extract.get("records")
    if not isinstance(rows, list):
        raise FatalError("--vault: the extract has no records list (was it written by `cdrpipe vault subject-access`?)")
    return [{name: row.get(name) for name in RECORD_FIELDS} | {"source": "retained"} for row in rows
            if isinstance(row, dict)]


def load_extract(path: str, request_id: str, subject: str, window: dict[str, str]) -> dict[str, Any]:
    """The vault custodian's extract, checked to answer this request, subject and window."""
    from pipeline.vault.subject_access import EXTRACT_TYPE

    try:
        extract = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise FatalError(f"--vault {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError:
        raise FatalError(f"--vault {path}: not JSON (expected the file of `cdrpipe vault subject-access`)") from None
    if not isinstance(extract, dict) or extract.get("type") != EXTRACT_TYPE:
        raise FatalError(f"--vault {path}: not a vault subject-access extract")
    if extract.get("request_id") != request_id:
        raise UsageError(f"--vault {path}: the extract was made for another request id")
    if (extract.get("subject") or {}).get("number") != subject:
        raise UsageError(f"--vault {path}: the extract was made for another subject (numbers not shown)")
    if extract.get("window") != window:
        raise UsageError(f"--vault {path}: the extract covers {extract.get('window')}, not {window}: run "
                         "`cdrpipe vault subject-access` with the same --from and --to")
    return extract


def build_export(*, request_id: str, request_type: str | None, subject: str, window: dict[str, str],
                 analytics: list[dict[str, Any]] | None, subject_tokens: set[str], analytics_source: str | None,
                 extract: dict[str, Any] | None, now: datetime | None = None) -> dict[str, Any]:
    """The export document (``schemas/subject-export.v1.json``)."""
    retained = _retained_rows(extract) if extract is not None else []
    presented = {r["record_id"] for r in retained
                 if r["direction"] == "incoming" and r["other_party_form"] != "withheld" and r["record_id"]}
    rows = analytics_rows(analytics, subject_tokens, subject, presented) if analytics is not None else []
    now = now or datetime.now(timezone.utc)
    return {
        "type": EXPORT_TYPE, "request_id": request_id, "request_type": request_type,
        "generated_at": now.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "subject": {"kind": "msisdn", "number": subject}, "window": window,
        "sources": {
            "analytics": {"included": analytics is not None, "from": analytics_source,
                          "records": len(rows)},
            "retained": {"included": extract is not None, "records": len(retained),
                         "complete": bool(extract.get("complete", True)) if extract is not None else None},
        },
        "processing": [dict(p) for p in PROCESSING],
        "records": sorted(retained, key=lambda r: (r["start"] or "", r["record_id"] or ""))
        + sorted(rows, key=lambda r: (r["start"] or "", r["record_id"] or "")),
    }


def write_export(doc: dict[str, Any], fmt: str, out: BinaryIO) -> None:
    """JSON: the whole document. CSV: a header of :data:`RECORD_FIELDS`, one row per record (RFC 4180)."""
    if fmt == "json":
        out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        return
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(RECORD_FIELDS)
    for row in doc["records"]:
        writer.writerow(["" if row[name] is None else row[name] for name in RECORD_FIELDS])
    text.detach()

__all__ = ["EXPORT_TYPE", "FORMATS", "PROCESSING", "RECORD_FIELDS", "analytics_rows",
           "build_export", "load_extract", "write_export"]
