//! libphonenumber's reading of a cleaned number (digits, maybe a leading `+`), on its metadata.
//!
//! The exact resolution of a number the fast path leaves pending is
//! `PhoneNormaliser._resolve_slow` in Python: `phonenumbers.parse`, then `is_valid_number` or
//! `is_possible_number`, then E.164. It costs ~50 us a value; a feed whose numbers the fast path
//! cannot settle (international numbers written without `+`, `+44 (0)20...`) is mostly distinct
//! values, so it ran at a few thousand records/s. This module follows the same steps for digit
//! strings, on patterns and lengths Python hands over from the `phonenumbers` package (so the
//! numbering plan is still never written here), and says `None` wherever it is not sure to
//! give `_resolve_slow`'s answer: short numbers (their own check), a pattern the `regex` crate
//! does not take, a transform rule with no group. tests/property/test_native_differential.py
//! holds it against `_resolve_slow` for every region.
//!
//! Each function names the `phonenumberutil` function it follows.

use regex::{Regex, RegexBuilder};
use std::collections::HashMap;

/// `_MIN_LENGTH_FOR_NSN`, `_MAX_LENGTH_FOR_NSN`, `_MAX_INPUT_STRING_LENGTH`.
const MIN_NSN: usize = 2;
const MAX_NSN: usize = 17;
const MAX_INPUT: usize = 250;

/// A `PhoneNumberDesc`: its national number pattern (as a full match) and possible lengths.
pub struct Desc {
    pattern: Option<Regex>,
    lengths: Vec<i32>,
}

impl Desc {
    /// `_is_number_matching_desc`.
    fn matches(&self, nsn: &str) -> bool {
        (self.lengths.is_empty() || self.lengths.contains(&(nsn.len() as i32)))
            && self.pattern.as_ref().is_some_and(|p| p.is_match(nsn))
    }
}

/// What one region's metadata says about reading a number: prefixes, general pattern, lengths.
pub struct Meta {
    idd: Option<Regex>,
    npp: Option<Regex>,
    transform: Option<String>,
    general: Option<Regex>,
    possible: Vec<i32>,
    local: Vec<i32>,
}

/// One region of a country code, for `is_valid_number`.
pub struct Region {
    leading: Option<Regex>,
    general: Desc,
    /// The number types in `_number_type_helper`'s order (mobile left out where its pattern is fixed-line's).
    types: Vec<Desc>,
}

/// A country code: its main region's metadata and its regions (`single`: the code has one
/// region, taken without a test; else the first that its leading digits or number types pick).
pub struct Plan {
    main: Meta,
    regions: Vec<Region>,
    single: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum LengthCheck {
    Possible,
    LocalOnly,
    TooShort,
    TooLong,
    Invalid,
}

/// A parse: the number, a `NumberParseException`, or a step this module does not follow.
enum Parsed {
    Number(u32, String),
    Fails,
    Unsure,
}

/// Metadata as Python hands it over: `(pattern, lengths)` for a description.
pub type DescSpec = (Option<String>, Vec<i32>);
/// `(idd, national_prefix_for_parsing, transform_rule, general pattern, possible lengths, local-only lengths)`.
pub type MetaSpec = (Option<String>, Option<String>, Option<String>, Option<String>, Vec<i32>, Vec<i32>);
/// `(leading_digits, general description, type descriptions)`.
pub type RegionSpec = (Option<String>, DescSpec, Vec<DescSpec>);

/// A pattern anchored at the start (and the end for a full match). Unicode is off: the text is
/// ASCII digits, and Unicode `\d` makes each pattern some thirty times slower to build.
fn anchored(pattern: &Option<String>, full: bool) -> Result<Option<Regex>, regex::Error> {
    match pattern.as_deref() {
        None | Some("") => Ok(None),
        Some(p) => RegexBuilder::new(&if full { format!("^(?:{p})$") } else { format!("^(?:{p})") })
            .unicode(false)
            .build()
            .map(Some),
    }
}

fn desc(spec: &DescSpec) -> Result<Desc, regex::Error> {
    Ok(Desc { pattern: anchored(&spec.0, true)?, lengths: spec.1.clone() })
}

/// Python's `\1` group references as the `regex` crate's `${1}`.
fn template(rule: &str) -> String {
    let mut out = String::with_capacity(rule.len() + 8);
    let mut chars = rule.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("${");
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    out.push(d);
                }
                out.push('}');
            }
            '$' => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

impl Meta {
    pub fn new(spec: &MetaSpec) -> Result<Meta, regex::Error> {
        let (idd, npp, transform, general, possible, local) = spec;
        Ok(Meta {
            idd: anchored(idd, false)?,
            npp: anchored(npp, false)?,
            transform: transform.as_deref().filter(|t| !t.is_empty()).map(template),
            general: anchored(general, true)?,
            possible: possible.clone(),
            local: local.clone(),
        })
    }

    /// `_match_national_number` against the general description (no length test).
    fn viable(&self, number: &str) -> bool {
        self.general.as_ref().is_some_and(|g| g.is_match(number))
    }

    /// `_test_number_length` for an unknown type (the general description's lengths).
    fn test_length(&self, number: &str) -> Option<LengthCheck> {
        let n = number.len() as i32;
        let (&min, &max) = (self.possible.first()?, self.possible.last()?);
        Some(if self.local.contains(&n) {
            LengthCheck::LocalOnly
        } else if n == min {
            LengthCheck::Possible
        } else if min > n {
            LengthCheck::TooShort
        } else if max < n {
            LengthCheck::TooLong
        } else if self.possible[1..].contains(&n) {
            LengthCheck::Possible
        } else {
            LengthCheck::Invalid
        })
    }

    /// `_maybe_strip_national_prefix_carrier_code`: the number with its national prefix
    /// stripped (or transformed), or as it was; None where this module cannot follow.
    fn strip_national_prefix(&self, number: &str) -> Option<String> {
        let Some(npp) = self.npp.as_ref() else { return Some(number.to_string()) };
        if number.is_empty() {
            return Some(String::new());
        }
        let Some(caps) = npp.captures(number) else { return Some(number.to_string()) };
        let viable = self.viable(number);
        let groups = caps.len() - 1;
        let out = match self.transform.as_deref() {
            Some(rule) if groups > 0 && caps.get(groups).is_some() => {
                let mut t = String::new();
                caps.expand(rule, &mut t);
                t.push_str(&number[caps.get(0)?.end()..]);
                t
            }
            Some(_) if groups == 0 => return None, // Python indexes an empty tuple here: leave it to Python
            _ => number[caps.get(0)?.end()..].to_string(),
        };
        Some(if viable && !self.viable(&out) { number.to_string() } else { out })
    }
}

impl Region {
    pub fn new(spec: &RegionSpec) -> Result<Region, regex::Error> {
        Ok(Region {
            leading: anchored(&spec.0, false)?,
            general: desc(&spec.1)?,
            types: spec.2.iter().map(desc).collect::<Result<_, _>>()?,
        })
    }

    /// `_number_type_helper(...) != UNKNOWN`.
    fn known_type(&self, nsn: &str) -> bool {
        self.general.matches(nsn) && self.types.iter().any(|d| d.matches(nsn))
    }
}

impl Plan {
    pub fn new(main: &MetaSpec, regions: &[RegionSpec], single: bool) -> Result<Plan, regex::Error> {
        Ok(Plan { main: Meta::new(main)?, regions: regions.iter().map(Region::new).collect::<Result<_, _>>()?, single })
    }

    /// `is_valid_number`: the region by `region_code_for_number`, then its number types.
    fn valid(&self, nsn: &str) -> bool {
        let region = if self.single {
            self.regions.first()
        } else {
            self.regions.iter().find(|r| match &r.leading {
                Some(lead) => lead.is_match(nsn),
                None => r.known_type(nsn),
            })
        };
        region.is_some_and(|r| r.known_type(nsn))
    }

    /// `is_possible_number`: the length, against the main region's.
    fn possible(&self, nsn: &str) -> bool {
        matches!(self.main.test_length(nsn), Some(LengthCheck::Possible | LengthCheck::LocalOnly))
    }
}

/// The default region and the country codes' plans (added by Python as numbers need them).
pub struct Numbering {
    cc: u32,
    region: Meta,
    plans: HashMap<u32, Option<Plan>>,
    known: Vec<bool>,
}

pub enum Answer {
    E164(String),
    NonE164(String),
}

impl Numbering {
    /// `cc` and `region`: the default region; `known`: every calling code (1-999).
    pub fn new(cc: u32, region: &MetaSpec, known: &[u32]) -> Result<Numbering, regex::Error> {
        let mut table = vec![false; 1000];
        for &c in known {
            if (1..1000).contains(&c) {
                table[c as usize] = true;
            }
        }
        Ok(Numbering { cc, region: Meta::new(region)?, plans: HashMap::new(), known: table })
    }

    /// Whether a plan for `cc` was given (one that failed to compile counts: it is never asked again).
    pub fn has(&self, cc: u32) -> bool {
        self.plans.contains_key(&cc)
    }

    /// Keep a country code's plan; one with a pattern the `regex` crate refuses is kept as absent.
    pub fn add(&mut self, cc: u32, plan: Result<Plan, regex::Error>) {
        self.plans.insert(cc, plan.ok());
    }

    /// The calling code at the start of `digits` and the rest (`_extract_country_code`), if any.
    pub fn leading_cc<'a>(&self, digits: &'a str) -> Option<(u32, &'a str)> {
        if digits.starts_with('0') {
            return None;
        }
        (1..=digits.len().min(3)).find_map(|n| {
            let c: u32 = digits[..n].parse().ok()?;
            self.known[c as usize].then_some((c, &digits[n..]))
        })
    }

    /// The country codes whose plans `text` may need (the default region's and a leading one).
    pub fn needs(&self, text: &str) -> Vec<u32> {
        let digits = text.strip_prefix('+').unwrap_or(text);
        let mut out = vec![self.cc];
        if let Some((c, _)) = self.leading_cc(digits) {
            out.push(c);
        }
        if let Some(m) = self.region.idd.as_ref().and_then(|idd| idd.find(digits)) {
            if let Some((c, _)) = self.leading_cc(&digits[m.end()..]) {
                out.push(c);
            }
        }
        out
    }

    /// `PhoneNormaliser._resolve_slow(text)` for a cleaned `text`, or None where unsure.
    pub fn resolve(&self, text: &str) -> Option<Answer> {
        let plus = text.starts_with('+');
        let digits = if plus { &text[1..] } else { text };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || text.len() > MAX_INPUT {
            return None;
        }
        if !plus && digits.len() <= 6 {
            return None; // short codes and extensions: shortnumberinfo's own check
        }
        let e164 = |cc: u32, nsn: &str| Some(Answer::E164(format!("+{cc}{nsn}")));
        // The first candidate is the text itself: valid or possible.
        match if plus { self.parse_international(digits) } else { self.parse_national(digits) } {
            Parsed::Unsure => return None,
            Parsed::Number(cc, nsn) => {
                let plan = self.plan(cc)?;
                if plan.valid(&nsn) || plan.possible(&nsn) {
                    return e164(cc, &nsn);
                }
            }
            Parsed::Fails => {}
        }
        // Digits without "+" are then read as international ("+" + text): valid only.
        if !plus {
            match self.parse_international(digits) {
                Parsed::Unsure => return None,
                Parsed::Number(cc, nsn) if self.plan(cc)?.valid(&nsn) => return e164(cc, &nsn),
                _ => {}
            }
        }
        Some(Answer::NonE164(text.to_string()))
    }

    fn plan(&self, cc: u32) -> Option<&Plan> {
        self.plans.get(&cc)?.as_ref()
    }

    /// `parse("+" + digits)`.
    fn parse_international(&self, digits: &str) -> Parsed {
        if digits.len() <= MIN_NSN {
            return Parsed::Fails; // TOO_SHORT_AFTER_IDD
        }
        match self.leading_cc(digits) {
            Some((cc, national)) => self.finish(cc, national, None),
            // No known code after "+": parse tries the digits again from the default region, and
            // fails where no code is found there either.
            None => self.code_from_default_region(digits).unwrap_or(Parsed::Fails),
        }
    }

    /// `parse(digits, default region)`, digits without "+".
    fn parse_national(&self, digits: &str) -> Parsed {
        self.code_from_default_region(digits).unwrap_or_else(|| self.finish(self.cc, digits, Some(&self.region)))
    }

    /// `_maybe_extract_country_code(digits, default region)`, then the rest of `parse`; None
    /// where it finds no code (the number is national).
    fn code_from_default_region(&self, digits: &str) -> Option<Parsed> {
        let r = &self.region;
        // `_maybe_strip_i18n_prefix_and_normalize`: an international prefix not followed by 0.
        if let Some(m) = r.idd.as_ref().and_then(|idd| idd.find(digits)) {
            let rest = &digits[m.end()..];
            if !rest.starts_with('0') {
                if rest.len() <= MIN_NSN {
                    return Some(Parsed::Fails); // TOO_SHORT_AFTER_IDD
                }
                return Some(match self.leading_cc(rest) {
                    None => Parsed::Fails, // INVALID_COUNTRY_CODE
                    Some((cc, national)) => self.finish(cc, national, None),
                });
            }
        }
        // The default region's own code at the start is stripped when that reads better.
        let own = self.cc.to_string();
        let potential = digits.strip_prefix(own.as_str())?;
        let (Some(stripped), Some(length)) = (r.strip_national_prefix(potential), r.test_length(digits)) else {
            return Some(Parsed::Unsure);
        };
        ((!r.viable(digits) && r.viable(&stripped)) || length == LengthCheck::TooLong)
            .then(|| self.finish(self.cc, &stripped, None))
    }

    /// The rest of `parse` once the country code is known: the national prefix, the lengths.
    /// `meta` is the metadata parse holds: the default region's when no code was found (the
    /// number is national), else the code's main region's (`metadata_for_region_or_calling_code`).
    fn finish(&self, cc: u32, national: &str, meta: Option<&Meta>) -> Parsed {
        let Some(plan) = self.plan(cc) else { return Parsed::Unsure };
        let meta = meta.unwrap_or(&plan.main);
        if national.len() < MIN_NSN {
            return Parsed::Fails; // TOO_SHORT_NSN
        }
        let Some(potential) = meta.strip_national_prefix(national) else { return Parsed::Unsure };
        let nsn = match meta.test_length(&potential) {
            None => return Parsed::Unsure,
            Some(LengthCheck::TooShort | LengthCheck::LocalOnly | LengthCheck::Invalid) => national.to_string(),
            Some(_) => potential,
        };
        if nsn.len() < MIN_NSN {
            return Parsed::Fails;
        }
        if nsn.len() > MAX_NSN {
            return Parsed::Fails; // TOO_LONG
        }
        Parsed::Number(cc, nsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(idd: &str, npp: &str, transform: Option<&str>, general: &str, possible: &[i32], local: &[i32]) -> MetaSpec {
        (Some(idd.into()), Some(npp.into()), transform.map(Into::into), Some(general.into()), possible.to_vec(),
         local.to_vec())
    }

    #[test]
    fn group_references_become_the_regex_crates() {
        assert_eq!(template(r"\2"), "${2}");
        assert_eq!(template(r"9\1"), "9${1}");
        assert_eq!(template(r"1534\1$"), "1534${1}$$");
    }

    #[test]
    fn lengths_as_phonenumbers_tests_them() {
        let m = Meta::new(&spec("00", "0", None, r"\d{7,10}", &[7, 9, 10], &[4, 5, 6, 8])).unwrap();
        let check = |s: &str| m.test_length(s).unwrap();
        assert_eq!(check("123"), LengthCheck::TooShort);
        assert_eq!(check("1234"), LengthCheck::LocalOnly);
        assert_eq!(check("1234567"), LengthCheck::Possible);
        assert_eq!(check("12345678"), LengthCheck::LocalOnly);
        assert_eq!(check("12345678901"), LengthCheck::TooLong);
        let gaps = Meta::new(&spec("00", "0", None, r"\d+", &[7, 9], &[])).unwrap();
        assert_eq!(gaps.test_length("12345678"), Some(LengthCheck::Invalid));
        assert_eq!(Meta::new(&spec("00", "0", None, r"\d+", &[], &[])).unwrap().test_length("1"), None);
    }

    #[test]
    fn national_prefix_is_stripped_only_where_the_rest_still_reads() {
        let m = Meta::new(&spec("00", "0", None, r"[1-9]\d{8,9}", &[9, 10], &[])).unwrap();
        assert_eq!(m.strip_national_prefix("07700900123").as_deref(), Some("7700900123"));
        assert_eq!(m.strip_national_prefix("7700900123").as_deref(), Some("7700900123"));
        // Viable as it stands and not once stripped: kept.
        let keep = Meta::new(&spec("00", "0", None, r"0\d{9}", &[10], &[])).unwrap();
        assert_eq!(keep.strip_national_prefix("0770090012").as_deref(), Some("0770090012"));
        // A transform rule rewrites the prefix through its groups (AR-like: 0 + area + 15 -> 9 + area).
        let t = Meta::new(&spec("00", r"0?(11)15", Some(r"9\1"), r"9\d{10}", &[11], &[])).unwrap();
        assert_eq!(t.strip_national_prefix("0111512345678").as_deref(), Some("91112345678"));
    }
}
