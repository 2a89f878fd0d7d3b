"""Deliveries of search results: JSONL, CSV, and XML modelled on ETSI TS 102 657.

Every format carries each record's raw bytes unaltered (as UTF-8 text when they are valid
UTF-8, else base64, with the encoding named), its record id, time and source coordinates.

The XML follows the shape of TS 102 657's retained-data delivery (``RetainedDataMessage``:
``retainedDataHeader`` with ``requestID`` = country code, authorised organisation and request
number, the CSP id and a timestamp; ``retainedDataPayload`` / ``responsePayload`` with a
``responseStatus`` and numbered ``RetainedDataRecord`` entries whose ``telephonyServiceUsage``
lists the parties (role, E.164 number, IMSI as subscriber id, IMEI as device id) and the
communication time). It uses its own namespace because it models the ASN.1 structure rather
than claiming conformance to the standard's XML schema; the raw record and its SHA-256 sit
in a national extension so the delivery stays evidential.
"""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import hashlib
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson
import polars as pl

from pipeline.core.normalise import PhoneNormaliser, normalise_column
from pipeline.vault.query import FoundRecord
from pipeline.vault.readers import JSONL_ID, UNREAD, Reader, record_fields

FORMATS = ("jsonl", "csv", "etsi-xml")
ETSI_NAMESPACE = "urn:cdrpipe:li:etsi-ts-102-657-model:1"
CSV_COLUMNS = ("record_number", "record_ref", "time", "time_source", "source", "partition", "offset",
               "raw_encoding", "raw")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: object) -> str:
    """Text safe for XML 1.0: characters XML cannot carry become U+FFFD (the raw record keeps the original)."""
    return _NOT_XML.sub("\ufffd", str(value))


def _time(ts_us: int) -> _dt.datetime:
    return _EPOCH + _dt.timedelta(microseconds=ts_us)


def iso_time(ts_us: int) -> str:
    """ISO-8601 UTC with ``Z`` (microseconds only when there are any)."""
    when = _time(ts_us)
    return when.isoformat(timespec="microseconds" if when.microsecond else "seconds").replace("+00:00", "Z")


def generalized_time(when: _dt.datetime) -> str:
    """ASN.1 GeneralizedTime in UTC (``YYYYMMDDhhmmss[.ffffff]Z``), as TS 102 657 uses."""
    when = when.astimezone(_dt.timezone.utc)
    fraction = f".{when.microsecond:06d}".rstrip("0") if when.microsecond else ""
    return f"{when:%Y%m%d%H%M%S}{fraction}Z"


def raw_text(raw: bytes) -> tuple[str, str]:
    """``(encoding, text)``: the raw bytes as UTF-8 text if they are valid UTF-8, else base64."""
    try:
        return "utf-8", raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64", base64.b64encode(raw).decode("ascii")


def write_jsonl(records: Sequence[FoundRecord], out: BinaryIO) -> None:
    """One JSON object per record, in the given (time) order."""
    for number, rec in enumerate(records, 1):
        encoding, text = raw_text(rec.raw)
        out.write(orjson.dumps({
            "record_number": number, "record_ref": rec.record_ref, "time": iso_time(rec.ts_us),
            "time_source": "sealed_at" if rec.sealed_time else "start", "parsed": rec.parsed,
            "source": {"name": rec.source_name, "partition": rec.partition, "offset": rec.offset},
            "raw_encoding": encoding, "raw": text}) + b"\n")


def write_csv(records: Sequence[FoundRecord], out: BinaryIO) -> None:
    """A header row, then one row per record (RFC 4180 quoting, UTF-8)."""
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for number, rec in enumerate(records, 1):
        encoding, raw = raw_text(rec.raw)
        writer.writerow([number, rec.record_ref, iso_time(rec.ts_us), "sealed_at" if rec.sealed_time else "start",
                         rec.source_name, "" if rec.partition is None else rec.partition,
                         "" if rec.offset is None else rec.offset, encoding, raw])
    text.detach()


@dataclass(frozen=True)
class Delivery:
    """Who asked and who answers: the ETSI request id, the CSP, and when the delivery was made."""

    request_number: str
    authorised_organisation: str
    csp_id: str
    country_code: str
    created: _dt.datetime
    complete: bool = True


def _fields(records: Sequence[FoundRecord], readers: dict[int, Reader]) -> list[dict[str, Any]]:
    """Each record's fields: its JSON object if it is raw v1 JSONL, else what its own input format reads."""
    out: list[dict[str, Any]] = []
    other: list[int] = []
    for i, rec in enumerate(records):
        doc = None
        if rec.reader == JSONL_ID:
            try:
                doc = orjson.loads(rec.raw)
            except orjson.JSONDecodeError:
                doc = None
        elif rec.reader != UNREAD:
            other.append(i)
        out.append(doc if isinstance(doc, dict) else {})
    if other:
        read = record_fields([records[i].raw for i in other], [readers.get(records[i].reader) for i in other])
        for i, doc in zip(other, read):
            out[i] = doc
    return out


def _canonical(kind: str, values: list[Any], phones: PhoneNormaliser) -> list[str | None]:
    """The pipeline's canonical forms of a column of raw values (strings only)."""
    column = pl.Series([v if isinstance(v, str) else None for v in values], dtype=pl.String)
    canonical, _cls = normalise_column(kind, column, phones)
    return canonical.to_list()


def write_etsi_xml(records: Sequence[FoundRecord], out: BinaryIO, delivery: Delivery, region: str,
                   readers: dict[int, Reader] | None = None) -> None:
    """One ``RetainedDataMessage`` holding every record as a numbered ``RetainedDataRecord``.

    ``readers`` (the store's) lets records of other input formats show their parties too.
    """
    docs = _fields(records, readers or {})
    phones = PhoneNormaliser(region)
    cli = _canonical("msisdn", [d.get("cli") for d in docs], phones)
    dialled = _canonical("msisdn", [d.get("dialled") for d in docs], phones)
    imsi = _canonical("imsi", [d.get("imsi") for d in docs], phones)
    imei = _canonical("imei", [d.get("imei") for d in docs], phones)

    ET.register_namespace("", ETSI_NAMESPACE)
    q = lambda tag: f"{{{ETSI_NAMESPACE}}}{tag}"  # noqa: E731
    root = ET.Element(q("RetainedDataMessage"))
    header = ET.SubElement(root, q("retainedDataHeader"))
    request = ET.SubElement(header, q("requestID"))
    ET.SubElement(request, q("countryCode")).text = xml_text(delivery.country_code)
    ET.SubElement(request, q("authorisedOrganisationID")).text = xml_text(delivery.authorised_organisation)
    ET.SubElement(request, q("requestNumber")).text = xml_text(delivery.request_number)
    ET.SubElement(header, q("cSPID")).text = xml_text(delivery.csp_id)
    ET.SubElement(header, q("timeStamp")).text = generalized_time(delivery.created)
    payload = ET.SubElement(ET.SubElement(root, q("retainedDataPayload")), q("responsePayload"))
    ET.SubElement(payload, q("responseStatus")).text = "responseComplete" if delivery.complete else "responseIncomplete"
    results = ET.SubElement(payload, q("responseRecords"))
    for i, (rec, doc) in enumerate(zip(records, docs)):
        item = ET.SubElement(results, q("RetainedDataRecord"))
        ET.SubElement(item, q("recordNumber")).text = str(i + 1)
        usage = ET.SubElement(ET.SubElement(ET.SubElement(item, q("recordPayload")), q("telephonyRecord")),
                              q("telephonyServiceUsage"))
        sms = str(doc.get("call_type", "")).lower() == "sms"
        for role, number, sub_id, dev_id in (
                ("smsOriginator" if sms else "originating-Party", cli[i], imsi[i], imei[i]),
                ("smsRecipient" if sms else "terminating-Party", dialled[i], None, None)):
            if number is None and sub_id is None and dev_id is None:
                continue
            party = ET.SubElement(usage, q("partyInformation"))
            ET.SubElement(party, q("partyRole")).text = role
            if number is not None:
                ET.SubElement(party, q("partyNumber")).text = number
            if sub_id is not None:
                ET.SubElement(party, q("subscriberID"), {"type": "imsi"}).text = sub_id
            if dev_id is not None:
                ET.SubElement(party, q("deviceID"), {"type": "imei"}).text = dev_id
        span = ET.SubElement(usage, q("communicationTime"))
        start = _time(rec.ts_us)
        ET.SubElement(span, q("startTime"), {"source": "sealed_at" if rec.sealed_time else "start"}).text = \
            generalized_time(start)
        duration = doc.get("duration")
        seconds = int(duration) if isinstance(duration, int) or (isinstance(duration, str) and duration.isdigit()) \
            else None
        if seconds is not None and not rec.sealed_time:
            ET.SubElement(span, q("endTime")).text = generalized_time(start + _dt.timedelta(seconds=seconds))
        if doc.get("call_type") is not None:
            ET.SubElement(usage, q("communicationType")).text = xml_text(doc["call_type"])[:32]
        ext = ET.SubElement(item, q("nationalRecordExtension"))
        ET.SubElement(ext, q("recordID")).text = xml_text(rec.record_ref)
        ET.SubElement(ext, q("source"), {"partition": "" if rec.partition is None else str(rec.partition),
                                         "offset": "" if rec.offset is None else str(rec.offset)}).text = \
            xml_text(rec.source_name)
        ET.SubElement(ext, q("rawRecord"), {"encoding": "base64",
                                            "sha256": hashlib.sha256(rec.raw).hexdigest()}).text = \
            base64.b64encode(rec.raw).decode("ascii")
    ET.indent(root)
    out.write(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    out.write(ET.tostring(root, encoding="utf-8", xml_declaration=False))
    out.write(b"\n")


def delivered_record_refs(data: bytes) -> list[str]:
    """The record refs a delivery holds (JSONL, CSV or ETSI XML, told apart by their first bytes).

    For ``vault audit check-export``: an auditor checks that a delivery is exactly what the
    query's audit entry says was disclosed (``disclosed.sha256``), trusting neither alone.
    """
    head = data.lstrip()[:64]
    if head.startswith(b"<?xml") or head.startswith(b"<"):
        root = ET.fromstring(data)
        return [el.text or "" for el in root.iter(f"{{{ETSI_NAMESPACE}}}recordID")]
    if head.startswith(b"{"):
        return [str(orjson.loads(line)["record_ref"]) for line in data.splitlines() if line.strip()]
    rows = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))
    return [row["record_ref"] for row in rows]
