//! File formats, parsed and written without a database. Every reader is
//! all-or-nothing: it returns every record or the first error, which names
//! the file, the 1-based line (and column where known) and a typed reason.
//!
//! * MICRON research layout: `records.json` = `[patient][visit]` =
//!   `[[diag idx], [proc idx], [med idx]]` and `voc.json` =
//!   `{"diag": [...], "proc": [...], "med": [...]}` (index -> code lists; an
//!   object `{"0": "code", ...}` per set, like the reference's `idx2word`, is
//!   accepted too). Patient ids are the patient's index in `records.json`.
//! * Native JSON lines, one patient per line:
//!   `{"external_id": "...", "source": "...", "visits": [{"occurred_at":
//!   "2130-01-01T10:00:00Z", "diagnoses": [...], "procedures": [...],
//!   "medications": [...] | null}]}`. `source` and `occurred_at` are optional;
//!   `medications: null` (or absent) means unknown. Visits are in time order;
//!   where two visits both carry `occurred_at`, a later line entry may not be
//!   earlier in time. Codes follow [`normalize_codes`]; blank lines are
//!   skipped; an external id may appear once per file.
//! * DDI CSV: a header of two columns (e.g. `atc3_a,atc3_b`), then one
//!   interacting code pair per line.
//! * Split file (JSON): `{"train": [...], "val": [...], "test": [...]}`
//!   (`"eval"` accepted for `"val"`), or a flat list of patient indices in
//!   shuffled order, cut 60/20/20 like the reference.
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::data::{
    CodeError, RawPatient, RawVisit, SPLIT_SEED, Split, SplitError, UnknownCodes, Vocabularies, Vocabulary,
    normalize_codes,
};

/// Why a record was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not valid JSON, or JSON of the wrong shape.
    Json(String),
    /// A code broke the service's code rule (`field` names the set).
    Code { field: String, error: CodeError },
    /// A vocabulary index in `records.json` is past the vocabulary's end.
    IndexOutOfRange { set: &'static str, index: u64, size: usize },
    /// A visit in `records.json` is not three lists.
    VisitShape { lists: usize },
    /// `occurred_at` is not an RFC 3339 timestamp.
    Timestamp(String),
    /// A visit is earlier than the visit before it.
    VisitsOutOfOrder { visit: usize },
    /// The external id is empty or breaks the code rule.
    BadId(String),
    /// An external id seen on an earlier line.
    DuplicatePatient { id: String, first_line: usize },
    /// A CSV line without the expected number of columns.
    Columns { expected: usize, found: usize },
    /// A DDI pair of a code with itself.
    SelfPair(String),
    /// The file is empty where a header was expected.
    MissingHeader,
    /// A split file that does not fit the dataset.
    Split(SplitError),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Json(m) => write!(f, "{m}"),
            Reason::Code { field, error } => write!(f, "{field}: {error}"),
            Reason::IndexOutOfRange { set, index, size } => {
                write!(f, "{set} index {index} out of range (vocabulary has {size} codes)")
            }
            Reason::VisitShape { lists } => {
                write!(f, "a visit must be [diagnoses, procedures, medications], found {lists} lists")
            }
            Reason::Timestamp(t) => write!(f, "occurred_at {t:?} is not an RFC 3339 timestamp"),
            Reason::VisitsOutOfOrder { visit } => write!(f, "visit {visit} occurred before the visit preceding it"),
            Reason::BadId(m) => write!(f, "external_id: {m}"),
            Reason::DuplicatePatient { id, first_line } => {
                write!(f, "external_id {id:?} already appeared on line {first_line}")
            }
            Reason::Columns { expected, found } => write!(f, "expected {expected} columns, found {found}"),
            Reason::SelfPair(c) => write!(f, "{c:?} paired with itself"),
            Reason::MissingHeader => write!(f, "missing header line"),
            Reason::Split(e) => write!(f, "{e}"),
        }
    }
}

/// A file could not be read or holds a malformed record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("{file}: {message}")]
    Io { file: String, message: String },
    /// `line` is 1-based; `column` (1-based) where the parser knows it.
    #[error("{file}:{line}{}: {reason}", column.map(|c| format!(":{c}")).unwrap_or_default())]
    Malformed { file: String, line: usize, column: Option<usize>, reason: Reason },
}

impl FormatError {
    fn at(file: &str, line: usize, reason: Reason) -> Self {
        FormatError::Malformed { file: file.to_string(), line, column: None, reason }
    }
    fn json(file: &str, e: &serde_json::Error, reason: Option<Reason>) -> Self {
        FormatError::Malformed {
            file: file.to_string(),
            line: e.line().max(1),
            column: Some(e.column()).filter(|&c| c > 0),
            reason: reason.unwrap_or_else(|| Reason::Json(strip_position(&e.to_string()))),
        }
    }
    /// The 1-based line of a malformed record (`None` for I/O errors).
    pub fn line(&self) -> Option<usize> {
        match self {
            FormatError::Io { .. } => None,
            FormatError::Malformed { line, .. } => Some(*line),
        }
    }
    pub fn reason(&self) -> Option<&Reason> {
        match self {
            FormatError::Io { .. } => None,
            FormatError::Malformed { reason, .. } => Some(reason),
        }
    }
}

/// serde_json appends " at line L column C"; the error carries those apart.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn read_to_string(path: &Path) -> Result<String, FormatError> {
    std::fs::read_to_string(path)
        .map_err(|e| FormatError::Io { file: path.display().to_string(), message: e.to_string() })
}

// ---------------------------------------------------------------------------
// MICRON research layout
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(untagged)]
enum VocSet {
    List(Vec<String>),
    Map(BTreeMap<String, String>),
}

#[derive(Deserialize)]
struct VocFile {
    diag: VocSet,
    proc: VocSet,
    med: VocSet,
}

fn voc_set(file: &str, name: &str, set: VocSet) -> Result<Vocabulary, FormatError> {
    let codes = match set {
        VocSet::List(codes) => codes,
        VocSet::Map(map) => {
            let mut pairs = Vec::with_capacity(map.len());
            for (k, v) in map {
                let i: usize = k.parse().map_err(|_| {
                    FormatError::at(file, 1, Reason::Json(format!("{name}: key {k:?} is not an index")))
                })?;
                pairs.push((i, v));
            }
            pairs.sort();
            if pairs.iter().enumerate().any(|(n, (i, _))| n != *i) {
                return Err(FormatError::at(
                    file,
                    1,
                    Reason::Json(format!("{name}: indices are not 0..{}", pairs.len())),
                ));
            }
            pairs.into_iter().map(|(_, v)| v).collect()
        }
    };
    // Each code follows the code rule; a vocabulary may be longer than one
    // visit's set, so codes are checked one by one.
    let mut seen = std::collections::HashSet::with_capacity(codes.len());
    for (index, code) in codes.iter().enumerate() {
        let one = normalize_codes(std::slice::from_ref(code)).map_err(|mut error| {
            error.index = index;
            FormatError::at(file, 1, Reason::Code { field: name.to_string(), error })
        })?;
        if one[0] != *code || !seen.insert(code.as_str()) {
            let reason = Reason::Json(format!("{name}: codes must be trimmed and unique (code {index})"));
            return Err(FormatError::at(file, 1, reason));
        }
    }
    Ok(Vocabulary::from(codes))
}

/// Parses `voc.json` text. `file` names it in errors.
pub fn parse_micron_voc(file: &str, text: &str) -> Result<Vocabularies, FormatError> {
    let v: VocFile = serde_json::from_str(text).map_err(|e| FormatError::json(file, &e, None))?;
    Ok(Vocabularies {
        diag: voc_set(file, "diag", v.diag)?,
        proc: voc_set(file, "proc", v.proc)?,
        med: voc_set(file, "med", v.med)?,
    })
}

const SETS: [&str; 3] = ["diag", "proc", "med"];

/// Deserializes records.json against the vocabularies, failing at the exact
/// position of a bad index (serde_json attaches the line and column).
struct Records<'a> {
    voc: &'a Vocabularies,
    reason: &'a RefCell<Option<Reason>>,
}

impl Records<'_> {
    fn fail<E: serde::de::Error>(&self, reason: Reason) -> E {
        let msg = reason.to_string();
        *self.reason.borrow_mut() = Some(reason);
        E::custom(msg)
    }
    fn voc(&self, set: usize) -> &Vocabulary {
        match set {
            0 => &self.voc.diag,
            1 => &self.voc.proc,
            _ => &self.voc.med,
        }
    }
}

struct Level<'a, 'b> {
    r: &'b Records<'a>,
    depth: u8,
    set: usize,
}

enum Parsed {
    Patients(Vec<RawPatient>),
    Visits(Vec<RawVisit>),
    Visit(RawVisit),
    Codes(Vec<String>),
}

impl<'de> DeserializeSeed<'de> for Level<'_, '_> {
    type Value = Parsed;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Level<'_, '_> {
    type Value = Parsed;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self.depth {
            0 => "a list of patients",
            1 => "a patient: a list of visits",
            2 => "a visit: [diagnoses, procedures, medications]",
            _ => "a list of code indices",
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
        let r = self.r;
        match self.depth {
            0 | 1 => {
                let mut items = Vec::new();
                while let Some(x) = seq.next_element_seed(Level { r, depth: self.depth + 1, set: 0 })? {
                    items.push(x);
                }
                if self.depth == 0 {
                    let patients = items
                        .into_iter()
                        .enumerate()
                        .map(|(i, p)| match p {
                            Parsed::Visits(visits) => RawPatient { id: i.to_string(), visits },
                            _ => unreachable!(),
                        })
                        .collect();
                    Ok(Parsed::Patients(patients))
                } else {
                    let visits = items
                        .into_iter()
                        .map(|v| match v {
                            Parsed::Visit(v) => v,
                            _ => unreachable!(),
                        })
                        .collect();
                    Ok(Parsed::Visits(visits))
                }
            }
            2 => {
                let mut sets: Vec<Vec<String>> = Vec::with_capacity(3);
                while let Some(x) = seq.next_element_seed(Level { r, depth: 3, set: sets.len().min(2) })? {
                    if let Parsed::Codes(c) = x {
                        sets.push(c);
                    }
                    if sets.len() > 3 {
                        return Err(r.fail(Reason::VisitShape { lists: sets.len() }));
                    }
                }
                if sets.len() != 3 {
                    return Err(r.fail(Reason::VisitShape { lists: sets.len() }));
                }
                let med = sets.pop();
                let procedures = sets.pop().unwrap_or_default();
                let diagnoses = sets.pop().unwrap_or_default();
                Ok(Parsed::Visit(RawVisit { diagnoses, procedures, medications: med }))
            }
            _ => {
                let voc = r.voc(self.set);
                let mut codes = Vec::new();
                while let Some(i) = seq.next_element::<u64>()? {
                    if i >= voc.len() as u64 {
                        return Err(r.fail(Reason::IndexOutOfRange { set: SETS[self.set], index: i, size: voc.len() }));
                    }
                    codes.push(voc.code(i as u32).to_string());
                }
                Ok(Parsed::Codes(codes))
            }
        }
    }
}

/// Parses `records.json` text against its vocabularies. Codes within a
/// visit keep their listed order.
pub fn parse_micron_records(file: &str, text: &str, voc: &Vocabularies) -> Result<Vec<RawPatient>, FormatError> {
    let reason = RefCell::new(None);
    let seed = Level { r: &Records { voc, reason: &reason }, depth: 0, set: 0 };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = seed.deserialize(&mut de).and_then(|p| de.end().map(|_| p));
    match parsed {
        Ok(Parsed::Patients(p)) => Ok(p),
        Ok(_) => unreachable!(),
        Err(e) => Err(FormatError::json(file, &e, reason.take())),
    }
}

/// Reads a MICRON layout directory's `records.json` and `voc.json`.
pub fn read_micron_layout(dir: &Path) -> Result<(Vec<RawPatient>, Vocabularies), FormatError> {
    let (rp, vp) = (dir.join("records.json"), dir.join("voc.json"));
    let voc = parse_micron_voc(&vp.display().to_string(), &read_to_string(&vp)?)?;
    let patients = parse_micron_records(&rp.display().to_string(), &read_to_string(&rp)?, &voc)?;
    Ok((patients, voc))
}

/// Writes patients in the MICRON layout: `(records.json, voc.json)` text.
/// With `voc` = `None` the vocabularies are built from the patients (first
/// appearance order); with a given vocabulary, codes outside it are an
/// error listing them. Unknown medications (`None`) are written as `[]`.
pub fn write_micron_layout(
    patients: &[RawPatient],
    voc: Option<&Vocabularies>,
) -> Result<(String, String), UnknownCodes> {
    let built;
    let voc = match voc {
        Some(v) => v,
        None => {
            built = Vocabularies::build(patients);
            &built
        }
    };
    let mut unknown = UnknownCodes::default();
    let idx = |v: &Vocabulary, codes: &[String], miss: &mut Vec<String>| -> Vec<u32> {
        codes
            .iter()
            .filter_map(|c| {
                let i = v.get(c);
                if i.is_none() && !miss.contains(c) {
                    miss.push(c.clone());
                }
                i
            })
            .collect()
    };
    let records: Vec<Vec<[Vec<u32>; 3]>> = patients
        .iter()
        .map(|p| {
            p.visits
                .iter()
                .map(|v| {
                    [
                        idx(&voc.diag, &v.diagnoses, &mut unknown.diag),
                        idx(&voc.proc, &v.procedures, &mut unknown.proc),
                        idx(&voc.med, v.medications.as_deref().unwrap_or(&[]), &mut unknown.med),
                    ]
                })
                .collect()
        })
        .collect();
    if !unknown.is_empty() {
        return Err(unknown);
    }
    let records = serde_json::to_string(&records).expect("serializing integers cannot fail");
    let voc = serde_json::to_string_pretty(voc).expect("serializing strings cannot fail");
    Ok((records, voc))
}

// ---------------------------------------------------------------------------
// Split files
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(untagged)]
enum SplitFile {
    Parts {
        train: Vec<usize>,
        #[serde(alias = "eval")]
        val: Vec<usize>,
        test: Vec<usize>,
    },
    Order(Vec<usize>),
}

/// Parses a split file for a dataset of `patients` patients.
pub fn parse_split(file: &str, text: &str, patients: usize) -> Result<Split, FormatError> {
    let parsed: SplitFile = serde_json::from_str(text).map_err(|e| FormatError::json(file, &e, None))?;
    let split = match parsed {
        SplitFile::Parts { train, val, test } => Split { seed: SPLIT_SEED, train, val, test },
        SplitFile::Order(order) => Split::from_order(order, SPLIT_SEED),
    };
    split.validate(patients).map_err(|e| FormatError::at(file, 1, Reason::Split(e)))?;
    Ok(split)
}

pub fn read_split(path: &Path, patients: usize) -> Result<Split, FormatError> {
    parse_split(&path.display().to_string(), &read_to_string(path)?, patients)
}

// ---------------------------------------------------------------------------
// Native JSON lines
// ---------------------------------------------------------------------------

/// One visit of the native format.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeVisit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    pub diagnoses: Vec<String>,
    pub procedures: Vec<String>,
    #[serde(default)]
    pub medications: Option<Vec<String>>,
}

/// One line of the native format: a patient with visits in time order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativePatient {
    pub external_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub visits: Vec<NativeVisit>,
}

impl NativePatient {
    /// The patient as the models see it (id = external id).
    pub fn to_raw(&self) -> RawPatient {
        RawPatient {
            id: self.external_id.clone(),
            visits: self
                .visits
                .iter()
                .map(|v| RawVisit {
                    diagnoses: v.diagnoses.clone(),
                    procedures: v.procedures.clone(),
                    medications: v.medications.clone(),
                })
                .collect(),
        }
    }

    /// A native record of a raw patient (no source, no timestamps).
    pub fn from_raw(p: &RawPatient) -> Self {
        NativePatient {
            external_id: p.id.clone(),
            source: None,
            visits: p
                .visits
                .iter()
                .map(|v| NativeVisit {
                    occurred_at: None,
                    diagnoses: v.diagnoses.clone(),
                    procedures: v.procedures.clone(),
                    medications: v.medications.clone(),
                })
                .collect(),
        }
    }

    /// Applies the service's rules in place: codes normalized, id checked,
    /// timestamps parsed and in order.
    pub fn validate(&mut self) -> Result<(), Reason> {
        let id = normalize_codes(&[self.external_id.as_str()]).map_err(|e| Reason::BadId(e.rule.to_string()))?;
        self.external_id = id.into_iter().next().unwrap_or_default();
        let mut last: Option<i64> = None;
        for (n, v) in self.visits.iter_mut().enumerate() {
            let code = |field: &str, codes: &[String]| {
                normalize_codes(codes).map_err(|error| Reason::Code { field: format!("visits[{n}].{field}"), error })
            };
            v.diagnoses = code("diagnoses", &v.diagnoses)?;
            v.procedures = code("procedures", &v.procedures)?;
            if let Some(m) = &v.medications {
                v.medications = Some(code("medications", m)?);
            }
            if let Some(t) = &v.occurred_at {
                let at = parse_rfc3339(t).ok_or_else(|| Reason::Timestamp(t.clone()))?;
                if last.is_some_and(|l| at < l) {
                    return Err(Reason::VisitsOutOfOrder { visit: n });
                }
                last = Some(at);
            }
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch of an RFC 3339 date-time
/// (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, `t`/`z`/space accepted as in
/// the RFC), or `None` if malformed. Fractions are checked but truncated.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.iter().all(u8::is_ascii_digit) { std::str::from_utf8(part).ok()?.parse().ok() } else { None }
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&mo) || d < 1 || d > days_in[mo as usize - 1] || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut k = 19;
    if b[k] == b'.' {
        k += 1;
        let start = k;
        while k < b.len() && b[k].is_ascii_digit() {
            k += 1;
        }
        if k == start {
            return None;
        }
    }
    let offset = match b.get(k)? {
        b'Z' | b'z' if k + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if k + 6 == b.len() && b[k + 3] == b':' => {
            let (oh, om) = (num(k + 1..k + 3)?, num(k + 4..k + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    // days from civil (proleptic Gregorian), Howard Hinnant's algorithm
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

/// Parses native JSON-lines text; every record is validated
/// ([`NativePatient::validate`]) and external ids must be unique.
pub fn parse_native_jsonl(file: &str, text: &str) -> Result<Vec<NativePatient>, FormatError> {
    let mut out = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut p: NativePatient = serde_json::from_str(line).map_err(|e| FormatError::Malformed {
            file: file.to_string(),
            line: line_no,
            column: Some(e.column()).filter(|&c| c > 0),
            reason: Reason::Json(strip_position(&e.to_string())),
        })?;
        p.validate().map_err(|r| FormatError::at(file, line_no, r))?;
        if let Some(&first_line) = seen.get(&p.external_id) {
            return Err(FormatError::at(file, line_no, Reason::DuplicatePatient { id: p.external_id, first_line }));
        }
        seen.insert(p.external_id.clone(), line_no);
        out.push(p);
    }
    Ok(out)
}

pub fn read_native_jsonl(path: &Path) -> Result<Vec<NativePatient>, FormatError> {
    parse_native_jsonl(&path.display().to_string(), &read_to_string(path)?)
}

/// Writes native JSON lines (one patient per line, newline-terminated).
pub fn write_native_jsonl(patients: &[NativePatient]) -> String {
    let mut s = String::new();
    for p in patients {
        s += &serde_json::to_string(p).expect("serializing strings cannot fail");
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------
// DDI pairs CSV
// ---------------------------------------------------------------------------

fn csv_fields(line: &str) -> Vec<String> {
    line.split(',')
        .map(|f| {
            let f = f.trim();
            f.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(f).to_string()
        })
        .collect()
}

/// Parses a DDI CSV: a two-column header, then `code_a,code_b` per line
/// (fields may be double-quoted; blank lines skipped). Returns the unordered
/// pairs in file order, each once.
pub fn parse_ddi_csv(file: &str, text: &str) -> Result<Vec<(String, String)>, FormatError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (hline, header) = lines.next().ok_or_else(|| FormatError::at(file, 1, Reason::MissingHeader))?;
    let found = csv_fields(header).len();
    if found != 2 {
        return Err(FormatError::at(file, hline + 1, Reason::Columns { expected: 2, found }));
    }
    let mut seen = HashSet::new();
    let mut pairs = Vec::new();
    for (i, line) in lines {
        let fields = csv_fields(line);
        if fields.len() != 2 {
            return Err(FormatError::at(file, i + 1, Reason::Columns { expected: 2, found: fields.len() }));
        }
        let codes = normalize_codes(&fields)
            .map_err(|error| FormatError::at(file, i + 1, Reason::Code { field: "pair".into(), error }))?;
        if codes.len() != 2 {
            return Err(FormatError::at(file, i + 1, Reason::SelfPair(codes[0].clone())));
        }
        let key = if codes[0] <= codes[1] {
            (codes[0].clone(), codes[1].clone())
        } else {
            (codes[1].clone(), codes[0].clone())
        };
        if seen.insert(key) {
            pairs.push((codes[0].clone(), codes[1].clone()));
        }
    }
    Ok(pairs)
}

pub fn read_ddi_csv(path: &Path) -> Result<Vec<(String, String)>, FormatError> {
    parse_ddi_csv(&path.display().to_string(), &read_to_string(path)?)
}

/// Writes pairs as a DDI CSV with the header `atc3_a,atc3_b`.
pub fn write_ddi_csv(pairs: &[(String, String)]) -> String {
    let mut s = String::from("atc3_a,atc3_b\n");
    for (a, b) in pairs {
        s += &format!("{a},{b}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");

    fn demo_dir() -> std::path::PathBuf {
        Path::new(FIXTURES).join("micron-layout/mimic3-demo")
    }

    fn malformed(e: FormatError) -> (usize, Reason) {
        match e {
            FormatError::Malformed { line, reason, .. } => (line, reason),
            other => panic!("expected a malformed-record error, got {other}"),
        }
    }

    #[test]
    fn reads_the_micron_demo_fixture() {
        let (patients, voc) = read_micron_layout(&demo_dir()).unwrap();
        assert_eq!(voc.sizes(), (227, 57, 81));
        assert_eq!(patients.len(), 11);
        assert_eq!(patients.iter().map(|p| p.visits.len()).sum::<usize>(), 36);
        assert_eq!(patients.iter().map(|p| p.visits.len()).collect::<Vec<_>>(), vec![2, 3, 2, 2, 2, 2, 2, 14, 2, 2, 3]);
        assert_eq!(patients[3].id, "3");
        let v0 = &patients[0].visits[0];
        assert_eq!(v0.diagnoses[..4], ["07070", "2800", "2875", "4019"]);
        assert_eq!(v0.medications.as_ref().unwrap()[0], "A02B");
        assert_eq!(v0.procedures.len(), 2);
        assert_eq!(voc.proc.code(0), "4233");
    }

    #[test]
    fn micron_layout_round_trips_exactly() {
        let dir = demo_dir();
        let (patients, voc) = read_micron_layout(&dir).unwrap();
        let (records, voc_text) = write_micron_layout(&patients, Some(&voc)).unwrap();
        let original: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("records.json")).unwrap()).unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&records).unwrap(), original);
        let voc2 = parse_micron_voc("voc", &voc_text).unwrap();
        assert_eq!(voc2, voc);
        assert_eq!(parse_micron_records("r", &records, &voc2).unwrap(), patients);
        // built vocabulary (first appearance) reproduces the same patients
        let (records, voc_text) = write_micron_layout(&patients, None).unwrap();
        let voc3 = parse_micron_voc("voc", &voc_text).unwrap();
        assert_eq!(parse_micron_records("r", &records, &voc3).unwrap(), patients);
        // codes outside a given vocabulary are reported
        let mut extra = patients.clone();
        extra[0].visits[0].diagnoses.push("NEW".into());
        assert_eq!(write_micron_layout(&extra, Some(&voc)).unwrap_err().diag, vec!["NEW"]);
    }

    #[test]
    fn micron_voc_accepts_index_maps() {
        let v = parse_micron_voc("v", r#"{"diag": {"1": "b", "0": "a"}, "proc": [], "med": ["M"]}"#).unwrap();
        assert_eq!(v.diag.codes(), &["a", "b"]);
        let e = parse_micron_voc("v", r#"{"diag": {"0": "a", "2": "b"}, "proc": [], "med": []}"#).unwrap_err();
        assert!(matches!(malformed(e).1, Reason::Json(_)));
        let e = parse_micron_voc("v", "{\"diag\": [\"a\", \"a\"], \"proc\": [], \"med\": []}").unwrap_err();
        assert!(malformed(e).1.to_string().contains("unique"));
    }

    #[test]
    fn micron_records_errors_point_at_the_line() {
        let voc = parse_micron_voc("v", r#"{"diag": ["d0", "d1"], "proc": ["p0"], "med": ["m0"]}"#).unwrap();
        let ok = "[\n [[[0, 1], [0], [0]],\n  [[1], [], [0]]]\n]";
        assert_eq!(parse_micron_records("r", ok, &voc).unwrap()[0].visits.len(), 2);
        let bad_index = "[\n [[[0, 1], [0], [0]],\n  [[1], [], [3]]]\n]";
        let (line, reason) = malformed(parse_micron_records("r.json", bad_index, &voc).unwrap_err());
        assert_eq!((line, reason), (3, Reason::IndexOutOfRange { set: "med", index: 3, size: 1 }));
        let short_visit = "[\n [[[0, 1], [0], [0]],\n  [[1], []]]\n]";
        let (line, reason) = malformed(parse_micron_records("r.json", short_visit, &voc).unwrap_err());
        assert_eq!((line, reason), (3, Reason::VisitShape { lists: 2 }));
        let not_int = "[\n [[[0, 1], [0], [0]],\n\n  [[\"x\"], [], [0]]]\n]";
        let (line, reason) = malformed(parse_micron_records("r.json", not_int, &voc).unwrap_err());
        assert!(line == 4 && matches!(reason, Reason::Json(_)), "{line} {reason:?}");
        let truncated = "[\n [[[0, 1], [0], [0]]";
        assert_eq!(malformed(parse_micron_records("r", truncated, &voc).unwrap_err()).0, 2);
        let trailing = "[]\n]";
        assert_eq!(malformed(parse_micron_records("r", trailing, &voc).unwrap_err()).0, 2);
        let e = parse_micron_records("records.json", bad_index, &voc).unwrap_err();
        assert_eq!(e.to_string(), "records.json:3:15: med index 3 out of range (vocabulary has 1 codes)");
        assert!(matches!(read_micron_layout(Path::new("/nonexistent")), Err(FormatError::Io { .. })));
    }

    #[test]
    fn split_files() {
        let s = parse_split("s", r#"{"train": [2, 0], "eval": [1], "test": [3]}"#, 4).unwrap();
        assert_eq!((s.train, s.val, s.test), (vec![2, 0], vec![1], vec![3]));
        let s = parse_split("s", "[4, 3, 2, 1, 0]", 5).unwrap();
        assert_eq!((s.train, s.test, s.val), (vec![4, 3, 2], vec![1], vec![0]));
        let e = parse_split("s", "[0, 1, 1]", 3).unwrap_err();
        assert_eq!(malformed(e), (1, Reason::Split(SplitError::Duplicate { index: 1 })));
        let e = parse_split("s", "[0,\n 9]", 3).unwrap_err();
        assert_eq!(malformed(e).1, Reason::Split(SplitError::OutOfRange { index: 9, patients: 3 }));
        assert_eq!(malformed(parse_split("s", "{\n\"train\": }", 3).unwrap_err()).0, 2);
    }

    const NATIVE: &str = r#"{"external_id": "p1", "source": "ehr-a", "visits": [{"occurred_at": "2130-01-01T10:00:00Z", "diagnoses": ["4019", " 25000 ", "4019"], "procedures": [], "medications": ["N02B"]}, {"occurred_at": "2130-02-01T08:30:00.5+02:00", "diagnoses": ["4280"], "procedures": ["3893"], "medications": null}]}

{"external_id": "p2", "visits": [{"diagnoses": ["486"], "procedures": [], "medications": []}]}
"#;

    #[test]
    fn native_jsonl_reads_normalizes_and_round_trips() {
        let ps = parse_native_jsonl("n.jsonl", NATIVE).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].visits[0].diagnoses, vec!["4019", "25000"]);
        assert_eq!(ps[0].visits[1].medications, None);
        assert_eq!(ps[0].source.as_deref(), Some("ehr-a"));
        assert_eq!(ps[1].visits[0].medications, Some(vec![]));
        let raw = ps[0].to_raw();
        assert_eq!((raw.id.as_str(), raw.visits.len()), ("p1", 2));
        let text = write_native_jsonl(&ps);
        assert_eq!(text.lines().count(), 2);
        assert_eq!(parse_native_jsonl("again", &text).unwrap(), ps);
        assert_eq!(NativePatient::from_raw(&raw).to_raw(), raw);
    }

    type ReasonCheck = fn(&Reason) -> bool;

    #[test]
    fn native_jsonl_rejects_each_malformed_line() {
        let good = r#"{"external_id": "a", "visits": []}"#;
        let cases: Vec<(&str, ReasonCheck)> = vec![
            (r#"{"external_id": "b", "visits": [}"#, |r| matches!(r, Reason::Json(_))),
            (r#"{"external_id": "b", "visits": [], "extra": 1}"#, |r| matches!(r, Reason::Json(_))),
            (r#"{"external_id": "  ", "visits": []}"#, |r| matches!(r, Reason::BadId(_))),
            (r#"{"external_id": "a", "visits": []}"#, |r| matches!(r, Reason::DuplicatePatient { first_line: 1, .. })),
            (
                r#"{"external_id": "b", "visits": [{"diagnoses": ["x", ""], "procedures": []}]}"#,
                |r| matches!(r, Reason::Code { field, error } if field == "visits[0].diagnoses" && error.index == 1),
            ),
            (
                r#"{"external_id": "b", "visits": [{"diagnoses": [], "procedures": [], "medications": ["a\tb"]}]}"#,
                |r| matches!(r, Reason::Code { field, .. } if field == "visits[0].medications"),
            ),
            (
                r#"{"external_id": "b", "visits": [{"occurred_at": "2130-02-30T00:00:00Z", "diagnoses": [], "procedures": []}]}"#,
                |r| matches!(r, Reason::Timestamp(_)),
            ),
            (
                r#"{"external_id": "b", "visits": [{"occurred_at": "2130-01-02T00:00:00Z", "diagnoses": [], "procedures": []}, {"occurred_at": "2130-01-02T01:00:00+02:00", "diagnoses": [], "procedures": []}]}"#,
                |r| matches!(r, Reason::VisitsOutOfOrder { visit: 1 }),
            ),
        ];
        for (bad, check) in cases {
            let text = format!("{good}\n\n{bad}\n");
            let (line, reason) = malformed(parse_native_jsonl("n.jsonl", &text).unwrap_err());
            assert_eq!(line, 3, "{bad}");
            assert!(check(&reason), "{bad}: {reason:?}");
        }
        let e = parse_native_jsonl("n.jsonl", &format!("{good}\n{good}\n")).unwrap_err();
        assert_eq!(e.to_string(), "n.jsonl:2: external_id \"a\" already appeared on line 1");
    }

    #[test]
    fn rfc3339_parsing() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-02T01:00:00+01:00"), Some(86_400));
        assert_eq!(parse_rfc3339("2000-03-01t00:00:00.123z"), Some(951_868_800));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00-00:30"), Some(1_709_166_600));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-01-01",
            "2024-01-01T00:00:00",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+0100",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_the_ddi_fixtures() {
        let pairs = read_ddi_csv(&Path::new(FIXTURES).join("ddi/atc3_pairs.csv")).unwrap();
        assert_eq!(pairs.len(), 467);
        assert_eq!(pairs[0], ("A01A".to_string(), "B03B".to_string()));
        let demo = read_ddi_csv(&demo_dir().join("ddi_atc3_pairs.csv")).unwrap();
        let (_, voc) = read_micron_layout(&demo_dir()).unwrap();
        let (m, skipped) = super::super::data::DdiMatrix::from_pairs(&demo, &voc.med);
        assert_eq!(skipped, 0);
        assert_eq!(m.pair_count(), demo.len());
        assert_eq!(parse_ddi_csv("again", &write_ddi_csv(&pairs)).unwrap(), pairs);
    }

    #[test]
    fn ddi_csv_rejects_malformed_lines() {
        let cases: [(&str, usize, ReasonCheck); 5] = [
            ("a,b\nA01A,B03B\nA01A\n", 3, |r| matches!(r, Reason::Columns { expected: 2, found: 1 })),
            ("a,b\nA01A,B03B,C\n", 2, |r| matches!(r, Reason::Columns { found: 3, .. })),
            ("a,b\n\nA01A, \n", 3, |r| matches!(r, Reason::Code { .. })),
            ("a,b\nA01A,A01A\n", 2, |r| matches!(r, Reason::SelfPair(_))),
            ("just-one-column\nA,B\n", 1, |r| matches!(r, Reason::Columns { found: 1, .. })),
        ];
        for (text, want_line, check) in cases {
            let (line, reason) = malformed(parse_ddi_csv("d.csv", text).unwrap_err());
            assert_eq!(line, want_line, "{text:?}");
            assert!(check(&reason), "{text:?}: {reason:?}");
        }
        assert_eq!(malformed(parse_ddi_csv("d.csv", "").unwrap_err()), (1, Reason::MissingHeader));
        // duplicates, in either order, are kept once
        assert_eq!(parse_ddi_csv("d", "a,b\n\"X\",Y\nY,X\n").unwrap(), vec![("X".to_string(), "Y".to_string())]);
    }
}
