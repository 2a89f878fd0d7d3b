"""A subscriber's own retained calls, for a subject access request (`cdrpipe vault subject-access`).

Why this is a vault command and not part of `cdrpipe privacy export`: only the vault's
custodian holds the vault keyring, and a raw record must never leave the vault whole. A raw
CDR describes two people; the subject is entitled to their own data, not to everything the
network logged about the other party. So the records are cut down *here*, inside the vault,
to what the subject may see, and only that view goes into the file the DPO merges:

* **Found exactly as a warrant finds them** (:func:`~pipeline.vault.query.audited_search`:
  blind index, decrypt, exact re-check), so the counts are the vault's counts. Records past the
  retention period are not returned, as for a query; a window reaching further back is not
  refused (a subject may ask for "everything"): it simply finds nothing the vault no longer holds.
* **Audited, with purpose ``subject-access``** and the DPO's request id, not a warrant: one entry
  in the vault's hash-chained audit log (action ``subject_access``), written before the file.
* **The other party as on an itemised bill**: a number the subject dialled, or a caller who
  presented their number, in the vault region's national format (international for foreign
  numbers); short codes, extensions and sender names as written.
* **A withheld caller is never revealed to the callee** (CLIR). :func:`caller_withheld` decides,
  failing closed: a withheld-style CLI, or any presentation/privacy marker that does not say
  "allowed", hides the number; the record says ``withheld``.
* **Device and location fields only for the subject's own side.** In a raw v1 record the IMSI,
  IMEI, cell and IP are the calling (served) subscriber's, so they are included when the subject
  is the caller and left out when the subject was called.
* **No trace of law enforcement** (the tipping-off prohibition; IPA 2016 s.82 and the DPA 2018
  Sch. 2 para. 2 crime exemption): this module reads the records and nothing else. It never
  reads the audit log (it only appends its own entry), never names a warrant, an officer, an
  audit sequence number or a query count, and the file it writes has no field that could hold
  one (``schemas/subject-export.v1.json#/$defs/vaultExtract`` is closed). Whether a warrant ever
  touched these records cannot change a byte of the output; a test checks exactly that.
"""
from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import phonenumbers
import polars as pl

from pipeline.core.normalise import WITHHELD, WITHHELD_WORDS, PhoneNormaliser, normalise_column
from pipeline.vault.audit import AuditLog
from pipeline.vault.export import iso_time
from pipeline.vault.index import BlindIndexer
from pipeline.vault.keystore import Keystore
from pipeline.vault.query import FoundRecord, SearchResult, audited_search
from pipeline.vault.readers import Reader, read_parties_as
from pipeline.vault.store import RecordStore
from pipeline.vault.window import iso

EXTRACT_TYPE = "cdrpipe.vault-subject-access/1"
PURPOSE = "subject-access"
#: Values of a presentation or privacy marker that mean "the caller allowed their number to be shown".
PRESENTATION_ALLOWED = frozenset({"", "allowed", "allow", "presentation_allowed", "presentationallowed", "none",
                                  "no", "false", "0", "off"})
#: Where a record says whether the caller withheld their number (CLIR), by format:
#: raw v1 JSON top-level fields, and FreeSWITCH's channel variables (``privacy``: yes|number|full;
#: ``sip_privacy``/``sip_Privacy``: the SIP Privacy header of RFC 3323/3325, e.g. ``id``).
PRESENTATION_FIELDS = ("presentation", "cli_presentation", "clir", "privacy", "sip_privacy")
FREESWITCH_VARIABLES = ("privacy", "sip_privacy", "sip_Privacy", "caller_id_privacy")
#: Fields that belong to the served (calling) subscriber: given to the subject only for their own calls.
SERVED_FIELDS = ("imsi", "imei", "cell_id", "ip")


def caller_withheld(doc: dict[str, Any], cli_class: str | None) -> bool:
    """True when the caller withheld their number (fail closed: an unknown marker value withholds)."""
    if cli_class == WITHHELD:
        return True
    cli = doc.get("cli")
    if isinstance(cli, str) and cli.strip().lower() in WITHHELD_WORDS:
        return True
    markers: list[Any] = [doc.get(name) for name in PRESENTATION_FIELDS]
    if isinstance(cli, dict):
        markers.append(cli.get("presentation"))
    variables = doc.get("variables")
    if isinstance(variables, dict):
        markers.extend(variables.get(name) for name in FREESWITCH_VARIABLES)
    for marker in markers:
        if marker is None or isinstance(marker, bool) and not marker:
            continue
        if str(marker).strip().lower() not in PRESENTATION_ALLOWED:
            return True
    return False


def bill_number(canonical: str | None, cls: str | None, region: str) -> tuple[str | None, str]:
    """How an itemised bill shows a party: ``(text, form)``; form is number, withheld or none."""
    if cls == WITHHELD:
        return None, "withheld"
    if canonical is None:
        return None, "none"
    if cls == "e164":
        try:
            parsed = phonenumbers.parse(canonical, None)
        except phonenumbers.NumberParseException:
            return canonical, "number"
        home = parsed.country_code == phonenumbers.country_code_for_region(region.upper())
        fmt = phonenumbers.PhoneNumberFormat.NATIONAL if home else phonenumbers.PhoneNumberFormat.INTERNATIONAL
        return phonenumbers.format_number(parsed, fmt), "number"
    return canonical, "number"


def _doc(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _text(value: Any) -> str | None:
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def _duration(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _party_texts(records: Sequence[FoundRecord], docs: list[dict[str, Any]],
                 readers: Mapping[int, Reader] | None) -> dict[str, list[str | None]]:
    """Each record's cli, dialled, imsi and imei as written: read with the input format the vault
    indexed it with (so an Asterisk or acc row is read as the pipeline reads it), else from its JSON."""
    out = {name: [_text(d.get(name)) for d in docs] for name in ("cli", "dialled", "imsi", "imei")}
    if readers is None or not records:
        return out
    parties = read_parties_as([r.raw for r in records], [readers.get(r.reader) for r in records])
    seen: set[tuple[int, str]] = set()
    for row, name, raw in parties.values.iter_rows():
        if name in out and (row, name) not in seen and raw is not None:
            seen.add((row, name))
            out[name][row] = raw
    return out


def subject_view(records: Sequence[FoundRecord], subject: str, region: str,
                 readers: Mapping[int, Reader] | None = None) -> list[dict[str, Any]]:
    """The subject's view of each record (``$defs/record`` of subject-export.v1), in time order.

    ``readers`` (the store's reader ids) lets parties be read from any input format; duration,
    service, outcome, cell and IP come from records that are JSON (raw v1), else are null.
    """
    docs = [_doc(r.raw) for r in records]
    texts = _party_texts(records, docs, readers)
    phones = PhoneNormaliser(region)
    cli, cli_cls = normalise_column("msisdn", pl.Series(texts["cli"], dtype=pl.String), phones)
    dialled, dialled_cls = normalise_column("msisdn", pl.Series(texts["dialled"], dtype=pl.String), phones)
    assert cli_cls is not None and dialled_cls is not None
    out = []
    for i, (rec, doc) in enumerate(zip(records, docs)):
        caller, callee = cli[i] == subject, dialled[i] == subject
        direction = "self" if caller and callee else "outgoing" if caller else "incoming"
        if direction == "incoming":
            withheld = caller_withheld(doc, cli_cls[i])
            shown, form = (None, "withheld") if withheld else bill_number(cli[i], cli_cls[i], region)
            other_cls = None if withheld else cli_cls[i]
        else:
            shown, form = bill_number(dialled[i], dialled_cls[i], region)
            other_cls = dialled_cls[i]
        own = direction != "incoming"
        out.append({
            "source": "retained", "record_id": rec.record_ref, "start": iso_time(rec.ts_us),
            "time_precision": "second", "duration": _duration(doc.get("duration")), "direction": direction,
            "subject_number": subject, "other_party": shown, "other_party_form": form,
            "other_party_class": other_cls,
            "call_type": _text(doc.get("call_type")), "status": _text(doc.get("status")),
            **{name: ((texts[name][i] if name in texts else _text(doc.get(name))) if own else None)
               for name in SERVED_FIELDS},
        })
    return out


def subject_access_extract(store: RecordStore, keystore: Keystore, indexer: BlindIndexer, audit: AuditLog, *,
                           request_id: str, operator: str, subject: str, start_us: int, end_us: int,
                           not_before_us: int) -> tuple[dict[str, Any], SearchResult]:
    """The subject's extract (``cdrpipe.vault-subject-access/1``), found as a warrant finds records and audited
    (purpose subject-access, the request id, the target only as a keyed digest) before it is returned.

    Raises:
        FatalError: the vault cannot be read or the access cannot be audited (no audit entry, no extract).
    """
    from pipeline.privacy.requests import utc_text  # jsonschema and the request schemas: only when it runs

    window = {"from": iso(start_us), "to": iso(end_us)}

    def entry(result: SearchResult) -> dict[str, Any]:
        return {"action": "subject_access", "purpose": PURPOSE, "request_id": request_id, "operator": operator,
                "target": {"kind": "msisdn", "digest": indexer.audit_digest("msisdn", subject),
                           "index_kid": indexer.kid},
                "window": window, "result_count": len(result.records), "unreadable_count": result.unreadable_count,
                "integrity_failures": len(result.integrity_failures)}

    result, _entry = audited_search(store, keystore, indexer, audit, "msisdn", subject, start_us, end_us,
                                    not_before_us=not_before_us, entry=entry)
    extract = {"type": EXTRACT_TYPE, "request_id": request_id, "subject": {"kind": "msisdn", "number": subject},
               "window": window, "generated_at": utc_text(_dt.datetime.now(_dt.timezone.utc)),
               "complete": not result.integrity_failures and not result.unreadable,
               "records": subject_view(result.records, subject, store.region, store.readers())}
    return extract, result


__all__ = ["EXTRACT_TYPE", "PURPOSE", "bill_number", "caller_withheld", "subject_access_extract", "subject_view"]
