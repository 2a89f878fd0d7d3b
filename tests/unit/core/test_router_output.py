"""The routed batch as runners use it: ready messages, one buffer per output, no re-parsing."""
from __future__ import annotations

import orjson
import pytest

from pipeline.core.router import Output, Router, Source, Suppressions
from pipeline.synthetic import generate as synthetic

LINES = b"".join(synthetic(300, seed=11, subscribers=50, malformed_rate=0.1)).split(b"\n")[:-1]


def _route(router: Router, **kw):
    return router.route(LINES, Source("t", 0, range(len(LINES))), **kw)


def test_output_indexes_iterates_and_slices_like_a_list() -> None:
    values = [b"a", b"", b'{"x":1}', b"bb"]
    ends, total = [], 0
    for v in values:
        total += len(v) + 1
        ends.append(total)
    out = Output(b"\n".join(values) + b"\n", ends, None, [("schema", b"s")])
    assert list(out) == values and len(out) == 4
    assert out[0] == b"a" and out[-1] == b"bb" and out[1:3] == [b"", b'{"x":1}']
    assert [m[0] for m in out.messages()] == values and all(m[1] is None for m in out.messages())
    with pytest.raises(IndexError):
        out[4]


def test_a_joined_buffer_routes_exactly_like_the_records(worker_keyring) -> None:
    """The file runner hands the native core its chunk without per-record objects; same outputs."""
    router = Router(worker_keyring)
    by_records = _route(router)
    by_buffer = router.route(None, Source("t", 0, range(len(LINES))), b"\n".join(LINES))
    assert by_buffer.analytics.buffer == by_records.analytics.buffer
    assert [orjson.loads(d)["reason"] for d in by_buffer.dlq] == [orjson.loads(d)["reason"] for d in by_records.dlq]
    assert by_buffer.counts == by_records.counts and by_buffer.counts["dlq"] > 0


def test_a_replica_routes_the_same_and_shares_the_suppressions(worker_keyring) -> None:
    supp = Suppressions()
    router = Router(worker_keyring, suppressions=supp)
    replica = router.replica()
    assert replica.suppressions is supp
    assert _route(replica).analytics.buffer == _route(router).analytics.buffer
    caller = _route(router).analytics_records()[0]["cli"]
    supp.replace([caller])  # a follower's update reaches every replica
    assert _route(replica).counts["suppressed"] >= 1


def test_message_ends_and_keys_line_up_with_the_records(worker_keyring) -> None:
    routed = _route(Router(worker_keyring), want_keys=True)
    assert routed.analytics.buffer.count(b"\n") == len(routed.analytics) == routed.counts["analytics"]
    for value, key, headers in routed.analytics.messages():
        cli = orjson.loads(value)["cli"]
        assert key == (cli.encode() if cli is not None else None) and headers == [("schema", b"cdr.analytics/1")]
    assert sum(len(orjson.loads(s)["record_refs"]) for s in routed.retention) == len(LINES)
    assert routed.dlq_reasons.total() == len(routed.dlq) == routed.counts["dlq"]


@pytest.mark.parametrize("number", [
    "7 0 0 9 1 3",  # cleaned by the core, a short number: shortnumberinfo in the exact path
    "\u0660\u0667\u0667\u0660\u0660\u0669\u0660\u0660\u0661\u0662\u0663",  # Arabic-Indic digits: NFKC in the column code
])
def test_a_value_the_slow_path_cannot_read_is_invalid_and_never_logged(worker_keyring, monkeypatch, caplog,
                                                                         number) -> None:
    """A failing slow path (an exception quoting the value) costs the record a DLQ reason, not the batch;
    the log line names the count and the exception type only. Both slow paths of a number fail here."""
    import pipeline.core.router as router_mod

    def boom(kind, values, phones):
        raise ValueError(f"cannot read {values.to_list()}")

    def boom_one(self, text):
        raise ValueError(f"cannot read {text}")

    monkeypatch.setattr(router_mod, "canonical_answers", boom)
    monkeypatch.setattr(router_mod.PhoneNormaliser, "_resolve_slow", boom_one)
    line = orjson.dumps({"record_id": "r-1", "cli": number, "dialled": "+447700900456",
                         "start": "2026-11-25T10:00:00Z", "duration": 5})
    with caplog.at_level("DEBUG"):
        routed = Router(worker_keyring).route([line], Source("t", 0, [0]))
    assert routed.counts["dlq"] == 1 and orjson.loads(routed.dlq[0])["reason"] == "invalid_field"
    assert "could not be normalised" in caplog.text and "ValueError" in caplog.text
    digits = "".join(c for c in number if c.isdigit())
    for text in (caplog.text, b"".join(d.split(b'"payload"')[0] for d in routed.dlq).decode()):
        assert digits not in "".join(c for c in text if c.isdigit()) and number not in text
