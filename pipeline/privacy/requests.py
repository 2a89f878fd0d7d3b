"""Data-subject requests: the privacy-request record (v2), its validation, and `cdrpipe privacy submit`.

A request is the one message in cdrpipe that carries a subscriber identifier in clear, so this
module is careful about where that value can go:

* it is written to ``privacy.requests`` only, which only the privacy app may read (ACLs; the
  topic keeps 30 days), keyed by the request id — never by the number;
* validation errors name the field and the rule, never the value (jsonschema's own messages
  quote the offending value, so they are rewritten here);
* :class:`PrivacyRequest` hides the value from ``repr``/``str`` so a stray log line or
  traceback cannot print it.

Schema v2 added the types ``access`` and ``portability`` and the due date ``due``. Every v1
request is a valid v2 request, so one validator reads both; a v1 request's due date is computed
from ``received`` by the same rule (:mod:`pipeline.privacy.deadlines`).

Public API:
    ``REQUEST_TYPES``, ``SUPPRESSION_TYPES``, ``SUBJECT_KINDS``
    ``load_schema(name) -> dict``                 a schema from schemas/
    ``schema_errors(doc) -> list[str]``           value-free validation errors (empty when valid)
    ``canonical_subject(kind, value, region)``    the form the pipeline tokenises, or InvalidRequest
    ``make_request(type, kind, value, *, request_id=None, received=None, region="GB") -> dict``
    ``parse_request(raw: bytes) -> PrivacyRequest``  for the privacy app (raises InvalidRequest)
    ``SubjectTokeniser(keyring, region, bits).tokens(kind, value)``  tokens under every key, current first
    ``submit(conf, topic, doc, timeout=30) -> (partition, offset)``
    ``register_submit(subparsers)``               adds ``cdrpipe privacy submit``
"""
from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl
from jsonschema import Draft202012Validator

from pipeline.errors import FatalError
from pipeline.core.normalise import PhoneNormaliser, normalise_one
from pipeline.core.tokenise import DEFAULT_TOKEN_BITS, Tokeniser
from pipeline.keys import WorkerKeyring
from pipeline.privacy.deadlines import due_date

#: The request types that change what reaches analytics (the privacy app's suppression state).
SUPPRESSION_TYPES = ("objection", "restriction", "restriction_lifted", "erasure")
#: Requests answered by the DPO with an export (`cdrpipe privacy export`); the pipeline is unchanged.
ACCESS_TYPES = ("access", "portability")
REQUEST_TYPES = SUPPRESSION_TYPES + ACCESS_TYPES
SUBJECT_KINDS = ("msisdn", "imsi")
REQUEST_SCHEMA = "privacy-request.v2.json"
#: Header naming the record's schema (as the Kafka worker labels cdr.* records).
SCHEMA_HEADER = ("schema", b"cdrpipe.privacy-request/2")
ENV_SCHEMA_DIR = "CDRPIPE_SCHEMA_DIR"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/@+\-]{1,64}$")
_NUMBER_SHAPED = re.compile(r"^\+?\d{7,16}$")


class InvalidRequest(ValueError):
    """A request that cannot be applied; ``reason`` is a stable code, the message holds no values."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def schema_dirs() -> list[Path]:
    """Where schemas are looked for: $CDRPIPE_SCHEMA_DIR, the source tree's schemas/, then a copy
    packaged as pipeline/data/schemas/ (an installed wheel has no source tree)."""
    env = os.environ.get(ENV_SCHEMA_DIR)
    here = Path(__file__).resolve()
    return ([Path(env)] if env else []) + [here.parents[2] / "schemas", here.parents[1] / "data" / "schemas"]


@lru_cache(maxsize=8)
def load_schema(name: str) -> dict[str, Any]:
    """One JSON Schema (FatalError naming the places looked in when it is nowhere)."""
    for directory in schema_dirs():
        path = directory / name
        if path.is_file():
            return dict(json.loads(path.read_text()))
    raise FatalError(f"schema {name} not found in {', '.join(map(str, schema_dirs()))}; "
                     f"set {ENV_SCHEMA_DIR} to the schemas/ directory")


@lru_cache(maxsize=8)
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


def schema_errors(doc: Any, schema: str = REQUEST_SCHEMA) -> list[str]:
    """Validation errors as ``path: rule`` — field names come from the schema, values never appear."""
    out = []
    for err in sorted(_validator(schema).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = "/".join(str(p) for p in err.absolute_path) or "(record)"
        rule = str(err.validator)
        if rule == "required":
            missing = [k for k in err.validator_value if not isinstance(err.instance, dict) or k not in err.instance]
            out.append(f"{path}: missing {', '.join(missing)}")
        elif rule == "additionalProperties":
            out.append(f"{path}: has properties the schema does not allow")
        elif rule == "enum":
            out.append(f"{path}: must be one of {', '.join(map(str, err.validator_value))}")
        else:
            out.append(f"{path}: fails '{rule}'")
    return out


def _phone_class(value: str, region: str) -> tuple[str | None, str | None]:
    frame = PhoneNormaliser(region).normalise(pl.Series([value], dtype=pl.String))
    return frame["value"][0], frame["cls"][0]


def canonical_subject(kind: str, value: str, region: str = "GB") -> str:
    """The canonical identifier the pipeline tokenises: E.164 for numbers, digits for an IMSI.

    Only full subscriber numbers (E.164 class) are accepted: a short code, an extension or an
    SMS sender id is not a data subject, and a number that does not normalise would give a token
    that matches nothing, so the request would silently do nothing.
    """
    if kind == "msisdn":
        canonical, cls = _phone_class(value, region)
        if canonical is None or cls != "e164":
            raise InvalidRequest("invalid_subject",
                                 f"subject: not a valid subscriber number for region {region} "
                                 "(give it in international format, e.g. +44…)")
        return canonical
    if kind == "imsi":
        canonical = normalise_one("imsi", value, region)
        if canonical is None:
            raise InvalidRequest("invalid_subject", "subject: an IMSI has 6-15 digits")
        return canonical
    raise InvalidRequest("invalid_subject", f"subject: kind must be one of {', '.join(SUBJECT_KINDS)}")


def utc_text(moment: datetime) -> str:
    """ISO-8601 UTC with a Z, millisecond precision (the form the schemas require)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_request_id(now: datetime | None = None) -> str:
    """``pr-YYYYMMDD-<12 hex>``: opaque, sortable by day, never number-shaped."""
    now = now or datetime.now(timezone.utc)
    return f"pr-{now:%Y%m%d}-{uuid.uuid4().hex[:12]}"


def check_request_id(request_id: str) -> str:
    """An opaque id, or InvalidRequest (a number-shaped id could be the subscriber's number)."""
    if not _SAFE_ID.match(request_id) or _NUMBER_SHAPED.match(request_id):
        raise InvalidRequest("invalid_request_id",
                             "request_id: 1-64 characters of A-Z a-z 0-9 . _ : / @ + - and not a bare number")
    return request_id


def make_request(type_: str, kind: str, value: str, *, request_id: str | None = None,
                 received: datetime | None = None, region: str = "GB") -> dict[str, Any]:
    """A validated privacy-request v2 document, the subject normalised (raises InvalidRequest)."""
    if type_ not in REQUEST_TYPES:
        raise InvalidRequest("invalid_type", f"type: must be one of {', '.join(REQUEST_TYPES)}")
    received = received or datetime.now(timezone.utc)
    doc = {"request_id": check_request_id(request_id or new_request_id(received)), "type": type_,
           "subject": {"kind": kind, "value": canonical_subject(kind, value, region)},
           "received": utc_text(received), "due": due_date(received).isoformat()}
    errors = schema_errors(doc)
    if errors:
        raise InvalidRequest("schema", "; ".join(errors))
    return doc


@dataclass(frozen=True)
class PrivacyRequest:
    """A parsed, schema-valid request. ``value`` is hidden from repr so it cannot reach a log."""

    request_id: str
    type: str
    kind: str
    value: str
    received: datetime
    #: Art. 12(3) due date: the request's ``due`` (v2), or computed from ``received`` (v1).
    due: date | None = None

    def __repr__(self) -> str:
        return (f"PrivacyRequest(request_id={self.request_id!r}, type={self.type!r}, kind={self.kind!r}, "
                f"value=<redacted>, received={utc_text(self.received)!r})")

    __str__ = __repr__


def parse_request(raw: bytes | None) -> PrivacyRequest:
    """Decode and validate one privacy.requests message (raises InvalidRequest, value-free)."""
    if raw is None:
        raise InvalidRequest("empty", "the message has no value")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("invalid_json", "the message is not JSON") from None
    errors = schema_errors(doc)
    if errors:
        raise InvalidRequest("schema", "; ".join(errors))
    received = datetime.fromisoformat(doc["received"].replace("Z", "+00:00"))
    due = date.fromisoformat(doc["due"]) if "due" in doc else due_date(received)
    return PrivacyRequest(doc["request_id"], doc["type"], doc["subject"]["kind"], doc["subject"]["value"],
                          received, due)


class SubjectTokeniser:
    """Normalise and tokenise a subject under every key of the keyring (current first)."""

    def __init__(self, keyring: WorkerKeyring, region: str = "GB", bits: int = DEFAULT_TOKEN_BITS) -> None:
        self.region = region
        self._tokenisers = [Tokeniser(keyring, bits, kid=k.kid) for k in keyring.token_keys]

    def __repr__(self) -> str:
        return f"SubjectTokeniser(kids={[t.kid for t in self._tokenisers]}, region={self.region!r})"

    def tokens(self, kind: str, value: str, months: Sequence[str] = ()) -> tuple[str, ...]:
        """The subject's tokens, equal to the pipeline's for the same key (raises InvalidRequest).

        ``months`` (``YYYY-MM``) adds the per-month tokens a ``token:<kind>:monthly`` policy writes,
        so an access request finds the subject's records under either policy.
        """
        canonical = canonical_subject(kind, value, self.region)
        return tuple(t.token_one(kind, canonical, month) for t in self._tokenisers for month in (None, *months))


def submit(conf: dict[str, str], topic: str, doc: dict[str, Any], timeout: float = 30.0) -> tuple[int, int]:
    """Produce one request (key = request id) and wait for the broker's ack; returns (partition, offset)."""
    from confluent_kafka import KafkaException, Producer

    result: dict[str, Any] = {}

    def delivered(err: Any, msg: Any) -> None:
        result["err"], result["msg"] = err, msg

    # acks=all for durability; no idempotence: for one message it only adds ~0.5 s of producer-id
    # set-up, and a retried duplicate is harmless (the privacy app's merge is idempotent).
    producer = Producer({**conf, "acks": "all", "linger.ms": 0})
    try:
        producer.produce(topic, json.dumps(doc, separators=(",", ":")).encode(), doc["request_id"].encode(),
                         headers=[SCHEMA_HEADER], on_delivery=delivered)
    except KafkaException as exc:
        raise FatalError(f"could not queue the request for {topic}: {exc.args[0].str()}") from None
    remaining = producer.flush(timeout)
    if remaining or "msg" not in result:
        raise FatalError(f"no acknowledgement from Kafka for {topic} within {timeout:g} s; "
                         "check --bootstrap-servers and the -X security settings")
    if result["err"] is not None:
        raise FatalError(f"Kafka refused the request on {topic}: {result['err'].str()}")
    msg = result["msg"]
    return int(msg.partition()), int(msg.offset())

__all__ = ["ACCESS_TYPES", "REQUEST_TYPES", "SUPPRESSION_TYPES", "SUBJECT_KINDS", "InvalidRequest", "PrivacyRequest", "canonical_subject",
           "check_request_id", "load_schema", "make_request", "new_request_id", "parse_request",
           "schema_errors", "submit", "utc_text", "SubjectTokeniser"]
