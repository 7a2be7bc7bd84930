//! `train_density`: trains an invertible residual density model
//! (`ml::iresnet`) by maximum likelihood on one of two feature spaces:
//!
//! - `micron_health`: MICRON's health representation h of every stored visit
//!   of the job's data snapshot, under a given MICRON version (default: the
//!   version active when the job is created), split by patient with the
//!   job's seed (the same split MICRON uses with that seed);
//! - `vectors`: the rows of an uploaded dataset (`POST /v1/density/datasets`),
//!   split 80 / 10 / 10 by row with the seed.
//!
//! The version's serving scope is the feature space (`micron_health:<id>`,
//! `vectors:<id>`), so density models over different feature spaces can be
//! active side by side. `val_score` is the validation log-likelihood.
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    http::error::{ApiError, FieldError},
    jobs::{Cancelled, JobContext, JobKind, NewVersion, Outcome, Progress},
    ml::{
        backend::BackendChoice,
        data::{SPLIT_SEED, UnknownCodes},
        iresnet::{
            self, DensityMeta, EXACT_MAX_DIM, FeatureSpace, IResNetConfig, InvertOptions, LogDetMethod, NllSummary,
            ScoreDistribution, TrainEvent, TrainSettings,
            data::RowSplit,
            linalg::GaussianFit,
            training::{self, SPECTRAL_SLACK},
        },
    },
    registry::ModelKind,
    store,
};

/// Which inputs a density model is trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSpaceName {
    /// MICRON's health representation of every stored visit.
    MicronHealth,
    /// The rows of an uploaded dataset.
    Vectors,
}

/// Parameters of `train_density`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"feature_space": "micron_health", "blocks": 4, "hidden": 128, "coeff": 0.9, "epochs": 30}))]
pub struct TrainDensityParams {
    pub feature_space: FeatureSpaceName,
    /// `micron_health`: the MICRON version whose h is modelled (default: the
    /// active one when the job is created; stored with the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micron_model_id: Option<Uuid>,
    /// `vectors`: the dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_id: Option<Uuid>,
    /// Residual blocks (1 to 32; default 4).
    #[serde(default = "default_blocks")]
    pub blocks: usize,
    /// Hidden width of each block (8 to 1024; default 128).
    #[serde(default = "default_hidden")]
    pub hidden: usize,
    /// Spectral-norm bound c of every layer (0.1 to 0.99; default 0.9).
    #[serde(default = "default_coeff")]
    pub coeff: f64,
    /// Epochs (1 to 1000; default 30).
    #[serde(default = "default_epochs")]
    pub epochs: u32,
    /// Batch size (8 to 4096; default 256).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Adam's learning rate (default 1e-3).
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// Linear warm-up steps (default 100).
    #[serde(default = "default_warmup")]
    pub warmup_steps: usize,
    /// Global gradient-norm clipping (0 turns it off; default 10).
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
    /// Weight averaging: decay of the parameters' moving average (`null`
    /// turns it off; default 0.999).
    #[serde(default = "default_ema")]
    pub weight_averaging: Option<f64>,
    /// Log-determinant of the training loss: `exact` (explicit Jacobian) or
    /// `estimate` (Russian roulette + Neumann gradient). Default: exact up
    /// to dimension 16, estimate above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_logdet: Option<LogDetMethod>,
    /// The default scoring method. Default: exact up to dimension 128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_logdet: Option<LogDetMethod>,
    /// Inputs scoring below this percentile of the training scores are
    /// flagged out of distribution (0 to 50; default 1).
    #[serde(default = "default_percentile")]
    pub in_distribution_percentile: f64,
    /// Compute backend: `flex` or `ndarray` (CPU); `tch-cpu`, `tch-cuda:N` in builds with LibTorch.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Seed of the split, the initialisation and the batches (below 2^32; default 1203).
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_blocks() -> usize {
    4
}
fn default_hidden() -> usize {
    128
}
fn default_coeff() -> f64 {
    0.9
}
fn default_epochs() -> u32 {
    30
}
fn default_batch() -> usize {
    256
}
fn default_lr() -> f64 {
    1e-3
}
fn default_warmup() -> usize {
    100
}
fn default_clip() -> f64 {
    10.0
}
fn default_ema() -> Option<f64> {
    Some(0.999)
}
fn default_percentile() -> f64 {
    1.0
}
fn default_backend() -> String {
    "flex".into()
}
fn default_seed() -> u64 {
    SPLIT_SEED
}

/// Most training scores kept for percentiles.
const MAX_SCORES: usize = 20_000;
/// Fewest training inputs.
const MIN_TRAIN: usize = 20;

pub struct TrainDensity;

fn invalid(pointer: &str, detail: impl Into<String>) -> ApiError {
    ApiError::Validation(vec![FieldError::new(format!("/params{pointer}"), detail)])
}

/// Inputs of a run, by split part.
struct Features {
    space: FeatureSpace,
    train: Vec<Vec<f64>>,
    val: Vec<Vec<f64>>,
    test: Vec<Vec<f64>>,
    lineage: serde_json::Value,
    split: serde_json::Value,
}

fn micron_features(p: &TrainDensityParams, ctx: &JobContext, id: Uuid) -> anyhow::Result<Features> {
    let model = ctx.load_model(id)?;
    let micron =
        model.micron.clone().ok_or_else(|| anyhow::anyhow!("version {id} is a `{}` model, not MICRON", model.kind))?;
    let data = ctx.load_training_data()?;
    anyhow::ensure!(
        data.patients.len() >= 5,
        "the data snapshot has {} patients; at least 5 are needed",
        data.patients.len()
    );
    let split = data.split(p.seed);
    let vocab = &micron.artifact.vocab;
    let mut unknown = UnknownCodes::default();
    let mut part = |ix: &[usize]| -> Vec<Vec<f64>> {
        ix.iter()
            .flat_map(|&i| data.patients[i].visits.iter())
            .map(|raw| {
                let v = vocab.encode_visit(raw, &mut unknown);
                micron.predictor.weights.health(&v.diag, &v.proc).into_iter().map(|x| x as f64).collect()
            })
            .collect()
    };
    let (train, val, test) = (part(&split.train), part(&split.val), part(&split.test));
    Ok(Features {
        space: FeatureSpace::MicronHealth { micron_model_id: model.id, micron_version: model.version.clone() },
        train,
        val,
        test,
        lineage: json!({"data_snapshot": data.snapshot, "unknown_codes": unknown.total()}),
        split: serde_json::to_value(data.split_file(&split))?,
    })
}

fn vector_features(p: &TrainDensityParams, ctx: &JobContext, id: Uuid) -> anyhow::Result<Features> {
    let row = ctx
        .rt
        .block_on(store::density::get(&ctx.db, id))?
        .ok_or_else(|| anyhow::anyhow!("dataset {id} does not exist"))?;
    let (rows, sha) = ctx
        .rt
        .block_on(store::density::values(&ctx.db, id))?
        .ok_or_else(|| anyhow::anyhow!("dataset {id} does not exist"))?;
    let split = RowSplit::new(rows.len(), p.seed, 0.1, 0.1);
    let pick = |ix: &[usize]| ix.iter().map(|&i| rows[i].clone()).collect::<Vec<_>>();
    Ok(Features {
        space: FeatureSpace::Vectors {
            dataset_id: row.id,
            dataset_name: row.name.clone(),
            columns: row.columns.clone(),
        },
        train: pick(&split.train),
        val: pick(&split.val),
        test: pick(&split.test),
        lineage: json!({"dataset_id": row.id, "dataset_sha256": sha, "rows": row.row_count, "dim": row.dim}),
        split: serde_json::to_value(&split)?,
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

impl JobKind for TrainDensity {
    type Params = TrainDensityParams;

    fn name(&self) -> &'static str {
        "train_density"
    }
    fn description(&self) -> &'static str {
        "Train an invertible residual density model on MICRON health representations or an uploaded dataset"
    }
    fn model_kind(&self) -> Option<ModelKind> {
        Some(ModelKind::Density)
    }

    fn validate(&self, p: &TrainDensityParams) -> Vec<FieldError> {
        let mut e = vec![];
        let mut bad = |ptr: &str, msg: &str| e.push(FieldError::new(ptr, msg));
        match p.feature_space {
            FeatureSpaceName::Vectors => {
                if p.dataset_id.is_none() {
                    bad("/dataset_id", "required for the `vectors` feature space");
                }
                if p.micron_model_id.is_some() {
                    bad("/micron_model_id", "only for the `micron_health` feature space");
                }
            }
            FeatureSpaceName::MicronHealth => {
                if p.dataset_id.is_some() {
                    bad("/dataset_id", "only for the `vectors` feature space");
                }
            }
        }
        if !(1..=32).contains(&p.blocks) {
            bad("/blocks", "must be from 1 to 32");
        }
        if !(8..=1024).contains(&p.hidden) {
            bad("/hidden", "must be from 8 to 1024");
        }
        if !(0.1..=0.99).contains(&p.coeff) {
            bad("/coeff", "must be from 0.1 to 0.99 (below 1 keeps every block invertible)");
        }
        if !(1..=1000).contains(&p.epochs) {
            bad("/epochs", "must be from 1 to 1000");
        }
        if !(8..=4096).contains(&p.batch_size) {
            bad("/batch_size", "must be from 8 to 4096");
        }
        if !(p.learning_rate > 0.0 && p.learning_rate <= 1.0) {
            bad("/learning_rate", "must be above 0 and at most 1");
        }
        if p.warmup_steps > 1_000_000 {
            bad("/warmup_steps", "must be at most 1000000");
        }
        if !(p.grad_clip >= 0.0 && p.grad_clip.is_finite()) {
            bad("/grad_clip", "must be a non-negative number (0 turns clipping off)");
        }
        if let Some(d) = p.weight_averaging
            && !(0.0..1.0).contains(&d)
        {
            bad("/weight_averaging", "must be from 0 to below 1, or null");
        }
        if !(0.0..=50.0).contains(&p.in_distribution_percentile) {
            bad("/in_distribution_percentile", "must be from 0 to 50");
        }
        if p.seed > u32::MAX as u64 {
            bad("/seed", "must be below 2^32");
        }
        if let Err(err) = p.backend.parse::<BackendChoice>() {
            e.push(FieldError::new("/backend", err.to_string()));
        }
        e
    }

    async fn check(&self, p: &TrainDensityParams, db: &sqlx::PgPool) -> Result<(), ApiError> {
        if let Some(id) = p.dataset_id {
            let Some(d) = store::density::get(db, id).await? else {
                return Err(invalid("/dataset_id", "no such dataset"));
            };
            if (d.row_count as usize) < MIN_TRAIN + 2 {
                return Err(invalid(
                    "/dataset_id",
                    format!("the dataset has {} rows; at least {} are needed", d.row_count, MIN_TRAIN + 2),
                ));
            }
        }
        if let Some(id) = p.micron_model_id {
            match store::models::get(db, id).await? {
                None => return Err(invalid("/micron_model_id", "no such model version")),
                Some(m) if m.kind != ModelKind::Micron.as_str() => {
                    return Err(invalid(
                        "/micron_model_id",
                        format!("version {id} is a `{}` model, not MICRON", m.kind),
                    ));
                }
                Some(m) if m.status == "failed" => return Err(invalid("/micron_model_id", "this version failed")),
                Some(_) => {}
            }
        }
        Ok(())
    }

    async fn resolve(&self, mut p: TrainDensityParams, db: &sqlx::PgPool) -> Result<TrainDensityParams, ApiError> {
        if p.feature_space == FeatureSpaceName::MicronHealth && p.micron_model_id.is_none() {
            let active = store::models::active(db, ModelKind::Micron.as_str()).await?.ok_or_else(|| {
                invalid("/micron_model_id", "no MICRON version is active: activate one or name it here")
            })?;
            p.micron_model_id = Some(active.id);
        }
        Ok(p)
    }

    fn run(&self, p: TrainDensityParams, ctx: &JobContext) -> anyhow::Result<Outcome> {
        ctx.progress(Progress::log("loading the training inputs"));
        let f = match p.feature_space {
            FeatureSpaceName::MicronHealth => {
                let id = p.micron_model_id.ok_or_else(|| anyhow::anyhow!("micron_model_id was not resolved"))?;
                micron_features(&p, ctx, id)?
            }
            FeatureSpaceName::Vectors => {
                let id = p.dataset_id.ok_or_else(|| anyhow::anyhow!("dataset_id is missing"))?;
                vector_features(&p, ctx, id)?
            }
        };
        anyhow::ensure!(
            f.train.len() >= MIN_TRAIN,
            "{} training inputs; at least {MIN_TRAIN} are needed",
            f.train.len()
        );
        let d = f.train[0].len();
        let train_logdet = p.train_logdet.unwrap_or(if d <= 16 { LogDetMethod::Exact } else { LogDetMethod::Estimate });
        let score_logdet =
            p.score_logdet.unwrap_or(if d <= EXACT_MAX_DIM { LogDetMethod::Exact } else { LogDetMethod::Estimate });
        let config = IResNetConfig::new(d).with_blocks(p.blocks).with_hidden(p.hidden).with_coeff(p.coeff);
        let settings = TrainSettings {
            epochs: p.epochs as usize,
            batch_size: p.batch_size,
            learning_rate: p.learning_rate,
            warmup_steps: p.warmup_steps,
            grad_clip: p.grad_clip,
            ema_decay: p.weight_averaging,
            logdet: train_logdet,
            val_logdet: score_logdet,
            val_max: 2000,
            seed: p.seed,
        };
        ctx.progress(Progress::log(format!(
            "{}: {} training, {} validation, {} test inputs of dimension {d}; {} parameters; log-det {} in training, {} in scoring",
            f.space.name(),
            f.train.len(),
            f.val.len(),
            f.test.len(),
            config.num_params(),
            train_logdet.as_str(),
            score_logdet.as_str()
        )));
        let device = p.backend.parse::<BackendChoice>().map_err(|e| anyhow::anyhow!("{e}"))?.device();
        let epochs = p.epochs;
        let started = std::time::Instant::now();
        let total_steps = (epochs as usize * f.train.len().div_ceil(p.batch_size)) as f64;
        let mut done = 0f64;
        let mut on_event = |e: &TrainEvent| match e {
            TrainEvent::Step { epoch, step, steps, nll, samples_per_sec } => {
                done += 1.0;
                let secs = started.elapsed().as_secs_f64();
                ctx.progress(
                    Progress::step(*epoch as u32 + 1, *step as u64 + 1)
                        .of(*steps as u64)
                        .loss(*nll)
                        .throughput(*samples_per_sec)
                        .eta(secs / done * (total_steps - done)),
                );
            }
            TrainEvent::Epoch { report, best_epoch } => ctx.progress(
                Progress::epoch(
                    report.epoch as u32 + 1,
                    Some(epochs),
                    json!({
                        "train_nll": report.train_nll,
                        "train_bpd": report.train_bpd,
                        "val_nll": report.val_nll,
                        "val_bpd": report.val_bpd,
                        "best_epoch": best_epoch + 1,
                        "seconds": report.seconds,
                    }),
                )
                .loss(report.train_nll),
            ),
        };
        let cancel = || ctx.is_cancelled();
        let out = iresnet::train(&config, &settings, &f.train, &f.val, &device, &mut on_event, &cancel)?;
        if out.cancelled {
            return Err(Cancelled.into());
        }
        ctx.checkpoint()?;
        ctx.progress(Progress::log("scoring the training, validation and test inputs"));

        let score_rows =
            |rows: &[Vec<f64>], seed: u64| training::log_probs(&out.model, &out.flow, rows, score_logdet, seed);
        let train_sample: Vec<Vec<f64>> = if f.train.len() > MAX_SCORES {
            let step = f.train.len() as f64 / MAX_SCORES as f64;
            (0..MAX_SCORES).map(|i| f.train[(i as f64 * step) as usize].clone()).collect()
        } else {
            f.train.clone()
        };
        let train_scores = score_rows(&train_sample, p.seed + 1);
        ctx.checkpoint()?;
        let val_scores = score_rows(&f.val, p.seed + 2);
        let test_scores = score_rows(&f.test, p.seed + 3);
        let (train_s, val_s, test_s) =
            (NllSummary::of(&train_scores, d), NllSummary::of(&val_scores, d), NllSummary::of(&test_scores, d));
        let gaussian = GaussianFit::fit(&f.train).map(|g| {
            let v: Vec<f64> = f.test.iter().map(|x| g.log_pdf(x)).collect();
            NllSummary::of(&v, d)
        });
        // Inversion of test inputs through the served (f64) flow.
        let probe: Vec<&Vec<f64>> = f.test.iter().take(100).collect();
        let (mut max_err, mut iters, mut all_converged) = (0.0f64, 0usize, true);
        for x in &probe {
            let inv = out.flow.inverse(&out.flow.forward(x), InvertOptions::default());
            all_converged &= inv.converged;
            iters += inv.iterations;
            max_err = max_err.max(x.iter().zip(&inv.x).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max));
        }
        let sigma_max = out.spectral_norms.iter().map(|s| s.1).fold(0.0, f64::max);

        let scores = ScoreDistribution::new(train_scores);
        let meta = DensityMeta {
            feature_space: f.space.clone(),
            dim: d,
            score_logdet,
            in_distribution_percentile: p.in_distribution_percentile,
        };
        iresnet::save(ctx.artifact_dir(), &config, &out.model, &meta, &scores)?;
        ctx.write_json("split.json", &f.split)?;
        let metrics = json!({
            "train": train_s,
            "val": val_s,
            "test": test_s,
            "gaussian_baseline_test": gaussian,
            "val_log_likelihood": -val_s.nll,
            "score_logdet": score_logdet,
            "train_logdet": train_logdet,
            "best_epoch": out.best_epoch.map(|e| e + 1),
            "history": out.history,
            "spectral_norm": {"max": sigma_max, "coeff": p.coeff, "slack": SPECTRAL_SLACK,
                "layers": out.spectral_norms.iter().map(|(n, s)| json!({"layer": n, "sigma": s})).collect::<Vec<_>>()},
            "inversion": {"inputs": probe.len(), "max_abs_error": max_err,
                "mean_iterations": iters as f64 / probe.len().max(1) as f64, "all_converged": all_converged},
            "training_seconds": out.seconds,
            "in_distribution_cut": scores.quantile(p.in_distribution_percentile),
            "mean_train_log_likelihood": mean(&scores.sorted),
        });
        ctx.write_json("metrics.json", &metrics)?;
        let scope = f.space.scope();
        let config_json = json!({
            "model": "density",
            "serving_scope": scope,
            "feature_space": f.space,
            "architecture": config,
            "params": p,
            "lineage": f.lineage,
        });
        Ok(Outcome::Version(NewVersion {
            kind: ModelKind::Density,
            config: config_json,
            metrics,
            val_score: Some(-val_s.nll).filter(|v| v.is_finite()),
            vocab: json!({}),
            parent: None,
        }))
    }
}
