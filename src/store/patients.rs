use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PatientRow {
    pub id: Uuid,
    pub source: String,
    pub external_id: String,
    pub visit_count: i32,
    pub created_at: DateTime<Utc>,
}

macro_rules! patient_cols {
    () => {
        "id, source, external_id, visit_count, created_at"
    };
}

pub async fn insert(db: impl PgExecutor<'_>, source: &str, external_id: &str) -> sqlx::Result<PatientRow> {
    sqlx::query_as(concat!("INSERT INTO patients (id, source, external_id) VALUES ($1, $2, $3) RETURNING ", patient_cols!(), ""))
    .bind(Uuid::now_v7())
    .bind(source)
    .bind(external_id)
    .fetch_one(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<PatientRow>> {
    sqlx::query_as(concat!("SELECT ", patient_cols!(), " FROM patients WHERE id = $1")).bind(id).fetch_optional(db).await
}

pub async fn get_by_external(db: impl PgExecutor<'_>, source: &str, external_id: &str) -> sqlx::Result<Option<PatientRow>> {
    sqlx::query_as(concat!("SELECT ", patient_cols!(), " FROM patients WHERE source = $1 AND external_id = $2"))
        .bind(source)
        .bind(external_id)
        .fetch_optional(db)
        .await
}

/// Patients in id order (ids are time-ordered UUIDv7) after `after`.
pub async fn list(db: impl PgExecutor<'_>, after: Option<Uuid>, limit: i64) -> sqlx::Result<Vec<PatientRow>> {
    sqlx::query_as(concat!("SELECT ", patient_cols!(), " FROM patients WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"))
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Locks the patient row for the rest of the transaction (serializing
/// writes to one patient) and returns it.
pub async fn lock(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<PatientRow>> {
    sqlx::query_as(concat!("SELECT ", patient_cols!(), " FROM patients WHERE id = $1 FOR UPDATE")).bind(id).fetch_optional(db).await
}

/// Deletes a patient and, by cascade, every row that belongs to it.
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    Ok(sqlx::query("DELETE FROM patients WHERE id = $1").bind(id).execute(db).await?.rows_affected() == 1)
}
