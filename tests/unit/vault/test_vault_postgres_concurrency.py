"""Several processes on one PostgreSQL vault at once: one audit chain, one copy of each record.

Why: a PostgreSQL vault is written by several sinks and queried by several officers at the
same time. The audit chain must stay one total order across processes, with the witness
receiving the entries in exactly that order (the append holds an advisory lock from reading
the last entry to moving the anchor), and two ingests of the same records must store each
once (idempotent on record id), even when one is killed mid-batch.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from pipeline.cli import EXIT_OK, main
from pipeline.core.tokenise import Tokeniser
from pipeline.keys import load_worker_keyring

WRITERS, ENTRIES = 4, 15


def _append_entries(db: str, keystore: str, keyring: str, witness: str, writer: int, start) -> None:
    """One process appending ``ENTRIES`` audit entries through the vault's own AuditLog.

    All writers pass ``start`` (a barrier) once they are connected, so their appends overlap
    however long each took to start (a fast one could otherwise finish before the next began).
    """
    from pipeline.keys import load_vault_keyring
    from pipeline.vault.audit import AuditLog, load_audit_signer
    from pipeline.vault.keystore import Keystore
    from pipeline.vault.store import open_store
    from pipeline.vault.witness import FileWitness
    ring = load_vault_keyring(keyring)
    store = open_store(db, vault_kid=ring.vault_kid, index_kid=ring.index_key.kid)
    keys = Keystore(keystore, ring)
    log = AuditLog(store.db, anchor=keys, signer=load_audit_signer(None, keyring), witness=FileWitness(witness))
    start.wait(60)
    for i in range(ENTRIES):
        log.append({"action": "test", "writer": writer, "n": i})
    keys.close()
    store.close()


def test_audit_appends_from_many_processes_are_one_chain_witnessed_in_order(pg_vault_urls, tmp_path, capsys):
    db, keystore = pg_vault_urls
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys")]) == 0
    keyring = str(tmp_path / "keys" / "vault-keyring.json")
    assert main(["vault", "init", "--keyring", keyring, "--db", db, "--keystore", keystore]) == EXIT_OK
    witness = str(tmp_path / "witness.jsonl")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_append_entries, args=(db, keystore, keyring, witness, w, start))
             for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    capsys.readouterr()
    code = main(["vault", "audit", "verify", "--db", db, "--keystore", keystore, "--witness", witness,
                 "--public-key", str(tmp_path / "keys" / "audit-public-key.txt")])
    err = capsys.readouterr().err
    assert code == EXIT_OK, err
    assert f"{WRITERS * ENTRIES} entries" in err
    lines = Path(witness).read_text().splitlines()
    assert [orjson.loads(line)["seq"] for line in lines] == list(range(1, WRITERS * ENTRIES + 1))
    # The writers really interleaved (the test would prove nothing if they ran one after another).
    writers = [orjson.loads(line)["writer"] for line in lines]
    assert sum(1 for a, b in zip(writers, writers[1:]) if a != b) >= WRITERS


def _ingest_cmd(keyring: str, db: str, keystore: str, retention: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "vault", "ingest", "--keyring", keyring, "--db", db,
            "--keystore", keystore, "--input", retention, "--batch-bytes", "20000", "--quiet"]


def test_concurrent_ingests_with_one_killed_mid_batch_store_every_record_once(pg_vault_urls, tmp_path):
    import psycopg
    db, keystore = pg_vault_urls
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys")]) == 0
    keyring = str(tmp_path / "keys" / "vault-keyring.json")
    n = 4000
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"record_id": f"c-{i}", "cli": f"07700 9{i % 100000:05d}",
                                       "dialled": "07700 900999", "start": f"2020-03-{1 + i % 20:02d}T10:00:00Z",
                                       "duration": i}) + "\n" for i in range(n)))
    assert main(["process", "--keyring", str(tmp_path / "keys" / "worker-keyring.json"), "--input", str(raw),
                 "--out-dir", str(tmp_path / "out"), "--quiet"]) == 0
    retention = str(tmp_path / "out" / "retention.jsonl")
    assert main(["vault", "init", "--keyring", keyring, "--db", db, "--keystore", keystore]) == EXIT_OK
    env = {**os.environ, "CDRPIPE_VAULT_RETENTION": "10y"}
    cmd = _ingest_cmd(keyring, db, keystore, retention)

    def stored() -> int:
        with psycopg.connect(db, autocommit=True) as conn:
            return int(conn.execute("SELECT count(*) FROM vault.records").fetchone()[0])

    victim = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    other = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while stored() == 0 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, "the ingest finished before it could be killed: give it more records"
    victim.send_signal(signal.SIGKILL)  # mid-run: a batch is being prepared or written
    victim.wait(30)
    out, err = other.communicate(timeout=300)
    assert other.returncode == 0, err.decode()[-2000:]
    # The killed one's replacement re-reads everything: what is stored is skipped, the rest stored.
    again = subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    with psycopg.connect(db, autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT record_id FROM vault.records")]
        counted = int(conn.execute("SELECT sum(n) FROM vault.day_counts").fetchone()[0])
        indexed = conn.execute("SELECT count(*), count(DISTINCT k & 4294967295) FROM vault.blind_index "
                               "WHERE day = 18322").fetchone()
    assert len(ids) == len(set(ids)) == n                       # nothing lost, nothing twice
    refs = Tokeniser(load_worker_keyring(tmp_path / "keys" / "worker-keyring.json"))
    assert set(ids) == {refs.token_one("record", f"c-{i}") for i in range(n)}  # the column holds each id's ref
    assert counted == n                                         # the per-day counts agree with the rows
    assert indexed[0] >= indexed[1] > 0
    first = json.loads(out.decode().strip().splitlines()[-1])
    last = json.loads(again.stdout.decode().strip().splitlines()[-1])
    assert first["stored"] + last["stored"] <= n and last["stored"] + last["duplicates"] == n
