//! MICRON (micron.md): model, training, the residual-recurrence inference and
//! the on-disk artifact.
//!
//! Artifact directory (`models/micron/<version>/`):
//! - `weights.safetensors`: parameters under the PyTorch reference's names
//!   and layout (Linear weights `[out, in]`);
//! - `config.json`: [`MicronConfig`];
//! - `vocab.json`: [`Vocabularies`] (`{"diag": [...], "proc": [...], "med": [...]}`);
//! - written by training when available: `metrics.json` ([`TrainSummary`]),
//!   `split.json` ([`Split`]).
pub mod inference;
pub mod model;
pub mod training;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use burn::config::Config;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

pub use inference::{MicronPredictor, MicronState, PrevSource, StepOutput, Thresholds};
pub use model::{ArtifactError, Micron, MicronConfig, MicronWeights};
pub use training::{EpochReport, Recipe, TrainConfig, TrainError, TrainEvent, TrainOutcome, train, train_from_weights};

use crate::ml::data::{Split, Vocabularies};

pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const VOCAB_FILE: &str = "vocab.json";
pub const METRICS_FILE: &str = "metrics.json";
pub const SPLIT_FILE: &str = "split.json";

/// What training records next to the weights.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub best_epoch: Option<usize>,
    pub history: Vec<EpochReport>,
    pub cancelled: bool,
    /// Test metrics or anything else the caller wants to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

/// A loaded MICRON model: shape, vocabularies and weights.
#[derive(Clone, Debug)]
pub struct MicronArtifact {
    pub config: MicronConfig,
    pub vocab: Vocabularies,
    pub weights: MicronWeights,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io { path: path.display().to_string(), source }
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ArtifactError> {
    let s = serde_json::to_string_pretty(value)
        .map_err(|e| ArtifactError::Json { path: path.display().to_string(), msg: e.to_string() })?;
    fs::write(path, s).map_err(io_err(path))
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ArtifactError> {
    let s = fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&s).map_err(|e| ArtifactError::Json { path: path.display().to_string(), msg: e.to_string() })
}

/// Tensor shapes listed in a safetensors file's header.
pub fn safetensors_shapes(path: &Path) -> Result<HashMap<String, Vec<usize>>, ArtifactError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io_err(path))?;
    let len = u64::from_le_bytes(len) as usize;
    if len > 100 << 20 {
        return Err(ArtifactError::Weights(format!("{}: implausible header", path.display())));
    }
    let mut header = vec![0u8; len];
    f.read_exact(&mut header).map_err(io_err(path))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| ArtifactError::Json { path: path.display().to_string(), msg: e.to_string() })?;
    let mut out = HashMap::new();
    if let Some(obj) = v.as_object() {
        for (k, t) in obj {
            if let Some(shape) = t.get("shape").and_then(|s| s.as_array()) {
                out.insert(k.clone(), shape.iter().filter_map(|d| d.as_u64()).map(|d| d as usize).collect());
            }
        }
    }
    Ok(out)
}

impl MicronArtifact {
    pub fn from_outcome(outcome: &TrainOutcome, vocab: Vocabularies) -> Self {
        Self { config: outcome.config.clone(), vocab, weights: outcome.weights.clone() }
    }

    /// The fast plain-Rust predictor.
    pub fn predictor(&self) -> MicronPredictor {
        MicronPredictor::new(self.weights.clone())
    }

    /// The burn module on `device`.
    pub fn module(&self, device: &Device) -> Micron {
        self.weights.to_module(&self.config, device)
    }

    fn check(&self) -> Result<(), ArtifactError> {
        self.weights.validate()?;
        let (c, w, v) = (&self.config, &self.weights, &self.vocab);
        if (c.n_diag, c.n_proc, c.n_med, c.dim) != (w.n_diag, w.n_proc, w.n_med, w.dim) {
            return Err(ArtifactError::Mismatch(format!("config {c:?} does not match the weights")));
        }
        if (v.diag.len(), v.proc.len(), v.med.len()) != (c.n_diag, c.n_proc, c.n_med) {
            return Err(ArtifactError::Mismatch(format!(
                "vocabulary sizes {}/{}/{} differ from the model's {}/{}/{}",
                v.diag.len(),
                v.proc.len(),
                v.med.len(),
                c.n_diag,
                c.n_proc,
                c.n_med
            )));
        }
        Ok(())
    }

    /// Writes weights, config and vocabularies into `dir` (created if
    /// needed; existing files are replaced). `device` is only used to
    /// stage the tensors for burn's safetensors writer.
    pub fn save(&self, dir: &Path, device: &Device) -> Result<(), ArtifactError> {
        self.check()?;
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        self.module(device).save_safetensors(&dir.join(WEIGHTS_FILE))?;
        let cfg = dir.join(CONFIG_FILE);
        self.config.save(&cfg).map_err(io_err(&cfg))?;
        write_json(&dir.join(VOCAB_FILE), &self.vocab)
    }

    /// Reads an artifact written by [`MicronArtifact::save`].
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ArtifactError> {
        let cfg_path = dir.join(CONFIG_FILE);
        let config = MicronConfig::load(&cfg_path)
            .map_err(|e| ArtifactError::Json { path: cfg_path.display().to_string(), msg: e.to_string() })?;
        let vocab: Vocabularies = read_json(&dir.join(VOCAB_FILE))?;
        let module = config.init(device).load_safetensors(&dir.join(WEIGHTS_FILE))?;
        let art = Self { weights: module.to_weights(), config, vocab };
        art.check()?;
        Ok(art)
    }

    /// Imports the reference implementation's weights: a PyTorch state dict
    /// saved as safetensors (`embeddings.0.weight`, `embeddings.1.weight`,
    /// `health_net.0.*`, `prescription_net.0.*`, `prescription_net.2.*`)
    /// and its vocabularies as `voc.json`. D and the vocabulary sizes are
    /// read from the file and checked against the vocabularies.
    pub fn import_reference(state_dict: &Path, voc_json: &Path, device: &Device) -> Result<Self, ArtifactError> {
        let vocab: Vocabularies = read_json(voc_json)?;
        let shapes = safetensors_shapes(state_dict)?;
        let shape = |k: &str| {
            shapes
                .get(k)
                .cloned()
                .ok_or_else(|| ArtifactError::Weights(format!("{}: no tensor {k}", state_dict.display())))
        };
        let e0 = shape("embeddings.0.weight")?;
        let e1 = shape("embeddings.1.weight")?;
        let out = shape("prescription_net.2.bias")?;
        if e0.len() != 2 || e1.len() != 2 || out.len() != 1 {
            return Err(ArtifactError::Weights("unexpected tensor ranks".into()));
        }
        let config = MicronConfig::new(e0[0], e1[0], out[0]).with_dim(e0[1]);
        let module = config.init(device).load_safetensors(state_dict)?;
        let art = Self { weights: module.to_weights(), config, vocab };
        art.check()?;
        Ok(art)
    }
}

/// A MICRON version ready to serve: the artifact and its plain-Rust
/// predictor (built once per load, not per request).
#[derive(Clone, Debug)]
pub struct LoadedMicron {
    pub artifact: MicronArtifact,
    pub predictor: MicronPredictor,
}

impl From<MicronArtifact> for LoadedMicron {
    fn from(artifact: MicronArtifact) -> Self {
        let predictor = artifact.predictor();
        Self { artifact, predictor }
    }
}

/// Writes `metrics.json` (and `split.json` when given) beside an artifact.
pub fn save_training_record(dir: &Path, summary: &TrainSummary, split: Option<&Split>) -> Result<(), ArtifactError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_json(&dir.join(METRICS_FILE), summary)?;
    if let Some(split) = split {
        write_json(&dir.join(SPLIT_FILE), split)?;
    }
    Ok(())
}

impl From<&TrainOutcome> for TrainSummary {
    fn from(o: &TrainOutcome) -> Self {
        Self { best_epoch: o.best_epoch, history: o.history.clone(), cancelled: o.cancelled, extra: None }
    }
}
