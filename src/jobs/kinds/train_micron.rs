//! `train_micron`: trains MICRON (micron.md) on the stored visits of the
//! job's data snapshot and the stored interaction pairs; the artifact is the
//! folder `ml::pipeline` writes (weights.safetensors in the reference's
//! layout, config.json, vocab.json, metrics.json, split.json).
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::{
    http::error::FieldError,
    jobs::{JobContext, JobKind, NewVersion, Outcome, Progress},
    ml::{
        data::SPLIT_SEED,
        micron::TrainEvent,
        pipeline::{self, ModelKind as PipelineModel, TrainRequest},
    },
    registry::{ModelKind, vocab_summary},
};

/// Parameters of `train_micron`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"epochs": 40, "recipe": "faithful", "backend": "flex", "seed": 1203}))]
pub struct TrainMicronParams {
    /// Epochs (1 to 500; default 40, the reference's).
    #[serde(default = "default_epochs")]
    #[schema(minimum = 1, maximum = 500)]
    pub epochs: u32,
    /// `faithful` (one RMSprop step per patient, the reference) or `minibatch`.
    #[serde(default = "default_recipe")]
    pub recipe: String,
    /// Compute backend: `flex` or `ndarray` (CPU); `tch-cpu`, `tch-cuda:N` in builds with LibTorch.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Seed of the split by patient (below 2^32; default 1203).
    #[serde(default = "default_seed")]
    #[schema(maximum = 4294967295_u64)]
    pub seed: u64,
}

fn default_epochs() -> u32 {
    40
}
fn default_recipe() -> String {
    "faithful".into()
}
pub(crate) fn default_backend() -> String {
    "flex".into()
}
pub(crate) fn default_seed() -> u64 {
    SPLIT_SEED
}

pub struct TrainMicron;

impl JobKind for TrainMicron {
    type Params = TrainMicronParams;

    fn name(&self) -> &'static str {
        "train_micron"
    }
    fn description(&self) -> &'static str {
        "Train MICRON (recurrent residual medication-change model) on the stored visits"
    }
    fn model_kind(&self) -> Option<ModelKind> {
        Some(ModelKind::Micron)
    }
    fn validate(&self, p: &TrainMicronParams) -> Vec<FieldError> {
        let mut errors = validate_training(p.epochs, &p.backend, p.seed);
        if !matches!(p.recipe.as_str(), "faithful" | "minibatch") {
            errors.push(FieldError::new("/recipe", "must be `faithful` or `minibatch`"));
        }
        errors
    }

    fn run(&self, p: TrainMicronParams, ctx: &JobContext) -> anyhow::Result<Outcome> {
        let params = serde_json::to_value(&p)?;
        run_training(
            ctx,
            TrainingJob { model: PipelineModel::Micron, epochs: p.epochs, recipe: p.recipe, backend: p.backend, seed: p.seed, params },
        )
    }
}

/// Checks the parameters MICRON and GRU training share: epochs 1 to 500, a
/// backend of this build, a split seed below 2^32.
pub(crate) fn validate_training(epochs: u32, backend: &str, seed: u64) -> Vec<FieldError> {
    let mut errors = vec![];
    if !(1..=500).contains(&epochs) {
        errors.push(FieldError::new("/epochs", "must be from 1 to 500"));
    }
    if let Err(e) = backend.parse::<crate::ml::backend::BackendChoice>() {
        errors.push(FieldError::new("/backend", e.to_string()));
    }
    if seed > u32::MAX as u64 {
        errors.push(FieldError::new("/seed", "must be below 2^32 (splits use numpy's 32-bit seeding)"));
    }
    errors
}

/// What a training job asks of [`run_training`].
pub(crate) struct TrainingJob {
    pub model: PipelineModel,
    pub epochs: u32,
    pub recipe: String,
    pub backend: String,
    pub seed: u64,
    /// The job's parameters, recorded in `config.json` of the version.
    pub params: serde_json::Value,
}

/// Trains MICRON or the GRU baseline on the job's data snapshot: split by
/// patient with the job's seed, step and epoch events, cancellation at the
/// next step, artifacts into the staging folder; the version's validation
/// score is the validation Jaccard.
pub(crate) fn run_training(ctx: &JobContext, job: TrainingJob) -> anyhow::Result<Outcome> {
    let (model_name, kind) = match job.model {
        PipelineModel::Micron => ("micron", ModelKind::Micron),
        PipelineModel::Gru => ("gru", ModelKind::Gru),
    };
    ctx.progress(Progress::log("loading the stored visits and interaction pairs"));
    let data = ctx.load_training_data()?;
    anyhow::ensure!(data.patients.len() >= 5, "the data snapshot has {} patients; at least 5 are needed", data.patients.len());
    let pairs = ctx.load_ddi_pairs()?;
    let split = data.split(job.seed);
    let prep = pipeline::Prepared::new(&data.patients, &pairs, Some(split.clone()), None)?;
    let req = TrainRequest {
        model: job.model,
        epochs: job.epochs as usize,
        recipe: job.recipe.clone(),
        backend: job.backend.clone(),
        out: ctx.artifact_dir().to_path_buf(),
    };
    let epochs = job.epochs;
    let started = std::time::Instant::now();
    let mut on_event = |e: &TrainEvent| match e {
        TrainEvent::Step { epoch, step, steps, loss } => {
            // The context keeps one step event per interval.
            let done = (*epoch * *steps + step + 1) as f64;
            let total = (epochs as usize * *steps) as f64;
            let secs = started.elapsed().as_secs_f64();
            ctx.progress(
                Progress::step(*epoch as u32 + 1, *step as u64 + 1)
                    .of(*steps as u64)
                    .loss(*loss)
                    .throughput(done / secs.max(1e-9))
                    .eta(secs / done * (total - done)),
            );
        }
        TrainEvent::Epoch { report, best_epoch } => ctx.progress(Progress::epoch(
            report.epoch as u32 + 1,
            Some(epochs),
            json!({"train_loss": report.train_loss, "val_jaccard": report.val_jaccard, "best_epoch": best_epoch.map(|b| b + 1)}),
        )),
    };
    let cancel = || ctx.is_cancelled();
    let Some(trained) = pipeline::train_and_save(&req, &prep, &mut on_event, &cancel)? else {
        anyhow::bail!("training was cancelled");
    };
    let row_name = match job.model {
        PipelineModel::Micron => pipeline::MICRON_ROW,
        PipelineModel::Gru => pipeline::GRU_ROW,
    };
    // rows are (name, metrics without the quirk, with it)
    let val_jaccard = trained.val.rows.iter().find(|(name, _, _)| name == row_name).map(|(_, m, _)| m.jaccard);
    ctx.write_json("split.json", &data.split_file(&split))?;
    let config = json!({
        "model": model_name,
        "params": job.params,
        "data_snapshot": data.snapshot,
        "ddi_pairs": pairs.len(),
        "unknown_codes": prep.unknown.total(),
    });
    let metrics = json!({
        "val": trained.val,
        "test": trained.test,
        "history": trained.summary.history,
        "best_epoch": trained.summary.best_epoch,
    });
    Ok(Outcome::Version(NewVersion {
        kind,
        config,
        metrics,
        val_score: val_jaccard,
        vocab: vocab_summary(&prep.data.vocab),
        parent: None,
    }))
}
