//! Sealed retention envelopes: AES-256-GCM over a run of raw records, the header as associated data.
//!
//! The wire form and the associated data are byte for byte what `pipeline.core.envelope`
//! documents (and `tests/vectors/envelopes.json` freezes): the header in its fixed field
//! order with `ct` last, and the associated data as the same header with keys sorted at
//! every level, both compact JSON. The data key arrives already wrapped to the vault
//! (HPKE in Python, once a batch); this module never sees the vault's private key.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::json::{escape_into, write_int, write_uint};

/// Partition or offset: one value for the whole segment, or one per record.
#[derive(Clone, Copy)]
pub enum Coord<'a> {
    One(i64),
    Many(&'a [i64]),
}

impl Coord<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Coord::One(v) => write_int(out, *v),
            Coord::Many(vs) => {
                out.push(b'[');
                for (i, v) in vs.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_int(out, *v);
                }
                out.push(b']');
            }
        }
    }
}

/// What every envelope of one batch shares.
pub struct Sealer {
    /// ring's AES-256-GCM (BoringSSL's code: AES-NI/VAES with carry-less multiply), about 4x the
    /// throughput of the portable `aes-gcm` crate on the same core; each nonce is used once.
    cipher: LessSafeKey,
    vault_kid: Vec<u8>,   // JSON-escaped
    wrapped_key: Vec<u8>, // base64 text
    sealed_at: Vec<u8>,   // JSON-escaped
    work: Vec<u8>,
    header: Vec<u8>,
}

/// The header fields of one envelope.
pub struct Segment<'a> {
    pub segment_id: &'a str,
    pub nonce: [u8; 12],
    pub record_refs: &'a [&'a str],
    pub lengths: &'a [u32],
    pub source_name: &'a [u8], // JSON-escaped
    pub partition: Coord<'a>,
    pub offset: Coord<'a>,
}

impl Sealer {
    pub fn new(data_key: &[u8], vault_kid: &str, wrapped_key: &str, sealed_at: &str) -> Result<Self, String> {
        let key = UnboundKey::new(&AES_256_GCM, data_key).map_err(|_| "the data key must be 32 bytes".to_string())?;
        let cipher = LessSafeKey::new(key);
        let mut kid = Vec::new();
        escape_into(&mut kid, vault_kid.as_bytes());
        let mut at = Vec::new();
        escape_into(&mut at, sealed_at.as_bytes());
        Ok(Sealer { cipher, vault_kid: kid, wrapped_key: wrapped_key.as_bytes().to_vec(), sealed_at: at,
                    work: Vec::new(), header: Vec::new() })
    }

    fn write_ids(out: &mut Vec<u8>, ids: &[&str]) {
        out.push(b'[');
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            escape_into(out, id.as_bytes());
            out.push(b'"');
        }
        out.push(b']');
    }

    fn write_lengths(out: &mut Vec<u8>, lengths: &[u32]) {
        out.push(b'[');
        for (i, n) in lengths.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_uint(out, *n as u64);
        }
        out.push(b']');
    }

    /// Append one envelope (no newline) for `plaintext` to `out`.
    pub fn seal(&mut self, out: &mut Vec<u8>, seg: &Segment, plaintext: &[u8]) {
        let mut nonce_b64 = [0u8; 16];
        let _ = base64_simd::STANDARD.encode(&seg.nonce, base64_simd::Out::from_slice(&mut nonce_b64));
        // Associated data: the header with sorted keys.
        let h = &mut self.header;
        h.clear();
        h.extend_from_slice(b"{\"lengths\":");
        Self::write_lengths(h, seg.lengths);
        h.extend_from_slice(b",\"nonce\":\"");
        h.extend_from_slice(&nonce_b64);
        h.extend_from_slice(b"\",\"record_refs\":");
        Self::write_ids(h, seg.record_refs);
        h.extend_from_slice(b",\"sealed_at\":\"");
        h.extend_from_slice(&self.sealed_at);
        h.extend_from_slice(b"\",\"segment_id\":\"");
        escape_into(h, seg.segment_id.as_bytes());
        h.extend_from_slice(b"\",\"source\":{\"name\":\"");
        h.extend_from_slice(seg.source_name);
        h.extend_from_slice(b"\",\"offset\":");
        seg.offset.write(h);
        h.extend_from_slice(b",\"partition\":");
        seg.partition.write(h);
        h.extend_from_slice(b"},\"type\":\"cdr.retention/2\",\"vault_kid\":\"");
        h.extend_from_slice(&self.vault_kid);
        h.extend_from_slice(b"\",\"wrapped_key\":\"");
        h.extend_from_slice(&self.wrapped_key);
        h.extend_from_slice(b"\"}");

        self.work.clear();
        self.work.extend_from_slice(plaintext);
        // Encryption cannot fail for inputs under GCM's 64 GiB limit (records are capped far below).
        let tag = self
            .cipher
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(seg.nonce), Aad::from(&self.header[..]),
                                        &mut self.work)
            .expect("AES-GCM input within limits");
        self.work.extend_from_slice(tag.as_ref());

        // Wire form: fixed field order, ct last.
        out.extend_from_slice(b"{\"type\":\"cdr.retention/2\",\"segment_id\":\"");
        escape_into(out, seg.segment_id.as_bytes());
        out.extend_from_slice(b"\",\"sealed_at\":\"");
        out.extend_from_slice(&self.sealed_at);
        out.extend_from_slice(b"\",\"vault_kid\":\"");
        out.extend_from_slice(&self.vault_kid);
        out.extend_from_slice(b"\",\"wrapped_key\":\"");
        out.extend_from_slice(&self.wrapped_key);
        out.extend_from_slice(b"\",\"nonce\":\"");
        out.extend_from_slice(&nonce_b64);
        out.extend_from_slice(b"\",\"record_refs\":");
        Self::write_ids(out, seg.record_refs);
        out.extend_from_slice(b",\"lengths\":");
        Self::write_lengths(out, seg.lengths);
        out.extend_from_slice(b",\"source\":{\"name\":\"");
        out.extend_from_slice(seg.source_name);
        out.extend_from_slice(b"\",\"partition\":");
        seg.partition.write(out);
        out.extend_from_slice(b",\"offset\":");
        seg.offset.write(out);
        out.extend_from_slice(b"},\"ct\":\"");
        // Base64 straight into the output's spare room (SIMD; no zero fill first).
        let n = base64_simd::STANDARD.encoded_length(self.work.len());
        out.reserve(n + 2);
        let start = out.len();
        let written = base64_simd::STANDARD.encode(&self.work, base64_simd::Out::from_uninit_slice(&mut out.spare_capacity_mut()[..n])).len();
        // SAFETY: `encode` initialised the first `written` (= n) bytes of the spare capacity.
        unsafe { out.set_len(start + written) };
        out.extend_from_slice(b"\"}");
    }
}
