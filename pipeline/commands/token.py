"""`cdrpipe token`: the token of one value under the worker keyring (to answer subject requests)."""
from __future__ import annotations

import argparse

from pipeline.errors import FatalError, UsageError
from pipeline.keys import (ENV_KEYRING_FILE, ENV_WORKER_KEYRING_JSON, KeyringError, imei_problem, load_worker_keyring,
                           token_value_problem)


def _cmd_token(args: argparse.Namespace) -> int:
    from pipeline.core.normalise import normalise_one
    from pipeline.core.tokenise import KINDS, MONTH, Tokeniser
    if args.kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}")
    if args.month is not None and (args.kind == "record" or not MONTH.match(args.month)):
        raise UsageError("--month takes YYYY-MM (the month a token:<kind>:monthly policy wrote), and not with "
                         "--kind record")
    try:
        keyring = load_worker_keyring(args.keyring)
        if args.kid:
            keyring.key(args.kid)
    except KeyringError as exc:
        raise FatalError(str(exc)) from None
    try:
        canonical = normalise_one(args.kind, args.value, region=args.region)
    except ValueError as exc:  # an unknown --region
        raise UsageError(str(exc)) from None
    if canonical is None and args.kind == "record":
        raise UsageError("a record id is 1-128 characters of A-Z a-z 0-9 . _ : / @ + - and not a bare number; "
                         "the pipeline refuses others, so they have no record_ref (value not shown)")
    if canonical is None:
        raise UsageError(f"the value cannot be normalised as {args.kind} (value not shown)")
    if not args.allow_invalid:
        problem = token_value_problem(args.kind, canonical, args.region)
        if problem is None and args.kind == "imei":
            problem = imei_problem(args.value)
        if problem:
            form = ", give the number in international form (+CC…)" if args.kind == "msisdn" else ""
            raise UsageError(f"the value is not a valid {args.kind}: {problem} (value not shown). Check it{form}, or "
                             "pass --allow-invalid to tokenise it as written")
    print(Tokeniser(keyring, kid=args.kid).token_one(args.kind, canonical, args.month))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `cdrpipe token`."""
    tok = sub.add_parser("token", help="print the token of one value (to answer subject requests)",
                         description="Normalise VALUE as KIND and print its token under the current key.")
    tok.add_argument("--keyring", default=None, help=f"worker keyring (env {ENV_KEYRING_FILE} or {ENV_WORKER_KEYRING_JSON})")
    tok.add_argument("--kind", default="msisdn",
                     help="msisdn, imsi, imei, ip, account, or record (a record id's record_ref, as the DLQ, "
                          "envelopes, vault deliveries and analytics' record_id carry it); default msisdn")
    tok.add_argument("--month", default=None, metavar="YYYY-MM",
                     help="the token a token:<kind>:monthly policy wrote for records that started in this month "
                          "(UTC); default: the stable token")
    tok.add_argument("--region", default="GB", help="default region for national numbers (env CDRPIPE_REGION; default GB)")
    tok.add_argument("--kid", default=None,
                     help="token under this older key id (data tokenised before a rotation); default: current key")
    tok.add_argument("--allow-invalid", action="store_true",
                     help="tokenise a value that is not a valid identifier of --kind as written (e.g. a number "
                          "libphonenumber does not know), instead of refusing it")
    tok.add_argument("value", help="the identifier, in any format")
    tok.set_defaults(func=_cmd_token)
