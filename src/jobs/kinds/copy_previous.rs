//! `train_copy_previous`: the copy-previous baseline (each visit predicts
//! the previous visit's medications). It has no weights: "training" builds
//! the vocabularies from the training patients and measures the baseline on
//! the validation and test patients; the artifact is `config.json`,
//! `vocab.json`, `metrics.json` and `split.json`.
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::{
    http::error::FieldError,
    jobs::{JobContext, JobKind, NewVersion, Outcome, Progress},
    ml::{
        data::{DdiMatrix, RawPatient, SPLIT_SEED, UnknownCodes, Vocabularies},
        metrics::{self, MetricOptions, Metrics, PatientPrediction},
    },
    registry::{ModelKind, vocab_summary},
};

/// Parameters of `train_copy_previous`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"seed": 1203}))]
pub struct CopyPreviousParams {
    /// Seed of the split by patient (below 2^32; default 1203, the MICRON reference's).
    #[serde(default = "default_seed")]
    #[schema(maximum = 4294967295_u64)]
    pub seed: u64,
}

fn default_seed() -> u64 {
    SPLIT_SEED
}

pub struct TrainCopyPrevious;

/// Patients per batch (cancellation and progress granularity).
const BATCH: usize = 64;

/// Copy-previous predictions for `patients`, batch by batch, with progress
/// and cancellation checks. Visits whose medications are unknown are
/// skipped (they have nothing to copy or score).
pub fn predict(
    ctx: &JobContext,
    vocab: &Vocabularies,
    patients: &[&RawPatient],
    epoch: u32,
) -> anyhow::Result<Vec<PatientPrediction>> {
    let n_med = vocab.med.len();
    let started = Instant::now();
    let total = patients.len().div_ceil(BATCH) as u64;
    let mut out = Vec::with_capacity(patients.len());
    for (step, batch) in patients.chunks(BATCH).enumerate() {
        ctx.checkpoint()?;
        let meds: Vec<Vec<Vec<u32>>> = batch
            .iter()
            .map(|p| {
                let mut unknown = UnknownCodes::default();
                p.visits
                    .iter()
                    .filter(|v| v.medications.is_some())
                    .map(|v| vocab.encode_visit(v, &mut unknown).med)
                    .collect()
            })
            .collect();
        out.extend(metrics::copy_previous(&meds, n_med));
        let done = (step + 1) as u64;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let rate = (done as usize * BATCH).min(patients.len()) as f64 / secs;
        ctx.progress(
            Progress::step(epoch, done).of(total).throughput(rate).eta(secs / done as f64 * (total - done) as f64),
        );
    }
    Ok(out)
}

/// Scores predictions against the interaction matrix (micron.md's metrics,
/// without the reference's aliasing quirk).
pub fn score(predictions: &[PatientPrediction], ddi: &DdiMatrix) -> Metrics {
    metrics::evaluate(predictions, ddi, MetricOptions::CLEAN)
}

impl JobKind for TrainCopyPrevious {
    type Params = CopyPreviousParams;

    fn name(&self) -> &'static str {
        "train_copy_previous"
    }
    fn description(&self) -> &'static str {
        "Build the copy-previous baseline from the stored visits and measure it on the validation and test patients"
    }
    fn model_kind(&self) -> Option<ModelKind> {
        Some(ModelKind::CopyPrevious)
    }
    fn validate(&self, p: &CopyPreviousParams) -> Vec<FieldError> {
        let mut errors = vec![];
        if p.seed > u32::MAX as u64 {
            errors.push(FieldError::new("/seed", "must be below 2^32 (splits use numpy's 32-bit seeding)"));
        }
        errors
    }

    fn run(&self, p: CopyPreviousParams, ctx: &JobContext) -> anyhow::Result<Outcome> {
        ctx.progress(Progress::log("loading the stored visits and interaction pairs"));
        let data = ctx.load_training_data()?;
        let pairs = ctx.load_ddi_pairs()?;
        anyhow::ensure!(
            data.patients.len() >= 3,
            "the data snapshot has {} patients; at least 3 are needed",
            data.patients.len()
        );
        let split = data.split(p.seed);
        let vocab = Vocabularies::from_training(&data.patients, &split.train);
        let (ddi, _) = DdiMatrix::from_pairs(&pairs, &vocab.med);
        let pick = |ix: &[usize]| ix.iter().map(|&i| &data.patients[i]).collect::<Vec<_>>();
        let val = score(&predict(ctx, &vocab, &pick(&split.val), 1)?, &ddi);
        ctx.progress(Progress::epoch(1, Some(1), json!({"val": val})));
        let test = score(&predict(ctx, &vocab, &pick(&split.test), 1)?, &ddi);
        let config = json!({
            "model": "copy_previous",
            "seed": p.seed,
            "metric_options": MetricOptions::CLEAN,
            "ddi_pairs": pairs.len(),
            "data_snapshot": data.snapshot,
        });
        let metrics = json!({"val": val, "test": test});
        ctx.write_json("config.json", &config)?;
        ctx.write_json("vocab.json", &vocab)?;
        ctx.write_json("metrics.json", &metrics)?;
        ctx.write_json("split.json", &data.split_file(&split))?;
        Ok(Outcome::Version(NewVersion {
            kind: ModelKind::CopyPrevious,
            config,
            metrics,
            val_score: Some(val.jaccard),
            vocab: vocab_summary(&vocab),
            parent: None,
        }))
    }
}
