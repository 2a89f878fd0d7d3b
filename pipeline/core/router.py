"""The core: one pure function from a batch of raw records to three routed outputs.

``Router.route(records, source)`` has no I/O and knows nothing of Kafka or files; every
runner (file, Kafka, benchmark) calls it. It guarantees, for every batch:

* every input record is sealed into ``retention`` (valid or not: the legal duty covers
  all call records);
* a valid record reaches ``analytics`` unless a suppressed subscriber is a party;
* an invalid record reaches ``dlq`` with a reason code, a redacted detail and its sealed
  payload — never its values in clear;
* ``in == retention == analytics + dlq + suppressed``.
"""
from __future__ import annotations

import bisect
import io
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import orjson
import polars as pl

from pipeline.core.actions import ACTIONS, ActionContext
from pipeline.core.envelope import Sealer
from pipeline.core.normalise import PhoneNormaliser
from pipeline.core.formats import get_format
from pipeline.core.parse import DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_BYTES, PARSE_REASON_DETAIL, record_ends
from pipeline.core.tokenise import DEFAULT_TOKEN_BITS, Tokeniser
from pipeline.keys import WorkerKeyring
from pipeline.policy import REQUIRED_FIELDS, Policy, load_policy

MISSING_FIELD, INVALID_FIELD, UNSAFE_VALUE, INVALID_RECORD_ID = (
    "missing_field", "invalid_field", "unsafe_value", "invalid_record_id")
RECORD_ID = r"^[A-Za-z0-9._:/@+\-]{1,128}$"
#: A record id that is nothing but 7-16 digits looks like a number, an IMSI or an IMEI: refused.
IDENTIFIER_SHAPED_ID = r"^\+?\d{7,16}$"
_RAW_RECORD_ID = re.compile(rb'"record_id"\s*:\s*"([A-Za-z0-9._:/@+\-]{1,128})"')
_NUMBER_ID = re.compile(rb"^\+?\d{7,16}$")
#: Fields whose tokens decide suppression: a suppressed subscriber as either party, or by IMSI.
SUPPRESSION_FIELDS = (("cli", "msisdn"), ("dialled", "msisdn"), ("imsi", "imsi"))
#: The fields every runner reads besides the policy's (raw CDR v1 contract).
CONTRACT_FIELDS = ("record_id", "cli", "dialled", "start", "duration", "imsi")


@dataclass(frozen=True)
class CoreConfig:
    """Everything that shapes the routing, except keys."""

    policy: Policy = field(default_factory=load_policy)
    region: str = "GB"
    token_bits: int = DEFAULT_TOKEN_BITS
    segment_bytes: int = 256 * 1024
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    #: Input format (an adapter in :mod:`pipeline.core.formats`) and its options, e.g. a CSV mapping.
    format: str = "jsonl"
    format_options: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Source:
    """Where a batch came from: a topic or file name, partition(s) and per-record offsets."""

    name: str
    partitions: Sequence[int] | int
    offsets: Sequence[int]


@dataclass
class RoutedBatch:
    """The three outputs of one batch and its counts (the runners only write these out)."""

    analytics: pl.DataFrame
    retention: list[bytes]
    dlq: list[bytes]
    counts: dict[str, int]
    dlq_reasons: Counter[str]

    def analytics_ndjson(self) -> bytes:
        """The analytics records as NDJSON (one buffer for the batch)."""
        if self.analytics.height == 0:
            return b""
        out = io.BytesIO()  # straight to bytes: no intermediate str to encode
        self.analytics.drop("_key").write_ndjson(out)
        return out.getvalue()

    def analytics_keys(self) -> list[str | None]:
        """Per-record partitioning keys (the caller's token), so a subscriber's calls stay in order."""
        return self.analytics["_key"].to_list()


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Suppressions:
    """Tokens of subscribers who objected or asked for restriction (mutable, swapped whole)."""

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self.replace(tokens)

    def replace(self, tokens: Iterable[str]) -> None:
        """Swap the whole set in one assignment, so a reader on another thread sees old or new, never half."""
        frozen = frozenset(tokens)
        self._state = (frozen, pl.Series(sorted(frozen), dtype=pl.String))

    @property
    def tokens(self) -> frozenset[str]:
        return self._state[0]

    def mask(self, columns: Sequence[pl.Series]) -> pl.Series | None:
        """True where any column holds a suppressed token (None when nothing is suppressed)."""
        tokens, series = self._state
        if not tokens or not columns:
            return None
        out = columns[0].is_in(series.implode()).fill_null(False)
        for c in columns[1:]:
            out = out | c.is_in(series.implode()).fill_null(False)
        return out

    def __len__(self) -> int:
        return len(self._state[0])


class Router:
    """Holds keys, policy and caches; ``route`` is the pure batch function."""

    def __init__(self, keyring: WorkerKeyring, config: CoreConfig | None = None,
                 suppressions: Suppressions | None = None,
                 sealer_factory: Callable[[], Sealer] | None = None,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self.config = config or CoreConfig()
        # `is None`, not `or`: an empty Suppressions is falsy, and the caller's object must stay
        # the one a follower updates.
        self.suppressions = suppressions if suppressions is not None else Suppressions()
        self._ctx = ActionContext(Tokeniser(keyring, self.config.token_bits), PhoneNormaliser(self.config.region))
        self._sealer_factory = sealer_factory or (lambda: Sealer(keyring.vault_public, keyring.vault_kid))
        self._clock = clock
        policy_fields = [r.field for r in self.config.policy.rules]
        self._schema = {f: pl.String for f in dict.fromkeys([*CONTRACT_FIELDS, *policy_fields])}
        self._parse = get_format(self.config.format)
        from pipeline.formats import FORMAT_REASON_DETAIL  # registered adapters' reason texts
        self._reason_detail = {**PARSE_REASON_DETAIL, **FORMAT_REASON_DETAIL}
        self._emitted = [r for r in self.config.policy.rules if r.action != "drop"]
        #: Fields tokenised with one kind in every batch (policy and suppression), resolved together.
        by_kind: dict[str, list[str]] = {}
        for name, kind in [*((r.field, r.arg) for r in self._emitted if r.action == "token"), *SUPPRESSION_FIELDS]:
            if name not in by_kind.setdefault(kind or "account", []):
                by_kind[kind or "account"].append(name)
        self._shared_kinds = {kind: names for kind, names in by_kind.items() if len(names) > 1}
        for rule in self.config.policy.rules:
            if rule.action not in ACTIONS:
                raise ValueError(f"policy action {rule.action!r} is not registered")

    @property
    def tokeniser(self) -> Tokeniser:
        return self._ctx.tokeniser

    def route(self, records: Sequence[bytes], source: Source, buf: bytes | None = None) -> RoutedBatch:
        """Route one batch. Never raises on bad data: bad records become DLQ entries.

        ``buf`` may pass the records already joined by newlines (a file chunk), to save the copy.
        """
        n = len(records)
        if buf is None:
            buf = b"\n".join(records)
        cfg = self.config
        parsed = self._parse(records, buf, self._schema, max_bytes=cfg.max_record_bytes, max_depth=cfg.max_depth,
                             **dict(cfg.format_options))
        f = parsed.frame
        reasons: list[tuple[pl.Expr, str, str | None, str]] = []  # (bad mask, reason, field, detail)

        # The raw v1 contract, whatever the policy emits.
        for name in REQUIRED_FIELDS:
            reasons.append((f[name].is_null(), MISSING_FIELD, name, f"{name} is missing or null"))
        rid_bad = f["record_id"].is_not_null() & (
            ~f["record_id"].str.contains(RECORD_ID) | f["record_id"].str.contains(IDENTIFIER_SHAPED_ID))
        reasons.append((rid_bad, INVALID_RECORD_ID, "record_id",
                        "record_id must be an opaque id of 1-128 characters of A-Z a-z 0-9 . _ : / @ + - "
                        "and not a bare number"))
        duration_ok = f["duration"].str.contains(r"^\d{1,9}$")
        reasons.append((f["duration"].is_not_null() & ~duration_ok, INVALID_FIELD, "duration",
                        "duration must be whole seconds >= 0"))
        self._ctx.batch.clear()
        for kind, names in self._shared_kinds.items():
            self._ctx.prefetch_tokens(kind, [f[name] for name in names])
        start_ts = self._ctx.times("start", f["start"])
        reasons.append((f["start"].is_not_null() & start_ts.is_null(), INVALID_FIELD, "start",
                        "start must be ISO-8601 or epoch seconds"))

        out_cols: dict[str, pl.Series] = {}
        for rule in self._emitted:
            if rule.field == "duration" and rule.action == "keep":
                out_cols["duration"] = f["duration"].cast(pl.Int64, strict=False)
                continue
            if rule.field == "record_id" and rule.action == "keep":
                continue  # emitted below from the validated ids
            result = ACTIONS[rule.action](self._ctx, rule, f[rule.field])
            out_cols.update(result.columns)
            if result.invalid is not None:
                code = UNSAFE_VALUE if rule.action == "keep" else INVALID_FIELD
                reasons.append((result.invalid, code, rule.field, f"{rule.field}: {result.detail}"))
        # Contract identifiers not emitted by the policy are still validated (and give suppression tokens).
        supp_cols = []
        for name, kind in SUPPRESSION_FIELDS:
            rule = cfg.policy.rule(name)
            if rule is not None and rule.action == "token" and rule.arg == kind:
                supp_cols.append(out_cols[name])
            else:
                answers = self._ctx.tokens(kind, f[name])
                bad = f[name].is_not_null() & ~answers["valid"].fill_null(False)
                reasons.append((bad, INVALID_FIELD, name, f"{name}: not a valid {kind}"))
                supp_cols.append(answers["token"])

        # First failing check per row, as columns (no per-record branching in Python); the codes and
        # texts are picked for the failing rows only (a few in a hundred).
        checks = pl.DataFrame({f"c{i}": mask.fill_null(False) for i, (mask, *_rest) in enumerate(reasons)})
        valid = ~checks.select(pl.any_horizontal(pl.all()).alias("bad"))["bad"]
        reason = fld = detail = pl.lit(None, dtype=pl.String)
        for i, (_mask, code, name, text) in reversed(list(enumerate(reasons))):
            cond = pl.col(f"c{i}")
            reason = pl.when(cond).then(pl.lit(code)).otherwise(reason)
            fld = pl.when(cond).then(pl.lit(name)).otherwise(fld)
            detail = pl.when(cond).then(pl.lit(text)).otherwise(detail)
        bad = checks.with_columns(f["row"]).filter(~valid).select(
            "row", reason.alias("reason"), fld.alias("field"), detail.alias("detail"))
        supp = self.suppressions.mask(supp_cols)
        suppressed = (valid & supp) if supp is not None else pl.repeat(False, f.height, dtype=pl.Boolean, eager=True)

        # Record ids for every input row: the record's own, else derived from its source coordinates.
        offsets = source.offsets if isinstance(source.offsets, list) else list(source.offsets)
        partitions = source.partitions
        part_list = list(partitions) if not isinstance(partitions, int) else None
        coords = pl.DataFrame({"p": part_list if part_list is not None else [partitions] * n, "o": offsets},
                              schema={"p": pl.Int64, "o": pl.Int64})
        safe_name = re.sub(r"[^A-Za-z0-9._/@+\-]", "_", source.name)[:64] or "source"
        ids = coords.select(pl.concat_str([pl.lit(safe_name + ":"), pl.col("p").cast(pl.String), pl.lit(":"),
                                           pl.col("o").cast(pl.String)]).alias("record_id"))["record_id"]
        own = f["record_id"]
        own_ok = own.is_not_null() & ~rid_bad.fill_null(False)
        if own_ok.any():
            ids = ids.scatter(f["row"].filter(own_ok), own.filter(own_ok))
        if parsed.reject_rows:
            # A record that could not be parsed may still name itself: keep its id when it is a plain
            # one, so a replay of the same input is recognised by the vault whatever the source is called.
            found = [(row, m.group(1).decode()) for row in parsed.reject_rows
                     if (m := _RAW_RECORD_ID.search(records[row], 0, 4096)) and not _NUMBER_ID.match(m.group(1))]
            if found:
                ids = ids.scatter([r for r, _ in found], [i for _, i in found])

        # Analytics: built from the policy's fields only (the allow-list), in policy order.
        ok = valid & ~suppressed
        analytics_cols = {}
        for rule in self._emitted:
            if rule.field == "record_id":
                analytics_cols["record_id"] = ids.gather(f["row"])
            for name in (rule.field, f"{rule.field}_class"):
                if name in out_cols:
                    analytics_cols[name] = out_cols[name]
        key = out_cols["cli"] if "cli" in out_cols else pl.repeat(None, f.height, dtype=pl.String, eager=True)
        analytics = pl.DataFrame({**analytics_cols, "_key": key}).filter(ok) if f.height else pl.DataFrame(
            {**{k: [] for k in analytics_cols}, "_key": []})

        # Retention: every record, sealed in segments under one wrapped data key.
        sealer = self._sealer_factory()
        lengths = list(map(len, records))
        id_list = ids.to_list()
        retention = self._seal_segments(sealer, buf, lengths, id_list, source, part_list, offsets)

        # DLQ: parse rejects and invalid rows, each with its own sealed payload.
        dlq_rows = list(zip(parsed.reject_rows, parsed.reject_reasons,
                            itertools.repeat(None), (self._reason_detail.get(r, "the record could not be read in the input format")
                                                     for r in parsed.reject_reasons)))
        dlq_rows.extend(zip(bad["row"].to_list(), bad["reason"].to_list(), bad["field"].to_list(),
                            bad["detail"].to_list()))
        now = self._clock().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        dlq = []
        for row, code, name, text in dlq_rows:
            part = part_list[row] if part_list is not None else partitions
            src = {"name": source.name, "partition": part, "offset": offsets[row]}
            head = orjson.dumps({"type": "cdr.dlq/1", "reason": code, "field": name, "detail": text,
                                 "record_id": id_list[row], "source": src, "failed_at": now})
            sealed = sealer.seal(records[row], [id_list[row]], [lengths[row]], src)
            dlq.append(head[:-1] + b',"payload":' + sealed + b"}")
        n_supp = int(suppressed.sum())
        counts = {"in": n, "analytics": analytics.height, "retention": n, "dlq": len(dlq), "suppressed": n_supp}
        return RoutedBatch(analytics, retention, dlq, counts, Counter(code for _r, code, _f, _d in dlq_rows))

    def _seal_segments(self, sealer: Sealer, buf: bytes, lengths: list[int], ids: list[str], source: Source,
                       part_list: list[int] | None, offsets: list[int]) -> list[bytes]:
        """Cut the batch into segments of about ``segment_bytes`` and seal each in one AEAD call."""
        if not lengths:
            return []
        ends = record_ends(lengths)
        view = memoryview(buf)
        out, first, start_byte = [], 0, 0
        budget = self.config.segment_bytes
        while first < len(lengths):
            last = max(first + 1, bisect.bisect_right(ends, start_byte + budget, lo=first))
            end_byte = ends[last - 1] - 1
            src = {"name": source.name,
                   "partition": part_list[first:last] if part_list is not None else source.partitions,
                   "offset": offsets[first:last]}
            out.append(sealer.seal(view[start_byte:end_byte], ids[first:last], lengths[first:last], src))
            first, start_byte = last, end_byte + 1
        return out
