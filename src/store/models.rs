//! Model versions (the registry's metadata; artifacts are on disk).
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ModelRow {
    pub id: Uuid,
    pub kind: String,
    /// Serving scope (`config.serving_scope`, empty for most kinds): one
    /// version per kind and scope is active.
    pub scope: String,
    pub version: String,
    pub status: String,
    pub config: Value,
    pub metrics: Value,
    pub val_score: Option<f64>,
    pub vocab: Value,
    pub artifact_path: String,
    pub files: sqlx::types::Json<BTreeMap<String, String>>,
    pub source: String,
    pub job_id: Option<Uuid>,
    pub data_snapshot: Option<Value>,
    pub parent_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
}

macro_rules! model_cols {
    () => {
        "id, kind, scope, version, status, config, metrics, val_score, vocab, artifact_path, files, source, job_id, \
         data_snapshot, parent_id, created_at, activated_at, retired_at"
    };
}

pub struct NewModel<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    pub version: &'a str,
    pub config: &'a Value,
    pub metrics: &'a Value,
    pub val_score: Option<f64>,
    pub vocab: &'a Value,
    pub artifact_path: &'a str,
    pub files: &'a BTreeMap<String, String>,
    pub source: &'a str,
    pub job_id: Option<Uuid>,
    pub data_snapshot: Option<&'a Value>,
    pub parent_id: Option<Uuid>,
}

pub async fn insert(db: impl PgExecutor<'_>, m: &NewModel<'_>) -> sqlx::Result<ModelRow> {
    sqlx::query_as(concat!(
        "INSERT INTO models (id, kind, version, status, config, metrics, val_score, vocab, artifact_path, files, source,
                             job_id, data_snapshot, parent_id)
         VALUES ($1, $2, $3, 'ready', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING ",
        model_cols!()
    ))
    .bind(m.id)
    .bind(m.kind)
    .bind(m.version)
    .bind(m.config)
    .bind(m.metrics)
    .bind(m.val_score)
    .bind(m.vocab)
    .bind(m.artifact_path)
    .bind(sqlx::types::Json(m.files))
    .bind(m.source)
    .bind(m.job_id)
    .bind(m.data_snapshot)
    .bind(m.parent_id)
    .fetch_one(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<ModelRow>> {
    sqlx::query_as(concat!("SELECT ", model_cols!(), " FROM models WHERE id = $1")).bind(id).fetch_optional(db).await
}

/// The active version of a kind served without a scope (MICRON, the baselines).
pub async fn active(db: impl PgExecutor<'_>, kind: &str) -> sqlx::Result<Option<ModelRow>> {
    active_in(db, kind, "").await
}

/// The active version of a kind in a serving scope.
pub async fn active_in(db: impl PgExecutor<'_>, kind: &str, scope: &str) -> sqlx::Result<Option<ModelRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        model_cols!(),
        " FROM models WHERE kind = $1 AND scope = $2 AND status = 'active'"
    ))
    .bind(kind)
    .bind(scope)
    .fetch_optional(db)
    .await
}

pub async fn all_active(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<ModelRow>> {
    sqlx::query_as(concat!("SELECT ", model_cols!(), " FROM models WHERE status = 'active' ORDER BY kind, scope"))
        .fetch_all(db)
        .await
}

pub async fn count_kind(db: impl PgExecutor<'_>, kind: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM models WHERE kind = $1").bind(kind).fetch_one(db).await
}

/// Newest first, before `before`.
pub async fn list(
    db: impl PgExecutor<'_>,
    kind: Option<&str>,
    status: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<ModelRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        model_cols!(),
        " FROM models WHERE ($1::text IS NULL OR kind = $1) AND ($2::text IS NULL OR status = $2)
           AND ($3::uuid IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
    ))
    .bind(kind)
    .bind(status)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Makes `id` the active version of its kind and scope; the previous active
/// version of that scope goes back to `ready`. Serialized per kind by an
/// advisory lock. Returns the previous active version's id.
pub async fn activate(conn: &mut sqlx::PgConnection, kind: &str, scope: &str, id: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('medchange.models.' || $1))")
        .bind(kind)
        .execute(&mut *conn)
        .await?;
    let previous: Option<Uuid> = sqlx::query_scalar(
        "UPDATE models SET status = 'ready' WHERE kind = $1 AND scope = $3 AND status = 'active' AND id <> $2 \
         RETURNING id",
    )
    .bind(kind)
    .bind(id)
    .bind(scope)
    .fetch_optional(&mut *conn)
    .await?;
    sqlx::query("UPDATE models SET status = 'active', activated_at = now(), retired_at = NULL WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(previous)
}

pub async fn set_status(db: impl PgExecutor<'_>, id: Uuid, status: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE models SET status = $2, retired_at = CASE WHEN $2 = 'retired' THEN now() ELSE retired_at END WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .execute(db)
    .await?;
    Ok(())
}
