//! The job queue's SQL. Claiming is one autocommitted statement (a committed
//! lease); every later write of the running worker is fenced by its owner
//! and attempt number.
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

/// Channel notified when a job is queued (workers wake up at once).
pub const QUEUED_CHANNEL: &str = "medchange_jobs";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub kind: String,
    pub params: Value,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_after: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    pub progress: Option<Value>,
    pub error: Option<String>,
    pub data_snapshot: Option<Value>,
    pub result: Option<Value>,
    pub model_id: Option<Uuid>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_event_id: i64,
}

macro_rules! job_cols {
    () => {
        "id, kind, params, status, attempts, max_attempts, run_after, lease_owner, heartbeat_at, cancel_requested, \
         progress, error, data_snapshot, result, model_id, created_by, created_at, started_at, finished_at, last_event_id"
    };
}

impl JobRow {
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub job_id: Uuid,
    pub id: i64,
    pub attempt: i32,
    pub kind: String,
    pub data: Value,
    pub created_at: DateTime<Utc>,
}

/// Queues a job and wakes the workers (the notification is delivered when
/// the caller's transaction commits).
pub async fn insert(
    conn: &mut sqlx::PgConnection,
    kind: &str,
    params: &Value,
    max_attempts: i32,
    created_by: Option<Uuid>,
) -> sqlx::Result<JobRow> {
    let row: JobRow = sqlx::query_as(concat!(
        "INSERT INTO jobs (id, kind, params, max_attempts, created_by) VALUES ($1, $2, $3, $4, $5) RETURNING ",
        job_cols!()
    ))
    .bind(Uuid::now_v7())
    .bind(kind)
    .bind(params)
    .bind(max_attempts)
    .bind(created_by)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)").bind(QUEUED_CHANNEL).bind(kind).execute(&mut *conn).await?;
    Ok(row)
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(concat!("SELECT ", job_cols!(), " FROM jobs WHERE id = $1")).bind(id).fetch_optional(db).await
}

/// Newest first, before `before` (ids are time-ordered UUIDv7).
pub async fn list(
    db: impl PgExecutor<'_>,
    status: Option<&str>,
    kind: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        job_cols!(),
        " FROM jobs WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR kind = $2)
           AND ($3::uuid IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
    ))
    .bind(status)
    .bind(kind)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Claims the oldest runnable job of one of `kinds` for `owner`: one
/// autocommitted statement, so the lease is committed before the job runs.
/// The same statement records the data snapshot (first attempt only) and
/// the `running` status event.
pub async fn claim(db: impl PgExecutor<'_>, owner: &str, kinds: &[String]) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(concat!(
        "WITH snap AS (
            SELECT jsonb_build_object(
                'as_of', (SELECT max(created_at) FROM visits),
                'last_visit_id', (SELECT id FROM visits ORDER BY created_at DESC, id DESC LIMIT 1),
                'visits', (SELECT count(*) FROM visits),
                'patients', (SELECT count(DISTINCT patient_id) FROM visits),
                'taken_at', now()) AS s),
         j AS (
            UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = $1, heartbeat_at = now(),
                   started_at = coalesce(started_at, now()), error = NULL, last_event_id = last_event_id + 1,
                   data_snapshot = coalesce(data_snapshot, (SELECT s FROM snap))
            WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND run_after <= now() AND kind = ANY($2)
                        ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING *),
         e AS (
            INSERT INTO job_events (job_id, id, attempt, kind, data)
            SELECT id, last_event_id, attempts, 'status',
                   jsonb_build_object('status', 'running', 'attempt', attempts, 'worker', $1::text) FROM j)
         SELECT ",
        job_cols!(),
        " FROM j"
    ))
    .bind(owner)
    .bind(kinds)
    .fetch_optional(db)
    .await
}

/// What a fenced write learns: whether the lease still holds, and whether
/// an admin asked for cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseState {
    pub held: bool,
    pub cancel_requested: bool,
}

const LOST: LeaseState = LeaseState { held: false, cancel_requested: false };

/// Renews the lease.
pub async fn heartbeat(db: impl PgExecutor<'_>, id: Uuid, owner: &str, attempt: i32) -> sqlx::Result<LeaseState> {
    let r: Option<bool> = sqlx::query_scalar(
        "UPDATE jobs SET heartbeat_at = now()
         WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND status = 'running' RETURNING cancel_requested",
    )
    .bind(id)
    .bind(owner)
    .bind(attempt)
    .fetch_optional(db)
    .await?;
    Ok(r.map(|c| LeaseState { held: true, cancel_requested: c }).unwrap_or(LOST))
}

/// Appends a progress event of the lease holder (also renewing the
/// heartbeat). `None` when the lease is lost.
pub async fn append_event_fenced(
    db: impl PgExecutor<'_>,
    id: Uuid,
    owner: &str,
    attempt: i32,
    kind: &str,
    data: &Value,
) -> sqlx::Result<LeaseState> {
    let r: Option<bool> = sqlx::query_scalar(
        "WITH j AS (
            UPDATE jobs SET last_event_id = last_event_id + 1, heartbeat_at = now(),
                   progress = CASE WHEN $4 IN ('step', 'epoch') THEN $5 ELSE progress END
            WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND status = 'running'
            RETURNING last_event_id, cancel_requested),
         e AS (INSERT INTO job_events (job_id, id, attempt, kind, data) SELECT $1, last_event_id, $3, $4, $5 FROM j)
         SELECT cancel_requested FROM j",
    )
    .bind(id)
    .bind(owner)
    .bind(attempt)
    .bind(kind)
    .bind(data)
    .fetch_optional(db)
    .await?;
    Ok(r.map(|c| LeaseState { held: true, cancel_requested: c }).unwrap_or(LOST))
}

/// Appends an event whatever the job's state (lifecycle events written by
/// the API or the reaper).
pub async fn append_event(
    db: impl PgExecutor<'_>,
    id: Uuid,
    attempt: i32,
    kind: &str,
    data: &Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "WITH j AS (UPDATE jobs SET last_event_id = last_event_id + 1 WHERE id = $1 RETURNING last_event_id)
         INSERT INTO job_events (job_id, id, attempt, kind, data) SELECT $1, last_event_id, $2, $3, $4 FROM j",
    )
    .bind(id)
    .bind(attempt)
    .bind(kind)
    .bind(data)
    .execute(db)
    .await?;
    Ok(())
}

/// Ends a running job of the lease holder. Returns false when the lease was
/// lost (the reaper or a cancellation got there first).
#[allow(clippy::too_many_arguments)]
pub async fn finish(
    db: impl PgExecutor<'_>,
    id: Uuid,
    owner: &str,
    attempt: i32,
    status: &str,
    error: Option<&str>,
    result: Option<&Value>,
    model_id: Option<Uuid>,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE jobs SET status = $4, error = $5, result = $6, model_id = $7, finished_at = now(),
                lease_owner = NULL, heartbeat_at = NULL
         WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND status = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(attempt)
    .bind(status)
    .bind(error)
    .bind(result)
    .bind(model_id)
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Gives an interrupted job back to the queue (worker shutdown): the
/// attempt does not count against the retry limit.
pub async fn release(db: impl PgExecutor<'_>, id: Uuid, owner: &str, attempt: i32, why: &str) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE jobs SET status = 'queued', attempts = attempts - 1, lease_owner = NULL, heartbeat_at = NULL,
                error = $4, run_after = now()
         WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND status = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(attempt)
    .bind(why)
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Retries a job that failed (the trainer returned an error) when attempts
/// are left, after `backoff_secs`; else fails it. Returns the new status.
pub async fn fail_or_retry(
    db: impl PgExecutor<'_>,
    id: Uuid,
    owner: &str,
    attempt: i32,
    error: &str,
    retry: bool,
    backoff_secs: f64,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "UPDATE jobs SET
            status = CASE WHEN $5 AND attempts < max_attempts THEN 'queued' ELSE 'failed' END,
            finished_at = CASE WHEN $5 AND attempts < max_attempts THEN NULL ELSE now() END,
            run_after = now() + make_interval(secs => $6 * power(2, attempts - 1)),
            error = $4, lease_owner = NULL, heartbeat_at = NULL
         WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND status = 'running' RETURNING status",
    )
    .bind(id)
    .bind(owner)
    .bind(attempt)
    .bind(error)
    .bind(retry)
    .bind(backoff_secs)
    .fetch_optional(db)
    .await
}

/// A job the reaper took back from a silent worker.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Reaped {
    pub id: Uuid,
    pub status: String,
    pub attempts: i32,
    pub owner: Option<String>,
}

/// Returns running jobs whose heartbeat is older than `lease_timeout_secs`
/// to the queue (after a backoff), fails them when no attempt is left, or
/// cancels them when cancellation was requested.
pub async fn reap(db: impl PgExecutor<'_>, lease_timeout_secs: f64, backoff_secs: f64) -> sqlx::Result<Vec<Reaped>> {
    sqlx::query_as(
        "WITH stale AS (
            SELECT id, lease_owner FROM jobs
            WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => $1)
            FOR UPDATE SKIP LOCKED)
         UPDATE jobs j SET
            status = CASE WHEN j.cancel_requested THEN 'cancelled'
                          WHEN j.attempts >= j.max_attempts THEN 'failed' ELSE 'queued' END,
            finished_at = CASE WHEN j.cancel_requested OR j.attempts >= j.max_attempts THEN now() END,
            run_after = now() + make_interval(secs => $2 * power(2, j.attempts - 1)),
            error = format('worker %s stopped heartbeating during attempt %s of %s', s.lease_owner, j.attempts, j.max_attempts),
            lease_owner = NULL, heartbeat_at = NULL
         FROM stale s WHERE j.id = s.id
         RETURNING j.id, j.status, j.attempts, s.lease_owner AS owner",
    )
    .bind(lease_timeout_secs)
    .bind(backoff_secs)
    .fetch_all(db)
    .await
}

/// What a cancellation request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// A queued job: cancelled at once.
    Cancelled,
    /// A running job: flagged; its worker stops at the next batch.
    Requested,
    /// Already finished: nothing to do.
    Finished,
    NotFound,
}

pub async fn cancel(conn: &mut sqlx::PgConnection, id: Uuid) -> sqlx::Result<CancelOutcome> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match status.as_deref() {
        None => CancelOutcome::NotFound,
        Some("queued") => {
            sqlx::query(
                "UPDATE jobs SET status = 'cancelled', cancel_requested = true, finished_at = now() WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *conn)
            .await?;
            CancelOutcome::Cancelled
        }
        Some("running") => {
            sqlx::query("UPDATE jobs SET cancel_requested = true WHERE id = $1").bind(id).execute(&mut *conn).await?;
            CancelOutcome::Requested
        }
        Some(_) => CancelOutcome::Finished,
    })
}

/// Events after `after`, in order.
pub async fn events(db: impl PgExecutor<'_>, job_id: Uuid, after: i64, limit: i64) -> sqlx::Result<Vec<EventRow>> {
    sqlx::query_as(
        "SELECT job_id, id, attempt, kind, data, created_at FROM job_events
         WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(job_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}
