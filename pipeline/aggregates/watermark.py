"""Intake's event-time watermark: how far event time has safely advanced over the input partitions.

A window may close only when no record for it can still arrive from a partition that is behind.
So the watermark is the *minimum*, over the partitions still delivering, of the latest ``start``
each has delivered; a partition that has delivered nothing yet (but was assigned less than
``idle_timeout`` ago) holds it back entirely. A partition silent for ``idle_timeout`` seconds is
idle and stops holding it back (the rule Flink calls idleness), so one quiet partition cannot stall
every window; when all are idle the watermark is the latest time seen anywhere. Pure, with an
injectable clock, so the rule is unit-tested without Kafka.
"""
from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds after a window's end during which late records still count.
DEFAULT_GRACE = 3600
#: Seconds without records after which an input partition stops holding the watermark back.
DEFAULT_IDLE_TIMEOUT = 30.0

class Watermark:
    """Intake's event-time watermark over its input partitions (see the module docstring)."""

    def __init__(self, idle_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_timeout = idle_timeout
        self._clock = clock
        self.latest: dict[int, int] = {}      # partition -> latest start seen
        self.delivered: dict[int, float] = {}  # partition -> clock of its last record
        self.assigned_at: dict[int, float] = {}

    def assigned(self, partitions: set[int]) -> None:
        """Track the current assignment (partitions that left are forgotten)."""
        now = self._clock()
        for p in partitions:
            self.assigned_at.setdefault(p, now)
        for gone in set(self.assigned_at) - partitions:
            self.assigned_at.pop(gone, None)
            self.latest.pop(gone, None)
            self.delivered.pop(gone, None)

    def observe(self, partition: int, start: int) -> None:
        now = self._clock()
        self.assigned_at.setdefault(partition, now)
        self.delivered[partition] = now
        if start > self.latest.get(partition, -1):
            self.latest[partition] = start

    def value(self) -> int | None:
        """The watermark now, or None while an active partition has delivered nothing yet."""
        now = self._clock()
        active = [p for p, since in self.assigned_at.items()
                  if now - self.delivered.get(p, since) < self.idle_timeout]
        if not active:
            return max(self.latest.values()) if self.latest else None
        if any(p not in self.latest for p in active):
            return None
        return min(self.latest[p] for p in active)
