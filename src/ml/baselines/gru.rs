//! Full-history GRU baseline: per visit, the sums of its diagnosis and
//! procedure embeddings feed a GRU over the visits; a Linear layer maps each
//! hidden state to medication logits (the medications of that visit).
//! Trained with BCE. A prediction re-reads the whole history: that is the
//! point of comparison for MICRON's one-step update.
use std::fs;
use std::path::Path;
use std::time::Instant;

use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::ml::data::{Patient, Visit, Vocabularies};
use crate::ml::metrics::{PatientPrediction, VisitPrediction};
use crate::ml::micron::model::{ArtifactError, float_tensor, sum_embeddings};
use crate::ml::micron::{EpochReport, TrainEvent};

/// Shape of the GRU baseline. Saved as `config.json`.
#[derive(Config, Debug, PartialEq)]
pub struct GruBaselineConfig {
    pub n_diag: usize,
    pub n_proc: usize,
    pub n_med: usize,
    #[config(default = 64)]
    pub dim: usize,
    #[config(default = 128)]
    pub hidden: usize,
    #[config(default = 0.5)]
    pub dropout: f64,
}

/// Alias used by callers.
pub type GruConfig = GruBaselineConfig;

impl GruBaselineConfig {
    pub fn init(&self, device: &Device) -> GruBaseline {
        let emb = |n: usize| {
            EmbeddingConfig::new(n, self.dim)
                .with_initializer(Initializer::Uniform { min: -0.1, max: 0.1 })
                .init(device)
        };
        GruBaseline {
            diag_embedding: emb(self.n_diag),
            proc_embedding: emb(self.n_proc),
            dropout: DropoutConfig::new(self.dropout).init(),
            gru: burn::nn::GruConfig::new(self.dim, self.hidden, true).init(device),
            out: LinearConfig::new(self.hidden, self.n_med).init(device),
        }
    }
}

#[derive(Module, Debug)]
pub struct GruBaseline {
    pub diag_embedding: Embedding,
    pub proc_embedding: Embedding,
    pub dropout: Dropout,
    pub gru: burn::nn::Gru,
    pub out: Linear,
}

impl GruBaseline {
    fn device(&self) -> Device {
        self.out.weight.val().device()
    }
    fn dim(&self) -> usize {
        self.diag_embedding.weight.dims()[1]
    }

    /// Logits for every visit of every patient, `[B, T_max, |M|]`; patients
    /// shorter than `T_max` are padded at the end (their padded positions
    /// are garbage and must be masked).
    pub fn forward(&self, patients: &[&[Visit]]) -> Tensor<3> {
        let device = self.device();
        let b = patients.len();
        let t_max = patients.iter().map(|p| p.len()).max().unwrap_or(0);
        let empty: &[u32] = &[];
        let mut diag = Vec::with_capacity(b * t_max);
        let mut proc = Vec::with_capacity(b * t_max);
        for p in patients {
            for t in 0..t_max {
                diag.push(p.get(t).map_or(empty, |v| v.diag.as_slice()));
                proc.push(p.get(t).map_or(empty, |v| v.proc.as_slice()));
            }
        }
        let x = sum_embeddings(&self.diag_embedding, &self.dropout, &diag, &device)
            + sum_embeddings(&self.proc_embedding, &self.dropout, &proc, &device);
        let x = x.reshape([b, t_max, self.dim()]);
        let h = self.gru.forward(x, None);
        self.out.forward(relu(h))
    }

    /// Probabilities of the medications of the last visit of `history`
    /// (which must be non-empty), reading the whole history.
    pub fn predict_last(&self, history: &[Visit]) -> Vec<f32> {
        let t = history.len();
        let logits = self.forward(&[history]).slice([0..1, t - 1..t]);
        sigmoid(logits).try_into_vec_as::<f32>().expect("f32")
    }
}

/// GRU training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GruTrainConfig {
    pub epochs: usize,
    pub batch_patients: usize,
    pub lr: f64,
    pub weight_decay: f32,
    pub seed: u64,
    /// Validation threshold on p for the predicted set.
    pub threshold: f32,
}

impl Default for GruTrainConfig {
    fn default() -> Self {
        Self { epochs: 20, batch_patients: 16, lr: 1e-3, weight_decay: 1e-5, seed: 1203, threshold: 0.5 }
    }
}

#[derive(Clone, Debug)]
pub struct GruTrainOutcome {
    pub model: GruBaseline,
    pub best_epoch: Option<usize>,
    pub history: Vec<EpochReport>,
    pub cancelled: bool,
}

/// Trains the GRU baseline with BCE on every visit; keeps the epoch with the
/// best validation Jaccard. `device` may be plain or autodiff.
#[allow(clippy::too_many_arguments)]
pub fn train_gru(
    config: &GruBaselineConfig,
    train: &[Patient],
    val: &[Patient],
    cfg: &GruTrainConfig,
    device: &Device,
    on_event: &mut dyn FnMut(&TrainEvent),
    cancel: &dyn Fn() -> bool,
) -> GruTrainOutcome {
    let device = device.clone().autodiff();
    device.seed(cfg.seed);
    let mut model = config.init(&device);
    let mut optim = AdamConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(Some(WeightDecayConfig::new(cfg.weight_decay)))
        .init();
    let mut order: Vec<&Patient> = train.iter().filter(|p| !p.visits.is_empty()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut best: Option<(usize, f64, GruBaseline)> = None;
    let mut history = Vec::new();
    let mut cancelled = false;
    'epochs: for epoch in 0..cfg.epochs {
        let tic = Instant::now();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut steps) = (0.0, 0usize);
        let n_steps = order.len().div_ceil(cfg.batch_patients.max(1));
        for chunk in order.chunks(cfg.batch_patients.max(1)) {
            if cancel() {
                cancelled = true;
                break 'epochs;
            }
            let seqs: Vec<&[Visit]> = chunk.iter().map(|p| p.visits.as_slice()).collect();
            let t_max = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
            let m = config.n_med;
            let mut y = vec![0f32; seqs.len() * t_max * m];
            let mut mask = vec![0f32; seqs.len() * t_max];
            for (b, s) in seqs.iter().enumerate() {
                for (t, v) in s.iter().enumerate() {
                    mask[b * t_max + t] = 1.0;
                    for &j in &v.med {
                        if (j as usize) < m {
                            y[(b * t_max + t) * m + j as usize] = 1.0;
                        }
                    }
                }
            }
            let n_valid: f32 = mask.iter().sum();
            let logits = model.forward(&seqs).reshape([seqs.len() * t_max, m]);
            let y = float_tensor(y, seqs.len() * t_max, m, &device);
            let mask = float_tensor(mask, seqs.len() * t_max, 1, &device);
            let stable = logits.clone().abs().neg().exp().log1p();
            let bce = (relu(logits.clone()) - logits * y + stable).mean_dim(1);
            let loss = (bce * mask).sum().div_scalar(n_valid as f64);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let loss_value = loss.into_scalar::<f32>() as f64;
            on_event(&TrainEvent::Step { epoch, step: steps, steps: n_steps, loss: loss_value });
            loss_sum += loss_value;
            steps += 1;
            model = optim.step(cfg.lr, model, grads);
        }
        let valid = model.valid();
        let pred = GruPredictor { model: valid.clone(), threshold: cfg.threshold };
        let val_j = crate::ml::micron::training::mean_jaccard(
            &pred.predict_patients(val.iter().map(|p| p.visits.as_slice())),
        );
        let train_loss = if steps == 0 { 0.0 } else { loss_sum / steps as f64 };
        let train_seconds = tic.elapsed().as_secs_f64();
        if best.as_ref().is_none_or(|b| val_j > b.1) {
            best = Some((epoch, val_j, valid));
        }
        let report = EpochReport { epoch, train_loss, val_jaccard: val_j, train_seconds, val_seconds: 0.0, steps };
        on_event(&TrainEvent::Epoch { report: report.clone(), best_epoch: best.as_ref().map(|b| b.0) });
        history.push(report);
    }
    let (best_epoch, model) = match best {
        Some((e, _, m)) => (Some(e), m),
        None => (None, model.valid()),
    };
    GruTrainOutcome { model, best_epoch, history, cancelled }
}

/// Inference with a trained GRU (non-autodiff module).
#[derive(Clone, Debug)]
pub struct GruPredictor {
    pub model: GruBaseline,
    pub threshold: f32,
}

impl GruPredictor {
    /// Probabilities and predicted set for the last visit of `history`,
    /// re-reading the whole history (the serving cost of a full-history model).
    pub fn predict(&self, history: &[Visit]) -> (Vec<f32>, Vec<u32>) {
        let probs = self.model.predict_last(history);
        let set = probs.iter().enumerate().filter(|(_, p)| **p >= self.threshold).map(|(j, _)| j as u32).collect();
        (probs, set)
    }

    /// Evaluation view: visits t >= 1 of a patient with two or more visits.
    /// One forward pass gives every visit's output (the same numbers as
    /// re-reading each prefix, since the GRU is causal).
    pub fn predict_patient(&self, visits: &[Visit]) -> PatientPrediction {
        if visits.len() < 2 {
            return PatientPrediction::default();
        }
        let m = self.model.out.weight.dims()[1];
        let probs = sigmoid(self.model.forward(&[visits])).try_into_vec_as::<f32>().expect("f32");
        let mut prev: Vec<u32> = {
            let mut v = visits[0].med.clone();
            v.sort_unstable();
            v.dedup();
            v
        };
        let mut out = Vec::new();
        for t in 1..visits.len() {
            let p = probs[t * m..(t + 1) * m].to_vec();
            let predicted: Vec<u32> =
                p.iter().enumerate().filter(|(_, x)| **x >= self.threshold).map(|(j, _)| j as u32).collect();
            let mut truth = visits[t].med.clone();
            truth.sort_unstable();
            truth.dedup();
            out.push(VisitPrediction {
                truth,
                predicted: predicted.clone(),
                probs: p,
                prev: std::mem::replace(&mut prev, predicted),
            });
        }
        PatientPrediction { visits: out }
    }

    pub fn predict_patients<'a>(&self, patients: impl IntoIterator<Item = &'a [Visit]>) -> Vec<PatientPrediction> {
        patients.into_iter().filter(|v| v.len() >= 2).map(|v| self.predict_patient(v)).collect()
    }
}

/// A saved GRU baseline: `weights.bpk` (burnpack), `config.json`,
/// `vocab.json`, `threshold.json`.
#[derive(Clone, Debug)]
pub struct GruArtifact {
    pub config: GruBaselineConfig,
    pub vocab: Vocabularies,
    pub predictor: GruPredictor,
}

impl GruArtifact {
    pub fn save(&self, dir: &Path) -> Result<(), ArtifactError> {
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| ArtifactError::Io { path: p, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        self.predictor
            .model
            .clone()
            .save_file(dir.join("weights.bpk"))
            .map_err(|e| ArtifactError::Weights(e.to_string()))?;
        let cfg = dir.join("config.json");
        self.config.save(&cfg).map_err(io(&cfg))?;
        let voc = dir.join("vocab.json");
        fs::write(&voc, serde_json::to_string(&self.vocab).expect("vocab json")).map_err(io(&voc))?;
        let th = dir.join("threshold.json");
        fs::write(&th, serde_json::to_string(&self.predictor.threshold).expect("json")).map_err(io(&th))
    }

    pub fn load(dir: &Path, device: &Device) -> Result<Self, ArtifactError> {
        let json = |p: &Path, e: String| ArtifactError::Json { path: p.display().to_string(), msg: e };
        let cfg = dir.join("config.json");
        let config = GruBaselineConfig::load(&cfg).map_err(|e| json(&cfg, e.to_string()))?;
        let voc = dir.join("vocab.json");
        let vocab: Vocabularies = serde_json::from_str(
            &fs::read_to_string(&voc).map_err(|source| ArtifactError::Io { path: voc.display().to_string(), source })?,
        )
        .map_err(|e| json(&voc, e.to_string()))?;
        let th = dir.join("threshold.json");
        let threshold: f32 = serde_json::from_str(
            &fs::read_to_string(&th).map_err(|source| ArtifactError::Io { path: th.display().to_string(), source })?,
        )
        .map_err(|e| json(&th, e.to_string()))?;
        let model = config
            .init(device)
            .try_load_file(dir.join("weights.bpk"))
            .map_err(|e| ArtifactError::Weights(e.to_string()))?
            .valid();
        Ok(Self { config, vocab, predictor: GruPredictor { model, threshold } })
    }
}
