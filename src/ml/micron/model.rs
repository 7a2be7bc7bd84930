//! The MICRON module (micron.md "Model"), its plain-array weights and the
//! artifact format.
//!
//! Parameter names on disk follow the PyTorch reference (`embeddings.0.weight`,
//! `health_net.0.weight`, `prescription_net.2.bias`, ... with Linear weights
//! as `[out, in]`), so an artifact's `weights.safetensors` and a reference
//! state dict saved as safetensors are read by the same code.
use std::path::Path;

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::activation::relu;

use crate::ml::data::Visit;

/// Hyper-parameters that define the shape of a [`Micron`] module. Saved as
/// `config.json` beside the weights.
#[derive(Config, Debug, PartialEq)]
pub struct MicronConfig {
    /// |diagnosis vocabulary|
    pub n_diag: usize,
    /// |procedure vocabulary|
    pub n_proc: usize,
    /// |medication vocabulary|
    pub n_med: usize,
    /// Embedding / health-representation width D.
    #[config(default = 64)]
    pub dim: usize,
    /// Dropout on every code embedding, before summing (training only).
    #[config(default = 0.5)]
    pub dropout: f64,
}

/// PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the
/// weight and the bias alike.
fn torch_linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    let k = 1.0 / (d_in as f64).sqrt();
    LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Uniform { min: -k, max: k })
        .init(device)
}

impl MicronConfig {
    /// A freshly initialised module (embeddings U(-0.1, 0.1), Linear layers as
    /// PyTorch initialises them). Seed the device first for reproducibility.
    pub fn init(&self, device: &Device) -> Micron {
        let emb = |n: usize| {
            EmbeddingConfig::new(n, self.dim)
                .with_initializer(Initializer::Uniform { min: -0.1, max: 0.1 })
                .init(device)
        };
        Micron {
            diag_embedding: emb(self.n_diag),
            proc_embedding: emb(self.n_proc),
            dropout: DropoutConfig::new(self.dropout).init(),
            health_net: torch_linear(2 * self.dim, self.dim, device),
            presc_hidden: torch_linear(self.dim, 4 * self.dim, device),
            presc_out: torch_linear(4 * self.dim, self.n_med, device),
        }
    }

    /// Number of trainable parameters this config gives.
    pub fn num_params(&self) -> usize {
        let d = self.dim;
        (self.n_diag + self.n_proc) * d
            + (2 * d * d + d)
            + (d * 4 * d + 4 * d)
            + (4 * d * self.n_med + self.n_med)
    }
}

/// MICRON: code embeddings -> health representation h -> prescription net f.
#[derive(Module, Debug)]
pub struct Micron {
    pub diag_embedding: Embedding,
    pub proc_embedding: Embedding,
    pub dropout: Dropout,
    /// Linear(2D -> D), no activation.
    pub health_net: Linear,
    /// f, first layer: Linear(D -> 4D), then ReLU.
    pub presc_hidden: Linear,
    /// f, second layer: Linear(4D -> |M|), logits.
    pub presc_out: Linear,
}

pub(crate) fn int_tensor(v: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

pub(crate) fn float_tensor(v: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, [rows, cols]), device)
}

/// Sums the rows of `table` selected by each code list, applying `dropout`
/// to every selected embedding before summing (a no-op outside training).
/// Returns `[rows.len(), D]`; an empty code list sums to zeros.
pub(crate) fn sum_embeddings(
    table: &Embedding,
    dropout: &Dropout,
    rows: &[&[u32]],
    device: &Device,
) -> Tensor<2> {
    let d = table.weight.dims()[1];
    let n: usize = rows.iter().map(|r| r.len()).sum();
    if n == 0 {
        return Tensor::zeros([rows.len(), d], device);
    }
    let mut idx = Vec::with_capacity(n);
    // Segment matrix S[r, k] = 1 when selected embedding k belongs to row r.
    let mut seg = vec![0f32; rows.len() * n];
    for (r, codes) in rows.iter().enumerate() {
        for &c in codes.iter() {
            seg[r * n + idx.len()] = 1.0;
            idx.push(c as i64);
        }
    }
    let picked = table.weight.val().select(0, int_tensor(idx, device));
    let picked = dropout.forward(picked);
    float_tensor(seg, rows.len(), n, device).matmul(picked)
}

impl Micron {
    pub fn dim(&self) -> usize {
        self.diag_embedding.weight.dims()[1]
    }
    pub fn n_med(&self) -> usize {
        self.presc_out.weight.dims()[1]
    }
    fn device(&self) -> Device {
        self.health_net.weight.val().device()
    }

    /// Health representations h of the given visits, `[n, D]`. Dropout is
    /// applied (independently per visit and code) only on an autodiff device
    /// in training mode.
    pub fn health(&self, visits: &[&Visit]) -> Tensor<2> {
        let device = self.device();
        let diag: Vec<&[u32]> = visits.iter().map(|v| v.diag.as_slice()).collect();
        let proc: Vec<&[u32]> = visits.iter().map(|v| v.proc.as_slice()).collect();
        let d = sum_embeddings(&self.diag_embedding, &self.dropout, &diag, &device);
        let p = sum_embeddings(&self.proc_embedding, &self.dropout, &proc, &device);
        self.health_net.forward(Tensor::cat(vec![d, p], 1))
    }

    /// h of the empty visit (d = p = 0): the bias of the health net, `[1, D]`.
    /// This is h_{-1} for the first visit.
    pub fn health_empty(&self) -> Tensor<2> {
        self.health_net.forward(Tensor::zeros([1, 2 * self.dim()], &self.device()))
    }

    /// The prescription net f: `[n, D] -> [n, |M|]` logits.
    pub fn prescription(&self, h: Tensor<2>) -> Tensor<2> {
        self.presc_out.forward(relu(self.presc_hidden.forward(h)))
    }

    /// The training forward pass over pairs (visit t, visit t-1), all in one
    /// batch: returns `(m_t, m_{t-1}, dm_t)`, each `[n, |M|]`, where
    /// `m = f(h)`, `dm_t = f(h_t - h_{t-1})`. Every visit occurrence gets its
    /// own dropout mask, as in the reference.
    pub fn pair_logits(&self, cur: &[&Visit], last: &[&Visit]) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
        assert_eq!(cur.len(), last.len());
        let n = cur.len();
        let all: Vec<&Visit> = cur.iter().chain(last.iter()).copied().collect();
        let h = self.health(&all);
        let h_cur = h.clone().slice([0..n]);
        let h_last = h.slice([n..2 * n]);
        let r = h_cur.clone() - h_last.clone();
        let m = self.prescription(Tensor::cat(vec![h_cur, h_last, r], 0));
        let m_cur = m.clone().slice([0..n]);
        let m_last = m.clone().slice([n..2 * n]);
        let dm = m.slice([2 * n..3 * n]);
        (m_cur, m_last, dm)
    }

    /// Extracts the weights into plain arrays (for the fast inference step).
    pub fn to_weights(&self) -> MicronWeights {
        let v1 = |t: Tensor<1>| t.try_into_vec_as::<f32>().expect("f32 tensor");
        let v2 = |t: Tensor<2>| t.try_into_vec_as::<f32>().expect("f32 tensor");
        let bias = |l: &Linear| v1(l.bias.as_ref().expect("bias").val());
        let [n_diag, dim] = self.diag_embedding.weight.dims();
        MicronWeights {
            dim,
            n_diag,
            n_proc: self.proc_embedding.weight.dims()[0],
            n_med: self.n_med(),
            diag_emb: v2(self.diag_embedding.weight.val()),
            proc_emb: v2(self.proc_embedding.weight.val()),
            wh: v2(self.health_net.weight.val()),
            bh: bias(&self.health_net),
            w1: v2(self.presc_hidden.weight.val()),
            b1: bias(&self.presc_hidden),
            w2: v2(self.presc_out.weight.val()),
            b2: bias(&self.presc_out),
        }
    }

    /// Writes the weights as safetensors with the reference's PyTorch names
    /// and layout (loadable by `MICRON.load_state_dict` after
    /// `safetensors.torch.load_file`).
    pub fn save_safetensors(&self, path: &Path) -> Result<(), ArtifactError> {
        let mut store = SafetensorsStore::from_file(path)
            .with_to_adapter(BurnToPyTorchAdapter)
            .with_key_remapping(r"^diag_embedding\.", "embeddings.0.")
            .with_key_remapping(r"^proc_embedding\.", "embeddings.1.")
            .with_key_remapping(r"^health_net\.", "health_net.0.")
            .with_key_remapping(r"^presc_hidden\.", "prescription_net.0.")
            .with_key_remapping(r"^presc_out\.", "prescription_net.2.")
            .overwrite(true);
        self.save_into(&mut store).map_err(|e| ArtifactError::Weights(e.to_string()))
    }

    /// Loads weights written by [`Micron::save_safetensors`] or a reference
    /// state dict saved as safetensors. Every parameter must be present with
    /// the shape of this module (build the module from the matching config).
    pub fn load_safetensors(mut self, path: &Path) -> Result<Self, ArtifactError> {
        let mut store = SafetensorsStore::from_file(path)
            .with_from_adapter(PyTorchToBurnAdapter)
            .with_key_remapping(r"^embeddings\.0\.", "diag_embedding.")
            .with_key_remapping(r"^embeddings\.1\.", "proc_embedding.")
            .with_key_remapping(r"^health_net\.0\.", "health_net.")
            .with_key_remapping(r"^prescription_net\.0\.", "presc_hidden.")
            .with_key_remapping(r"^prescription_net\.2\.", "presc_out.");
        let result = self
            .load_from(&mut store)
            .map_err(|e| ArtifactError::Weights(e.to_string()))?;
        if !result.missing.is_empty() || !result.errors.is_empty() {
            return Err(ArtifactError::Weights(format!(
                "missing parameters {:?}, errors {:?}",
                result.missing.iter().map(|m| &m.0).collect::<Vec<_>>(),
                result.errors
            )));
        }
        Ok(self)
    }
}

/// Errors reading or writing a model artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("io error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("bad json in {path}: {msg}")]
    Json { path: String, msg: String },
    #[error("weights: {0}")]
    Weights(String),
    #[error("artifact mismatch: {0}")]
    Mismatch(String),
}

/// The trained parameters as plain row-major f32 arrays, in burn's layout
/// (Linear weights `[in, out]`). Used for the allocation-light inference step.
#[derive(Clone, Debug, PartialEq)]
pub struct MicronWeights {
    pub dim: usize,
    pub n_diag: usize,
    pub n_proc: usize,
    pub n_med: usize,
    /// `[n_diag, D]`
    pub diag_emb: Vec<f32>,
    /// `[n_proc, D]`
    pub proc_emb: Vec<f32>,
    /// health net `[2D, D]`, bias `[D]`
    pub wh: Vec<f32>,
    pub bh: Vec<f32>,
    /// f layer 1 `[D, 4D]`, bias `[4D]`
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    /// f layer 2 `[4D, |M|]`, bias `[|M|]`
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

/// y = x W + b for W stored `[in, out]` row-major.
#[inline]
fn affine(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let n_out = b.len();
    debug_assert_eq!(w.len(), x.len() * n_out);
    y.copy_from_slice(b);
    for (i, &xi) in x.iter().enumerate() {
        if xi == 0.0 {
            continue;
        }
        let row = &w[i * n_out..(i + 1) * n_out];
        for (yo, &wo) in y.iter_mut().zip(row) {
            *yo += xi * wo;
        }
    }
}

impl MicronWeights {
    pub fn config(&self) -> MicronConfig {
        MicronConfig::new(self.n_diag, self.n_proc, self.n_med).with_dim(self.dim)
    }

    /// Builds a burn module holding exactly these weights (dropout p from
    /// `config`).
    pub fn to_module(&self, config: &MicronConfig, device: &Device) -> Micron {
        let d = self.dim;
        let t2 = |v: &Vec<f32>, r, c| Param::from_tensor(float_tensor(v.clone(), r, c, device));
        let t1 = |v: &Vec<f32>| {
            let n = v.len();
            Param::from_tensor(Tensor::<1>::from_data(TensorData::new(v.clone(), [n]), device))
        };
        Micron {
            diag_embedding: Embedding { weight: t2(&self.diag_emb, self.n_diag, d) },
            proc_embedding: Embedding { weight: t2(&self.proc_emb, self.n_proc, d) },
            dropout: DropoutConfig::new(config.dropout).init(),
            health_net: Linear { weight: t2(&self.wh, 2 * d, d), bias: Some(t1(&self.bh)) },
            presc_hidden: Linear { weight: t2(&self.w1, d, 4 * d), bias: Some(t1(&self.b1)) },
            presc_out: Linear { weight: t2(&self.w2, 4 * d, self.n_med), bias: Some(t1(&self.b2)) },
        }
    }

    /// h of a visit (no dropout). Codes outside the vocabulary are skipped.
    pub fn health(&self, diag: &[u32], proc: &[u32]) -> Vec<f32> {
        let d = self.dim;
        let mut x = vec![0f32; 2 * d];
        let (xd, xp) = x.split_at_mut(d);
        for &c in diag {
            if let Some(row) = self.diag_emb.get(c as usize * d..(c as usize + 1) * d) {
                xd.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            }
        }
        for &c in proc {
            if let Some(row) = self.proc_emb.get(c as usize * d..(c as usize + 1) * d) {
                xp.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            }
        }
        let mut h = vec![0f32; d];
        affine(&x, &self.wh, &self.bh, &mut h);
        h
    }

    /// h of the empty visit: the health net's bias (h_{-1}).
    pub fn health_empty(&self) -> Vec<f32> {
        self.bh.clone()
    }

    /// The prescription net f(h): `|M|` logits.
    pub fn prescription(&self, h: &[f32]) -> Vec<f32> {
        let mut hidden = vec![0f32; self.b1.len()];
        affine(h, &self.w1, &self.b1, &mut hidden);
        hidden.iter_mut().for_each(|v| *v = v.max(0.0));
        let mut out = vec![0f32; self.n_med];
        affine(&hidden, &self.w2, &self.b2, &mut out);
        out
    }

    /// Checks array sizes against the stated shape.
    pub fn validate(&self) -> Result<(), ArtifactError> {
        let d = self.dim;
        let checks = [
            ("diag_emb", self.diag_emb.len(), self.n_diag * d),
            ("proc_emb", self.proc_emb.len(), self.n_proc * d),
            ("wh", self.wh.len(), 2 * d * d),
            ("bh", self.bh.len(), d),
            ("w1", self.w1.len(), 4 * d * d),
            ("b1", self.b1.len(), 4 * d),
            ("w2", self.w2.len(), 4 * d * self.n_med),
            ("b2", self.b2.len(), self.n_med),
        ];
        for (name, got, want) in checks {
            if got != want {
                return Err(ArtifactError::Mismatch(format!("{name}: {got} values, expected {want}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_count_matches_reference() {
        let cfg = MicronConfig::new(1958, 1430, 131);
        assert_eq!(cfg.num_params(), 275_395);
        let model = cfg.init(&Device::flex());
        assert_eq!(model.num_params(), 275_395);
    }

    #[test]
    fn linear_init_is_torch_default() {
        let model = MicronConfig::new(5, 5, 7).init(&Device::flex());
        let w = model.to_weights();
        let k1 = 1.0 / (64f32).sqrt();
        let k2 = 1.0 / (256f32).sqrt();
        assert!(w.w1.iter().chain(&w.b1).all(|v| v.abs() <= k1));
        assert!(w.w2.iter().chain(&w.b2).all(|v| v.abs() <= k2));
        // Biases are not zero (burn's default for some layers) but spread.
        assert!(w.b2.iter().any(|v| v.abs() > k2 / 4.0));
        assert!(w.diag_emb.iter().all(|v| v.abs() <= 0.1));
    }
}
