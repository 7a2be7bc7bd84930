use sqlx::PgExecutor;
use uuid::Uuid;

/// A response stored for an `Idempotency-Key`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stored {
    pub request_hash: Vec<u8>,
    pub status: i16,
    pub response: serde_json::Value,
}

pub async fn find(db: impl PgExecutor<'_>, api_key_id: Uuid, key: &str) -> sqlx::Result<Option<Stored>> {
    sqlx::query_as("SELECT request_hash, status, response FROM idempotency_keys WHERE api_key_id = $1 AND key = $2")
        .bind(api_key_id)
        .bind(key)
        .fetch_optional(db)
        .await
}

pub struct NewRecord<'a> {
    pub api_key_id: Uuid,
    pub key: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub request_hash: &'a [u8],
    pub status: u16,
    pub response: &'a serde_json::Value,
    pub patient_id: Option<Uuid>,
}

pub const PK: &str = "idempotency_keys_pkey";

pub async fn insert(db: impl PgExecutor<'_>, r: &NewRecord<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO idempotency_keys (api_key_id, key, method, path, request_hash, status, response, patient_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(r.api_key_id)
    .bind(r.key)
    .bind(r.method)
    .bind(r.path)
    .bind(r.request_hash)
    .bind(r.status as i16)
    .bind(r.response)
    .bind(r.patient_id)
    .execute(db)
    .await?;
    Ok(())
}

/// Removes records older than `hours`; returns how many.
pub async fn purge_older_than(db: impl PgExecutor<'_>, hours: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1::int)")
        .bind(hours as i32)
        .execute(db)
        .await?
        .rows_affected())
}
