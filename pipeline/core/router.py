"""The core: one pure function from a batch of raw records to three routed outputs.

``Router.route(records, source)`` has no I/O and knows nothing of Kafka or files; every
runner (file, Kafka, benchmark) calls it. It guarantees, for every batch:

* every input record is sealed into ``retention`` (valid or not: the legal duty covers
  all call records);
* a valid record reaches ``analytics`` unless a suppressed subscriber is a party;
* an invalid record reaches ``dlq`` with a reason code, a redacted detail and its sealed
  payload — never its values in clear;
* ``in == retention == analytics + dlq + suppressed``.

The per-record work runs in the native crate (``native/``, :mod:`pipeline._native`) with
the GIL released: split, strict parse and every DLQ reason, the policy actions, HMAC
tokens, analytics lines, AES-GCM segments and DLQ records. Python does what runs once a
batch (the HPKE wrap of the batch's data key) or once a distinct value the native fast
paths leave pending (libphonenumber, ``ipaddress`` and the odd time shapes, through
:mod:`pipeline.core.normalise`), so the numbering plan is never hand-written.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
from pipeline.lazy import polars as pl

from pipeline._native import NativeCore, ParsedBatch
from pipeline.core.envelope import Sealer
from pipeline.core.normalise import COUNTRY_CODES, WITHHELD_WORDS, PhoneNormaliser, canonical_answers
from pipeline.core.parse import DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_BYTES, PARSE_REASONS
from pipeline.core.times import parse_times
from pipeline.core.tokenise import DEFAULT_TOKEN_BITS, Tokeniser
from pipeline.formats import FORMAT_REASON_DETAIL, get_format
from pipeline.formats.common import NON_VOICE_CALL_TYPES
from pipeline.keys import WorkerKeyring
from pipeline.policy import Policy, load_policy

log = logging.getLogger(__name__)

#: Fields whose tokens decide suppression: a suppressed subscriber as either party, or by IMSI.
SUPPRESSION_FIELDS = (("cli", "msisdn"), ("dialled", "msisdn"), ("imsi", "imsi"))
#: The fields every runner reads besides the policy's (raw CDR v1 contract).
CONTRACT_FIELDS = ("record_id", "cli", "dialled", "start", "duration", "imsi", "call_type")
#: Reason codes of the checks after parsing (schemas/dlq-record.v1.json lists all codes).
CHECK_REASONS = MISSING_FIELD, INVALID_FIELD, UNSAFE_VALUE, INVALID_RECORD_ID = (
    "missing_field", "invalid_field", "unsafe_value", "invalid_record_id")
#: What a record id must look like (the native core checks it; schemas/raw-cdr.v1.json says the same).
#: An id that is nothing but 7-16 digits looks like a number, an IMSI or an IMEI and is refused too.
RECORD_ID = r"^[A-Za-z0-9._:/@+\-]{1,128}$"
ANALYTICS_HEADERS = [("schema", b"cdr.analytics/1")]
RETENTION_HEADERS = [("schema", b"cdr.retention/2")]
DLQ_SCHEMA = b"cdr.dlq/2"


@dataclass(frozen=True)
class CoreConfig:
    """Everything that shapes the routing, except keys."""

    policy: Policy = field(default_factory=load_policy)
    region: str = "GB"
    token_bits: int = DEFAULT_TOKEN_BITS
    segment_bytes: int = 256 * 1024
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    #: Input format (an adapter in :mod:`pipeline.formats`) and its options, e.g. a CSV mapping.
    format: str = "jsonl"
    format_options: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Source:
    """Where a batch came from: a topic or file name, partition(s) and per-record offsets."""

    name: str
    partitions: Sequence[int] | int
    offsets: Sequence[int]


class Output(Sequence[bytes]):
    """One output of a batch, ready to write: every message in one newline-terminated buffer.

    ``data`` is the core's buffer as it is (any bytes-like object: the native core hands its
    own over without a copy), which a file runner writes whole; ``buffer`` is the same bytes as
    ``bytes``, made once when first asked for. A Kafka runner takes ``values()``, ``keys`` and
    ``headers`` (or ``messages()``: value, key, headers) and never parses a message again.
    Indexing and iteration give the values.
    """

    __slots__ = ("data", "_bytes", "ends", "keys", "headers")

    def __init__(self, data: Any, ends: Sequence[int], keys: Sequence[bytes | str | None] | None,
                 headers: Sequence[list[tuple[str, bytes]]] | list[tuple[str, bytes]]) -> None:
        self.data, self.ends, self.keys, self.headers = data, ends, keys, headers
        self._bytes: bytes | None = data if isinstance(data, bytes) else None

    @property
    def buffer(self) -> bytes:
        """The whole output as ``bytes`` (copied from the core's buffer on first use)."""
        if self._bytes is None:
            self._bytes = bytes(self.data)
        return self._bytes

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self.ends)
        start = self.ends[i - 1] if i else 0
        return self.buffer[start:self.ends[i] - 1]

    def __iter__(self) -> Iterator[bytes]:
        buf, start = self.buffer, 0
        for end in self.ends:
            yield buf[start:end - 1]
            start = end

    def values(self) -> list[bytes]:
        """The values as a list: one C-level split of the buffer when no message holds a newline of its own.

        The buffer ends with a terminator per message, so the split gives exactly ``n + 1`` pieces
        when no other newline is in it (no separate count: it cost as much as the split).
        """
        buf, n = self.buffer, len(self.ends)
        if n and self.ends[-1] == len(buf):
            values = buf.split(b"\n")
            if len(values) == n + 1:
                values.pop()  # the empty piece after the last terminator
                return values
        return list(self)

    @property
    def headers_shared(self) -> bool:
        """Whether ``headers`` is one list for every message (else one list per message)."""
        return not self.headers or isinstance(self.headers[0], tuple)

    def messages(self) -> Iterator[tuple[bytes, bytes | str | None, list[tuple[str, bytes]]]]:
        """``(value, key, headers)`` per message (headers shared when one list serves all)."""
        keys = self.keys if self.keys is not None else [None] * len(self.ends)
        shared = self.headers_shared
        for k, (value, key) in enumerate(zip(self, keys)):
            yield value, key, self.headers if shared else self.headers[k]  # type: ignore[misc]


@dataclass
class RoutedBatch:
    """The three outputs of one batch and its counts (the runners only write these out)."""

    analytics: Output
    retention: Output
    dlq: Output
    counts: dict[str, int]
    dlq_reasons: Counter[str]
    #: ``field:reason`` -> analytics records whose optional value was nulled, not rejected (a cell
    #: id in no known form: ``cell_id:unrecognised_form``, ``cell_id:out_of_range``).
    nulled: Counter[str] = field(default_factory=Counter)

    def analytics_ndjson(self) -> bytes:
        """The analytics records as NDJSON (one buffer for the batch)."""
        return self.analytics.buffer

    def analytics_records(self) -> list[dict]:
        """The analytics records as dicts (tests and offline tools; runners write the buffer)."""
        return [orjson.loads(line) for line in self.analytics]

    def analytics_frame(self) -> pl.DataFrame:
        """The analytics records as a frame, columns in policy order (tests and offline analysis)."""
        return pl.DataFrame(self.analytics_records(), infer_schema_length=None)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Suppressions:
    """Tokens of subscribers who objected or asked for restriction (mutable, swapped whole)."""

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self.replace(tokens)

    def replace(self, tokens: Iterable[str]) -> None:
        """Swap the whole set in one assignment, so a reader on another thread sees old or new, never half."""
        self._tokens = frozenset(tokens)

    @property
    def tokens(self) -> frozenset[str]:
        return self._tokens

    def __len__(self) -> int:
        return len(self._tokens)


class Router:
    """Holds keys, policy and the native core; ``route`` is the pure batch function."""

    def __init__(self, keyring: WorkerKeyring, config: CoreConfig | None = None,
                 suppressions: Suppressions | None = None,
                 sealer_factory: Callable[[], Sealer] | None = None,
                 clock: Callable[[], datetime] = _utc_now, phones: PhoneNormaliser | None = None) -> None:
        self.config = cfg = config or CoreConfig()
        self._keyring = keyring
        # `is None`, not `or`: an empty Suppressions is falsy, and the caller's object must stay
        # the one a follower updates.
        self.suppressions = suppressions if suppressions is not None else Suppressions()
        self._tokeniser = Tokeniser(keyring, cfg.token_bits)
        # Shared by replicas: its number reader compiles each calling code's patterns once.
        self._phones = phones if phones is not None else PhoneNormaliser(cfg.region)
        self._sealer_factory = sealer_factory or (lambda: Sealer(keyring.vault_public, keyring.vault_kid))
        self._clock = clock
        rules = cfg.policy.rules
        self.fields = list(dict.fromkeys([*CONTRACT_FIELDS, *(r.field for r in rules)]))
        cc, idd, trunk, own_cc_len = self._phones.dialling()
        reasons = [*PARSE_REASONS, *((code, "") for code in CHECK_REASONS), *FORMAT_REASON_DETAIL.items()]
        self._native = NativeCore(
            self.fields, [(r.field, r.action, r.arg) for r in rules], list(self._tokeniser.hex_keys),
            self._tokeniser.kid + ":", cfg.token_bits // 4, cc, idd, trunk, own_cc_len, sorted(COUNTRY_CODES),
            list(WITHHELD_WORDS), cfg.max_record_bytes, cfg.max_depth, cfg.segment_bytes, reasons,
            sorted(NON_VOICE_CALL_TYPES), self._tokeniser.record_prefix, self._phones.national())
        self._adapter = None if cfg.format == "jsonl" else get_format(cfg.format)
        self._suppressed: frozenset[str] = frozenset()

    @property
    def tokeniser(self) -> Tokeniser:
        return self._tokeniser

    def replica(self) -> Router:
        """Another router with the same keys, config and suppressions, for another thread.

        A router's native core routes one batch at a time (it reuses its output buffers), so
        each routing thread has its own; the suppressions object is shared, so a follower's
        update reaches every replica, and so is the phone normaliser (it runs with the GIL held).
        """
        return Router(self._keyring, self.config, self.suppressions, self._sealer_factory, self._clock, self._phones)

    def route(self, records: Sequence[bytes] | None, source: Source, buf: bytes | None = None, *,
              want_keys: bool = False) -> RoutedBatch:
        """Route one batch. Never raises on bad data: bad records become DLQ entries.

        ``buf`` may pass the records already joined by newlines (a file chunk) to save the copy;
        it must then hold no record with a newline of its own, and ``records`` may be None: the
        native core splits the buffer itself, so no per-record Python object is made.
        ``want_keys`` asks for the analytics messages' partitioning keys (the caller's token),
        which Kafka runners use.
        """
        lengths = None
        if buf is None:
            assert records is not None, "route needs the records or their joined buffer"
            buf = b"\n".join(records)
            lengths = list(map(len, records))
        batch = self._parse(records, buf, lengths)
        self._resolve_pending(batch)
        if self.suppressions.tokens is not self._suppressed:
            self._suppressed = self.suppressions.tokens
            self._native.set_suppressed(sorted(self._suppressed))
        sealer = self._sealer_factory()
        now = self._clock().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        partitions = source.partitions if isinstance(source.partitions, int) else list(source.partitions)
        offsets = source.offsets if isinstance(source.offsets, (range, list)) else list(source.offsets)
        (analytics, a_ends, keys, retention, r_ends, segment_ids, dlq, d_ends, reasons, dlq_refs,
         suppressed, nulled) = self._native.route(batch, source.name, partitions, offsets, now,
                                          sealer.data_key, sealer.vault_kid, sealer.wrapped_key, want_keys)
        a_ends, r_ends, d_ends = (memoryview(e).cast("I") for e in (a_ends, r_ends, d_ends))
        n = len(batch)
        dlq_headers = [[("schema", DLQ_SCHEMA), ("reason", code.encode())] for code in reasons]
        counts = {"in": n, "analytics": len(a_ends), "retention": n, "dlq": len(d_ends), "suppressed": suppressed}
        return RoutedBatch(Output(analytics, a_ends, keys, ANALYTICS_HEADERS),
                           Output(retention, r_ends, segment_ids, RETENTION_HEADERS),
                           Output(dlq, d_ends, dlq_refs, dlq_headers), counts, Counter(reasons), Counter(dict(nulled)))

    def _parse(self, records: Sequence[bytes] | None, buf: bytes, lengths: list[int] | None) -> ParsedBatch:
        """JSONL in the native parser; other formats through their adapter, as canonical columns."""
        if self._adapter is None:
            return self._native.parse(buf, lengths)
        if records is None:
            records = buf.split(b"\n")
        cfg = self.config
        schema = {f: pl.String for f in self.fields}
        parsed = self._adapter(records, buf, schema, max_bytes=cfg.max_record_bytes, max_depth=cfg.max_depth,
                               **dict(cfg.format_options))
        frame = parsed.frame
        columns = [frame[f].cast(pl.String).to_list() for f in self.fields]
        return self._native.columns(buf, lengths if lengths is not None else list(map(len, records)), columns,
                                    frame["row"].to_list(), list(parsed.reject_rows), list(parsed.reject_reasons))

    def _resolve_pending(self, batch: ParsedBatch) -> None:
        """Settle the batch's distinct values the native fast paths left pending (once each, then learned).

        Numbers the core has cleaned go straight to ``phonenumbers`` (what the column code does
        with a value its rules cannot settle, and they are the core's rules); the rest, a few
        values a batch, go through the column code in Polars.
        """
        for kind, raws in self._native.pending(batch):
            try:
                if kind == "msisdn":
                    raws = self._resolve_numbers(raws)
                    if not raws:
                        continue
                values = pl.Series("raw", raws, dtype=pl.String)
                if kind == "time":
                    self._native.learn_times(raws, parse_times(values).dt.epoch("us").to_list())
                    continue
                answers = canonical_answers(kind, values, self._phones)
                self._native.learn(kind, answers["raw"].to_list(), answers["value"].to_list(),
                                   answers["cls"].to_list())
            except Exception as exc:  # noqa: BLE001 - a value no tool can read is invalid, never a crash
                # The exception type only: its message could quote the value.
                log.warning("%d %s value(s) could not be normalised (%s); their records go to the DLQ as invalid",
                            len(raws), kind, type(exc).__name__)
                if kind == "time":
                    self._native.learn_times(raws, [None] * len(raws))
                else:
                    self._native.learn(kind, raws, [None] * len(raws), [None] * len(raws))

    def _resolve_numbers(self, raws: list[str]) -> list[str]:
        """Learn the numbers the core cleaned (``PhoneNormaliser.resolve_many``); return the rest (they need NFKC first)."""
        cleaned = NativeCore.clean_numbers(raws)
        ready = [(raw, d) for raw, d in zip(raws, cleaned) if d is not None]
        if ready:
            answers = self._phones.resolve_many([d for _, d in ready])
            self._native.learn("msisdn", [raw for raw, _ in ready], [v for v, _ in answers], [c for _, c in answers])
        return [raw for raw, d in zip(raws, cleaned) if d is None]
