//! What a running job sees: progress reporting, cancellation, the models
//! directory, its staging folder for artifacts, and the training data.
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::data::{DataSnapshot, TrainingData};
use crate::{
    registry::{LoadedModel, ModelKind},
    store::{self, jobs::LeaseState},
};

/// Returned (as an `anyhow::Error`) by a job that stopped because it was
/// asked to: cancelled by an admin, its worker shutting down, or its lease
/// lost.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the job was asked to stop")]
pub struct Cancelled;

/// A progress event. Steps are throttled (at most a few per second are
/// stored); epochs and logs are always stored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Progress {
    /// One training (or evaluation) step, usually a batch.
    Step {
        epoch: u32,
        step: u64,
        /// Steps in this epoch, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        steps: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loss: Option<f64>,
        /// Items (visits, patients) per second.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        throughput: Option<f64>,
        /// Estimated seconds until the job ends.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eta_secs: Option<f64>,
    },
    /// The end of an epoch, with validation metrics.
    Epoch {
        epoch: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epochs: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loss: Option<f64>,
        /// Validation metrics (any JSON object).
        #[schema(value_type = Object)]
        metrics: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eta_secs: Option<f64>,
    },
    /// A message.
    Log { message: String },
}

impl Progress {
    pub fn step(epoch: u32, step: u64) -> Self {
        Progress::Step { epoch, step, steps: None, loss: None, throughput: None, eta_secs: None }
    }
    pub fn epoch(epoch: u32, epochs: Option<u32>, metrics: Value) -> Self {
        Progress::Epoch { epoch, epochs, loss: None, metrics, eta_secs: None }
    }
    pub fn log(message: impl Into<String>) -> Self {
        Progress::Log { message: message.into() }
    }
    pub fn of(mut self, total: u64) -> Self {
        if let Progress::Step { steps, .. } = &mut self {
            *steps = Some(total);
        }
        self
    }
    pub fn loss(mut self, l: f64) -> Self {
        match &mut self {
            Progress::Step { loss, .. } | Progress::Epoch { loss, .. } => *loss = Some(l),
            Progress::Log { .. } => {}
        }
        self
    }
    pub fn throughput(mut self, t: f64) -> Self {
        if let Progress::Step { throughput, .. } = &mut self {
            *throughput = Some(t);
        }
        self
    }
    pub fn eta(mut self, secs: f64) -> Self {
        match &mut self {
            Progress::Step { eta_secs, .. } | Progress::Epoch { eta_secs, .. } => *eta_secs = Some(secs),
            Progress::Log { .. } => {}
        }
        self
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Progress::Step { .. } => "step",
            Progress::Epoch { .. } => "epoch",
            Progress::Log { .. } => "log",
        }
    }
}

/// A model version the job produced in [`JobContext::artifact_dir`]. The
/// worker computes the checksums, moves the folder to
/// `<models>/<kind>/<version>/` and records it, with the job, the data
/// snapshot and `parent` as lineage.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub kind: ModelKind,
    /// The configuration (also written as `config.json`).
    pub config: Value,
    /// Metrics (also written as `metrics.json`), e.g. `{"val": .., "test": ..}`.
    pub metrics: Value,
    /// Validation score, higher is better (automatic promotion compares it).
    pub val_score: Option<f64>,
    /// Vocabulary summary (sizes).
    pub vocab: Value,
    /// The version this one was trained from (fine-tuning), if any.
    pub parent: Option<Uuid>,
}

/// What a successful job produced.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A model version to register.
    Version(NewVersion),
    /// A result stored with the job (e.g. evaluation metrics).
    Result(Value),
}

/// Flags the worker sets and the job reads.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    pub cancel: AtomicBool,
    pub lost: AtomicBool,
    pub shutdown: Arc<AtomicBool>,
}

impl Flags {
    pub fn apply(&self, s: LeaseState) {
        if !s.held {
            self.lost.store(true, Ordering::SeqCst);
        }
        if s.cancel_requested {
            self.cancel.store(true, Ordering::SeqCst);
        }
    }
}

/// What a running job sees. Its methods block: call them from `run` (a
/// blocking thread), never from async code.
pub struct JobContext {
    pub(crate) job_id: Uuid,
    pub(crate) attempt: i32,
    pub(crate) owner: String,
    pub(crate) db: PgPool,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) flags: Arc<Flags>,
    pub(crate) models_dir: PathBuf,
    pub(crate) artifact_dir: PathBuf,
    pub(crate) snapshot: DataSnapshot,
    pub(crate) last_step: Mutex<Option<Instant>>,
    pub(crate) step_interval: Duration,
}

impl JobContext {
    pub fn job_id(&self) -> Uuid {
        self.job_id
    }

    /// 1 on the first run, 2 on the first retry...
    pub fn attempt(&self) -> i32 {
        self.attempt
    }

    /// Records a progress event (and renews the lease). Step events closer
    /// than the step interval to the previous stored one are dropped; a
    /// failed write is logged, never fatal.
    pub fn progress(&self, event: Progress) {
        if let Progress::Step { .. } = event {
            let mut last = self.last_step.lock().expect("progress lock");
            if last.is_some_and(|t| t.elapsed() < self.step_interval) {
                return;
            }
            *last = Some(Instant::now());
        }
        let data = serde_json::to_value(&event).expect("progress serializes");
        let r = self.rt.block_on(store::jobs::append_event_fenced(
            &self.db,
            self.job_id,
            &self.owner,
            self.attempt,
            event.kind(),
            &data,
        ));
        match r {
            Ok(state) => self.flags.apply(state),
            Err(e) => tracing::warn!(job_id = %self.job_id, error = %e, "could not store a progress event"),
        }
    }

    /// Whether the job should stop: an admin cancelled it, the worker is
    /// shutting down (the job will be requeued), or the lease was lost.
    /// Cheap (an atomic read): check it every batch.
    pub fn is_cancelled(&self) -> bool {
        self.flags.cancel.load(Ordering::Relaxed)
            || self.flags.lost.load(Ordering::Relaxed)
            || self.flags.shutdown.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` when the job should stop: `ctx.checkpoint()?`.
    pub fn checkpoint(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() { Err(Cancelled) } else { Ok(()) }
    }

    /// The models directory (shared by every worker and replica).
    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }

    /// An empty folder for this attempt's artifacts. It becomes the model
    /// version's folder on success and is deleted otherwise.
    pub fn artifact_dir(&self) -> &Path {
        &self.artifact_dir
    }

    /// Writes `value` as pretty JSON into the artifact folder.
    pub fn write_json(&self, name: &str, value: &impl Serialize) -> anyhow::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value)?;
        bytes.push(b'\n');
        std::fs::write(self.artifact_dir.join(name), bytes)?;
        Ok(())
    }

    /// The data snapshot of this job (fixed at its first start).
    pub fn snapshot(&self) -> &DataSnapshot {
        &self.snapshot
    }

    /// The stored visits as of the job's snapshot, by patient.
    /// The stored interacting medication pairs (`medchange import ddi`).
    pub fn load_ddi_pairs(&self) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self.rt.block_on(sqlx::query_as("SELECT code_a, code_b FROM ddi_pairs").fetch_all(&self.db))?)
    }

    pub fn load_training_data(&self) -> anyhow::Result<TrainingData> {
        self.rt.block_on(super::data::load(&self.db, &self.snapshot))
    }

    /// Loads a registered model version, verifying its checksums.
    pub fn load_model(&self, id: Uuid) -> anyhow::Result<LoadedModel> {
        let row = self
            .rt
            .block_on(store::models::get(&self.db, id))?
            .ok_or_else(|| anyhow::anyhow!("model version {id} does not exist"))?;
        Ok(crate::registry::load_blocking(&self.models_dir, &row)?)
    }
}
