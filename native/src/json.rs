//! Strict JSON screening and parsing of one record, with the DLQ reason for a record that fails.
//!
//! One pass decides everything the old screen + slow path decided in several: the size
//! limit, blank lines, a byte-order mark, invalid UTF-8, nesting depth, RFC 8259 syntax,
//! `NaN`/`Infinity` (and numbers that overflow to infinity), top-level type and duplicate
//! keys at any depth. The checks run in a fixed order so a record with several faults
//! always gets the same reason (the order of `tests/reference_core.py`, the oracle).
//!
//! Only the top-level fields the router needs are extracted, as text: a string's decoded
//! value, a number's text as the analytics contract defines it (integers verbatim, other
//! numbers in shortest round-trip decimal form), `true`/`false`, and nested values
//! re-serialised. Values without escapes are borrowed from the line; nothing else is
//! allocated per record except the batch arena the decoded values go into.

use std::collections::HashSet;

pub const EMPTY: u8 = 1;
pub const BOM: u8 = 2;
pub const INVALID_UTF8: u8 = 3;
pub const TOO_LARGE: u8 = 4;
pub const INVALID_JSON: u8 = 5;
pub const NON_FINITE: u8 = 6;
pub const NOT_OBJECT: u8 = 7;
pub const DUPLICATE_KEY: u8 = 8;
pub const TOO_DEEP: u8 = 9;

/// Reason codes as the DLQ schema names them (index = the constants above).
pub const REASON_CODES: [&str; 10] = [
    "", "empty", "bom", "invalid_utf8", "too_large", "invalid_json", "non_finite_number",
    "not_object", "duplicate_key", "too_deep",
];

/// Where a field's text lives: in the batch buffer, in the batch arena, or a literal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Val {
    Null,
    Buf(u32, u32),
    Arena(u32, u32),
    True,
    False,
}

impl Val {
    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8], arena: &'a [u8]) -> Option<&'a str> {
        let bytes: &[u8] = match *self {
            Val::Null => return None,
            Val::Buf(s, e) => &buf[s as usize..e as usize],
            Val::Arena(s, e) => &arena[s as usize..e as usize],
            Val::True => b"true",
            Val::False => b"false",
        };
        // SAFETY: a `Buf` value spans a string body or a number inside a line that
        // `parse_record` checked to be UTF-8 as a whole, cut at ASCII quotes or delimiters, so
        // it is UTF-8 too; `Arena` values are written only from decoded escapes (valid
        // scalar values), number text, literals and Rust `String`s. Checked in debug builds.
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    }
}

/// Scratch state reused across the records of a batch (no per-record allocation).
#[derive(Default)]
pub struct Scratch {
    keys: Vec<Vec<(bool, u32, u32)>>, // per depth: keys seen in the open object (scratch?, start, end)
    text: Vec<u8>,                    // decoded keys with escapes
    /// Per top-level key position, the field it matched last record: a source writes its
    /// keys in one order, so one comparison usually finds the field.
    hints: Vec<usize>,
}

/// Strip JSON whitespace (space, tab, CR, LF) from both ends.
#[inline]
pub fn strip(line: &[u8]) -> (usize, usize) {
    let mut s = 0;
    let mut e = line.len();
    while s < e && matches!(line[s], b' ' | b'\t' | b'\r' | b'\n') {
        s += 1;
    }
    while e > s && matches!(line[e - 1], b' ' | b'\t' | b'\r' | b'\n') {
        e -= 1;
    }
    (s, e)
}

/// Deepest bracket nesting outside strings (the same count for valid and broken JSON).
pub fn depth(text: &[u8]) -> usize {
    let (mut deepest, mut cur) = (0usize, 0isize);
    let (mut in_str, mut esc) = (false, false);
    for &b in text {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
        } else if b == b'"' {
            in_str = true;
        } else if b == b'[' || b == b'{' {
            cur += 1;
            if cur > 0 && cur as usize > deepest {
                deepest = cur as usize;
            }
        } else if b == b']' || b == b'}' {
            cur -= 1;
        }
    }
    deepest
}

/// Parse one record. On success the wanted top-level fields are in `out` (indexed by the
/// field's position in `fields`); on failure the reason code.
#[allow(clippy::too_many_arguments)]
pub fn parse_record(
    buf: &[u8],
    start: usize,
    end: usize,
    max_bytes: usize,
    max_depth: usize,
    fields: &[&[u8]],
    out: &mut [Val],
    arena: &mut Vec<u8>,
    scratch: &mut Scratch,
) -> Result<(), u8> {
    if end - start > max_bytes {
        return Err(TOO_LARGE);
    }
    let (s, e) = strip(&buf[start..end]);
    let (s, e) = (start + s, start + e);
    if s == e {
        return Err(EMPTY);
    }
    let line = &buf[s..e];
    if line.starts_with(b"\xef\xbb\xbf") {
        return Err(BOM);
    }
    if simdutf8::basic::from_utf8(line).is_err() {
        return Err(INVALID_UTF8);
    }
    let opens = memchr::memchr2_iter(b'[', b'{', line).count();
    if opens > max_depth && depth(line) > max_depth {
        return Err(TOO_DEEP);
    }
    for v in out.iter_mut() {
        *v = Val::Null;
    }
    let arena_mark = arena.len();
    let mut p = Parser { buf, pos: s, end: e, nonfinite: false, duplicate: false, arena, scratch, fields, out };
    let result = p.document();
    let (nonfinite, duplicate) = (p.nonfinite, p.duplicate);
    match result {
        Err(()) => {
            arena.truncate(arena_mark);
            Err(INVALID_JSON)
        }
        Ok(is_object) => {
            let reason = if nonfinite {
                NON_FINITE
            } else if !is_object {
                NOT_OBJECT
            } else if duplicate {
                DUPLICATE_KEY
            } else {
                return Ok(());
            };
            arena.truncate(arena_mark);
            Err(reason)
        }
    }
}

struct Parser<'a, 'b> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    nonfinite: bool,
    duplicate: bool,
    arena: &'b mut Vec<u8>,
    scratch: &'b mut Scratch,
    fields: &'b [&'b [u8]],
    out: &'b mut [Val],
}

type R<T> = Result<T, ()>;

impl<'a, 'b> Parser<'a, 'b> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        if self.pos < self.end {
            Some(self.buf[self.pos])
        } else {
            None
        }
    }

    #[inline]
    fn ws(&mut self) {
        while self.pos < self.end && matches!(self.buf[self.pos], b' ' | b'\t' | b'\r' | b'\n') {
            self.pos += 1;
        }
    }

    /// The whole text: one value and nothing after it. Returns whether it is an object.
    fn document(&mut self) -> R<bool> {
        self.ws();
        let is_object = self.peek() == Some(b'{');
        if is_object {
            self.object(0, false, true)?;
        } else {
            self.value(0, false)?;
        }
        self.ws();
        if self.pos != self.end {
            return Err(());
        }
        Ok(is_object)
    }

    /// One value; with `emit`, its text is written to the arena (nested values re-serialised).
    fn value(&mut self, level: usize, emit: bool) -> R<()> {
        match self.peek().ok_or(())? {
            b'{' => self.object(level + 1, emit, false),
            b'[' => self.array(level + 1, emit),
            b'"' => {
                if emit {
                    let (s, e, escaped) = self.string()?;
                    write_json_string(self.arena, &self.buf[s..e], escaped)?;
                } else {
                    self.string()?;
                }
                Ok(())
            }
            b't' | b'f' | b'n' => {
                let word: &[u8] = match self.buf[self.pos] {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                self.literal(word)?;
                if emit {
                    self.arena.extend_from_slice(word);
                }
                Ok(())
            }
            b'N' => {
                self.literal(b"NaN")?;
                self.nonfinite = true;
                Ok(())
            }
            b'I' => {
                self.literal(b"Infinity")?;
                self.nonfinite = true;
                Ok(())
            }
            _ => {
                if self.peek() == Some(b'-') && self.buf.get(self.pos + 1) == Some(&b'I') && self.pos + 1 < self.end {
                    self.pos += 1;
                    self.literal(b"Infinity")?;
                    self.nonfinite = true;
                    return Ok(());
                }
                let (s, e, float) = self.number()?;
                if overflows(&self.buf[s..e], float) {
                    self.nonfinite = true;
                }
                if emit {
                    self.arena.extend_from_slice(&self.buf[s..e]);
                }
                Ok(())
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.end - self.pos >= word.len() && &self.buf[self.pos..self.pos + word.len()] == word {
            self.pos += word.len();
            Ok(())
        } else {
            Err(())
        }
    }

    /// A number per RFC 8259; returns its span and whether it has a fraction or exponent.
    fn number(&mut self) -> R<(usize, usize, bool)> {
        let s = self.pos;
        let b = self.buf;
        let mut p = self.pos;
        if p < self.end && b[p] == b'-' {
            p += 1;
        }
        if p >= self.end {
            return Err(());
        }
        if b[p] == b'0' {
            p += 1;
        } else if b[p].is_ascii_digit() {
            while p < self.end && b[p].is_ascii_digit() {
                p += 1;
            }
        } else {
            return Err(());
        }
        let mut float = false;
        if p < self.end && b[p] == b'.' {
            p += 1;
            let d = p;
            while p < self.end && b[p].is_ascii_digit() {
                p += 1;
            }
            if p == d {
                return Err(());
            }
            float = true;
        }
        if p < self.end && (b[p] == b'e' || b[p] == b'E') {
            p += 1;
            if p < self.end && (b[p] == b'+' || b[p] == b'-') {
                p += 1;
            }
            let d = p;
            while p < self.end && b[p].is_ascii_digit() {
                p += 1;
            }
            if p == d {
                return Err(());
            }
            float = true;
        }
        self.pos = p;
        Ok((s, p, float))
    }

    /// A string; returns the span of its body (without quotes) and whether it has escapes.
    /// Escapes are checked here (a lone surrogate is invalid), decoded by the caller.
    fn string(&mut self) -> R<(usize, usize, bool)> {
        self.pos += 1; // opening quote
        let s = self.pos;
        let b = self.buf;
        let mut escaped = false;
        let mut p = self.pos;
        loop {
            // Fast scan to the next quote, backslash or control byte.
            p = find_special(&b[..self.end], p);
            if p >= self.end {
                return Err(());
            }
            match b[p] {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    p += 1;
                    if p >= self.end {
                        return Err(());
                    }
                    match b[p] {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => p += 1,
                        b'u' => {
                            let cp = hex4(b, p + 1, self.end)?;
                            p += 5;
                            if (0xD800..0xDC00).contains(&cp) {
                                if p + 1 < self.end && b[p] == b'\\' && b[p + 1] == b'u' {
                                    let lo = hex4(b, p + 2, self.end)?;
                                    if !(0xDC00..0xE000).contains(&lo) {
                                        return Err(());
                                    }
                                    p += 6;
                                } else {
                                    return Err(());
                                }
                            } else if (0xDC00..0xE000).contains(&cp) {
                                return Err(());
                            }
                        }
                        _ => return Err(()),
                    }
                }
                _ => return Err(()), // an unescaped control byte
            }
        }
        self.pos = p + 1;
        Ok((s, p, escaped))
    }

    fn array(&mut self, level: usize, emit: bool) -> R<()> {
        self.pos += 1;
        if emit {
            self.arena.push(b'[');
        }
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            if emit {
                self.arena.push(b']');
            }
            return Ok(());
        }
        let mut first = true;
        loop {
            self.ws();
            if emit && !first {
                self.arena.extend_from_slice(b", ");
            }
            first = false;
            self.value_nested(level, emit)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    if emit {
                        self.arena.push(b']');
                    }
                    return Ok(());
                }
                _ => return Err(()),
            }
        }
    }

    /// A value inside a nested container: objects keep their own emit flag.
    fn value_nested(&mut self, level: usize, emit: bool) -> R<()> {
        if self.peek() == Some(b'{') {
            return self.object(level + 1, emit, false);
        }
        self.value(level, emit)
    }

    /// An object at nesting `level`; `top` is the record itself, whose wanted fields are extracted.
    fn object(&mut self, level: usize, emit: bool, top: bool) -> R<()> {
        self.pos += 1;
        if self.scratch.keys.len() <= level {
            self.scratch.keys.resize_with(level + 1, Vec::new);
        }
        self.scratch.keys[level].clear();
        let text_mark = self.scratch.text.len();
        if emit {
            self.arena.push(b'{');
        }
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            if emit {
                self.arena.push(b'}');
            }
            return Ok(());
        }
        let mut first = true;
        // Keys of the top level that are wanted fields are told apart by field number (a bit
        // each); other keys by comparing with the object's other such keys.
        let mut fields_seen = 0u64;
        let mut ordinal = 0usize;
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(());
            }
            let (ks, ke, kesc) = self.string()?;
            let key_ref = if kesc {
                let m = self.scratch.text.len();
                decode_into(&mut self.scratch.text, &self.buf[ks..ke])?;
                (true, m as u32, self.scratch.text.len() as u32)
            } else {
                (false, ks as u32, ke as u32)
            };
            let slot = if top { self.wanted(key_ref, ordinal) } else { None };
            ordinal += 1;
            match slot {
                Some(i) if i < 64 => {
                    self.duplicate |= fields_seen & (1 << i) != 0;
                    fields_seen |= 1 << i;
                }
                _ => {
                    if !self.duplicate && self.seen(level, key_ref) {
                        self.duplicate = true;
                    }
                    self.scratch.keys[level].push(key_ref);
                }
            }
            if emit {
                if !first {
                    self.arena.extend_from_slice(b", ");
                }
                write_json_string(self.arena, &self.buf[ks..ke], kesc)?;
                self.arena.extend_from_slice(b": ");
            }
            first = false;
            self.ws();
            if self.peek() != Some(b':') {
                return Err(());
            }
            self.pos += 1;
            self.ws();
            match slot {
                Some(i) => self.field_value(level, i)?,
                None => self.value_nested(level, emit)?,
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    if emit {
                        self.arena.push(b'}');
                    }
                    self.scratch.text.truncate(text_mark);
                    return Ok(());
                }
                _ => return Err(()),
            }
        }
    }

    fn key_bytes(&self, k: (bool, u32, u32)) -> &[u8] {
        if k.0 {
            &self.scratch.text[k.1 as usize..k.2 as usize]
        } else {
            &self.buf[k.1 as usize..k.2 as usize]
        }
    }

    fn seen(&self, level: usize, k: (bool, u32, u32)) -> bool {
        let keys = &self.scratch.keys[level];
        let name = self.key_bytes(k);
        if keys.len() < 32 {
            return keys.iter().any(|&o| self.key_bytes(o) == name);
        }
        // Many keys: a hash set over this object's keys (rare, so built on demand).
        let set: HashSet<&[u8]> = keys.iter().map(|&o| self.key_bytes(o)).collect();
        set.contains(name)
    }

    fn wanted(&mut self, k: (bool, u32, u32), ordinal: usize) -> Option<usize> {
        let name = self.key_bytes(k);
        if let Some(&h) = self.scratch.hints.get(ordinal) {
            if h < self.fields.len() && self.fields[h] == name {
                return Some(h);
            }
        }
        let found = self.fields.iter().position(|f| *f == name);
        if let Some(i) = found {
            if self.scratch.hints.len() <= ordinal {
                self.scratch.hints.resize(ordinal + 1, usize::MAX);
            }
            self.scratch.hints[ordinal] = i;
        }
        found
    }

    /// A wanted top-level field's value, kept as text.
    fn field_value(&mut self, level: usize, slot: usize) -> R<()> {
        let c = self.peek().ok_or(())?;
        let v = match c {
            b'"' => {
                let (s, e, escaped) = self.string()?;
                if escaped {
                    let m = self.arena.len();
                    decode_into(self.arena, &self.buf[s..e])?;
                    Val::Arena(m as u32, self.arena.len() as u32)
                } else {
                    Val::Buf(s as u32, e as u32)
                }
            }
            b'n' => {
                self.literal(b"null")?;
                Val::Null
            }
            b't' => {
                self.literal(b"true")?;
                Val::True
            }
            b'f' => {
                self.literal(b"false")?;
                Val::False
            }
            b'{' | b'[' => {
                let m = self.arena.len();
                self.value_nested(level, true)?;
                Val::Arena(m as u32, self.arena.len() as u32)
            }
            b'-' | b'0'..=b'9' if self.buf.get(self.pos + 1) != Some(&b'I') => {
                let (s, e, float) = self.number()?;
                let text = &self.buf[s..e];
                if overflows(text, float) {
                    self.nonfinite = true;
                }
                if float {
                    let m = self.arena.len();
                    number_text(self.arena, text, true);
                    Val::Arena(m as u32, self.arena.len() as u32)
                } else if text == b"-0" || std::str::from_utf8(text).ok().and_then(|t| t.parse::<i64>().ok()).is_none() {
                    let m = self.arena.len();
                    number_text(self.arena, text, false);
                    Val::Arena(m as u32, self.arena.len() as u32)
                } else {
                    Val::Buf(s as u32, e as u32)
                }
            }
            _ => {
                self.value(level, false)?;
                Val::Null
            }
        };
        self.out[slot] = v;
        Ok(())
    }
}

/// The first position at or after `from` holding `"`, `\\` or a control byte (or `b.len()`).
///
/// Eight bytes at a time (SWAR): string bodies are most of a record's bytes, and a byte-by-byte
/// loop with three tests was the parser's largest cost.
#[inline]
pub fn find_special(b: &[u8], mut from: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while from + 8 <= b.len() {
        let x = u64::from_le_bytes(b[from..from + 8].try_into().unwrap_or([0; 8]));
        let quote = x ^ (LO * b'"' as u64);
        let slash = x ^ (LO * b'\\' as u64);
        // A zero byte in `quote`/`slash`, or a byte of `x` below 0x20, sets that byte's high bit.
        // The borrow trick can also flag a byte above a true hit, never one before the first,
        // so the lowest flag is exact; bytes >= 0x80 are masked out by `!x` for the < 0x20 test.
        let hits = ((quote.wrapping_sub(LO) & !quote) | (slash.wrapping_sub(LO) & !slash)
            | (x.wrapping_sub(LO * 0x20) & !x)) & HI;
        if hits != 0 {
            return from + (hits.trailing_zeros() / 8) as usize;
        }
        from += 8;
    }
    while from < b.len() && b[from] != b'"' && b[from] != b'\\' && b[from] >= 0x20 {
        from += 1;
    }
    from
}

#[inline]
fn hex4(b: &[u8], p: usize, end: usize) -> R<u32> {
    if p + 4 > end {
        return Err(());
    }
    let mut v = 0u32;
    for &c in &b[p..p + 4] {
        let d = (c as char).to_digit(16).ok_or(())?;
        v = v * 16 + d;
    }
    Ok(v)
}

fn number_is_finite(text: &[u8]) -> bool {
    std::str::from_utf8(text).ok().and_then(|t| t.parse::<f64>().ok()).map_or(false, |f| f.is_finite())
}

/// A number too big for a double (`1e400`, or an integer of 309 digits): non-finite, whatever its
/// shape. An integer of at most 20 characters always fits, so only longer ones are converted.
#[inline]
fn overflows(text: &[u8], float: bool) -> bool {
    (float || text.len() > 20) && !number_is_finite(text)
}

/// A number's text as the contract defines it: an integer that fits 64 bits verbatim
/// (`-0` as `0`), anything else in shortest round-trip decimal notation without exponent.
fn number_text(arena: &mut Vec<u8>, text: &[u8], float: bool) {
    use std::io::Write;
    let t = std::str::from_utf8(text).unwrap_or("0");
    if !float {
        if let Ok(i) = t.parse::<i64>() {
            let _ = write!(arena, "{}", i);
            return;
        }
        if let Ok(u) = t.parse::<u64>() {
            let _ = write!(arena, "{}", u);
            return;
        }
    }
    let f: f64 = t.parse().unwrap_or(f64::NAN);
    let _ = write!(arena, "{}", f);
}

/// Decode a checked JSON string body (escapes valid) into UTF-8 bytes.
fn decode_into(out: &mut Vec<u8>, body: &[u8]) -> R<()> {
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c != b'\\' {
            let j = body[i..].iter().position(|&b| b == b'\\').map_or(body.len(), |k| i + k);
            out.extend_from_slice(&body[i..j]);
            i = j;
            continue;
        }
        let e = body[i + 1];
        i += 2;
        let ch = match e {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let mut cp = hex4(body, i, body.len())?;
                i += 4;
                if (0xD800..0xDC00).contains(&cp) {
                    let lo = hex4(body, i + 2, body.len())?;
                    i += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                let ch = char::from_u32(cp).ok_or(())?;
                let mut tmp = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                continue;
            }
            _ => return Err(()),
        };
        out.push(ch);
    }
    Ok(())
}

/// A nested string re-serialised: decoded, then escaped the way [`escape_into`] does.
fn write_json_string(arena: &mut Vec<u8>, body: &[u8], escaped: bool) -> R<()> {
    if !escaped {
        arena.push(b'"');
        arena.extend_from_slice(body);
        arena.push(b'"');
        return Ok(());
    }
    let mut tmp = Vec::with_capacity(body.len());
    decode_into(&mut tmp, body)?;
    arena.push(b'"');
    escape_into(arena, &tmp);
    arena.push(b'"');
    Ok(())
}

/// A number in decimal (what `write!` does, without the formatting machinery).
#[inline]
pub fn write_uint(out: &mut Vec<u8>, mut v: u64) {
    // Two digits a division, from a table of "00".."99": offsets, lengths and durations are
    // written for every record.
    static PAIRS: [u8; 200] = {
        let mut t = [0u8; 200];
        let mut i = 0;
        while i < 100 {
            t[2 * i] = b'0' + (i / 10) as u8;
            t[2 * i + 1] = b'0' + (i % 10) as u8;
            i += 1;
        }
        t
    };
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    while v >= 100 {
        let d = (v % 100) as usize;
        v /= 100;
        i -= 2;
        tmp[i..i + 2].copy_from_slice(&PAIRS[2 * d..2 * d + 2]);
    }
    if v >= 10 {
        i -= 2;
        tmp[i..i + 2].copy_from_slice(&PAIRS[2 * v as usize..2 * v as usize + 2]);
    } else {
        i -= 1;
        tmp[i] = b'0' + v as u8;
    }
    out.extend_from_slice(&tmp[i..]);
}

#[inline]
pub fn write_int(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    write_uint(out, v.unsigned_abs());
}

/// JSON string escaping as orjson writes it: `\"`, `\\`, the short forms for
/// backspace, form feed, newline, carriage return and tab, `\u00XX` for other control
/// bytes; everything else (including non-ASCII UTF-8 and `/`) as is.
pub fn escape_into(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if find_special(s, 0) == s.len() {
        out.extend_from_slice(s); // the common case: nothing to escape
        return;
    }
    let mut last = 0;
    for (i, &b) in s.iter().enumerate() {
        let rep: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            8 => b"\\b",
            12 => b"\\f",
            0..=0x1f => {
                out.extend_from_slice(&s[last..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
                last = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&s[last..i]);
        out.extend_from_slice(rep);
        last = i + 1;
    }
    out.extend_from_slice(&s[last..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &[u8], fields: &[&[u8]]) -> Result<Vec<Option<String>>, &'static str> {
        let mut out = vec![Val::Null; fields.len()];
        let mut arena = Vec::new();
        let mut scratch = Scratch::default();
        match parse_record(line, 0, line.len(), 65536, 32, fields, &mut out, &mut arena, &mut scratch) {
            Ok(()) => Ok(out.iter().map(|v| v.get(line, &arena).map(str::to_owned)).collect()),
            Err(r) => Err(REASON_CODES[r as usize]),
        }
    }

    #[test]
    fn reasons_in_order() {
        let f: &[&[u8]] = &[b"a"];
        assert_eq!(run(b"   ", f), Err("empty"));
        assert_eq!(run(b"\xef\xbb\xbf{}", f), Err("bom"));
        assert_eq!(run(b"{\"a\":\"\xff\"}", f), Err("invalid_utf8"));
        assert_eq!(run(b"{\"a\":NaN}", f), Err("non_finite_number"));
        assert_eq!(run(b"{\"a\":-Infinity}", f), Err("non_finite_number"));
        assert_eq!(run(b"{\"a\":1e400}", f), Err("non_finite_number"));
        assert_eq!(run(b"{\"a\":1,\"a\":NaN}", f), Err("non_finite_number"));
        let big_int = format!("{{\"a\":{}}}", format!("1{}", "0".repeat(400)));
        assert_eq!(run(big_int.as_bytes(), f), Err("non_finite_number"));
        let nested_big_int = format!("{{\"b\":[-{}]}}", "9".repeat(400));
        assert_eq!(run(nested_big_int.as_bytes(), f), Err("non_finite_number"));
        let just_fits = format!("{{\"a\":1{}}}", "0".repeat(307));
        assert_eq!(run(just_fits.as_bytes(), f), Ok(vec![Some(format!("1{}", "0".repeat(307)))]));
        assert_eq!(run(b"{\"a\":NaN,}", f), Err("invalid_json"));
        assert_eq!(run(b"[1,2]", f), Err("not_object"));
        assert_eq!(run(b"\"x\"", f), Err("not_object"));
        assert_eq!(run(b"{\"a\":{\"b\":1,\"b\":2}}", f), Err("duplicate_key"));
        assert_eq!(run(b"{\"a\":1,\"\\u0061\":2}", f), Err("duplicate_key"));
        assert_eq!(run(b"{\"a\":1}  x", f), Err("invalid_json"));
        assert_eq!(run(b"{\"a\":01}", f), Err("invalid_json"));
        assert_eq!(run(b"{\"a\":1.}", f), Err("invalid_json"));
        assert_eq!(run(b"{\"a\":-}", f), Err("invalid_json"));
        assert_eq!(run(b"{\"a\":\"x\ty\"}", f), Err("invalid_json"));
        assert_eq!(run(b"{\"a\":\"\\ud800\"}", f), Err("invalid_json"));
        assert_eq!(run(b"{\"a\":\"\\q\"}", f), Err("invalid_json"));
        let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
        assert_eq!(run(format!("{{\"a\":{}}}", deep).as_bytes(), f), Err("too_deep"));
        let broken_deep = "[".repeat(40);
        assert_eq!(run(broken_deep.as_bytes(), f), Err("too_deep"));
        let mut big = vec![b' '; 70000];
        big.extend_from_slice(b"{}");
        assert_eq!(run(&big, f), Err("too_large"));
    }

    #[test]
    fn values_as_text() {
        let f: &[&[u8]] = &[b"a", b"b", b"c", b"d", b"e", b"g", b"h", b"i", b"j"];
        let got = run(
            br#"{"a":60,"b":1.5,"c":1e3,"d":true,"e":{"x":[1, "q\n"]},"g":null,"h":-0,"i":"\u00e9\n","j":12345678901234567890,"z":[{"a":1}]}"#,
            f,
        )
        .unwrap();
        let want: Vec<Option<String>> = ["60", "1.5", "1000", "true", "{\"x\": [1, \"q\\n\"]}"]
            .iter()
            .map(|s| Some(s.to_string()))
            .chain([None, Some("0".into()), Some("é\n".into()), Some("12345678901234567890".into())])
            .collect();
        assert_eq!(got, want);
        assert_eq!(run(br#"{"a":1.0e-7,"b":100000000000000000000.0}"#, &[b"a", b"b"]).unwrap(),
                   vec![Some("0.0000001".into()), Some("100000000000000000000".into())]);
        assert_eq!(run(br#"{"a":"\ud83d\ude00"}"#, &[b"a"]).unwrap(), vec![Some("😀".into())]);
    }

    #[test]
    fn uints_as_decimal_text() {
        for v in [0u64, 1, 9, 10, 99, 100, 101, 999, 1000, 12345, 99999, 100000, 4294967295, 1 << 53, u64::MAX] {
            let mut out = b"x".to_vec();
            write_uint(&mut out, v);
            assert_eq!(out, format!("x{v}").into_bytes());
        }
        let mut out = Vec::new();
        write_int(&mut out, -1234567);
        assert_eq!(out, b"-1234567");
    }

    #[test]
    fn limits_are_inclusive() {
        let f: &[&[u8]] = &[b"a"];
        // Depth exactly at the limit passes; one more fails, in objects and arrays alike.
        let at = format!("{{\"a\":{}1{}}}", "[".repeat(31), "]".repeat(31));
        assert!(run(at.as_bytes(), f).is_ok());
        let over = format!("{{\"a\":{}1{}}}", "[".repeat(32), "]".repeat(32));
        assert_eq!(run(over.as_bytes(), f), Err("too_deep"));
        // Brackets inside strings do not count.
        let quoted = format!("{{\"a\":\"{}\"}}", "[{".repeat(40));
        assert!(run(quoted.as_bytes(), f).is_ok());
        // Size: the raw record, whitespace included, against the limit.
        let mut line = vec![b'{', b'}'];
        line.resize(65536, b' ');
        assert!(run(&line, f).is_ok());
        line.push(b' ');
        assert_eq!(run(&line, f), Err("too_large"));
    }

    #[test]
    fn duplicates_anywhere_but_only_in_one_object() {
        let f: &[&[u8]] = &[b"a"];
        assert_eq!(run(br#"{"a":[{"x":1,"x":2}]}"#, f), Err("duplicate_key"));
        assert_eq!(run(br#"{"a":[{"x":1},{"x":2}],"b":{"x":3}}"#, f).map(|_| ()), Ok(()));
        assert_eq!(run(r#"{"\u00e9":1,"é":2}"#.as_bytes(), f), Err("duplicate_key"));
        let many: String = (0..100).map(|i| format!("\"k{i}\":{i},")).collect();
        assert!(run(format!("{{{many}\"a\":1}}").as_bytes(), f).is_ok());
        assert_eq!(run(format!("{{{many}\"k7\":1}}").as_bytes(), f), Err("duplicate_key"));
    }

    #[test]
    fn whitespace_and_shapes() {
        let f: &[&[u8]] = &[b"a"];
        assert_eq!(run(b" \t{ \"a\" :\r\n\"x\" }\r", f).unwrap(), vec![Some("x".into())]);
        assert_eq!(run(b"{}", f).unwrap(), vec![None]);
        assert_eq!(run(b"{\"a\":null}", f).unwrap(), vec![None]);
        assert_eq!(run(b"{\"a\":1}\x0c", f), Err("invalid_json")); // form feed is not JSON whitespace
        assert_eq!(run(b"{\"a\":1,}", f), Err("invalid_json"));
        assert_eq!(run(b"{\"a\" 1}", f), Err("invalid_json"));
        assert_eq!(run(b"{'a':1}", f), Err("invalid_json"));
        assert_eq!(run(b"{\"a\":tru}", f), Err("invalid_json"));
        assert_eq!(run(b"{\"a\":\"\\u12\"}", f), Err("invalid_json"));
        assert_eq!(run(b"null", f), Err("not_object"));
        assert_eq!(run(b"{\"a\":\"\xe2\x82\"}", f), Err("invalid_utf8")); // a cut multi-byte character
        assert_eq!(run(b"{\"a\":\"\xed\xa0\x80\"}", f), Err("invalid_utf8")); // an encoded surrogate
    }

    #[test]
    fn find_special_agrees_with_a_plain_scan() {
        let plain = |b: &[u8], from: usize| {
            (from..b.len()).find(|&i| b[i] == b'"' || b[i] == b'\\' || b[i] < 0x20).unwrap_or(b.len())
        };
        let mut x: u64 = 42;
        for len in 0..80usize {
            for _ in 0..200 {
                let buf: Vec<u8> = (0..len).map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Mostly plain text, with quotes, backslashes, controls and high bytes mixed in.
                    match x % 23 {
                        0 => b'"',
                        1 => b'\\',
                        2 => (x >> 8) as u8 % 0x20,
                        3 => 0x80 | (x >> 8) as u8,
                        4 => 0x21,
                        5 => 0x5b,
                        _ => b'a' + (x >> 8) as u8 % 26,
                    }
                }).collect();
                for from in 0..=len {
                    assert_eq!(find_special(&buf, from), plain(&buf, from), "{buf:?} from {from}");
                }
            }
        }
    }

    #[test]
    fn escaping_matches_orjson() {
        let mut out = Vec::new();
        escape_into(&mut out, "a\"\\\n\x01\x1f\x7f/é\x08\x0c".as_bytes());
        assert_eq!(out, "a\\\"\\\\\\n\\u0001\\u001f\x7f/é\\b\\f".as_bytes());
    }
}
