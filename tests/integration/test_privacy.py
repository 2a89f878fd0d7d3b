"""Subject rights end to end on the local Apache Kafka: `cdrpipe privacy worker` as a real child
process, requests produced as `cdrpipe privacy submit` does, the Kafka worker's piece
(SuppressionFollower -> Suppressions -> Router) routing records.

What could fail here: an objection that does not reach the routing (or not within 5 s), a
record that leaves retention, a lift that ends an objection, a missing or malformed erasure
notice, a raw number in any topic, log line or metric, and state lost to a SIGKILL.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline.apps.process import AppProcess
from pipeline.broker import LocalKafka, free_port
from pipeline.demo import read_committed
from pipeline.core.envelope import open_segment
from pipeline.core.router import CoreConfig, RoutedBatch, Router, Source, Suppressions
from pipeline.keys import ENV_WORKER_KEYRING_JSON
from pipeline.privacy.follower import SuppressionFollower
from pipeline.privacy.requests import SubjectTokeniser, make_request, schema_errors, submit
from pipeline.topics import apply_topics, load_topic_policy

pytestmark = pytest.mark.kafka

PRIVACY_TOPICS = ("privacy.requests", "privacy.suppressions", "privacy.erasures")
OBJECTOR, RESTRICTED, ERASED_CLI, ERASED_IMSI = "07700 900123", "07700 900456", "07700 900789", "234150123456789"
OTHER1, OTHER2 = "+44 20 7946 0001", "+44 20 7946 0002"
#: Digit runs that would betray a raw subject anywhere outside privacy.requests.
RAW_MARKERS = ("7700900123", "7700900456", "7700900789", ERASED_IMSI, "77009001")
LATENCY_BUDGET = 5.0


def create_topics(kafka: LocalKafka, prefix: str, names: tuple[str, ...]) -> None:
    """The named topics from the topic policy (their real configs), under ``prefix``."""
    specs = [s for s in load_topic_policy() if s.name in names]
    apply_topics(kafka.admin_config(), specs, prefix=prefix, replication_factor=1)


def privacy_app(kafka: LocalKafka, prefix: str, tmp_path: Path, keyring, name: str = "privacy") -> AppProcess:
    port = free_port()
    return AppProcess(["privacy", "worker", "--bootstrap-servers", kafka.bootstrap, "--topic-prefix", prefix,
                       "--session-timeout", "6", "--web-port", str(port), "--partitions", "3"],
                      web_port=port, log_path=tmp_path / f"{name}.log",
                      env={ENV_WORKER_KEYRING_JSON: json.dumps(keyring.to_json())})


def read_topic(kafka: LocalKafka, topic: str, timeout: float = 20.0) -> list[tuple[bytes | None, bytes | None]]:
    """Every committed (key, value) of ``topic`` up to its current end (the demo's read_committed reader)."""
    return [(m.key(), m.value()) for m in read_committed(kafka.admin_config(), topic, timeout=timeout)]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, app: AppProcess | None = None) -> float:
    """Poll until ``predicate()``; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}"
                         + (f"\napp log:\n{app.log_tail()}" if app else ""))


def send(kafka: LocalKafka, prefix: str, type_: str, *, msisdn: str | None = None, imsi: str | None = None,
         request_id: str, received: datetime | None = None) -> None:
    """What `cdrpipe privacy submit` does: validate, then produce to privacy.requests."""
    kind, value = ("msisdn", msisdn) if msisdn is not None else ("imsi", imsi)
    doc = make_request(type_, kind, value or "", request_id=request_id, received=received)
    submit(kafka.admin_config(), prefix + "privacy.requests", doc)


def raw_lines() -> list[bytes]:
    recs = [
        {"record_id": "r-a1", "cli": OBJECTOR, "dialled": OTHER1},
        {"record_id": "r-a2", "cli": OTHER2, "dialled": "+44 7700 900123"},   # the objector as callee
        {"record_id": "r-b1", "cli": RESTRICTED, "dialled": OTHER1},
        {"record_id": "r-c1", "cli": ERASED_CLI, "dialled": OTHER2, "imsi": ERASED_IMSI},
        {"record_id": "r-o1", "cli": OTHER1, "dialled": OTHER2},
    ]
    base = {"start": "2026-03-01T10:15:00Z", "duration": "30", "cell_id": "234-15-1A2B-77", "call_type": "voice",
            "status": "answered", "imsi": "234159999999999"}
    return [json.dumps({**base, **r}).encode() for r in recs]


def route(router: Router) -> RoutedBatch:
    lines = raw_lines()
    return router.route(lines, Source("cdr.raw", 0, list(range(len(lines)))))


def _ids_of(refs, router: Router) -> set[str]:
    """The raw lines' record ids whose record_refs (tokens of kind record) these are; an unknown ref stays as it is."""
    ids = [json.loads(line)["record_id"] for line in raw_lines()]
    by_ref = {router.tokeniser.token_one("record", rid): rid for rid in ids}
    return {by_ref.get(ref, ref) for ref in refs}


def analytics_ids(batch: RoutedBatch, router: Router) -> set[str]:
    return _ids_of(batch.analytics_frame()["record_id"].to_list(), router)


def retention_ids(batch: RoutedBatch, vault_keyring, router: Router) -> set[str]:
    return _ids_of([r.record_ref for seg in batch.retention for r in open_segment(seg, vault_keyring.private)],
                   router)


@pytest.fixture
def follower_factory(kafka: LocalKafka, worker_keyring
                     ) -> Iterator[Callable[[str], tuple[SuppressionFollower, Suppressions, Router]]]:
    """A router and a follower of the topic, wired as the Kafka worker wires them."""
    made: list[SuppressionFollower] = []

    def make(topic: str) -> tuple[SuppressionFollower, Suppressions, Router]:
        supp = Suppressions()
        router = Router(worker_keyring, CoreConfig(), supp)
        assert router.suppressions is supp
        follower = SuppressionFollower(kafka.bootstrap, supp, topic)
        made.append(follower)
        return follower.start(30), supp, router

    yield make
    for f in made:
        f.stop()


def test_objection_restriction_lift_and_erasure(kafka: LocalKafka, topic_prefix: str, tmp_path: Path,
                                                worker_keyring, vault_keyring, follower_factory) -> None:
    create_topics(kafka, topic_prefix, PRIVACY_TOPICS)
    app = privacy_app(kafka, topic_prefix, tmp_path, worker_keyring).start(90)
    try:
        follower, supp, router = follower_factory(topic_prefix + "privacy.suppressions")
        assert follower.caught_up and len(supp) == 0
        subjects = SubjectTokeniser(worker_keyring)
        objector, restricted = subjects.tokens("msisdn", OBJECTOR)[0], subjects.tokens("msisdn", RESTRICTED)[0]
        erased = subjects.tokens("imsi", ERASED_IMSI)[0]

        before = route(router)
        all_ids = {"r-a1", "r-a2", "r-b1", "r-c1", "r-o1"}
        assert analytics_ids(before, router) == all_ids and before.counts["suppressed"] == 0

        # Objection (Art. 21): measured from submit to the routing seeing it.
        started = time.monotonic()
        send(kafka, topic_prefix, "objection", msisdn=OBJECTOR, request_id="case-obj-1")
        wait_for(lambda: objector in supp.tokens, 30, "the objection to reach the router", app)
        latency = time.monotonic() - started
        send(kafka, topic_prefix, "restriction", msisdn=RESTRICTED, request_id="case-res-1")
        # The erasure through the command line, as the DPO sends it: the receipt names no subject.
        out = subprocess.run([sys.executable, "-m", "pipeline.cli", "privacy", "submit", "--bootstrap-servers",
                              kafka.bootstrap, "--topic-prefix", topic_prefix, "--type", "erasure",
                              "--imsi", "23415 0123456789", "--request-id", "case-era-1"],
                             capture_output=True, text=True, timeout=60, check=True)
        receipt = json.loads(out.stdout)
        assert receipt["request_id"] == "case-era-1" and receipt["subject_kind"] == "imsi"
        assert not [m for m in RAW_MARKERS if m in out.stdout + out.stderr]
        wait_for(lambda: {restricted, erased} <= supp.tokens, 30, "restriction and erasure", app)

        after = route(router)
        assert analytics_ids(after, router) == {"r-o1"}                    # objector as caller and callee, the
        assert after.counts["suppressed"] == 4                        # restricted and the erased IMSI: gone
        assert after.counts["in"] == after.counts["retention"] == 5
        assert retention_ids(after, vault_keyring, router) == all_ids        # ... and all still retained

        # Lifting the restriction restores the flow; lifting "a restriction" of the objector does not
        # end the objection.
        send(kafka, topic_prefix, "restriction_lifted", msisdn=RESTRICTED, request_id="case-res-2")
        send(kafka, topic_prefix, "restriction_lifted", msisdn=OBJECTOR, request_id="case-res-3")
        wait_for(lambda: restricted not in supp.tokens, 30, "the lift to reach the router", app)
        published = {}
        def seen_lift_for_objector() -> bool:
            for key, value in read_topic(kafka, topic_prefix + "privacy.suppressions"):
                published[key.decode()] = json.loads(value)
            return published.get(objector, {}).get("request_id") == "case-res-3"
        wait_for(seen_lift_for_objector, 30, "the objector's lift to be published", app)
        assert published[objector]["active"] is True and published[objector]["grounds"] == ["objection"]
        assert published[restricted]["active"] is False and published[restricted]["type"] == "restriction_lifted"
        assert objector in supp.tokens
        lifted = route(router)
        assert analytics_ids(lifted, router) == {"r-o1", "r-b1"} and lifted.counts["suppressed"] == 3

        # The erasure notice: tokens only, schema-valid, the token the analytics rows carry.
        notices = [json.loads(v) for _, v in read_topic(kafka, topic_prefix + "privacy.erasures")]
        assert len(notices) == 1 and schema_errors(notices[0], "erasure-notice.v1.json") == []
        assert notices[0]["request_id"] == "case-era-1" and notices[0]["subject_kind"] == "imsi"
        erased_ref = router.tokeniser.token_one("record", "r-c1")
        erased_row = before.analytics_frame().filter(before.analytics_frame()["record_id"] == erased_ref)
        assert notices[0]["token"] == erased_row["imsi"][0] == erased

        # No raw subject outside privacy.requests: topics, changelog, app log, metrics.
        app_id = topic_prefix + "cdrpipe-privacy"
        for topic in (topic_prefix + "privacy.suppressions", topic_prefix + "privacy.erasures",
                      f"{app_id}-suppression-state-changelog", f"{app_id}-requests-by-token"):
            blob = b"".join((k or b"") + b"\0" + (v or b"") for k, v in read_topic(kafka, topic))
            assert blob, topic
            assert not [m for m in RAW_MARKERS if m.encode() in blob], topic
        text = app.log_text() + app.metrics()
        assert "case-obj-1" in text                               # the log does name requests ...
        assert not [m for m in RAW_MARKERS if m in text]           # ... never subjects
        assert 'cdrpipe_privacy_requests_applied_total{type="objection"} 1.0' in text
        assert latency < LATENCY_BUDGET, f"request to effect took {latency:.2f} s"
        print(f"\nobjection: request to effect {latency * 1000:.0f} ms")
    finally:
        assert app.terminate() == 0, app.log_tail()
    assert "Traceback" not in app.log_text()


def test_invalid_request_is_counted_and_logged_without_its_subject(kafka: LocalKafka, topic_prefix: str,
                                                                   tmp_path: Path, worker_keyring) -> None:
    """A producer that skips `submit`'s validation: the app rejects, counts, logs coordinates only."""
    from confluent_kafka import Producer

    create_topics(kafka, topic_prefix, PRIVACY_TOPICS)
    app = privacy_app(kafka, topic_prefix, tmp_path, worker_keyring).start(90)
    try:
        producer = Producer(kafka.admin_config())
        bad = {"request_id": "case-bad-1", "type": "objection", "subject": {"kind": "msisdn", "value": "999 7700900123 x"},
               "received": "2026-03-01T09:00:00Z", "note": "+447700900123"}
        short = {**bad, "subject": {"kind": "msisdn", "value": "12345"}}  # an extension, not a subscriber
        short.pop("note")
        for doc in (bad, short):
            producer.produce(topic_prefix + "privacy.requests", json.dumps(doc).encode())
        producer.flush(10)
        wait_for(lambda: 'requests_invalid_total{reason="schema"} 1.0' in app.metrics()
                 and 'requests_invalid_total{reason="invalid_subject"} 1.0' in app.metrics(), 30,
                 "both rejections", app)
        assert "rejected (schema)" in app.log_text() and "rejected (invalid_subject)" in app.log_text()
        assert "7700900123" not in app.log_text() and "case-bad-1" not in app.log_text()
    finally:
        assert app.terminate() == 0, app.log_tail()


def test_access_requests_change_no_suppression_and_v1_requests_still_apply(kafka: LocalKafka, topic_prefix: str,
                                                                          tmp_path: Path, worker_keyring) -> None:
    """Schema v2: an access request is accepted and counted but suppresses nobody; a request written
    as v1 (no due date, old schema header) is still applied."""
    from confluent_kafka import Producer

    create_topics(kafka, topic_prefix, PRIVACY_TOPICS)
    app = privacy_app(kafka, topic_prefix, tmp_path, worker_keyring).start(90)
    try:
        send(kafka, topic_prefix, "access", msisdn=RESTRICTED, request_id="sar-1")
        send(kafka, topic_prefix, "portability", msisdn=RESTRICTED, request_id="sar-2")
        v1 = {"request_id": "case-v1", "type": "objection", "subject": {"kind": "msisdn", "value": "+447700900123"},
              "received": "2026-03-01T09:00:00Z"}
        producer = Producer(kafka.admin_config())
        producer.produce(topic_prefix + "privacy.requests", json.dumps(v1).encode(), b"case-v1",
                         headers=[("schema", b"cdrpipe.privacy-request/1")])
        producer.flush(10)
        wait_for(lambda: all(f'requests_applied_total{{type="{t}"}} 1.0' in app.metrics()
                             for t in ("access", "portability", "objection")), 30, "three requests applied", app)
        records = [json.loads(v) for _k, v in read_topic(kafka, topic_prefix + "privacy.suppressions") if v]
        objector = set(SubjectTokeniser(worker_keyring).tokens("msisdn", OBJECTOR))
        assert {r["token"] for r in records} == objector and {r["request_id"] for r in records} == {"case-v1"}
        assert read_topic(kafka, topic_prefix + "privacy.erasures") == []
        log = app.log_text()
        assert "sar-1 (access) received" in log and "Traceback" not in log
        assert not any(marker in log + app.metrics() for marker in RAW_MARKERS)
    finally:
        assert app.terminate() == 0, app.log_tail()


def test_suppression_table_survives_sigkill(kafka: LocalKafka, topic_prefix: str, tmp_path: Path,
                                            worker_keyring, follower_factory) -> None:
    """kill -9 with requests in flight, more requests while it is down, restart: the state the new
    worker rebuilds from the changelog decides those requests exactly as the old one would have."""
    create_topics(kafka, topic_prefix, PRIVACY_TOPICS)
    subjects = SubjectTokeniser(worker_keyring)
    numbers = [f"+4477009001{i:02d}" for i in range(18)]
    token = [subjects.tokens("msisdn", n)[0] for n in numbers]
    t0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
    follower, supp, _router = follower_factory(topic_prefix + "privacy.suppressions")

    first = privacy_app(kafka, topic_prefix, tmp_path, worker_keyring, "first").start(90)
    try:
        for i in range(0, 6):
            send(kafka, topic_prefix, "objection", msisdn=numbers[i], request_id=f"obj-{i}", received=t0)
        for i in range(6, 12):
            send(kafka, topic_prefix, "restriction", msisdn=numbers[i], request_id=f"res-{i}", received=t0)
        wait_for(lambda: set(token[:12]) <= supp.tokens, 30, "the first 12 requests", first)
        # In flight at the kill: new objections, submitted and SIGKILLed at once.
        for i in range(12, 18):
            send(kafka, topic_prefix, "objection", msisdn=numbers[i], request_id=f"obj-{i}", received=t0)
        first.kill()
    finally:
        first.terminate()

    # While no worker runs: lifts that need the lost process's memory to be decided right.
    for i in range(0, 3):      # an objection is not ended by a lift
        send(kafka, topic_prefix, "restriction_lifted", msisdn=numbers[i], request_id=f"lift-{i}",
             received=t0 + timedelta(hours=1))
    for i in range(6, 9):      # newer than the restriction: lifts it
        send(kafka, topic_prefix, "restriction_lifted", msisdn=numbers[i], request_id=f"lift-{i}",
             received=t0 + timedelta(hours=1))
    for i in range(9, 12):     # older than the restriction (delivered late): must not lift it
        send(kafka, topic_prefix, "restriction_lifted", msisdn=numbers[i], request_id=f"lift-{i}",
             received=t0 - timedelta(hours=1))

    second = privacy_app(kafka, topic_prefix, tmp_path, worker_keyring, "second").start(120)
    try:
        expected = set(token[:6]) | set(token[9:18])
        state: dict[str, dict] = {}

        def settled() -> bool:
            for key, value in read_topic(kafka, topic_prefix + "privacy.suppressions"):
                state[key.decode()] = json.loads(value)
            lifts = {f"lift-{i}" for i in (*range(0, 3), *range(6, 12))}
            return lifts <= {v["request_id"] for v in state.values()} and set(token) <= set(state)
        wait_for(settled, 60, "every request to be published after the restart", second)
        wait_for(lambda: supp.tokens == expected, 10, "the follower to match")
        assert {t for t, v in state.items() if v["active"]} == expected
        assert [state[t]["grounds"] for t in token[9:12]] == [["restriction"]] * 3
        assert all(state[t]["grounds"] == ["objection"] for t in token[:3])
        # The rebuilt table came from the changelog, which holds tokens, not numbers.
        changelog = read_topic(kafka, f"{topic_prefix}cdrpipe-privacy-suppression-state-changelog")
        keys = {json.loads(k) for k, _ in changelog}
        assert set(token) <= keys
        blob = b"".join(v or b"" for _, v in changelog)
        assert not [m for m in RAW_MARKERS if m.encode() in blob]
    finally:
        assert second.terminate() == 0, second.log_tail()
    assert not [m for m in RAW_MARKERS if m in second.log_text() + first.log_text()]


def test_follower_loads_to_the_end_then_follows_and_fails_closed(kafka: LocalKafka, topic_prefix: str) -> None:
    """The follower's own contract, with records written by hand: it blocks until everything
    present at start is applied, then follows; tombstones release, unreadable values suppress; a
    missing topic makes start() fail instead of routing without suppressions."""
    from confluent_kafka import Producer

    from pipeline.privacy.follower import SuppressionLoadError

    create_topics(kafka, topic_prefix, ("privacy.suppressions",))
    topic = topic_prefix + "privacy.suppressions"
    producer = Producer({**kafka.admin_config(), "linger.ms": 0})
    rec = lambda token, active: json.dumps({"token": token, "active": active}).encode()  # noqa: E731
    for i in range(300):
        producer.produce(topic, rec(f"k1:{i:032x}", True), f"k1:{i:032x}".encode())
    producer.produce(topic, rec(f"k1:{1:032x}", False), f"k1:{1:032x}".encode())         # released again
    producer.produce(topic, None, f"k1:{2:032x}".encode())                                 # tombstone
    producer.produce(topic, b"not json", b"k1:junk")                                      # fail closed
    assert producer.flush(30) == 0

    supp = Suppressions()
    follower = SuppressionFollower(kafka.bootstrap, supp, topic)
    try:
        follower.start(30)
        assert follower.caught_up and follower.running and follower.updates == 1  # one swap, after the load
        assert len(supp) == 300 - 2 + 1 and "k1:junk" in supp.tokens
        assert {f"k1:{1:032x}", f"k1:{2:032x}"}.isdisjoint(supp.tokens) and f"k1:{3:032x}" in supp.tokens
        assert follower.malformed == 1
        producer.produce(topic, rec(f"k1:{3:032x}", False), f"k1:{3:032x}".encode())
        producer.produce(topic, rec("k2:" + "a" * 32, True), ("k2:" + "a" * 32).encode())
        producer.flush(30)
        wait_for(lambda: f"k1:{3:032x}" not in supp.tokens and "k2:" + "a" * 32 in supp.tokens, 10,
                 "the follower to apply new records")
    finally:
        follower.stop()
    assert not follower.running

    missing = SuppressionFollower(kafka.bootstrap, Suppressions(), topic_prefix + "no.such.topic")
    started = time.monotonic()
    with pytest.raises(SuppressionLoadError, match="not available"):
        missing.start(3)
    assert time.monotonic() - started < 10 and not missing.running
