//! Training and evaluation jobs (admin): create, list, inspect, cancel,
//! and their progress events, listed or streamed live (Server-Sent Events).
use std::{collections::VecDeque, convert::Infallible, time::Duration};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{
        Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    auth::Admin,
    error::{ApiError, FieldError},
    extract::{Json, Path, Query},
    idempotency::{self, IdempotencyKey, Written},
    pagination::{Page, PageParams, encode_cursor},
};
use crate::{
    app::AppState,
    jobs::kinds::PLANNED,
    store::{self, jobs::CancelOutcome},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(list_job_kinds))
        .routes(routes!(get_job))
        .routes(routes!(cancel_job))
        .routes(routes!(list_job_events))
        .routes(routes!(stream_job_events))
}

/// A job to start.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "train_copy_previous", "params": {"seed": 1203}}))]
pub struct CreateJob {
    /// The job kind (see `GET /v1/job-kinds`), e.g. `train_copy_previous`,
    /// `evaluate`.
    pub kind: String,
    /// The kind's parameters (validated now: bad values are a 422 with
    /// pointers under `/params`). Default `{}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Option<Value>,
    /// Attempts before a job whose worker keeps crashing fails (1 to 10;
    /// default from the server's settings).
    #[serde(default)]
    pub max_attempts: Option<i32>,
}

/// A job's status.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }
}

/// A background job.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    pub kind: String,
    /// The validated parameters, defaults filled in.
    #[schema(value_type = Object)]
    pub params: Value,
    pub status: JobStatus,
    /// Runs started so far (a crashed run is retried up to `max_attempts`).
    pub attempts: i32,
    pub max_attempts: i32,
    /// An admin asked to cancel; the running job stops at its next batch.
    pub cancel_requested: bool,
    /// The worker holding the lease while running.
    pub lease_owner: Option<String>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// The latest step or epoch event's data.
    #[schema(value_type = Option<Object>)]
    pub progress: Option<Value>,
    pub error: Option<String>,
    /// The stored data the job used (fixed at its first start).
    #[schema(value_type = Option<crate::jobs::DataSnapshot>)]
    pub data_snapshot: Option<Value>,
    /// The result of a job that registers no model (e.g. evaluation metrics).
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// The model version a training job registered.
    pub model_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The id of the newest event.
    pub last_event_id: i64,
}

impl From<store::jobs::JobRow> for Job {
    fn from(r: store::jobs::JobRow) -> Self {
        Job {
            id: r.id,
            kind: r.kind,
            params: r.params,
            status: JobStatus::parse(&r.status).unwrap_or(JobStatus::Failed),
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            cancel_requested: r.cancel_requested,
            lease_owner: r.lease_owner,
            heartbeat_at: r.heartbeat_at,
            progress: r.progress,
            error: r.error,
            data_snapshot: r.data_snapshot,
            result: r.result,
            model_id: r.model_id,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            last_event_id: r.last_event_id,
        }
    }
}

/// One job event: `status` (lifecycle), `step`, `epoch` or `log`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobEvent {
    /// 1, 2, 3... per job: the SSE event id to resume from.
    pub id: i64,
    pub job_id: Uuid,
    pub attempt: i32,
    pub kind: String,
    /// For `step`, `epoch` and `log`: a [`Progress`](crate::jobs::Progress)
    /// object; for `status`: `{"status": ..}` with details.
    #[schema(value_type = Object)]
    pub data: Value,
    pub created_at: DateTime<Utc>,
}

impl From<store::jobs::EventRow> for JobEvent {
    fn from(r: store::jobs::EventRow) -> Self {
        JobEvent {
            id: r.id,
            job_id: r.job_id,
            attempt: r.attempt,
            kind: r.kind,
            data: r.data,
            created_at: r.created_at,
        }
    }
}

/// A job kind this server accepts, or one planned but not built in.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobKindInfo {
    pub name: String,
    pub description: String,
    /// Whether jobs of this kind can be created on this server.
    pub available: bool,
    /// The model kind a successful run registers, if any.
    pub model_kind: Option<crate::registry::ModelKind>,
    /// JSON schema of `params`.
    #[schema(value_type = Option<Object>)]
    pub params_schema: Option<Value>,
}

/// List job kinds.
#[utoipa::path(get, path = "/v1/job-kinds", tag = "jobs",
    responses((status = 200, description = "Every kind, available ones first", body = Vec<JobKindInfo>)),
    security(("api_key" = ["admin"])))]
pub async fn list_job_kinds(State(state): State<AppState>, _auth: Admin) -> axum::Json<Vec<JobKindInfo>> {
    let mut out: Vec<JobKindInfo> = state
        .kinds
        .iter()
        .map(|k| JobKindInfo {
            name: k.name().into(),
            description: k.description().into(),
            available: true,
            model_kind: k.model_kind(),
            params_schema: Some(k.params_schema()),
        })
        .collect();
    for (name, why) in PLANNED {
        if state.kinds.get(name).is_none() {
            out.push(JobKindInfo {
                name: (*name).into(),
                description: (*why).into(),
                available: false,
                model_kind: None,
                params_schema: None,
            });
        }
    }
    axum::Json(out)
}

/// Start a job.
///
/// Queues a training or evaluation job; a worker picks it up. Parameters
/// are validated now.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body = CreateJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: a retry with the same key and body returns the original response")),
    responses((status = 201, description = "Queued", body = Job)),
    security(("api_key" = ["admin"])))]
pub async fn create_job(
    State(state): State<AppState>,
    Admin(caller): Admin,
    key: IdempotencyKey,
    Json(body): Json<CreateJob>,
) -> Result<Response, ApiError> {
    let name = body.kind.trim();
    let Some(kind) = state.kinds.get(name) else {
        let detail = match PLANNED.iter().find(|(n, _)| *n == name) {
            Some((_, why)) => format!("`{name}` is not available in this build: {why}"),
            None => format!("unknown job kind; one of: {}", state.kinds.names().join(", ")),
        };
        return Err(ApiError::Validation(vec![FieldError::new("/kind", detail)]));
    };
    let max_attempts = body.max_attempts.unwrap_or(state.jobs.max_attempts.clamp(1, 10));
    if !(1..=10).contains(&max_attempts) {
        return Err(ApiError::validation("/max_attempts", "must be from 1 to 10"));
    }
    let raw = body.params.clone().unwrap_or_else(|| Value::Object(Default::default()));
    let params = kind.validate(raw, &state.db).await?;
    let hash = idempotency::fingerprint("POST", "/v1/jobs", &body);
    let name = kind.name();
    idempotency::run(&state, &caller, &key, ("POST", "/v1/jobs"), hash, StatusCode::CREATED, async |tx| {
        let row = store::jobs::insert(&mut *tx, name, &params, max_attempts, Some(caller.key_id)).await?;
        store::jobs::append_event(&mut *tx, row.id, 0, "status", &serde_json::json!({"status": "queued"})).await?;
        tracing::info!(job_id = %row.id, kind = name, "job queued");
        let row = store::jobs::get(&mut *tx, row.id).await?.expect("just inserted");
        Ok(Written { patient_id: None, body: Job::from(row) })
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobFilter {
    /// Only jobs with this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
}

/// List jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobFilter, PageParams),
    responses((status = 200, description = "A page of jobs, newest first", body = Page<Job>)),
    security(("api_key" = ["admin"])))]
pub async fn list_jobs(
    State(state): State<AppState>,
    _auth: Admin,
    Query(page): Query<PageParams>,
    Query(filter): Query<JobFilterRaw>,
) -> Result<axum::Json<Page<Job>>, ApiError> {
    let limit = page.limit()?;
    let before = page.cursor(|s| s.parse::<Uuid>().ok())?;
    let status = match filter.status.as_deref() {
        None => None,
        Some(s) => Some(JobStatus::parse(s).map(|_| s).ok_or_else(|| {
            ApiError::validation("query:status", "must be one of queued, running, succeeded, failed, cancelled")
        })?),
    };
    let rows = store::jobs::list(&state.db, status, filter.kind.as_deref(), before, limit + 1).await?;
    Ok(axum::Json(Page::from_rows(rows, limit, |r| encode_cursor(r.id), Job::from)))
}

/// The raw filter (query values arrive as strings).
#[derive(Debug, Deserialize)]
pub struct JobFilterRaw {
    pub status: Option<String>,
    pub kind: Option<String>,
    #[serde(default)]
    pub limit: Option<String>,
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Fetch a job.
#[utoipa::path(get, path = "/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = Uuid, Path, description = "Job id")),
    responses((status = 200, description = "The job", body = Job),
        (status = 404, description = "No such job", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn get_job(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Job>, ApiError> {
    store::jobs::get(&state.db, id).await?.map(|r| axum::Json(r.into())).ok_or_else(|| ApiError::NotFound("job".into()))
}

/// Cancel a job.
///
/// A queued job is cancelled at once. A running job is flagged
/// (`cancel_requested`); its worker stops it at the next batch, removes
/// its partial artifacts and ends it as `cancelled`.
#[utoipa::path(post, path = "/v1/jobs/{job_id}/cancel", tag = "jobs",
    params(("job_id" = Uuid, Path, description = "Job id")),
    responses((status = 200, description = "Cancelled, or cancellation requested", body = Job),
        (status = 404, description = "No such job", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job has already finished", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn cancel_job(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Job>, ApiError> {
    let mut tx = state.db.begin().await?;
    match store::jobs::cancel(&mut tx, id).await? {
        CancelOutcome::NotFound => return Err(ApiError::NotFound("job".into())),
        CancelOutcome::Finished => return Err(ApiError::Conflict("the job has already finished".into())),
        CancelOutcome::Cancelled => {
            store::jobs::append_event(
                &mut *tx,
                id,
                0,
                "status",
                &serde_json::json!({"status": "cancelled", "error": "cancelled by an admin"}),
            )
            .await?;
        }
        CancelOutcome::Requested => {
            store::jobs::append_event(
                &mut *tx,
                id,
                0,
                "status",
                &serde_json::json!({"status": "running", "cancel_requested": true}),
            )
            .await?;
        }
    }
    let row = store::jobs::get(&mut *tx, id).await?.ok_or_else(|| ApiError::NotFound("job".into()))?;
    tx.commit().await?;
    tracing::info!(job_id = %id, status = %row.status, "job cancellation");
    Ok(axum::Json(row.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Only events with a larger id (default 0: from the start).
    #[param(value_type = Option<i64>, minimum = 0)]
    pub after: Option<String>,
    /// At most this many events, 1 to 1000 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

impl EventParams {
    fn after(&self) -> Result<i64, ApiError> {
        match &self.after {
            None => Ok(0),
            Some(s) => s
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::validation("query:after", "must be an integer >= 0")),
        }
    }
    fn limit(&self) -> Result<i64, ApiError> {
        match &self.limit {
            None => Ok(100),
            Some(s) => s
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| ApiError::validation("query:limit", "must be an integer from 1 to 1000")),
        }
    }
}

/// Events of a job, in order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobEvents {
    pub items: Vec<JobEvent>,
    /// Pass as `after` for the next events.
    pub last_id: i64,
}

/// List a job's events.
#[utoipa::path(get, path = "/v1/jobs/{job_id}/events", tag = "jobs",
    params(("job_id" = Uuid, Path, description = "Job id"), EventParams),
    responses((status = 200, description = "Events after `after`, in order", body = JobEvents),
        (status = 404, description = "No such job", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn list_job_events(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
    Query(q): Query<EventParams>,
) -> Result<axum::Json<JobEvents>, ApiError> {
    let (after, limit) = (q.after()?, q.limit()?);
    if store::jobs::get(&state.db, id).await?.is_none() {
        return Err(ApiError::NotFound("job".into()));
    }
    let items: Vec<JobEvent> =
        store::jobs::events(&state.db, id, after, limit).await?.into_iter().map(Into::into).collect();
    let last_id = items.last().map(|e| e.id).unwrap_or(after);
    Ok(axum::Json(JobEvents { items, last_id }))
}

/// Stream a job's events (Server-Sent Events).
///
/// Each SSE message has `id:` the event id, `event:` its kind and `data:`
/// the [`JobEvent`] as JSON. Resumes after the `Last-Event-ID` header (or
/// `after`); the stream ends once the job has finished and every event was
/// sent.
#[utoipa::path(get, path = "/v1/jobs/{job_id}/events/stream", tag = "jobs",
    params(("job_id" = Uuid, Path, description = "Job id"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id (sent by EventSource on reconnect)"),
        ("after" = Option<i64>, Query, description = "Resume after this event id (when the header is absent)")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such job", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn stream_job_events(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Query(q): Query<EventParams>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::validation("header:Last-Event-ID", "must be an event id (an integer >= 0)"))?,
        None => q.after()?,
    };
    if store::jobs::get(&state.db, id).await?.is_none() {
        return Err(ApiError::NotFound("job".into()));
    }
    let tail =
        Tail {
            db: state.db.clone(),
            id,
            after,
            buf: VecDeque::new(),
            done: false,
            poll: Duration::from_millis(250),
            shutdown: state.shutdown.subscribe(),
        };
    let stream = futures::stream::unfold(tail, |mut t| async move {
        loop {
            if let Some(ev) = t.buf.pop_front() {
                t.after = ev.id;
                let event = Event::default().id(ev.id.to_string()).event(ev.kind.clone());
                let event = event
                    .json_data(JobEvent::from(ev))
                    .unwrap_or_else(|_| Event::default().comment("unserializable event"));
                return Some((Ok(event), t));
            }
            if t.done {
                return None;
            }
            // Read the status first: when the job had ended, the events
            // read next include its final one (written in the same commit).
            let ended = match store::jobs::get(&t.db, t.id).await {
                Ok(Some(job)) => job.is_terminal(),
                Ok(None) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream: reading the job failed");
                    return None;
                }
            };
            const BATCH: i64 = 500;
            match store::jobs::events(&t.db, t.id, t.after, BATCH).await {
                Ok(rows) => {
                    let complete = (rows.len() as i64) < BATCH;
                    t.buf.extend(rows);
                    if ended && complete {
                        t.done = true;
                    } else if t.buf.is_empty() {
                        if *t.shutdown.borrow() {
                            return None; // the server is stopping; clients resume with Last-Event-ID
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(t.poll) => {}
                            _ = t.shutdown.changed() => {}
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event stream: reading events failed");
                    return None;
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

struct Tail {
    db: sqlx::PgPool,
    id: Uuid,
    after: i64,
    buf: VecDeque<store::jobs::EventRow>,
    done: bool,
    poll: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
}
