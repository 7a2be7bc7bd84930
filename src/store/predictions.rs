//! MICRON recurrence states per patient and model version, and the audit
//! trail of stored predictions.
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

use super::visits::VisitRow;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StateRow {
    pub visit_id: Uuid,
    pub visit_seq: i32,
    pub base: Vec<f32>,
    pub h_last: Vec<f32>,
    pub meds: Vec<i32>,
}

pub async fn get_state(db: impl PgExecutor<'_>, patient_id: Uuid, model_id: Uuid) -> sqlx::Result<Option<StateRow>> {
    sqlx::query_as(
        "SELECT visit_id, visit_seq, base, h_last, meds FROM patient_states WHERE patient_id = $1 AND model_id = $2",
    )
    .bind(patient_id)
    .bind(model_id)
    .fetch_optional(db)
    .await
}

/// The state of a patient under a model version with the visit it was
/// computed after (`None` when there is no state, or its visit is gone).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StateWithVisit {
    #[sqlx(flatten)]
    pub state: StateRow,
    #[sqlx(flatten)]
    pub visit: VisitRow,
}

pub async fn get_state_with_visit(
    db: impl PgExecutor<'_>,
    patient_id: Uuid,
    model_id: Uuid,
) -> sqlx::Result<Option<StateWithVisit>> {
    sqlx::query_as(
        "SELECT s.visit_id, s.visit_seq, s.base, s.h_last, s.meds,
                v.id, v.patient_id, v.seq, v.occurred_at, v.diagnoses, v.procedures, v.medications, v.source,
                v.created_at
         FROM patient_states s JOIN visits v ON v.patient_id = s.patient_id AND v.id = s.visit_id
         WHERE s.patient_id = $1 AND s.model_id = $2",
    )
    .bind(patient_id)
    .bind(model_id)
    .fetch_optional(db)
    .await
}

pub async fn put_state(db: impl PgExecutor<'_>, patient_id: Uuid, model_id: Uuid, s: &StateRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO patient_states (patient_id, model_id, visit_id, visit_seq, base, h_last, meds)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (patient_id, model_id) DO UPDATE SET visit_id = EXCLUDED.visit_id,
           visit_seq = EXCLUDED.visit_seq, base = EXCLUDED.base, h_last = EXCLUDED.h_last,
           meds = EXCLUDED.meds, updated_at = now()",
    )
    .bind(patient_id)
    .bind(model_id)
    .bind(s.visit_id)
    .bind(s.visit_seq)
    .bind(&s.base)
    .bind(&s.h_last)
    .bind(&s.meds)
    .execute(db)
    .await
    .map(|_| ())
}

pub struct NewPrediction<'a> {
    pub id: Uuid,
    pub patient_id: Uuid,
    pub visit_id: Uuid,
    pub model_id: Uuid,
    pub model_version: &'a str,
    pub api_key_id: Option<Uuid>,
    pub previous_source: &'a str,
    pub previous: &'a [String],
    pub predicted: &'a [String],
    pub added: &'a [String],
    pub removed: &'a [String],
    pub kept: &'a [String],
    pub response: &'a Value,
    pub state_rebuilt: bool,
}

/// Stores the patient's new state and the prediction in one statement.
pub async fn put_state_and_insert(
    db: impl PgExecutor<'_>,
    s: &StateRow,
    p: &NewPrediction<'_>,
) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar(
        "WITH state AS (
           INSERT INTO patient_states (patient_id, model_id, visit_id, visit_seq, base, h_last, meds)
           VALUES ($2, $4, $15, $16, $17, $18, $19)
           ON CONFLICT (patient_id, model_id) DO UPDATE SET visit_id = EXCLUDED.visit_id,
             visit_seq = EXCLUDED.visit_seq, base = EXCLUDED.base, h_last = EXCLUDED.h_last,
             meds = EXCLUDED.meds, updated_at = now())
         INSERT INTO predictions (id, patient_id, visit_id, model_id, model_version, api_key_id, previous_source,
           previous, predicted, added, removed, kept, response, state_rebuilt)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING created_at",
    )
    .bind(p.id)
    .bind(p.patient_id)
    .bind(p.visit_id)
    .bind(p.model_id)
    .bind(p.model_version)
    .bind(p.api_key_id)
    .bind(p.previous_source)
    .bind(p.previous)
    .bind(p.predicted)
    .bind(p.added)
    .bind(p.removed)
    .bind(p.kept)
    .bind(p.response)
    .bind(p.state_rebuilt)
    .bind(s.visit_id)
    .bind(s.visit_seq)
    .bind(&s.base)
    .bind(&s.h_last)
    .bind(&s.meds)
    .fetch_one(db)
    .await
}

/// A stored prediction with the visit it was made for and the patient's
/// following visit (if any), for the audit view.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub visit_id: Uuid,
    pub visit_seq: i32,
    pub visit_occurred_at: DateTime<Utc>,
    pub recorded: Option<Vec<String>>,
    pub model_id: Option<Uuid>,
    pub model_version: String,
    pub api_key_id: Option<Uuid>,
    pub previous_source: String,
    pub previous: Vec<String>,
    pub predicted: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
    pub state_rebuilt: bool,
    pub response: Value,
    pub next_visit_id: Option<Uuid>,
    pub next_visit_seq: Option<i32>,
    pub next_visit_occurred_at: Option<DateTime<Utc>>,
    pub next_recorded: Option<Vec<String>>,
}

/// A page of a patient's predictions in order (ids are time-ordered).
pub async fn list(db: impl PgExecutor<'_>, patient_id: Uuid, after: Option<Uuid>, limit: i64) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as(
        "SELECT p.id, p.created_at, p.visit_id, v.seq AS visit_seq, v.occurred_at AS visit_occurred_at,
                v.medications AS recorded, p.model_id, p.model_version, p.api_key_id, p.previous_source,
                p.previous, p.predicted, p.added, p.removed, p.kept, p.state_rebuilt, p.response,
                n.id AS next_visit_id, n.seq AS next_visit_seq, n.occurred_at AS next_visit_occurred_at,
                n.medications AS next_recorded
         FROM predictions p
         JOIN visits v ON v.patient_id = p.patient_id AND v.id = p.visit_id
         LEFT JOIN visits n ON n.patient_id = p.patient_id AND n.seq = v.seq + 1
         WHERE p.patient_id = $1 AND ($2::uuid IS NULL OR p.id > $2)
         ORDER BY p.id LIMIT $3",
    )
    .bind(patient_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Interacting pairs among `codes` (each pair once, `a < b`).
pub async fn interactions(db: impl PgExecutor<'_>, codes: &[String]) -> sqlx::Result<Vec<(String, String)>> {
    if codes.len() < 2 {
        return Ok(vec![]);
    }
    sqlx::query_as("SELECT code_a, code_b FROM ddi_pairs WHERE code_a = ANY($1) AND code_b = ANY($1) ORDER BY code_a, code_b")
        .bind(codes)
        .fetch_all(db)
        .await
}

/// The latest stored answer of model `model_id` for a visit.
pub async fn find(db: impl PgExecutor<'_>, patient_id: Uuid, visit_id: Uuid, model_id: Uuid) -> sqlx::Result<Option<Value>> {
    sqlx::query_scalar(
        "SELECT response FROM predictions WHERE patient_id = $1 AND visit_id = $2 AND model_id = $3
         ORDER BY id DESC LIMIT 1",
    )
    .bind(patient_id)
    .bind(visit_id)
    .bind(model_id)
    .fetch_optional(db)
    .await
}

/// Stored predictions per hour over the last `hours` hours, every hour
/// listed (oldest first): (hour, count, with an interaction warning).
pub async fn hourly(db: impl PgExecutor<'_>, hours: i64) -> sqlx::Result<Vec<(DateTime<Utc>, i64, i64)>> {
    sqlx::query_as(
        "WITH h AS (
           SELECT generate_series(date_trunc('hour', now()) - make_interval(hours => $1::int - 1),
                                  date_trunc('hour', now()), interval '1 hour') AS hour)
         SELECT h.hour, count(p.id), count(p.id) FILTER (WHERE (p.response->>'interaction_warning')::boolean)
         FROM h LEFT JOIN predictions p ON p.created_at >= h.hour AND p.created_at < h.hour + interval '1 hour'
         GROUP BY h.hour ORDER BY h.hour",
    )
    .bind(hours)
    .fetch_all(db)
    .await
}
