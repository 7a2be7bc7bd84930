//! Inference: the residual recurrence of micron.md ("Inference"), in plain
//! Rust over [`MicronWeights`] so that one step costs microseconds and needs
//! no device. Tests check it against the burn forward pass.
use serde::{Deserialize, Serialize};

use super::model::MicronWeights;
use crate::ml::data::Visit;
use crate::ml::metrics::{PatientPrediction, VisitPrediction};

/// Decision thresholds of the recurrence: add j when p_j >= `add`, remove j
/// when p_j < `remove`, otherwise keep its previous status.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub add: f32,
    pub remove: f32,
}

impl Default for Thresholds {
    /// 0.8 / 0.2: what training and validation use.
    fn default() -> Self {
        Self { add: 0.8, remove: 0.2 }
    }
}

/// What the service persists per patient to continue the recurrence without
/// re-reading history (plus the model version, which the caller records).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MicronState {
    /// The medication logit vector, |M| floats: the model's memory.
    pub base: Vec<f32>,
    /// h of the last visit, D floats.
    pub h_last: Vec<f32>,
    /// The current medication set (sorted indices).
    pub meds: Vec<u32>,
}

/// The result of one recurrence step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepOutput {
    /// sigmoid(base) for every medication.
    pub probs: Vec<f32>,
    /// The new medication set (sorted).
    pub predicted: Vec<u32>,
    /// In `predicted` but not in the previous set.
    pub added: Vec<u32>,
    /// In the previous set but not in `predicted`.
    pub removed: Vec<u32>,
    /// In both.
    pub kept: Vec<u32>,
}

/// Which set a step treats as "the medications before this visit" during a
/// replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrevSource {
    /// The set predicted one step earlier (the reference evaluation).
    #[default]
    Predicted,
    /// The medications recorded for the previous visit (the live service,
    /// when the EHR sent them).
    Recorded,
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn sorted_unique(v: &[u32]) -> Vec<u32> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Plain-Rust MICRON inference over a weight snapshot.
#[derive(Clone, Debug)]
pub struct MicronPredictor {
    pub weights: MicronWeights,
}

impl MicronPredictor {
    pub fn new(weights: MicronWeights) -> Self {
        Self { weights }
    }

    pub fn n_med(&self) -> usize {
        self.weights.n_med
    }

    /// Whether a stored state has this model's shape (|M| logits, D-wide h).
    /// A state from another model version must be rebuilt by a replay.
    pub fn state_fits(&self, state: &MicronState) -> bool {
        state.base.len() == self.weights.n_med
            && state.h_last.len() == self.weights.dim
            && state.meds.iter().all(|&m| (m as usize) < self.weights.n_med)
    }

    /// Starts a patient at visit 0: `base = f(h_0)`, the set is visit 0's
    /// known medications. Visit 0 is not predicted.
    pub fn start(&self, visit0: &Visit) -> MicronState {
        let h0 = self.weights.health(&visit0.diag, &visit0.proc);
        MicronState {
            base: self.weights.prescription(&h0),
            h_last: h0,
            meds: sorted_unique(&visit0.med),
        }
    }

    /// One residual step for a new visit: `base += f(h_t - h_{t-1})`,
    /// `p = sigmoid(base)`, then add / remove against the previous set
    /// (`prev_override` when given, e.g. the medications recorded at the
    /// previous visit, else `state.meds`). Only the visit's diagnoses and
    /// procedures are read. Panics when `state` does not fit this model
    /// (check with [`MicronPredictor::state_fits`]).
    pub fn step(
        &self,
        state: &MicronState,
        visit: &Visit,
        thresholds: Thresholds,
        prev_override: Option<&[u32]>,
    ) -> (MicronState, StepOutput) {
        assert!(
            state.base.len() == self.weights.n_med && state.h_last.len() == self.weights.dim,
            "MicronState does not fit this model: replay the history"
        );
        let h = self.weights.health(&visit.diag, &visit.proc);
        let r: Vec<f32> = h.iter().zip(&state.h_last).map(|(a, b)| a - b).collect();
        let dm = self.weights.prescription(&r);
        let base: Vec<f32> = state.base.iter().zip(&dm).map(|(a, b)| a + b).collect();
        let probs: Vec<f32> = base.iter().map(|&x| sigmoid(x)).collect();

        let n = self.n_med();
        let mut in_set = vec![false; n];
        let prev: Vec<u32> = match prev_override {
            Some(p) => sorted_unique(p),
            None => state.meds.clone(),
        };
        for &m in &prev {
            if (m as usize) < n {
                in_set[m as usize] = true;
            }
        }
        // Same order as the reference: set the adds, then clear the removes.
        for (j, &p) in probs.iter().enumerate() {
            if p >= thresholds.add {
                in_set[j] = true;
            }
            if p < thresholds.remove {
                in_set[j] = false;
            }
        }
        let predicted: Vec<u32> = (0..n as u32).filter(|&j| in_set[j as usize]).collect();
        let was: Vec<bool> = {
            let mut w = vec![false; n];
            prev.iter().filter(|&&m| (m as usize) < n).for_each(|&m| w[m as usize] = true);
            w
        };
        let added = predicted.iter().copied().filter(|&j| !was[j as usize]).collect();
        let kept = predicted.iter().copied().filter(|&j| was[j as usize]).collect();
        let removed = prev.iter().copied().filter(|&j| (j as usize) < n && !in_set[j as usize]).collect();
        let out = StepOutput { probs, predicted: predicted.clone(), added, removed, kept };
        (MicronState { base, h_last: h, meds: predicted }, out)
    }

    /// Replays a whole history from scratch: `start` at visit 0, then one
    /// step per later visit. Returns the final state (to persist) and the
    /// outputs of visits 1.. (empty for a single visit). Panics on an empty
    /// history.
    pub fn replay(&self, visits: &[Visit], thresholds: Thresholds, prev: PrevSource) -> (MicronState, Vec<StepOutput>) {
        let mut state = self.start(&visits[0]);
        let mut outs = Vec::with_capacity(visits.len().saturating_sub(1));
        for t in 1..visits.len() {
            let over = match prev {
                PrevSource::Predicted => None,
                PrevSource::Recorded => Some(visits[t - 1].med.as_slice()),
            };
            let (s, o) = self.step(&state, &visits[t], thresholds, over);
            state = s;
            outs.push(o);
        }
        (state, outs)
    }

    /// The evaluation view of a patient (visits t >= 1, as the reference
    /// scores them: prev = the set predicted one step earlier, truth of visit
    /// 0 at t = 1). Patients with fewer than two visits give no visits.
    pub fn predict_patient(&self, visits: &[Visit], thresholds: Thresholds) -> PatientPrediction {
        if visits.len() < 2 {
            return PatientPrediction::default();
        }
        let (_, outs) = self.replay(visits, thresholds, PrevSource::Predicted);
        let mut prev = sorted_unique(&visits[0].med);
        let mut vp = Vec::with_capacity(outs.len());
        for (t, o) in outs.into_iter().enumerate() {
            let next_prev = o.predicted.clone();
            vp.push(VisitPrediction {
                truth: sorted_unique(&visits[t + 1].med),
                predicted: o.predicted,
                probs: o.probs,
                prev: std::mem::replace(&mut prev, next_prev),
            });
        }
        PatientPrediction { visits: vp }
    }

    /// [`MicronPredictor::predict_patient`] for many patients (only those
    /// with two or more visits are returned, in order).
    pub fn predict_patients<'a>(
        &self,
        patients: impl IntoIterator<Item = &'a [Visit]>,
        thresholds: Thresholds,
    ) -> Vec<PatientPrediction> {
        patients
            .into_iter()
            .filter(|v| v.len() >= 2)
            .map(|v| self.predict_patient(v, thresholds))
            .collect()
    }
}
