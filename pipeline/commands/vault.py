"""`cdrpipe vault …`: ingest, sink, query, purge, audit and status of the retention vault.

Each action parses its flags and calls the domain (:mod:`pipeline.vault`: the audited query, the purge
order, retention). Exit codes follow :mod:`pipeline.errors`: 0 done, 1 fatal (including a broken audit chain or a
record that failed authentication), 2 usage (including a query outside its warrant's scope or
before the retention cut-off).
Nothing here prints or logs a key, a target identifier or a raw record, except the query's
own output (the records the warrant asked for).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import getpass
import logging
import os
import signal
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import orjson

from pipeline.commands.common import action_group, add_metrics_arguments, open_private_output, reference
from pipeline.core.normalise import normalise_one
from pipeline.errors import FatalError, UsageError, os_why
from pipeline.kafka_config import parse_x_options, require_bootstrap
from pipeline.keys import ENV_VAULT_KEYRING_FILE, write_private_json
from pipeline.metrics import VaultSinkMetrics, serve_metrics, stop_metrics
from pipeline.vault.audit import (ENV_AUDIT_KEY, ENV_AUDIT_PUBLIC_KEY, AuditError, AuditLog, AuditSigner, disclosed,
                                  load_public_key, read_entries, verify_chain)
from pipeline.vault.backend import driver_errors, first_line, is_postgres, redact
from pipeline.vault.export import FORMATS, Delivery, delivered_record_refs, write_csv, write_etsi_xml, write_jsonl
from pipeline.vault.index import TARGET_KINDS, BlindIndexer
from pipeline.vault.ingest import Ingester, IngestTotals, WrongVaultKeyError
from pipeline.vault.keystore import KeystoreError, day_date, day_number, read_audit_anchor
from pipeline.vault.purge import expired_days, purge, purge_cutoff
from pipeline.vault.query import SearchResult, WarrantQuery, describe_unreadable, query_under_warrant
from pipeline.vault.readers import Reader, reader_from_flags
from pipeline.vault.reindex import reindex
from pipeline.vault.retention import retention_cutoff, utc_today
from pipeline.vault.retention import period as retention_period
from pipeline.vault.session import WITNESS_META, Vault, audit_log, keystore_spec, open_vault
from pipeline.vault.sink import DEFAULT_BATCH_BYTES, DEFAULT_GROUP, DEFAULT_TOPIC, VaultSink, ingest_file
from pipeline.vault.store import DAY_US, StoreError
from pipeline.vault.subject_access import subject_access_extract
from pipeline.vault.window import iso, now_us, parse_instant, parse_window
from pipeline.vault.witness import ENV_AUDIT_WITNESS, WitnessError, compare, open_witness
from pipeline.vault.warrants import Warrant, WarrantError, WarrantRegister, parse_targets

log = logging.getLogger("pipeline.vault.cli")  # the vault commands' logger, named as before they had this module


@contextmanager
def _open(args: argparse.Namespace, *, create: bool = False) -> Iterator[Vault]:
    """The vault of --keyring, --db and --keystore (and --region, where a command creates it)."""
    with open_vault(args.keyring, args.db, args.keystore, create=create, region=getattr(args, "region", None)) as vault:
        yield vault


def _witness_config(args: argparse.Namespace) -> dict[str, str]:
    """-X settings for a kafka:TOPIC witness."""
    return parse_x_options(getattr(args, "X", None))


def _audit(vault: Vault, args: argparse.Namespace) -> AuditLog:
    """The vault's audit log with --audit-key and --witness (each defaulting as :func:`audit_log` says)."""
    return audit_log(vault, keyring_path=args.keyring, audit_key=getattr(args, "audit_key", None),
                     witness=getattr(args, "witness", None), witness_config=_witness_config(args))


# --------------------------------------------------------------------------- commands

def _print_summary(totals: IngestTotals, quiet: bool) -> None:
    if not quiet:
        days = ", ".join(str(day_date(d)) for d in sorted(totals.days)[:5])
        more = "…" if len(totals.days) > 5 else ""
        print(f"vault: {totals.stored:,} records stored, {totals.duplicates:,} already stored, "
              f"{totals.expired:,} expired (past retention or day purged), {totals.unparsed:,} unread by any format "
              "(stored unindexed; see `vault reindex`), "
              f"{totals.quarantined} segments quarantined; days {days}{more}", file=sys.stderr)
    print(orjson.dumps(totals.summary()).decode())


def _check_quarantine(totals: IngestTotals) -> int:
    if totals.quarantined:
        raise FatalError(f"{totals.quarantined} segment(s) could not be opened (altered or corrupt); they are kept, "
                         "still sealed, in the database's quarantine table. Investigate before relying on this run.")
    return 0


def _reader(args: argparse.Namespace) -> Reader | None:
    """The ``--format``/``--mapping`` reader (None: sniff each record); a usage error if they do not fit."""
    try:
        return reader_from_flags(args.format, args.mapping)
    except ValueError as exc:  # MappingError, or an unknown format
        raise UsageError(str(exc)) from None


def _ingester(vault: Vault, args: argparse.Namespace, reader: Reader | None) -> Ingester:
    try:
        return Ingester(vault.store, vault.keystore, vault.keyring, reader=reader,
                        retention=retention_period(args.retention))
    except StoreError as exc:  # another writer holds the lock
        raise FatalError(str(exc)) from None
    except OSError as exc:  # the lock file beside the database cannot be written
        raise FatalError(f"cannot lock the vault database {redact(vault.store.path)} for writing: {os_why(exc)}") \
            from None


def _cmd_ingest(args: argparse.Namespace) -> int:
    if args.input != "-" and not os.path.isfile(args.input):
        what = " is a directory, not a file" if os.path.isdir(args.input) else ": no such file"
        raise UsageError(f"--input {args.input}{what} (expected DIR/retention.jsonl from `cdrpipe process`)")
    reader = _reader(args)
    retention_period(args.retention)
    with _open(args, create=True) as vault:
        ingester = _ingester(vault, args, reader)
        try:
            totals = ingest_file(ingester, args.input, batch_bytes=args.batch_bytes, progress=not args.quiet)
        except WrongVaultKeyError as exc:
            raise FatalError(str(exc)) from None
        finally:
            ingester.close()
    _print_summary(totals, args.quiet)
    return _check_quarantine(totals)


def _cmd_sink(args: argparse.Namespace) -> int:
    conf = {"bootstrap.servers": require_bootstrap(args.bootstrap_servers), **parse_x_options(args.X)}
    reader = _reader(args)
    retention_period(args.retention)
    metrics = VaultSinkMetrics()
    server = serve_metrics(metrics, args.metrics_port, args.metrics_addr)
    with contextlib.ExitStack() as stack:
        stack.callback(stop_metrics, server)
        vault = stack.enter_context(_open(args, create=True))
        ingester = _ingester(vault, args, reader)
        stack.callback(ingester.close)
        sink = VaultSink(ingester, conf, topic=args.topic, group=args.group, max_messages=args.max_messages,
                         metrics=metrics)
        previous = {sig: signal.signal(sig, lambda *_: sink.stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig, handler in previous.items():
            stack.callback(signal.signal, sig, handler)
        try:
            totals = sink.run(idle_exit=args.idle_exit)
        except WrongVaultKeyError as exc:
            raise FatalError(str(exc)) from None
        except Exception as exc:  # confluent-kafka errors: report, never a traceback with config
            from confluent_kafka import KafkaException
            if isinstance(exc, KafkaException):
                raise FatalError(f"Kafka: {exc.args[0].str() if exc.args else exc}; check --bootstrap-servers "
                                 "and -X settings") from None
            raise
    _print_summary(totals, args.quiet)
    return _check_quarantine(totals)


def _cmd_query(args: argparse.Namespace) -> int:
    warrant = reference(args.warrant, "--warrant", "the registered warrant that authorises it")
    officer = reference(args.officer, "--officer", "the authorised officer's id")
    if args.format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}")
    if args.unparsed:
        raise UsageError("--unparsed is refused: records no input format could read cannot be matched to a warrant's "
                         "targets. Read them with `cdrpipe vault reindex --format NAME [--mapping FILE]`, then query "
                         "by target.")
    if args.target is None:
        raise UsageError("give --target VALUE (the identifier, any format)")
    if args.kind not in TARGET_KINDS:
        raise UsageError(f"--kind must be one of {', '.join(TARGET_KINDS)}")
    start_us, end_us = parse_window(args.start, args.end)
    kept = retention_period(args.retention)
    cutoff = retention_cutoff(utc_today(), kept)
    if start_us < day_number(cutoff) * DAY_US:
        raise UsageError(f"the window reaches before the retention cut-off {cutoff} (retention {kept}): records "
                         f"from before it are no longer held. Start --from on or after {cutoff}.")
    if args.format == "etsi-xml" and not args.authorised_org:
        raise UsageError("--format etsi-xml needs --authorised-org (the requesting organisation's id, "
                         "env CDRPIPE_LI_ORG)")
    try:
        canonical = normalise_one(args.kind, args.target, region=args.region)
    except ValueError as exc:  # unknown region
        raise UsageError(str(exc)) from None
    if canonical is None:
        raise UsageError(f"--target cannot be read as {args.kind} (value not shown): check the value and --kind")

    query = WarrantQuery(warrant, officer, args.kind, canonical, start_us, end_us, kept, cutoff, args.format)
    with _open(args) as vault:
        audit = _audit(vault, args)
        indexer = BlindIndexer(vault.keyring.index_key)
        out: BinaryIO | None = None

        def make_output() -> None:  # made private (0600) before anything is audited or written
            nonlocal out
            out = open_private_output(args.output)

        result, entry = query_under_warrant(vault.store, vault.keystore, indexer, audit, query, now_us=now_us(),
                                            before_entry=make_output)
        assert out is not None
        try:
            _deliver(result, args, warrant, vault.store.region, out, vault.store.readers())
        finally:
            if out is not sys.stdout.buffer:
                out.close()
    log.info("vault query #%d by %s under %s: %d records", entry["seq"], officer, warrant, len(result.records))
    if result.unreadable:
        print(f"cdrpipe vault query: note: {describe_unreadable(result)}", file=sys.stderr)
    if result.mismatches:
        print(f"cdrpipe vault query: warning: {result.mismatches} index hit(s) were not the target once decrypted "
              "and were not returned (index collision or altered index rows)", file=sys.stderr)
    if result.integrity_failures:
        shown = ", ".join(f"{rid} ({day_date(day)})" for rid, day in result.integrity_failures[:10])
        more = " …" if len(result.integrity_failures) > 10 else ""
        raise FatalError(f"{len(result.integrity_failures)} stored record(s) failed authentication (altered "
                         f"ciphertext) and were NOT returned: {shown}{more}. The other "
                         f"{len(result.records)} records were delivered; audit entry #{entry['seq']} records both.")
    return 0


def _deliver(result: SearchResult, args: argparse.Namespace, warrant: str, region: str, out: BinaryIO,
             readers: dict[int, Reader] | None = None) -> None:
    if args.format == "jsonl":
        write_jsonl(result.records, out)
    elif args.format == "csv":
        write_csv(result.records, out)
    else:
        delivery = Delivery(request_number=args.request_number or warrant,
                            authorised_organisation=args.authorised_org, csp_id=args.csp_id,
                            country_code=(args.country or region).upper()[:2],
                            created=_dt.datetime.now(_dt.timezone.utc),
                            complete=not result.integrity_failures)
        write_etsi_xml(result.records, out, delivery, region, readers)
    out.flush()


def _cmd_purge(args: argparse.Namespace) -> int:
    cutoff = purge_cutoff(utc_today(), before=args.before, retention=args.retention, allow_early=args.allow_early)
    operator = _operator(args, "who runs the purge")
    with _open(args) as vault:
        audit = _audit(vault, args)
        if args.dry_run:
            days = expired_days(vault, cutoff)
            print(orjson.dumps({"cutoff": cutoff.isoformat(), "would_purge": [str(day_date(d)) for d in days]}).decode())
            return 0
        done = purge(vault, audit, cutoff, operator)
    summary = {"cutoff": cutoff.isoformat(), "days_purged": len(done.days), "keys_destroyed": done.keys_destroyed,
               "records_purged": done.records, "audit_seq": done.audit_seq}
    print(f"vault purge: {len(done.days)} day(s) before {cutoff} purged, {done.keys_destroyed} day key(s) destroyed, "
          f"{done.records:,} records dropped (audit entry #{done.audit_seq})", file=sys.stderr)
    print(orjson.dumps(summary).decode())
    return 0


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    try:
        rows = read_entries(args.db)
        public = load_public_key(args.public_key) if args.public_key else None
    except AuditError as exc:
        raise FatalError(str(exc)) from None
    keystore = keystore_spec(args.db, args.keystore)
    try:
        anchor = read_audit_anchor(keystore) if is_postgres(keystore) or Path(keystore).is_file() else None
    except driver_errors() as exc:
        raise FatalError(f"cannot read the keystore {redact(keystore)}: {first_line(exc)}") from None
    verdict = verify_chain(rows, public, anchor, signed_from=args.signed_from)
    if not verdict.ok:
        raise FatalError(f"audit log broken at entry #{verdict.first_bad}: {verdict.reason}")
    if rows and anchor is None:
        where = "holds no audit anchor" if is_postgres(keystore) or Path(keystore).is_file() else "does not exist"
        raise FatalError(f"audit log not verified: the keystore {keystore} {where}, but the log has {len(rows)} "
                         "entries: the anchor was deleted, or pass --keystore with the vault's key file")
    checks = ["hash chain", "keystore anchor"]
    if public is None:
        checks.append(f"signatures not checked (pass --public-key; {verdict.signed} entries carry one)")
    elif verdict.signed_from is not None and verdict.signed_from > 1:
        checks.append(f"signatures ({verdict.signed}, every entry from #{verdict.signed_from}; entries before it "
                      "were written before signing was switched on)")
    else:
        checks.append(f"signatures ({verdict.signed})")
    if args.witness:
        try:
            at, why = compare(rows, open_witness(args.witness, _witness_config(args)).read())
        except WitnessError as exc:
            raise FatalError(str(exc)) from None
        if at is not None:
            raise FatalError(f"audit log broken at entry #{at}: {why}")
        checks.append(f"witness: {why}")
    else:
        checks.append("no witness compared (pass --witness)")
    print(f"audit log intact: {verdict.entries} entries; {'; '.join(checks)}", file=sys.stderr)
    return 0


def _cmd_audit_check_export(args: argparse.Namespace) -> int:
    try:
        rows = dict(read_entries(args.db))
    except AuditError as exc:
        raise FatalError(str(exc)) from None
    if args.seq not in rows:
        raise UsageError(f"the audit log has no entry #{args.seq}")
    entry = orjson.loads(rows[args.seq])
    if entry.get("action") != "query" or not isinstance(entry.get("disclosed"), dict):
        raise UsageError(f"audit entry #{args.seq} is not a query that records what it disclosed")
    try:
        ids = delivered_record_refs(Path(args.file).read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read --file {args.file}: {exc.strerror}") from None
    except (ValueError, KeyError, ET.ParseError):
        raise FatalError(f"{args.file} is not a vault delivery (JSONL, CSV or ETSI XML with record refs)") from None
    mine = disclosed(ids)
    if mine["sha256"] != entry["disclosed"]["sha256"]:
        raise FatalError(f"{args.file} does not match audit entry #{args.seq}: it holds {mine['count']} record(s), "
                         f"the entry disclosed {entry['disclosed']['count']}; the delivery or the log was altered")
    print(f"{args.file} matches audit entry #{args.seq}: the same {mine['count']} record ref(s) "
          f"(warrant {entry.get('warrant')}, officer {entry.get('officer')})", file=sys.stderr)
    return 0


def _cmd_audit_export(args: argparse.Namespace) -> int:
    try:
        rows = read_entries(args.db)
    except AuditError as exc:
        raise FatalError(str(exc)) from None
    out = sys.stdout.buffer
    for _seq, text in rows:
        out.write(text.encode("utf-8") + b"\n")
    return 0


def _cmd_audit_keygen(args: argparse.Namespace) -> int:
    path = Path(args.out)
    if path.exists() and not args.force:
        raise UsageError(f"{path} already exists; refusing to replace an audit key (use --force)")
    signer = AuditSigner.generate()
    try:
        write_private_json(path, signer.to_json())
    except OSError as exc:
        raise FatalError(f"cannot write --out {path}: {os_why(exc)}; give a file in a directory you can write to") \
            from None
    print(f"wrote {path} (audit key {signer.kid}); verify with --public-key {signer.public_b64()}", file=sys.stderr)
    print(signer.public_b64())
    return 0


def _cmd_audit_gap(args: argparse.Namespace) -> int:
    officer = reference(args.officer, "--officer", "who records the loss")
    reason = (args.reason or "").strip()
    if not reason or len(reason) > 500 or not reason.isprintable():
        raise UsageError("--reason is required: one printable line (at most 500 characters) saying what was lost")
    with _open(args) as vault:
        audit = _audit(vault, args)
        gap = audit.gap()
        if gap is None:
            print("the audit log matches its anchor: nothing to acknowledge", file=sys.stderr)
            return 0
        anchor = vault.keystore.audit_anchor()
        try:
            entry = audit.append({"action": "acknowledge_gap", "officer": officer, "reason": reason,
                                  "lost": {"log_ended_at": gap[0], "anchor_seq": gap[1],
                                           "anchor_hash": anchor[1] if anchor else None}}, allow_gap=True)
        except AuditError as exc:
            raise FatalError(str(exc)) from None
    print(f"recorded the loss as audit entry #{entry['seq']}", file=sys.stderr)
    return 0


def _cmd_reindex(args: argparse.Namespace) -> int:
    reader = _reader(args)
    period = retention_period(args.retention)
    operator = _operator(args, "who runs the reindex")
    with _open(args) as vault:
        audit = _audit(vault, args)
        ingester = _ingester(vault, args, reader)
        try:
            totals = reindex(ingester, BlindIndexer(vault.keyring.index_key))
        except (KeystoreError, StoreError) as exc:
            raise FatalError(str(exc)) from None
        finally:
            ingester.close()
        try:
            entry = audit.append({"action": "reindex", "operator": operator,
                                  "reader": reader.label() if reader else "recognised",
                                  "retention": {"period": period,
                                                "cutoff": retention_cutoff(utc_today(), period).isoformat()},
                                  "records_reindexed": totals.reindexed, "records_expired": totals.expired})
        except AuditError as exc:
            raise FatalError(f"reindex done but not audited: {exc}") from None
    print(f"vault reindex: {totals.reindexed:,} records filed again by call start and indexed, {totals.expired:,} "
          f"removed as past retention, {totals.unchanged:,} still unreadable or unchanged (audit entry "
          f"#{entry['seq']})", file=sys.stderr)
    print(orjson.dumps(totals.summary()).decode())
    return 0


def _operator(args: argparse.Namespace, what: str) -> str:
    """Who runs an administrative command: --operator, else $CDRPIPE_OPERATOR, else the OS user."""
    return reference(args.operator or getpass.getuser(), "--operator", what)


def _cmd_warrant_add(args: argparse.Namespace) -> int:
    warrant_id = reference(args.id, "--id", "the warrant's reference")
    authority = (args.authority or "").strip()
    if not authority or len(authority) > 200 or not authority.isprintable():
        raise UsageError("--authority is required: who issued or approved the warrant (one printable line, at most "
                         "200 characters)")
    officer = reference(args.officer, "--officer", "the officer the warrant authorises")
    start_us, end_us = parse_window(args.start, args.end)
    if not args.expires:
        raise UsageError("--expires is required: when the authorisation ends (ISO-8601; a date includes that day)")
    expires_us = parse_instant(args.expires, "--expires", end=True)
    if expires_us <= now_us():
        raise UsageError(f"--expires {args.expires} is already past")
    operator = _operator(args, "who registers the warrant")
    with _open(args) as vault:
        indexer = BlindIndexer(vault.keyring.index_key)
        try:
            targets = parse_targets(args.targets, args.region or vault.store.region, indexer)
        except WarrantError as exc:
            raise UsageError(str(exc)) from None
        register = WarrantRegister(vault.store.db)
        if register.get(warrant_id) is not None:
            raise UsageError(f"warrant {warrant_id} is already registered (a warrant id is used once; register a "
                             "renewal under its own reference)")
        warrant = Warrant(warrant_id, authority, officer, targets, start_us, end_us, expires_us, iso(now_us()))
        audit = _audit(vault, args)
        try:
            entry = audit.append({"action": "warrant_add", "operator": operator, "warrant": warrant_id,
                                  "authority": authority, "officer": officer,
                                  "targets": [{"kind": k, "digest": d, "index_kid": indexer.kid} for k, d in targets],
                                  "window": {"from": iso(start_us), "to": iso(end_us)},
                                  "expires": iso(expires_us)})
            with vault.store.transaction():
                register.add(warrant)
        except (AuditError, WarrantError) as exc:
            raise FatalError(str(exc)) from None
    print(f"warrant {warrant_id} registered: {len(targets)} target(s), {iso(start_us)} to {iso(end_us)}, officer "
          f"{officer}, expires {iso(expires_us)} (audit entry #{entry['seq']})", file=sys.stderr)
    return 0


def _cmd_warrant_list(args: argparse.Namespace) -> int:
    operator = _operator(args, "who lists the warrants")
    with _open(args) as vault:
        warrants = WarrantRegister(vault.store.db).all()
        now = now_us()
        try:
            _audit(vault, args).append({"action": "warrant_list", "operator": operator, "count": len(warrants)})
        except AuditError as exc:
            raise FatalError(str(exc)) from None
    for w in warrants:
        print(orjson.dumps({"id": w.id, "state": w.state(now), "authority": w.authority, "officer": w.officer,
                            "targets": len(w.targets), "kinds": sorted({k for k, _ in w.targets}),
                            "window": {"from": iso(w.start_us), "to": iso(w.end_us)},
                            "expires": iso(w.expires_us), "registered": w.created, "revoked": w.revoked,
                            "revoked_by": w.revoked_by}).decode())
    return 0


def _cmd_warrant_revoke(args: argparse.Namespace) -> int:
    warrant_id = reference(args.id, "--id", "the warrant to revoke")
    operator = _operator(args, "who revokes the warrant")
    reason = (args.reason or "").strip()
    if len(reason) > 500 or not reason.isprintable():
        raise UsageError("--reason must be one printable line of at most 500 characters")
    with _open(args) as vault:
        register = WarrantRegister(vault.store.db)
        warrant = register.get(warrant_id)
        if warrant is None:
            raise UsageError(f"warrant {warrant_id} is not registered")
        if warrant.revoked:
            print(f"warrant {warrant_id} was already revoked at {warrant.revoked}", file=sys.stderr)
            return 0
        try:
            entry = _audit(vault, args).append({"action": "warrant_revoke", "operator": operator,
                                                    "warrant": warrant_id, "reason": reason or None})
            with vault.store.transaction():
                register.revoke(warrant, iso(now_us()), operator)
        except AuditError as exc:
            raise FatalError(str(exc)) from None
    print(f"warrant {warrant_id} revoked (audit entry #{entry['seq']})", file=sys.stderr)
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from pipeline.vault.migrate import MigrateError, describe, migrate
    if not args.source or is_postgres(args.source):
        raise UsageError("--from is the SQLite vault file to copy (its keystore: --from-keystore, default <from>.keys)")
    if not is_postgres(args.to):
        raise UsageError("--to must be a postgresql://… URL (an empty vault database), with --to-keystore another")
    if not args.to_keystore or not is_postgres(args.to_keystore):
        raise UsageError("--to-keystore must be a postgresql://… URL: the target's keystore database, apart from --to")
    if not Path(args.source).is_file():
        raise UsageError(f"--from {args.source}: no such file")
    operator = _operator(args, "who runs the migration")
    with open_vault(args.keyring, args.source, args.from_keystore) as source:
        with open_vault(args.keyring, args.to, args.to_keystore, create=True, region=source.store.region) as target:
            try:
                report = migrate(source.store, source.keystore, target.store, target.keystore,  # type: ignore[arg-type]
                                 progress=lambda m: None if args.quiet else print(f"vault migrate: {m}",
                                                                                  file=sys.stderr))
            except (MigrateError, StoreError, KeystoreError) as exc:
                raise FatalError(f"migration not done: {describe(exc)}") from None
            except driver_errors() as exc:
                raise FatalError(f"migration not done: {first_line(exc)}") from None
            copied = {k: v for k, v in report.summary().items() if k != "checks"}
            try:
                entry = _audit(target, args).append({
                    "action": "migrate", "operator": operator, "source": str(source.store.path), "copied": copied})
            except AuditError as exc:
                raise FatalError(f"copied and verified, but not audited: {exc}") from None
    print(f"vault migrate: {report.records:,} records of {report.days} day(s), {report.audit_entries} audit entries, "
          f"{report.warrants} warrant(s) and {report.day_keys} day key(s) copied; verified: "
          f"{'; '.join(report.checks)} (audit entry #{entry['seq']})", file=sys.stderr)
    print(orjson.dumps({**copied, "audit_seq": entry["seq"]}).decode())
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    with _open(args, create=True) as vault:
        doc = {"db": str(vault.store.path), "keystore": str(vault.keystore.path), "region": vault.store.region}
    print(orjson.dumps(doc).decode())
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    with _open(args) as vault:
        counts = vault.store.day_counts()
        destroyed = vault.keystore.destroyed()
        live = set(vault.keystore.days())
        days = [{"day": str(day_date(d)), "records": n,
                 "key": "live" if d in live else "destroyed" if d in destroyed else "missing"}
                for d, n in sorted(counts.items())]
        audit_entries = vault.store.audit_count()
        now = now_us()
        states = [w.state(now) for w in WarrantRegister(vault.store.db).all()]
        doc = {"db": str(vault.store.path), "keystore": str(vault.keystore.path), "region": vault.store.region,
               "records": sum(counts.values()), "days": days, "purged_days": len(destroyed),
               # Unread records are not findable by target: `vault reindex --format …` reads them.
               "unread_records": vault.store.unread_count(),
               "input_formats": sorted({r.label() for r in vault.store.readers().values()}),
               "warrants": {state: states.count(state) for state in ("active", "expired", "revoked")},
               "quarantined_segments": vault.store.quarantined(), "audit_entries": audit_entries,
               "audit_witness": vault.store.meta(WITNESS_META)}
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    return 0


def _cmd_subject_access(args: argparse.Namespace) -> int:
    from pipeline.privacy.requests import InvalidRequest, canonical_subject, check_request_id

    custodian = reference(args.custodian, "--custodian", "the vault custodian who runs it")
    try:
        request_id = check_request_id(args.request_id or "")
    except InvalidRequest as exc:
        raise UsageError(f"--request-id: {exc}") from None
    start_us, end_us = parse_window(args.start, args.end)
    cutoff_us = day_number(retention_cutoff(utc_today(), retention_period(args.retention))) * DAY_US
    if not args.output or args.output == "-":
        raise UsageError("--output FILE is required: the extract is handed to the DPO, never printed")
    parent = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK) or os.path.isdir(args.output):
        # Checked before the vault is searched and the access audited: no audit entry for an extract never written.
        raise FatalError(f"cannot write --output {args.output}: " + (
            "it is a directory" if os.path.isdir(args.output) else "its directory does not exist or is not writable")
            + "; give a file in a directory you can write to")
    with _open(args) as vault:
        region = vault.store.region
        try:
            subject = canonical_subject("msisdn", args.subject or "", region)
        except InvalidRequest as exc:
            raise UsageError(f"--subject: {exc}") from None
        extract, result = subject_access_extract(vault.store, vault.keystore, BlindIndexer(vault.keyring.index_key),
                                                 _audit(vault, args), request_id=request_id, operator=custodian,
                                                 subject=subject, start_us=start_us, end_us=end_us,
                                                 not_before_us=cutoff_us)
    out = open_private_output(args.output)
    try:
        out.write(orjson.dumps(extract, option=orjson.OPT_INDENT_2) + b"\n")
    finally:
        out.close()
    # The custodian's summary: counts only (no subject, no audit position).
    print(f"vault subject-access {request_id}: {len(result.records)} record(s) written to {args.output}"
          + ("" if extract["complete"] else f"; {len(result.integrity_failures)} failed authentication, "
             f"{result.unreadable_count} in purged days (not included)"), file=sys.stderr)
    if result.integrity_failures:
        raise FatalError(f"{len(result.integrity_failures)} stored record(s) failed authentication and are not in "
                         "the extract (marked incomplete); investigate before the DPO relies on it")
    return 0


def _add_subject_access(vsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``cdrpipe vault subject-access``."""
    p = vsub.add_parser(
        "subject-access", help="a subscriber's own calls for their access request (audited; no warrant)",
        description="For a data-subject access or portability request: find the subscriber's calls in "
                    "[--from, --to) as a warrant query would, write the subscriber's own view of them (the other "
                    "party as on an itemised bill, withheld callers withheld, no other party's device or location "
                    "data) to --output (mode 0600) for `cdrpipe privacy export --vault`. Audited with purpose "
                    "subject-access and the request id. Never includes anything about warrants or the audit log.")
    _vault_arguments(p)
    p.add_argument("--request-id", required=True, help="the DPO's request id (as submitted)")
    p.add_argument("--subject", required=True, metavar="NUMBER",
                   help="the subscriber's number, any format (read with the vault's region)")
    p.add_argument("--from", dest="start", required=True, help="window start, ISO-8601 (inclusive)")
    p.add_argument("--to", dest="end", required=True,
                   help="window end, ISO-8601 (exclusive; a date includes that day)")
    p.add_argument("--custodian", default=None,
                   help="id of the vault custodian running it (env CDRPIPE_OPERATOR; required)")
    p.add_argument("--output", required=True, help="the extract file to hand to the DPO (mode 0600)")
    p.add_argument("--audit-key", default=None, help=f"Ed25519 audit key file (env {ENV_AUDIT_KEY})")
    _retention_argument(p)
    p.set_defaults(func=_cmd_subject_access)


# --------------------------------------------------------------------------- parsers

def _vault_arguments(p: argparse.ArgumentParser, *, region: bool = False) -> None:
    p.add_argument("--keyring", default=None,
                   help=f"vault keyring file (env {ENV_VAULT_KEYRING_FILE} or CDRPIPE_VAULT_KEYRING_JSON)")
    p.add_argument("--db", default=None, required=True,
                   help="vault record database: a SQLite file, or postgresql://… (env CDRPIPE_VAULT_DB)")
    p.add_argument("--keystore", default=None,
                   help="day-key store, a separate file or PostgreSQL database (env CDRPIPE_VAULT_KEYSTORE; default "
                        "<db>.keys for a SQLite vault; required with PostgreSQL)")
    if region:
        p.add_argument("--region", default="GB",
                       help="default region for national numbers (env CDRPIPE_REGION; default GB)")


def _audit_arguments(p: argparse.ArgumentParser, *, key: bool = True) -> None:
    """Where a command that writes an audit entry gets its signing key and its witness."""
    if key:
        p.add_argument("--audit-key", default=None,
                       help=f"Ed25519 audit key file to sign the entry (env {ENV_AUDIT_KEY}; default: the vault "
                            "keyring's audit_key)")
    p.add_argument("--witness", default=None,
                   help=f"also write every audit entry here: an append-only FILE, or kafka:TOPIC (env "
                        f"{ENV_AUDIT_WITNESS}; default: the witness this vault already writes to)")
    _witness_kafka_argument(p)


def _witness_kafka_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("-X", action="append", metavar="KEY=VALUE",
                   help="librdkafka setting for a kafka:TOPIC witness, repeatable (e.g. -X security.protocol=SASL_SSL; "
                        "bootstrap servers from -X bootstrap.servers=… or CDRPIPE_BOOTSTRAP_SERVERS)")


def _input_arguments(p: argparse.ArgumentParser) -> None:
    """``--format``/``--mapping`` (as `cdrpipe process` and `run` take them) and ``--retention``."""
    p.add_argument("--format", default=None,
                   help="input format of the raw records, as given to `cdrpipe process`/`run`: jsonl, "
                        "asterisk-csv, freeswitch-json, acc or csv (env CDRPIPE_FORMAT; default: recognise "
                        "each record; mapped csv needs --format csv --mapping)")
    p.add_argument("--mapping", default=None,
                   help="CSV layout TOML, as given to `cdrpipe process` (env CDRPIPE_MAPPING; docs/formats.md)")
    _retention_argument(p)


def _retention_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retention", default=None,
                   help="retention period, e.g. 12mo, 365d, 1y (env CDRPIPE_VAULT_RETENTION; default 12mo): "
                        "records whose call start is past it are neither stored nor returned")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `cdrpipe vault` and its actions."""
    vault = sub.add_parser("vault", help="the retention vault: ingest, query under warrant, purge, audit",
                           description="Keep every raw call record sealed for the retention period; search it "
                                       "only under a warrant, with every access in a hash-chained audit log.")
    vsub = action_group(vault, "vault_command")

    p = vsub.add_parser("ingest", help="store the records of a retention.jsonl file (idempotent)",
                        description="Open each sealed segment of --input (DIR/retention.jsonl of `cdrpipe process`; "
                                    "DLQ lines are accepted too), index and re-encrypt its records per day. A record "
                                    "id is stored once however often it arrives.")
    _vault_arguments(p, region=True)
    _input_arguments(p)
    p.add_argument("--input", required=True, help="JSONL file of retention envelopes, or - for stdin")
    p.add_argument("--batch-bytes", type=int, default=DEFAULT_BATCH_BYTES,
                   help="envelope bytes per transaction (default 16 MiB)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_cmd_ingest)

    p = vsub.add_parser("sink", help="consume cdr.retention into the vault (read_committed)",
                        description="Consume retention envelopes from Kafka into the vault. Offsets are committed "
                                    "after each batch is stored; re-delivered records are stored once. SIGTERM "
                                    "finishes the batch in flight.")
    _vault_arguments(p, region=True)
    _input_arguments(p)
    p.add_argument("--bootstrap-servers", default=None, help="Kafka bootstrap servers (env CDRPIPE_BOOTSTRAP_SERVERS)")
    p.add_argument("--topic", default=DEFAULT_TOPIC,
                   help=f"topic to consume (env CDRPIPE_VAULT_TOPIC; default {DEFAULT_TOPIC})")
    p.add_argument("--group", default=DEFAULT_GROUP,
                   help=f"consumer group (env CDRPIPE_VAULT_GROUP; default {DEFAULT_GROUP})")
    p.add_argument("-X", action="append", metavar="KEY=VALUE",
                   help="librdkafka client setting, repeatable (e.g. -X security.protocol=SASL_SSL)")
    p.add_argument("--max-messages", type=int, default=64, help="segments per batch (default 64)")
    p.add_argument("--idle-exit", type=float, default=None,
                   help="stop after this many seconds without messages (default: run until SIGTERM)")
    add_metrics_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    p.set_defaults(func=_cmd_sink)

    p = vsub.add_parser("query", help="the records where a target is a party (inside a registered warrant's scope)",
                        description="Return, in time order, the raw records in [--from, --to) where --target is a "
                                    "party (cli or dialled for msisdn; imsi; imei), given in any format, whatever "
                                    "input format the record arrived in. Answered only inside the scope of an "
                                    "active registered warrant (`vault warrant add`) that names --officer and "
                                    "--target and covers the window; the window may not reach before the "
                                    "retention cut-off. Every query, answered or refused, is written to the "
                                    "audit log before any record is delivered. A bare --to date includes that "
                                    "whole day.")
    _vault_arguments(p, region=True)
    p.add_argument("--target", default=None, help="the identifier, in any format (never logged or audited in clear)")
    p.add_argument("--unparsed", action="store_true",
                   help="refused: records no input format could read cannot be matched to a warrant's targets "
                        "(read them with `vault reindex --format …`)")
    p.add_argument("--kind", default="msisdn", help="msisdn (default), imsi or imei")
    p.add_argument("--from", dest="start", default=None, help="window start, ISO-8601 (inclusive)")
    p.add_argument("--to", dest="end", default=None, help="window end, ISO-8601 (exclusive; a date includes that day)")
    p.add_argument("--warrant", default=None, help="id of the registered warrant the query runs under (required)")
    p.add_argument("--officer", default=None, help="id of the authorised officer running the query (required)")
    p.add_argument("--format", default="jsonl", help="jsonl (default), csv or etsi-xml")
    _retention_argument(p)
    p.add_argument("--output", default=None, help="write here (mode 0600) instead of stdout")
    p.add_argument("--audit-key", default=None,
                   help=f"Ed25519 audit key file to sign the audit entry (env {ENV_AUDIT_KEY}; default: the "
                        "vault keyring's optional audit_key)")
    _audit_arguments(p, key=False)
    p.add_argument("--authorised-org", default=None,
                   help="etsi-xml: authorisedOrganisationID of the requester (env CDRPIPE_LI_ORG)")
    p.add_argument("--csp-id", default="cdrpipe",
                   help="etsi-xml: cSPID, the answering provider (env CDRPIPE_CSP_ID)")
    p.add_argument("--request-number", default=None, help="etsi-xml: requestNumber (default: the warrant reference)")
    p.add_argument("--country", default=None, help="etsi-xml: countryCode (default: the vault's region)")
    p.set_defaults(func=_cmd_query)

    p = vsub.add_parser("purge", help="drop expired days and destroy their keys (crypto-shredding)",
                        description="Drop every day before the cut-off and destroy its day key, so no copy of the "
                                    "database (backups included) can be read for those days. Default cut-off: "
                                    "the retention period (env CDRPIPE_VAULT_RETENTION, default 12mo) — a day is "
                                    "purged once the period beginning with that day has ended. Audited.")
    _vault_arguments(p)
    p.add_argument("--before", default=None, help="purge days before this date (YYYY-MM-DD)")
    p.add_argument("--retention", default=None, help="purge days whose period has ended, e.g. 12mo, 365d, 1y")
    p.add_argument("--operator", default=None, help="who runs the purge (env CDRPIPE_OPERATOR; default: OS user)")
    p.add_argument("--audit-key", default=None, help=f"Ed25519 audit key file (env {ENV_AUDIT_KEY})")
    _audit_arguments(p, key=False)
    p.add_argument("--allow-early", action="store_true",
                   help="allow a cut-off that destroys records younger than 12 months")
    p.add_argument("--dry-run", action="store_true", help="list the days that would be purged")
    p.set_defaults(func=_cmd_purge)

    a = vsub.add_parser("audit", help="verify, export or sign the vault's audit log")
    asub = action_group(a, "audit_command")
    p = asub.add_parser("verify", help="exit 0 if the chain is intact, else name the first bad entry",
                        description="Check every entry's hash, link, number and (with --public-key) signature, and "
                                    "the keystore's anchor. Exit 0 when intact, 1 naming the first bad entry.")
    p.add_argument("--db", default=None, required=True,
                   help="vault record database (env CDRPIPE_VAULT_DB)")
    p.add_argument("--keystore", default=None,
                   help="keystore holding the anchor (default <db>.keys; no keyring needed)")
    p.add_argument("--public-key", default=None,
                   help=f"require every entry signed by this Ed25519 key: base64 or a file (env {ENV_AUDIT_PUBLIC_KEY})")
    p.add_argument("--signed-from", type=int, default=None,
                   help="require a signature on every entry from this one on (default: from the first signed one)")
    p.add_argument("--witness", default=None,
                   help=f"compare the log with its witness: FILE or kafka:TOPIC (env {ENV_AUDIT_WITNESS})")
    _witness_kafka_argument(p)
    p.set_defaults(func=_cmd_audit_verify)
    p = asub.add_parser("export", help="print every audit entry as JSONL (to ship to WORM storage)")
    p.add_argument("--db", default=None, required=True,
                   help="vault record database (env CDRPIPE_VAULT_DB)")
    p.set_defaults(func=_cmd_audit_export)
    p = asub.add_parser("check-export", help="check that a delivery holds exactly what a query's entry disclosed",
                        description="Read the record ids of a delivery (JSONL, CSV or ETSI XML) and compare their "
                                    "digest with the disclosed.sha256 of audit entry --seq. Exit 0 if they match.")
    p.add_argument("--db", default=None, required=True,
                   help="vault record database (env CDRPIPE_VAULT_DB)")
    p.add_argument("--seq", type=int, required=True, help="the query's audit entry number")
    p.add_argument("--file", required=True, help="the delivery to check")
    p.set_defaults(func=_cmd_audit_check_export)
    p = asub.add_parser("keygen", help="write a new Ed25519 audit key file and print its public key")
    p.add_argument("--out", required=True, help="file to write (mode 0600)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=_cmd_audit_keygen)
    p = asub.add_parser("acknowledge-gap", help="record that audit entries were lost (after a database restore)",
                        description="Append an entry that records the entries lost since the keystore's anchor, so "
                                    "queries and purges can resume. The loss stays visible in the log.")
    _vault_arguments(p)
    p.add_argument("--officer", default=None, help="who records the loss (required)")
    p.add_argument("--reason", default=None, help="what happened (required)")
    p.add_argument("--audit-key", default=None, help=f"Ed25519 audit key file (env {ENV_AUDIT_KEY})")
    _audit_arguments(p, key=False)
    p.set_defaults(func=_cmd_audit_gap)

    _add_subject_access(vsub)

    p = vsub.add_parser("reindex", help="read again, with --format/--mapping, records filed by sealed_at",
                        description="Decrypt every record the vault could not date or index (filed under the time "
                                    "its segment was sealed), read it with --format/--mapping (else recognise it), "
                                    "and file it again by call start, indexed. Raw bytes are unchanged; records "
                                    "past retention are removed. Audited.")
    _vault_arguments(p)
    _input_arguments(p)
    p.add_argument("--operator", default=None, help="who runs it (env CDRPIPE_OPERATOR; default: OS user)")
    _audit_arguments(p)
    p.set_defaults(func=_cmd_reindex)

    w = vsub.add_parser("warrant", help="register, list and revoke the warrants queries run under",
                        description="A query is answered only for targets and windows inside an active, unexpired "
                                    "registered warrant that names the querying officer. Every action is audited.")
    wsub = action_group(w, "warrant_command")
    p = wsub.add_parser("add", help="register a warrant: authority, officer, targets, window, expiry")
    _vault_arguments(p)
    p.add_argument("--id", default=None, help="the warrant's reference (required; used once)")
    p.add_argument("--authority", default=None, help="who issued or approved it (required)")
    p.add_argument("--officer", default=None, help="the one officer it authorises to query (required)")
    p.add_argument("--targets", default=None,
                   help="comma-separated identifiers, any format; prefix imsi: or imei: for those kinds (required; "
                        "stored only as keyed digests)")
    p.add_argument("--from", dest="start", default=None, help="first instant of communications covered, ISO-8601")
    p.add_argument("--to", dest="end", default=None, help="end of the window, ISO-8601 (a date includes that day)")
    p.add_argument("--expires", default=None, help="when the authorisation ends, ISO-8601 (a date includes that day)")
    p.add_argument("--region", default=None,
                   help="region for national numbers in --targets (env CDRPIPE_REGION; default: the vault's)")
    p.add_argument("--operator", default=None, help="who registers it (env CDRPIPE_OPERATOR; default: OS user)")
    _audit_arguments(p)
    p.set_defaults(func=_cmd_warrant_add)
    p = wsub.add_parser("list", help="every registered warrant and its state (no targets shown)")
    _vault_arguments(p)
    p.add_argument("--operator", default=None, help="who lists them (env CDRPIPE_OPERATOR; default: OS user)")
    _audit_arguments(p)
    p.set_defaults(func=_cmd_warrant_list)
    p = wsub.add_parser("revoke", help="revoke a warrant: no query runs under it again")
    _vault_arguments(p)
    p.add_argument("--id", default=None, help="the warrant's reference (required)")
    p.add_argument("--reason", default=None, help="why (optional, one line)")
    p.add_argument("--operator", default=None, help="who revokes it (env CDRPIPE_OPERATOR; default: OS user)")
    _audit_arguments(p)
    p.set_defaults(func=_cmd_warrant_revoke)

    p = vsub.add_parser("status", help="records per day, key state, quarantine and audit size (no secrets)")
    _vault_arguments(p)
    p.set_defaults(func=_cmd_status)

    p = vsub.add_parser("migrate", help="copy a SQLite vault into PostgreSQL, audit chain included, and verify it",
                        description="Copy --from (a SQLite vault and its keystore) into an empty PostgreSQL vault "
                                    "(--to, --to-keystore) byte for byte: records, index, day keys and tombstones, "
                                    "warrants, readers, quarantine and the audit log with its anchor. Then read the "
                                    "target back and compare everything; only a verified copy gets its `migrate` "
                                    "audit entry. The source is not changed.")
    p.add_argument("--keyring", default=None,
                   help=f"vault keyring file (env {ENV_VAULT_KEYRING_FILE} or CDRPIPE_VAULT_KEYRING_JSON)")
    p.add_argument("--from", dest="source", required=True, help="the SQLite vault database to copy")
    p.add_argument("--from-keystore", default=None, help="its keystore (default <from>.keys)")
    p.add_argument("--to", required=True, help="postgresql://… of the empty target vault database")
    p.add_argument("--to-keystore", default=None, help="postgresql://… of the target keystore database")
    p.add_argument("--operator", default=None, help="who runs it (env CDRPIPE_OPERATOR; default: OS user)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _audit_arguments(p)
    p.set_defaults(func=_cmd_migrate)

    p = vsub.add_parser("init", help="create an empty vault (PostgreSQL: its schemas, as the owner role)",
                        description="Create the vault's record store and keystore for this keyring and region, "
                                    "and nothing else. On PostgreSQL run it once as the schema owner role, then "
                                    "apply deploy/postgres/grants-*.sql; ingest, officer, auditor and purge roles "
                                    "never create anything.")
    _vault_arguments(p, region=True)
    p.set_defaults(func=_cmd_init)
