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

import argparse
import csv
import io
import json
import os
import sys
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


# --------------------------------------------------------------------------- command line

def _cmd_export(args: argparse.Namespace) -> int:
    from pipeline.core.tokenise import months_between
    from pipeline.kafka_config import ENV_BOOTSTRAP, parse_x_options
    from pipeline.keys import KeyringError, load_worker_keyring
    from pipeline.privacy import analytics_source
    from pipeline.privacy.register import CaseRegister
    from pipeline.privacy.requests import (ACCESS_TYPES, InvalidRequest, SubjectTokeniser, canonical_subject,
                                           check_request_id)
    from pipeline.vault.cli import _iso, _open_output, parse_window

    if args.format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}")
    try:
        request_id = check_request_id(args.request_id)
        subject = canonical_subject("msisdn", args.subject, args.region)
    except InvalidRequest as exc:
        raise UsageError(str(exc)) from None
    start_us, end_us = parse_window(args.start, args.end)
    window = {"from": _iso(start_us), "to": _iso(end_us)}
    bootstrap = args.bootstrap_servers or os.environ.get(ENV_BOOTSTRAP)
    if bool(bootstrap) == bool(args.analytics):
        raise UsageError(f"give the analytics source: --bootstrap-servers (or {ENV_BOOTSTRAP}) to read "
                         f"{args.topic}, or --analytics FILE..., not both")
    if (args.vault is None) == (not args.without_vault):
        raise UsageError("give --vault FILE (the custodian's `cdrpipe vault subject-access` extract), or "
                         "--without-vault to export analytics only (the export then says so)")
    register = CaseRegister(args.register) if args.register else None
    request_type = None
    if register is not None:
        case = register.cases().get(request_id)
        if case is None:
            raise UsageError(f"request {request_id} is not in the register {register.path}")
        if case.type not in ACCESS_TYPES:
            raise UsageError(f"request {request_id} is a {case.type} request, not access or portability")
        request_type = case.type
    extract = load_extract(args.vault, request_id, subject, window) if args.vault else None
    try:
        keyring = load_worker_keyring(args.keyring)
    except KeyringError as exc:
        raise FatalError(str(exc)) from None
    months = months_between(datetime.fromtimestamp(start_us / 1e6, timezone.utc),
                            datetime.fromtimestamp(end_us / 1e6, timezone.utc))
    tokens = set(SubjectTokeniser(keyring, args.region, args.token_bits).tokens("msisdn", subject, months))
    if args.analytics:
        records = analytics_source.from_files(args.analytics, tokens, start_us, end_us)
        source = "files"
    else:
        topic = args.topic_prefix + args.topic
        records = analytics_source.from_kafka({"bootstrap.servers": bootstrap, **parse_x_options(args.X)}, topic, tokens,
                                              start_us, end_us, args.timeout)
        source = f"kafka:{topic}"
    doc = build_export(request_id=request_id, request_type=request_type, subject=subject, window=window,
                       analytics=records, subject_tokens=tokens, analytics_source=source, extract=extract)
    try:
        out = _open_output(args.output)
    except OSError as exc:
        raise FatalError(f"--output {args.output}: {exc.strerror}") from None
    try:
        write_export(doc, args.format, out)
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    counts = {"analytics": doc["sources"]["analytics"]["records"], "retained": doc["sources"]["retained"]["records"]}
    if register is not None:
        register.record_answered(request_id, "export", counts)
    # Counts and the request id only: the subject is in the export, never on the terminal or in a log.
    print(json.dumps({"request_id": request_id, "format": args.format, "output": args.output, **counts}),
          file=sys.stderr if args.output == "-" else sys.stdout)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``cdrpipe privacy export``."""
    from pipeline.core.tokenise import DEFAULT_TOKEN_BITS
    from pipeline.kafka_config import ENV_BOOTSTRAP
    from pipeline.privacy.register import ENV_REGISTER
    from pipeline.topics import ANALYTICS

    p = sub.add_parser(
        "export", help="a subscriber's own records for an access or portability request (JSON or CSV)",
        description="Gather what cdrpipe holds about one subscriber in [--from, --to): their analytics records "
                    "(cdr.analytics, read_committed, or --analytics files; their tokens shown as their number, "
                    "the other party as a token) and their retained calls (--vault: the extract of `cdrpipe "
                    "vault subject-access`, made by the vault's custodian). Withheld callers stay withheld. "
                    "Nothing about law-enforcement access is ever included. The file is created mode 0600.")
    p.add_argument("--request-id", required=True, help="the access or portability request this answers")
    p.add_argument("--subject", required=True, metavar="NUMBER", help="the subscriber's number, any format")
    p.add_argument("--keyring", default=None,
                   help="worker keyring, to compute the subject's tokens (env CDRPIPE_KEYRING or "
                        "CDRPIPE_WORKER_KEYRING_JSON)")
    p.add_argument("--from", dest="start", required=True, help="window start, ISO-8601 (inclusive)")
    p.add_argument("--to", dest="end", required=True, help="window end, ISO-8601 (exclusive; a date includes that day)")
    p.add_argument("--output", required=True, help="file to write (mode 0600), or - for stdout")
    p.add_argument("--format", default="json", help="json (default) or csv")
    p.add_argument("--analytics", nargs="+", metavar="FILE", default=None,
                   help="analytics JSONL files instead of Kafka (analytics.jsonl of `cdrpipe process`)")
    p.add_argument("--vault", default=None, metavar="FILE", help="the extract of `cdrpipe vault subject-access`")
    p.add_argument("--without-vault", action="store_true",
                   help="export analytics only (the vault extract is not available); the export says so")
    p.add_argument("--register", default=os.environ.get(ENV_REGISTER),
                   help=f"case register: check the request and record it answered (env {ENV_REGISTER})")
    p.add_argument("--region", default=os.environ.get("CDRPIPE_REGION", "GB"),
                   help="region for national-format numbers, as the pipeline's (env CDRPIPE_REGION; default GB)")
    p.add_argument("--token-bits", type=int, default=DEFAULT_TOKEN_BITS,
                   help=f"token length in bits, as the pipeline's (default {DEFAULT_TOKEN_BITS})")
    p.add_argument("--bootstrap-servers", default=None, help=f"Kafka bootstrap servers (env {ENV_BOOTSTRAP})")
    p.add_argument("--topic", default=ANALYTICS, help=f"analytics topic (default {ANALYTICS})")
    p.add_argument("--topic-prefix", default="", help="prepend this to the topic name")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to read the topic to its end")
    p.add_argument("-X", action="append", metavar="KEY=VALUE", help="librdkafka client setting, repeatable")
    p.set_defaults(func=_cmd_export)


__all__ = ["EXPORT_TYPE", "FORMATS", "PROCESSING", "RECORD_FIELDS", "add_parser", "analytics_rows",
           "build_export", "load_extract", "write_export"]
