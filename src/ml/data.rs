//! Data shared by every model: vocabularies, encoded patients, splits and the
//! DDI matrix. Codes are strings at the edge; models see dense indices.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One code set's vocabulary: index -> code, built from training data only.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(from = "Vec<String>", into = "Vec<String>")]
pub struct Vocabulary {
    codes: Vec<String>,
    index: HashMap<String, u32>,
}

impl From<Vec<String>> for Vocabulary {
    fn from(codes: Vec<String>) -> Self {
        let index = codes.iter().enumerate().map(|(i, c)| (c.clone(), i as u32)).collect();
        Self { codes, index }
    }
}

impl From<Vocabulary> for Vec<String> {
    fn from(v: Vocabulary) -> Self {
        v.codes
    }
}

impl Vocabulary {
    pub fn len(&self) -> usize {
        self.codes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }
    pub fn codes(&self) -> &[String] {
        &self.codes
    }
    pub fn get(&self, code: &str) -> Option<u32> {
        self.index.get(code).copied()
    }
    pub fn code(&self, idx: u32) -> &str {
        &self.codes[idx as usize]
    }
    /// Adds a code if absent and returns its index.
    pub fn insert(&mut self, code: &str) -> u32 {
        if let Some(i) = self.index.get(code) {
            return *i;
        }
        let i = self.codes.len() as u32;
        self.codes.push(code.to_string());
        self.index.insert(code.to_string(), i);
        i
    }
}

/// The three vocabularies of a model (diagnoses, procedures, medications).
/// Serialized as `{"diag": [...], "proc": [...], "med": [...]}` like the
/// MICRON reference's `voc.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Vocabularies {
    pub diag: Vocabulary,
    pub proc: Vocabulary,
    pub med: Vocabulary,
}

/// A visit with raw code strings, as stored or imported.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RawVisit {
    pub diagnoses: Vec<String>,
    pub procedures: Vec<String>,
    /// `None` when the medications given at this visit are unknown.
    pub medications: Option<Vec<String>>,
}

/// A patient with raw visits in time order.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RawPatient {
    pub id: String,
    pub visits: Vec<RawVisit>,
}

/// A visit encoded against [`Vocabularies`]: sorted, de-duplicated indices.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Visit {
    pub diag: Vec<u32>,
    pub proc: Vec<u32>,
    pub med: Vec<u32>,
}

/// A patient's encoded visits in time order.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Patient {
    pub visits: Vec<Visit>,
}

/// An encoded dataset: the vocabularies and every patient.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub vocab: Vocabularies,
    pub patients: Vec<Patient>,
}

/// Patient indices (into `Dataset::patients`) of each part, and the seed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Split {
    pub seed: u64,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// Symmetric 0/1 interaction matrix over the medication vocabulary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DdiMatrix {
    n: usize,
    adj: Vec<u8>,
}

impl DdiMatrix {
    pub fn new(n: usize) -> Self {
        Self { n, adj: vec![0; n * n] }
    }
    /// Marks a pair as interacting (both orders); the diagonal stays zero.
    pub fn set(&mut self, a: u32, b: u32) {
        let (a, b) = (a as usize, b as usize);
        if a != b {
            self.adj[a * self.n + b] = 1;
            self.adj[b * self.n + a] = 1;
        }
    }
    pub fn interacts(&self, a: u32, b: u32) -> bool {
        self.adj[a as usize * self.n + b as usize] != 0
    }
    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    /// Row-major `n * n` 0/1 values, for building a tensor.
    pub fn as_slice(&self) -> &[u8] {
        &self.adj
    }
}

// ---------------------------------------------------------------------------
// Code validation
// ---------------------------------------------------------------------------

/// Longest accepted code, in characters, after trimming.
pub const MAX_CODE_CHARS: usize = crate::domain::codes::MAX_CODE_LEN;
/// Most codes accepted in one set (counted before duplicates are removed).
pub const MAX_CODES_PER_SET: usize = crate::domain::codes::MAX_CODES_PER_SET;

/// Which validation rule a code broke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum CodeRule {
    /// Empty or only whitespace.
    Empty,
    /// More than [`MAX_CODE_CHARS`] characters after trimming.
    TooLong { chars: usize },
    /// Contains a control (non-printable) character.
    NotPrintable,
    /// The set has more than [`MAX_CODES_PER_SET`] codes.
    TooMany { count: usize },
}

/// A code set failed validation: `rule` broken at position `index`
/// (0-based, in the input as given; for `TooMany` the first index past the limit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("code {index}: {rule}")]
pub struct CodeError {
    pub index: usize,
    pub rule: CodeRule,
}

impl std::fmt::Display for CodeRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodeRule::Empty => write!(f, "empty code"),
            CodeRule::TooLong { chars } => {
                write!(f, "code has {chars} characters, at most {MAX_CODE_CHARS} allowed")
            }
            CodeRule::NotPrintable => write!(f, "code contains a non-printable character"),
            CodeRule::TooMany { count } => {
                write!(f, "{count} codes in one set, at most {MAX_CODES_PER_SET} allowed")
            }
        }
    }
}

/// The service's rule for one code set: each code is trimmed and must be
/// non-empty, at most [`MAX_CODE_CHARS`] characters, with no control
/// characters; a set holds at most [`MAX_CODES_PER_SET`] codes; duplicates
/// are removed keeping the first occurrence (order preserved).
pub fn normalize_codes<S: AsRef<str>>(codes: &[S]) -> Result<Vec<String>, CodeError> {
    use crate::domain::{CodeSet, CodeSetError};
    CodeSet::parse(codes).map(CodeSet::into_vec).map_err(|e| match e {
        CodeSetError::TooMany(count) => CodeError { index: MAX_CODES_PER_SET, rule: CodeRule::TooMany { count } },
        CodeSetError::Empty { index } => CodeError { index, rule: CodeRule::Empty },
        CodeSetError::NotPrintable { index } => CodeError { index, rule: CodeRule::NotPrintable },
        CodeSetError::TooLong { index } => {
            CodeError { index, rule: CodeRule::TooLong { chars: codes[index].as_ref().trim().chars().count() } }
        }
    })
}

// ---------------------------------------------------------------------------
// Vocabularies and encoding
// ---------------------------------------------------------------------------

/// Codes that were not in a vocabulary, per set, each listed once in order
/// of first appearance.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnknownCodes {
    pub diag: Vec<String>,
    pub proc: Vec<String>,
    pub med: Vec<String>,
}

impl UnknownCodes {
    pub fn is_empty(&self) -> bool {
        self.diag.is_empty() && self.proc.is_empty() && self.med.is_empty()
    }
    pub fn total(&self) -> usize {
        self.diag.len() + self.proc.len() + self.med.len()
    }
    fn push(list: &mut Vec<String>, code: &str) {
        if !list.iter().any(|c| c == code) {
            list.push(code.to_string());
        }
    }
    /// Adds another report's codes (keeping each code once).
    pub fn merge(&mut self, other: &UnknownCodes) {
        for c in &other.diag {
            Self::push(&mut self.diag, c);
        }
        for c in &other.proc {
            Self::push(&mut self.proc, c);
        }
        for c in &other.med {
            Self::push(&mut self.med, c);
        }
    }
}

fn encode_set(voc: &Vocabulary, codes: &[String], unknown: &mut Vec<String>) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::with_capacity(codes.len());
    for c in codes {
        match voc.get(c) {
            Some(i) => out.push(i),
            None => UnknownCodes::push(unknown, c),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

impl Vocabularies {
    /// Builds the vocabularies from the given patients, codes numbered in
    /// order of first appearance (patients in the order given, visits in
    /// time order, codes in their listed order). Deterministic for a given
    /// input. Visits with unknown medications contribute no medication codes.
    pub fn build<'a>(patients: impl IntoIterator<Item = &'a RawPatient>) -> Self {
        let mut v = Vocabularies::default();
        for p in patients {
            for visit in &p.visits {
                for c in &visit.diagnoses {
                    v.diag.insert(c);
                }
                for c in &visit.procedures {
                    v.proc.insert(c);
                }
                for c in visit.medications.iter().flatten() {
                    v.med.insert(c);
                }
            }
        }
        v
    }

    /// Builds the vocabularies from the training patients only
    /// (`train` indexes `patients`, in split order).
    pub fn from_training(patients: &[RawPatient], train: &[usize]) -> Self {
        Self::build(train.iter().map(|&i| &patients[i]))
    }

    /// (diagnosis, procedure, medication) vocabulary sizes.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.diag.len(), self.proc.len(), self.med.len())
    }

    /// Encodes one visit; codes outside the vocabularies are dropped and
    /// recorded in `unknown`. Unknown medications (`None`) encode as empty.
    pub fn encode_visit(&self, visit: &RawVisit, unknown: &mut UnknownCodes) -> Visit {
        Visit {
            diag: encode_set(&self.diag, &visit.diagnoses, &mut unknown.diag),
            proc: encode_set(&self.proc, &visit.procedures, &mut unknown.proc),
            med: visit.medications.as_ref().map(|m| encode_set(&self.med, m, &mut unknown.med)).unwrap_or_default(),
        }
    }

    /// Encodes a patient: sorted, de-duplicated indices per set, and the
    /// codes that were not in the vocabularies.
    pub fn encode_patient(&self, patient: &RawPatient) -> (Patient, UnknownCodes) {
        let mut unknown = UnknownCodes::default();
        let visits = patient.visits.iter().map(|v| self.encode_visit(v, &mut unknown)).collect();
        (Patient { visits }, unknown)
    }

    /// Decodes indices back to codes (in index order).
    pub fn decode(voc: &Vocabulary, indices: &[u32]) -> Vec<String> {
        indices.iter().map(|&i| voc.code(i).to_string()).collect()
    }
}

impl Dataset {
    /// Encodes every patient against `vocab`; returns the dataset and the
    /// union of unknown codes.
    pub fn encode(vocab: Vocabularies, patients: &[RawPatient]) -> (Self, UnknownCodes) {
        let mut unknown = UnknownCodes::default();
        let mut encoded = Vec::with_capacity(patients.len());
        for p in patients {
            let (e, u) = vocab.encode_patient(p);
            unknown.merge(&u);
            encoded.push(e);
        }
        (Dataset { vocab, patients: encoded }, unknown)
    }

    /// Builds vocabularies from the split's training patients and encodes
    /// every patient (validation/test codes unseen in training are dropped
    /// and reported).
    pub fn from_raw(patients: &[RawPatient], split: &Split) -> (Self, UnknownCodes) {
        Self::encode(Vocabularies::from_training(patients, &split.train), patients)
    }

    /// Total number of visits.
    pub fn visit_count(&self) -> usize {
        self.patients.iter().map(|p| p.visits.len()).sum()
    }
}

/// A 0/1 vector of length `n` with ones at `indices` (out-of-range ignored).
pub fn multi_hot(indices: &[u32], n: usize) -> Vec<f32> {
    let mut v = vec![0.0; n];
    for &i in indices {
        if let Some(x) = v.get_mut(i as usize) {
            *x = 1.0;
        }
    }
    v
}

// ---------------------------------------------------------------------------
// Splits
// ---------------------------------------------------------------------------

/// The MICRON reference's shuffle seed.
pub const SPLIT_SEED: u64 = 1203;

/// Why a split does not fit a dataset.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("patient index {index} out of range (dataset has {patients} patients)")]
    OutOfRange { index: usize, patients: usize },
    #[error("patient index {index} appears more than once")]
    Duplicate { index: usize },
}

impl Split {
    /// `np.random.seed(seed); np.random.shuffle(range(n))` exactly as numpy's
    /// legacy RandomState does it. numpy seeds take 32 bits; higher bits are
    /// rejected by numpy and here truncated, so use seeds below 2^32.
    pub fn shuffled_order(n: usize, seed: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        super::rng::NumpyRandomState::new(seed as u32).shuffle(&mut order);
        order
    }

    /// Cuts an ordered patient list as the reference does:
    /// `split_point = int(n * 3 / 5)` train, then `int((n - split_point) / 2)`
    /// test, the rest validation (test comes before validation).
    pub fn from_order(order: Vec<usize>, seed: u64) -> Self {
        let n = order.len();
        let split_point = n * 3 / 5;
        let eval_len = (n - split_point) / 2;
        let train = order[..split_point].to_vec();
        let test = order[split_point..split_point + eval_len].to_vec();
        let val = order[split_point + eval_len..].to_vec();
        Split { seed, train, val, test }
    }

    /// The reference split of `n` patients: numpy shuffle with `seed`, then
    /// 60 % train / 20 % test / 20 % validation.
    pub fn numpy_shuffle(n: usize, seed: u64) -> Self {
        Self::from_order(Self::shuffled_order(n, seed), seed)
    }

    /// [`Split::numpy_shuffle`] with the reference seed 1203.
    pub fn reference(n: usize) -> Self {
        Self::numpy_shuffle(n, SPLIT_SEED)
    }

    /// Checks that every index is below `patients` and appears once.
    pub fn validate(&self, patients: usize) -> Result<(), SplitError> {
        let mut seen = vec![false; patients];
        for &index in self.train.iter().chain(&self.test).chain(&self.val) {
            if index >= patients {
                return Err(SplitError::OutOfRange { index, patients });
            }
            if std::mem::replace(&mut seen[index], true) {
                return Err(SplitError::Duplicate { index });
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// DDI matrix
// ---------------------------------------------------------------------------

impl DdiMatrix {
    /// Builds the matrix over `med` from interacting code pairs. Pairs with a
    /// code outside the vocabulary (or a code paired with itself) are
    /// skipped; the count of skipped pairs is returned.
    pub fn from_pairs<A: AsRef<str>, B: AsRef<str>>(pairs: &[(A, B)], med: &Vocabulary) -> (Self, usize) {
        let mut m = DdiMatrix::new(med.len());
        let mut skipped = 0;
        for (a, b) in pairs {
            match (med.get(a.as_ref()), med.get(b.as_ref())) {
                (Some(i), Some(j)) if i != j => m.set(i, j),
                _ => skipped += 1,
            }
        }
        (m, skipped)
    }

    /// Number of interacting unordered pairs.
    pub fn pair_count(&self) -> usize {
        self.adj.iter().filter(|&&x| x != 0).count() / 2
    }

    /// The interacting unordered pairs `(i, j)` with `i < j`, row-major.
    pub fn pairs(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for i in 0..self.n {
            for j in i + 1..self.n {
                if self.adj[i * self.n + j] != 0 {
                    out.push((i as u32, j as u32));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visit(d: &[&str], p: &[&str], m: Option<&[&str]>) -> RawVisit {
        let s = |x: &[&str]| x.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        RawVisit { diagnoses: s(d), procedures: s(p), medications: m.map(s) }
    }

    #[test]
    fn normalize_codes_rules() {
        assert_eq!(normalize_codes(&[" A01A ", "B02", "A01A"]).unwrap(), vec!["A01A", "B02"]);
        assert_eq!(normalize_codes::<&str>(&[]).unwrap(), Vec::<String>::new());
        assert_eq!(normalize_codes(&["x", "  "]).unwrap_err(), CodeError { index: 1, rule: CodeRule::Empty });
        assert_eq!(normalize_codes(&["a\u{7}b"]).unwrap_err().rule, CodeRule::NotPrintable);
        let long = "é".repeat(65);
        assert_eq!(
            normalize_codes(&["ok", &long]).unwrap_err(),
            CodeError { index: 1, rule: CodeRule::TooLong { chars: 65 } }
        );
        assert!(normalize_codes(&["é".repeat(64)]).is_ok());
        let many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
        assert_eq!(
            normalize_codes(&many).unwrap_err(),
            CodeError { index: 1000, rule: CodeRule::TooMany { count: 1001 } }
        );
        assert!(normalize_codes(&many[..1000]).is_ok());
        assert_eq!(CodeError { index: 3, rule: CodeRule::Empty }.to_string(), "code 3: empty code");
    }

    #[test]
    fn vocab_from_training_only_and_encoding_reports_unknowns() {
        let pats = vec![
            RawPatient { id: "a".into(), visits: vec![visit(&["d2", "d1"], &["p1"], Some(&["m2", "m1"]))] },
            RawPatient { id: "b".into(), visits: vec![visit(&["d3"], &["p2"], Some(&["m3"]))] },
            RawPatient { id: "c".into(), visits: vec![visit(&["d1", "d9"], &[], None)] },
        ];
        let v = Vocabularies::from_training(&pats, &[1, 0]);
        assert_eq!(v.diag.codes(), &["d3", "d2", "d1"]);
        assert_eq!(v.med.codes(), &["m3", "m2", "m1"]);
        assert_eq!(v.sizes(), (3, 2, 3));
        let (p, u) = v.encode_patient(&pats[0]);
        assert_eq!(p.visits[0], Visit { diag: vec![1, 2], proc: vec![1], med: vec![1, 2] });
        assert!(u.is_empty());
        let (p, u) = v.encode_patient(&pats[2]);
        assert_eq!(p.visits[0], Visit { diag: vec![2], proc: vec![], med: vec![] });
        assert_eq!(u.diag, vec!["d9"]);
        assert_eq!(u.total(), 1);
        let split = Split { seed: 0, train: vec![0, 1], val: vec![], test: vec![2] };
        let (ds, u) = Dataset::from_raw(&pats, &split);
        assert_eq!(ds.patients.len(), 3);
        assert_eq!(ds.visit_count(), 3);
        assert_eq!(u.diag, vec!["d9"]);
        assert_eq!(ds.vocab.diag.codes(), &["d2", "d1", "d3"]);
    }

    #[test]
    fn multi_hot_sets_ones() {
        assert_eq!(multi_hot(&[0, 2, 7], 4), vec![1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn reference_split_cut_and_order() {
        // numpy: np.random.seed(1203); l = list(range(20)); np.random.shuffle(l)
        let s = Split::reference(20);
        assert_eq!(s.train, vec![10, 0, 11, 1, 12, 5, 18, 6, 15, 13, 2, 9]);
        assert_eq!(s.test, vec![8, 19, 7, 4]);
        assert_eq!(s.val, vec![17, 16, 14, 3]);
        // 6350 patients: int(6350*3/5) = 3810 train, 1270 test, 1270 validation
        let s = Split::reference(6350);
        assert_eq!((s.train.len(), s.test.len(), s.val.len()), (3810, 1270, 1270));
        assert_eq!(&s.train[..4], &[2307, 379, 4688, 3156]);
        assert_eq!(&s.test[..5], &[2359, 5528, 94, 2742, 4683]);
        assert_eq!(&s.val[..5], &[1077, 4567, 1646, 4112, 5826]);
        assert_eq!(s.seed, 1203);
        s.validate(6350).unwrap();
        // odd sizes: 11 -> int(6.6) = 6 train, int(5/2) = 2 test, 3 validation
        let s = Split::from_order((0..11).collect(), 0);
        assert_eq!((s.train.len(), s.test.len(), s.val.len()), (6, 2, 3));
        assert_eq!(s.validate(10), Err(SplitError::OutOfRange { index: 10, patients: 10 }));
        let bad = Split { seed: 0, train: vec![0, 1], val: vec![1], test: vec![] };
        assert_eq!(bad.validate(3), Err(SplitError::Duplicate { index: 1 }));
    }

    #[test]
    fn ddi_from_pairs() {
        let med = Vocabulary::from(vec!["A".to_string(), "B".into(), "C".into()]);
        let (m, skipped) = DdiMatrix::from_pairs(&[("A", "C"), ("C", "A"), ("A", "Z"), ("B", "B")], &med);
        assert_eq!(skipped, 2);
        assert!(m.interacts(0, 2) && m.interacts(2, 0) && !m.interacts(0, 1));
        assert_eq!(m.pair_count(), 1);
        assert_eq!(m.pairs(), vec![(0, 2)]);
    }
}
