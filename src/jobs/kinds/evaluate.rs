//! `evaluate`: measures a registered model version (copy-previous, MICRON at
//! thresholds 0.8 / 0.2, or the GRU baseline) on a part of its split (or on
//! every patient), over the visits stored when the job starts and the stored
//! interaction pairs. The result holds micron.md's metrics without and with
//! the reference's aliasing quirk, and copy-previous on the same patients.
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use std::time::Instant;

use crate::{
    http::error::{ApiError, FieldError},
    jobs::{JobContext, JobKind, Outcome, Progress, SplitFile},
    ml::{
        backend::Device,
        baselines::{GruArtifact, GruPredictor},
        data::{Dataset, DdiMatrix, Patient, RawPatient, Vocabularies},
        metrics::{self, MetricOptions, PatientPrediction},
        micron::Thresholds,
    },
    registry::{LoadedModel, ModelKind},
    store,
};

/// Which patients to evaluate on.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EvalSplit {
    Train,
    Val,
    #[default]
    Test,
    /// Every stored patient.
    All,
}

/// Parameters of `evaluate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"model_id": "019ae4a0-6a3c-7b51-9a43-6f0d3c1c2b10", "split": "test"}))]
pub struct EvaluateParams {
    /// The model version to evaluate.
    pub model_id: Uuid,
    /// The part of the version's split (`split.json`); default `test`.
    #[serde(default)]
    pub split: EvalSplit,
}

pub struct Evaluate;

/// Model kinds whose evaluation is built in (density versions are measured
/// by their own training job: log-likelihoods, not medication metrics).
fn evaluable(kind: &str) -> bool {
    [ModelKind::CopyPrevious, ModelKind::Micron, ModelKind::Gru].iter().any(|k| k.as_str() == kind)
}

/// Patients per batch of model predictions (cancellation granularity).
const BATCH: usize = 64;

/// The visits of `patients` whose medications are known (the others have
/// nothing to score), encoded once with the model's vocabularies.
fn encode_scored(vocab: &Vocabularies, patients: &[&RawPatient]) -> Vec<Patient> {
    let raw: Vec<RawPatient> = patients
        .iter()
        .map(|p| RawPatient {
            id: p.id.clone(),
            visits: p.visits.iter().filter(|v| v.medications.is_some()).cloned().collect(),
        })
        .collect();
    Dataset::encode(vocab.clone(), &raw).0.patients
}

/// Predictions of the version for `patients`, batch by batch with progress
/// and cancellation: copy-previous, MICRON at 0.8 / 0.2, or the GRU.
fn predictions(ctx: &JobContext, model: &LoadedModel, patients: &[Patient], n_med: usize) -> anyhow::Result<Vec<PatientPrediction>> {
    enum Predictor {
        CopyPrevious,
        Micron(std::sync::Arc<crate::ml::micron::LoadedMicron>),
        Gru(GruPredictor),
    }
    let predictor = if model.kind == ModelKind::Gru.as_str() {
        Predictor::Gru(GruArtifact::load(&model.path, &Device::flex())?.predictor)
    } else if let Some(m) = &model.micron {
        Predictor::Micron(m.clone())
    } else {
        Predictor::CopyPrevious
    };
    let started = Instant::now();
    let total = patients.len().div_ceil(BATCH) as u64;
    let mut out = Vec::with_capacity(patients.len());
    for (step, batch) in patients.chunks(BATCH).enumerate() {
        ctx.checkpoint()?;
        let histories = batch.iter().map(|p| p.visits.as_slice());
        out.extend(match &predictor {
            Predictor::CopyPrevious => copy_previous_of(batch, n_med),
            Predictor::Micron(m) => m.predictor.predict_patients(histories, Thresholds::default()),
            Predictor::Gru(g) => g.predict_patients(histories),
        });
        let done = (step + 1) as u64;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let rate = (done as usize * BATCH).min(patients.len()) as f64 / secs;
        ctx.progress(Progress::step(1, done).of(total).throughput(rate).eta(secs / done as f64 * (total - done) as f64));
    }
    Ok(out)
}

/// Copy-previous predictions, as the `train_copy_previous` job makes them.
fn copy_previous_of(patients: &[Patient], n_med: usize) -> Vec<PatientPrediction> {
    let meds: Vec<Vec<Vec<u32>>> = patients.iter().map(|p| p.visits.iter().map(|v| v.med.clone()).collect()).collect();
    metrics::copy_previous(&meds, n_med)
}

impl JobKind for Evaluate {
    type Params = EvaluateParams;

    fn name(&self) -> &'static str {
        "evaluate"
    }
    fn description(&self) -> &'static str {
        "Evaluate a registered model version on a split of the stored visits"
    }
    fn model_kind(&self) -> Option<ModelKind> {
        None
    }

    async fn check(&self, p: &EvaluateParams, db: &sqlx::PgPool) -> Result<(), ApiError> {
        let Some(m) = store::models::get(db, p.model_id).await? else {
            return Err(ApiError::Validation(vec![FieldError::new("/params/model_id", "no such model version")]));
        };
        if !evaluable(&m.kind) {
            return Err(ApiError::Validation(vec![FieldError::new(
                "/params/model_id",
                format!("evaluating `{}` models is not available in this build", m.kind),
            )]));
        }
        if m.status == "failed" {
            return Err(ApiError::Validation(vec![FieldError::new("/params/model_id", "this version failed")]));
        }
        Ok(())
    }

    fn run(&self, p: EvaluateParams, ctx: &JobContext) -> anyhow::Result<Outcome> {
        let model = ctx.load_model(p.model_id)?;
        anyhow::ensure!(evaluable(&model.kind), "evaluating `{}` models is not available in this build", model.kind);
        let vocab: Vocabularies =
            model.vocab.clone().ok_or_else(|| anyhow::anyhow!("version {} has no vocab.json", model.version))?;
        let data = ctx.load_training_data()?;
        let patients = match p.split {
            EvalSplit::All => data.patients.iter().collect::<Vec<_>>(),
            part => {
                let split: SplitFile = serde_json::from_slice(&std::fs::read(model.path.join("split.json"))?)?;
                let ids = match part {
                    EvalSplit::Train => &split.train,
                    EvalSplit::Val => &split.val,
                    _ => &split.test,
                };
                data.select(ids)
            }
        };
        ctx.progress(Progress::log(format!(
            "evaluating {} version {} on {} patients",
            model.kind,
            model.version,
            patients.len()
        )));
        let pairs = ctx.load_ddi_pairs()?;
        let (ddi, _) = DdiMatrix::from_pairs(&pairs, &vocab.med);
        let n_med = vocab.med.len();
        let encoded = encode_scored(&vocab, &patients);
        let predicted = predictions(ctx, &model, &encoded, n_med)?;
        let metrics = metrics::evaluate(&predicted, &ddi, MetricOptions::CLEAN);
        let quirk = metrics::evaluate(&predicted, &ddi, MetricOptions::REFERENCE);
        let copy_metrics = if model.kind == ModelKind::CopyPrevious.as_str() {
            metrics
        } else {
            metrics::evaluate(&copy_previous_of(&encoded, n_med), &ddi, MetricOptions::CLEAN)
        };
        ctx.progress(Progress::epoch(1, Some(1), json!({ "metrics": metrics })));
        Ok(Outcome::Result(json!({
            "model_id": model.id,
            "kind": model.kind,
            "version": model.version,
            "split": p.split,
            "patients": patients.len(),
            "ddi_pairs": pairs.len(),
            "metrics": metrics,
            "metrics_reference_quirk": quirk,
            "copy_previous": copy_metrics,
        })))
    }
}
