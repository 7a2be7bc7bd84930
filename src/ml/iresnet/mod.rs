//! Invertible residual networks as density models (iresnet.md): i-ResNet
//! with the Residual Flows improvements (LipSwish, the unbiased
//! Russian-roulette log-determinant, the Neumann gradient), over fixed
//! length vectors: MICRON's health representation of a visit, or numeric
//! vectors from an uploaded dataset.
//!
//! - [`model`]: the burn module and its training forward pass;
//! - [`training`]: maximum-likelihood training with progress callbacks;
//! - [`inference`]: plain-Rust (f64) scoring, exact and estimated
//!   log-determinants, inversion and sampling: what the service runs;
//! - [`linalg`]: LU, singular values, power iteration, a Gaussian fit;
//! - [`data`]: dataset validation, splits, a Gaussian mixture with a known
//!   density, AUROC.
//!
//! Artifact directory (`models/density/<version>/`):
//! - `weights.safetensors`: the module's parameters under burn's names,
//!   including each normalised layer's power-iteration vectors `u`, `v`;
//! - `config.json`: [`IResNetConfig`];
//! - `density.json`: [`DensityMeta`] (feature space, scoring defaults);
//! - `scores.json`: the training inputs' log-likelihoods, sorted
//!   (percentiles and the histogram);
//! - `metrics.json`, `split.json`.
pub mod bench;
pub mod data;
pub mod inference;
pub mod linalg;
pub mod model;
pub mod training;

use std::path::Path;

use burn::config::Config;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use inference::{Estimate, Flow, Inversion, InvertOptions, Roulette, ScoreDistribution, bits_per_dim};
pub use model::{IResNet, IResNetConfig, LogDetMode};
pub use training::{EpochReport, LogDetMethod, NllSummary, TrainError, TrainEvent, TrainOutcome, TrainSettings, train};

use crate::ml::backend::BackendChoice;
use crate::ml::micron::{ArtifactError, io_err, read_json, write_json};

pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const META_FILE: &str = "density.json";
pub const SCORES_FILE: &str = "scores.json";

/// Dimensions up to this are scored with the exact log-determinant by
/// default; above it with the estimate.
pub const EXACT_MAX_DIM: usize = 128;

/// What a density model's inputs are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeatureSpace {
    /// MICRON's health representation h of a visit under one MICRON version.
    MicronHealth { micron_model_id: Uuid, micron_version: String },
    /// Rows of an uploaded dataset.
    Vectors {
        dataset_id: Uuid,
        dataset_name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        columns: Option<Vec<String>>,
    },
}

impl FeatureSpace {
    /// The registry scope: density versions of different scopes are active
    /// side by side (one per MICRON version, one per dataset).
    pub fn scope(&self) -> String {
        match self {
            FeatureSpace::MicronHealth { micron_model_id, .. } => micron_health_scope(*micron_model_id),
            FeatureSpace::Vectors { dataset_id, .. } => format!("vectors:{dataset_id}"),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            FeatureSpace::MicronHealth { .. } => "micron_health",
            FeatureSpace::Vectors { .. } => "vectors",
        }
    }
}

/// The scope of density models over a MICRON version's health representation.
pub fn micron_health_scope(micron_model_id: Uuid) -> String {
    format!("micron_health:{micron_model_id}")
}

/// What `density.json` records beside the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DensityMeta {
    pub feature_space: FeatureSpace,
    pub dim: usize,
    /// The default scoring method.
    pub score_logdet: LogDetMethod,
    /// Inputs whose percentile among the training scores is below this are
    /// flagged out of distribution.
    pub in_distribution_percentile: f64,
}

/// Writes weights, config, meta and the training scores into `dir`.
pub fn save(
    dir: &Path,
    config: &IResNetConfig,
    model: &IResNet,
    meta: &DensityMeta,
    scores: &ScoreDistribution,
) -> Result<(), ArtifactError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    model.save_safetensors(&dir.join(WEIGHTS_FILE)).map_err(ArtifactError::Weights)?;
    let cfg = dir.join(CONFIG_FILE);
    config.save(&cfg).map_err(io_err(&cfg))?;
    write_json(&dir.join(META_FILE), meta)?;
    write_json(&dir.join(SCORES_FILE), &scores.sorted)
}

/// A density version ready to serve: its plain-Rust flow, the training
/// score distribution and what it models.
#[derive(Clone, Debug)]
pub struct LoadedDensity {
    pub config: IResNetConfig,
    pub meta: DensityMeta,
    pub scores: ScoreDistribution,
    pub flow: Flow,
}

/// How to score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreOptions {
    pub method: LogDetMethod,
    /// Independent estimates averaged per input (estimate only).
    pub samples: usize,
    pub seed: u64,
}

/// The score of one input.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// log p(x), nats.
    pub log_likelihood: f64,
    pub bits_per_dim: f64,
    /// Percentile among the training inputs' log-likelihoods (0 to 100).
    pub percentile: f64,
    pub in_distribution: bool,
    pub method: LogDetMethod,
    /// Standard error of `log_likelihood` (estimates only).
    pub std_error: Option<f64>,
}

impl LoadedDensity {
    /// Reads and checks an artifact written by [`save`].
    pub fn load(dir: &Path) -> Result<Self, ArtifactError> {
        let cfg_path = dir.join(CONFIG_FILE);
        let config = IResNetConfig::load(&cfg_path)
            .map_err(|e| ArtifactError::Json { path: cfg_path.display().to_string(), msg: e.to_string() })?;
        let meta: DensityMeta = read_json(&dir.join(META_FILE))?;
        let scores = ScoreDistribution::new(read_json(&dir.join(SCORES_FILE))?);
        if meta.dim != config.dim {
            return Err(ArtifactError::Mismatch(format!(
                "density.json says dimension {}, config.json {}",
                meta.dim, config.dim
            )));
        }
        let device = BackendChoice::Flex.device();
        let model = config
            .init_raw(0, &device)
            .load_safetensors(&dir.join(WEIGHTS_FILE))
            .map_err(ArtifactError::Weights)?;
        let flow = model.to_flow();
        Ok(Self { config, meta, scores, flow })
    }

    pub fn dim(&self) -> usize {
        self.flow.dim
    }

    /// Scores `x` (already checked: `dim` finite values).
    pub fn score(&self, x: &[f64], opts: ScoreOptions) -> Score {
        let (log_likelihood, std_error) = match opts.method {
            LogDetMethod::Exact => (self.flow.log_prob_exact(x), None),
            LogDetMethod::Estimate => {
                let mut rng = StdRng::seed_from_u64(opts.seed);
                let (z, e) = self.flow.forward_estimate(x, Roulette::EVAL, opts.samples, &mut rng);
                (Flow::base_log_prob(&z) + e.mean, Some(e.std_error))
            }
        };
        let percentile = self.scores.percentile(log_likelihood);
        Score {
            log_likelihood,
            bits_per_dim: bits_per_dim(log_likelihood, self.dim()),
            percentile,
            in_distribution: percentile >= self.meta.in_distribution_percentile,
            method: opts.method,
            std_error,
        }
    }

    /// The default scoring options of this model.
    pub fn default_options(&self) -> ScoreOptions {
        ScoreOptions { method: self.meta.score_logdet, samples: 8, seed: 1203 }
    }
}
