"""Benchmark: request-to-effect latency of subject rights (issue 5 target: under 5 s in the demo).

"Effect" is what the Kafka worker acts on: the token in the ``Suppressions`` set its router
uses, kept current by ``SuppressionFollower``. Each sample is timed from just before the request
is produced to ``privacy.requests`` (validated, acknowledged by the broker, as `cdrpipe privacy
submit` does) until the follower's set changes:

    submit --> privacy.requests --> privacy app (intake, tokenise) --> <app>-requests-by-token
           --> privacy app (apply, table) --> privacy.suppressions --> follower --> Suppressions

The real `cdrpipe privacy worker` runs as a child process; requests are sent one at a time
(alternating objection, restriction, restriction_lifted on distinct subscribers) so every sample
is a cold path, not a batch.

    python bench/privacy_latency.py                        # starts a local broker, 30 samples
    python bench/privacy_latency.py --bootstrap-servers 127.0.0.1:9092 --samples 100
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.apps.process import AppProcess  # noqa: E402
from pipeline.broker import LocalKafka, free_port  # noqa: E402
from pipeline.core.router import Suppressions  # noqa: E402
from pipeline.keys import ENV_WORKER_KEYRING_JSON, generate  # noqa: E402
from pipeline.privacy.follower import SuppressionFollower  # noqa: E402
from pipeline.privacy.requests import SubjectTokeniser, make_request, submit  # noqa: E402
from pipeline.topics import apply_topics, load_topic_policy  # noqa: E402

TARGET_SECONDS = 5.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(bootstrap: str, samples: int, workdir: Path) -> dict[str, object]:
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    specs = [s for s in load_topic_policy() if s.name.startswith("privacy.")]
    apply_topics({"bootstrap.servers": bootstrap}, specs, prefix=prefix, replication_factor=1)
    keyring, _vault = generate()
    subjects = SubjectTokeniser(keyring)
    port = free_port()
    app = AppProcess(["privacy", "worker", "--bootstrap-servers", bootstrap, "--topic-prefix", prefix,
                      "--session-timeout", "6", "--web-port", str(port)],
                     web_port=port, log_path=workdir / "privacy-worker.log",
                     env={ENV_WORKER_KEYRING_JSON: json.dumps(keyring.to_json())}, log_level="WARNING")
    started = time.monotonic()
    app.start(120)
    startup = time.monotonic() - started
    supp = Suppressions()
    follower = SuppressionFollower(bootstrap, supp, prefix + "privacy.suppressions").start(30)
    conf = {"bootstrap.servers": bootstrap}
    by_type: dict[str, list[float]] = {"objection": [], "restriction": [], "restriction_lifted": []}
    try:
        for i in range(samples):
            # Per group of three: an objection, a restriction, then that restriction's lift.
            kind = ("objection", "restriction", "restriction_lifted")[i % 3]
            number = f"+4477009{0 if kind == 'objection' else 1}{i // 3:04d}"
            token = subjects.tokens("msisdn", number)[0]
            want_present = kind != "restriction_lifted"
            doc = make_request(kind, "msisdn", number, request_id=f"bench-{i}")
            t0 = time.monotonic()
            submit(conf, prefix + "privacy.requests", doc)
            while (token in supp.tokens) != want_present:
                if time.monotonic() - t0 > 30:
                    raise RuntimeError(f"sample {i} ({kind}) had no effect within 30 s:\n{app.log_tail()}")
                time.sleep(0.002)
            by_type[kind].append(time.monotonic() - t0)
        metrics = app.metrics()
    finally:
        follower.stop()
        code = app.terminate()
    every = [v for vs in by_type.values() for v in vs]
    return {
        "samples": len(every),
        "worker_startup_s": round(startup, 2),
        "p50_s": round(statistics.median(every), 3),
        "p95_s": round(_percentile(every, 0.95), 3),
        "max_s": round(max(every), 3),
        "by_type_p50_s": {k: round(statistics.median(v), 3) for k, v in by_type.items() if v},
        "target_s": TARGET_SECONDS,
        "within_target": max(every) < TARGET_SECONDS,
        "worker_exit_code": code,
        "worker_publish_histogram_count": next((line.split()[-1] for line in metrics.splitlines()
                                                if line.startswith("cdrpipe_privacy_request_seconds_count")), None),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", default=None, help="use this Kafka (default: start a local broker)")
    parser.add_argument("--samples", type=int, default=30, help="requests to time (default 30)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="privacy-bench-") as tmp:
        workdir = Path(tmp)
        if args.bootstrap_servers:
            result = run(args.bootstrap_servers, args.samples, workdir)
        else:
            with LocalKafka(port=0, data_dir=workdir / "kafka") as kafka:
                result = run(kafka.bootstrap, args.samples, workdir)
    print(json.dumps(result, indent=2))
    return 0 if result["within_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
