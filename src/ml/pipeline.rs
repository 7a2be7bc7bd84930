//! Training and evaluation runs shared by the CLI and the job queue: load a
//! cohort (files or the database), split it by patient, build vocabularies
//! from the training part, encode, train, evaluate against the baselines.
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{
    baselines::{
        copy_prev::copy_prev_patients,
        gru::{GruArtifact, GruBaselineConfig, GruPredictor, GruTrainConfig, train_gru},
    },
    data::{Dataset, DdiMatrix, Patient, RawPatient, Split, UnknownCodes, Vocabularies},
    formats,
    metrics::{self, MetricOptions, Metrics, PatientPrediction},
    micron::{MicronArtifact, MicronConfig, TrainConfig, TrainEvent, TrainSummary, Thresholds, save_training_record, train},
};

/// A cohort on disk: a MICRON layout folder (records.json + voc.json, and a
/// DDI CSV beside them if present) or a native JSON-lines file.
pub fn load_path(path: &Path) -> anyhow::Result<(Vec<RawPatient>, Vec<(String, String)>)> {
    if path.is_dir() {
        let (patients, _) = formats::read_micron_layout(path)?;
        let mut pairs = vec![];
        for name in ["ddi_pairs.csv", "ddi_atc3_pairs.csv"] {
            if path.join(name).exists() {
                pairs = formats::read_ddi_csv(&path.join(name))?;
                break;
            }
        }
        Ok((patients, pairs))
    } else {
        let patients = formats::read_native_jsonl(path)?.iter().map(|p| p.to_raw()).collect();
        Ok((patients, vec![]))
    }
}

/// A cohort ready for a model: split, vocabularies from the training part,
/// encoded patients and the interaction matrix.
pub struct Prepared {
    pub split: Split,
    pub data: Dataset,
    pub ddi: DdiMatrix,
    pub unknown: UnknownCodes,
}

impl Prepared {
    /// Splits with `split` (default: the reference's seeded 60/20/20 shuffle)
    /// and encodes with vocabularies built from the training patients, or
    /// with `vocab` when evaluating an existing model.
    pub fn new(raw: &[RawPatient], ddi_pairs: &[(String, String)], split: Option<Split>, vocab: Option<Vocabularies>) -> anyhow::Result<Self> {
        let split = split.unwrap_or_else(|| Split::reference(raw.len()));
        split.validate(raw.len()).map_err(|e| anyhow::anyhow!("split does not fit the cohort: {e}"))?;
        let vocab = vocab.unwrap_or_else(|| Vocabularies::from_training(raw, &split.train));
        let (data, unknown) = Dataset::encode(vocab, raw);
        let (ddi, _skipped) = DdiMatrix::from_pairs(ddi_pairs, &data.vocab.med);
        Ok(Self { split, data, ddi, unknown })
    }

    pub fn part(&self, idx: &[usize]) -> Vec<Patient> {
        idx.iter().map(|&i| self.data.patients[i].clone()).collect()
    }
}

/// Row names of an [`Evaluation`].
pub const MICRON_ROW: &str = "MICRON";
pub const COPY_PREVIOUS_ROW: &str = "copy-previous";
pub const GRU_ROW: &str = "GRU (full history)";

/// The metric table rows of one evaluation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Evaluation {
    pub split: String,
    pub thresholds: (f32, f32),
    /// (model, quirk off, quirk on)
    pub rows: Vec<(String, Metrics, Metrics)>,
}

impl Evaluation {
    pub fn table(&self) -> String {
        let mut rows = vec![];
        for (name, clean, quirk) in &self.rows {
            rows.push((format!("{name}"), *clean));
            rows.push((format!("{name} (ref. quirk)"), *quirk));
        }
        let borrowed: Vec<(&str, Metrics)> = rows.iter().map(|(n, m)| (n.as_str(), *m)).collect();
        format!(
            "{} split, MICRON thresholds add {:.3} / remove {:.3}\n{}",
            self.split,
            self.thresholds.0,
            self.thresholds.1,
            metrics::format_table(&borrowed)
        )
    }
}

fn both(preds: &[PatientPrediction], ddi: &DdiMatrix) -> (Metrics, Metrics) {
    (metrics::evaluate(preds, ddi, MetricOptions::CLEAN), metrics::evaluate(preds, ddi, MetricOptions::REFERENCE))
}

/// Evaluates MICRON (when given), copy-previous and the GRU baseline (when
/// given) on `part` of the split. `calibrate`: MICRON's thresholds from the
/// validation split (micron.md), else 0.8 / 0.2.
pub fn evaluate(
    micron: Option<&MicronArtifact>,
    gru: Option<&GruPredictor>,
    prep: &Prepared,
    part: &str,
    calibrate: bool,
) -> anyhow::Result<Evaluation> {
    let idx = match part {
        "test" => &prep.split.test,
        "val" | "validation" => &prep.split.val,
        "train" => &prep.split.train,
        other => anyhow::bail!("unknown split part {other:?} (test, val or train)"),
    };
    let patients = prep.part(idx);
    let n_med = prep.data.vocab.med.len();
    let mut rows = vec![];
    let mut th = Thresholds::default();
    if let Some(micron) = micron {
        let predictor = micron.predictor();
        if calibrate {
            let val = prep.part(&prep.split.val);
            let val_preds = predictor.predict_patients(val.iter().map(|p| p.visits.as_slice()), Thresholds::default());
            let (add, remove) = metrics::calibrate_from_predictions(&val_preds, n_med);
            th = Thresholds { add, remove };
        }
        let preds = predictor.predict_patients(patients.iter().map(|p| p.visits.as_slice()), th);
        let (c, q) = both(&preds, &prep.ddi);
        rows.push((MICRON_ROW.to_string(), c, q));
    }
    let preds = copy_prev_patients(patients.iter().map(|p| p.visits.as_slice()), n_med);
    let (c, q) = both(&preds, &prep.ddi);
    rows.push((COPY_PREVIOUS_ROW.to_string(), c, q));
    if let Some(gru) = gru {
        let preds = gru.predict_patients(patients.iter().map(|p| p.visits.as_slice()));
        let (c, q) = both(&preds, &prep.ddi);
        rows.push((GRU_ROW.to_string(), c, q));
    }
    Ok(Evaluation { split: part.to_string(), thresholds: (th.add, th.remove), rows })
}

/// A training request, as the CLI and the job queue give it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainRequest {
    pub model: ModelKind,
    pub epochs: usize,
    /// `faithful` (reference recipe) or `minibatch`.
    pub recipe: String,
    pub backend: String,
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Micron,
    Gru,
}

/// What [`train_and_save`] measured: the evaluations on the test and
/// validation parts (written to `metrics.json` too) and the training record.
#[derive(Clone, Debug)]
pub struct Trained {
    pub test: Evaluation,
    pub val: Evaluation,
    pub summary: TrainSummary,
}

/// Trains a model on `prep` and writes its artifact folder; returns what it
/// measured, or `None` when cancelled. `on_event` receives step and epoch
/// events (MICRON's and the GRU's alike).
pub fn train_and_save(
    req: &TrainRequest,
    prep: &Prepared,
    on_event: &mut dyn FnMut(&TrainEvent),
    cancel: &dyn Fn() -> bool,
) -> anyhow::Result<Option<Trained>> {
    let backend: super::backend::BackendChoice = req.backend.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let device = backend.device();
    let train_set = prep.part(&prep.split.train);
    let val_set = prep.part(&prep.split.val);
    let (nd, np, nm) = prep.data.vocab.sizes();
    match req.model {
        ModelKind::Micron => {
            let cfg = TrainConfig {
                epochs: req.epochs,
                recipe: match req.recipe.as_str() {
                    "faithful" => super::micron::Recipe::Faithful,
                    "minibatch" => super::micron::Recipe::MiniBatch { batch_patients: 32, lr: 1e-3 },
                    other => anyhow::bail!("unknown recipe {other:?} (faithful or minibatch)"),
                },
                ..TrainConfig::default()
            };
            let outcome = train(&MicronConfig::new(nd, np, nm), &train_set, &val_set, &prep.ddi, &cfg, &device, on_event, cancel)
                .map_err(|e| anyhow::anyhow!("training failed: {e}"))?;
            if outcome.cancelled {
                return Ok(None);
            }
            let art = MicronArtifact::from_outcome(&outcome, prep.data.vocab.clone());
            art.save(&req.out, &device).with_context(|| format!("saving to {}", req.out.display()))?;
            let test = evaluate(Some(&art), None, prep, "test", false)?;
            let val = evaluate(Some(&art), None, prep, "val", false)?;
            let mut summary = TrainSummary::from(&outcome);
            summary.extra = Some(serde_json::json!({"test": test, "val": val, "train_config": cfg}));
            save_training_record(&req.out, &summary, Some(&prep.split))?;
            Ok(Some(Trained { test, val, summary }))
        }
        ModelKind::Gru => {
            let config = GruBaselineConfig::new(nd, np, nm);
            let cfg = GruTrainConfig { epochs: req.epochs, ..GruTrainConfig::default() };
            let outcome = train_gru(&config, &train_set, &val_set, &cfg, &device, on_event, cancel);
            if outcome.cancelled {
                return Ok(None);
            }
            let art = GruArtifact { config, vocab: prep.data.vocab.clone(), predictor: GruPredictor { model: outcome.model, threshold: cfg.threshold } };
            art.save(&req.out).with_context(|| format!("saving to {}", req.out.display()))?;
            let test = evaluate(None, Some(&art.predictor), prep, "test", false)?;
            let val = evaluate(None, Some(&art.predictor), prep, "val", false)?;
            let summary = TrainSummary {
                best_epoch: outcome.best_epoch,
                history: outcome.history,
                cancelled: false,
                extra: Some(serde_json::json!({"test": test, "val": val, "train_config": cfg})),
            };
            save_training_record(&req.out, &summary, Some(&prep.split))?;
            Ok(Some(Trained { test, val, summary }))
        }
    }
}
