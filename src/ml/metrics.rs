//! The evaluation of micron.md, exactly as the reference computes it.
//! (Types are fixed here; implementation lands with the data work.)
use serde::{Deserialize, Serialize};

use super::data::DdiMatrix;

/// One scored visit (t >= 1) of a patient.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VisitPrediction {
    /// Y: medications recorded at this visit (sorted indices).
    pub truth: Vec<u32>,
    /// Yh: predicted medication set (sorted indices).
    pub predicted: Vec<u32>,
    /// p: probability of every medication in the vocabulary.
    pub probs: Vec<f32>,
    /// The set before this visit: the set predicted one step earlier, or the
    /// truth of visit 0 at t = 1. Used by Err(add) / Err(remove).
    pub prev: Vec<u32>,
}

/// All scored visits of one patient, in order (visits t >= 1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PatientPrediction {
    pub visits: Vec<VisitPrediction>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricOptions {
    /// Reproduce the reference's aliasing quirk: for patients with 3+ visits,
    /// Jaccard/precision/recall/F1 of every visit are computed against the
    /// patient's final predicted set.
    pub aliasing_quirk: bool,
}

/// The metric table of micron.md.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub ddi_rate: f64,
    pub jaccard: f64,
    pub prauc: f64,
    pub f1: f64,
    pub precision: f64,
    pub recall: f64,
    pub err_add: f64,
    pub err_remove: f64,
    pub avg_med: f64,
    /// Number of patients / visits scored.
    pub patients: usize,
    pub visits: usize,
}
