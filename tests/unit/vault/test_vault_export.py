"""Deliveries: raw bytes survive every format; the ETSI-style XML carries parties and times."""
from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import xml.etree.ElementTree as ET

import orjson

from pipeline.vault.export import ETSI_NAMESPACE, Delivery, generalized_time, write_csv, write_etsi_xml, write_jsonl
from pipeline.vault.query import FoundRecord

NS = {"e": ETSI_NAMESPACE}
T0 = 1_580_545_800_000_000  # 2020-02-01T08:30:00Z in µs
RECORDS = [
    FoundRecord("r1", T0, True, False, "cdr.raw", 3, 1041,
                b'{"cli":"07700 900123","dialled":"+49 151 10021504","imsi":"234150001234567",'
                b'"imei":"359254061234567","start":"2020-02-01T08:30:00Z","duration":75,"call_type":"voice"}'),
    FoundRecord("r2", T0 + 1_500_000, True, False, "cdr.raw\x01", 3, 1042,
                b'{"cli":"HSBC","dialled":"07700900123","start":1580545801,"duration":0,"call_type":"sms"}'),
    FoundRecord("r3", T0 + 2_000_000, False, True, "in.jsonl", None, None, b"\xff\xfe not utf-8 \x00 <&>"),
]


def test_jsonl_and_csv_keep_raw_bytes_exactly():
    out = io.BytesIO()
    write_jsonl(RECORDS, out)
    rows = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [r["record_number"] for r in rows] == [1, 2, 3]
    assert [r["record_ref"] for r in rows] == ["r1", "r2", "r3"] and "record_id" not in rows[0]
    assert rows[0]["raw"].encode() == RECORDS[0].raw and rows[0]["raw_encoding"] == "utf-8"
    assert base64.b64decode(rows[2]["raw"]) == RECORDS[2].raw and rows[2]["raw_encoding"] == "base64"
    assert rows[0]["time"] == "2020-02-01T08:30:00Z" and rows[1]["time"] == "2020-02-01T08:30:01.500000Z"
    assert rows[2]["time_source"] == "sealed_at" and rows[2]["source"] == {"name": "in.jsonl", "partition": None,
                                                                         "offset": None}
    out = io.BytesIO()
    write_csv(RECORDS, out)
    table = list(csv.DictReader(io.StringIO(out.getvalue().decode("utf-8"), newline="")))
    assert [r["record_ref"] for r in table] == ["r1", "r2", "r3"] and "record_id" not in table[0]
    assert table[0]["raw"].encode() == RECORDS[0].raw and table[0]["partition"] == "3"
    assert base64.b64decode(table[2]["raw"]) == RECORDS[2].raw


def test_etsi_xml_structure():
    out = io.BytesIO()
    created = dt.datetime(2026, 11, 25, 10, 0, 0, tzinfo=dt.timezone.utc)
    write_etsi_xml(RECORDS, out, Delivery("REQ-7", "NCA", "ExampleTel", "GB", created, complete=False), "GB")
    root = ET.fromstring(out.getvalue())  # well-formed, whatever the raw bytes held
    assert root.tag == f"{{{ETSI_NAMESPACE}}}RetainedDataMessage"
    assert root.find("e:retainedDataHeader/e:timeStamp", NS).text == "20261125100000Z"
    assert root.find(".//e:responseStatus", NS).text == "responseIncomplete"
    recs = root.findall(".//e:RetainedDataRecord", NS)
    assert [r.find("e:recordNumber", NS).text for r in recs] == ["1", "2", "3"]
    parties = recs[0].findall(".//e:partyInformation", NS)
    assert [p.find("e:partyRole", NS).text for p in parties] == ["originating-Party", "terminating-Party"]
    assert [p.find("e:partyNumber", NS).text for p in parties] == ["+447700900123", "+4915110021504"]
    assert parties[0].find("e:subscriberID", NS).text == "234150001234567"
    assert parties[0].find("e:deviceID", NS).text == "35925406123456"  # the 14-digit TAC+serial
    assert recs[0].find(".//e:startTime", NS).text == "20200201083000Z"
    assert recs[0].find(".//e:endTime", NS).text == "20200201083115Z"
    roles = [p.find("e:partyRole", NS).text for p in recs[1].findall(".//e:partyInformation", NS)]
    assert roles == ["smsOriginator", "smsRecipient"]
    assert recs[1].find(".//e:communicationType", NS).text == "sms"
    assert recs[1].find("e:nationalRecordExtension/e:source", NS).text == "cdr.raw\ufffd"  # XML-safe
    raw = recs[2].find("e:nationalRecordExtension/e:rawRecord", NS)
    assert base64.b64decode(raw.text) == RECORDS[2].raw and len(raw.get("sha256")) == 64
    assert recs[2].find(".//e:partyInformation", NS) is None  # unparsed: no parties claimed


def test_generalized_time_fraction():
    when = dt.datetime(2020, 2, 1, 8, 30, 0, 250000, tzinfo=dt.timezone.utc)
    assert generalized_time(when) == "20200201083000.25Z"
