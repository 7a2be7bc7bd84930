//! Uploaded vector datasets (the training data of `vectors` density models).
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// A dataset without its values.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DatasetRow {
    pub id: Uuid,
    pub name: String,
    pub dim: i32,
    pub row_count: i32,
    pub columns: Option<Vec<String>>,
    pub sha256: String,
    pub format: String,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

macro_rules! dataset_cols {
    () => {
        "id, name, dim, row_count, columns, sha256, format, created_by, created_at"
    };
}

pub struct NewDataset<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub dim: i32,
    pub row_count: i32,
    pub columns: Option<&'a [String]>,
    /// float32 little-endian, row-major
    pub data: &'a [u8],
    pub sha256: &'a str,
    pub format: &'a str,
    pub created_by: Option<Uuid>,
}

pub async fn insert(db: impl PgExecutor<'_>, d: &NewDataset<'_>) -> sqlx::Result<DatasetRow> {
    sqlx::query_as(concat!(
        "INSERT INTO density_datasets (id, name, dim, row_count, columns, data, sha256, format, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING ",
        dataset_cols!()
    ))
    .bind(d.id)
    .bind(d.name)
    .bind(d.dim)
    .bind(d.row_count)
    .bind(d.columns)
    .bind(d.data)
    .bind(d.sha256)
    .bind(d.format)
    .bind(d.created_by)
    .fetch_one(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<DatasetRow>> {
    sqlx::query_as(concat!("SELECT ", dataset_cols!(), " FROM density_datasets WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Newest first, before `before`.
pub async fn list(db: impl PgExecutor<'_>, before: Option<Uuid>, limit: i64) -> sqlx::Result<Vec<DatasetRow>> {
    sqlx::query_as(concat!(
        "SELECT ",
        dataset_cols!(),
        " FROM density_datasets WHERE ($1::uuid IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
    ))
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The rows of a dataset as f64 (with its sha256, to record what was used).
pub async fn values(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<(Vec<Vec<f64>>, String)>> {
    let row: Option<(i32, Vec<u8>, String)> =
        sqlx::query_as("SELECT dim, data, sha256 FROM density_datasets WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(dim, data, sha)| (decode(&data, dim as usize), sha)))
}

/// float32 little-endian bytes of rows.
pub fn encode(rows: &[Vec<f64>]) -> Vec<u8> {
    rows.iter().flatten().flat_map(|&v| (v as f32).to_le_bytes()).collect()
}

pub fn decode(data: &[u8], dim: usize) -> Vec<Vec<f64>> {
    let vals: Vec<f64> = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect();
    vals.chunks(dim.max(1)).map(|c| c.to_vec()).collect()
}

/// What [`delete_unless_in_use`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Yes,
    Missing,
    /// A queued or running `train_density` job reads it.
    InUse(Uuid),
}

/// Deletes a dataset unless a queued or running `train_density` job names
/// it, in one transaction holding the dataset row (a job created at the same
/// moment fails when it runs, saying the dataset does not exist).
pub async fn delete_unless_in_use(db: &sqlx::PgPool, id: Uuid) -> sqlx::Result<Deleted> {
    let mut tx = db.begin().await?;
    let exists: Option<Uuid> = sqlx::query_scalar("SELECT id FROM density_datasets WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Ok(Deleted::Missing);
    }
    let job: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE kind = 'train_density' AND status IN ('queued', 'running')
           AND params->>'dataset_id' = $1::text LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(job) = job {
        return Ok(Deleted::InUse(job));
    }
    sqlx::query("DELETE FROM density_datasets WHERE id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Deleted::Yes)
}
