//! The worker: claims a job (a committed lease), runs it on a blocking
//! thread while a task renews the heartbeat and picks up cancellation,
//! registers the artifacts it produced, and ends the job. The loop also
//! reaps jobs whose worker went silent.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use super::{Cancelled, JobContext, JobKinds, Outcome, context::Flags, data::DataSnapshot};
use crate::{
    config::JobsArgs,
    registry::{self, Registry},
    store::{
        self,
        jobs::{JobRow, QUEUED_CHANNEL, Reaped},
    },
};

/// A worker identity and what it needs.
pub struct Worker {
    db: PgPool,
    kinds: Arc<JobKinds>,
    registry: Arc<Registry>,
    cfg: Arc<JobsArgs>,
    owner: String,
    shutdown: Arc<AtomicBool>,
}

/// A unique lease owner name: host, process and worker number.
pub fn owner_name(n: usize) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".into());
    let r = Uuid::new_v4().simple().to_string();
    format!("{host}/{}/{n}-{}", std::process::id(), &r[..6])
}

/// How a run ended, before it is written.
enum End {
    Succeeded,
    Failed(String),
    Cancelled,
    Interrupted,
    Lost,
}

impl Worker {
    pub fn new(
        db: PgPool,
        kinds: Arc<JobKinds>,
        registry: Arc<Registry>,
        cfg: Arc<JobsArgs>,
        owner: impl Into<String>,
    ) -> Self {
        Self { db, kinds, registry, cfg, owner: owner.into(), shutdown: Arc::default() }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Set to make the running job stop at its next batch (it is requeued)
    /// and the loop stop claiming.
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// Claims the oldest runnable job of a kind this worker knows.
    pub async fn claim(&self) -> sqlx::Result<Option<JobRow>> {
        store::jobs::claim(&self.db, &self.owner, &self.kinds.names()).await
    }

    /// Claims one job and runs it to its end; `None` when the queue has
    /// nothing runnable. What tests and the loop call.
    pub async fn claim_and_run_one(&self) -> anyhow::Result<Option<JobRow>> {
        match self.claim().await? {
            Some(job) => Ok(Some(self.run_claimed(job).await?)),
            None => Ok(None),
        }
    }

    /// Runs a job this worker has claimed; returns the job as it ended.
    pub async fn run_claimed(&self, job: JobRow) -> anyhow::Result<JobRow> {
        let span = tracing::info_span!("job", job_id = %job.id, kind = %job.kind, attempt = job.attempts, worker = %self.owner);
        self.run_inner(job).instrument(span).await
    }

    async fn run_inner(&self, job: JobRow) -> anyhow::Result<JobRow> {
        let (id, attempt) = (job.id, job.attempts);
        tracing::info!("job started");
        let flags = Arc::new(Flags {
            cancel: AtomicBool::new(job.cancel_requested),
            lost: AtomicBool::new(false),
            shutdown: self.shutdown.clone(),
        });
        let staging = self.registry.staging_dir().join(format!("{id}-{attempt}"));
        let end = match self.kinds.get(&job.kind) {
            None => End::Failed(format!("this worker cannot run `{}` jobs", job.kind)),
            Some(kind) => {
                let snapshot: DataSnapshot = serde_json::from_value(
                    job.data_snapshot.clone().ok_or_else(|| anyhow::anyhow!("the claim recorded no data snapshot"))?,
                )?;
                // Crashed earlier attempts may have left partial folders.
                for earlier in 1..=attempt {
                    let _ = std::fs::remove_dir_all(self.registry.staging_dir().join(format!("{id}-{earlier}")));
                }
                std::fs::create_dir_all(&staging)?;
                let ctx = JobContext {
                    job_id: id,
                    attempt,
                    owner: self.owner.clone(),
                    db: self.db.clone(),
                    rt: tokio::runtime::Handle::current(),
                    flags: flags.clone(),
                    models_dir: self.registry.dir().to_path_buf(),
                    artifact_dir: staging.clone(),
                    snapshot: snapshot.clone(),
                    last_step: Mutex::new(None),
                    step_interval: Duration::from_secs_f64(self.cfg.step_event_interval_secs.max(0.0)),
                };
                let heartbeat = tokio::spawn(heartbeat(
                    self.db.clone(),
                    id,
                    self.owner.clone(),
                    attempt,
                    flags.clone(),
                    self.cfg.heartbeat(),
                ));
                let span = tracing::Span::current();
                let params = job.params.clone();
                let ran = tokio::task::spawn_blocking(move || span.in_scope(|| kind.run(params, &ctx))).await;
                heartbeat.abort();
                if flags.lost.load(Ordering::SeqCst) {
                    End::Lost
                } else {
                    match ran {
                        Err(join) => End::Failed(format!("the job panicked: {}", panic_message(join))),
                        Ok(Ok(outcome)) => self.register(&job, &snapshot, &staging, outcome).await?,
                        Ok(Err(e)) if flags.cancel.load(Ordering::SeqCst) && is_stop(&e, &flags) => End::Cancelled,
                        Ok(Err(e)) if flags.shutdown.load(Ordering::SeqCst) && is_stop(&e, &flags) => End::Interrupted,
                        Ok(Err(e)) => End::Failed(format!("{e:#}")),
                    }
                }
            }
        };
        let _ = std::fs::remove_dir_all(&staging);
        match &end {
            End::Succeeded => {} // written with the registration
            End::Failed(why) => {
                tracing::warn!(error = %why, "job failed");
                let mut tx = self.db.begin().await?;
                if let Some(status) = store::jobs::fail_or_retry(
                    &mut *tx,
                    id,
                    &self.owner,
                    attempt,
                    why,
                    false,
                    self.cfg.retry_backoff_secs,
                )
                .await?
                {
                    store::jobs::append_event(
                        &mut *tx,
                        id,
                        attempt,
                        "status",
                        &json!({"status": status, "error": why}),
                    )
                    .await?;
                }
                tx.commit().await?;
            }
            End::Cancelled => {
                tracing::info!("job cancelled");
                self.finish(id, attempt, "cancelled", Some("cancelled by an admin"), None, None).await?;
            }
            End::Interrupted => {
                tracing::info!("job interrupted by shutdown; returned to the queue");
                let mut tx = self.db.begin().await?;
                if store::jobs::release(
                    &mut *tx,
                    id,
                    &self.owner,
                    attempt,
                    "interrupted by a worker shutdown; requeued",
                )
                .await?
                {
                    store::jobs::append_event(
                        &mut *tx,
                        id,
                        attempt,
                        "status",
                        &json!({"status": "queued", "reason": "worker shutdown"}),
                    )
                    .await?;
                }
                tx.commit().await?;
            }
            End::Lost => tracing::warn!("the lease was lost (reaped or taken over); results discarded"),
        }
        store::jobs::get(&self.db, id).await?.ok_or_else(|| anyhow::anyhow!("job {id} vanished"))
    }

    /// Ends the job (fenced) with its final status event, in one transaction.
    async fn finish(
        &self,
        id: Uuid,
        attempt: i32,
        status: &str,
        error: Option<&str>,
        result: Option<&Value>,
        model_id: Option<Uuid>,
    ) -> anyhow::Result<bool> {
        let mut tx = self.db.begin().await?;
        if !store::jobs::finish(&mut *tx, id, &self.owner, attempt, status, error, result, model_id).await? {
            return Ok(false);
        }
        store::jobs::append_event(
            &mut *tx,
            id,
            attempt,
            "status",
            &json!({"status": status, "error": error, "model_id": model_id}),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Registers what a successful run produced and ends the job as
    /// succeeded, atomically: the version row and the job's end commit
    /// together, and a folder whose registration did not commit is removed.
    async fn register(
        &self,
        job: &JobRow,
        snapshot: &DataSnapshot,
        staging: &std::path::Path,
        outcome: Outcome,
    ) -> anyhow::Result<End> {
        let v = match outcome {
            Outcome::Result(result) => {
                return Ok(if self.finish(job.id, job.attempts, "succeeded", None, Some(&result), None).await? {
                    End::Succeeded
                } else {
                    End::Lost
                });
            }
            Outcome::Version(v) => v,
        };
        let model_id = Uuid::now_v7();
        let version = registry::new_version(model_id);
        let kind = v.kind.as_str();
        let installed = {
            let (reg, staging, version) = (self.registry.clone(), staging.to_path_buf(), version.clone());
            tokio::task::spawn_blocking(move || reg.install_blocking(&staging, kind, &version)).await?
        };
        let (rel, files) = match installed {
            Ok(x) => x,
            Err(e) => return Ok(End::Failed(format!("registering the artifacts failed: {e:#}"))),
        };
        let snapshot = serde_json::to_value(snapshot)?;
        let new = store::models::NewModel {
            id: model_id,
            kind,
            version: &version,
            config: &v.config,
            metrics: &v.metrics,
            val_score: v.val_score,
            vocab: &v.vocab,
            artifact_path: &rel,
            files: &files,
            source: "job",
            job_id: Some(job.id),
            data_snapshot: Some(&snapshot),
            parent_id: v.parent,
        };
        let committed: anyhow::Result<bool> = async {
            let mut tx = self.db.begin().await?;
            let row = store::models::insert(&mut *tx, &new).await?;
            if !store::jobs::finish(&mut *tx, job.id, &self.owner, job.attempts, "succeeded", None, None, Some(row.id))
                .await?
            {
                return Ok(false);
            }
            store::jobs::append_event(
                &mut *tx,
                job.id,
                job.attempts,
                "status",
                &json!({"status": "succeeded", "model_id": row.id, "version": version}),
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        }
        .await;
        match committed {
            Ok(true) => {}
            Ok(false) => {
                self.registry.discard(&rel);
                return Ok(End::Lost);
            }
            Err(e) => {
                self.registry.discard(&rel);
                return Err(e);
            }
        }
        tracing::info!(model_id = %model_id, %version, "job succeeded; model version registered");
        if let Some(margin) = self.cfg.auto_promote_margin
            && let Some(row) = store::models::get(&self.db, model_id).await?
        {
            match self.registry.maybe_promote(&row, margin).await {
                Ok(true) => tracing::info!(%version, "new version promoted automatically"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "automatic promotion failed"),
            }
        }
        Ok(End::Succeeded)
    }

    /// Claims and runs jobs until `shutdown` turns true (or its sender is
    /// dropped). Wakes on a queued-job notification or every poll interval;
    /// reaps stale leases along the way. On shutdown the running job is
    /// asked to stop and goes back to the queue.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let flag = self.shutdown.clone();
        let mut watch = shutdown.clone();
        let watcher = tokio::spawn(async move {
            while !*watch.borrow_and_update() {
                if watch.changed().await.is_err() {
                    break;
                }
            }
            flag.store(true, Ordering::SeqCst);
        });
        let mut listener = match PgListener::connect_with(&self.db).await {
            Ok(mut l) => l.listen(QUEUED_CHANNEL).await.ok().map(|_| l),
            Err(_) => None,
        };
        let reap_every = Duration::from_secs_f64((self.cfg.lease_timeout_secs / 4.0).max(0.1));
        let mut last_reap: Option<Instant> = None;
        tracing::info!(worker = %self.owner, kinds = ?self.kinds.names(), "worker started");
        while !self.shutdown.load(Ordering::SeqCst) {
            if last_reap.is_none_or(|t| t.elapsed() >= reap_every) {
                if let Err(e) = reap(&self.db, &self.cfg).await {
                    tracing::warn!(error = %e, "reaping stale jobs failed");
                }
                last_reap = Some(Instant::now());
            }
            match self.claim_and_run_one().await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => tracing::error!(error = format!("{e:#}"), "running a job failed"),
            }
            let mut listener_failed = false;
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll()) => {}
                r = async { match listener.as_mut() { Some(l) => l.recv().await.map(|_| ()), None => std::future::pending().await } } => {
                    listener_failed = r.is_err();
                }
                changed = shutdown.changed() => {
                    // Set the flag here too: the watcher task may not have run yet.
                    if changed.is_err() || *shutdown.borrow() {
                        self.shutdown.store(true, Ordering::SeqCst);
                    }
                }
            }
            if listener_failed {
                tracing::warn!("lost the job notification channel; polling only");
                listener = None;
            }
        }
        watcher.abort();
        tracing::info!(worker = %self.owner, "worker stopped");
    }
}

fn is_stop(e: &anyhow::Error, flags: &Flags) -> bool {
    // A job that noticed the flag returns `Cancelled`; one that failed some
    // other way while the flag was up is treated as stopped too.
    e.is::<Cancelled>() || flags.cancel.load(Ordering::SeqCst) || flags.shutdown.load(Ordering::SeqCst)
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into()),
        Err(e) => e.to_string(),
    }
}

async fn heartbeat(db: PgPool, id: Uuid, owner: String, attempt: i32, flags: Arc<Flags>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match store::jobs::heartbeat(&db, id, &owner, attempt).await {
            Ok(s) => {
                flags.apply(s);
                if !s.held {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// Takes back jobs whose worker stopped heartbeating, per the retry policy
/// (requeued with backoff while attempts remain, else failed; cancelled if
/// cancellation was requested), writing a status event for each.
pub async fn reap(db: &PgPool, cfg: &JobsArgs) -> sqlx::Result<Vec<Reaped>> {
    let mut tx = db.begin().await?;
    let reaped = store::jobs::reap(&mut *tx, cfg.lease_timeout_secs, cfg.retry_backoff_secs).await?;
    for r in &reaped {
        tracing::warn!(job_id = %r.id, status = %r.status, worker = ?r.owner, "reaped a job whose worker stopped heartbeating");
        store::jobs::append_event(
            &mut *tx,
            r.id,
            r.attempts,
            "status",
            &json!({"status": r.status, "reason": "worker stopped heartbeating", "worker": r.owner}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(reaped)
}
