"""Fixed test vectors for tokens and retention envelopes (tests/vectors/*.json).

The vectors were written once by ``tests/vectors/make_vectors.py`` from the pipeline's own
code. These tests check them three ways: the pipeline still produces them (stdlib path and
Rust column path for tokens; sealing for envelopes), and an independent recomputation of
the documented construction (hand-written HKDF + ``hmac``; plain AES-GCM and HPKE) agrees,
so a vector that only echoes a bug cannot pass, and other systems can rely on the files.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.core.envelope import EnvelopeError, Sealer, open_segment
from pipeline.core.normalise import PhoneNormaliser, normalise_column
from pipeline.core.tokenise import KINDS, Tokeniser
from pipeline.keys import SecretKey, WorkerKeyring

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
TOKENS = json.loads((VECTORS / "tokens.json").read_text(encoding="utf-8"))
ENVELOPES = json.loads((VECTORS / "envelopes.json").read_text(encoding="utf-8"))
TOKEN_VECTORS = TOKENS["vectors"]
ENVELOPE_VECTORS = ENVELOPES["vectors"]


def _vid(v: dict) -> str:
    return f"{v['kid']}-{v['kind']}-{v['input']!r}"


# ----------------------------------------------------------------------------- tokens

def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 written out with ``hmac``: extract, then expand (independent of ``cryptography``)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def _independent_token(secret: bytes, kid: str, kind: str, canonical: str, bits: int) -> str:
    subkey = _hkdf_sha256(secret, TOKENS["hkdf_salt"].encode("ascii"), kind.encode("ascii"))
    mac = hmac.new(subkey.hex().encode("ascii"), canonical.encode("utf-8"), hashlib.sha256).hexdigest()
    return kid + ":" + mac[: bits // 4]


def _secrets() -> dict[str, bytes]:
    return {k["kid"]: bytes.fromhex(k["secret_hex"]) for k in TOKENS["keys"]}


@pytest.fixture(scope="module")
def vector_keyring() -> WorkerKeyring:
    keys = tuple(SecretKey(k["kid"], bytes.fromhex(k["secret_hex"])) for k in TOKENS["keys"])
    vault = X25519PrivateKey.from_private_bytes(bytes.fromhex(ENVELOPES["vault_private_key_hex"]))
    return WorkerKeyring(keys, ENVELOPES["vault_kid"], vault.public_key())


def test_token_vector_file_covers_every_kind_and_one_subscriber_in_many_formats():
    assert {v["kind"] for v in TOKEN_VECTORS} == set(KINDS)
    assert all(len(bytes.fromhex(k["secret_hex"])) == 32 for k in TOKENS["keys"])
    by_canonical: dict[tuple[str, str, str], set[str]] = {}
    for v in TOKEN_VECTORS:
        if v["token"] is not None:
            by_canonical.setdefault((v["kid"], v["kind"], v["canonical"]), set()).add(v["input"])
    assert max(len(inputs) for inputs in by_canonical.values()) >= 8  # one UK subscriber, eight formats
    assert len(TOKENS["keys"]) >= 2 and len({v["kid"] for v in TOKEN_VECTORS}) >= 2


def test_subkeys_match_independent_hkdf():
    salt = TOKENS["hkdf_salt"].encode("ascii")
    for key in TOKENS["keys"]:
        secret = bytes.fromhex(key["secret_hex"])
        assert set(key["subkeys_hex"]) == set(KINDS)
        for kind, expected in key["subkeys_hex"].items():
            mine = _hkdf_sha256(secret, salt, kind.encode("ascii"))
            lib = HKDF(hashes.SHA256(), 32, salt, kind.encode("ascii")).derive(secret)
            assert mine == lib == bytes.fromhex(expected), (key["kid"], kind)


@pytest.mark.parametrize("v", TOKEN_VECTORS, ids=_vid)
def test_vector_token_is_the_documented_construction(v):
    """(c): the stated construction, recomputed without the pipeline, gives the stored token."""
    if v["canonical"] is None:
        assert v["token"] is None
        return
    assert v["token"] == _independent_token(_secrets()[v["kid"]], v["kid"], v["kind"], v["canonical"],
                                            TOKENS["bits"])


@pytest.mark.parametrize("v", TOKEN_VECTORS, ids=_vid)
def test_vector_normalisation(v):
    """Every input format of the vector normalises to the stored canonical value (and class)."""
    canonical, cls = normalise_column(v["kind"], pl.Series([v["input"]], dtype=pl.String),
                                      PhoneNormaliser(TOKENS["region"]))
    assert canonical[0] == v["canonical"]
    if "class" in v:
        assert cls is not None and cls[0] == v["class"]


@pytest.mark.parametrize("v", [v for v in TOKEN_VECTORS if v["canonical"] is not None], ids=_vid)
def test_token_one_matches_vector(vector_keyring, v):
    """(a): the standard-library path."""
    tok = Tokeniser(vector_keyring, TOKENS["bits"], kid=v["kid"])
    assert tok.token_one(v["kind"], v["canonical"]) == v["token"]


@pytest.mark.parametrize("kid", [k["kid"] for k in TOKENS["keys"]])
@pytest.mark.parametrize("kind", KINDS)
def test_native_tokens_match_vectors(vector_keyring, kid, kind):
    """(b): the native core's HMAC, over values with a null in it."""
    rows = [v for v in TOKEN_VECTORS if v["kid"] == kid and v["kind"] == kind]
    if not rows:
        pytest.skip(f"no {kind} vector under {kid}")
    values = [v["canonical"] for v in rows] + [None]
    tok = Tokeniser(vector_keyring, TOKENS["bits"], kid=kid)
    assert tok.tokens(kind, values) == [v["token"] for v in rows] + [None]


def test_one_subscriber_in_any_format_gets_one_token_and_keys_differ(vector_keyring):
    """The point of normalising before tokenising, checked end to end from raw inputs."""
    phones = PhoneNormaliser(TOKENS["region"])
    tok = Tokeniser(vector_keyring, TOKENS["bits"])
    uk = [v["input"] for v in TOKEN_VECTORS
          if v["kind"] == "msisdn" and v["canonical"] == "+447700900123" and v["kid"] == tok.kid]
    canonical, _ = normalise_column("msisdn", pl.Series(uk, dtype=pl.String), phones)
    tokens = {tok.token_one("msisdn", c) for c in canonical.to_list()}
    assert len(uk) >= 8 and len(tokens) == 1
    same_value = [v for v in TOKEN_VECTORS if (v["kind"], v["canonical"]) == ("msisdn", "+447700900123")]
    assert len({v["token"] for v in same_value}) == len(TOKENS["keys"])  # one token per key id


# -------------------------------------------------------------------------- envelopes

def _vault_private() -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(ENVELOPES["vault_private_key_hex"]))


def _records(v: dict) -> list[bytes]:
    return [base64.b64decode(r) for r in v["records_b64"]]


def _sealer(v: dict) -> Sealer:
    nonce = bytes.fromhex(v["nonce_hex"])
    clock = datetime.fromisoformat(v["sealed_at_clock"])
    return Sealer(_vault_private().public_key(), ENVELOPES["vault_kid"], data_key=bytes.fromhex(v["data_key_hex"]),
                  nonce_source=lambda: nonce, clock=lambda: clock, segment_ids=lambda: v["segment_id"])


def _seal(sealer: Sealer, v: dict) -> bytes:
    records = _records(v)
    return sealer.seal(b"\n".join(records), v["record_refs"], [len(r) for r in records], copy.deepcopy(v["source"]))


def _eid(v: dict) -> str:
    return v["name"].split(":")[0]


def test_vault_key_pair_in_vector_file_matches():
    from cryptography.hazmat.primitives import serialization
    public = _vault_private().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert public.hex() == ENVELOPES["vault_public_key_hex"]


@pytest.mark.parametrize("v", ENVELOPE_VECTORS, ids=_eid)
def test_stored_envelope_is_consistent(v):
    env = v["envelope"]
    assert json.loads(v["envelope_json"]) == env
    assert base64.b64decode(v["plaintext_b64"]) == b"\n".join(_records(v))
    assert env["type"] == "cdr.retention/2" and "record_ids" not in env
    assert env["record_refs"] == v["record_refs"] and env["source"] == v["source"]
    # Each ref is the documented token of kind record of the record's id, recomputed without the pipeline;
    # the ids themselves (which can hold numbers and times) appear nowhere outside ct.
    assert v["record_refs"] == [_independent_token(_secrets()[v["record_ref_kid"]], v["record_ref_kid"], "record",
                                                   rid, TOKENS["bits"]) for rid in v["record_ids"]]
    header = json.dumps({k: x for k, x in env.items() if k != "ct"})
    assert not any(rid in header for rid in v["record_ids"])
    assert env["lengths"] == [len(r) for r in _records(v)]
    assert env["segment_id"] == v["segment_id"] and env["vault_kid"] == ENVELOPES["vault_kid"]
    assert base64.b64decode(env["nonce"]) == bytes.fromhex(v["nonce_hex"])


@pytest.mark.parametrize("v", ENVELOPE_VECTORS, ids=_eid)
def test_sealing_with_fixed_inputs_reproduces_the_vector(v):
    """Everything but the HPKE wrap is deterministic: the ciphertext body always matches, and
    with the stored wrapped_key (part of the associated data) the whole envelope, tag included,
    matches byte for byte."""
    stored_ct = base64.b64decode(v["envelope"]["ct"])

    fresh = json.loads(_seal(_sealer(v), v))
    assert fresh["wrapped_key"] != v["envelope"]["wrapped_key"]  # HPKE is randomised, as documented
    assert {k: x for k, x in fresh.items() if k not in ("wrapped_key", "ct")} == \
        {k: x for k, x in v["envelope"].items() if k not in ("wrapped_key", "ct")}
    fresh_ct = base64.b64decode(fresh["ct"])
    assert len(fresh_ct) == len(stored_ct) and fresh_ct[:-16] == stored_ct[:-16]

    pinned = _sealer(v)
    pinned.wrapped_key = v["envelope"]["wrapped_key"]
    wire = _seal(pinned, v)
    assert wire == v["envelope_json"].encode("ascii")
    assert json.loads(wire)["ct"] == v["envelope"]["ct"]


@pytest.mark.parametrize("v", ENVELOPE_VECTORS, ids=_eid)
def test_vector_is_the_documented_construction(v):
    """Independent of pipeline.core.envelope: HPKE unwraps the data key, the AAD is the header
    as sorted compact JSON, and plain AES-GCM gives the stored ct."""
    env = v["envelope"]
    header = {k: x for k, x in env.items() if k != "ct"}
    aad = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    assert aad.decode() == v["aad"]
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    data_key = suite.decrypt(base64.b64decode(env["wrapped_key"]), _vault_private(),
                             info=ENVELOPES["hpke_info"].encode("ascii"))
    assert data_key == bytes.fromhex(v["data_key_hex"])
    ct = AESGCM(data_key).encrypt(bytes.fromhex(v["nonce_hex"]), base64.b64decode(v["plaintext_b64"]), aad)
    assert base64.b64encode(ct).decode() == env["ct"]


@pytest.mark.parametrize("v", ENVELOPE_VECTORS, ids=_eid)
def test_open_stored_vector_gives_the_records(v):
    opened = open_segment(v["envelope_json"].encode("ascii"), _vault_private(), ENVELOPES["vault_kid"])
    assert [o.raw for o in opened] == _records(v)
    assert [o.record_ref for o in opened] == v["record_refs"]
    src = v["source"]
    n = len(opened)
    parts = src["partition"] if isinstance(src["partition"], list) else [src["partition"]] * n
    offs = src["offset"] if isinstance(src["offset"], list) else [src["offset"]] * n
    assert [(o.source_name, o.partition, o.offset) for o in opened] == \
        [(src["name"], p, o) for p, o in zip(parts, offs)]
    # The parsed dict form opens too.
    assert [o.raw for o in open_segment(copy.deepcopy(v["envelope"]), _vault_private())] == _records(v)


@pytest.mark.parametrize("v", ENVELOPE_VECTORS, ids=_eid)
def test_flipping_any_ct_byte_is_detected(v):
    ct = bytearray(base64.b64decode(v["envelope"]["ct"]))
    for i in range(len(ct)):
        env = dict(v["envelope"])
        flipped = bytearray(ct)
        flipped[i] ^= 0x01
        env["ct"] = base64.b64encode(bytes(flipped)).decode()
        with pytest.raises(EnvelopeError):
            open_segment(env, _vault_private())


def _header_edits(env: dict) -> dict[str, dict]:
    edits: dict[str, dict] = {}

    def edit(name, fn):
        e = copy.deepcopy(env)
        fn(e)
        edits[name] = e

    edit("record_ref", lambda e: e["record_refs"].__setitem__(0, e["record_refs"][0] + "x"))
    edit("record_ref_same_length", lambda e: e["record_refs"].__setitem__(0, e["record_refs"][0][:-1] + "9"
                                                                          if e["record_refs"][0][-1] != "9"
                                                                          else e["record_refs"][0][:-1] + "8"))
    edit("lengths", lambda e: e["lengths"].reverse() if len(e["lengths"]) > 1 and len(set(e["lengths"])) > 1
         else e["lengths"].__setitem__(0, e["lengths"][0] + 1))
    edit("source_name", lambda e: e["source"].__setitem__("name", e["source"]["name"] + "x"))
    edit("source_offset", lambda e: e["source"].__setitem__(
        "offset", [o + 1 for o in e["source"]["offset"]] if isinstance(e["source"]["offset"], list)
        else e["source"]["offset"] + 1))
    edit("source_partition", lambda e: e["source"].__setitem__(
        "partition", [p + 1 for p in e["source"]["partition"]] if isinstance(e["source"]["partition"], list)
        else e["source"]["partition"] + 1))
    edit("sealed_at", lambda e: e.__setitem__("sealed_at", e["sealed_at"].replace(".678Z", ".679Z")))
    edit("segment_id", lambda e: e.__setitem__("segment_id", e["segment_id"][::-1]))
    edit("vault_kid", lambda e: e.__setitem__("vault_kid", e["vault_kid"] + "x"))
    edit("nonce", lambda e: e.__setitem__("nonce", base64.b64encode(bytes(12)).decode()))
    edit("extra_field", lambda e: e.__setitem__("note", "added"))
    edit("dropped_field", lambda e: e.pop("sealed_at"))
    edit("type", lambda e: e.__setitem__("type", "cdr.retention/3"))
    edit("type_legacy", lambda e: e.__setitem__("type", "cdr.retention/1"))  # v1 names its ids record_ids
    return edits


@pytest.mark.parametrize("v", ENVELOPE_VECTORS, ids=_eid)
def test_changing_the_header_is_detected(v):
    for name, env in _header_edits(v["envelope"]).items():
        assert env != v["envelope"], name
        with pytest.raises(EnvelopeError):
            open_segment(env, _vault_private())
        with pytest.raises(EnvelopeError):
            open_segment(json.dumps(env).encode(), _vault_private())


@pytest.mark.parametrize("v", ENVELOPE_VECTORS, ids=_eid)
def test_changing_the_wrapped_key_is_detected(v):
    env = dict(v["envelope"])
    wrapped = bytearray(base64.b64decode(env["wrapped_key"]))
    for i in (0, 31, 32, len(wrapped) - 1):  # the encapsulated key, the wrapped key, its tag
        bad = bytearray(wrapped)
        bad[i] ^= 0x80
        env["wrapped_key"] = base64.b64encode(bytes(bad)).decode()
        with pytest.raises(EnvelopeError):
            open_segment(env, _vault_private())


@pytest.mark.parametrize("v", ENVELOPE_VECTORS, ids=_eid)
def test_another_private_key_cannot_open(v):
    with pytest.raises(EnvelopeError):
        open_segment(v["envelope_json"].encode("ascii"), X25519PrivateKey.generate())
    other = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"not the vault").digest())
    with pytest.raises(EnvelopeError):
        open_segment(v["envelope"], other)


@pytest.mark.parametrize("v", ENVELOPE_VECTORS, ids=_eid)
def test_wrong_vault_kid_is_refused_before_decrypting(v):
    with pytest.raises(EnvelopeError):
        open_segment(v["envelope"], _vault_private(), vault_kid="some-other-vault-key")


def test_envelope_errors_say_nothing_about_the_plaintext():
    v = ENVELOPE_VECTORS[0]
    env = dict(v["envelope"])
    env["record_refs"] = ["tampered"] + env["record_refs"][1:]
    with pytest.raises(EnvelopeError) as info:
        open_segment(env, _vault_private())
    text = str(info.value)
    for raw in _records(v):
        for fragment in (b"7700900123", b"234150929725379"):
            if fragment in raw:
                assert fragment.decode() not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__
