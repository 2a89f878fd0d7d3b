"""Keyrings: which key may do what, kept apart so a worker can never read the vault.

Two files, two trust levels:

* ``worker-keyring.json`` — tokenisation keys (current + previous, each with an id) and
  the vault's *public* key. A worker can tokenise and seal for the vault, nothing more.
* ``vault-keyring.json`` — the vault's private key and its blind-index key. Only the
  vault sink and the lawful-intercept query tools load it.

Secrets never appear in a repr, a log line or an error message: the classes below
mask them, and loaders report *which file or variable* is wrong, never its content.
"""
from __future__ import annotations

import base64
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from pipeline.key_permissions import insecure_key_file

WORKER_KEYRING = "worker-keyring.json"
VAULT_KEYRING = "vault-keyring.json"
AUDIT_PUBLIC_KEY = "audit-public-key.txt"
#: Environment variables that carry a whole keyring (how Kubernetes secrets inject them).
ENV_WORKER_KEYRING_JSON = "CDRPIPE_WORKER_KEYRING_JSON"
ENV_VAULT_KEYRING_JSON = "CDRPIPE_VAULT_KEYRING_JSON"
#: Environment variables that name a keyring file (the default for ``--keyring``).
ENV_KEYRING_FILE = "CDRPIPE_KEYRING"
ENV_VAULT_KEYRING_FILE = "CDRPIPE_VAULT_KEYRING"


KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _kid(value: Any, where: str) -> str:
    kid = str(value)
    if not KEY_ID.match(kid):
        raise KeyringError(f"{where}: key ids must be 1-32 characters of A-Z a-z 0-9 _ -")
    return kid


class KeyringError(Exception):
    """A keyring is missing, malformed or of the wrong kind; the message never holds key bytes."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str, size: int) -> bytes:
    try:
        raw = base64.b64decode(str(text), validate=True)
    except (ValueError, TypeError):
        raise KeyringError(f"{what} is not valid base64") from None
    if len(raw) != size:
        raise KeyringError(f"{what} must be {size} bytes, found {len(raw)}")
    return raw


class SecretKey:
    """A symmetric key with an id; the bytes are hidden from repr, str and dataclass introspection."""

    __slots__ = ("kid", "secret", "created")

    def __init__(self, kid: str, secret: bytes, created: str = "") -> None:
        self.kid, self.secret, self.created = kid, secret, created

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and (self.kid, self.secret) == (other.kid, other.secret)

    def __hash__(self) -> int:
        return hash(self.kid)

    def __repr__(self) -> str:
        return f"SecretKey(kid={self.kid!r}, secret=<redacted>)"

    __str__ = __repr__


@dataclass(frozen=True)
class WorkerKeyring:
    """Tokenisation keys (newest first is current), the record-ref key and the vault's public key.

    The record-ref key makes record ids' ``record_ref`` tokens. It is not rotated with the token
    keys: the vault deduplicates on refs, so a record replayed after ``keys rotate`` must keep its
    ref. The vault keyring holds the same key, so the vault can compute a ref itself. Keyrings made
    before it existed have none; their refs come from the current token key (the old behaviour).
    """

    token_keys: tuple[SecretKey, ...]
    vault_kid: str
    vault_public: X25519PublicKey = field(repr=False)
    record_key: SecretKey | None = field(default=None, repr=False)

    @property
    def current(self) -> SecretKey:
        return self.token_keys[0]

    def key(self, kid: str) -> SecretKey:
        for k in self.token_keys:
            if k.kid == kid:
                return k
        raise KeyringError(f"no tokenisation key with id {kid!r} in this keyring")

    def __repr__(self) -> str:
        kids = [k.kid for k in self.token_keys]
        return f"WorkerKeyring(token_kids={kids}, vault_kid={self.vault_kid!r})"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "cdrpipe.worker-keyring/1",
            "token_keys": [{"kid": k.kid, "secret": _b64(k.secret), "created": k.created}
                           for k in self.token_keys],
            "vault_public_key": {"kid": self.vault_kid, "x25519": _b64(self.vault_public.public_bytes_raw())},
            **_record_key_json(self.record_key),
        }

    @classmethod
    def from_json(cls, doc: Any, where: str) -> "WorkerKeyring":
        if not isinstance(doc, dict) or doc.get("type") != "cdrpipe.worker-keyring/1":
            hint = " (this looks like the vault keyring: workers must use worker-keyring.json)" \
                if isinstance(doc, dict) and doc.get("type") == "cdrpipe.vault-keyring/1" else ""
            raise KeyringError(f"{where} is not a cdrpipe worker keyring{hint}")
        try:
            keys = tuple(SecretKey(_kid(k["kid"], where), _unb64(k["secret"], f"{where}: token key {k['kid']!r}", 32),
                                   str(k.get("created", ""))) for k in doc["token_keys"])
            vpk = doc["vault_public_key"]
            public = X25519PublicKey.from_public_bytes(_unb64(vpk["x25519"], f"{where}: vault public key", 32))
            vault_kid = str(vpk["kid"])
        except (KeyError, TypeError):
            raise KeyringError(f"{where} is missing token_keys or vault_public_key") from None
        if not keys:
            raise KeyringError(f"{where} holds no tokenisation key: run `cdrpipe keys rotate`")
        return cls(keys, vault_kid, public, _record_key(doc, where))


@dataclass(frozen=True)
class VaultKeyring:
    """The vault's private key (opens retention envelopes) and its blind-index key."""

    vault_kid: str
    private: X25519PrivateKey = field(repr=False)
    index_key: SecretKey = field(repr=False)
    #: The workers' record-ref key (see :class:`WorkerKeyring`), so the vault computes refs too.
    record_key: SecretKey | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"VaultKeyring(vault_kid={self.vault_kid!r}, index_kid={self.index_key.kid!r})"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "cdrpipe.vault-keyring/1",
            "vault_private_key": {"kid": self.vault_kid, "x25519": _b64(self.private.private_bytes_raw())},
            "index_key": {"kid": self.index_key.kid, "secret": _b64(self.index_key.secret),
                          "created": self.index_key.created},
            **_record_key_json(self.record_key),
        }

    @classmethod
    def from_json(cls, doc: Any, where: str) -> "VaultKeyring":
        if not isinstance(doc, dict) or doc.get("type") != "cdrpipe.vault-keyring/1":
            raise KeyringError(f"{where} is not a cdrpipe vault keyring (expected vault-keyring.json)")
        try:
            vpk = doc["vault_private_key"]
            private = X25519PrivateKey.from_private_bytes(_unb64(vpk["x25519"], f"{where}: vault private key", 32))
            ik = doc["index_key"]
            index = SecretKey(str(ik["kid"]), _unb64(ik["secret"], f"{where}: index key", 32), str(ik.get("created", "")))
            return cls(str(vpk["kid"]), private, index, _record_key(doc, where))
        except (KeyError, TypeError):
            raise KeyringError(f"{where} is missing vault_private_key or index_key") from None


def _record_key_json(key: SecretKey | None) -> dict[str, Any]:
    return {} if key is None else {"record_key": {"kid": key.kid, "secret": _b64(key.secret), "created": key.created}}


def _record_key(doc: dict[str, Any], where: str) -> SecretKey | None:
    rk = doc.get("record_key")
    if rk is None:
        return None
    try:
        return SecretKey(_kid(rk["kid"], where), _unb64(rk["secret"], f"{where}: record key", 32),
                         str(rk.get("created", "")))
    except (KeyError, TypeError):
        raise KeyringError(f"{where}: record_key needs a kid and a secret") from None


def _now_kid(prefix: str, now: datetime) -> str:
    return f"{prefix}{now:%Y%m%d}{secrets.token_hex(2)}"


def generate(now: datetime | None = None) -> tuple[WorkerKeyring, VaultKeyring]:
    """Fresh keyrings: one tokenisation key, one vault key pair, one index key, one record-ref key (in both)."""
    now = now or datetime.now(timezone.utc)
    stamp = now.isoformat(timespec="seconds")
    private = X25519PrivateKey.generate()
    vault_kid = _now_kid("v", now)
    record = SecretKey(_now_kid("r", now), secrets.token_bytes(32), stamp)
    worker = WorkerKeyring((SecretKey(_now_kid("k", now), secrets.token_bytes(32), stamp),),
                           vault_kid, private.public_key(), record)
    vault = VaultKeyring(vault_kid, private, SecretKey(_now_kid("i", now), secrets.token_bytes(32), stamp), record)
    return worker, vault


def pair_record_key(worker_doc: dict[str, Any], vault_doc: dict[str, Any],
                    now: datetime | None = None) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Keyring documents that share one record-ref key, and what was done (for keyrings made before it).

    The key one of them holds is copied to the other; a new one is made when neither has one.
    Two different keys are refused: refs made under them would never match. The documents keep
    every other field as they are (the vault keyring also holds the audit signing key).
    """
    WorkerKeyring.from_json(worker_doc, "the worker keyring")
    VaultKeyring.from_json(vault_doc, "the vault keyring")
    mine, theirs = worker_doc.get("record_key"), vault_doc.get("record_key")
    if mine and theirs:
        if (mine.get("kid"), mine.get("secret")) != (theirs.get("kid"), theirs.get("secret")):
            raise KeyringError("the worker and the vault keyring hold different record-ref keys; refs made under "
                               "them would never match: keep the vault's and copy it to the workers")
        return worker_doc, vault_doc, "unchanged"
    if mine or theirs:
        key = mine or theirs
        return {**worker_doc, "record_key": key}, {**vault_doc, "record_key": key}, "copied"
    now = now or datetime.now(timezone.utc)
    key = _record_key_json(SecretKey(_now_kid("r", now), secrets.token_bytes(32), now.isoformat(timespec="seconds")))
    return {**worker_doc, **key}, {**vault_doc, **key}, "created"


def rotate(keyring: WorkerKeyring, now: datetime | None = None) -> WorkerKeyring:
    """A keyring with a new current tokenisation key; previous keys stay for verification."""
    now = now or datetime.now(timezone.utc)
    new = SecretKey(_now_kid("k", now), secrets.token_bytes(32), now.isoformat(timespec="seconds"))
    return WorkerKeyring((new, *keyring.token_keys), keyring.vault_kid, keyring.vault_public, keyring.record_key)


def write_private_json(path: Path, doc: dict[str, Any]) -> None:
    """Write a secret file with mode 0600 from the start (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _read_doc(path: str | os.PathLike[str] | None, env_json: str, env_file: str) -> tuple[Any, str]:
    if path is None and os.environ.get(env_json):
        where = f"${env_json}"
        text = os.environ[env_json]
    else:
        path = path or os.environ.get(env_file)
        if not path:
            raise KeyringError(f"no keyring given: pass --keyring FILE or set {env_file} or {env_json}")
        where = str(path)
        refused = insecure_key_file(path)
        if refused:
            raise KeyringError(refused)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise KeyringError(f"cannot read keyring {where}: {exc.strerror}; "
                               "create one with `cdrpipe keys generate --dir DIR`") from None
    try:
        return json.loads(text), where
    except ValueError:
        raise KeyringError(f"{where} is not valid JSON") from None


def load_worker_keyring(path: str | os.PathLike[str] | None = None) -> WorkerKeyring:
    """Load from ``path``, else ``$CDRPIPE_WORKER_KEYRING_JSON``, else the file named by ``$CDRPIPE_KEYRING``."""
    doc, where = _read_doc(path, ENV_WORKER_KEYRING_JSON, ENV_KEYRING_FILE)
    return WorkerKeyring.from_json(doc, where)


def load_vault_keyring(path: str | os.PathLike[str] | None = None) -> VaultKeyring:
    """Load from ``path``, else ``$CDRPIPE_VAULT_KEYRING_JSON``, else the file named by ``$CDRPIPE_VAULT_KEYRING``."""
    doc, where = _read_doc(path, ENV_VAULT_KEYRING_JSON, ENV_VAULT_KEYRING_FILE)
    return VaultKeyring.from_json(doc, where)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def token_value_problem(kind: str, canonical: str, region: str) -> str | None:
    """Why ``canonical`` (the normalised value) is not a real identifier of ``kind``, or None if it is one.

    What `cdrpipe token` checks before it prints a token that would match nothing (a typo, a word).
    The answer never contains the value.

    * msisdn: a full number in international form that libphonenumber knows as valid, or that has
      the length its numbering plan gives numbers with those leading digits (a fictitious range such
      as Ofcom's 07700 900xxx, which the examples and the synthetic data use, is kept; 07700 90012,
      a digit short, is refused). Short codes, extensions and sender names are not subscribers.
    * imsi: 14 or 15 digits (MCC, MNC, MSIN; TS 23.003). imei: 14 digits, 15 with a correct Luhn
      check digit, or a 16-digit IMEISV. ip: parseable (the normaliser's own rule).
    """
    if kind == "msisdn":
        import phonenumbers
        if not canonical.startswith("+"):
            return "it is not a full subscriber number (a short code, an extension or a sender name)"
        try:
            number = phonenumbers.parse(canonical, None)
        except phonenumbers.NumberParseException:
            return "its country calling code is not known"
        if phonenumbers.is_valid_number(number):
            return None
        why = phonenumbers.is_possible_number_with_reason(number)
        if why == phonenumbers.ValidationResult.TOO_SHORT:
            return "libphonenumber says it is too short for its country"
        if why in (phonenumbers.ValidationResult.TOO_LONG, phonenumbers.ValidationResult.INVALID_LENGTH):
            return "libphonenumber says it has the wrong length for its country"
        national = phonenumbers.national_significant_number(number)
        if why != phonenumbers.ValidationResult.IS_POSSIBLE or \
                phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL) == national:
            # No formatting rule of the numbering plan fits these leading digits at this length.
            return f"libphonenumber says it is not a valid number (region {region} for national numbers)"
        return None
    if kind == "imsi" and len(canonical) not in (14, 15):
        return "an IMSI has 14 or 15 digits (MCC, MNC and MSIN)"
    if kind == "imei":
        return None  # checked on the digits as given (the canonical form drops the check digit)
    return None


def imei_problem(value: str) -> str | None:
    """Why an IMEI as written is not one (a wrong Luhn check digit), or None."""
    digits = "".join(ch for ch in value if ch.isdigit())
    if len(digits) == 15 and not _luhn_ok(digits):
        return "its check digit (the 15th, Luhn) is wrong"
    return None
