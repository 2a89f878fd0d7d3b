"""The Kafka benchmark's instruments (``bench/kafka_e2e.py``).

The native-core issue's Kafka figures rest on two of them: the zero-cost core must hand Kafka
exactly the real core's messages (or its ceiling means nothing), and the profile split must put
each ``perf`` sample where it ran.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest

from pipeline.core.router import CoreConfig, Router, Source
from pipeline.keys import generate
from pipeline.synthetic import generate as synthetic

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kafka_e2e.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark as a module (it tunes malloc's environment on import: kept from the other tests)."""
    spec = importlib.util.spec_from_file_location("kafka_e2e", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kafka_e2e"] = module  # dataclasses look their module up while it runs
    try:
        with mock.patch.dict(os.environ):
            spec.loader.exec_module(module)
    finally:
        del sys.modules["kafka_e2e"]
    return module


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    return b"".join(synthetic(3000, seed=7)).split(b"\n")[:-1]


def test_the_zero_cost_core_replays_the_real_cores_messages(bench: ModuleType, lines: list[bytes]) -> None:
    learned = bench.ReplayRouter.learn(lines, 1000)
    keyring, _ = generate()
    real = Router(keyring, CoreConfig()).route(lines, Source("t", 0, range(len(lines))))
    assert len(learned.analytics) == real.counts["analytics"] < len(lines)  # the synthetic traffic has bad records
    assert learned.segments and all(s.startswith(b'{"type":"cdr.retention/2"') for s in learned.segments)

    batch = lines[500:2100]
    routed = bench.ReplayRouter(learned).route(batch, Source("t", 0, range(len(batch))), want_keys=True)
    expected = [learned.analytics[r] for r in batch if r in learned.analytics]
    assert routed.analytics.values() == [value for value, _ in expected]
    assert list(routed.analytics.keys) == [key for _, key in expected]
    segments = routed.retention.values()
    assert len(segments) == math.ceil(len(batch) / learned.records_per_segment)
    assert list(routed.retention.keys) == [learned.segment_keys[learned.segments.index(s)] for s in segments]
    assert routed.counts["in"] == len(batch)

    analytics_only = bench.ReplayRouter(learned, retention=False).route(batch, Source("t", 0, range(len(batch))))
    assert len(analytics_only.retention) == 0 and analytics_only.analytics.values() == routed.analytics.values()


def test_the_replay_hands_out_more_segments_than_it_learned_by_wrapping_around(bench: ModuleType,
                                                                              lines: list[bytes]) -> None:
    learned = bench.ReplayRouter.learn(lines, 1000)
    replay = bench.ReplayRouter(learned)
    handed = []
    for _ in range(3):  # three passes over the same records need three times the segments
        handed += replay.route(lines, Source("t", 0, range(len(lines)))).retention.values()
    assert len(handed) == 3 * math.ceil(len(lines) / learned.records_per_segment)
    assert set(handed) == set(learned.segments)


def test_the_profile_split_puts_each_sample_where_it_ran(bench: ModuleType) -> None:
    samples = [
        "         swapper     0/0        1000  ffffffff8224215b ([kernel.kallsyms])",
        "          python   100/100      3000      7f9a188c33aa (/site/pipeline/_native.abi3.so)",
        "     rdk:broker1   100/105      2000      7f9a188c33aa (/site/librdkafka-0cb94173.so.1)",
        " C2 CompilerThre   200/210      1000      7f9a188c33aa (/usr/lib/jvm/lib/server/libjvm.so)",
        " data-plane-kafk   200/230      2000      7f9a188c33aa ([JIT] tid 230)",
        "            perf   300/300      1000  ffffffff8224215b ([kernel.kallsyms])",
        "not a sample",
    ]
    assert bench.cpu_shares(samples, worker_pid=100, broker_pid=200) == pytest.approx({
        "worker: the core (_native)": 0.3, "worker, librdkafka threads: librdkafka": 0.2, "broker": 0.2,
        "idle": 0.1, "broker: JIT compilers": 0.1, "other processes": 0.1})
