//! A patient's visits: append, list, fetch.
use axum::{extract::State, http::StatusCode, response::Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    auth::Clinical,
    error::{ApiError, FieldError},
    extract::{Json, Path, Query},
    idempotency::{self, IdempotencyKey, Written},
    pagination::{Page, PageParams, encode_cursor},
};
use super::predictions::AppendParams;
use crate::{
    app::AppState,
    domain::{CodeSet, CodeSetError},
    serving::{self, MedicationChange, Stored},
    store,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(append_visit, list_visits)).routes(routes!(get_visit))
}

/// A new visit. Codes are trimmed; duplicates within a set are dropped.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "occurred_at": "2026-12-01T09:30:00Z",
    "diagnoses": ["4019", "25000", "4280"],
    "procedures": ["3893"],
    "medications": ["C07A", "A10B", "C03C"]
}))]
pub struct NewVisit {
    /// When the visit happened (RFC 3339); default: now. Visits are ordered
    /// by this time, ties by arrival.
    #[serde(default)]
    pub occurred_at: Option<DateTime<Utc>>,
    /// Diagnosis codes (at most 1,000; each 1 to 64 printable characters).
    pub diagnoses: Vec<String>,
    /// Procedure codes (same rules).
    #[serde(default)]
    pub procedures: Vec<String>,
    /// Medications prescribed at this visit; `null` or absent when unknown.
    #[serde(default)]
    pub medications: Option<Vec<String>>,
    /// Free-text origin of the record (e.g. an EHR interface name).
    #[serde(default)]
    pub source: Option<String>,
}

/// A stored visit.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Visit {
    pub id: Uuid,
    pub patient_id: Uuid,
    /// 1-based position in the patient's history (time order). A back-dated
    /// visit takes its place and moves later visits up by one.
    pub seq: i32,
    pub occurred_at: DateTime<Utc>,
    pub diagnoses: Vec<String>,
    pub procedures: Vec<String>,
    /// `null` when unknown.
    pub medications: Option<Vec<String>>,
    pub source: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<store::visits::VisitRow> for Visit {
    fn from(r: store::visits::VisitRow) -> Self {
        Visit {
            id: r.id,
            patient_id: r.patient_id,
            seq: r.seq,
            occurred_at: r.occurred_at,
            diagnoses: r.diagnoses,
            procedures: r.procedures,
            medications: r.medications,
            source: r.source,
            created_at: r.created_at,
        }
    }
}

/// A visit whose fields passed validation.
pub struct ValidVisit {
    /// `None`: now, after every stored visit.
    pub occurred_at: Option<DateTime<Utc>>,
    pub diagnoses: CodeSet,
    pub procedures: CodeSet,
    pub medications: Option<CodeSet>,
    pub source: Option<String>,
}

fn codes(pointer: &str, raw: &[String], errors: &mut Vec<FieldError>) -> CodeSet {
    match CodeSet::parse_all(raw) {
        Ok(s) => s,
        Err(es) => {
            for e in es {
                let p = match e {
                    CodeSetError::TooMany(_) => pointer.to_string(),
                    _ => format!("{pointer}/{}", e.index().unwrap_or(0)),
                };
                errors.push(FieldError::new(p, e.to_string()));
            }
            CodeSet::default()
        }
    }
}

impl NewVisit {
    /// Checks every rule; `prefix` is the JSON pointer of this visit.
    pub fn validate(&self, prefix: &str) -> Result<ValidVisit, Vec<FieldError>> {
        let mut errors = vec![];
        let diagnoses = codes(&format!("{prefix}/diagnoses"), &self.diagnoses, &mut errors);
        let procedures = codes(&format!("{prefix}/procedures"), &self.procedures, &mut errors);
        let medications = self.medications.as_ref().map(|m| codes(&format!("{prefix}/medications"), m, &mut errors));
        let source = self.source.as_ref().map(|s| s.trim().to_string());
        if let Some(s) = &source
            && (s.is_empty() || s.chars().count() > 128 || s.chars().any(char::is_control))
        {
            errors.push(FieldError::new(format!("{prefix}/source"), "must be 1 to 128 printable characters"));
        }
        let occurred_at = self.occurred_at;
        if occurred_at.is_some_and(|t| t > Utc::now() + chrono::Duration::days(1)) {
            errors.push(FieldError::new(format!("{prefix}/occurred_at"), "must not be in the future"));
        }
        if errors.is_empty() {
            Ok(ValidVisit { occurred_at, diagnoses, procedures, medications, source })
        } else {
            Err(errors)
        }
    }
}

/// Stores a validated visit for a patient, locking the patient row first.
/// Returns `None` when the patient does not exist.
pub async fn insert_visit(
    conn: &mut sqlx::PgConnection,
    patient_id: Uuid,
    v: &ValidVisit,
) -> Result<Option<store::visits::VisitRow>, ApiError> {
    Ok(insert_visit_counted(conn, patient_id, v).await?.map(|(row, _)| row))
}

/// [`insert_visit`], also returning the patient's visit count after it.
pub async fn insert_visit_counted(
    conn: &mut sqlx::PgConnection,
    patient_id: Uuid,
    v: &ValidVisit,
) -> Result<Option<(store::visits::VisitRow, i32)>, ApiError> {
    let Some(patient) = store::patients::lock(&mut *conn, patient_id).await? else {
        return Ok(None);
    };
    let new = store::visits::NewVisit {
        occurred_at: v.occurred_at,
        diagnoses: v.diagnoses.as_slice(),
        procedures: v.procedures.as_slice(),
        medications: v.medications.as_ref().map(|m| m.as_slice()),
        source: v.source.as_deref(),
    };
    Ok(Some((store::visits::insert_locked(conn, patient_id, &new).await?, patient.visit_count + 1)))
}

/// A stored visit and, when a MICRON version is active, its prediction.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AppendedVisit {
    #[serde(flatten)]
    pub visit: Visit,
    /// The medication-change prediction for this visit (stored with it), or
    /// `null`: see `prediction_note`.
    pub prediction: Option<MedicationChange>,
    /// Why there is no prediction: the first visit (MICRON predicts from the
    /// second on), no active MICRON version, or `predict=false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_note: Option<String>,
}

/// Append a visit to a patient's history and predict its medication change.
///
/// The visit is stored at its place in time order. When a MICRON version is
/// active and the visit is not the patient's first, the answer carries the
/// prediction for it: one residual step from the patient's stored state
/// (rebuilt by one replay of the history when missing or stale), stored
/// with the new state and the visit in one transaction.
#[utoipa::path(post, path = "/v1/patients/{patient_id}/visits", tag = "visits",
    request_body = NewVisit,
    params(("patient_id" = Uuid, Path, description = "Patient id"), AppendParams,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: a retry with the same key and body returns the original response")),
    responses((status = 201, description = "Stored, with the prediction", body = AppendedVisit),
        (status = 404, description = "No such patient", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["clinical"])))]
pub async fn append_visit(
    State(state): State<AppState>,
    Clinical(caller): Clinical,
    Path(patient_id): Path<Uuid>,
    Query(params): Query<AppendParams>,
    key: IdempotencyKey,
    Json(body): Json<NewVisit>,
) -> Result<Response, ApiError> {
    let valid = body.validate("").map_err(ApiError::Validation)?;
    let opts = params.options()?;
    // One served version for the whole request, even if another is
    // activated meanwhile.
    let served = match &opts {
        Some(_) => serving::served(&state).ok(),
        None => None,
    };
    let path = format!("/v1/patients/{patient_id}/visits");
    let hash = idempotency::fingerprint("POST", &format!("{path}?{}", params.canonical()), &body);
    idempotency::run(&state, &caller, &key, ("POST", &path), hash, StatusCode::CREATED, async |tx| {
        let t0 = std::time::Instant::now();
        let (row, count) =
            insert_visit_counted(tx, patient_id, &valid).await?.ok_or_else(|| ApiError::NotFound("patient".into()))?;
        let visit_us = t0.elapsed().as_micros() as u64;
        let (prediction, note) = match (&opts, &served) {
            (None, _) => (None, Some("not requested (predict=false)".to_string())),
            (Some(_), None) => (None, Some("no MICRON model version is active".to_string())),
            (Some(opts), Some((model, micron))) => {
                match serving::predict_stored_locked(
                    tx,
                    &state,
                    (model, micron),
                    Some(caller.key_id),
                    &row,
                    count,
                    opts,
                    Some((t0, visit_us)),
                )
                .await?
                {
                    Stored::Predicted(p) => (Some(*p), None),
                    Stored::FirstVisit => {
                        (None, Some("the patient's first visit: MICRON predicts from the second visit on".to_string()))
                    }
                }
            }
        };
        Ok(Written { patient_id: Some(patient_id), body: AppendedVisit { visit: Visit::from(row), prediction, prediction_note: note } })
    })
    .await
}

/// List a patient's visits in time order.
#[utoipa::path(get, path = "/v1/patients/{patient_id}/visits", tag = "visits",
    params(("patient_id" = Uuid, Path, description = "Patient id"), PageParams),
    responses((status = 200, description = "A page of visits in order", body = Page<Visit>),
        (status = 404, description = "No such patient", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["clinical"])))]
pub async fn list_visits(
    State(state): State<AppState>,
    _auth: Clinical,
    Path(patient_id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Page<Visit>>, ApiError> {
    let limit = page.limit()?;
    let after = page.cursor(|s| s.parse::<i32>().ok())?.unwrap_or(0);
    if store::patients::get(&state.db, patient_id).await?.is_none() {
        return Err(ApiError::NotFound("patient".into()));
    }
    let rows = store::visits::list(&state.db, patient_id, after, limit + 1).await?;
    Ok(axum::Json(Page::from_rows(rows, limit, |r| encode_cursor(r.seq), Visit::from)))
}

/// Fetch one visit.
#[utoipa::path(get, path = "/v1/patients/{patient_id}/visits/{visit_id}", tag = "visits",
    params(("patient_id" = Uuid, Path, description = "Patient id"), ("visit_id" = Uuid, Path, description = "Visit id")),
    responses((status = 200, description = "The visit", body = Visit),
        (status = 404, description = "No such visit", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["clinical"])))]
pub async fn get_visit(
    State(state): State<AppState>,
    _auth: Clinical,
    Path((patient_id, visit_id)): Path<(Uuid, Uuid)>,
) -> Result<axum::Json<Visit>, ApiError> {
    store::visits::get(&state.db, patient_id, visit_id)
        .await?
        .map(|r| axum::Json(r.into()))
        .ok_or_else(|| ApiError::NotFound("visit".into()))
}
