"""`cdrpipe privacy`: ``submit``, ``status``/``extend``/``close`` (the case register),
``export`` (access and portability), ``worker`` and ``suppressions`` (the active suppressions).

Each action parses its flags and calls the domain (:mod:`pipeline.privacy`). faust is imported
only when ``worker`` runs, so ``cdrpipe --help`` and ``submit`` stay quick.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date, datetime, timezone

from pipeline.commands.common import add_app_arguments, open_private_output
from pipeline.core.tokenise import DEFAULT_TOKEN_BITS, months_between
from pipeline.errors import FatalError, UsageError
from pipeline.kafka_config import ENV_BOOTSTRAP, parse_x_options, require_bootstrap
from pipeline.keys import KeyringError, load_worker_keyring
from pipeline.privacy import analytics_source
from pipeline.privacy.register import ENV_REGISTER, CaseRegister
from pipeline.privacy.requests import (REQUEST_TYPES, InvalidRequest, SubjectTokeniser, canonical_subject,
                                       check_request_id, make_request, submit)
from pipeline.privacy.subject_export import FORMATS, build_export, load_extract, write_export
from pipeline.topics import ANALYTICS, ERASURES, REQUESTS, SUPPRESSIONS
from pipeline.vault.window import iso, parse_window

DEFAULT_APP_ID = "cdrpipe-privacy"
DEFAULT_WEB_PORT = 6067


def _cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.privacy.worker import run_worker_command

    return run_worker_command(args)


def _cmd_suppressions(args: argparse.Namespace) -> int:
    """Write the active suppressions as JSON lines (the file runner's --suppressions format)."""
    from pipeline.privacy.follower import load_active_tokens

    bootstrap = require_bootstrap(args.bootstrap_servers)
    if args.output != "-":  # before reading the topic: a wrong path fails at once
        parent = os.path.dirname(os.path.abspath(args.output))
        if os.path.isdir(args.output) or not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise FatalError(f"cannot write --output {args.output}: " + (
                "it is a directory" if os.path.isdir(args.output) else "its directory does not exist or is not "
                "writable") + "; give a file in a directory you can write to")
    tokens = load_active_tokens(bootstrap, args.topic_prefix + args.topic, parse_x_options(args.X), args.timeout)
    lines = "".join(json.dumps({"token": t, "active": True}) + "\n" for t in sorted(tokens))
    if args.output == "-":
        sys.stdout.write(lines)
    else:  # the objectors' tokens: readable by the owner only (mode 0600), like the case register
        try:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(lines)
        except OSError as exc:
            raise FatalError(f"cannot write --output {args.output}: {exc.strerror}; give a file in a directory you "
                             "can write to") from None
    print(f"{len(tokens)} active suppressions from {args.topic_prefix + args.topic}", file=sys.stderr)
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    bootstrap = require_bootstrap(args.bootstrap_servers)
    kind, value = ("msisdn", args.msisdn) if args.msisdn is not None else ("imsi", args.imsi)
    received = None
    if args.received:
        try:
            received = datetime.fromisoformat(args.received.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError("--received: expected an ISO-8601 time, e.g. 2026-03-01T09:30:00Z") from None
        if received.tzinfo is None:
            raise UsageError("--received: give the time zone (e.g. a trailing Z for UTC)")
    try:
        doc = make_request(args.type, kind, value, request_id=args.request_id, received=received,
                           region=args.region)
    except InvalidRequest as exc:
        raise UsageError(str(exc)) from None
    topic = args.topic_prefix + args.topic
    partition, offset = submit({"bootstrap.servers": bootstrap, **parse_x_options(args.X)}, topic, doc, args.timeout)
    # The receipt names the request, never the subject.
    receipt = {"request_id": doc["request_id"], "type": doc["type"], "subject_kind": kind,
               "received": doc["received"], "due": doc["due"], "topic": topic, "partition": partition,
               "offset": offset}
    print(json.dumps(receipt))
    if args.register:  # after the receipt is printed: the request is on its way whatever happens here
        try:
            CaseRegister(args.register).record_received(receipt)
        except OSError as exc:
            raise FatalError(f"the request was sent (receipt above) but the case register {args.register} could "
                             f"not be written ({exc.strerror}): add the receipt to it by hand") from None
    return 0


def _add_submit(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "submit", help="send one data-subject request to privacy.requests",
        description=("Validate a data-subject request and produce it to privacy.requests. The raw subject "
                     "(number or IMSI) goes ONLY into privacy.requests, which only the privacy app may read "
                     "(restrict it with ACLs; it keeps 30 days); everything downstream carries tokens. "
                     "Prints a receipt with the request id, never the subject."))
    p.add_argument("--bootstrap-servers", default=None, help="Kafka bootstrap servers (env CDRPIPE_BOOTSTRAP_SERVERS)")
    p.add_argument("--type", required=True, choices=REQUEST_TYPES,
                   help="objection (Art. 21), restriction (Art. 18), restriction_lifted, erasure (Art. 17), "
                        "access (Art. 15), portability (Art. 20)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--msisdn", metavar="NUMBER", help="the subscriber's number, any format (normalised to E.164)")
    who.add_argument("--imsi", metavar="IMSI", help="the subscriber's IMSI")
    p.add_argument("--request-id", default=None,
                   help="your case reference (opaque, not number-shaped; default pr-YYYYMMDD-<random>)")
    p.add_argument("--received", default=None,
                   help="when the request was received, ISO-8601 with zone (default now)")
    p.add_argument("--region", default="GB",
                   help="region for national-format numbers (env CDRPIPE_REGION; default GB)")
    p.add_argument("--register", default=None,
                   help="the DPO's case register (JSON lines, mode 0600) to record the receipt and due date in, "
                        "for `cdrpipe privacy status` (env CDRPIPE_PRIVACY_REGISTER)")
    p.add_argument("--topic", default=REQUESTS, help=f"requests topic (default {REQUESTS})")
    p.add_argument("--topic-prefix", default="", help="prepend this to the topic name")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker's ack")
    p.add_argument("-X", action="append", metavar="KEY=VALUE",
                   help="librdkafka client setting, repeatable (e.g. -X security.protocol=SASL_SSL)")
    p.set_defaults(func=_cmd_submit)


def _register(args: argparse.Namespace) -> CaseRegister:
    if not args.register:
        raise UsageError(f"no case register given: pass --register FILE or set {ENV_REGISTER}")
    return CaseRegister(args.register)


def _today(args: argparse.Namespace) -> date:
    if not getattr(args, "today", None):
        return datetime.now(timezone.utc).date()
    try:
        return date.fromisoformat(args.today)
    except ValueError:
        raise UsageError("--today: expected a date, YYYY-MM-DD") from None


def _request_id(value: str) -> str:
    try:
        return check_request_id(value)
    except InvalidRequest as exc:
        raise UsageError(str(exc)) from None


def _cmd_status(args: argparse.Namespace) -> int:
    """Open requests, most urgent first; request ids only, never subjects."""
    today = _today(args)
    register = _register(args)
    if not register.path.is_file():  # a mistyped path must not look like "nothing open"
        raise UsageError(f"no case register at {register.path}: check --register (it is created by "
                         "`cdrpipe privacy submit --register`)")
    rows = register.by_urgency(answered=args.all)
    if args.json:
        for c in rows:
            print(json.dumps({"request_id": c.request_id, "type": c.type, "subject_kind": c.subject_kind,
                              "received": c.received, "due": c.due, "extended_months": c.extended_months,
                              "days_left": c.days_left(today), "state": c.state(today)}))
        return 0
    print(f"{'request id':<32} {'type':<18} {'received':<10} {'due':<10} {'days left':>9}  state")
    for c in rows:
        left = c.days_left(today)
        state = c.state(today) + (f" (extended {c.extended_months} mo)" if c.extended_months else "")
        print(f"{c.request_id:<32} {c.type or '?':<18} {(c.received or '?')[:10]:<10} {c.due or '?':<10} "
              f"{'' if left is None else left:>9}  {state}")
    overdue = sum(1 for c in rows if c.state(today) == "overdue")
    print(f"{sum(1 for c in rows if not c.answered)} open, {overdue} overdue (as of {today})", file=sys.stderr)
    return 0


def _cmd_extend(args: argparse.Namespace) -> int:
    case = _register(args).record_extended(_request_id(args.request_id), args.months, _today(args))
    print(json.dumps({"request_id": case.request_id, "extended_months": case.extended_months, "due": case.due}))
    return 0


def _cmd_close(args: argparse.Namespace) -> int:
    _register(args).close(_request_id(args.request_id), force=args.force)
    return 0


def _register_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--register", default=None,
                   help=f"the DPO's case register, a JSON-lines file (env {ENV_REGISTER})")


def _add_register_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="open requests and their due dates (by request id; never a subject)",
                       description="List the requests of the case register that are not answered yet, most urgent "
                                   "first, with the Art. 12(3) due date and the days left; overdue ones say so.")
    _register_argument(p)
    p.add_argument("--all", action="store_true", help="answered requests too")
    p.add_argument("--json", action="store_true", help="one JSON object per request instead of a table")
    p.add_argument("--today", default=None, help="compute days left as of this date (default: today, UTC)")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("extend", help="extend a request's deadline by one or two months (Art. 12(3))",
                       description="Record an extension of the answer period by up to two further months, where "
                                   "the complexity or number of requests makes it necessary. Allowed only before "
                                   "the first month ends; tell the subject, with the reasons, at the same time.")
    _register_argument(p)
    p.add_argument("--request-id", required=True, help="the request to extend")
    p.add_argument("--months", type=int, choices=(1, 2), required=True, help="further months, in all at most 2")
    p.add_argument("--today", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_extend)

    p = sub.add_parser("close", help="record that a request was answered (objection, restriction, erasure)",
                       description="Record that the subject was told what was done. Access and portability "
                                   "requests are recorded by `cdrpipe privacy export` itself.")
    _register_argument(p)
    p.add_argument("--request-id", required=True, help="the request answered")
    p.add_argument("--force", action="store_true", help="also close an access or portability request")
    p.set_defaults(func=_cmd_close)


def _cmd_export(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}")
    try:
        request_id = check_request_id(args.request_id)
        subject = canonical_subject("msisdn", args.subject, args.region)
    except InvalidRequest as exc:
        raise UsageError(str(exc)) from None
    start_us, end_us = parse_window(args.start, args.end)
    window = {"from": iso(start_us), "to": iso(end_us)}
    bootstrap = args.bootstrap_servers
    if bool(bootstrap) == bool(args.analytics):
        raise UsageError(f"give the analytics source: --bootstrap-servers (or {ENV_BOOTSTRAP}) to read "
                         f"{args.topic}, or --analytics FILE..., not both")
    if (args.vault is None) == (not args.without_vault):
        raise UsageError("give --vault FILE (the custodian's `cdrpipe vault subject-access` extract), or "
                         "--without-vault to export analytics only (the export then says so)")
    register = CaseRegister(args.register) if args.register else None
    request_type = register.access_request(request_id).type if register is not None else None
    extract = load_extract(args.vault, request_id, subject, window) if args.vault else None
    try:
        keyring = load_worker_keyring(args.keyring)
    except KeyringError as exc:
        raise FatalError(str(exc)) from None
    months = months_between(datetime.fromtimestamp(start_us / 1e6, timezone.utc),
                            datetime.fromtimestamp(end_us / 1e6, timezone.utc))
    tokens = set(SubjectTokeniser(keyring, args.region, args.token_bits).tokens("msisdn", subject, months))
    if args.analytics:
        records = analytics_source.from_files(args.analytics, tokens, start_us, end_us)
        source = "files"
    else:
        topic = args.topic_prefix + args.topic
        records = analytics_source.from_kafka({"bootstrap.servers": bootstrap, **parse_x_options(args.X)}, topic, tokens,
                                              start_us, end_us, args.timeout)
        source = f"kafka:{topic}"
    doc = build_export(request_id=request_id, request_type=request_type, subject=subject, window=window,
                       analytics=records, subject_tokens=tokens, analytics_source=source, extract=extract)
    try:
        out = open_private_output(args.output)
    except OSError as exc:
        raise FatalError(f"--output {args.output}: {exc.strerror}") from None
    try:
        write_export(doc, args.format, out)
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    counts = {"analytics": doc["sources"]["analytics"]["records"], "retained": doc["sources"]["retained"]["records"]}
    if register is not None:
        register.record_answered(request_id, "export", counts)
    # Counts and the request id only: the subject is in the export, never on the terminal or in a log.
    print(json.dumps({"request_id": request_id, "format": args.format, "output": args.output, **counts}),
          file=sys.stderr if args.output == "-" else sys.stdout)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "export", help="a subscriber's own records for an access or portability request (JSON or CSV)",
        description="Gather what cdrpipe holds about one subscriber in [--from, --to): their analytics records "
                    "(cdr.analytics, read_committed, or --analytics files; their tokens shown as their number, "
                    "the other party as a token) and their retained calls (--vault: the extract of `cdrpipe "
                    "vault subject-access`, made by the vault's custodian). Withheld callers stay withheld. "
                    "Nothing about law-enforcement access is ever included. The file is created mode 0600.")
    p.add_argument("--request-id", required=True, help="the access or portability request this answers")
    p.add_argument("--subject", required=True, metavar="NUMBER", help="the subscriber's number, any format")
    p.add_argument("--keyring", default=None,
                   help="worker keyring, to compute the subject's tokens (env CDRPIPE_KEYRING or "
                        "CDRPIPE_WORKER_KEYRING_JSON)")
    p.add_argument("--from", dest="start", required=True, help="window start, ISO-8601 (inclusive)")
    p.add_argument("--to", dest="end", required=True, help="window end, ISO-8601 (exclusive; a date includes that day)")
    p.add_argument("--output", required=True, help="file to write (mode 0600), or - for stdout")
    p.add_argument("--format", default="json", help="json (default) or csv")
    p.add_argument("--analytics", nargs="+", metavar="FILE", default=None,
                   help="analytics JSONL files instead of Kafka (analytics.jsonl of `cdrpipe process`)")
    p.add_argument("--vault", default=None, metavar="FILE", help="the extract of `cdrpipe vault subject-access`")
    p.add_argument("--without-vault", action="store_true",
                   help="export analytics only (the vault extract is not available); the export says so")
    p.add_argument("--register", default=None,
                   help=f"case register: check the request and record it answered (env {ENV_REGISTER})")
    p.add_argument("--region", default="GB",
                   help="region for national-format numbers, as the pipeline's (env CDRPIPE_REGION; default GB)")
    p.add_argument("--token-bits", type=int, default=DEFAULT_TOKEN_BITS,
                   help=f"token length in bits, as the pipeline's (default {DEFAULT_TOKEN_BITS})")
    p.add_argument("--bootstrap-servers", default=None, help=f"Kafka bootstrap servers (env {ENV_BOOTSTRAP})")
    p.add_argument("--topic", default=ANALYTICS, help=f"analytics topic (default {ANALYTICS})")
    p.add_argument("--topic-prefix", default="", help="prepend this to the topic name")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to read the topic to its end")
    p.add_argument("-X", action="append", metavar="KEY=VALUE", help="librdkafka client setting, repeatable")
    p.set_defaults(func=_cmd_export)


def _add_worker(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "worker", help="run the privacy app (faust): requests -> suppressions and erasure notices",
        description=("Read subject requests from privacy.requests (the only reader of raw subjects), tokenise "
                     "them with the worker keyring, keep each subscriber's suppression state in a "
                     "changelog-backed table and publish it to the compacted privacy.suppressions (keyed by "
                     "token; a lifted restriction is published as active=false). Erasure requests also "
                     "publish a notice to privacy.erasures. Serves /health and /metrics; SIGTERM stops "
                     "cleanly."))
    add_app_arguments(p, app_id=DEFAULT_APP_ID, web_port=DEFAULT_WEB_PORT)
    p.add_argument("--keyring", default=None,
                   help="worker keyring (env CDRPIPE_KEYRING or CDRPIPE_WORKER_KEYRING_JSON)")
    p.add_argument("--region", default="GB",
                   help="region for national-format numbers, as the pipeline's (env CDRPIPE_REGION; default GB)")
    p.add_argument("--token-bits", type=int, default=DEFAULT_TOKEN_BITS,
                   help=f"token length in bits, as the pipeline's (default {DEFAULT_TOKEN_BITS})")
    p.add_argument("--requests-topic", default=None, help=f"default {REQUESTS} (after --topic-prefix)")
    p.add_argument("--suppressions-topic", default=None, help=f"default {SUPPRESSIONS}")
    p.add_argument("--erasures-topic", default=None, help=f"default {ERASURES}")
    p.set_defaults(func=_cmd_worker)


def _add_suppressions(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    e = sub.add_parser("suppressions", help="export the active suppressions as JSON lines",
                       description=("Read the compacted privacy.suppressions topic to its end and write the "
                                    "active tokens as JSON lines, the format of `cdrpipe process --suppressions`."))
    e.add_argument("--bootstrap-servers", default=None, help=f"Kafka bootstrap servers (env {ENV_BOOTSTRAP})")
    e.add_argument("--topic", default=SUPPRESSIONS, help=f"default {SUPPRESSIONS}")
    e.add_argument("--topic-prefix", default="", help="prepend this to the topic name")
    e.add_argument("--output", default="-", help="file to write (default - for stdout)")
    e.add_argument("--timeout", type=float, default=30.0, help="seconds to read the topic to its end")
    e.add_argument("-X", action="append", metavar="KEY=VALUE", help="librdkafka client setting, repeatable")
    e.set_defaults(func=_cmd_suppressions)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``cdrpipe privacy submit|status|extend|close|export|worker|suppressions``."""
    p = subparsers.add_parser("privacy", help="subject rights: submit requests, track them, export, run the privacy app",
                              description="Data-subject requests (GDPR Art. 15, 17, 18, 20, 21) for the CDR pipeline.")
    sub = p.add_subparsers(dest="privacy_command", metavar="ACTION", required=True)
    _add_submit(sub)
    _add_register_commands(sub)
    _add_export(sub)
    _add_worker(sub)
    _add_suppressions(sub)
