//! The router: a parsed batch to analytics lines, DLQ records and sealed retention segments.
//!
//! One pass a record, no per-record allocation: each valid record's checks run in the
//! contract's order (the first failing one is its DLQ reason), then its analytics line
//! is written straight into the batch's output buffer in policy order. Tokens are
//! HMAC-SHA256 computed again for every value: with the CPU's SHA instructions that
//! costs less than a hash-map probe that misses the cache (measured, see bench/).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use chrono::Datelike;
use std::collections::{HashMap, HashSet};

use crate::json::{escape_into, parse_record, Scratch, Val};
use crate::normalise::{self, Fast, PhoneMeta, CLASSES};
use crate::seal::{Coord, Segment, Sealer};

/// Token kinds, in the order of the keys the caller hands in. `record` tokenises record ids: its
/// token is the record's `record_ref`, the only form an id takes outside the sealed payload.
pub const KINDS: [&str; 6] = ["msisdn", "imsi", "imei", "ip", "account", "record"];
pub const K_MSISDN: usize = 0;
pub const K_IMSI: usize = 1;
pub const K_RECORD: usize = 5;
const K_TIME: usize = 6; // pending answers for times share the learned tables

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    Token(usize),
    /// A token that changes every calendar month of the record's start (`token:<kind>:monthly`).
    MonthlyToken(usize),
    Keep,
    TruncateIp(u32, u32),
    Coarsen(i64),
    Cell,
    Drop,
}

pub struct Rule {
    pub field: usize,
    pub name: String,
    pub action: Action,
}

/// The fields the analytics writer treats specially, told once a batch (not by name a record).
#[derive(Clone, Copy, PartialEq)]
enum Role {
    RecordId,
    Duration,
    Cli,
    Other,
}

fn role(name: &str) -> Role {
    match name {
        "record_id" => Role::RecordId,
        "duration" => Role::Duration,
        "cli" => Role::Cli,
        _ => Role::Other,
    }
}

/// An answer Python settled for a value the fast path left pending.
#[derive(Clone)]
struct Learned {
    value: Option<String>,
    cls: Option<u8>,
}

pub struct Config {
    pub fields: Vec<String>,
    pub rules: Vec<Rule>,
    pub hex_keys: Vec<String>,
    pub prefix: String,
    /// The prefix of record refs: the record-ref key's id (not rotated with the token keys).
    pub record_prefix: String,
    pub chars: usize,
    pub phone: PhoneMeta,
    pub max_bytes: usize,
    pub max_depth: usize,
    pub segment_bytes: usize,
    pub reasons: Vec<(String, String)>, // code, DLQ detail; index 1..=9 are the parse codes
    /// Call types (lower case) that have no duration: a record of one may omit it (analytics 0).
    pub non_voice: Vec<String>,
}

pub struct Core {
    cfg: Config,
    macs: Vec<Hmac<Sha256>>,
    field_names: Vec<Vec<u8>>,
    idx: [usize; 7], // record_id, cli, dialled, start, duration, imsi, call_type
    learned: Vec<HashMap<String, Learned>>, // per kind, then times
    learned_times: HashMap<String, Option<i64>>,
    suppressed: HashSet<String>,
    cap: usize,
    /// Checks in the contract's order (see [`Core::check_order`]).
    checks: Vec<Check>,
    /// The (field, kind) pairs whose values need a canonical form (kind 6: a time), once each.
    wanted: Vec<(usize, usize)>,
    supp: [Option<usize>; 3], // rule index giving the token of cli, dialled, imsi when the policy emits it
}

#[derive(Clone, Copy, Debug)]
enum Check {
    Missing(usize),
    RecordId,
    Duration,
    Start,
    Rule(usize),
    Contract(usize, usize), // field index, kind (suppression fields the policy does not tokenise)
}

/// One batch after parsing: per record its field values or its reject reason.
pub struct Parsed {
    pub starts: Vec<usize>,
    pub lengths: Vec<u32>,
    pub reasons: Vec<u16>,
    pub vals: Vec<Val>,
    pub arena: Vec<u8>,
    /// Distinct values the fast paths leave to Python, per kind (index 5: times), found while parsing.
    pub pending: Vec<Vec<String>>,
    /// Per record, per normalised (field, kind) of [`Core::wanted`]: what the fast path made of the
    /// value while it was in cache, so routing never normalises a value twice.
    pub settled: Vec<Settled>,
    /// The canonical texts `settled` points into.
    pub settled_text: Vec<u8>,
}

/// A value's fast-path outcome, kept from the parse for the routing.
#[derive(Clone, Copy)]
pub enum Settled {
    /// No value (null or absent), or the record was rejected before its values were read.
    Null,
    Text(u32, u32, u8),
    NoValue(u8),
    Invalid,
    /// Left to Python: its answer is in the learned tables by the time the batch is routed.
    Pending,
    Time(i64),
}

#[derive(Default)]
pub struct Routed {
    pub analytics: Vec<u8>,
    pub analytics_ends: Vec<u32>,
    pub keys: Vec<Option<(u32, u32)>>, // into `analytics`: the caller's token
    pub retention: Vec<u8>,
    pub retention_ends: Vec<u32>,
    pub segment_ids: Vec<String>,
    pub dlq: Vec<u8>,
    pub dlq_ends: Vec<u32>,
    pub dlq_reasons: Vec<u16>,
    pub dlq_refs: Vec<String>,
    pub suppressed: usize,
    /// Per rule, per [`CELL_NULL_REASONS`]: analytics records whose value was nulled.
    pub nulled: Vec<[u32; 2]>,
}

/// Per-record results of the checks, reused across records.
#[derive(Clone, Copy)]
enum Res {
    Null,
    Text(u32, u32, u8), // canonical text in the row scratch, class (msisdn) or 255
    NoValue(u8),        // withheld number
    Time(i64),
    Nulled(u8),         // an optional value that could not be read: null, counted by reason
    Bad,
}

pub struct Batch<'a> {
    pub buf: &'a [u8],
    pub parsed: &'a Parsed,
}

const KEPT_ID_DETAIL: &str =
    "record_id: a kept id must not hold a run of 7 or more digits (a number or a time); use token:record";
const RECORD_ID_DETAIL: &str =
    "record_id must be an opaque id of 1-128 characters of A-Z a-z 0-9 . _ : / @ + - and not a bare number";

fn safe_id_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"._:/@+-".contains(&c)
}

/// A run of 7 or more digits: how a number, an IMSI or a timestamp hides inside an id.
fn has_digit_run(id: &[u8]) -> bool {
    let mut run = 0;
    for &c in id {
        run = if c.is_ascii_digit() { run + 1 } else { 0 };
        if run >= 7 {
            return true;
        }
    }
    false
}

/// `^\+?\d{7,16}$`: a bare number, an IMSI or an IMEI, refused as a record id.
fn number_shaped(id: &[u8]) -> bool {
    let d = if id.first() == Some(&b'+') { &id[1..] } else { id };
    (7..=16).contains(&d.len()) && d.iter().all(u8::is_ascii_digit)
}

fn valid_record_id(id: &str) -> bool {
    let b = id.as_bytes();
    (1..=128).contains(&b.len()) && b.iter().all(|&c| safe_id_char(c)) && !number_shaped(b)
}

/// A reject's own plain `"record_id":"..."` (within its first 4096 bytes), so a replay is recognised.
/// The first plain one is the record's own: if it is a bare number it is refused, and no later
/// (nested or repeated) `record_id` is taken instead.
fn raw_record_id(rec: &[u8]) -> Option<&str> {
    let window = &rec[..rec.len().min(4096)];
    let pat = b"\"record_id\"";
    let mut from = 0;
    while let Some(k) = window[from..].windows(pat.len()).position(|w| w == pat) {
        let mut p = from + k + pat.len();
        from = from + k + 1;
        let ws = |p: &mut usize| {
            while *p < window.len() && matches!(window[*p], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
                *p += 1;
            }
        };
        ws(&mut p);
        if p >= window.len() || window[p] != b':' {
            continue;
        }
        p += 1;
        ws(&mut p);
        if p >= window.len() || window[p] != b'"' {
            continue;
        }
        p += 1;
        let s = p;
        while p < window.len() && p - s <= 128 && safe_id_char(window[p]) {
            p += 1;
        }
        if p - s >= 1 && p - s <= 128 && p < window.len() && window[p] == b'"' {
            let id = &window[s..p];
            return if number_shaped(id) { None } else { std::str::from_utf8(id).ok() };
        }
    }
    None
}

fn is_safe_keep(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() <= 64
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || b" _.:/+-".contains(&c))
        && b.iter().filter(|c| c.is_ascii_digit()).count() <= 5
}

/// Why a cell id became null in analytics (the record itself is kept: the cell id is optional).
pub const CELL_NULL_REASONS: [&str; 2] = ["unrecognised_form", "out_of_range"];

/// MCCs whose networks use 3-digit MNCs (ITU-T E.212 assignments: North America, the Caribbean,
/// India's 405 series and parts of Latin America); elsewhere MNCs have 2 digits.
const THREE_DIGIT_MNC: [u16; 27] = [302, 310, 311, 312, 313, 314, 315, 316, 330, 334, 338, 342, 344, 346, 348,
                                    354, 356, 358, 360, 365, 366, 376, 405, 708, 722, 732, 750];

fn is_dec(s: &str, lo: usize, hi: usize) -> bool {
    (lo..=hi).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_digit())
}

/// A LAC/TAC or cell part as written (hex or decimal, optional `0x`): at most `hi` hex digits.
fn area_part(s: &str, hi: usize) -> Option<&str> {
    let t = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    ((1..=hi).contains(&t.len()) && t.bytes().all(|c| c.is_ascii_hexdigit())).then_some(t)
}

/// A cell identity's value: hex when it says so (`0x` or a letter a-f), else decimal.
fn cell_value(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None if s.bytes().any(|c| c.is_ascii_alphabetic()) => (s, 16),
        None => (s, 10),
    };
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// `(MCC, MNC)` from 3 + 2-3 digits or a 5-6 digit `MCCMNC`. A 3-digit MNC that starts with 0 in a
/// 2-digit-MNC country is the 2-digit one padded (`234015` is 234-15), so every form of one
/// network gives the same text.
fn plmn<'a>(a: &'a str, b: Option<&'a str>) -> Option<(&'a str, &'a str)> {
    let (mcc, mnc) = match b {
        Some(b) if is_dec(a, 3, 3) && is_dec(b, 2, 3) => (a, b),
        None if is_dec(a, 5, 6) => (&a[..3], &a[3..]),
        _ => return None,
    };
    let three = THREE_DIGIT_MNC.contains(&mcc.parse::<u16>().unwrap_or(0));
    Some((mcc, if mnc.len() == 3 && !three && mnc.starts_with('0') { &mnc[1..] } else { mnc }))
}

/// A cell id generalised to its area or site, or why it cannot be (an index into
/// [`CELL_NULL_REASONS`]). Forms (separators `-` `:` `.` `/`, an optional label `CGI`, `ECGI`,
/// `NCGI` or `TAI` before the value):
///
/// * `MCC-MNC-LAC-CI`, `MCC-MNC-TAC-ECI/NCI` and `MCCMNC-LAC-CI`: the area, `MCC-MNC-LAC` / `MCC-MNC-TAC`;
/// * `TAI` `MCC-MNC-TAC` or `MCCMNC-TAC`: already an area;
/// * ECGI/NCGI `MCC-MNC-ECI` or `MCCMNC-ECI` (the identity in decimal, or hex with `0x` or a letter):
///   the site. A 28-bit ECI gives the eNodeB (`ECI >> 8`, `MCC-MNC-enb<id>`); a 36-bit NCI gives
///   the gNB at its shortest id length, 22 bits (`NCI >> 14`, `MCC-MNC-gnb<id>`), which never
///   splits a site whatever length the operator configured. Unlabelled, a value over 28 bits is an NCI.
pub fn generalise_cell(v: &str, out: &mut Vec<u8>) -> Result<(), u8> {
    let t = v.trim();
    let (label, rest) = {
        let b = t.as_bytes();
        let found = ["ecgi", "ncgi", "cgi", "tai"]
            .into_iter()
            .find(|l| b.len() >= l.len() && b[..l.len()].eq_ignore_ascii_case(l.as_bytes()));
        match found {
            Some(l) => {
                let r = &t[l.len()..];
                let r = r.strip_prefix(|c: char| matches!(c, ':' | '=' | ' ' | '-')).unwrap_or(r);
                (l, r.trim_start())
            }
            None => ("", t),
        }
    };
    // At most four parts, in a fixed array: no allocation a record.
    let mut buf = [""; 4];
    let mut count = 0;
    for p in rest.split(|c| matches!(c, '-' | ':' | '.' | '/')) {
        if p.is_empty() || count == 4 {
            return Err(0);
        }
        buf[count] = p;
        count += 1;
    }
    let parts = &buf[..count];
    let compact = is_dec(parts[0], 5, 6);
    let Some((mcc, mnc)) = plmn(parts[0], if compact { None } else { parts.get(1).copied() }) else { return Err(0) };
    let tail = &parts[if compact { 1 } else { 2 }..];
    let write = |out: &mut Vec<u8>, last: &[u8]| {
        out.extend_from_slice(mcc.as_bytes());
        out.push(b'-');
        out.extend_from_slice(mnc.as_bytes());
        out.push(b'-');
        out.extend_from_slice(last);
    };
    match (label, tail) {
        ("" | "cgi" | "tai", [area, cell]) => {
            let area = area_part(area, 8).ok_or(1u8)?;
            area_part(cell, 12).ok_or(1u8)?;
            write(out, area.as_bytes());
            Ok(())
        }
        ("tai", [area]) => {
            write(out, area_part(area, 8).ok_or(1u8)?.as_bytes());
            Ok(())
        }
        ("" | "ecgi" | "ncgi", [cell]) => {
            let id = cell_value(cell).ok_or(0u8)?;
            let nr = label == "ncgi" || (label.is_empty() && id >= 1 << 28);
            if (label == "ecgi" && id >= 1 << 28) || id >= 1 << 36 {
                return Err(1);
            }
            let mut digits = Vec::with_capacity(16);
            crate::json::write_uint(&mut digits, if nr { id >> 14 } else { id >> 8 });
            let mut last = Vec::with_capacity(20);
            last.extend_from_slice(if nr { b"gnb" } else { b"enb" });
            last.extend_from_slice(&digits);
            write(out, &last);
            Ok(())
        }
        _ => Err(0),
    }
}

fn safe_source_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._/@+-".contains(c) { c } else { '_' })
        .take(64)
        .collect();
    if s.is_empty() { "source".into() } else { s }
}

impl Core {
    pub fn new(cfg: Config) -> Result<Core, String> {
        let macs = cfg
            .hex_keys
            .iter()
            .map(|k| Hmac::<Sha256>::new_from_slice(k.as_bytes()).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        if macs.len() != KINDS.len() {
            return Err("one key per token kind is needed".into());
        }
        let find = |n: &str| cfg.fields.iter().position(|f| f == n).ok_or(format!("field {n} missing from the schema"));
        let idx = [find("record_id")?, find("cli")?, find("dialled")?, find("start")?, find("duration")?, find("imsi")?,
                   find("call_type")?];
        let field_names = cfg.fields.iter().map(|f| f.as_bytes().to_vec()).collect();
        let mut checks = vec![Check::Missing(idx[1]), Check::Missing(idx[2]), Check::Missing(idx[3]),
                              Check::Missing(idx[4]), Check::RecordId, Check::Duration, Check::Start];
        for r in &cfg.rules {
            let is_id = r.name == "record_id";
            let record_token = r.action == Action::Token(K_RECORD);
            if record_token != is_id && (record_token || !matches!(r.action, Action::Keep | Action::Drop)) {
                return Err(format!("{}: record ids take token:record, keep or drop, and only record_id takes token:record",
                                   r.name));
            }
        }
        for (i, r) in cfg.rules.iter().enumerate() {
            let skip = matches!(r.action, Action::Drop)
                || r.name == "record_id"
                || (r.action == Action::Keep && r.name == "duration");
            if !skip {
                checks.push(Check::Rule(i));
            }
        }
        let mut supp = [None; 3];
        for (j, (name, kind)) in [("cli", K_MSISDN), ("dialled", K_MSISDN), ("imsi", K_IMSI)].iter().enumerate() {
            match cfg.rules.iter().position(|r| r.name == *name && r.action == Action::Token(*kind)) {
                Some(i) => supp[j] = Some(i),
                None => checks.push(Check::Contract(find(name)?, *kind)),
            }
        }
        let mut core = Core {
            macs,
            field_names,
            idx,
            learned: (0..KINDS.len()).map(|_| HashMap::new()).collect(),
            learned_times: HashMap::new(),
            suppressed: HashSet::new(),
            cap: 1 << 18,
            checks,
            wanted: Vec::new(),
            supp,
            cfg,
        };
        core.wanted = core.normalised_fields();
        Ok(core)
    }

    /// Where `(field, kind)` sits in [`Core::wanted`] (every checked value has a place).
    fn slot(&self, field: usize, kind: usize) -> usize {
        self.wanted.iter().position(|&p| p == (field, kind)).expect("every normalised field is wanted")
    }

    pub fn rule_name(&self, i: usize) -> &str {
        &self.cfg.rules[i].name
    }

    pub fn fields(&self) -> &[String] {
        &self.cfg.fields
    }

    pub fn reason_index(&mut self, code: &str) -> u16 {
        if let Some(i) = self.cfg.reasons.iter().position(|(c, _)| c == code) {
            return i as u16;
        }
        self.cfg.reasons.push((code.to_string(), "the record could not be read in the input format".to_string()));
        (self.cfg.reasons.len() - 1) as u16
    }

    pub fn reason_code(&self, i: u16) -> &str {
        &self.cfg.reasons[i as usize].0
    }

    pub fn set_suppressed(&mut self, tokens: HashSet<String>) {
        self.suppressed = tokens;
    }

    /// Record answers Python settled for pending values (bounded: the table is dropped when full).
    pub fn learn(&mut self, kind: usize, raws: Vec<String>, values: Vec<Option<String>>, classes: Vec<Option<String>>) {
        let table = &mut self.learned[kind];
        if table.len() + raws.len() > self.cap {
            table.clear();
        }
        for ((raw, value), cls) in raws.into_iter().zip(values).zip(classes) {
            let cls = cls.as_deref().and_then(normalise::class_index);
            table.insert(raw, Learned { value, cls });
        }
    }

    pub fn learn_times(&mut self, raws: Vec<String>, micros: Vec<Option<i64>>) {
        if self.learned_times.len() + raws.len() > self.cap {
            self.learned_times.clear();
        }
        self.learned_times.extend(raws.into_iter().zip(micros));
    }

    /// Split and parse a batch: `buf` holds the records joined by `\n` (`lengths` each, or split here).
    pub fn parse(&self, buf: &[u8], lengths: Option<Vec<u32>>) -> Parsed {
        let lengths = lengths.unwrap_or_else(|| split_lengths(buf));
        let nf = self.cfg.fields.len();
        let n = lengths.len();
        let starts = record_starts(&lengths);
        let mut vals = vec![Val::Null; n * nf];
        let mut reasons = vec![0u16; n];
        let mut arena = Vec::new();
        let mut scratch = Scratch::default();
        let names: Vec<&[u8]> = self.field_names.iter().map(|v| v.as_slice()).collect();
        let nw = self.wanted.len();
        let mut sets: Vec<HashSet<String>> = (0..=KINDS.len()).map(|_| HashSet::new()).collect();
        let mut settled = vec![Settled::Null; n * nw];
        let mut text = Vec::new();
        let mut tmp = Vec::new();
        for i in 0..n {
            let (s, e) = (starts[i], starts[i] + lengths[i] as usize);
            let row = &mut vals[i * nf..(i + 1) * nf];
            match parse_record(buf, s, e, self.cfg.max_bytes, self.cfg.max_depth, &names, row, &mut arena, &mut scratch) {
                // The record's values are in cache now: settle them, and note the ones Python must.
                Ok(()) => self.settle(buf, row, &arena, &mut settled[i * nw..(i + 1) * nw], &mut text, &mut sets,
                                      &mut tmp),
                Err(r) => reasons[i] = r as u16,
            }
        }
        let pending = sets.into_iter().map(|s| s.into_iter().collect()).collect();
        Parsed { starts, lengths, reasons, vals, arena, pending, settled, settled_text: text }
    }

    /// The (field, kind) pairs whose values need a canonical form (kind 5: a time), once each.
    fn normalised_fields(&self) -> Vec<(usize, usize)> {
        let mut wanted: Vec<(usize, usize)> = Vec::new();
        for c in &self.checks {
            let pair = match *c {
                Check::Start => Some((self.idx[3], K_TIME)),
                Check::Rule(i) => {
                    let r = &self.cfg.rules[i];
                    match r.action {
                        Action::Token(k) | Action::MonthlyToken(k) => Some((r.field, k)),
                        Action::TruncateIp(..) => Some((r.field, 3)),
                        Action::Coarsen(_) => Some((r.field, K_TIME)),
                        _ => None,
                    }
                }
                Check::Contract(f, k) => Some((f, k)),
                _ => None,
            };
            if let Some(p) = pair {
                if !wanted.contains(&p) {
                    wanted.push(p);
                }
            }
        }
        wanted
    }

    /// Settle one parsed record's normalised values with the fast paths, into `out` (one per
    /// [`Core::wanted`]); the distinct values they leave to Python (not learned yet) go to `sets`.
    #[allow(clippy::too_many_arguments)]
    fn settle(&self, buf: &[u8], vals: &[Val], arena: &[u8], out: &mut [Settled], text: &mut Vec<u8>,
              sets: &mut [HashSet<String>], tmp: &mut Vec<u8>) {
        for (j, &(f, k)) in self.wanted.iter().enumerate() {
            let Some(v) = vals[f].get(buf, arena) else { continue };
            out[j] = if k == K_TIME {
                match normalise::time_fast(v) {
                    Some(us) => Settled::Time(us),
                    None if normalise::time_invalid(v) => Settled::Invalid,
                    None => Settled::Pending,
                }
            } else {
                match self.fast(k, v, tmp) {
                    Fast::Value(c) => {
                        let s = text.len() as u32;
                        text.extend_from_slice(tmp);
                        Settled::Text(s, text.len() as u32, c)
                    }
                    Fast::NoValue(c) => Settled::NoValue(c),
                    Fast::Invalid => Settled::Invalid,
                    Fast::Pending => Settled::Pending,
                }
            };
            if matches!(out[j], Settled::Pending) {
                let learned = if k == K_TIME { self.learned_times.contains_key(v) } else { self.learned[k].contains_key(v) };
                if !learned && !sets[k].contains(v) {
                    sets[k].insert(v.to_owned());
                }
            }
        }
    }

    /// Settle the values of a batch another adapter parsed (see [`Core::parse`]).
    pub fn settle_batch(&self, buf: &[u8], p: &mut Parsed) {
        let nf = self.cfg.fields.len();
        let nw = self.wanted.len();
        let mut sets: Vec<HashSet<String>> = (0..=KINDS.len()).map(|_| HashSet::new()).collect();
        p.settled = vec![Settled::Null; p.reasons.len() * nw];
        p.settled_text.clear();
        let mut tmp = Vec::new();
        for row in 0..p.reasons.len() {
            if p.reasons[row] == 0 {
                self.settle(buf, &p.vals[row * nf..(row + 1) * nf], &p.arena, &mut p.settled[row * nw..(row + 1) * nw],
                            &mut p.settled_text, &mut sets, &mut tmp);
            }
        }
        p.pending = sets.into_iter().map(|s| s.into_iter().collect()).collect();
    }

    fn fast(&self, kind: usize, v: &str, out: &mut Vec<u8>) -> Fast {
        match kind {
            0 => self.cfg.phone.msisdn(v, out),
            1 => normalise::digits(v, 6, 15, None, out),
            2 => normalise::digits(v, 14, 16, Some(14), out),
            3 => normalise::ip(v, out),
            _ => normalise::account(v, out),
        }
    }

    /// Canonical value of `v` for `kind` (settled at parse, else the learned answer), into `scratch`.
    fn canonical(&self, kind: usize, v: &str, settled: Settled, text: &[u8], scratch: &mut Vec<u8>) -> Res {
        match settled {
            Settled::Text(s, e, c) => {
                let at = scratch.len() as u32;
                scratch.extend_from_slice(&text[s as usize..e as usize]);
                Res::Text(at, scratch.len() as u32, if kind == K_MSISDN { c } else { 255 })
            }
            Settled::NoValue(c) => Res::NoValue(c),
            Settled::Pending => match self.learned[kind].get(v) {
                Some(Learned { value: Some(val), cls }) if kind != K_MSISDN || cls.is_some() => {
                    let s = scratch.len() as u32;
                    scratch.extend_from_slice(val.as_bytes());
                    Res::Text(s, scratch.len() as u32, cls.unwrap_or(255))
                }
                Some(Learned { value: None, cls: Some(c) }) if kind == K_MSISDN => Res::NoValue(*c),
                _ => Res::Bad, // not learned (cannot happen after `pending`) or invalid
            },
            Settled::Invalid | Settled::Null | Settled::Time(_) => Res::Bad,
        }
    }

    /// Whether a call type is one without a duration (SMS, data...), compared trimmed and case-blind.
    fn non_voice(&self, call_type: Option<&str>) -> bool {
        call_type.is_some_and(|t| {
            let t = t.trim();
            self.cfg.non_voice.iter().any(|n| n.eq_ignore_ascii_case(t))
        })
    }

    /// A time settled at parse, else the learned answer.
    fn time(&self, v: &str, settled: Settled) -> Option<i64> {
        match settled {
            Settled::Time(us) => Some(us),
            _ => self.learned_times.get(v).copied().flatten(),
        }
    }

    /// The HMAC key and token prefix of one kind for one month (`year * 12 + month0`):
    /// HKDF-Expand(the kind's subkey, info `cdrpipe/period/YYYY-MM`, 32 bytes), used as hex text
    /// like every subkey; the prefix `<kid>@YYYY-MM:` says which month a token belongs to.
    fn monthly_key(&self, kind: usize, month: i32) -> (Hmac<Sha256>, String) {
        let period = format!("{:04}-{:02}", month.div_euclid(12), month.rem_euclid(12) + 1);
        let hex_key = &self.cfg.hex_keys[kind];
        let prk: Vec<u8> = (0..hex_key.len() / 2)
            .map(|i| u8::from_str_radix(&hex_key[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        let mut okm = [0u8; 32];
        // A 32-byte PRK and a 32-byte output are always within HKDF's limits.
        let hk = hkdf::Hkdf::<Sha256>::from_prk(&prk).expect("subkeys are 32 bytes");
        hk.expand(format!("cdrpipe/period/{period}").as_bytes(), &mut okm).expect("32 bytes");
        let hex: String = okm.iter().map(|b| format!("{b:02x}")).collect();
        let mac = Hmac::<Sha256>::new_from_slice(hex.as_bytes()).expect("HMAC takes any key length");
        let kid = self.cfg.prefix.strip_suffix(':').unwrap_or(&self.cfg.prefix);
        (mac, format!("{kid}@{period}:"))
    }

    fn token_into(&self, kind: usize, value: &[u8], out: &mut Vec<u8>) {
        let prefix = if kind == K_RECORD { &self.cfg.record_prefix } else { &self.cfg.prefix };
        token(&self.macs[kind], prefix, self.cfg.chars, value, out);
    }

    /// Route a parsed batch. `random` supplies 24 bytes per envelope (nonce, segment id).
    #[allow(clippy::too_many_arguments)]
    pub fn route(&self, b: &Batch, source_name: &str, partitions: Coord, offsets: &[i64], now: &str,
                 sealer: &mut Sealer, random: &mut dyn FnMut(&mut [u8]), want_keys: bool, out: &mut Routed) {
        let p = b.parsed;
        let n = p.lengths.len();
        let nf = self.cfg.fields.len();
        // The buffers are the caller's, reused batch after batch: fresh pages cost more
        // to fault in and zero than the routing itself (a third of the time, measured).
        out.analytics.clear();
        out.analytics_ends.clear();
        out.keys.clear();
        out.retention.clear();
        out.retention_ends.clear();
        out.segment_ids.clear();
        out.dlq.clear();
        out.dlq_ends.clear();
        out.dlq_reasons.clear();
        out.dlq_refs.clear();
        out.suppressed = 0;
        out.nulled.clear();
        out.nulled.resize(self.cfg.rules.len(), [0; 2]);
        let coords_prefix = safe_source_name(source_name);
        let part = |row: usize| match partitions {
            Coord::One(v) => v,
            Coord::Many(vs) => vs[row],
        };
        // Every record's `record_ref`: the token of its id (own, or derived), fixed width, in one buffer.
        let ref_len = self.cfg.record_prefix.len() + self.cfg.chars;
        let mut refs: Vec<u8> = Vec::with_capacity(n * ref_len);
        let keep_ids = self.cfg.rules.iter().any(|r| r.name == "record_id" && r.action == Action::Keep);
        let roles: Vec<Role> = self.cfg.rules.iter().map(|r| role(&r.name)).collect();
        let mut ids: Vec<String> = Vec::with_capacity(n); // only where not the record's own id
        let mut id_of: Vec<(u8, u32)> = Vec::with_capacity(n); // 0 own (val), 1 derived (ids), 2 raw reject id
        // Records that failed a check: row, reason, field, detail (rare, so owned text is fine).
        let mut invalid: Vec<(usize, u16, &str, String)> = Vec::new();
        let mut res = vec![Res::Null; self.cfg.rules.len()];
        let mut supp_res = [Res::Null; 3];
        let mut scratch: Vec<u8> = Vec::with_capacity(256);
        let mut tmp: Vec<u8> = Vec::with_capacity(64);
        let supp_active = !self.suppressed.is_empty();
        let mut last_time: (i64, Vec<u8>) = (0, Vec::new());
        let mut period_macs: HashMap<(usize, i32), (Hmac<Sha256>, String)> = HashMap::new();
        let val = |row: usize, f: usize| p.vals[row * nf + f].get(b.buf, &p.arena);
        // Each check's place among the values settled at parse (usize::MAX: it reads none).
        let nw = self.wanted.len();
        let check_slot: Vec<usize> = self.checks.iter().map(|c| match *c {
            Check::Start => self.slot(self.idx[3], K_TIME),
            Check::Rule(i) => {
                let r = &self.cfg.rules[i];
                match r.action {
                    Action::Token(k) | Action::MonthlyToken(k) => self.slot(r.field, k),
                    Action::TruncateIp(..) => self.slot(r.field, 3),
                    Action::Coarsen(_) => self.slot(r.field, K_TIME),
                    _ => usize::MAX,
                }
            }
            Check::Contract(f, k) => self.slot(f, k),
            _ => usize::MAX,
        }).collect();
        let text = &p.settled_text;

        for row in 0..n {
            let rid_own = p.reasons[row] == 0 && val(row, self.idx[0]).map_or(false, valid_record_id);
            let rid_raw = if p.reasons[row] != 0 {
                raw_record_id(&b.buf[p.starts[row]..p.starts[row] + p.lengths[row] as usize])
            } else {
                None
            };
            match (rid_own, rid_raw) {
                (true, _) => id_of.push((0, 0)),
                (false, Some(id)) => {
                    id_of.push((1, ids.len() as u32));
                    ids.push(id.to_string());
                }
                _ => {
                    id_of.push((1, ids.len() as u32));
                    ids.push(format!("{}:{}:{}", coords_prefix, part(row), offsets[row]));
                }
            }
            let id: &[u8] = match id_of[row] {
                (0, _) => val(row, self.idx[0]).unwrap_or("").as_bytes(),
                (_, k) => ids[k as usize].as_bytes(),
            };
            self.token_into(K_RECORD, id, &mut refs);
            if p.reasons[row] != 0 {
                continue;
            }
            // Checks in the contract's order; the first failure is the record's reason.
            scratch.clear();
            let mut start_us = 0i64; // the record's start, once Check::Start has read it
            let mut failed: Option<(&'static str, &str, String)> = None; // reason, field, detail
            let settled = &p.settled[row * nw..(row + 1) * nw];
            for (c, &slot) in self.checks.iter().zip(&check_slot) {
                let st = || settled[slot];
                match *c {
                    Check::Missing(f) => {
                        if val(row, f).is_none() && !(f == self.idx[4] && self.non_voice(val(row, self.idx[6]))) {
                            let name = &self.cfg.fields[f];
                            failed = Some(("missing_field", name, format!("{name} is missing or null")));
                        }
                    }
                    Check::RecordId => {
                        if let Some(v) = val(row, self.idx[0]) {
                            if !rid_own {
                                failed = Some(("invalid_record_id", "record_id", RECORD_ID_DETAIL.into()));
                            } else if keep_ids && has_digit_run(v.as_bytes()) {
                                failed = Some(("unsafe_value", "record_id", KEPT_ID_DETAIL.into()));
                            }
                        }
                    }
                    Check::Duration => {
                        if let Some(d) = val(row, self.idx[4]) {
                            if !((1..=9).contains(&d.len()) && d.bytes().all(|c| c.is_ascii_digit())) {
                                failed = Some(("invalid_field", "duration", "duration must be whole seconds >= 0".into()));
                            }
                        }
                    }
                    Check::Start => {
                        if let Some(v) = val(row, self.idx[3]) {
                            match self.time(v, st()) {
                                Some(us) => start_us = us,
                                None => failed = Some(("invalid_field", "start",
                                                       "start must be ISO-8601 or epoch seconds".into())),
                            }
                        }
                    }
                    Check::Rule(i) => {
                        let r = &self.cfg.rules[i];
                        let v = val(row, r.field);
                        let (ok, detail) = match (r.action, v) {
                            (_, None) => {
                                res[i] = Res::Null;
                                (true, "")
                            }
                            (Action::Token(k) | Action::MonthlyToken(k), Some(v)) => {
                                res[i] = self.canonical(k, v, st(), text, &mut scratch);
                                let ok = !matches!(res[i], Res::Bad);
                                (ok, ["not a valid msisdn", "not a valid imsi", "not a valid imei", "not a valid ip",
                                      "not a valid account"][k])
                            }
                            (Action::Keep, Some(v)) => (is_safe_keep(v),
                                "kept fields must be short plain values with at most 5 digits; tokenise or drop it"),
                            (Action::TruncateIp(v4, v6), Some(v)) => {
                                // The canonical address as text where it already is (no copy).
                                let canon: Option<&str> = match st() {
                                    Settled::Text(s, e, _) => std::str::from_utf8(&text[s as usize..e as usize]).ok(),
                                    Settled::Pending => self.learned[3].get(v).and_then(|l| l.value.as_deref()),
                                    _ => None,
                                };
                                let s2 = scratch.len() as u32;
                                res[i] = match canon {
                                    Some(c) if normalise::truncate_ip(c, v4, v6, &mut scratch) => {
                                        Res::Text(s2, scratch.len() as u32, 255)
                                    }
                                    _ => Res::Bad,
                                };
                                (!matches!(res[i], Res::Bad), "not a valid IPv4 or IPv6 address")
                            }
                            (Action::Coarsen(_), Some(v)) => {
                                res[i] = self.time(v, st()).map_or(Res::Bad, Res::Time);
                                (!matches!(res[i], Res::Bad), "not an ISO-8601 time or epoch seconds")
                            }
                            (Action::Cell, Some(v)) => {
                                let s = scratch.len() as u32;
                                res[i] = match generalise_cell(v, &mut scratch) {
                                    Ok(()) => Res::Text(s, scratch.len() as u32, 255),
                                    Err(why) => {
                                        scratch.truncate(s as usize);
                                        Res::Nulled(why)
                                    }
                                };
                                (true, "")
                            }
                            (Action::Drop, _) => (true, ""),
                        };
                        if !ok {
                            let code = if r.action == Action::Keep { "unsafe_value" } else { "invalid_field" };
                            failed = Some((code, r.name.as_str(), format!("{}: {}", r.name, detail)));
                        }
                    }
                    Check::Contract(f, k) => {
                        let j = if f == self.idx[1] { 0 } else if f == self.idx[2] { 1 } else { 2 };
                        supp_res[j] = match val(row, f) {
                            None => Res::Null,
                            Some(v) => self.canonical(k, v, st(), text, &mut scratch),
                        };
                        if matches!(supp_res[j], Res::Bad) {
                            let name = &self.cfg.fields[f];
                            failed = Some(("invalid_field", name, format!("{name}: not a valid {}", KINDS[k])));
                        }
                    }
                }
                if failed.is_some() {
                    break;
                }
            }
            if let Some((code, field, text)) = failed {
                let code_i = self.cfg.reasons.iter().position(|(c, _)| c == code).unwrap_or(0) as u16;
                invalid.push((row, code_i, field, text));
                continue;
            }
            // Suppressed subscriber as either party (or by IMSI): counted, not published.
            if supp_active {
                let mut hit = false;
                for j in 0..3 {
                    let (r, kind) = match self.supp[j] {
                        Some(i) => (res[i], if j == 2 { K_IMSI } else { K_MSISDN }),
                        None => (supp_res[j], if j == 2 { K_IMSI } else { K_MSISDN }),
                    };
                    if let Res::Text(s, e, _) = r {
                        tmp.clear();
                        self.token_into(kind, &scratch[s as usize..e as usize], &mut tmp);
                        if self.suppressed.contains(std::str::from_utf8(&tmp).unwrap_or("")) {
                            hit = true;
                            break;
                        }
                    }
                }
                if hit {
                    out.suppressed += 1;
                    continue;
                }
            }
            // The analytics line, built from the policy's fields only, in policy order.
            let a = &mut out.analytics;
            a.push(b'{');
            let mut first = true;
            let mut key: Option<(u32, u32)> = None;
            let mut sep = |a: &mut Vec<u8>, name: &str| {
                if !first {
                    a.push(b',');
                }
                first = false;
                a.push(b'"');
                a.extend_from_slice(name.as_bytes());
                a.extend_from_slice(b"\":");
            };
            for (i, (r, &role)) in self.cfg.rules.iter().zip(&roles).enumerate() {
                if r.action == Action::Drop {
                    continue;
                }
                if role == Role::RecordId {
                    sep(a, "record_id");
                    a.push(b'"');
                    match (r.action, id_of[row]) {
                        (Action::Token(_), _) => a.extend_from_slice(&refs[row * ref_len..(row + 1) * ref_len]),
                        (_, (0, _)) => escape_into(a, val(row, self.idx[0]).unwrap_or("").as_bytes()),
                        (_, (_, k)) => escape_into(a, ids[k as usize].as_bytes()),
                    }
                    a.push(b'"');
                    continue;
                }
                let v = val(row, r.field);
                sep(a, &r.name);
                match r.action {
                    Action::Keep if role == Role::Duration => {
                        // Absent only for a call type without one (the checks let nothing else through).
                        crate::json::write_uint(a, v.map_or(0, |d| d.parse::<u64>().unwrap_or(0)));
                    }
                    Action::Keep => match v {
                        Some(s) => {
                            a.push(b'"');
                            escape_into(a, s.as_bytes());
                            a.push(b'"');
                        }
                        None => a.extend_from_slice(b"null"),
                    },
                    Action::Token(kind) | Action::MonthlyToken(kind) => {
                        let start = a.len() as u32;
                        match res[i] {
                            Res::Text(s, e, _) => {
                                a.push(b'"');
                                let value = &scratch[s as usize..e as usize];
                                if let Action::MonthlyToken(_) = r.action {
                                    // The month of the record's start (valid: checked above), UTC.
                                    let month = chrono::DateTime::from_timestamp_micros(start_us)
                                        .map_or(0, |d| d.year() * 12 + d.month0() as i32);
                                    let (mac, prefix) = period_macs.entry((kind, month))
                                        .or_insert_with(|| self.monthly_key(kind, month));
                                    token(mac, prefix, self.cfg.chars, value, a);
                                } else {
                                    self.token_into(kind, value, a);
                                }
                                a.push(b'"');
                                if role == Role::Cli {
                                    key = Some((start + 1, a.len() as u32 - 1));
                                }
                            }
                            _ => a.extend_from_slice(b"null"),
                        }
                        if kind == K_MSISDN {
                            let cls = match res[i] {
                                Res::Text(_, _, c) | Res::NoValue(c) if (c as usize) < CLASSES.len() => Some(CLASSES[c as usize]),
                                _ => None,
                            };
                            a.push(b',');
                            a.push(b'"');
                            a.extend_from_slice(r.name.as_bytes());
                            a.extend_from_slice(b"_class\":");
                            match cls {
                                Some(c) => {
                                    a.push(b'"');
                                    a.extend_from_slice(c.as_bytes());
                                    a.push(b'"');
                                }
                                None => a.extend_from_slice(b"null"),
                            }
                        }
                    }
                    Action::TruncateIp(..) | Action::Cell => match res[i] {
                        Res::Text(s, e, _) => {
                            a.push(b'"');
                            a.extend_from_slice(&scratch[s as usize..e as usize]);
                            a.push(b'"');
                        }
                        Res::Nulled(why) => {
                            out.nulled[i][why as usize] += 1;
                            a.extend_from_slice(b"null");
                        }
                        _ => a.extend_from_slice(b"null"),
                    },
                    Action::Coarsen(unit) => match res[i] {
                        Res::Time(us) => {
                            // Coarsened times repeat record after record: format each once.
                            let t = us.div_euclid(unit) * unit;
                            if t != last_time.0 || last_time.1.is_empty() {
                                last_time.1.clear();
                                if !normalise::coarsened(t, 1, &mut last_time.1) {
                                    last_time.1.extend_from_slice(b"?");
                                }
                                last_time.0 = t;
                            }
                            a.push(b'"');
                            a.extend_from_slice(&last_time.1);
                            a.push(b'"');
                        }
                        _ => a.extend_from_slice(b"null"),
                    },
                    Action::Drop => {}
                }
            }
            a.extend_from_slice(b"}\n");
            out.analytics_ends.push(a.len() as u32);
            if want_keys {
                out.keys.push(key);
            }
        }

        // Record refs as text, for the envelopes and the DLQ (tokens are ASCII hex after a key id).
        let ref_text = |row: usize| -> &str {
            std::str::from_utf8(&refs[row * ref_len..(row + 1) * ref_len]).unwrap_or("")
        };
        let mut rnd = [0u8; 24];
        let mut name_json = Vec::new();
        escape_into(&mut name_json, source_name.as_bytes());

        // Retention: every record, in segments of about `segment_bytes`.
        let budget = self.cfg.segment_bytes;
        let mut first = 0usize;
        let mut id_refs: Vec<&str> = Vec::new();
        while first < n {
            let start_byte = p.starts[first];
            let mut last = first + 1;
            while last < n && p.starts[last] + p.lengths[last] as usize + 1 <= start_byte + budget {
                last += 1;
            }
            let end_byte = p.starts[last - 1] + p.lengths[last - 1] as usize;
            random(&mut rnd);
            let seg_id = hex12(&rnd[12..]);
            id_refs.clear();
            id_refs.extend((first..last).map(ref_text));
            let seg = Segment {
                segment_id: &seg_id,
                nonce: rnd[..12].try_into().unwrap_or([0; 12]),
                record_refs: &id_refs,
                lengths: &p.lengths[first..last],
                source_name: &name_json,
                partition: match partitions {
                    Coord::One(v) => Coord::One(v),
                    Coord::Many(vs) => Coord::Many(&vs[first..last]),
                },
                offset: Coord::Many(&offsets[first..last]),
            };
            sealer.seal(&mut out.retention, &seg, &b.buf[start_byte..end_byte]);
            out.retention.push(b'\n');
            out.retention_ends.push(out.retention.len() as u32);
            out.segment_ids.push(seg_id);
            first = last;
        }

        // DLQ: parse rejects first, then records that failed a check, each with its own sealed payload.
        let mut now_json = Vec::new();
        escape_into(&mut now_json, now.as_bytes());
        let rejects = (0..n).filter(|&r| p.reasons[r] != 0).map(|r| (r, p.reasons[r], None::<&str>, None::<&str>));
        let checked = invalid.iter().map(|(r, code, field, text)| (*r, *code, Some(*field), Some(text.as_str())));
        for (row, code, field, detail) in rejects.collect::<Vec<_>>().into_iter().chain(checked) {
            let d = &mut out.dlq;
            let id = ref_text(row);
            d.extend_from_slice(b"{\"type\":\"cdr.dlq/2\",\"reason\":\"");
            escape_into(d, self.cfg.reasons[code as usize].0.as_bytes());
            d.extend_from_slice(b"\",\"field\":");
            match field {
                Some(f) => {
                    d.push(b'"');
                    escape_into(d, f.as_bytes());
                    d.push(b'"');
                }
                None => d.extend_from_slice(b"null"),
            }
            d.extend_from_slice(b",\"detail\":\"");
            escape_into(d, detail.unwrap_or(&self.cfg.reasons[code as usize].1).as_bytes());
            d.extend_from_slice(b"\",\"record_ref\":\"");
            escape_into(d, id.as_bytes());
            let pr = part(row);
            d.extend_from_slice(b"\",\"source\":{\"name\":\"");
            d.extend_from_slice(&name_json);
            d.extend_from_slice(b"\",\"partition\":");
            crate::json::write_int(d, pr);
            d.extend_from_slice(b",\"offset\":");
            crate::json::write_int(d, offsets[row]);
            d.extend_from_slice(b"},\"failed_at\":\"");
            d.extend_from_slice(&now_json);
            d.extend_from_slice(b"\",\"payload\":");
            random(&mut rnd);
            let seg_id = hex12(&rnd[12..]);
            let one_id = [id];
            let seg = Segment {
                segment_id: &seg_id,
                nonce: rnd[..12].try_into().unwrap_or([0; 12]),
                record_refs: &one_id,
                lengths: &p.lengths[row..row + 1],
                source_name: &name_json,
                partition: Coord::One(pr),
                offset: Coord::One(offsets[row]),
            };
            sealer.seal(d, &seg, &b.buf[p.starts[row]..p.starts[row] + p.lengths[row] as usize]);
            d.extend_from_slice(b"}\n");
            out.dlq_ends.push(d.len() as u32);
            out.dlq_reasons.push(code);
            out.dlq_refs.push(id.to_string());
        }
    }
}

/// The lengths of the records of a buffer joined by `\n` (SIMD search for the newlines).
pub fn split_lengths(buf: &[u8]) -> Vec<u32> {
    let mut lengths = Vec::with_capacity(buf.len() / 128 + 1);
    let mut start = 0usize;
    for nl in memchr::memchr_iter(b'\n', buf) {
        lengths.push((nl - start) as u32);
        start = nl + 1;
    }
    lengths.push((buf.len() - start) as u32);
    lengths
}

/// Where each record starts in a batch buffer of records joined by `\n`.
pub fn record_starts(lengths: &[u32]) -> Vec<usize> {
    let mut pos = 0usize;
    lengths.iter().map(|&l| {
        let start = pos;
        pos += l as usize + 1;
        start
    }).collect()
}

/// Two lower-case hex digits for each byte value, as one `u16` in memory order (one load and
/// one store a byte, where digit-by-digit encoding cost a third of `token`'s own time).
static HEX_PAIRS: [u16; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = u16::from_le_bytes([HEX[i >> 4], HEX[i & 15]]);
        i += 1;
    }
    t
};

/// `prefix` + the first `chars` hex digits of HMAC-SHA256(key, value): the token construction.
pub fn token(mac: &Hmac<Sha256>, prefix: &str, chars: usize, value: &[u8], out: &mut Vec<u8>) {
    let mut mac = mac.clone();
    mac.update(value);
    let digest = mac.finalize().into_bytes();
    out.extend_from_slice(prefix.as_bytes());
    // Only the bytes the token shows are encoded.
    let mut hex = [0u8; 64];
    for (pair, &byte) in hex.chunks_exact_mut(2).zip(&digest[..chars.div_ceil(2)]) {
        pair.copy_from_slice(&HEX_PAIRS[byte as usize].to_le_bytes());
    }
    out.extend_from_slice(&hex[..chars]);
}

fn hex12(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(24);
    for &x in &b[..12] {
        s.push(HEX[(x >> 4) as usize] as char);
        s.push(HEX[(x & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_lengths_match_a_plain_split() {
        for buf in [&b""[..], b"\n", b"a", b"a\n", b"\na", b"ab\n\ncd\n", b"{\"x\":1}\n{}\n{\"y\":22}"] {
            let plain: Vec<u32> = buf.split(|&b| b == b'\n').map(|l| l.len() as u32).collect();
            assert_eq!(split_lengths(buf), plain, "{buf:?}");
        }
    }

    #[test]
    fn record_ids() {
        assert!(valid_record_id("r-000001"));
        assert!(!valid_record_id("447700900123"));
        assert!(!valid_record_id("+447700900123"));
        assert!(valid_record_id("447700900123-x"));
        assert!(!valid_record_id(""));
        assert!(!valid_record_id("a b"));
        assert_eq!(raw_record_id(br#"{"record_id" : "r-1","cli":"#), Some("r-1"));
        assert_eq!(raw_record_id(br#"{"record_id":"447700900123","#), None);
        assert_eq!(raw_record_id(br#"{"record_id":"r 1","#), None);
        assert_eq!(raw_record_id(br#"{"record_id":"r 1","x":{"record_id":"r-2"}"#), Some("r-2"));
        assert_eq!(raw_record_id(br#"{"record_id":"447700900123","x":{"record_id":"r-2"}"#), None);
    }

    #[test]
    fn cells_and_keeps() {
        let cell = |v: &str| {
            let mut out = Vec::new();
            generalise_cell(v, &mut out).map(|()| String::from_utf8(out).unwrap())
        };
        assert_eq!(cell("234-15-0a1B-ff").as_deref(), Ok("234-15-0a1B"));
        assert_eq!(cell("23415-57065-40534717").as_deref(), Ok("234-15-57065"));
        assert_eq!(cell("310260-1234-56789").as_deref(), Ok("310-260-1234"));
        assert_eq!(cell("234015-1234-56789").as_deref(), Ok("234-15-1234"));
        assert_eq!(cell("234-015-1234-56789").as_deref(), Ok("234-15-1234"));
        assert_eq!(cell("ECGI 234-15-0x1A2B3C4").as_deref(), Ok("234-15-enb107187"));
        assert_eq!(cell("234-15-27409348").as_deref(), Ok("234-15-enb107067"));
        assert_eq!(cell("ncgi:310-410-0x123456789").as_deref(), Ok("310-410-gnb298261"));
        assert_eq!(cell("310-410-4886718345").as_deref(), Ok("310-410-gnb298261"));
        assert_eq!(cell("TAI:23415-0x00AB").as_deref(), Ok("234-15-00AB"));
        assert_eq!(cell("ecgi:234-15-0x1A2B3C4D"), Err(1));
        assert_eq!(cell("234-15-0x1FFFFFFFFF"), Err(1));
        assert_eq!(cell("cell 17"), Err(0));
        assert_eq!(cell("2341-57065-40534717"), Err(0));
        assert_eq!(cell(""), Err(0));
        assert!(is_safe_keep("voice"));
        assert!(!is_safe_keep("07700 900123"));
        assert!(!is_safe_keep("x\"y"));
        assert_eq!(safe_source_name("a b/é.jsonl"), "a_b/_.jsonl");
    }
}
