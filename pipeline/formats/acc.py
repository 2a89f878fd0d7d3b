"""Kamailio / OpenSIPS ``acc`` rows (db_flatstore ``|`` files or CSV exports) as calls.

``acc`` accounts SIP *transactions*, not calls: an answered call is an INVITE row, maybe an ACK
row, and a BYE row sharing one Call-ID; a failed call is one INVITE row with its final code.
So:

* every INVITE row is a call record; its start is its ``time`` (or the ACK's, when the INVITE's
  is empty, as some setups log);
* its duration is the ``duration`` column in acc CDR mode (``cdr_flag``/``cdr_enable``: one row
  per call), else BYE time minus start for a BYE with the same Call-ID *in the same batch*,
  else 0 for a failed call (final code >= 300). An answered INVITE with no BYE in the batch is
  a reject (``acc_unpaired_invite``): streams should use CDR mode;
* ACK, BYE, CANCEL and other rows are rejects (``acc_in_call_request``): their facts are merged
  into the INVITE's record, the rows themselves are kept in retention.

The record id is ``acc-<16 hex of SHA-256 of the Call-ID>-<8 hex of the row's hash>``: Call-IDs
often carry the host's IP (``…@192.0.2.1``), so they never reach analytics in clear.

Column order is the acc module's fixed fields (method, from_tag, to_tag, callid, sip_code,
sip_reason, time) then the configured extras; the default extras are those of Kamailio's stock
``kamailio.cfg`` (src_user, src_domain, src_ip, dst_ouser, dst_user, dst_domain). Other extras
need a ``--mapping`` (see docs/formats.md; targets ``acc_method``, ``acc_sip_code``, ``acc_callid``).
"""
from __future__ import annotations

from collections.abc import Sequence

from pipeline.lazy import polars as pl

from pipeline.core.times import parse_times
from pipeline.core.parse import DEFAULT_MAX_DEPTH, DEFAULT_MAX_RECORD_BYTES, Parsed
from pipeline.formats.common import ACC_IN_CALL_REQUEST, ACC_UNPAIRED_INVITE, empty_frame
from pipeline.formats.csv_mapped import (Layout, MappingSpec, read_rows, resolve, source_expr, to_raw,
                                         without_headers)

COLUMNS = ("method", "from_tag", "to_tag", "callid", "sip_code", "sip_reason", "time", "src_user", "src_domain",
           "src_ip", "dst_ouser", "dst_user", "dst_domain")

DEFAULT = MappingSpec(
    delimiter="|", quote="", header=False, comment=None, columns=COLUMNS, column_counts=(),
    sources=(("method", "acc_method"), ("sip_code", "acc_sip_code"), ("callid", "acc_callid"), ("time", "start"),
             ("src_user", "cli"), ("dst_ouser", "dialled"), ("dst_user", "dialled"), ("src_ip", "ip")),
    constants=(("call_type", "voice"),), duration_unit="s", record_id_suffix=True, name="acc")


def _mapped(target: str, layout: Layout) -> pl.Expr:
    """A mapped column's value, or null when the layout does not map it."""
    expr = source_expr(target, layout)
    return expr if expr is not None else pl.lit(None, pl.String)


def _status(code: pl.Expr) -> pl.Expr:
    """The outcome a SIP final code means, as analytics keeps it."""
    return (pl.when((code >= 200) & (code < 300)).then(pl.lit("answered"))
            .when(code.is_in([486, 600])).then(pl.lit("busy"))
            .when(code.is_in([408, 480, 487])).then(pl.lit("no_answer"))
            .when(code.is_not_null()).then(pl.lit("failed"))
            .otherwise(None))


def parse_acc(records: Sequence[bytes], buf: bytes, schema: dict[str, pl.DataType], *,
              max_bytes: int = DEFAULT_MAX_RECORD_BYTES, max_depth: int = DEFAULT_MAX_DEPTH,
              mapping: MappingSpec | None = None) -> Parsed:
    """acc rows as one record per INVITE, durations from CDR mode or the batch's BYE rows."""
    if not records:
        return Parsed(empty_frame(schema), [], [])
    layout = resolve(DEFAULT, mapping)
    cells, reject_rows, reject_reasons = without_headers(*read_rows(records, buf, layout, max_bytes), layout)
    method = _mapped("acc_method", layout).str.to_uppercase()
    code = _mapped("acc_sip_code", layout).str.extract(r"^(\d{3})", 1).cast(pl.Int32)
    callid = _mapped("acc_callid", layout)
    rid = pl.concat_str([pl.lit("acc-"), callid.chash.sha2_256().str.slice(0, 16)])
    wide = {**schema, "start": pl.String, "duration": pl.String, "status": pl.String}
    raw = to_raw(cells, layout, wide, record_id_base=rid)
    keys = cells.select(method.alias("_method"), code.alias("_code"), callid.alias("_callid"))
    frame = pl.concat([raw, keys], how="horizontal").with_columns(
        parse_times(raw["start"]).alias("_ts"))
    legs = frame.filter(pl.col("_method").is_in(["ACK", "BYE"]) & pl.col("_callid").is_not_null()) \
        .group_by("_callid").agg(
            pl.col("_ts").filter(pl.col("_method") == "ACK").min().alias("_ack_ts"),
            pl.col("start").filter(pl.col("_method") == "ACK").first().alias("_ack_start"),
            pl.col("_ts").filter(pl.col("_method") == "BYE").max().alias("_bye_ts"))
    frame = frame.join(legs, on="_callid", how="left", maintain_order="left")
    answered = (pl.col("_code") >= 200) & (pl.col("_code") < 300)
    answer_ts = pl.coalesce(pl.col("_ts"), pl.col("_ack_ts"))
    if layout.indices("duration"):
        duration = pl.when(~answered & pl.col("duration").is_null()).then(pl.lit("0")).otherwise(pl.col("duration"))
        unpaired = pl.lit(False)
    else:
        talk = (pl.col("_bye_ts") - answer_ts).dt.total_seconds().cast(pl.String)
        duration = pl.when(~answered).then(pl.lit("0")).otherwise(talk)
        unpaired = answered & (pl.col("_bye_ts").is_null() | answer_ts.is_null())
    status = pl.col("status") if layout.indices("status") else _status(pl.col("_code"))
    frame = frame.with_columns(
        pl.when(pl.col("start").is_null()).then(pl.col("_ack_start")).otherwise(pl.col("start")).alias("start"),
        duration.alias("duration"), status.alias("status"),
        pl.when(pl.col("_method").is_null() | (pl.col("_method") != "INVITE")).then(pl.lit(ACC_IN_CALL_REQUEST))
        .when(unpaired).then(pl.lit(ACC_UNPAIRED_INVITE)).otherwise(None).alias("_reject"))
    bad = frame.filter(pl.col("_reject").is_not_null())
    reject_rows += bad["row"].to_list()
    reject_reasons += bad["_reject"].to_list()
    good = frame.filter(pl.col("_reject").is_null())
    return Parsed(good.select(*schema, "row"), reject_rows, reject_reasons)
