//! `train_gru`: the full-history GRU baseline (it re-reads the whole visit
//! history at every prediction), trained on the job's data snapshot like
//! `train_micron`. The artifact is the folder `ml::pipeline` writes
//! (`weights.bpk`, `config.json`, `vocab.json`, `threshold.json`,
//! `metrics.json`, `split.json`).
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::train_micron::{TrainingJob, default_backend, default_seed, run_training, validate_training};
use crate::{
    http::error::FieldError,
    jobs::{JobContext, JobKind, Outcome},
    ml::pipeline::ModelKind as PipelineModel,
    registry::ModelKind,
};

/// Parameters of `train_gru`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"epochs": 20, "backend": "flex", "seed": 1203}))]
pub struct TrainGruParams {
    /// Epochs (1 to 500; default 20). Adam over batches of 16 patients; the
    /// epoch with the best validation Jaccard is kept.
    #[serde(default = "default_epochs")]
    #[schema(minimum = 1, maximum = 500)]
    pub epochs: u32,
    /// Compute backend: `flex` or `ndarray` (CPU); `tch-cpu`, `tch-cuda:N` in builds with LibTorch.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Seed of the split by patient (below 2^32; default 1203).
    #[serde(default = "default_seed")]
    #[schema(maximum = 4294967295_u64)]
    pub seed: u64,
}

fn default_epochs() -> u32 {
    20
}

pub struct TrainGru;

impl JobKind for TrainGru {
    type Params = TrainGruParams;

    fn name(&self) -> &'static str {
        "train_gru"
    }
    fn description(&self) -> &'static str {
        "Train the full-history GRU baseline on the stored visits"
    }
    fn model_kind(&self) -> Option<ModelKind> {
        Some(ModelKind::Gru)
    }
    fn validate(&self, p: &TrainGruParams) -> Vec<FieldError> {
        validate_training(p.epochs, &p.backend, p.seed)
    }

    fn run(&self, p: TrainGruParams, ctx: &JobContext) -> anyhow::Result<Outcome> {
        let params = serde_json::to_value(&p)?;
        run_training(
            ctx,
            TrainingJob {
                model: PipelineModel::Gru,
                epochs: p.epochs,
                recipe: "adam".into(),
                backend: p.backend,
                seed: p.seed,
                params,
            },
        )
    }
}
