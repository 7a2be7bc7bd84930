use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::Role;

/// Prefix of every key, so leaked keys are recognisable by secret scanners.
pub const KEY_PREFIX: &str = "mck_";

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    /// The first characters of the key, to recognise it in a list.
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

type Row = (Uuid, String, String, String, DateTime<Utc>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn from_row(r: Row) -> ApiKey {
    ApiKey {
        id: r.0,
        name: r.1,
        role: Role::parse(&r.2).unwrap_or(Role::Clinical),
        key_prefix: r.3,
        created_at: r.4,
        last_used_at: r.5,
        revoked_at: r.6,
    }
}

pub fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// A new random key: `mck_` and 43 URL-safe base64 characters (256 bits).
pub fn generate() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn display_prefix(key: &str) -> String {
    key.chars().take(KEY_PREFIX.len() + 6).collect()
}

/// Stores `key` (hashed) under a new id.
pub async fn insert(db: impl PgExecutor<'_>, name: &str, role: Role, key: &str) -> sqlx::Result<ApiKey> {
    let row: Row = sqlx::query_as(
        "INSERT INTO api_keys (id, name, role, key_hash, key_prefix) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, name, role, key_prefix, created_at, last_used_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(role.as_str())
    .bind(hash(key))
    .bind(display_prefix(key))
    .fetch_one(db)
    .await?;
    Ok(from_row(row))
}

/// The active (not revoked) key with this secret, if any. Marks it used at
/// most once a minute.
pub async fn find_active(db: &PgPool, key: &str) -> sqlx::Result<Option<ApiKey>> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, name, role, key_prefix, created_at, last_used_at, revoked_at
         FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash(key))
    .fetch_optional(db)
    .await?;
    let key = row.map(from_row);
    if let Some(k) = &key
        && k.last_used_at.is_none_or(|t| Utc::now() - t > chrono::Duration::minutes(1))
    {
        sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = $1").bind(k.id).execute(db).await?;
    }
    Ok(key)
}

/// One key by id (active or revoked).
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<ApiKey>> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, name, role, key_prefix, created_at, last_used_at, revoked_at FROM api_keys WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(from_row))
}

pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<ApiKey>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, name, role, key_prefix, created_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at, id",
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Revokes a key; `None` when no such key exists. Revoking twice keeps the
/// first revocation time.
pub async fn revoke(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<ApiKey>> {
    let row: Option<Row> = sqlx::query_as(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
         RETURNING id, name, role, key_prefix, created_at, last_used_at, revoked_at",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(from_row))
}

/// Whether any active admin key exists.
pub async fn has_active_admin(db: impl PgExecutor<'_>) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL)")
        .fetch_one(db)
        .await
}

/// Whether this exact key is stored (active or revoked).
pub async fn exists(db: impl PgExecutor<'_>, key: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE key_hash = $1)").bind(hash(key)).fetch_one(db).await
}
