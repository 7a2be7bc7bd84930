//! Patients: create, fetch (by id or external id), list, erase.
use axum::{extract::State, http::StatusCode, response::Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    auth::{Admin, Clinical},
    error::{ApiError, FieldError, on_unique},
    extract::{Json, Path, Query},
    idempotency::{self, IdempotencyKey, Written},
    pagination::{Page, PageParams, encode_cursor},
};
use crate::{app::AppState, store};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_patient, list_patients))
        .routes(routes!(lookup_patient))
        .routes(routes!(get_patient, delete_patient))
}

pub const DEFAULT_SOURCE: &str = "default";

/// A new patient.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"external_id": "MRN-000123", "source": "st-elsewhere-ehr"}))]
pub struct CreatePatient {
    /// The patient's identifier in the source system (1 to 128 characters).
    pub external_id: String,
    /// The source system; external ids are unique per source. Default `default`.
    #[serde(default)]
    pub source: Option<String>,
}

/// A patient.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "019ae4a0-6a3c-7b51-9a43-6f0d3c1c2b10", "external_id": "MRN-000123",
    "source": "st-elsewhere-ehr", "visit_count": 3, "created_at": "2026-12-03T10:00:00Z"}))]
pub struct Patient {
    pub id: Uuid,
    pub external_id: String,
    pub source: String,
    /// Number of stored visits.
    pub visit_count: i32,
    pub created_at: DateTime<Utc>,
}

impl From<store::patients::PatientRow> for Patient {
    fn from(r: store::patients::PatientRow) -> Self {
        Patient { id: r.id, external_id: r.external_id, source: r.source, visit_count: r.visit_count, created_at: r.created_at }
    }
}

fn check_identifier(pointer: &str, value: &str, errors: &mut Vec<FieldError>) -> String {
    let v = value.trim();
    if v.is_empty() {
        errors.push(FieldError::new(pointer, "must not be empty"));
    } else if v.chars().count() > 128 {
        errors.push(FieldError::new(pointer, "must be at most 128 characters"));
    } else if v.chars().any(char::is_control) {
        errors.push(FieldError::new(pointer, "must not contain control characters"));
    }
    v.to_string()
}

/// Create a patient.
///
/// Refuses a second patient with the same external id and source (409).
#[utoipa::path(post, path = "/v1/patients", tag = "patients",
    request_body = CreatePatient,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: a retry with the same key and body returns the original response")),
    responses(
        (status = 201, description = "Created", body = Patient),
        (status = 409, description = "A patient with this external id and source exists", body = super::error::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = ["clinical"])))]
pub async fn create_patient(
    State(state): State<AppState>,
    Clinical(caller): Clinical,
    key: IdempotencyKey,
    Json(body): Json<CreatePatient>,
) -> Result<Response, ApiError> {
    let mut errors = vec![];
    let external_id = check_identifier("/external_id", &body.external_id, &mut errors);
    let source = check_identifier("/source", body.source.as_deref().unwrap_or(DEFAULT_SOURCE), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let hash = idempotency::fingerprint("POST", "/v1/patients", &body);
    idempotency::run(&state, &caller, &key, ("POST", "/v1/patients"), hash, StatusCode::CREATED, async |tx| {
        let row = store::patients::insert(&mut *tx, &source, &external_id).await.map_err(|e| {
            on_unique(e, "patients_source_external_id_key", || {
                ApiError::Conflict("a patient with this external_id and source already exists".into())
            })
        })?;
        Ok(Written { patient_id: Some(row.id), body: Patient::from(row) })
    })
    .await
}

/// List patients.
#[utoipa::path(get, path = "/v1/patients", tag = "patients", params(PageParams),
    responses((status = 200, description = "A page of patients, oldest first", body = Page<Patient>)),
    security(("api_key" = ["clinical"])))]
pub async fn list_patients(
    State(state): State<AppState>,
    _auth: Clinical,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Page<Patient>>, ApiError> {
    let limit = page.limit()?;
    let after = page.cursor(|s| s.parse::<Uuid>().ok())?;
    let rows = store::patients::list(&state.db, after, limit + 1).await?;
    Ok(axum::Json(Page::from_rows(rows, limit, |r| encode_cursor(r.id), Patient::from)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LookupParams {
    /// The patient's id in the source system.
    pub external_id: String,
    /// The source system (default `default`).
    pub source: Option<String>,
}

/// Find a patient by external id.
#[utoipa::path(get, path = "/v1/patients/lookup", tag = "patients", params(LookupParams),
    responses((status = 200, description = "The patient", body = Patient),
        (status = 404, description = "No such patient", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["clinical"])))]
pub async fn lookup_patient(
    State(state): State<AppState>,
    _auth: Clinical,
    Query(q): Query<LookupParams>,
) -> Result<axum::Json<Patient>, ApiError> {
    let source = q.source.as_deref().unwrap_or(DEFAULT_SOURCE).trim();
    store::patients::get_by_external(&state.db, source, q.external_id.trim())
        .await?
        .map(|r| axum::Json(r.into()))
        .ok_or_else(|| ApiError::NotFound("patient".into()))
}

/// Fetch a patient.
#[utoipa::path(get, path = "/v1/patients/{patient_id}", tag = "patients",
    params(("patient_id" = Uuid, Path, description = "Patient id")),
    responses((status = 200, description = "The patient", body = Patient),
        (status = 404, description = "No such patient", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["clinical"])))]
pub async fn get_patient(
    State(state): State<AppState>,
    _auth: Clinical,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Patient>, ApiError> {
    store::patients::get(&state.db, id)
        .await?
        .map(|r| axum::Json(r.into()))
        .ok_or_else(|| ApiError::NotFound("patient".into()))
}

/// Erase a patient with all their data (admin).
///
/// For erasure requests: removes the patient, every visit and every stored
/// response that concerns them, in one transaction.
#[utoipa::path(delete, path = "/v1/patients/{patient_id}", tag = "patients",
    params(("patient_id" = Uuid, Path, description = "Patient id")),
    responses((status = 204, description = "Erased"),
        (status = 404, description = "No such patient", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn delete_patient(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    if store::patients::delete(&state.db, id).await? {
        tracing::info!(patient_id = %id, "patient erased");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("patient".into()))
    }
}
