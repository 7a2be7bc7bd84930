use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VisitRow {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub seq: i32,
    pub occurred_at: DateTime<Utc>,
    pub diagnoses: Vec<String>,
    pub procedures: Vec<String>,
    pub medications: Option<Vec<String>>,
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
}

macro_rules! visit_cols {
    () => {
        "id, patient_id, seq, occurred_at, diagnoses, procedures, medications, source, created_at"
    };
}

pub struct NewVisit<'a> {
    /// `None`: the visit happens now, after every stored visit.
    pub occurred_at: Option<DateTime<Utc>>,
    pub diagnoses: &'a [String],
    pub procedures: &'a [String],
    pub medications: Option<&'a [String]>,
    pub source: Option<&'a str>,
}

/// Inserts a visit at its place in time order. The caller must hold the
/// patient's row lock ([`super::patients::lock`]) in the same transaction.
/// Visits at the same time keep arrival order, so the new one goes after
/// them; later visits move up by one. A visit without a time is stamped
/// under the lock, so it lands after every stored visit.
pub async fn insert_locked(conn: &mut PgConnection, patient_id: Uuid, v: &NewVisit<'_>) -> sqlx::Result<VisitRow> {
    // The time, the visits up to it and all visits, in one round trip.
    let (occurred_at, before, total): (DateTime<Utc>, i64, i64) = sqlx::query_as(
        "WITH t AS (SELECT coalesce($2::timestamptz,
                      greatest(clock_timestamp(), (SELECT max(occurred_at) FROM visits WHERE patient_id = $1))) AS at)
         SELECT t.at,
                (SELECT count(*) FROM visits WHERE patient_id = $1 AND occurred_at <= t.at),
                (SELECT count(*) FROM visits WHERE patient_id = $1)
         FROM t",
    )
    .bind(patient_id)
    .bind(v.occurred_at)
    .fetch_one(&mut *conn)
    .await?;
    let seq = before as i32 + 1;
    if before < total {
        // A back-dated visit: the later ones move up by one.
        sqlx::query("UPDATE visits SET seq = seq + 1 WHERE patient_id = $1 AND seq >= $2")
            .bind(patient_id)
            .bind(seq)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query_as(concat!(
        "WITH counted AS (UPDATE patients SET visit_count = visit_count + 1 WHERE id = $1)
         INSERT INTO visits (patient_id, id, seq, occurred_at, diagnoses, procedures, medications, source)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
        visit_cols!(),
        ""
    ))
    .bind(patient_id)
    .bind(Uuid::now_v7())
    .bind(seq)
    .bind(occurred_at)
    .bind(v.diagnoses)
    .bind(v.procedures)
    .bind(v.medications)
    .bind(v.source)
    .fetch_one(&mut *conn)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, patient_id: Uuid, id: Uuid) -> sqlx::Result<Option<VisitRow>> {
    sqlx::query_as(concat!("SELECT ", visit_cols!(), " FROM visits WHERE patient_id = $1 AND id = $2"))
        .bind(patient_id)
        .bind(id)
        .fetch_optional(db)
        .await
}

/// A page of a patient's visits in order, after sequence number `after`.
pub async fn list(db: impl PgExecutor<'_>, patient_id: Uuid, after: i32, limit: i64) -> sqlx::Result<Vec<VisitRow>> {
    sqlx::query_as(concat!("SELECT ", visit_cols!(), " FROM visits WHERE patient_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"))
    .bind(patient_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Every visit of a patient, in order.
pub async fn all(db: impl PgExecutor<'_>, patient_id: Uuid) -> sqlx::Result<Vec<VisitRow>> {
    list(db, patient_id, 0, i64::MAX).await
}

/// The patient's latest visit.
pub async fn latest(db: impl PgExecutor<'_>, patient_id: Uuid) -> sqlx::Result<Option<VisitRow>> {
    sqlx::query_as(concat!("SELECT ", visit_cols!(), " FROM visits WHERE patient_id = $1 ORDER BY seq DESC LIMIT 1"))
        .bind(patient_id)
        .fetch_optional(db)
        .await
}
