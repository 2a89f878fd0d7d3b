"""Per-month tokens (``token:<kind>:monthly``): a subscriber cannot be linked across months in
analytics, while suppression and subject access still find every one of their records."""
from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest

from pipeline.core.router import CoreConfig, Router, Source
from pipeline.core.tokenise import months_between, period_subkey
from pipeline.keys import write_private_json
from pipeline.policy import PolicyError, load_policy, policy_from_toml

SUBJECT = "+447700900123"
TIMES = ["2026-10-31T23:59:59Z", "2026-11-01T00:00:00Z", "2026-11-15T08:00:00Z", "2026-12-01T00:00:00+01:00",
         "1796083200"]  # the last two: 30 Nov 23:00 UTC, and epoch seconds for 1 Dec 2026 00:00 UTC


def _monthly_policy():
    text = (load_policy().rules, None)  # the default, with both parties tokenised per month
    lines = [f'{r.field} = "{r.action}{":" + r.arg if r.arg else ""}"' for r in text[0]]
    lines = [ln.replace('"token:msisdn"', '"token:msisdn:monthly"') for ln in lines]
    return policy_from_toml("[fields]\n" + "\n".join(lines), "monthly")


def _lines():
    return [orjson.dumps({"record_id": f"m-{i}", "cli": SUBJECT, "dialled": "07700 900456", "start": t,
                          "duration": 30, "cell_id": "234-15-57065-1"}) for i, t in enumerate(TIMES)]


def test_the_policy_takes_monthly_tokens_and_refuses_other_periods() -> None:
    assert _monthly_policy().rule("cli").arg == "msisdn:monthly"
    for bad in ('cli = "token:msisdn:weekly"', 'record_id = "token:record:monthly"', 'cli = "token:phone:monthly"'):
        with pytest.raises(PolicyError):
            policy_from_toml(f"[fields]\n{bad}\n")


def test_tokens_change_with_the_month_of_the_records_start(worker_keyring) -> None:
    router = Router(worker_keyring, CoreConfig(policy=_monthly_policy()))
    records = router.route(_lines(), Source("m", 0, range(len(TIMES)))).analytics_records()
    months = ["2026-10", "2026-11", "2026-11", "2026-11", "2026-12"]
    tok = router.tokeniser
    assert [r["cli"] for r in records] == [tok.token_one("msisdn", SUBJECT, m) for m in months]
    assert records[1]["cli"] == records[2]["cli"] == records[3]["cli"]      # one month: one token
    assert len({records[0]["cli"], records[1]["cli"], records[4]["cli"]}) == 3  # across months: none shared
    assert records[1]["cli"].startswith(f"{tok.kid}@2026-11:")
    stable = tok.token_one("msisdn", SUBJECT)
    assert all(stable.split(":")[1] not in r["cli"] for r in records)
    # The subkey of a month is HKDF-Expand of the kind's subkey, by the documented info string.
    assert period_subkey(tok.hex_keys[0], "2026-11") != period_subkey(tok.hex_keys[0], "2026-12")
    with pytest.raises(ValueError):
        period_subkey(tok.hex_keys[0], "2026-13")


def test_suppression_still_matches_the_subscribers_stable_token(worker_keyring) -> None:
    router = Router(worker_keyring, CoreConfig(policy=_monthly_policy()))
    router.suppressions.replace([router.tokeniser.token_one("msisdn", SUBJECT)])
    routed = router.route(_lines(), Source("m", 0, range(len(TIMES))))
    assert routed.counts["suppressed"] == len(TIMES) and routed.counts["analytics"] == 0


def test_months_between_covers_every_month_a_window_touches() -> None:
    utc = timezone.utc
    assert months_between(datetime(2026, 11, 15, tzinfo=utc), datetime(2027, 2, 1, tzinfo=utc)) == [
        "2026-11", "2026-12", "2027-01"]
    assert months_between(datetime(2026, 11, 1, tzinfo=utc), datetime(2026, 11, 1, tzinfo=utc)) == []


def test_a_subject_access_export_finds_the_records_under_monthly_tokens(worker_keyring, tmp_path) -> None:
    from pipeline.cli import main
    router = Router(worker_keyring, CoreConfig(policy=_monthly_policy()))
    analytics = tmp_path / "analytics.jsonl"
    analytics.write_bytes(router.route(_lines(), Source("m", 0, range(len(TIMES)))).analytics.buffer)
    keyring = tmp_path / "worker-keyring.json"
    write_private_json(keyring, worker_keyring.to_json())
    out = tmp_path / "sar.json"
    assert main(["privacy", "export", "--request-id", "sar-2026-0101", "--subject", "07700 900123",
                 "--keyring", str(keyring), "--from", "2026-11-01", "--to", "2026-12-01",
                 "--analytics", str(analytics), "--without-vault", "--output", str(out), "--format", "json"]) == 0
    doc = orjson.loads(out.read_bytes())
    rows = [r for r in doc["records"] if r["source"] == "analytics"]
    # A bare --to date includes that day: the three November calls and the one of 1 December (its
    # own month's token), never October's.
    assert sorted(r["start"][:10] for r in rows) == ["2026-11-01", "2026-11-15", "2026-11-30", "2026-12-01"]
    assert all(r["direction"] == "outgoing" and r["subject_number"] == SUBJECT for r in rows)


def test_cdrpipe_token_gives_a_months_token_and_a_record_ref(worker_keyring, tmp_path, capsys) -> None:
    from pipeline.cli import main
    keyring = tmp_path / "worker-keyring.json"
    write_private_json(keyring, worker_keyring.to_json())
    router = Router(worker_keyring, CoreConfig(policy=_monthly_policy()))
    analytics = router.route(_lines(), Source("m", 0, range(len(TIMES)))).analytics_records()
    assert main(["token", "--keyring", str(keyring), "--month", "2026-11", "07700 900123"]) == 0
    assert capsys.readouterr().out.strip() == analytics[1]["cli"]
    assert main(["token", "--keyring", str(keyring), "--kind", "record", "m-1"]) == 0
    assert capsys.readouterr().out.strip() == analytics[1]["record_id"]
    for bad in (["--month", "2026-13", "07700 900123"], ["--kind", "record", "--month", "2026-11", "m-1"],
                ["--kind", "record", "447700900123"]):
        assert main(["token", "--keyring", str(keyring), *bad]) == 2
        err = capsys.readouterr().err
        assert "447700900123" not in err and "900123" not in err
