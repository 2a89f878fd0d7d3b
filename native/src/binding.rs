//! The PyO3 surface: one core per router, parsed batches, and the envelope function the vectors test.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use std::collections::HashSet;
use std::os::raw::{c_int, c_void};
use std::ptr;

use crate::normalise::{National, PhoneMeta, CLASSES, E164, NON_E164};
use crate::numbering::{Answer, MetaSpec, Numbering, Plan, RegionSpec};
use crate::route::{Action, Batch, Config, Core, Parsed, Routed, Rule, CELL_NULL_REASONS, KINDS};
use crate::seal::{Coord, Segment, Sealer};

/// Random bytes for nonces and segment ids, drawn from the OS in blocks.
struct Pool {
    buf: [u8; 4096],
    pos: usize,
}

impl Pool {
    fn new() -> Self {
        Pool { buf: [0; 4096], pos: 4096 }
    }
    fn fill(&mut self, out: &mut [u8]) {
        if self.pos + out.len() > self.buf.len() {
            getrandom::getrandom(&mut self.buf).expect("the OS random source failed");
            self.pos = 0;
        }
        out.copy_from_slice(&self.buf[self.pos..self.pos + out.len()]);
        self.pos += out.len();
    }
}

fn parse_action(action: &str, arg: Option<&str>) -> PyResult<Action> {
    let bad = || PyValueError::new_err(format!("policy action {action:?} with argument {arg:?} is not supported"));
    Ok(match action {
        "token" => {
            let (kind, period) = match arg.and_then(|a| a.split_once(':')) {
                Some((k, p)) => (Some(k), Some(p)),
                None => (arg, None),
            };
            let k = KINDS.iter().position(|x| Some(*x) == kind).ok_or_else(bad)?;
            match period {
                None => Action::Token(k),
                Some("monthly") if k != crate::route::K_RECORD => Action::MonthlyToken(k),
                Some(_) => return Err(bad()),
            }
        }
        "keep" => Action::Keep,
        "truncate_ip" => {
            let (a, b) = arg.unwrap_or("24/48").split_once('/').ok_or_else(bad)?;
            Action::TruncateIp(a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?)
        }
        "coarsen_time" => Action::Coarsen(match arg.unwrap_or("hour") {
            "second" => 1_000_000,
            "minute" => 60_000_000,
            "hour" => 3_600_000_000,
            "day" => 86_400_000_000,
            _ => return Err(bad()),
        }),
        "generalise_cell" => Action::Cell,
        "drop" => Action::Drop,
        _ => return Err(bad()),
    })
}

/// One output of a routed batch, handed to Python without a copy (the buffer protocol).
///
/// A batch's outputs are most of the bytes the core makes (880 MB for a million records):
/// copying each into a `bytes` cost more than sealing them. The file runner writes this object
/// as it is; `bytes(buf)` makes a copy where one is wanted (Kafka messages, tests).
#[pyclass(module = "pipeline._native", frozen)]
pub struct Buffer {
    data: Vec<u8>,
}

#[pymethods]
impl Buffer {
    fn __len__(&self) -> usize {
        self.data.len()
    }

    /// # Safety
    /// Called by Python with a valid `view`; the data is immutable and lives as long as the
    /// object, which the view holds a reference to.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut pyo3::ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        use pyo3::ffi;
        if view.is_null() {
            return Err(pyo3::exceptions::PyBufferError::new_err("no view to fill"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(pyo3::exceptions::PyBufferError::new_err("a routed output is read-only"));
        }
        let data = &slf.get().data;
        unsafe {
            (*view).buf = data.as_ptr() as *mut c_void;
            (*view).len = data.len() as isize;
            (*view).readonly = 1;
            (*view).itemsize = 1;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT { c"B".as_ptr() as *mut _ } else { ptr::null_mut() };
            (*view).ndim = 1;
            (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND { &mut (*view).len } else { ptr::null_mut() };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES { &mut (*view).itemsize } else { ptr::null_mut() };
            (*view).suboffsets = ptr::null_mut();
            (*view).internal = ptr::null_mut();
            (*view).obj = slf.into_any().into_ptr();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}
}

/// Move a routed output out as a [`Buffer`], leaving an empty one of the same capacity for the
/// next batch (the allocator hands back the memory a written buffer freed: no page is faulted again).
fn take_buffer(py: Python<'_>, v: &mut Vec<u8>) -> PyResult<Py<Buffer>> {
    let cap = v.capacity();
    Py::new(py, Buffer { data: std::mem::replace(v, Vec::with_capacity(cap)) })
}

#[pyclass(module = "pipeline._native", frozen)]
pub struct ParsedBatch {
    buf: Py<PyBytes>,
    parsed: Parsed,
}

#[pymethods]
impl ParsedBatch {
    fn __len__(&self) -> usize {
        self.parsed.lengths.len()
    }
}

#[pyclass(module = "pipeline._native")]
pub struct NativeCore {
    core: Core,
    pool: Pool,
    out: Routed,
}

#[pymethods]
impl NativeCore {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (fields, rules, hex_keys, prefix, chars, cc, idd, trunk, own_cc_len, country_codes,
                        withheld, max_bytes, max_depth, segment_bytes, reasons, non_voice=Vec::new(),
                        record_prefix=None, national=None))]
    fn new(fields: Vec<String>, rules: Vec<(String, String, Option<String>)>, hex_keys: Vec<String>, prefix: String,
           chars: usize, cc: String, idd: Option<String>, trunk: Option<String>, own_cc_len: Option<usize>,
           country_codes: Vec<String>, withheld: Vec<String>, max_bytes: usize, max_depth: usize,
           segment_bytes: usize, reasons: Vec<(String, String)>, non_voice: Vec<String>,
           record_prefix: Option<String>, national: Option<(Vec<String>, Vec<usize>)>) -> PyResult<Self> {
        let mut parsed_rules = Vec::new();
        for (name, action, arg) in rules {
            let field = fields.iter().position(|f| *f == name)
                .ok_or_else(|| PyValueError::new_err(format!("policy field {name} is not in the schema")))?;
            parsed_rules.push(Rule { field, action: parse_action(&action, arg.as_deref())?, name });
        }
        if chars == 0 || chars > 64 {
            return Err(PyValueError::new_err("token length must be 1-64 hex characters"));
        }
        if !(1..=512).contains(&max_depth) {
            // The parser recurses once a nesting level; 512 levels stay far inside any thread's stack.
            return Err(PyValueError::new_err("the nesting limit must be 1-512 levels"));
        }
        let cfg = Config {
            fields,
            rules: parsed_rules,
            hex_keys,
            record_prefix: record_prefix.unwrap_or_else(|| prefix.clone()),
            prefix,
            chars,
            phone: PhoneMeta { cc, idd, trunk, own_cc_len, country_codes: PhoneMeta::country_table(country_codes), withheld,
                              national: national.map(|(excluded, lengths)| National { excluded, lengths }) },
            max_bytes,
            max_depth,
            segment_bytes,
            reasons,
            non_voice,
        };
        Ok(NativeCore { core: Core::new(cfg).map_err(PyValueError::new_err)?, pool: Pool::new(), out: Routed::default() })
    }

    /// Parse a JSONL batch (`buf` = records joined by newlines; `lengths` when records may hold newlines).
    #[pyo3(signature = (buf, lengths=None))]
    fn parse(&self, py: Python<'_>, buf: Py<PyBytes>, lengths: Option<Vec<u32>>) -> ParsedBatch {
        let data = buf.as_bytes(py);
        let core = &self.core;
        let parsed = py.allow_threads(|| core.parse(data, lengths));
        ParsedBatch { buf, parsed }
    }

    /// A batch another adapter parsed: raw records plus its field columns (schema order) and rejects.
    fn columns(&mut self, py: Python<'_>, buf: Py<PyBytes>, lengths: Vec<u32>, columns: Vec<Vec<Option<String>>>, rows: Vec<usize>,
               reject_rows: Vec<usize>, reject_reasons: Vec<String>) -> PyResult<ParsedBatch> {
        let nf = self.core.fields().len();
        let n = lengths.len();
        if columns.len() != nf || columns.iter().any(|c| c.len() != rows.len()) || reject_rows.len() != reject_reasons.len() {
            return Err(PyValueError::new_err("columns do not match the schema or the rows"));
        }
        let starts = crate::route::record_starts(&lengths);
        let mut reasons = vec![0u16; n];
        let mut vals = vec![crate::json::Val::Null; n * nf];
        let mut arena = Vec::new();
        let mut seen = vec![false; n];
        for (k, &row) in rows.iter().enumerate() {
            if row >= n {
                return Err(PyValueError::new_err("row out of range"));
            }
            seen[row] = true;
            for (f, col) in columns.iter().enumerate() {
                if let Some(v) = &col[k] {
                    let s = arena.len() as u32;
                    arena.extend_from_slice(v.as_bytes());
                    vals[row * nf + f] = crate::json::Val::Arena(s, arena.len() as u32);
                }
            }
        }
        for (row, reason) in reject_rows.iter().zip(&reject_reasons) {
            if *row >= n {
                return Err(PyValueError::new_err("reject row out of range"));
            }
            seen[*row] = true;
            reasons[*row] = self.core.reason_index(reason);
        }
        if let Some(row) = seen.iter().position(|s| !s) {
            return Err(PyValueError::new_err(format!("the adapter neither parsed nor rejected record {row}")));
        }
        let mut parsed = Parsed { starts, lengths, reasons, vals, arena, pending: Vec::new(), settled: Vec::new(),
                                  settled_text: Vec::new() };
        self.core.settle_batch(buf.as_bytes(py), &mut parsed);
        Ok(ParsedBatch { buf, parsed })
    }

    /// Distinct values the fast paths leave to Python: `[(kind, [raw...]), ...]` (kind `time` for times).
    fn pending(&self, batch: &ParsedBatch) -> Vec<(String, Vec<String>)> {
        batch.parsed.pending.iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(k, s)| (KINDS.get(k).copied().unwrap_or("time").to_string(), s.clone()))
            .collect()
    }

    /// The cleaned text of each pending number, for the exact resolution in Python (see
    /// `PhoneMeta::cleaned`); None where the value needs Unicode normalisation first.
    #[staticmethod]
    fn clean_numbers(raws: Vec<String>) -> Vec<Option<String>> {
        raws.iter().map(|r| PhoneMeta::cleaned(r)).collect()
    }

    fn learn(&mut self, kind: &str, raws: Vec<String>, values: Vec<Option<String>>, classes: Vec<Option<String>>) -> PyResult<()> {
        let k = KINDS.iter().position(|x| *x == kind).ok_or_else(|| PyValueError::new_err(format!("unknown kind {kind}")))?;
        if raws.len() != values.len() || raws.len() != classes.len() {
            return Err(PyValueError::new_err("raws, values and classes differ in length"));
        }
        self.core.learn(k, raws, values, classes);
        Ok(())
    }

    fn learn_times(&mut self, raws: Vec<String>, micros: Vec<Option<i64>>) -> PyResult<()> {
        if raws.len() != micros.len() {
            return Err(PyValueError::new_err("raws and micros differ in length"));
        }
        self.core.learn_times(raws, micros);
        Ok(())
    }

    fn set_suppressed(&mut self, tokens: Vec<String>) {
        self.core.set_suppressed(tokens.into_iter().collect::<HashSet<_>>());
    }

    /// Route a parsed batch: analytics lines, retention segments and DLQ records, each one buffer.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (batch, source_name, partitions, offsets, now, data_key, vault_kid, wrapped_key, want_keys=false))]
    fn route<'py>(&mut self, py: Python<'py>, batch: &ParsedBatch, source_name: String, partitions: Bound<'py, PyAny>,
                  offsets: Bound<'py, PyAny>, now: String, data_key: &[u8], vault_kid: &str, wrapped_key: &str,
                  want_keys: bool) -> PyResult<Bound<'py, PyAny>> {
        let n = batch.parsed.lengths.len();
        // A `range` of offsets (a file's line numbers) is expanded here, not as Python ints.
        let offsets: Vec<i64> = if offsets.is_instance_of::<pyo3::types::PyRange>() {
            let start: i64 = offsets.getattr("start")?.extract()?;
            let step: i64 = offsets.getattr("step")?.extract()?;
            let len: usize = offsets.len()?;
            (0..len as i64).map(|i| start + i * step).collect()
        } else {
            offsets.extract()?
        };
        let parts: Result<i64, _> = partitions.extract::<i64>();
        let part_list: Vec<i64> = if parts.is_err() { partitions.extract()? } else { Vec::new() };
        if offsets.len() != n || (parts.is_err() && part_list.len() != n) {
            return Err(PyValueError::new_err("one offset (and partition) per record is needed"));
        }
        let coord = match parts {
            Ok(p) => Coord::One(p),
            Err(_) => Coord::Many(&part_list),
        };
        let mut sealer = Sealer::new(data_key, vault_kid, wrapped_key, &now).map_err(PyValueError::new_err)?;
        let data = batch.buf.as_bytes(py);
        let parsed = &batch.parsed;
        let core = &self.core;
        let pool = &mut self.pool;
        let r = &mut self.out;
        py.allow_threads(|| {
            core.route(&Batch { buf: data, parsed }, &source_name, coord, &offsets, &now, &mut sealer,
                       &mut |b: &mut [u8]| pool.fill(b), want_keys, r)
        });
        let r = &mut self.out;
        let (analytics, retention, dlq) = (take_buffer(py, &mut r.analytics)?, take_buffer(py, &mut r.retention)?,
                                           take_buffer(py, &mut r.dlq)?);
        let a_bytes = &analytics.get().data;
        let keys: PyObject = if want_keys {
            let list: Vec<Option<Bound<'py, PyBytes>>> = r.keys.iter()
                .map(|k| k.map(|(s, e)| PyBytes::new(py, &a_bytes[s as usize..e as usize])))
                .collect();
            PyList::new(py, list)?.into_any().unbind()
        } else {
            py.None()
        };
        let reasons: Vec<&str> = r.dlq_reasons.iter().map(|&c| core.reason_code(c)).collect();
        // `field:reason` -> records whose optional value was nulled (a cell id no form matches).
        let mut nulled: Vec<(String, u32)> = Vec::new();
        for (i, counts) in r.nulled.iter().enumerate() {
            for (k, &c) in counts.iter().enumerate() {
                if c > 0 {
                    nulled.push((format!("{}:{}", core.rule_name(i), CELL_NULL_REASONS[k]), c));
                }
            }
        }
        let out = (
            analytics, ends_bytes(py, &r.analytics_ends), keys,
            retention, ends_bytes(py, &r.retention_ends), r.segment_ids.clone(),
            dlq, ends_bytes(py, &r.dlq_ends), reasons, r.dlq_refs.clone(), r.suppressed, nulled,
        );
        Ok(out.into_pyobject(py)?.into_any())
    }
}

/// Message ends as native-endian u32s (Python reads them through `memoryview.cast("I")`), so a
/// file runner that writes whole buffers never makes an int object per record.
fn ends_bytes<'py>(py: Python<'py>, ends: &[u32]) -> Bound<'py, PyBytes> {
    let mut raw = Vec::with_capacity(ends.len() * 4);
    for e in ends {
        raw.extend_from_slice(&e.to_ne_bytes());
    }
    PyBytes::new(py, &raw)
}

/// One retention envelope (the function `Sealer.seal` and the test vectors use).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (data_key, nonce, segment_id, sealed_at, vault_kid, wrapped_key, record_refs, lengths, source_name,
                    partition, offset, plaintext))]
fn seal_segment<'py>(py: Python<'py>, data_key: &[u8], nonce: &[u8], segment_id: &str, sealed_at: &str, vault_kid: &str,
                     wrapped_key: &str, record_refs: Vec<String>, lengths: Vec<u32>, source_name: &str,
                     partition: Bound<'py, PyAny>, offset: Bound<'py, PyAny>, plaintext: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| PyValueError::new_err("the nonce must be 12 bytes"))?;
    if lengths.len() != record_refs.len() {
        return Err(PyValueError::new_err("one length per record id is needed"));
    }
    let (p1, pv): (Option<i64>, Vec<i64>) = match partition.extract::<Option<i64>>() {
        Ok(v) => (v, Vec::new()),
        Err(_) => (None, partition.extract()?),
    };
    let (o1, ov): (Option<i64>, Vec<i64>) = match offset.extract::<Option<i64>>() {
        Ok(v) => (v, Vec::new()),
        Err(_) => (None, offset.extract()?),
    };
    let pc = p1.map_or(Coord::Many(&pv), Coord::One);
    let oc = o1.map_or(Coord::Many(&ov), Coord::One);
    let mut sealer = Sealer::new(data_key, vault_kid, wrapped_key, sealed_at).map_err(PyValueError::new_err)?;
    let mut name = Vec::new();
    crate::json::escape_into(&mut name, source_name.as_bytes());
    let ids: Vec<&str> = record_refs.iter().map(String::as_str).collect();
    let seg = Segment { segment_id, nonce, record_refs: &ids, lengths: &lengths, source_name: &name, partition: pc, offset: oc };
    let mut out = Vec::with_capacity(plaintext.len() * 4 / 3 + 512);
    sealer.seal(&mut out, &seg, plaintext);
    Ok(PyBytes::new(py, &out))
}

/// Tokens of canonical values under one subkey (`hex_key`, the HMAC key as its hex text); None stays None.
#[pyfunction]
fn tokens(hex_key: &str, prefix: &str, chars: usize, values: Vec<Option<String>>) -> PyResult<Vec<Option<String>>> {
    use hmac::{Hmac, Mac};
    if chars == 0 || chars > 64 {
        return Err(PyValueError::new_err("token length must be 1-64 hex characters"));
    }
    let mac = Hmac::<sha2::Sha256>::new_from_slice(hex_key.as_bytes()).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let mut out = Vec::with_capacity(prefix.len() + chars);
    Ok(values.into_iter().map(|v| v.map(|v| {
        out.clear();
        crate::route::token(&mac, prefix, chars, v.as_bytes(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    })).collect())
}

/// Parse JSONL records into text columns (for readers that want a frame, like the vault's).
/// Returns `(columns, rows, reject_rows, reject_codes)`.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn parse_columns(py: Python<'_>, buf: &[u8], lengths: Vec<u32>, fields: Vec<String>, max_bytes: usize, max_depth: usize)
    -> PyResult<(Vec<Vec<Option<String>>>, Vec<usize>, Vec<usize>, Vec<&'static str>)> {
    if !(1..=512).contains(&max_depth) {
        return Err(PyValueError::new_err("the nesting limit must be 1-512 levels"));
    }
    let names: Vec<&[u8]> = fields.iter().map(|f| f.as_bytes()).collect();
    let nf = names.len();
    py.allow_threads(|| {
        let mut columns: Vec<Vec<Option<String>>> = vec![Vec::new(); nf];
        let (mut rows, mut reject_rows, mut reject_codes) = (Vec::new(), Vec::new(), Vec::new());
        let mut vals = vec![crate::json::Val::Null; nf];
        let (mut arena, mut scratch) = (Vec::new(), crate::json::Scratch::default());
        let mut pos = 0usize;
        for (i, &l) in lengths.iter().enumerate() {
            let end = (pos + l as usize).min(buf.len());
            arena.clear();
            match crate::json::parse_record(buf, pos.min(end), end, max_bytes, max_depth, &names, &mut vals, &mut arena, &mut scratch) {
                Ok(()) => {
                    rows.push(i);
                    for (f, v) in vals.iter().enumerate() {
                        columns[f].push(v.get(buf, &arena).map(str::to_owned));
                    }
                }
                Err(r) => {
                    reject_rows.push(i);
                    reject_codes.push(crate::json::REASON_CODES[r as usize]);
                }
            }
            pos += l as usize + 1;
        }
        Ok((columns, rows, reject_rows, reject_codes))
    })
}

/// How many `\n` bytes `buf` holds: a batch's record count (a vectorised count, outside the GIL;
/// Python's `bytes.count` compares byte by byte while holding it).
#[pyfunction]
fn count_newlines(py: Python<'_>, buf: &[u8]) -> usize {
    py.allow_threads(|| memchr::memchr_iter(b'\n', buf).count())
}

/// libphonenumber's reading of cleaned numbers (`crate::numbering`), for `PhoneNormaliser`.
#[pyclass(module = "pipeline._native")]
pub struct PhoneNumbering {
    inner: Numbering,
}

#[pymethods]
impl PhoneNumbering {
    /// The default region (its calling code and metadata) and every calling code there is.
    #[new]
    fn new(cc: u32, region: MetaSpec, known: Vec<u32>) -> PyResult<Self> {
        Numbering::new(cc, &region, &known)
            .map(|inner| PhoneNumbering { inner })
            .map_err(|e| PyValueError::new_err(format!("the region's metadata has a pattern this reader cannot take: {e}")))
    }

    /// The calling codes whose plans reading `texts` needs and that were not added yet.
    fn missing(&self, texts: Vec<String>) -> Vec<u32> {
        let mut out: Vec<u32> = texts.iter().flat_map(|t| self.inner.needs(t)).filter(|&c| !self.inner.has(c)).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// A calling code's main-region metadata and its regions (`pipeline.core.normalise._plan`).
    fn add(&mut self, cc: u32, main: MetaSpec, regions: Vec<RegionSpec>, single: bool) {
        self.inner.add(cc, Plan::new(&main, &regions, single));
    }

    /// `(value, class)` per cleaned text, as `PhoneNormaliser._resolve_slow` gives it; None where unsure.
    fn resolve(&self, texts: Vec<String>) -> Vec<Option<(String, &'static str)>> {
        texts.iter().map(|t| self.inner.resolve(t).map(|a| match a {
            Answer::E164(v) => (v, CLASSES[E164 as usize]),
            Answer::NonE164(v) => (v, CLASSES[NON_E164 as usize]),
        })).collect()
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PARSE_REASON_CODES", crate::json::REASON_CODES.to_vec())?;
    m.add_function(wrap_pyfunction!(tokens, m)?)?;
    m.add_function(wrap_pyfunction!(count_newlines, m)?)?;
    m.add_function(wrap_pyfunction!(parse_columns, m)?)?;
    m.add_class::<NativeCore>()?;
    m.add_class::<ParsedBatch>()?;
    m.add_class::<Buffer>()?;
    m.add_class::<PhoneNumbering>()?;
    m.add_function(wrap_pyfunction!(seal_segment, m)?)?;
    Ok(())
}
