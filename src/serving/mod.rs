//! Serving medication-change predictions from the active MICRON version.
//!
//! A stored patient's prediction costs one residual step from the state kept
//! in `patient_states` (per patient and model version: the logit vector
//! `base`, the last health representation and the current medication set,
//! valid for one visit id at one sequence number). Without a usable state
//! (a new model version, an imported history, a back-dated visit) the
//! history is replayed once and the state stored. The previous medication
//! set of a step is the medications recorded at the previous visit when the
//! EHR sent them, else the previous prediction; a replay applies the same
//! rule at every step, so incremental and replayed answers are equal.
//!
//! Everything that writes runs inside the caller's transaction after the
//! patient row lock, so appends to one patient serialize and a failure
//! leaves neither visit, state nor prediction behind.
pub mod bench;
pub mod density;

use std::{collections::HashSet, sync::Arc, time::Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

pub use density::DensityFields;

use crate::{
    app::AppState,
    domain::{CodeSet, CodeSetError},
    http::error::{ApiError, FieldError},
    ml::{
        data::{UnknownCodes, Visit, Vocabularies},
        micron::{LoadedMicron, MicronPredictor, MicronState, StepOutput, Thresholds},
    },
    registry::{LoadedModel, ModelKind},
    store::{self, predictions::StateRow, visits::VisitRow},
};

/// Probabilities below this are left out of `probabilities` unless all are
/// asked for.
pub const PROBABILITY_FLOOR: f32 = 0.01;

/// The decision thresholds the service applies (micron.md: 0.8 / 0.2).
pub const THRESHOLDS: Thresholds = Thresholds { add: 0.8, remove: 0.2 };

/// Histories longer than this are replayed on a blocking thread.
const INLINE_REPLAY_VISITS: usize = 64;

// ---------------------------------------------------------------------------
// The answer
// ---------------------------------------------------------------------------

/// The model version that answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelRef {
    pub id: Uuid,
    pub version: String,
}

/// Where the "medications before this visit" came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PreviousSource {
    /// The medications the EHR recorded for the previous visit.
    Recorded,
    /// The medications recorded there were unknown: the previous prediction.
    Predicted,
    /// No previous set: the first visit's medications were unknown, or there
    /// is no previous visit.
    None,
}

/// The medication set the prediction changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PreviousSet {
    pub source: PreviousSource,
    /// Codes known to the model, sorted.
    pub medications: Vec<String>,
}

/// A medication with the model's probability that it belongs to the set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CodeProbability {
    #[schema(example = "C07A")]
    pub code: String,
    #[schema(example = 0.93)]
    pub probability: f64,
}

/// Codes of the input that the model does not know (ignored).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UnknownCodesReport {
    /// Diagnoses of the predicted visit.
    pub diagnoses: Vec<String>,
    /// Procedures of the predicted visit.
    pub procedures: Vec<String>,
    /// Medications of the previous set (recorded at the previous visit).
    pub medications: Vec<String>,
}

/// An interacting pair inside the predicted set (from `ddi_pairs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Interaction {
    pub a: String,
    pub b: String,
}

/// The add / remove thresholds applied.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ThresholdsUsed {
    /// Add a medication when its probability is at least this.
    pub add: f64,
    /// Remove it when its probability is below this.
    pub remove: f64,
}

/// How the recurrence state was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateUse {
    /// One residual step from the stored state.
    Incremental,
    /// No usable stored state (new model version, imported or back-dated
    /// history): the history was replayed once and the state stored.
    Rebuilt,
    /// Replayed from scratch on request (`replay=true`).
    Replayed,
    /// A history given in the request; nothing stored.
    Stateless,
}

/// Where the time of the answer went, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Timing {
    /// Encoding and the model (step or replay).
    pub model_us: u64,
    /// Database statements before the answer: storing the visit (when the
    /// request appends one), reading the state (or the history) and the
    /// interacting pairs. The final write of state and prediction and the
    /// commit come after the answer is built and are not included.
    pub database_us: u64,
    /// Everything from the start of the request's database work until the
    /// answer was built.
    pub total_us: u64,
}

/// A medication-change prediction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MedicationChange {
    /// Id of the stored prediction (absent for previews and stateless answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<Uuid>,
    /// The visit predicted (absent for drafts and inline histories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit_seq: Option<i32>,
    pub model: ModelRef,
    pub previous: PreviousSet,
    /// The predicted medication set, sorted.
    pub predicted: Vec<String>,
    /// In `predicted`, not in the previous set.
    pub added: Vec<CodeProbability>,
    /// In the previous set, not in `predicted`.
    pub removed: Vec<CodeProbability>,
    /// In both.
    pub kept: Vec<CodeProbability>,
    /// Every medication of the vocabulary with probability at least
    /// `probability_floor` (all with `probabilities=all`), most likely first.
    pub probabilities: Vec<CodeProbability>,
    pub probability_floor: f64,
    pub unknown_codes: UnknownCodesReport,
    /// Interacting pairs inside `predicted`.
    pub interactions: Vec<Interaction>,
    /// True when `interactions` is not empty.
    pub interaction_warning: bool,
    pub thresholds: ThresholdsUsed,
    pub state: StateUse,
    /// True when the stored state had to be rebuilt by a replay.
    pub state_rebuilt: bool,
    /// How typical the visit is of the density model's training data, when
    /// a density model over this MICRON version is active.
    pub density: Option<DensityFields>,
    pub timing: Timing,
}

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

/// Codes of one visit as a caller gives them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"occurred_at": "2026-12-01T09:30:00Z", "diagnoses": ["4019", "25000"],
    "procedures": ["3893"], "medications": null}))]
pub struct HistoryVisit {
    #[serde(default)]
    pub occurred_at: Option<DateTime<Utc>>,
    pub diagnoses: Vec<String>,
    #[serde(default)]
    pub procedures: Vec<String>,
    /// `null` or absent when unknown.
    #[serde(default)]
    pub medications: Option<Vec<String>>,
}

/// A visit's validated code sets.
#[derive(Clone, Debug, Default)]
pub struct VisitCodes {
    pub diagnoses: Vec<String>,
    pub procedures: Vec<String>,
    pub medications: Option<Vec<String>>,
}

fn parse_set(pointer: &str, raw: &[String], errors: &mut Vec<FieldError>) -> Vec<String> {
    match CodeSet::parse_all(raw) {
        Ok(s) => s.as_slice().to_vec(),
        Err(es) => {
            for e in es {
                let p = match e {
                    CodeSetError::TooMany(_) => pointer.to_string(),
                    _ => format!("{pointer}/{}", e.index().unwrap_or(0)),
                };
                errors.push(FieldError::new(p, e.to_string()));
            }
            vec![]
        }
    }
}

impl HistoryVisit {
    /// Validates the code sets; errors point under `prefix`.
    pub fn validate(&self, prefix: &str, errors: &mut Vec<FieldError>) -> VisitCodes {
        VisitCodes {
            diagnoses: parse_set(&format!("{prefix}/diagnoses"), &self.diagnoses, errors),
            procedures: parse_set(&format!("{prefix}/procedures"), &self.procedures, errors),
            medications: self.medications.as_ref().map(|m| parse_set(&format!("{prefix}/medications"), m, errors)),
        }
    }
}

impl From<&VisitRow> for VisitCodes {
    fn from(r: &VisitRow) -> Self {
        Self { diagnoses: r.diagnoses.clone(), procedures: r.procedures.clone(), medications: r.medications.clone() }
    }
}

/// Options of a prediction.
#[derive(Clone, Debug, Default)]
pub struct PredictOptions {
    /// List every medication's probability, not only those above the floor.
    pub all_probabilities: bool,
    /// Ignore the stored state and replay the whole history (benchmarks).
    pub force_replay: bool,
}

// ---------------------------------------------------------------------------
// The recurrence over encoded visits (pure; tested against replays)
// ---------------------------------------------------------------------------

/// A visit encoded against a model's vocabularies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncodedVisit {
    pub visit: Visit,
    /// Whether the medications were recorded (`Some` in the EHR's data).
    pub recorded: bool,
}

pub fn encode(vocab: &Vocabularies, v: &VisitCodes, unknown: &mut UnknownCodes) -> EncodedVisit {
    let raw = crate::ml::data::RawVisit {
        diagnoses: v.diagnoses.clone(),
        procedures: v.procedures.clone(),
        medications: v.medications.clone(),
    };
    EncodedVisit { visit: vocab.encode_visit(&raw, unknown), recorded: v.medications.is_some() }
}

/// One step of the live recurrence.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveStep {
    pub out: StepOutput,
    pub previous_source: PreviousSource,
    pub previous: Vec<u32>,
    /// The state after the step.
    pub state: MicronState,
}

/// Advances `state` (the state after `prev`) by visit `next`. The previous
/// set is `prev`'s recorded medications when recorded, else `state.meds`
/// (the prediction made for `prev`, or nothing when `prev` is the first
/// visit: `prev_predicted` says whether `state.meds` is a prediction).
pub fn live_step(
    p: &MicronPredictor,
    state: &MicronState,
    prev: &EncodedVisit,
    prev_predicted: bool,
    next: &EncodedVisit,
    th: Thresholds,
) -> LiveStep {
    let (source, over) = if prev.recorded {
        (PreviousSource::Recorded, Some(prev.visit.med.as_slice()))
    } else if prev_predicted {
        (PreviousSource::Predicted, None)
    } else {
        (PreviousSource::None, None)
    };
    let previous = over.map(<[u32]>::to_vec).unwrap_or_else(|| state.meds.clone());
    let (state, out) = p.step(state, &next.visit, th, over);
    LiveStep { out, previous_source: source, previous, state }
}

/// Replays a history from scratch with the live rule: the state after the
/// last visit and the steps of visits 1.. (empty for one visit).
pub fn live_replay(p: &MicronPredictor, visits: &[EncodedVisit], th: Thresholds) -> (MicronState, Vec<LiveStep>) {
    assert!(!visits.is_empty(), "a replay needs a visit");
    let mut state = p.start(&visits[0].visit);
    let mut steps = Vec::with_capacity(visits.len() - 1);
    for t in 1..visits.len() {
        let s = live_step(p, &state, &visits[t - 1], t >= 2, &visits[t], th);
        state = s.state.clone();
        steps.push(s);
    }
    (state, steps)
}

/// The state before any visit (h = b_h, base = f(b_h), no medications): a
/// first visit is predicted from it only when nothing precedes it.
pub fn empty_state(p: &MicronPredictor) -> MicronState {
    let h = p.weights.health_empty();
    MicronState { base: p.weights.prescription(&h), h_last: h, meds: vec![] }
}

fn to_row(s: &MicronState, visit_id: Uuid, visit_seq: i32) -> StateRow {
    StateRow {
        visit_id,
        visit_seq,
        base: s.base.clone(),
        h_last: s.h_last.clone(),
        meds: s.meds.iter().map(|&m| m as i32).collect(),
    }
}

fn from_row(r: &StateRow) -> MicronState {
    MicronState { base: r.base.clone(), h_last: r.h_last.clone(), meds: r.meds.iter().map(|&m| m as u32).collect() }
}

// ---------------------------------------------------------------------------
// Building answers
// ---------------------------------------------------------------------------

/// The served MICRON version (503 when none is active).
pub fn served(state: &AppState) -> Result<(Arc<LoadedModel>, Arc<LoadedMicron>), ApiError> {
    let model = state.registry.active(ModelKind::Micron.as_str()).ok_or_else(|| {
        ApiError::Unavailable(
            "no MICRON model version is active: train one (POST /v1/jobs with kind `train_micron`) and activate it \
             (POST /v1/models/{id}/activate)"
                .into(),
        )
    })?;
    let micron = model.micron.clone().ok_or_else(|| anyhow::anyhow!("the active MICRON version has no weights loaded"))?;
    Ok((model, micron))
}

struct Answer<'a> {
    model: &'a LoadedModel,
    micron: &'a LoadedMicron,
    step: &'a LiveStep,
    unknown: UnknownCodes,
    state: StateUse,
    opts: &'a PredictOptions,
}

impl Answer<'_> {
    /// The answer without interactions and timing (filled in by the caller).
    fn build(self, app: &AppState) -> MedicationChange {
        let med = &self.micron.artifact.vocab.med;
        let probs = &self.step.out.probs;
        let cp = |j: &u32| CodeProbability { code: med.code(*j).to_string(), probability: decimal(probs[*j as usize]) };
        let sorted = |v: &[u32]| {
            let mut out: Vec<CodeProbability> = v.iter().map(cp).collect();
            out.sort_by(|a, b| a.code.cmp(&b.code));
            out
        };
        let added = sorted(&self.step.out.added);
        let removed = sorted(&self.step.out.removed);
        let kept = sorted(&self.step.out.kept);
        let mut predicted: Vec<String> = self.step.out.predicted.iter().map(|&j| med.code(j).to_string()).collect();
        predicted.sort();
        let mut previous: Vec<String> = self.step.previous.iter().map(|&j| med.code(j).to_string()).collect();
        previous.sort();
        let mut probabilities: Vec<CodeProbability> = (0..probs.len() as u32)
            .filter(|&j| self.opts.all_probabilities || probs[j as usize] >= PROBABILITY_FLOOR)
            .map(|j| cp(&j))
            .collect();
        probabilities.sort_by(|a, b| b.probability.total_cmp(&a.probability).then_with(|| a.code.cmp(&b.code)));
        MedicationChange {
            prediction_id: None,
            patient_id: None,
            visit_id: None,
            visit_seq: None,
            model: ModelRef { id: self.model.id, version: self.model.version.clone() },
            previous: PreviousSet { source: self.step.previous_source, medications: previous },
            predicted,
            added,
            removed,
            kept,
            probabilities,
            probability_floor: if self.opts.all_probabilities { 0.0 } else { decimal(PROBABILITY_FLOOR) },
            unknown_codes: UnknownCodesReport {
                diagnoses: self.unknown.diag,
                procedures: self.unknown.proc,
                medications: self.unknown.med,
            },
            interactions: vec![],
            interaction_warning: false,
            thresholds: ThresholdsUsed { add: decimal(THRESHOLDS.add), remove: decimal(THRESHOLDS.remove) },
            state: self.state,
            state_rebuilt: self.state == StateUse::Rebuilt,
            // Stateless batches compute it on their blocking thread (it costs
            // milliseconds per visit at D = 64).
            density: if self.state == StateUse::Stateless {
                None
            } else {
                density::visit_density(app, self.model, &self.step.state.h_last)
            },
            timing: Timing::default(),
        }
    }
}

/// Fills `interactions` from the known interacting pairs.
fn set_interactions(c: &mut MedicationChange, pairs: &HashSet<(String, String)>) {
    let mut out = vec![];
    for (i, a) in c.predicted.iter().enumerate() {
        for b in &c.predicted[i + 1..] {
            let (x, y) = if a < b { (a, b) } else { (b, a) };
            if pairs.contains(&(x.clone(), y.clone())) {
                out.push(Interaction { a: x.clone(), b: y.clone() });
            }
        }
    }
    c.interaction_warning = !out.is_empty();
    c.interactions = out;
}

async fn pairs_among(conn: &mut PgConnection, codes: &[String]) -> Result<HashSet<(String, String)>, ApiError> {
    Ok(store::predictions::interactions(conn, codes).await?.into_iter().collect())
}

/// An f32 as the f64 of its shortest decimal form (0.8f32 -> 0.8, not
/// 0.800000011920929), so that answers read the same whether serialized
/// directly or stored as JSON and read back.
pub fn decimal(x: f32) -> f64 {
    if !x.is_finite() {
        return x as f64;
    }
    let mut buf = String::with_capacity(16);
    use std::fmt::Write;
    let _ = write!(buf, "{x}");
    buf.parse().unwrap_or(x as f64)
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// Encodes visits on the caller's thread, or on a blocking thread for long
/// histories, and replays them.
async fn replay_async(
    micron: &Arc<LoadedMicron>,
    visits: Vec<VisitCodes>,
) -> Result<(Vec<EncodedVisit>, Vec<UnknownCodes>, MicronState, Vec<LiveStep>), ApiError> {
    let len = visits.len();
    let work = {
        let micron = micron.clone();
        move || {
            let vocab = &micron.artifact.vocab;
            let mut unknowns = Vec::with_capacity(visits.len());
            let enc: Vec<EncodedVisit> = visits
                .iter()
                .map(|v| {
                    let mut u = UnknownCodes::default();
                    let e = encode(vocab, v, &mut u);
                    unknowns.push(u);
                    e
                })
                .collect();
            let (state, steps) = live_replay(&micron.predictor, &enc, THRESHOLDS);
            (enc, unknowns, state, steps)
        }
    };
    if len <= INLINE_REPLAY_VISITS {
        Ok(work())
    } else {
        tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::Internal(e.into()))
    }
}

/// Unknown codes to report for a step: the predicted visit's diagnoses and
/// procedures, and the previous set's medications when it was recorded.
fn step_unknowns(prev: Option<&UnknownCodes>, prev_recorded: bool, this: &UnknownCodes) -> UnknownCodes {
    UnknownCodes {
        diag: this.diag.clone(),
        proc: this.proc.clone(),
        med: match prev {
            Some(p) if prev_recorded => p.med.clone(),
            _ => vec![],
        },
    }
}

// ---------------------------------------------------------------------------
// Stored patients
// ---------------------------------------------------------------------------

/// What [`predict_stored_locked`] produced.
pub enum Stored {
    /// The prediction for the visit, stored with the new state.
    Predicted(Box<MedicationChange>),
    /// The visit is the patient's first: MICRON predicts from the second
    /// visit on; the state was seeded.
    FirstVisit,
}

/// Predicts the visit `target` of a patient whose row the transaction has
/// locked (`visit_count` visits in all, `target` among them), stores the new
/// state and the prediction (audit) in the same transaction, and answers.
pub async fn predict_stored_locked(
    conn: &mut PgConnection,
    app: &AppState,
    (model, micron): (&Arc<LoadedModel>, &Arc<LoadedMicron>),
    api_key_id: Option<Uuid>,
    target: &VisitRow,
    visit_count: i32,
    opts: &PredictOptions,
    // When the request's database work started, and the database time it
    // has spent so far (e.g. storing the visit).
    started: Option<(Instant, u64)>,
) -> Result<Stored, ApiError> {
    let (t0, mut db_us) = started.unwrap_or_else(|| (Instant::now(), 0));
    let mut model_us = 0u64;
    let patient_id = target.patient_id;
    let (t, n) = (target.seq, visit_count);
    let p = &micron.predictor;
    let vocab = &micron.artifact.vocab;

    let tq = Instant::now();
    // The stored state with the visit it follows: usable for one step when
    // that visit is still the one just before the target.
    let stored = if !opts.force_replay && t == n && t >= 2 {
        store::predictions::get_state_with_visit(&mut *conn, patient_id, model.id).await?
    } else {
        None
    };
    let (usable, prev_row) = match stored {
        Some(sv) if sv.state.visit_seq == t - 1 && sv.visit.seq == t - 1 => (Some(sv.state), Some(sv.visit)),
        _ => (None, None),
    };
    db_us += micros(tq);

    let (step, unknown, new_state, state_use) = match (usable, prev_row) {
        (Some(s), Some(prev_row)) if p.state_fits(&from_row(&s)) => {
            let tm = Instant::now();
            let (mut u_prev, mut u_this) = (UnknownCodes::default(), UnknownCodes::default());
            let prev = encode(vocab, &VisitCodes::from(&prev_row), &mut u_prev);
            let this = encode(vocab, &VisitCodes::from(target), &mut u_this);
            let step = live_step(p, &from_row(&s), &prev, t - 1 >= 2, &this, THRESHOLDS);
            let unknown = step_unknowns(Some(&u_prev), prev.recorded, &u_this);
            model_us += micros(tm);
            let new_state = to_row(&step.state, target.id, t);
            (step, unknown, new_state, StateUse::Incremental)
        }
        _ => {
            let tq = Instant::now();
            let rows = store::visits::all(&mut *conn, patient_id).await?;
            db_us += micros(tq);
            let last = rows.last().ok_or_else(|| anyhow::anyhow!("the locked patient has no visits"))?;
            let (last_id, last_seq) = (last.id, last.seq);
            let tm = Instant::now();
            let codes: Vec<VisitCodes> = rows.iter().map(VisitCodes::from).collect();
            let (enc, unknowns, final_state, steps) = replay_async(micron, codes).await?;
            model_us += micros(tm);
            let new_state = to_row(&final_state, last_id, last_seq);
            if t == 1 {
                store::predictions::put_state(&mut *conn, patient_id, model.id, &new_state).await?;
                return Ok(Stored::FirstVisit);
            }
            let i = (t - 1) as usize;
            let step = steps[i - 1].clone();
            let unknown = step_unknowns(Some(&unknowns[i - 1]), enc[i - 1].recorded, &unknowns[i]);
            let state_use = if opts.force_replay { StateUse::Replayed } else { StateUse::Rebuilt };
            (step, unknown, new_state, state_use)
        }
    };

    let mut answer = Answer { model, micron, step: &step, unknown, state: state_use, opts }.build(app);
    let tq = Instant::now();
    let pairs = pairs_among(conn, &answer.predicted).await?;
    set_interactions(&mut answer, &pairs);
    let id = Uuid::now_v7();
    answer.prediction_id = Some(id);
    answer.patient_id = Some(patient_id);
    answer.visit_id = Some(target.id);
    answer.visit_seq = Some(t);
    let names = |v: &[CodeProbability]| v.iter().map(|c| c.code.clone()).collect::<Vec<_>>();
    let (added, removed, kept) = (names(&answer.added), names(&answer.removed), names(&answer.kept));
    db_us += micros(tq);
    answer.timing = Timing { model_us, database_us: db_us, total_us: micros(t0) };
    let response = serde_json::to_value(&answer).map_err(anyhow::Error::from)?;
    let tq = Instant::now();
    store::predictions::put_state_and_insert(
        &mut *conn,
        &new_state,
        &store::predictions::NewPrediction {
            id,
            patient_id,
            visit_id: target.id,
            model_id: model.id,
            model_version: &model.version,
            api_key_id,
            previous_source: match answer.previous.source {
                PreviousSource::Recorded => "recorded",
                PreviousSource::Predicted => "predicted",
                PreviousSource::None => "none",
            },
            previous: &answer.previous.medications,
            predicted: &answer.predicted,
            added: &added,
            removed: &removed,
            kept: &kept,
            response: &response,
            state_rebuilt: answer.state_rebuilt,
        },
    )
    .await?;
    let _ = micros(tq);
    Ok(Stored::Predicted(Box::new(answer)))
}

/// MICRON preview for a draft visit of a stored patient (after its stored
/// visits); nothing is stored, not even a rebuilt state. A patient with no
/// visit gets the draft predicted from the empty history.
pub async fn preview_stored(
    app: &AppState,
    patient_id: Uuid,
    draft: &HistoryVisit,
    opts: &PredictOptions,
) -> Result<MedicationChange, ApiError> {
    let t0 = Instant::now();
    let mut errors = vec![];
    let draft = draft.validate("", &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let (model, micron) = served(app)?;
    let mut conn = app.db.acquire().await?;
    let tq = Instant::now();
    let patient =
        store::patients::get(&mut *conn, patient_id).await?.ok_or_else(|| ApiError::NotFound("patient".into()))?;
    let n = patient.visit_count;
    let stored = if opts.force_replay { None } else { store::predictions::get_state(&mut *conn, patient_id, model.id).await? };
    let last = match &stored {
        Some(s) if s.visit_seq == n => {
            store::visits::get(&mut *conn, patient_id, s.visit_id).await?.filter(|r| r.seq == n)
        }
        _ => None,
    };
    let mut db_us = micros(tq);
    let p = &micron.predictor;
    let vocab = &micron.artifact.vocab;
    let mut u_draft = UnknownCodes::default();
    let enc_draft = encode(vocab, &draft, &mut u_draft);
    let (step, unknown, state_use, model_us) = match (stored, last) {
        (Some(s), Some(last)) if p.state_fits(&from_row(&s)) => {
            let tm = Instant::now();
            let mut u_last = UnknownCodes::default();
            let prev = encode(vocab, &VisitCodes::from(&last), &mut u_last);
            let step = live_step(p, &from_row(&s), &prev, n >= 2, &enc_draft, THRESHOLDS);
            let unknown = step_unknowns(Some(&u_last), prev.recorded, &u_draft);
            (step, unknown, StateUse::Incremental, micros(tm))
        }
        _ if n == 0 => {
            let tm = Instant::now();
            let none = EncodedVisit::default();
            let step = live_step(p, &empty_state(p), &none, false, &enc_draft, THRESHOLDS);
            (step, step_unknowns(None, false, &u_draft), StateUse::Rebuilt, micros(tm))
        }
        _ => {
            let tq = Instant::now();
            let rows = store::visits::all(&mut *conn, patient_id).await?;
            db_us += micros(tq);
            let tm = Instant::now();
            let codes: Vec<VisitCodes> = rows.iter().map(VisitCodes::from).collect();
            let (enc, unknowns, state, _) = replay_async(&micron, codes).await?;
            let k = enc.len() - 1;
            let step = live_step(p, &state, &enc[k], k >= 1, &enc_draft, THRESHOLDS);
            let unknown = step_unknowns(Some(&unknowns[k]), enc[k].recorded, &u_draft);
            let used = if opts.force_replay { StateUse::Replayed } else { StateUse::Rebuilt };
            (step, unknown, used, micros(tm))
        }
    };
    let mut answer = Answer { model: &model, micron: &micron, step: &step, unknown, state: state_use, opts }.build(app);
    // A preview stores nothing, so "rebuilt" only says that a replay ran.
    answer.patient_id = Some(patient_id);
    let tq = Instant::now();
    let pairs = pairs_among(&mut conn, &answer.predicted).await?;
    set_interactions(&mut answer, &pairs);
    db_us += micros(tq);
    answer.timing = Timing { model_us, database_us: db_us, total_us: micros(t0) };
    Ok(answer)
}

/// Validates inline histories; errors point under `prefix` (`/patients/3`).
pub fn validate_history(prefix: &str, visits: &[HistoryVisit], errors: &mut Vec<FieldError>) -> Vec<VisitCodes> {
    if visits.is_empty() {
        errors.push(FieldError::new(format!("{prefix}/visits"), "needs at least one visit"));
    }
    visits.iter().enumerate().map(|(i, v)| v.validate(&format!("{prefix}/visits/{i}"), errors)).collect()
}

/// Predictions for inline histories, nothing stored: for each history, the
/// prediction of every visit after the first (`with_first`: also the first
/// visit, from the empty history, when it is the only one).
pub async fn predict_histories(
    app: &AppState,
    (model, micron): (&Arc<LoadedModel>, &Arc<LoadedMicron>),
    histories: Vec<Vec<VisitCodes>>,
    with_first: bool,
    opts: &PredictOptions,
) -> Result<Vec<Vec<MedicationChange>>, ApiError> {
    let work = {
        let micron = micron.clone();
        let registry = app.registry.clone();
        let model = model.clone();
        move || {
            let p = &micron.predictor;
            let vocab = &micron.artifact.vocab;
            let with_density = |out: Vec<(LiveStep, UnknownCodes)>| {
                out.into_iter()
                    .map(|(s, u)| {
                        let d = density::density_of(&registry, &model, &s.state.h_last);
                        (s, u, d)
                    })
                    .collect::<Vec<_>>()
            };
            histories
                .into_iter()
                .map(|visits| {
                    let mut unknowns = Vec::with_capacity(visits.len());
                    let enc: Vec<EncodedVisit> = visits
                        .iter()
                        .map(|v| {
                            let mut u = UnknownCodes::default();
                            let e = encode(vocab, v, &mut u);
                            unknowns.push(u);
                            e
                        })
                        .collect();
                    let mut out: Vec<(LiveStep, UnknownCodes)> = vec![];
                    if enc.len() == 1 && with_first {
                        let none = EncodedVisit::default();
                        let s = live_step(p, &empty_state(p), &none, false, &enc[0], THRESHOLDS);
                        out.push((s, step_unknowns(None, false, &unknowns[0])));
                    } else {
                        let (_, steps) = live_replay(p, &enc, THRESHOLDS);
                        for (i, s) in steps.into_iter().enumerate() {
                            let u = step_unknowns(Some(&unknowns[i]), enc[i].recorded, &unknowns[i + 1]);
                            out.push((s, u));
                        }
                    }
                    with_density(out)
                })
                .collect::<Vec<_>>()
        }
    };
    let tm = Instant::now();
    let steps = tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::Internal(e.into()))?;
    let model_us = micros(tm);
    let mut answers: Vec<Vec<MedicationChange>> = steps
        .iter()
        .map(|h| {
            h.iter()
                .map(|(s, u, d)| {
                    let mut a =
                        Answer { model, micron, step: s, unknown: u.clone(), state: StateUse::Stateless, opts }.build(app);
                    a.density = d.clone();
                    a
                })
                .collect()
        })
        .collect();
    let mut all: Vec<String> = answers.iter().flatten().flat_map(|a| a.predicted.iter().cloned()).collect();
    all.sort();
    all.dedup();
    let tq = Instant::now();
    let mut conn = app.db.acquire().await?;
    let pairs = pairs_among(&mut conn, &all).await?;
    let db_us = micros(tq);
    let n = answers.iter().map(Vec::len).sum::<usize>().max(1) as u64;
    for a in answers.iter_mut().flatten() {
        set_interactions(a, &pairs);
        a.timing = Timing { model_us: model_us / n, database_us: db_us / n, total_us: (model_us + db_us) / n };
    }
    Ok(answers)
}

/// MICRON prediction for the last visit of an inline history (e.g. built
/// from FHIR prefetch); nothing stored. One visit is predicted from the
/// empty history.
pub async fn predict_stateless(
    app: &AppState,
    history: &[HistoryVisit],
    opts: &PredictOptions,
) -> Result<MedicationChange, ApiError> {
    let mut errors = vec![];
    let codes = validate_history("", history, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let (model, micron) = served(app)?;
    let mut out = predict_histories(app, (&model, &micron), vec![codes], true, opts).await?;
    out.pop().and_then(|mut h| h.pop()).ok_or_else(|| anyhow::anyhow!("no prediction for a non-empty history").into())
}
