//! Maximum-likelihood training (iresnet.md): Adam with linear warm-up,
//! global gradient-norm clipping, optional weight averaging (an exponential
//! moving average of the parameters), power iteration to a tolerance after
//! every step, the best epoch by validation log-likelihood, then a long
//! power iteration and the spectral-norm check of every normalised weight.
//! Plain synchronous code: callers on an async runtime use `spawn_blocking`.
use std::time::Instant;

use burn::module::ParamId;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::inference::{Flow, Roulette, bits_per_dim};
use super::linalg;
use super::model::{IResNet, IResNetConfig, LogDetMode, POWER_MAX_STEP, POWER_TOL_STEP, tensor2, to_f64};

/// How log-determinants are obtained: exact (explicit Jacobian) or the
/// unbiased Russian-roulette estimate (Neumann gradient when training).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogDetMethod {
    #[default]
    Exact,
    Estimate,
}

impl LogDetMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LogDetMethod::Exact => "exact",
            LogDetMethod::Estimate => "estimate",
        }
    }
}

/// Training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Linear learning-rate warm-up over this many steps.
    pub warmup_steps: usize,
    /// Global gradient-norm clipping threshold (0: off).
    pub grad_clip: f64,
    /// Exponential moving average of the weights with this decay (`None`: off).
    pub ema_decay: Option<f64>,
    /// The log-determinant of the training loss.
    pub logdet: LogDetMethod,
    /// The log-determinant of the per-epoch validation.
    pub val_logdet: LogDetMethod,
    /// Validation inputs scored per epoch (a fixed subset; the final
    /// metrics use every input).
    pub val_max: usize,
    pub seed: u64,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            epochs: 50,
            batch_size: 256,
            learning_rate: 1e-3,
            warmup_steps: 100,
            grad_clip: 10.0,
            ema_decay: Some(0.999),
            logdet: LogDetMethod::Exact,
            val_logdet: LogDetMethod::Exact,
            val_max: 2000,
            seed: 1203,
        }
    }
}

/// One epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 0-based.
    pub epoch: usize,
    /// Mean training negative log-likelihood over the epoch's batches, nats
    /// (with the training log-determinant: exact or estimated).
    pub train_nll: f64,
    pub train_bpd: f64,
    /// Validation negative log-likelihood, nats.
    pub val_nll: f64,
    pub val_bpd: f64,
    pub seconds: f64,
    /// Most power iterations one layer needed after a step, this epoch.
    pub power_iterations_max: usize,
}

/// Progress callbacks.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainEvent {
    Step { epoch: usize, step: usize, steps: usize, nll: f64, samples_per_sec: f64 },
    Epoch { report: EpochReport, best_epoch: usize },
}

/// Why training could not run or its result was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error("need at least {need} training inputs, got {got}")]
    TooFewInputs { need: usize, got: usize },
    #[error("input {index} has {got} values, expected {want}")]
    Dimension { index: usize, got: usize, want: usize },
    #[error("input {index} has a non-finite value")]
    NotFinite { index: usize },
    #[error("the training loss became non-finite at epoch {epoch}, step {step}")]
    Diverged { epoch: usize, step: usize },
    #[error(
        "spectral normalisation failed: {layer} has largest singular value {sigma:.9}, above c = {coeff} \
         (the power iteration under-estimated it)"
    )]
    SpectralNorm { layer: String, sigma: f64, coeff: f64 },
}

/// Relative slack of the spectral-norm check: u and v are stored as float32,
/// so `v^T W u` can under-estimate the largest singular value by rounding.
pub const SPECTRAL_SLACK: f64 = 1e-6;

/// A trained model.
pub struct TrainOutcome {
    /// The best epoch's weights (averaged when weight averaging is on), after
    /// the long power iteration, on a plain (non-autodiff) device.
    pub model: IResNet,
    pub flow: Flow,
    pub history: Vec<EpochReport>,
    pub best_epoch: Option<usize>,
    pub cancelled: bool,
    /// Largest singular value of every normalised weight (all <= c).
    pub spectral_norms: Vec<(String, f64)>,
    pub seconds: f64,
}

fn check_inputs(rows: &[Vec<f64>], dim: usize) -> Result<(), TrainError> {
    for (index, r) in rows.iter().enumerate() {
        if r.len() != dim {
            return Err(TrainError::Dimension { index, got: r.len(), want: dim });
        }
        if r.iter().any(|x| !x.is_finite()) {
            return Err(TrainError::NotFinite { index });
        }
    }
    Ok(())
}

fn batch_tensor(rows: &[&Vec<f64>], dim: usize, device: &Device) -> Tensor<2> {
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().map(|&x| x as f32)).collect();
    tensor2(flat, rows.len(), dim, device)
}

/// Scales the gradients so that their global L2 norm is at most `max_norm`;
/// returns the norm before clipping.
fn clip_global_norm(grads: &mut GradientsParams, ids: &[(ParamId, usize)], max_norm: f64) -> f64 {
    let mut sq = 0.0;
    for &(id, rank) in ids {
        sq += match rank {
            1 => grads.get::<1>(id).map(|g| g.square().sum().into_scalar::<f32>() as f64).unwrap_or(0.0),
            _ => grads.get::<2>(id).map(|g| g.square().sum().into_scalar::<f32>() as f64).unwrap_or(0.0),
        };
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let f = max_norm / (norm + 1e-12);
        for &(id, rank) in ids {
            match rank {
                1 => {
                    if let Some(g) = grads.remove::<1>(id) {
                        grads.register(id, g.mul_scalar(f));
                    }
                }
                _ => {
                    if let Some(g) = grads.remove::<2>(id) {
                        grads.register(id, g.mul_scalar(f));
                    }
                }
            }
        }
    }
    norm
}

/// The post-training check: the largest singular value of every normalised
/// weight (Jacobi eigenvalues of its Gram matrix, f64) must be at most c
/// (up to [`SPECTRAL_SLACK`]). An under-estimated sigma, from too short a
/// power iteration, fails here instead of silently breaking invertibility.
pub fn verify_spectral_norms(model: &IResNet) -> Result<Vec<(String, f64)>, TrainError> {
    let norms = model.spectral_norms();
    for (layer, sigma) in &norms {
        if *sigma > model.coeff * (1.0 + SPECTRAL_SLACK) {
            return Err(TrainError::SpectralNorm { layer: layer.clone(), sigma: *sigma, coeff: model.coeff });
        }
    }
    Ok(norms)
}

/// Exact log-likelihoods of many inputs with the module on its device:
/// per-sample Jacobians built in batches with tensor ops, LU on the host.
/// (The service scores single inputs with [`Flow`]; this is for training
/// and evaluation over whole datasets.)
pub fn log_prob_exact_batched(model: &IResNet, rows: &[Vec<f64>], batch: usize) -> Vec<f64> {
    let device = model.device();
    let d = model.dim();
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch.max(1)) {
        let refs: Vec<&Vec<f64>> = chunk.iter().collect();
        let mut h = model.whiten.forward(batch_tensor(&refs, d, &device));
        let mut ld = vec![0.0f64; chunk.len()];
        let mut an = model.whiten.log_det();
        for (a, b) in model.actnorms.iter().zip(&model.blocks) {
            h = a.forward(h);
            an += a.log_det().into_scalar::<f32>() as f64;
            let pass = b.pass(h.clone(), model.coeff);
            let jac = to_f64(pass.jacobian_plus_identity());
            for (i, m) in jac.chunks(d * d).enumerate() {
                ld[i] += linalg::log_abs_det(m, d).0;
            }
            h = h + pass.g;
        }
        let z = to_f64(h);
        for (i, zr) in z.chunks(d).enumerate() {
            out.push(Flow::base_log_prob(zr) + an + ld[i]);
        }
    }
    out
}

/// Log-likelihoods with the chosen method: exact in batches, or the
/// Russian-roulette estimate (evaluation setting, one sample each).
pub fn log_probs(model: &IResNet, flow: &Flow, rows: &[Vec<f64>], method: LogDetMethod, seed: u64) -> Vec<f64> {
    match method {
        LogDetMethod::Exact => log_prob_exact_batched(model, rows, 256),
        LogDetMethod::Estimate => {
            let mut rng = StdRng::seed_from_u64(seed);
            rows.iter()
                .map(|x| {
                    let (z, e) = flow.forward_estimate(x, Roulette::EVAL, 2, &mut rng);
                    Flow::base_log_prob(&z) + e.mean
                })
                .collect()
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
}

/// Trains a density model on `train`, selecting the epoch by `val`.
/// `device` may be plain or autodiff. `cancel` is polled before every step.
pub fn train(
    config: &IResNetConfig,
    settings: &TrainSettings,
    train: &[Vec<f64>],
    val: &[Vec<f64>],
    device: &Device,
    on_event: &mut dyn FnMut(&TrainEvent),
    cancel: &dyn Fn() -> bool,
) -> Result<TrainOutcome, TrainError> {
    let started = Instant::now();
    let d = config.dim;
    let need = 8;
    if train.len() < need {
        return Err(TrainError::TooFewInputs { need, got: train.len() });
    }
    check_inputs(train, d)?;
    check_inputs(val, d)?;
    let ad = device.clone().autodiff();
    ad.seed(settings.seed);
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let mut model = config.init(settings.seed, &ad);
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut rng);
    if config.whiten {
        let rows: Vec<Vec<f64>> = order.iter().take(20_000).map(|&i| train[i].clone()).collect();
        model.whiten.fit(&rows);
    }
    let init_rows: Vec<Vec<f64>> = order.iter().take(settings.batch_size.max(512)).map(|&i| train[i].clone()).collect();
    model.data_init(&init_rows, config.actnorm_var_floor);

    let val_rows: Vec<Vec<f64>> = if val.len() > settings.val_max {
        let mut ix: Vec<usize> = (0..val.len()).collect();
        ix.shuffle(&mut StdRng::seed_from_u64(settings.seed ^ 0x5eed));
        ix.truncate(settings.val_max);
        ix.sort_unstable();
        ix.into_iter().map(|i| val[i].clone()).collect()
    } else {
        val.to_vec()
    };

    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let ids = model.trainable_ids();
    let mode = match settings.logdet {
        LogDetMethod::Exact => LogDetMode::Exact,
        LogDetMethod::Estimate => LogDetMode::Estimate(Roulette::TRAIN),
    };
    let batch = settings.batch_size.max(1);
    let steps = train.len().div_ceil(batch);
    let mut ema: Option<Vec<Vec<f32>>> = settings.ema_decay.map(|_| model.trainable_values());
    let mut history = vec![];
    let mut best: Option<(usize, f64, Vec<Vec<f32>>)> = None;
    let mut cancelled = false;
    let mut global_step = 0usize;

    'epochs: for epoch in 0..settings.epochs {
        let tic = Instant::now();
        order.shuffle(&mut rng);
        let mut nll_sum = 0.0;
        let mut nll_n = 0usize;
        let mut power_max = 0;
        for (step, chunk) in order.chunks(batch).enumerate() {
            if cancel() {
                cancelled = true;
                break 'epochs;
            }
            let ts = Instant::now();
            let rows: Vec<&Vec<f64>> = chunk.iter().map(|&i| &train[i]).collect();
            let x = batch_tensor(&rows, d, &ad);
            let out = model.loss(x, mode, &mut rng);
            let nll = -mean(&out.log_prob);
            let sur = out.surrogate.clone().into_scalar::<f32>() as f64;
            if !nll.is_finite() || !sur.is_finite() {
                return Err(TrainError::Diverged { epoch, step });
            }
            let mut grads = GradientsParams::from_grads(out.surrogate.backward(), &model);
            clip_global_norm(&mut grads, &ids, settings.grad_clip);
            let warm = if settings.warmup_steps == 0 {
                1.0
            } else {
                ((global_step + 1) as f64 / settings.warmup_steps as f64).min(1.0)
            };
            model = optim.step(settings.learning_rate * warm, model, grads);
            power_max = power_max.max(model.power_iterate_all(POWER_TOL_STEP, 1, POWER_MAX_STEP));
            if let (Some(avg), Some(decay)) = (ema.as_mut(), settings.ema_decay) {
                // Bias-corrected early on: the average starts at the initial weights.
                let decay = decay.min((1.0 + global_step as f64) / (10.0 + global_step as f64));
                for (a, c) in avg.iter_mut().zip(model.trainable_values()) {
                    for (x, y) in a.iter_mut().zip(c) {
                        *x = (decay * *x as f64 + (1.0 - decay) * y as f64) as f32;
                    }
                }
            }
            nll_sum += nll * chunk.len() as f64;
            nll_n += chunk.len();
            global_step += 1;
            let secs = ts.elapsed().as_secs_f64().max(1e-9);
            on_event(&TrainEvent::Step { epoch, step, steps, nll, samples_per_sec: chunk.len() as f64 / secs });
        }
        // Validation with the weights that would be kept.
        let values = ema.clone().unwrap_or_else(|| model.trainable_values());
        let mut eval = model.valid();
        eval.set_trainable_values(&values);
        eval.power_iterate_all(1e-7, 1, 2000);
        let flow = eval.to_flow();
        let val_nll = if val_rows.is_empty() {
            f64::NAN
        } else {
            -mean(&log_probs(&eval, &flow, &val_rows, settings.val_logdet, settings.seed + epoch as u64))
        };
        let train_nll = nll_sum / nll_n.max(1) as f64;
        let report = EpochReport {
            epoch,
            train_nll,
            train_bpd: train_nll / (d as f64 * std::f64::consts::LN_2),
            val_nll,
            val_bpd: val_nll / (d as f64 * std::f64::consts::LN_2),
            seconds: tic.elapsed().as_secs_f64(),
            power_iterations_max: power_max,
        };
        // Without validation data the last epoch is kept.
        let score = if val_nll.is_finite() { val_nll } else { -(epoch as f64) };
        if best.as_ref().is_none_or(|(_, b, _)| score < *b) {
            best = Some((epoch, score, values));
        }
        history.push(report.clone());
        on_event(&TrainEvent::Epoch { report, best_epoch: best.as_ref().map(|b| b.0).unwrap_or(epoch) });
    }

    let (best_epoch, values) = match best {
        Some((e, _, v)) => (Some(e), v),
        None => (None, ema.unwrap_or_else(|| model.trainable_values())),
    };
    let mut final_model = model.valid();
    final_model.set_trainable_values(&values);
    // Long power iteration before saving: to convergence in f64.
    final_model.power_iterate_all(1e-12, super::model::POWER_LONG, 20_000);
    let spectral_norms = verify_spectral_norms(&final_model)?;
    let flow = final_model.to_flow();
    Ok(TrainOutcome {
        model: final_model,
        flow,
        history,
        best_epoch,
        cancelled,
        spectral_norms,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Summary numbers of a scored set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NllSummary {
    pub n: usize,
    /// Mean negative log-likelihood, nats.
    pub nll: f64,
    /// Standard error of that mean.
    pub nll_se: f64,
    pub bpd: f64,
}

impl NllSummary {
    pub fn of(log_probs: &[f64], dim: usize) -> Self {
        let n = log_probs.len();
        let m = mean(log_probs);
        let var = if n > 1 { log_probs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        Self { n, nll: -m, nll_se: (var / n.max(1) as f64).sqrt(), bpd: bits_per_dim(m, dim) }
    }
}
