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
