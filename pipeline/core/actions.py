"""Field actions, registered by name: each turns one raw column into its analytics column.

An action gets the raw column (Polars String, as parsed) and returns the output column(s)
and a mask of rows whose value it could not process (a DLQ reason, never a crash and
never a silent null). Actions work on whole columns; the few slow, exact tools they need
(``phonenumbers``, ``ipaddress``) run once per distinct value through bounded caches.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl

from pipeline.core.normalise import (
    WITHHELD, AnswerCache, PhoneNormaliser, canonical_answers, truncate_ips)
from pipeline.core.tokenise import Tokeniser
from pipeline.policy import TIME_UNITS, Rule

#: A kept free-text value must look like an enumeration, not like an identifier: short, plain,
#: and with fewer than six digits in all (so "07700 900 123" or "203.0.113.5" never pass).
SAFE_KEEP = r"^[A-Za-z0-9 _.:/+\-]{0,64}$"
MAX_KEPT_DIGITS = 5
_CELL = r"^(\d{3})[-:.](\d{2,3})[-:.]([0-9A-Fa-f]{1,8})[-:.]([0-9A-Fa-f]{1,10})$"


@dataclass
class ActionContext:
    """What actions share within one router: the tokeniser and normalisers (and their caches)."""

    tokeniser: Tokeniser
    phones: PhoneNormaliser
    #: Per-batch results shared between the contract checks and the actions (cleared per batch).
    batch: dict[str, pl.Series | pl.DataFrame] = field(default_factory=dict)

    def times(self, name: str, raw: pl.Series) -> pl.Series:
        """Parsed times of a field, computed once per batch."""
        key = "times:" + name
        if key not in self.batch:
            self.batch[key] = parse_times(raw)
        return self.batch[key]

    #: Cross-batch answers per kind of work (``token:msisdn``, ``ip:24/48``…), bounded.
    caches: dict[str, AnswerCache] = field(default_factory=dict)

    def cached(self, key: str, raw: pl.Series, compute: Callable[[pl.Series], pl.DataFrame]) -> pl.DataFrame:
        """Answers for ``raw`` from the cross-batch cache ``key``; ``compute`` runs on unseen values only."""
        if key not in self.caches:
            self.caches[key] = AnswerCache(compute)
        return self.caches[key].resolve(raw)

    def tokens(self, kind: str, raw: pl.Series) -> pl.DataFrame:
        """Columns ``token``, ``cls`` (numbers only, else null) and ``valid`` for a raw column."""
        shared = self.batch.get(f"tokens:{kind}:{raw.name}")
        if shared is not None:
            return shared  # type: ignore[return-value]  (always a frame under a tokens: key)
        return self.cached("token:" + kind, raw, self._token_answers(kind))

    def prefetch_tokens(self, kind: str, columns: Sequence[pl.Series]) -> None:
        """Resolve several columns of one kind in one pass for this batch (cli and dialled share msisdn).

        One distinct set and one cache probe instead of one per column; :meth:`tokens` then
        returns each column's slice.
        """
        if len(columns) < 2:
            return
        answers = self.cached("token:" + kind, pl.concat([c.rename("raw") for c in columns]),
                              self._token_answers(kind))
        offset = 0
        for column in columns:
            self.batch[f"tokens:{kind}:{column.name}"] = answers.slice(offset, len(column))
            offset += len(column)

    def _token_answers(self, kind: str) -> Callable[[pl.Series], pl.DataFrame]:
        def compute(distinct: pl.Series) -> pl.DataFrame:
            answers = canonical_answers(kind, distinct, self.phones)
            valid = pl.col("cls").is_not_null() if kind == "msisdn" else pl.col("value").is_not_null()
            return answers.select("raw", self.tokeniser.expr(kind, pl.col("value")).alias("token"), "cls",
                                  valid.alias("valid"))
        return compute


@dataclass
class ActionResult:
    """Output columns (name -> column) and the rows the action rejected."""

    columns: dict[str, pl.Series]
    invalid: pl.Series | None = None
    detail: str = ""


Action = Callable[[ActionContext, Rule, pl.Series], ActionResult]
ACTIONS: dict[str, Action] = {}


def action(name: str) -> Callable[[Action], Action]:
    """Register an action under the name the policy file uses."""
    def register(fn: Action) -> Action:
        ACTIONS[name] = fn
        return fn
    return register


@action("token")
def _token(ctx: ActionContext, rule: Rule, raw: pl.Series) -> ActionResult:
    """Keyed token of the normalised value; numbers also get their class (e164, withheld, …)."""
    kind = rule.arg or "account"
    answers = ctx.tokens(kind, raw)
    columns = {rule.field: answers["token"].alias(rule.field)}
    if kind == "msisdn":
        columns[f"{rule.field}_class"] = answers["cls"].alias(f"{rule.field}_class")
    return ActionResult(columns, raw.is_not_null() & ~answers["valid"].fill_null(False), f"not a valid {kind}")


@action("keep")
def _keep(ctx: ActionContext, rule: Rule, raw: pl.Series) -> ActionResult:
    """The value as is, if it looks like an enumeration (short, plain, no identifier-like digit run).

    Kept fields are enumerations, so the checks run on the batch's few distinct values.
    """
    distinct = raw.unique().drop_nulls()
    bad = distinct.filter(~distinct.str.contains(SAFE_KEEP) | (distinct.str.count_matches(r"\d") > MAX_KEPT_DIGITS))
    unsafe = raw.is_in(bad.implode()).fill_null(False)
    return ActionResult({rule.field: raw.alias(rule.field)}, unsafe,
                        "kept fields must be short plain values with at most 5 digits; tokenise or drop it")


@action("truncate_ip")
def _truncate_ip(ctx: ActionContext, rule: Rule, raw: pl.Series) -> ActionResult:
    """The network prefix of the address (``203.0.113.0/24``), never the host."""
    v4, v6 = (int(x) for x in (rule.arg or "24/48").split("/"))

    def compute(distinct: pl.Series) -> pl.DataFrame:
        answers = canonical_answers("ip", distinct, ctx.phones)
        return pl.DataFrame({"raw": answers["raw"], "net": truncate_ips(answers["value"], v4, v6)})

    net = ctx.cached(f"ip:{v4}/{v6}", raw, compute)["net"]
    return ActionResult({rule.field: net.alias(rule.field)}, raw.is_not_null() & net.is_null(),
                        "not a valid IPv4 or IPv6 address")


#: The shape most mediation systems emit (``Z`` or an offset) is tried on every value first.
_ISO_TZ = "%Y-%m-%dT%H:%M:%S%.f%#z"


def parse_times(raw: pl.Series) -> pl.Series:
    """UTC datetimes from ISO-8601 (any offset, naive = UTC), ``YYYY-MM-DD HH:MM:SS`` or epoch.

    Epoch values are told apart by size: up to 11 integer digits are seconds, 12-14
    milliseconds, 15-16 microseconds (what mediation systems actually emit). The common
    ISO shape is parsed for the whole column at once; only what it leaves are tried against
    the other shapes.
    """
    s = raw.str.strip_chars()
    out = s.str.to_datetime(_ISO_TZ, strict=False, time_unit="us", time_zone="UTC")
    rest = (out.is_null() & s.is_not_null()).arg_true()
    if len(rest):
        out = out.scatter(rest, _parse_other_times(s.gather(rest)))
    return out.rename(raw.name)


def _parse_other_times(s: pl.Series) -> pl.Series:
    """The shapes after the common one: epoch numbers, naive ISO, and the space-separated forms."""
    number = s.str.contains(r"^\d{1,16}(\.\d+)?$")
    digits = s.str.replace(r"\.\d+$", "").str.len_chars()
    as_float = s.cast(pl.Float64, strict=False)
    micros = (pl.when(digits >= 15).then(as_float).when(digits >= 12).then(as_float * 1e3)
              .otherwise(as_float * 1e6)).cast(pl.Int64)
    return s.to_frame("s").select(pl.coalesce(
        pl.when(number).then(micros.cast(pl.Datetime("us", "UTC"))),
        pl.col("s").str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us")
        .dt.replace_time_zone("UTC"),
        pl.col("s").str.to_datetime("%Y-%m-%d %H:%M:%S%.f%#z", strict=False, time_unit="us", time_zone="UTC"),
        pl.col("s").str.to_datetime("%Y-%m-%d %H:%M:%S%.f", strict=False, time_unit="us")
        .dt.replace_time_zone("UTC"),
    ).alias("t"))["t"]


def format_times(ts: pl.Series) -> pl.Series:
    """ISO-8601 UTC text with a ``Z``: the one time format analytics sees.

    Coarsened times repeat (a batch spans a few hours), so each distinct value is formatted
    once when that saves work; ``strftime`` costs about 0.1 µs a value.
    """
    distinct = ts.unique().drop_nulls()
    if len(distinct) * 4 > len(ts):
        return ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return ts.replace_strict(distinct, distinct.dt.strftime("%Y-%m-%dT%H:%M:%SZ"), default=None,
                             return_dtype=pl.String)


@action("coarsen_time")
def _coarsen_time(ctx: ActionContext, rule: Rule, raw: pl.Series) -> ActionResult:
    """The time cut down to the unit (hour by default): exact times are quasi-identifiers."""
    ts = ctx.times(rule.field, raw)
    every = TIME_UNITS[rule.arg or "hour"]
    return ActionResult({rule.field: format_times(ts.dt.truncate(every)).alias(rule.field)},
                        raw.is_not_null() & ts.is_null(), "not an ISO-8601 time or epoch seconds")


@action("generalise_cell")
def _generalise_cell(ctx: ActionContext, rule: Rule, raw: pl.Series) -> ActionResult:
    """MCC-MNC-LAC of an MCC-MNC-LAC-CI cell id: the area, not the antenna."""
    parts = raw.str.strip_chars().str.extract_groups(_CELL)
    area = parts.to_frame("p").select(pl.concat_str([pl.col("p").struct.field(f) for f in ("1", "2", "3")],
                                                    separator="-").alias("p"))["p"]
    return ActionResult({rule.field: area.alias(rule.field)}, raw.is_not_null() & area.is_null(),
                        "cell id is not MCC-MNC-LAC-CI; use drop or token:account in the policy for other formats")


@action("drop")
def _drop(ctx: ActionContext, rule: Rule, raw: pl.Series) -> ActionResult:
    """Nothing reaches analytics (the raw value is still in the retention vault)."""
    return ActionResult({})


__all__ = ["ACTIONS", "ActionContext", "ActionResult", "WITHHELD", "parse_times", "format_times"]
