"""`cdrpipe keys generate|rotate|add-record-key`: write and rotate keyrings (mode 0600)."""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from pipeline.errors import FatalError, UsageError
from pipeline.key_permissions import insecure_key_file
from pipeline.keys import (AUDIT_PUBLIC_KEY, VAULT_KEYRING, WORKER_KEYRING, KeyringError, generate, load_worker_keyring,
                           pair_record_key, rotate, write_private_json)


def _why(exc: OSError) -> str:
    """An OSError in words, for a one-line message ("a part of the path is a file" for ENOTDIR)."""
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a directory"
    return exc.strerror or type(exc).__name__


def _cmd_generate(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    targets = [out / WORKER_KEYRING, out / VAULT_KEYRING]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.force:
        raise UsageError(f"{', '.join(existing)} already exist; refusing to overwrite keys "
                         "(that would make old tokens and the vault unreadable). Use --force to replace them.")
    from pipeline.vault.audit import AuditSigner  # the vault imports this module: here, not above
    worker, vault = generate()
    # The audit signing key travels with the vault keyring (entries are signed by default); its
    # public half goes to the auditor, who needs nothing else to verify the log.
    signer = AuditSigner.generate()
    public = out / AUDIT_PUBLIC_KEY
    try:
        write_private_json(targets[0], worker.to_json())
        write_private_json(targets[1], {**vault.to_json(), "audit_key": signer.to_json()})
        public.write_text(signer.public_b64() + "\n")
    except OSError as exc:
        raise FatalError(f"cannot write the keyrings to --dir {out}: {_why(exc)}; give a directory you can write "
                         "to (it is created if missing)") from None
    print(f"wrote {targets[0]} (token key {worker.current.kid}; give to workers)", file=sys.stderr)
    print(f"wrote {targets[1]} (vault key {vault.vault_kid} and audit signing key {signer.kid}; vault only, keep "
          "offline)", file=sys.stderr)
    print(f"wrote {public} (audit public key; give to the auditor: `vault audit verify --public-key {public}`)",
          file=sys.stderr)
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    path = Path(args.keyring)
    try:
        keyring = load_worker_keyring(path)
    except KeyringError as exc:
        raise FatalError(str(exc)) from None
    rotated = rotate(keyring)
    try:
        write_private_json(path, rotated.to_json())
    except OSError as exc:
        raise FatalError(f"cannot write {path}: {_why(exc)}; the keyring is unchanged (its directory must be "
                         "writable: the new keyring replaces it atomically)") from None
    print(f"{path}: new current token key {rotated.current.kid}; previous: "
          f"{', '.join(k.kid for k in rotated.token_keys[1:])}", file=sys.stderr)
    return 0


def _cmd_add_record_key(args: argparse.Namespace) -> int:
    import json
    paths = Path(args.keyring), Path(args.vault_keyring)
    for path in paths:
        refused = insecure_key_file(path)
        if refused:
            raise FatalError(refused)
    try:
        docs = [json.loads(p.read_text()) for p in paths]
        worker, vault, what = pair_record_key(*docs)
    except OSError as exc:
        raise FatalError(f"cannot read {exc.filename}: {_why(exc)}") from None
    except ValueError:  # the message of a JSON error could quote key material
        raise FatalError(f"{paths[0]} or {paths[1]} is not valid JSON") from None
    except KeyringError as exc:
        raise FatalError(str(exc)) from None
    if what == "unchanged":
        print(f"{paths[0]} and {paths[1]} already share record-ref key {worker['record_key']['kid']}", file=sys.stderr)
        return 0
    try:
        for path, doc in zip(paths, (worker, vault)):
            write_private_json(path, doc)
    except OSError as exc:
        raise FatalError(f"cannot write {exc.filename}: {_why(exc)}") from None
    print(f"record-ref key {worker['record_key']['kid']} {what}: now in {paths[0]} and {paths[1]}. Roll the worker "
          "keyring out to every worker at once; records routed from then on get refs under this key, which "
          "key rotation no longer changes (a replay of a record routed before is stored once more)",
          file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `cdrpipe keys generate|rotate`."""
    keys = sub.add_parser("keys", help="generate or rotate keyrings",
                          description="Create and rotate cdrpipe keyrings (files are written with mode 0600).")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    gen = ksub.add_parser("generate", help="write worker-keyring.json and vault-keyring.json into DIR")
    gen.add_argument("--dir", required=True, help="directory for the two keyring files")
    gen.add_argument("--force", action="store_true", help="overwrite existing keyrings (destroys the old keys)")
    gen.set_defaults(func=_cmd_generate)
    rot = ksub.add_parser("rotate", help="add a new current tokenisation key, keeping the previous ones")
    rot.add_argument("--keyring", required=True, help="worker keyring file to rotate in place (env CDRPIPE_KEYRING)")
    rot.set_defaults(func=_cmd_rotate)
    add = ksub.add_parser("add-record-key",
                          help="give keyrings made before the record-ref key one (the same in both files)",
                          description="Put one record-ref key in the worker and the vault keyring: copied from "
                                      "the one that has it, else new. Record refs are made with it, and token-key "
                                      "rotation leaves it alone, so the vault's dedupe survives a rotation.")
    add.add_argument("--keyring", required=True, help="worker keyring file (env CDRPIPE_KEYRING)")
    add.add_argument("--vault-keyring", required=True, help="vault keyring file (env CDRPIPE_VAULT_KEYRING)")
    add.set_defaults(func=_cmd_add_record_key)
