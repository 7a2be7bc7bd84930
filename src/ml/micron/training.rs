//! Training (micron.md "Training"): the faithful per-patient RMSprop recipe
//! and an optional mini-batch Adam recipe. Plain synchronous code: callers
//! on an async runtime run it in `spawn_blocking`.
use std::time::Instant;

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, RmsPropConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::inference::{MicronPredictor, Thresholds};
use super::model::{Micron, MicronConfig, MicronWeights, float_tensor};
use crate::ml::data::{DdiMatrix, Patient, Visit};

/// How optimisation steps are formed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Recipe {
    /// The reference: one RMSprop step per patient (its visits' losses
    /// summed), lr 2e-4, weight decay 1e-5, alpha 0.99, eps 1e-8, momentum 0.
    Faithful,
    /// Faster: Adam over batches of `batch_patients` patients, the loss
    /// averaged over patients. Not the reference; measure before trusting.
    MiniBatch { batch_patients: usize, lr: f64 },
}

/// Training settings. `Default` is the faithful recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub recipe: Recipe,
    /// RMSprop settings of the faithful recipe.
    pub lr: f64,
    pub weight_decay: f32,
    pub alpha: f32,
    pub eps: f32,
    /// Seeds parameter init and dropout.
    pub seed: u64,
    /// Shuffle the training patients once before the first epoch with this
    /// seed. `None` (default) trains in the given order, which is what the
    /// reference does: its one shuffle (seed 1203) is the split shuffle, so
    /// pass the train part of that split in split order.
    pub shuffle_seed: Option<u64>,
    /// The DDI term counts only when the DDI rate of {p >= 0.5} exceeds this.
    pub ddi_gate: f64,
    /// Thresholds of the validation recurrence.
    pub val_thresholds: Thresholds,
    /// The reference never selects epoch 0 as best (`epoch != 0 and ...`).
    pub best_skips_first_epoch: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 40,
            recipe: Recipe::Faithful,
            lr: 2e-4,
            weight_decay: 1e-5,
            alpha: 0.99,
            eps: 1e-8,
            seed: 1203,
            shuffle_seed: None,
            ddi_gate: 0.08,
            val_thresholds: Thresholds::default(),
            best_skips_first_epoch: true,
        }
    }
}

/// One epoch's summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// 0-based.
    pub epoch: usize,
    /// Mean optimisation-step loss over the epoch.
    pub train_loss: f64,
    /// Validation Jaccard (recurrence at `val_thresholds`; per visit, mean
    /// per patient, mean over patients; no aliasing quirk).
    pub val_jaccard: f64,
    pub train_seconds: f64,
    pub val_seconds: f64,
    pub steps: usize,
}

/// Progress events, for a job queue's progress rows.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainEvent {
    Step { epoch: usize, step: usize, steps: usize, loss: f64 },
    Epoch { report: EpochReport, best_epoch: Option<usize> },
}

/// What training returns.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub config: MicronConfig,
    /// Weights of the best epoch (or of the last one when no epoch qualified
    /// or training was cancelled before any validation).
    pub weights: MicronWeights,
    pub best_epoch: Option<usize>,
    pub history: Vec<EpochReport>,
    pub cancelled: bool,
}

/// Multi-hot rows `[rows, n]`.
fn multi_hot(sets: &[&[u32]], n: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0f32; sets.len() * n];
    for (r, s) in sets.iter().enumerate() {
        for &j in s.iter() {
            if (j as usize) < n {
                v[r * n + j as usize] = 1.0;
            }
        }
    }
    float_tensor(v, sets.len(), n, device)
}

/// BCE with logits, mean over the last dim: `[n, M] -> [n, 1]`.
fn bce_with_logits(x: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
    let stable = x.clone().abs().neg().exp().log1p();
    (relu(x.clone()) - x * y + stable).mean_dim(1)
}

/// PyTorch's multilabel margin loss per row:
/// `sum_{j in Y} sum_{i not in Y} max(0, 1 - (x_j - x_i)) / M`, `[n, 1]`.
fn multilabel_margin(x: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
    let [n, m] = x.dims();
    let xj = x.clone().unsqueeze_dim::<3>(2); // [n, M, 1]
    let xi = x.unsqueeze_dim::<3>(1); // [n, 1, M]
    let margin = relu((xi - xj).add_scalar(1.0)); // [n, j, i]
    let mask = y.clone().unsqueeze_dim::<3>(2) * y.neg().add_scalar(1.0).unsqueeze_dim::<3>(1);
    (margin * mask).sum_dim(2).sum_dim(1).reshape([n, 1]).div_scalar(m as f64)
}

/// The batch loss of micron.md for pairs (visit t, visit t-1), summed over
/// visits. `a` is the DDI matrix `[M, M]`.
pub(crate) fn micron_loss(model: &Micron, cur: &[&Visit], last: &[&Visit], a: &Tensor<2>, ddi_gate: f64) -> Tensor<1> {
    let device = a.device();
    let m = model.n_med();
    let (m_cur, m_last, dm) = model.pair_logits(cur, last);
    let cur_sets: Vec<&[u32]> = cur.iter().map(|v| v.med.as_slice()).collect();
    let last_sets: Vec<&[u32]> = last.iter().map(|v| v.med.as_slice()).collect();
    let y_cur = multi_hot(&cur_sets, m, &device);
    let y_last = multi_hot(&last_sets, m, &device);

    let bce = bce_with_logits(m_cur.clone(), y_cur.clone()).mul_scalar(0.75)
        + bce_with_logits(m_last.clone(), y_last.clone()).mul_scalar(0.25);
    let p_cur = sigmoid(m_cur);
    let p_last = sigmoid(m_last.clone());
    let multi = (multilabel_margin(p_cur.clone(), y_cur).mul_scalar(0.75)
        + multilabel_margin(p_last, y_last).mul_scalar(0.25))
    .mul_scalar(0.05);
    let rec = (p_cur.clone() - sigmoid(m_last + dm)).square().mean_dim(1);
    let ddi = (p_cur.clone().matmul(a.clone()) * p_cur.clone()).sum_dim(1).div_scalar(m as f64);

    // Gate: DDI rate (interacting unordered pairs / all pairs) of {p >= 0.5}.
    let pred = p_cur.detach().greater_equal_elem(0.5).float();
    let inter = (pred.clone().matmul(a.clone()) * pred.clone()).sum_dim(1).div_scalar(2.0);
    let s = pred.sum_dim(1);
    let pairs = (s.clone() * s.sub_scalar(1.0)).div_scalar(2.0).clamp_min(1.0);
    let gate = (inter / pairs).greater_elem(ddi_gate).float();

    ((bce + multi + rec + ddi * gate).mul_scalar(0.25)).sum()
}

/// Pairs (t, t-1) for t >= 1 of patients with >= 2 visits.
fn patient_pairs<'a>(p: &'a Patient, cur: &mut Vec<&'a Visit>, last: &mut Vec<&'a Visit>) {
    for t in 1..p.visits.len() {
        cur.push(&p.visits[t]);
        last.push(&p.visits[t - 1]);
    }
}

/// Why training could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrainError {
    #[error("DDI matrix covers {got} medications, the model has {want}")]
    DdiSize { got: usize, want: usize },
    #[error("no training patient has two or more visits")]
    NoTrainingPairs,
}

/// The DDI matrix as a float tensor; an empty matrix means "no DDI data"
/// (the DDI term is then zero).
pub(crate) fn ddi_tensor(ddi: &DdiMatrix, n_med: usize, device: &Device) -> Result<Tensor<2>, TrainError> {
    let v: Vec<f32> = if ddi.is_empty() {
        vec![0f32; n_med * n_med]
    } else if ddi.len() == n_med {
        ddi.as_slice().iter().map(|&b| b as f32).collect()
    } else {
        return Err(TrainError::DdiSize { got: ddi.len(), want: n_med });
    };
    Ok(float_tensor(v, n_med, n_med, device))
}

/// Validation Jaccard of the recurrence: per visit, mean per patient, mean
/// over patients (micron.md's evaluation, without the aliasing quirk).
pub(crate) fn val_jaccard(pred: &MicronPredictor, patients: &[Patient], th: Thresholds) -> f64 {
    let preds = pred.predict_patients(patients.iter().map(|p| p.visits.as_slice()), th);
    mean_jaccard(&preds)
}

/// Clean mean Jaccard of `metrics::evaluate` (Jaccard does not involve the
/// interaction matrix, so an empty one is passed).
pub(crate) fn mean_jaccard(preds: &[crate::ml::metrics::PatientPrediction]) -> f64 {
    use crate::ml::{data::DdiMatrix, metrics};
    let n_med = preds.iter().flat_map(|p| &p.visits).map(|v| v.probs.len()).next().unwrap_or(0);
    metrics::evaluate(preds, &DdiMatrix::new(n_med), metrics::MetricOptions::CLEAN).jaccard
}

/// Trains MICRON. `device` may be plain or autodiff (autodiff is enabled
/// here). `on_event` is called after every step and epoch; `cancel` is
/// polled before every step and stops training early (the outcome is then
/// marked `cancelled`). Errors only on inconsistent inputs, before any work.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model_config: &MicronConfig,
    train: &[Patient],
    val: &[Patient],
    ddi: &DdiMatrix,
    cfg: &TrainConfig,
    device: &Device,
    on_event: &mut dyn FnMut(&TrainEvent),
    cancel: &dyn Fn() -> bool,
) -> Result<TrainOutcome, TrainError> {
    let device = device.clone().autodiff();
    device.seed(cfg.seed);
    let model = model_config.init(&device);
    train_from(model_config, model, train, val, ddi, cfg, &device, on_event, cancel)
}

/// [`train`] starting from given weights (fine-tuning, resuming).
#[allow(clippy::too_many_arguments)]
pub fn train_from_weights(
    model_config: &MicronConfig,
    weights: &MicronWeights,
    train: &[Patient],
    val: &[Patient],
    ddi: &DdiMatrix,
    cfg: &TrainConfig,
    device: &Device,
    on_event: &mut dyn FnMut(&TrainEvent),
    cancel: &dyn Fn() -> bool,
) -> Result<TrainOutcome, TrainError> {
    let device = device.clone().autodiff();
    device.seed(cfg.seed);
    let model = weights.to_module(model_config, &device);
    train_from(model_config, model, train, val, ddi, cfg, &device, on_event, cancel)
}

/// PyTorch's `RMSprop(lr, weight_decay)` as the reference builds it:
/// alpha 0.99, eps 1e-8, momentum 0, not centered, L2 added to the gradient.
fn faithful_optimizer(cfg: &TrainConfig) -> ModuleOptimizer {
    RmsPropConfig::new()
        .with_alpha(cfg.alpha)
        .with_momentum(0.0)
        .with_epsilon(cfg.eps)
        .with_weight_decay(Some(WeightDecayConfig::new(cfg.weight_decay)))
        .init()
}

#[allow(clippy::too_many_arguments)]
fn train_from(
    model_config: &MicronConfig,
    mut model: Micron,
    train: &[Patient],
    val: &[Patient],
    ddi: &DdiMatrix,
    cfg: &TrainConfig,
    device: &Device,
    on_event: &mut dyn FnMut(&TrainEvent),
    cancel: &dyn Fn() -> bool,
) -> Result<TrainOutcome, TrainError> {
    let a = ddi_tensor(ddi, model_config.n_med, device)?;
    let mut order: Vec<&Patient> = train.iter().filter(|p| p.visits.len() >= 2).collect();
    if order.is_empty() {
        return Err(TrainError::NoTrainingPairs);
    }
    if let Some(seed) = cfg.shuffle_seed {
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    }
    let (batch, lr, mut optim): (usize, f64, ModuleOptimizer) = match &cfg.recipe {
        Recipe::Faithful => (1, cfg.lr, faithful_optimizer(cfg)),
        Recipe::MiniBatch { batch_patients, lr } => (
            (*batch_patients).max(1),
            *lr,
            AdamConfig::new()
                .with_epsilon(1e-8)
                .with_weight_decay(Some(WeightDecayConfig::new(cfg.weight_decay)))
                .init(),
        ),
    };
    let steps = order.len().div_ceil(batch);
    let mut history = Vec::new();
    let mut best: Option<(usize, f64, MicronWeights)> = None;
    let mut cancelled = false;

    'epochs: for epoch in 0..cfg.epochs {
        let tic = Instant::now();
        let mut loss_sum = 0.0;
        for (step, chunk) in order.chunks(batch).enumerate() {
            if cancel() {
                cancelled = true;
                break 'epochs;
            }
            let (mut cur, mut last) = (Vec::new(), Vec::new());
            for p in chunk {
                patient_pairs(p, &mut cur, &mut last);
            }
            let mut loss = micron_loss(&model, &cur, &last, &a, cfg.ddi_gate);
            if batch > 1 {
                loss = loss.div_scalar(chunk.len() as f64);
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let value: f64 = loss.into_scalar::<f32>() as f64;
            model = optim.step(lr, model, grads);
            loss_sum += value;
            on_event(&TrainEvent::Step { epoch, step, steps, loss: value });
        }
        let train_seconds = tic.elapsed().as_secs_f64();
        let tic = Instant::now();
        let weights = model.valid().to_weights();
        let val_j = val_jaccard(&MicronPredictor::new(weights.clone()), val, cfg.val_thresholds);
        let report = EpochReport {
            epoch,
            train_loss: if steps == 0 { 0.0 } else { loss_sum / steps as f64 },
            val_jaccard: val_j,
            train_seconds,
            val_seconds: tic.elapsed().as_secs_f64(),
            steps,
        };
        let eligible = !(cfg.best_skips_first_epoch && epoch == 0 && cfg.epochs > 1);
        if eligible && best.as_ref().is_none_or(|b| val_j > b.1) {
            best = Some((epoch, val_j, weights));
        }
        on_event(&TrainEvent::Epoch { report: report.clone(), best_epoch: best.as_ref().map(|b| b.0) });
        history.push(report);
    }
    let (best_epoch, weights) = match best {
        Some((e, _, w)) => (Some(e), w),
        None => (None, model.valid().to_weights()),
    };
    Ok(TrainOutcome { config: model_config.clone(), weights, best_epoch, history, cancelled })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn dev() -> Device {
        Device::flex()
    }

    #[test]
    fn multilabel_margin_matches_definition() {
        // x = [0.1, 0.9, 0.4], Y = {1}: (max(0,1-(0.9-0.1)) + max(0,1-(0.9-0.4))) / 3
        let x = float_tensor(vec![0.1, 0.9, 0.4], 1, 3, &dev());
        let y = float_tensor(vec![0.0, 1.0, 0.0], 1, 3, &dev());
        let got: f32 = multilabel_margin(x, y).into_scalar();
        let want = ((1.0f32 - 0.8) + (1.0 - 0.5)) / 3.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    /// The batch loss equals a plain-Rust computation of micron.md's formula
    /// from the weights (dropout is off outside autodiff).
    #[test]
    fn loss_matches_plain_formula() {
        use rand::Rng;
        let cfg = MicronConfig::new(15, 8, 12).with_dim(8);
        let dev = dev();
        dev.seed(3);
        let model = cfg.init(&dev);
        let w = model.to_weights();
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut codes = |n: u32, k: usize| {
            let mut v: Vec<u32> = (0..k).map(|_| rng.random_range(0..n)).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let visits: Vec<Visit> =
            (0..4).map(|_| Visit { diag: codes(15, 4), proc: codes(8, 2), med: codes(12, 5) }).collect();
        let mut ddi = DdiMatrix::new(12);
        for _ in 0..30 {
            ddi.set(rng.random_range(0..12), rng.random_range(0..12));
        }
        let a = ddi_tensor(&ddi, 12, &dev).unwrap();
        let cur: Vec<&Visit> = visits[1..].iter().collect();
        let last: Vec<&Visit> = visits[..3].iter().collect();
        let got: f32 = micron_loss(&model, &cur, &last, &a, 0.08).into_scalar();

        let m = 12usize;
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let bce = |x: &[f32], y: &[u32]| {
            (0..m)
                .map(|j| {
                    let t = if y.contains(&(j as u32)) { 1.0 } else { 0.0 };
                    x[j].max(0.0) - x[j] * t + (-x[j].abs()).exp().ln_1p()
                })
                .sum::<f32>()
                / m as f32
        };
        let mlm = |p: &[f32], y: &[u32]| {
            let mut s = 0.0;
            for &j in y {
                for i in 0..m as u32 {
                    if !y.contains(&i) {
                        s += (1.0 - (p[j as usize] - p[i as usize])).max(0.0);
                    }
                }
            }
            s / m as f32
        };
        let mut want = 0.0f32;
        let mut gated = 0;
        for (c, l) in cur.iter().zip(&last) {
            let hc = w.health(&c.diag, &c.proc);
            let hl = w.health(&l.diag, &l.proc);
            let r: Vec<f32> = hc.iter().zip(&hl).map(|(a, b)| a - b).collect();
            let (mc, ml, dm) = (w.prescription(&hc), w.prescription(&hl), w.prescription(&r));
            let pc: Vec<f32> = mc.iter().map(|&x| sig(x)).collect();
            let pl: Vec<f32> = ml.iter().map(|&x| sig(x)).collect();
            let rec = (0..m).map(|j| (pc[j] - sig(ml[j] + dm[j])).powi(2)).sum::<f32>() / m as f32;
            let mut ddi_l = 0.0;
            for i in 0..m {
                for j in 0..m {
                    if ddi.interacts(i as u32, j as u32) {
                        ddi_l += pc[i] * pc[j];
                    }
                }
            }
            ddi_l /= m as f32;
            let pred: Vec<u32> = (0..m as u32).filter(|&j| pc[j as usize] >= 0.5).collect();
            let (mut all, mut bad) = (0, 0);
            for (x, &i) in pred.iter().enumerate() {
                for &j in &pred[x + 1..] {
                    all += 1;
                    bad += ddi.interacts(i, j) as usize;
                }
            }
            let gate = all > 0 && bad as f64 / all as f64 > 0.08;
            gated += gate as usize;
            want += 0.25
                * (0.75 * bce(&mc, &c.med)
                    + 0.25 * bce(&ml, &l.med)
                    + 0.05 * (0.75 * mlm(&pc, &c.med) + 0.25 * mlm(&pl, &l.med))
                    + rec
                    + if gate { ddi_l } else { 0.0 });
        }
        assert!(gated > 0, "the test should exercise the DDI gate");
        assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{got} vs {want}");
    }

    /// Two RMSprop steps on a parameter with a constant gradient c follow
    /// PyTorch's update (g = c + wd p; v = a v + (1-a) g^2; p -= lr g / (sqrt(v) + eps)),
    /// which also shows momentum is off (burn's default is 0.9).
    #[test]
    fn rmsprop_matches_torch_update() {
        let cfg = TrainConfig { lr: 0.01, weight_decay: 0.1, ..TrainConfig::default() };
        let dev = dev().autodiff();
        dev.seed(1);
        let mut model = MicronConfig::new(3, 3, 4).with_dim(2).init(&dev);
        let c = [0.5f32, -2.0, 1e-3, 3.0];
        let mut p: Vec<f32> = model.presc_out.bias.as_ref().unwrap().val().try_into_vec_as::<f32>().unwrap();
        let mut v = [0f32; 4];
        let mut optim = faithful_optimizer(&cfg);
        for _ in 0..2 {
            let ct = Tensor::<1>::from_data(TensorData::new(c.to_vec(), [4]), &dev);
            let loss = (model.presc_out.bias.as_ref().unwrap().val() * ct).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.lr, model, grads);
            for j in 0..4 {
                let g = c[j] + cfg.weight_decay * p[j];
                v[j] = cfg.alpha * v[j] + (1.0 - cfg.alpha) * g * g;
                p[j] -= cfg.lr as f32 * g / (v[j].sqrt() + cfg.eps);
            }
        }
        let got: Vec<f32> = model.presc_out.bias.as_ref().unwrap().val().try_into_vec_as::<f32>().unwrap();
        for j in 0..4 {
            assert!((got[j] - p[j]).abs() < 1e-5, "{got:?} vs {p:?}");
        }
    }

    #[test]
    fn bce_matches_naive_formula() {
        let xs = [-3.0f32, -0.2, 0.0, 1.5, 20.0];
        let ys = [0.0f32, 1.0, 1.0, 0.0, 1.0];
        let x = float_tensor(xs.to_vec(), 1, 5, &dev());
        let y = float_tensor(ys.to_vec(), 1, 5, &dev());
        let got: f32 = bce_with_logits(x, y).into_scalar();
        let want: f32 = xs
            .iter()
            .zip(ys)
            .map(|(&x, y)| {
                let p = 1.0 / (1.0 + (-x).exp());
                -(y * p.max(1e-12).ln() + (1.0 - y) * (1.0 - p).max(1e-12).ln())
            })
            .sum::<f32>()
            / 5.0;
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }
}
