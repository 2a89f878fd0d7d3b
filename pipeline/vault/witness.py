"""The audit log's witness: a copy of every entry, kept where the vault cannot rewrite it.

The hash chain, the signatures and the keystore anchor all live on the vault's own machine.
Someone who can write the database, the keystore *and* holds the audit key can delete an
entry, recompute the chain, re-sign and move the anchor, and the log would still verify. The
witness closes that gap: every entry, exactly as stored (signature included), is also written
to a sink the vault may append to but not change, before the entry is committed (no witness
write, no entry, no query answer). ``vault audit verify --witness`` then compares the two and
names the first entry that differs, is missing from either side, or is out of order.

Two witnesses:

* ``FILE`` — an append-only file (opened ``O_APPEND``; make it append-only for the vault's user
  with ``chattr +a``, or put it on WORM storage or a log shipper's spool the vault cannot rewrite).
* ``kafka:TOPIC`` — a Kafka topic (``vault.audit``) on which the vault's principal may Write but
  not Delete or Alter; ``cdrpipe topics apply`` and the ACL matrix give it exactly that.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from pipeline.kafka_config import ENV_BOOTSTRAP
from pipeline.topics import AUDIT

ENV_AUDIT_WITNESS = "CDRPIPE_AUDIT_WITNESS"
DEFAULT_WITNESS_TOPIC = AUDIT
KAFKA_PREFIX = "kafka:"


class WitnessError(Exception):
    """The witness cannot be written or read; the message says which and what to check."""


class Witness(Protocol):
    spec: str

    def append(self, entry_text: str) -> None: ...

    def read(self) -> list[tuple[int, str]]: ...


class FileWitness:
    """An append-only file: one entry (its stored JSON text) per line, fsynced before the entry commits."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.spec = str(self.path)

    def __repr__(self) -> str:
        return f"FileWitness({self.spec!r})"

    def append(self, entry_text: str) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, entry_text.encode("utf-8") + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise WitnessError(f"cannot append to the audit witness {self.path}: {exc.strerror}") from None

    def read(self) -> list[tuple[int, str]]:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise WitnessError(f"cannot read the audit witness {self.path}: {exc.strerror}") from None
        return parse_lines(data.decode("utf-8", "replace").splitlines(), str(self.path))


class KafkaWitness:
    """A Kafka topic the vault may Write to but not Delete or Alter (idempotent, acks=all, one partition)."""

    def __init__(self, topic: str, config: dict[str, str]) -> None:
        self.topic = topic
        self.spec = KAFKA_PREFIX + topic
        self._config = dict(config)
        self._producer: Any = None

    def __repr__(self) -> str:
        return f"KafkaWitness(topic={self.topic!r})"

    def append(self, entry_text: str) -> None:
        from confluent_kafka import KafkaException, Producer
        if self._producer is None:
            self._producer = Producer({**self._config, "enable.idempotence": True, "acks": "all"})
        errors: list[str] = []
        seq = str(orjson.loads(entry_text).get("seq", ""))
        try:
            self._producer.produce(self.topic, entry_text.encode("utf-8"), seq.encode(), partition=0,
                                   on_delivery=lambda err, _msg: errors.append(err.str()) if err else None)
            left = self._producer.flush(30)
        except (KafkaException, BufferError) as exc:
            raise WitnessError(f"cannot write the audit witness topic {self.topic}: {exc}") from None
        if left or errors:
            raise WitnessError(f"the audit witness topic {self.topic} did not acknowledge the entry"
                               f"{': ' + errors[0] if errors else ' within 30 s'}")

    def read(self) -> list[tuple[int, str]]:
        from confluent_kafka import Consumer, TopicPartition
        consumer = Consumer({**self._config, "group.id": f"cdrpipe-audit-verify-{uuid.uuid4().hex[:8]}",
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             "auto.offset.reset": "earliest"})
        try:
            part = TopicPartition(self.topic, 0)
            low, high = consumer.get_watermark_offsets(part, timeout=30)
            lines: list[str] = []
            if high > low:
                consumer.assign([TopicPartition(self.topic, 0, low)])
                while len(lines) < high - low:
                    msgs = consumer.consume(500, timeout=10)
                    if not msgs:
                        break
                    for msg in msgs:
                        if msg.error() is None and msg.offset() < high:
                            lines.append(msg.value().decode("utf-8", "replace"))
        except Exception as exc:  # noqa: BLE001 - Kafka client errors, reported without config
            raise WitnessError(f"cannot read the audit witness topic {self.topic}: {exc}") from None
        finally:
            consumer.close()
        return parse_lines(lines, self.spec)


def parse_lines(lines: Sequence[str], where: str) -> list[tuple[int, str]]:
    """``(seq, entry text)`` of each non-empty witness line; an unreadable line is reported by number."""
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            seq = int(orjson.loads(line)["seq"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise WitnessError(f"{where}: line {n} is not an audit entry: the witness itself was altered") from None
        out.append((seq, line))
    return out


def open_witness(spec: str, kafka_config: dict[str, str] | None = None) -> Witness:
    """``FILE`` or ``kafka:TOPIC`` (Kafka settings from the caller, e.g. ``$CDRPIPE_BOOTSTRAP_SERVERS``)."""
    if spec.startswith(KAFKA_PREFIX):
        topic = spec[len(KAFKA_PREFIX):] or DEFAULT_WITNESS_TOPIC
        config = dict(kafka_config or {})
        if "bootstrap.servers" not in config:
            servers = os.environ.get(ENV_BOOTSTRAP)
            if not servers:
                raise WitnessError(f"witness {spec}: no Kafka given (set {ENV_BOOTSTRAP})")
            config["bootstrap.servers"] = servers
        return KafkaWitness(topic, config)
    return FileWitness(spec)


def compare(log: Sequence[tuple[int, str]], witnessed: Sequence[tuple[int, str]]) -> tuple[int | None, str]:
    """The first entry where the log and its witness disagree, and why (``(None, summary)`` if they agree).

    The witness may start later than the log (it was switched on at a ``witness_enabled``
    entry); from there on, both must hold the same entries, byte for byte, in the same order.
    The witness numbering may go back only where the log records a loss (``acknowledge_gap``,
    after a database restore): the lost entries stay in the witness as evidence, and the
    numbers from there on must match the log as it continued.
    """
    if not witnessed:
        return (1 if log else None), ("the witness is empty but the log has entries: it was truncated (or never "
                                      "written)" if log else "both empty")
    current: dict[int, str] = {}
    losses: list[str] = []
    prev = None
    for seq, text in witnessed:
        if prev is not None and seq != prev + 1:
            restart = seq <= prev and orjson.loads(text).get("action") == "acknowledge_gap"
            if not restart:
                at = prev + 1
                return at, (f"the witness does not hold entry #{at} where it should (it has #{seq} next): "
                            "the witness was altered or reordered")
            losses.append(f"entries #{seq} to #{prev} of an earlier log were lost and acknowledged at #{seq}")
            for gone in range(seq, prev + 1):
                current.pop(gone, None)
        current[seq] = text
        prev = seq
    seqs = sorted(current)
    first = seqs[0]
    if first != 1:
        head = orjson.loads(current[first])
        if head.get("action") != "witness_enabled":
            return first, (f"the witness begins at entry #{first}, which is not where witnessing was switched on: "
                           "entries were cut from the start of the witness")
    stored = dict(log)
    for seq in seqs:
        mine = stored.get(seq)
        if mine is None:
            return seq, "it is in the witness but not in the log: deleted (or the log was cut or rebuilt)"
        if mine != current[seq]:
            return seq, "it differs from the witness: rewritten (or re-signed) after it was written"
    last = seqs[-1]
    later = [s for s, _ in log if s > last]
    if later:
        return later[0], (f"entries #{later[0]} to #{later[-1]} are in the log but not in the witness: the witness "
                          "was truncated, or entries were added without it")
    return None, "; ".join([f"{len(seqs)} entries match the witness (entries #{first} to #{last})", *losses])
