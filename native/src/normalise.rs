//! Fast, exact canonical forms for the common shapes of each identifier and time.
//!
//! Every function here either settles a value (its canonical text, or "invalid") or says
//! it is *pending*: a shape it does not own (non-ASCII text, a number only
//! libphonenumber's metadata can settle, an odd time or IPv6 form). Pending values go to
//! Python once per distinct value (`pipeline.core.normalise`, the libphonenumber and
//! `ipaddress` tools) and come back as learned answers. So the fast path is only ever
//! asked to be right on what it claims, and the numbering plan is never hand-written:
//! the region's prefixes and the list of country codes come from the metadata.

use chrono::{DateTime, NaiveDate};
use std::net::Ipv6Addr;

pub const E164: u8 = 0;
pub const SHORT_CODE: u8 = 1;
pub const EXTENSION: u8 = 2;
pub const NON_E164: u8 = 3;
pub const ALPHANUMERIC: u8 = 4;
pub const WITHHELD: u8 = 5;
pub const CLASSES: [&str; 6] = ["e164", "short_code", "extension", "non_e164", "alphanumeric", "withheld"];

pub fn class_index(name: &str) -> Option<u8> {
    CLASSES.iter().position(|c| *c == name).map(|i| i as u8)
}

/// What a normaliser says of one value.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Fast {
    /// Canonical text is in the output buffer (with the number class for msisdn).
    Value(u8),
    /// A valid value with no canonical text (a withheld number: no token, class only).
    NoValue(u8),
    Invalid,
    Pending,
}

/// The default region's dialling facts, from libphonenumber's metadata (given by Python).
pub struct PhoneMeta {
    pub cc: String,
    pub idd: Option<String>,
    pub trunk: Option<String>,
    pub own_cc_len: Option<usize>,
    /// Calling codes (1-3 digits, never starting with 0) as a table indexed by their value.
    pub country_codes: Vec<bool>,
    pub withheld: Vec<String>,
    /// How libphonenumber reads plain national digits, where the region's prefixes are plain
    /// digit strings (None elsewhere: such numbers stay pending).
    pub national: Option<National>,
}

/// A number written nationally without its trunk prefix (`7700900123` in GB, `4155550123` in
/// the US), read as `phonenumbers.parse` + `is_possible_number` read it, so that such numbers,
/// often all distinct, need no lookup each.
///
/// `parse(digits, region)` keeps the digits as the national number, under the region's country
/// code, when they start with none of: an international prefix, a prefix its
/// `national_prefix_for_parsing` strips, the country code itself (`excluded`). The number is
/// then possible when its length is one of the possible lengths (local-only included) of the
/// country code's main region (`lengths`). That reading is E.164 `+<cc><digits>`. Anything
/// else (other lengths, excluded starts) stays pending, for `phonenumbers` itself.
pub struct National {
    pub excluded: Vec<String>,
    pub lengths: Vec<usize>,
}

impl National {
    /// Whether `digits` (ASCII digits only, no `+`) is a possible national number to read as it stands.
    fn reads(&self, digits: &[u8]) -> bool {
        digits.len() >= 7
            && self.lengths.contains(&digits.len())
            && !self.excluded.iter().any(|p| digits.starts_with(p.as_bytes()))
    }
}

impl PhoneMeta {
    pub fn country_table<I: IntoIterator<Item = String>>(codes: I) -> Vec<bool> {
        let mut table = vec![false; 1000];
        for c in codes {
            if let Ok(v) = c.parse::<usize>() {
                if (1..1000).contains(&v) && !c.starts_with('0') {
                    table[v] = true;
                }
            }
        }
        table
    }

    /// `+` then 8-15 digits starting 1-9, under a real country code, not followed by 0.
    pub fn is_e164(&self, v: &[u8]) -> bool {
        if v.len() < 9 || v.len() > 16 || v[0] != b'+' || !(b'1'..=b'9').contains(&v[1]) {
            return false;
        }
        if !v[1..].iter().all(u8::is_ascii_digit) {
            return false;
        }
        (1..=3).any(|n| {
            let code = v[1..1 + n].iter().fold(0usize, |a, &c| a * 10 + (c - b'0') as usize);
            v.len() > 1 + n && self.country_codes[code] && v[1 + n] != b'0'
        })
    }

    /// A calling or dialled number: E.164 by the region's prefixes, withheld, alphanumeric sender, or pending.
    pub fn msisdn(&self, raw: &str, out: &mut Vec<u8>) -> Fast {
        out.clear();
        if !raw.is_ascii() {
            let mut folded = String::with_capacity(raw.len());
            if !fold_fullwidth(raw, &mut folded) {
                return Fast::Pending;
            }
            return self.msisdn(&folded, out);
        }
        if self.is_e164(raw.as_bytes()) {
            out.extend_from_slice(raw.as_bytes());
            return Fast::Value(E164);
        }
        let t = uri_user(raw); // trimmed
        if self.withheld.iter().any(|w| w.eq_ignore_ascii_case(t)) {
            return Fast::NoValue(WITHHELD);
        }
        let tb = t.as_bytes();
        if !tb.is_empty()
            && tb.len() <= 11
            && tb[0].is_ascii_alphanumeric()
            && tb[1..].iter().all(|&c| c.is_ascii_alphanumeric() || b" &._-'".contains(&c))
            && tb.iter().any(u8::is_ascii_alphabetic)
        {
            out.extend(tb.iter().map(u8::to_ascii_uppercase));
            return Fast::Value(ALPHANUMERIC);
        }
        // Cleaned: the candidate E.164 built in `out` ("+" + cleaned text; `d` is out[1..]).
        out.push(b'+');
        clean_into(tb, out);
        // What the exact path refuses without a lookup (`PhoneNormaliser.resolve`): anything but
        // digits after one optional `+`. Settled here, such values never wait in the learned tables.
        let d = &out[1..];
        let digits = d.strip_prefix(b"+").unwrap_or(d);
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            out.clear();
            return Fast::Invalid;
        }
        let d_len = out.len() - 1;
        let starts = |out: &Vec<u8>, p: &str| out[1..].starts_with(p.as_bytes());
        if out.get(1) == Some(&b'+') {
            out.remove(0); // already "+..."
        } else if let Some(p) = self.idd.as_deref().filter(|p| starts(out, p)) {
            out.drain(1..1 + p.len());
        } else if let Some(p) = self.trunk.as_deref().filter(|p| starts(out, p) && d_len > p.len() + 6) {
            let cc = self.cc.as_bytes();
            out.splice(1..1 + p.len(), cc.iter().copied());
        } else if self.own_cc_len.map_or(false, |n| {
            starts(out, &self.cc) && d_len == n && out[1..].iter().all(u8::is_ascii_digit)
        }) {
            // "+" + d as it is
        } else if self.national.as_ref().is_some_and(|n| n.reads(&out[1..])) {
            // phonenumbers' own reading (see `National`): no E.164 shape test after it.
            let cc = self.cc.as_bytes();
            out.splice(1..1, cc.iter().copied());
            return Fast::Value(E164);
        } else {
            out.clear();
            return Fast::Pending;
        }
        if self.is_e164(out) {
            Fast::Value(E164)
        } else {
            out.clear();
            Fast::Pending
        }
    }

    /// The cleaned text of a number the fast path left pending, as the exact path reads it
    /// (`PhoneNormaliser.resolve`): trimmed, a URI's user part taken, `%2B` undone, separators removed.
    /// None for non-ASCII text other than full-width forms, whose NFKC is Python's.
    pub fn cleaned(raw: &str) -> Option<String> {
        let mut folded = String::new();
        let text = if raw.is_ascii() {
            raw
        } else if fold_fullwidth(raw, &mut folded) {
            &folded
        } else {
            return None;
        };
        let mut out = Vec::with_capacity(text.len());
        clean_into(uri_user(text).as_bytes(), &mut out);
        String::from_utf8(out).ok()
    }
}

/// The user part of a `sip:`, `sips:` or `tel:` URI (`sip:+447700900123@host;user=phone`,
/// `tel:+44…;phone-context=…`, `sip:anonymous@anonymous.invalid`): what follows the scheme, up to
/// the first `@` or `;`, trimmed; other text trimmed as it is. Switches write calling numbers as
/// such URIs. The column code's `uri_user` does the same.
pub fn uri_user(raw: &str) -> &str {
    let t = raw.trim();
    let b = t.as_bytes();
    let scheme = ["sip:", "sips:", "tel:"]
        .iter()
        .find(|s| b.len() >= s.len() && b[..s.len()].eq_ignore_ascii_case(s.as_bytes()));
    match scheme {
        Some(s) => {
            let body = &t[s.len()..];
            body[..body.find(['@', ';']).unwrap_or(body.len())].trim()
        }
        None => t,
    }
}

/// URL-encoded `+` undone and separators (ASCII white space, `().-/`) removed, appended to
/// `out`: the column code's `_cleaned` for ASCII text (`t` is a URI's user part, trimmed).
fn clean_into(body: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c == b'%' && i + 2 < body.len() && body[i + 1] == b'2' && body[i + 2].eq_ignore_ascii_case(&b'b') {
            out.push(b'+');
            i += 3;
            continue;
        }
        if !matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b'(' | b')' | b'.' | b'-' | b'/') {
            out.push(c);
        }
        i += 1;
    }
}

/// NFKC for text that is ASCII plus full-width forms (U+FF01-U+FF5E, which NFKC maps to
/// U+0021-U+007E one for one, e.g. `０７７００`); false for any other non-ASCII text,
/// which stays pending for the exact Unicode normalisation in Python.
pub fn fold_fullwidth(raw: &str, out: &mut String) -> bool {
    for c in raw.chars() {
        match c {
            '\u{0}'..='\u{7f}' => out.push(c),
            '\u{ff01}'..='\u{ff5e}' => out.push(char::from_u32(c as u32 - 0xfee0).unwrap_or('?')),
            _ => return false,
        }
    }
    true
}

/// IMSI (6-15 digits) or IMEI (14-16 digits, cut to the 14-digit TAC + serial), separators removed.
pub fn digits(raw: &str, min: usize, max: usize, keep: Option<usize>, out: &mut Vec<u8>) -> Fast {
    out.clear();
    if !raw.is_ascii() {
        let mut folded = String::with_capacity(raw.len());
        if !fold_fullwidth(raw, &mut folded) {
            return Fast::Pending;
        }
        return digits(&folded, min, max, keep, out);
    }
    for &c in raw.as_bytes() {
        match c {
            b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b'-' | b'.' => {}
            b'0'..=b'9' => out.push(c),
            _ => return Fast::Invalid,
        }
    }
    if out.len() < min || out.len() > max {
        return Fast::Invalid;
    }
    if let Some(k) = keep {
        out.truncate(k);
    }
    Fast::Value(0)
}

/// Account ids: trimmed (NFKC is the identity on ASCII); empty is invalid.
pub fn account(raw: &str, out: &mut Vec<u8>) -> Fast {
    out.clear();
    if !raw.is_ascii() {
        let mut folded = String::with_capacity(raw.len());
        if !fold_fullwidth(raw, &mut folded) {
            return Fast::Pending;
        }
        return account(&folded, out);
    }
    let t = raw.trim();
    if t.is_empty() {
        return Fast::Invalid;
    }
    out.extend_from_slice(t.as_bytes());
    Fast::Value(0)
}

fn v4_octets(s: &[u8]) -> Option<[u8; 4]> {
    let mut parts = [0u8; 4];
    let mut n = 0;
    for part in s.split(|&c| c == b'.') {
        if n == 4 || part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        let mut v = 0u32;
        for &c in part {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as u32;
        }
        if v > 255 {
            return None;
        }
        parts[n] = v as u8;
        n += 1;
    }
    (n == 4).then_some(parts)
}

/// An IP address in canonical text: dotted IPv4 (a port dropped), compressed lower-case IPv6,
/// IPv4-mapped IPv6 as IPv4; brackets with a port and zone ids removed. Anything else pending.
pub fn ip(raw: &str, out: &mut Vec<u8>) -> Fast {
    out.clear();
    if !raw.is_ascii() {
        return Fast::Pending;
    }
    let t = raw.trim().as_bytes();
    let port_ok = |p: &[u8]| p.is_empty() || (p[0] == b':' && (2..=6).contains(&p.len()) && p[1..].iter().all(u8::is_ascii_digit));
    let mut host: &[u8] = t;
    if t.first() == Some(&b'[') {
        match t.iter().position(|&c| c == b']') {
            Some(j) if j > 1 && port_ok(&t[j + 1..]) => host = &t[1..j],
            _ => return Fast::Pending,
        }
        if !host.contains(&b':') {
            return Fast::Pending;
        }
    } else if let Some(i) = t.iter().position(|&c| c == b':') {
        if !t[i + 1..].contains(&b':') && t[..i].contains(&b'.') {
            // a.b.c.d:port
            if !port_ok(&t[i..]) {
                return Fast::Pending;
            }
            host = &t[..i];
        }
    }
    if let Some(z) = host.iter().position(|&c| c == b'%') {
        host = &host[..z];
    }
    if host.contains(&b':') {
        let text = std::str::from_utf8(host).unwrap_or("");
        return match text.parse::<Ipv6Addr>() {
            Ok(addr) => {
                match addr.to_ipv4_mapped() {
                    Some(v4) => write_v4(v4.octets(), out),
                    None => {
                        use std::io::Write;
                        let _ = write!(out, "{}", addr);
                    }
                }
                Fast::Value(0)
            }
            Err(_) => Fast::Pending,
        };
    }
    match v4_octets(host) {
        Some(_) => {
            out.extend_from_slice(host);
            Fast::Value(0)
        }
        // Four groups of 1-3 digits that are no address (a leading zero, a group over 255):
        // Python's `ipaddress` refuses them too, and zero-padded feeds are all distinct values.
        None if host.split(|&c| c == b'.').count() == 4
            && host.split(|&c| c == b'.').all(|p| (1..=3).contains(&p.len()) && p.iter().all(u8::is_ascii_digit)) => {
            Fast::Invalid
        }
        None => Fast::Pending,
    }
}

fn write_v4(o: [u8; 4], out: &mut Vec<u8>) {
    for (i, x) in o.iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        crate::json::write_uint(out, *x as u64);
    }
}

/// The network of a canonical address (`203.0.113.0/24`, `2001:db8::/48`); None if not an address.
pub fn truncate_ip(canonical: &str, v4_bits: u32, v6_bits: u32, out: &mut Vec<u8>) -> bool {
    use std::io::Write;
    if let Some(o) = v4_octets(canonical.as_bytes()) {
        let v = u32::from_be_bytes(o);
        let mask = if v4_bits == 0 { 0 } else { u32::MAX << (32 - v4_bits) };
        write_v4((v & mask).to_be_bytes(), out);
        out.push(b'/');
        crate::json::write_uint(out, v4_bits as u64);
        return true;
    }
    match canonical.parse::<Ipv6Addr>() {
        Ok(addr) => {
            let v = u128::from_be_bytes(addr.octets());
            let mask = if v6_bits == 0 { 0 } else { u128::MAX << (128 - v6_bits) };
            let net = Ipv6Addr::from((v & mask).to_be_bytes());
            let _ = write!(out, "{}/{}", net, v6_bits);
            true
        }
        Err(_) => false,
    }
}

fn num(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u32, |a, &c| a.checked_mul(10)?.checked_add((c - b'0') as u32))
}

/// Microseconds since the epoch (UTC) for the common time shapes; `None` = pending.
///
/// ISO-8601 `YYYY-MM-DD[T ]HH:MM:SS[.f]` with `Z`, `±HH:MM`, `±HHMM`, `±HH` or no offset (naive =
/// UTC; the space-separated form is what switches and Asterisk write), the compact
/// `YYYYMMDDhhmmss` (exactly 14 digits, naive = UTC), and epoch seconds, milliseconds or
/// microseconds told apart by their integer digit count (1-11, 12-13, 15-16; whole, within the
/// range where every value is exact, or with a fraction).
pub fn time_fast(raw: &str) -> Option<i64> {
    let b = raw.as_bytes();
    if !b.is_empty() && b.iter().all(u8::is_ascii_digit) {
        if b.len() == 14 {
            return compact_time(b);
        }
        let v: i64 = raw.parse().ok()?;
        return match b.len() {
            1..=11 if v < 9_007_199_254 => Some(v * 1_000_000),
            12..=13 if v < 9_007_199_254_740 => Some(v * 1_000),
            15..=16 if v < 9_007_199_254_740_992 => Some(v),
            _ => None,
        };
    }
    if let Some(dot) = b.iter().position(|&c| c == b'.').filter(|&i| (1..=16).contains(&i) && i + 1 < b.len()) {
        if b[..dot].iter().all(u8::is_ascii_digit) && b[dot + 1..].iter().all(u8::is_ascii_digit) {
            // A fractional epoch, as the exact reader takes it: the f64 value times the unit's
            // scale, truncated (told apart by the integer digits, as above).
            let v: f64 = raw.parse().ok()?;
            let scale = match dot { 1..=11 => 1e6, 12..=13 => 1e3, 14 => return None, _ => 1.0 };
            return Some((v * scale) as i64);
        }
    }
    let [y, mo, d, h, mi, s] = iso_numbers(b, b"T ")?;
    if y < 1 || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let mut p = 19;
    let mut micros: i64 = 0;
    if p < b.len() && b[p] == b'.' {
        let start = p + 1;
        p = start;
        while p < b.len() && b[p].is_ascii_digit() {
            p += 1;
        }
        let frac = &b[start..p];
        if frac.is_empty() || frac.len() > 9 {
            return None;
        }
        let mut ns: i64 = 0;
        for i in 0..9 {
            ns = ns * 10 + frac.get(i).map_or(0, |&c| (c - b'0') as i64);
        }
        micros = ns / 1000;
    }
    // One space may stand before the offset (`2026-11-25 00:01:39 +0100`), as the exact reader allows.
    let zone = match &b[p..] {
        [b' ', tail @ ..] if tail.first().is_some_and(|&c| matches!(c, b'+' | b'-' | b'Z' | b'z')) => tail,
        zone => zone,
    };
    let offset_secs: i64 = match zone {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, minutes @ ..] => {
            let (m1, m2) = match minutes {
                [] => (b'0', b'0'),
                [b':', m1, m2] | [m1, m2] => (*m1, *m2),
                _ => return None,
            };
            let oh = num(&[*h1, *h2])? as i64;
            let om = num(&[m1, m2])? as i64;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(y as i32, mo, d)?;
    let secs = date.and_hms_opt(h, mi, s)?.and_utc().timestamp() - offset_secs;
    Some(secs * 1_000_000 + micros)
}

/// `YYYYMMDDhhmmss`, naive = UTC, as the exact reader takes it; `None` (pending) for what it must
/// judge itself: an impossible date or time (a leap second it rolls over), the year 0.
fn compact_time(b: &[u8]) -> Option<i64> {
    let field = |at: usize, len: usize| num(&b[at..at + len]);
    let (y, mo, d, h, mi, s) = (field(0, 4)?, field(4, 2)?, field(6, 2)?, field(8, 2)?, field(10, 2)?, field(12, 2)?);
    if y < 1 {
        return None;
    }
    let t = NaiveDate::from_ymd_opt(y as i32, mo, d)?.and_hms_opt(h, mi, s)?;
    Some(t.and_utc().timestamp() * 1_000_000)
}

/// Whether the exact reader (Python's `parse_times`) certainly finds no time in `raw`, so the value
/// is invalid without asking it (`None` from [`time_fast`] otherwise means pending).
///
/// Only what no accepted shape can hold is refused: nothing left after trimming; a first character
/// that is not a digit or a sign (every shape starts with a year or an epoch number); a character
/// outside digits, signs, `.`, `:`, `T`, `Z`/`z` and white space; or `YYYY-MM-DD[T ]HH:MM:SS`
/// with a month, day, hour, minute or second no calendar has (a leap second, 60, is accepted).
pub fn time_invalid(raw: &str) -> bool {
    let t = raw.trim();
    let Some(first) = t.chars().next() else { return true };
    if !(first.is_ascii_digit() || matches!(first, '+' | '-' | '\u{2212}')) {
        return true;
    }
    if t.chars().any(|c| !(c.is_ascii_digit() || matches!(c, '+' | '-' | '\u{2212}' | '.' | ':' | 'T' | 'Z' | 'z')
                           || c.is_whitespace())) {
        return true;
    }
    match iso_numbers(t.as_bytes(), b"T ") {
        Some([_, mo, d, h, mi, s]) => !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60,
        None => false,
    }
}

/// Year, month, day, hour, minute and second of `YYYY-MM-DD?HH:MM:SS` at the start of `b`, with
/// `?` one of `seps`; the numbers are not range-checked.
fn iso_numbers(b: &[u8], seps: &[u8]) -> Option<[u32; 6]> {
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !seps.contains(&b[10]) || b[13] != b':' || b[16] != b':' {
        return None;
    }
    Some([num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?, num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?])
}

/// `2026-11-25T10:00:00Z`: the time truncated to `unit_us` (floor), as analytics shows it.
pub fn coarsened(us: i64, unit_us: i64, out: &mut Vec<u8>) -> bool {
    use std::io::Write;
    let t = us.div_euclid(unit_us) * unit_us;
    match DateTime::from_timestamp_micros(t) {
        Some(dt) => {
            let _ = write!(out, "{}", dt.format("%Y-%m-%dT%H:%M:%SZ"));
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gb() -> PhoneMeta {
        PhoneMeta {
            cc: "44".into(),
            idd: Some("00".into()),
            trunk: Some("0".into()),
            own_cc_len: Some(12),
            country_codes: PhoneMeta::country_table(["44", "1", "49", "353"].iter().map(|s| s.to_string())),
            withheld: ["", "anonymous", "withheld"].iter().map(|s| s.to_string()).collect(),
            national: Some(National { excluded: ["00", "0", "180020", "44"].iter().map(|s| s.to_string()).collect(),
                                      lengths: vec![4, 5, 6, 7, 8, 9, 10] }),
        }
    }

    #[test]
    fn msisdn_shapes() {
        let m = gb();
        let mut out = Vec::new();
        for raw in ["+447700900123", "07700 900123", "0044 7700900123", "tel:+44-7700-900123", "(+44) 7700-900123",
                    "447700900123", "%2B447700900123"] {
            assert_eq!(m.msisdn(raw, &mut out), Fast::Value(E164), "{raw}");
            assert_eq!(out, b"+447700900123", "{raw}");
        }
        assert_eq!(m.msisdn("Anonymous", &mut out), Fast::NoValue(WITHHELD));
        assert_eq!(m.msisdn("  ", &mut out), Fast::NoValue(WITHHELD));
        assert_eq!(m.msisdn("Monzo", &mut out), Fast::Value(ALPHANUMERIC));
        assert_eq!(out, b"MONZO");
        assert_eq!(m.msisdn("999", &mut out), Fast::Pending);
        // National digits with no trunk prefix, at a possible length: phonenumbers' reading.
        assert_eq!(m.msisdn("7700 900123", &mut out), Fast::Value(E164));
        assert_eq!(out, b"+447700900123");
        assert_eq!(m.msisdn("2079460000", &mut out), Fast::Value(E164));
        assert_eq!(out, b"+442079460000");
        for pending in ["77009001234", "180020123456", "4477009001", "123456"] {
            assert_eq!(m.msisdn(pending, &mut out), Fast::Pending, "{pending}");
        }
        let no_national = PhoneMeta { national: None, ..gb() };
        assert_eq!(no_national.msisdn("7700900123", &mut out), Fast::Pending);
        assert_eq!(m.msisdn(r#"{"number": "+447700900123"}"#, &mut out), Fast::Invalid);
        assert_eq!(m.msisdn("++447700900123", &mut out), Fast::Invalid);
        assert_eq!(m.msisdn("()", &mut out), Fast::Invalid);
        assert_eq!(m.msisdn("07700 900123 x", &mut out), Fast::Invalid);
        assert_eq!(m.msisdn("+44 07700 900123", &mut out), Fast::Pending);
        assert_eq!(m.msisdn("０７７００ ９００１２３", &mut out), Fast::Value(E164));
        assert_eq!(out, b"+447700900123");
        assert_eq!(m.msisdn("٠٧٧٠٠٩٠٠١٢٣", &mut out), Fast::Pending);
        assert_eq!(m.msisdn("+999123456789", &mut out), Fast::Pending);
    }

    #[test]
    fn ips() {
        let mut out = Vec::new();
        assert_eq!(ip("203.0.113.7:5060", &mut out), Fast::Value(0));
        assert_eq!(out, b"203.0.113.7");
        assert_eq!(ip("2001:DB8::0:1", &mut out), Fast::Value(0));
        assert_eq!(out, b"2001:db8::1");
        assert_eq!(ip("::ffff:cb00:7107", &mut out), Fast::Value(0));
        assert_eq!(out, b"203.0.113.7");
        assert_eq!(ip("203.0.113.07", &mut out), Fast::Invalid);
        assert_eq!(ip("010.001.002.003:5060", &mut out), Fast::Invalid);
        assert_eq!(ip("256.1.1.1", &mut out), Fast::Invalid);
        assert_eq!(ip("1.2.3.4.5", &mut out), Fast::Pending);
        assert_eq!(ip("1.2.3.1234", &mut out), Fast::Pending);
        assert_eq!(ip("[::1]:5060", &mut out), Fast::Value(0));
        assert_eq!(out, b"::1");
        assert_eq!(ip(" [FE80::1%eth0]:5060 ", &mut out), Fast::Value(0));
        assert_eq!(out, b"fe80::1");
        assert_eq!(ip("::FFFF:203.0.113.7", &mut out), Fast::Value(0));
        assert_eq!(out, b"203.0.113.7");
        assert_eq!(ip("[203.0.113.7]:80", &mut out), Fast::Pending);
        assert_eq!(ip("1.2.3.4:123456", &mut out), Fast::Pending);
        out.clear();
        assert!(truncate_ip("203.0.113.7", 24, 48, &mut out));
        assert_eq!(out, b"203.0.113.0/24");
        out.clear();
        assert!(truncate_ip("2001:db8:1:2::1", 24, 48, &mut out));
        assert_eq!(out, b"2001:db8:1::/48");
        out.clear();
        assert!(truncate_ip("10.1.2.3", 20, 48, &mut out));
        assert_eq!(out, b"10.1.0.0/20");
    }

    #[test]
    fn times() {
        assert_eq!(time_fast("2026-01-02T03:04:05Z"), Some(1_767_323_045_000_000));
        assert_eq!(time_fast("2026-01-02T04:04:05.5+01:00"), Some(1_767_323_045_500_000));
        assert_eq!(time_fast("2026-01-02T03:04:05"), Some(1_767_323_045_000_000));
        for same in ["2026-01-02 03:04:05", "2026-01-02 03:04:05z", "2026-01-02T04:04:05+0100", "2026-01-02 04:04:05+01",
                     "2026-01-01 22:04:05-05"] {
            assert_eq!(time_fast(same), Some(1_767_323_045_000_000), "{same}");
        }
        for same in ["2026-01-02 04:04:05 +01:00", "2026-01-02T04:04:05 +0100", "2026-01-02 03:04:05 Z"] {
            assert_eq!(time_fast(same), Some(1_767_323_045_000_000), "{same}");
        }
        for pending in ["2026-01-02t03:04:05", "2026-01-02 03:04:05  Z", "2026-01-02 03:04:05 ", "2026-01-02 03:04:05+1",
                        "2026-01-02 03:04:05+01:0", "2026-01-02 03:04:05+24:00", "2026-01-02 03:04:05 UTC"] {
            assert_eq!(time_fast(pending), None, "{pending}");
        }
        assert_eq!(time_fast("1767323045"), Some(1_767_323_045_000_000));
        assert_eq!(time_fast("1767323045000"), Some(1_767_323_045_000_000));
        assert_eq!(time_fast("1767323045.5"), Some(1_767_323_045_500_000));
        assert_eq!(time_fast("1767323045123.5"), Some(1_767_323_045_123_500));
        assert_eq!(time_fast("1767323045123456.7"), Some(1_767_323_045_123_456));
        for pending in ["1767323045.", ".5", "17673230451234567.5", "1767323045.5.5", "-1.5"] {
            assert_eq!(time_fast(pending), None, "{pending}");
        }
        assert_eq!(time_fast("2026-02-30T03:04:05Z"), None);
        // 14 digits are the compact date-time, never a millisecond epoch (that would be after 2286).
        assert_eq!(time_fast("20260102030405"), Some(1_767_323_045_000_000));
        assert_eq!(time_fast("20240229235959"), Some(1_709_251_199_000_000));
        for pending in ["20260229000000", "20261301000000", "20261100000000", "20261101240000", "20261231235960",
                        "00000101000000", "20260102030405.5"] {
            assert_eq!(time_fast(pending), None, "{pending}");
        }
        assert_eq!(time_fast("9007199254739"), Some(9_007_199_254_739_000));
        assert_eq!(time_fast("9007199254740"), None);
        let mut out = Vec::new();
        assert!(coarsened(1_767_323_045_500_000, 3_600_000_000, &mut out));
        assert_eq!(out, b"2026-01-02T03:00:00Z");
    }

    #[test]
    fn certainly_invalid_times() {
        for bad in ["", "  ", "yesterday", "true", "25/11/2026 12:34", "2026-13-45T25:61:00Z", "2026-00-01T00:00:00",
                    "2026-01-01 24:00:00", "2026-01-01T00:00:61Z", "2026-01-01T00:00:00UTC", ".5", "1e9"] {
            assert!(time_invalid(bad), "{bad:?}");
        }
        // Shapes the exact reader may still accept stay pending.
        for maybe in ["2026-01-01 00:00:00", "2026-01-01T00:00:60Z", "2026-02-30T00:00:00Z", "+2026-01-01T00:00:00Z",
                      "2026-1-1T0:0:0Z", "1700000000.5", " 2026-01-01T00:00:00 +01:00 ", "2026-01-01T00:00:00z"] {
            assert!(!time_invalid(maybe), "{maybe:?}");
        }
    }

    #[test]
    fn cleaned_numbers() {
        assert_eq!(PhoneMeta::cleaned(" tel:+44 (0)20-7946.0000 ").as_deref(), Some("+4402079460000"));
        assert_eq!(PhoneMeta::cleaned("%2b1 202/555").as_deref(), Some("+1202555"));
        assert_eq!(PhoneMeta::cleaned("０７７００").as_deref(), Some("07700"));
        assert_eq!(PhoneMeta::cleaned("٠٧٧٠٠"), None); // NFKC is Python's
        assert_eq!(PhoneMeta::cleaned("999").as_deref(), Some("999"));
        assert_eq!(PhoneMeta::cleaned("SIP:+44 20 7946 0000@pbx;user=phone").as_deref(), Some("+442079460000"));
        assert_eq!(PhoneMeta::cleaned("tel:+441234;phone-context=x").as_deref(), Some("+441234"));
    }

    #[test]
    fn uri_user_parts() {
        for (raw, user) in [("sip:+447700900123@192.0.2.1:5060;transport=UDP", "+447700900123"),
                            ("sips:1001;npdi@pbx", "1001"), ("  Sip: 07700 900123 @x", "07700 900123"),
                            ("sip:1001", "1001"), ("tel:+44;x=@y", "+44"), ("sip:@host", ""),
                            ("sipx:1001@host", "sipx:1001@host"), ("1001@host", "1001@host"), ("tel", "tel")] {
            assert_eq!(uri_user(raw), user, "{raw}");
        }
        let m = gb();
        let mut out = Vec::new();
        assert_eq!(m.msisdn("sip:anonymous@anonymous.invalid", &mut out), Fast::NoValue(WITHHELD));
        assert_eq!(m.msisdn("sip:+447700900123@ims.example;user=phone", &mut out), Fast::Value(E164));
        assert_eq!(out, b"+447700900123");
        assert_eq!(m.msisdn("sip:alice@example.com", &mut out), Fast::Value(ALPHANUMERIC));
        assert_eq!(out, b"ALICE");
        assert_eq!(m.msisdn("sip:alice.smith@example.com;foo", &mut out), Fast::Value(ALPHANUMERIC));
        assert_eq!(m.msisdn("sip:+44 7700 900123:secret@host", &mut out), Fast::Invalid);
    }

    #[test]
    fn digit_ids() {
        let mut out = Vec::new();
        assert_eq!(digits("35-391110-061293-7", 14, 16, Some(14), &mut out), Fast::Value(0));
        assert_eq!(out, b"35391110061293");
        assert_eq!(digits("12345", 6, 15, None, &mut out), Fast::Invalid);
        assert_eq!(digits("12a456", 6, 15, None, &mut out), Fast::Invalid);
    }
}
