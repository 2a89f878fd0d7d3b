"""Allocator tuning: defaults for child processes, never over the operator's own settings."""
from __future__ import annotations

import os

from pipeline import allocator


def test_defaults_reach_child_processes_through_the_environment(monkeypatch):
    for name in ("_RJEM_MALLOC_CONF", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    allocator.tune_for_batches()
    assert os.environ["_RJEM_MALLOC_CONF"] == allocator.JEMALLOC_CONF
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(allocator.MMAP_THRESHOLD)
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == str(allocator.TRIM_THRESHOLD)


def test_operator_settings_win(monkeypatch):
    monkeypatch.setenv("_RJEM_MALLOC_CONF", "dirty_decay_ms:0")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1234")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    calls = []
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda _name: calls.append(_name))
    allocator.tune_for_batches()
    assert os.environ["_RJEM_MALLOC_CONF"] == "dirty_decay_ms:0"
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "1234"
    assert calls == []  # no mallopt over the operator's glibc settings
