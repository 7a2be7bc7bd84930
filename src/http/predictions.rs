//! Medication-change predictions: for a stored patient's latest visit
//! (stored, with the recurrence state), a preview for a draft visit
//! (nothing stored), stateless predictions for histories in the body, the
//! audit trail of a patient's predictions, and hourly counts.
use axum::{extract::State, http::StatusCode, response::IntoResponse, response::Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    auth::{Admin, Clinical},
    error::{ApiError, Problem},
    extract::{Json, Path, Query},
    idempotency::{self, IdempotencyKey, Written},
    pagination::{Page, PageParams, encode_cursor},
};
use crate::{
    app::AppState,
    serving::{self, HistoryVisit, MedicationChange, PredictOptions, Stored},
    store,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(predict_latest, list_predictions))
        .routes(routes!(preview))
        .routes(routes!(batch))
        .routes(routes!(stats))
}

/// Most histories and visits one batch request may carry.
pub const BATCH_MAX_PATIENTS: usize = 1000;
pub const BATCH_MAX_VISITS: usize = 20_000;

fn parse_bool(name: &str, v: &Option<String>, default: bool) -> Result<bool, ApiError> {
    match v.as_deref() {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(_) => Err(ApiError::validation(format!("query:{name}"), "must be `true` or `false`")),
    }
}

/// Options of a prediction request.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PredictParams {
    /// `all`: list the probability of every medication; default `floor`: only
    /// those of at least 0.01.
    #[param(value_type = Option<String>, example = "all")]
    pub probabilities: Option<String>,
    /// `true`: ignore the stored state and replay the whole history (the
    /// state is still stored; for benchmarks and checks). Default `false`.
    #[param(value_type = Option<bool>)]
    pub replay: Option<String>,
}

impl PredictParams {
    pub fn options(&self) -> Result<PredictOptions, ApiError> {
        let all_probabilities = match self.probabilities.as_deref() {
            None | Some("floor") => false,
            Some("all") => true,
            Some(_) => return Err(ApiError::validation("query:probabilities", "must be `all` or `floor`")),
        };
        Ok(PredictOptions { all_probabilities, force_replay: parse_bool("replay", &self.replay, false)? })
    }
}

/// Options of a visit append.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AppendParams {
    /// `false`: store the visit without predicting. Default `true` (when a
    /// MICRON version is active).
    #[param(value_type = Option<bool>)]
    pub predict: Option<String>,
    /// As for predictions.
    #[param(value_type = Option<String>, example = "all")]
    pub probabilities: Option<String>,
    /// As for predictions.
    #[param(value_type = Option<bool>)]
    pub replay: Option<String>,
}

impl AppendParams {
    /// `None` when no prediction is wanted.
    pub fn options(&self) -> Result<Option<PredictOptions>, ApiError> {
        let opts = PredictParams { probabilities: self.probabilities.clone(), replay: self.replay.clone() }.options()?;
        Ok(parse_bool("predict", &self.predict, true)?.then_some(opts))
    }

    /// The query options in a canonical form (part of the idempotency
    /// fingerprint: the same body with other options is another request).
    pub fn canonical(&self) -> String {
        format!("predict={:?}&probabilities={:?}&replay={:?}", self.predict, self.probabilities, self.replay)
    }
}

/// Predict the patient's latest visit and store the prediction.
///
/// Runs the active MICRON version one step from the patient's stored state
/// (rebuilding it by one replay of the history when there is none) and
/// stores the new state and the prediction. When this version already
/// predicted that visit, the stored prediction is returned (200).
#[utoipa::path(post, path = "/v1/patients/{patient_id}/predictions", tag = "predictions",
    params(("patient_id" = Uuid, Path, description = "Patient id"), PredictParams,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    responses((status = 201, description = "Predicted and stored", body = MedicationChange),
        (status = 200, description = "This model version already predicted the latest visit", body = MedicationChange),
        (status = 404, description = "No such patient", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The patient has fewer than two visits", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No active MICRON version", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = ["clinical"])))]
pub async fn predict_latest(
    State(state): State<AppState>,
    Clinical(caller): Clinical,
    Path(patient_id): Path<Uuid>,
    Query(params): Query<PredictParams>,
    key: IdempotencyKey,
) -> Result<Response, ApiError> {
    let opts = params.options()?;
    let served = serving::served(&state)?;
    // An existing answer of this version for the latest visit is returned as is.
    if !opts.force_replay
        && let Some(latest) = store::visits::latest(&state.db, patient_id).await?
        && let Some(found) = store::predictions::find(&state.db, patient_id, latest.id, served.0.id).await?
    {
        return Ok((StatusCode::OK, axum::Json(found)).into_response());
    }
    let path = format!("/v1/patients/{patient_id}/predictions");
    let hash = idempotency::fingerprint("POST", &path, &serde_json::json!({"query": format!("{params:?}")}));
    idempotency::run(&state, &caller, &key, ("POST", &path), hash, StatusCode::CREATED, async |tx| {
        let t0 = std::time::Instant::now();
        let patient =
            store::patients::lock(&mut *tx, patient_id).await?.ok_or_else(|| ApiError::NotFound("patient".into()))?;
        let latest = store::visits::latest(&mut *tx, patient_id).await?;
        let Some(latest) = latest.filter(|_| patient.visit_count >= 2) else {
            return Err(ApiError::Conflict(format!(
                "the patient has {} visit(s); MICRON predicts a visit from the previous one, so it needs two \
                 (append visits with POST /v1/patients/{{id}}/visits, or preview a draft visit)",
                patient.visit_count
            )));
        };
        let (model, micron) = (&served.0, &served.1);
        match serving::predict_stored_locked(
            tx,
            &state,
            (model, micron),
            Some(caller.key_id),
            &latest,
            patient.visit_count,
            &opts,
            Some((t0, t0.elapsed().as_micros() as u64)),
        )
        .await?
        {
            Stored::Predicted(p) => Ok(Written { patient_id: Some(patient_id), body: *p }),
            Stored::FirstVisit => Err(ApiError::Conflict("the latest visit is the patient's first".into())),
        }
    })
    .await
}

/// Preview the prediction for a draft visit, storing nothing.
///
/// The draft is treated as the visit after the patient's stored visits (for
/// order-entry screens). A patient without visits gets the draft predicted
/// from the empty history.
#[utoipa::path(post, path = "/v1/patients/{patient_id}/predictions/preview", tag = "predictions",
    request_body = HistoryVisit,
    params(("patient_id" = Uuid, Path, description = "Patient id"), PredictParams),
    responses((status = 200, description = "The prediction (not stored)", body = MedicationChange),
        (status = 404, description = "No such patient", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No active MICRON version", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = ["clinical"])))]
pub async fn preview(
    State(state): State<AppState>,
    _auth: Clinical,
    Path(patient_id): Path<Uuid>,
    Query(params): Query<PredictParams>,
    Json(draft): Json<HistoryVisit>,
) -> Result<axum::Json<MedicationChange>, ApiError> {
    let opts = params.options()?;
    Ok(axum::Json(serving::preview_stored(&state, patient_id, &draft, &opts).await?))
}

/// One history of a batch.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchHistory {
    /// The caller's label for this history, echoed back.
    #[serde(default)]
    pub id: Option<String>,
    /// Visits in time order.
    pub visits: Vec<HistoryVisit>,
}

/// Histories to predict, nothing stored.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"patients": [{"id": "P1", "visits": [
    {"diagnoses": ["4019", "25000"], "procedures": ["3893"], "medications": ["C07A", "A10B"]},
    {"diagnoses": ["4019", "4280"], "procedures": [], "medications": null}]}]}))]
pub struct BatchRequest {
    /// At most 1,000 histories and 20,000 visits in all.
    pub patients: Vec<BatchHistory>,
}

/// The predictions of one history.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct BatchResult {
    pub id: Option<String>,
    /// One prediction per visit after the first, in order (`visit_seq` is the
    /// visit's 1-based position).
    pub predictions: Vec<MedicationChange>,
}

/// The answer to a batch.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct BatchResponse {
    pub model: serving::ModelRef,
    pub results: Vec<BatchResult>,
}

/// Predict every visit after the first of whole histories (stateless).
///
/// For research and back-testing: each history is replayed from its first
/// visit with the live rule for the previous set, and nothing is stored.
#[utoipa::path(post, path = "/v1/predictions/batch", tag = "predictions",
    request_body = BatchRequest,
    responses((status = 200, description = "Predictions per history", body = BatchResponse),
        (status = 422, description = "Invalid histories, or more than the limits", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No active MICRON version", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = ["clinical"])))]
pub async fn batch(
    State(state): State<AppState>,
    _auth: Clinical,
    Query(params): Query<PredictParams>,
    Json(body): Json<BatchRequest>,
) -> Result<axum::Json<BatchResponse>, ApiError> {
    let opts = params.options()?;
    if opts.force_replay {
        return Err(ApiError::validation("query:replay", "a batch is always replayed; leave `replay` out"));
    }
    if body.patients.is_empty() {
        return Err(ApiError::validation("/patients", "needs at least one history"));
    }
    if body.patients.len() > BATCH_MAX_PATIENTS {
        return Err(ApiError::validation("/patients", format!("at most {BATCH_MAX_PATIENTS} histories per request")));
    }
    let visits: usize = body.patients.iter().map(|p| p.visits.len()).sum();
    if visits > BATCH_MAX_VISITS {
        return Err(ApiError::validation(
            "/patients",
            format!("{visits} visits in all; at most {BATCH_MAX_VISITS} per request"),
        ));
    }
    let mut errors = vec![];
    let histories: Vec<_> = body
        .patients
        .iter()
        .enumerate()
        .map(|(i, p)| serving::validate_history(&format!("/patients/{i}"), &p.visits, &mut errors))
        .collect();
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let (model, micron) = serving::served(&state)?;
    let answers = serving::predict_histories(&state, (&model, &micron), histories, false, &opts).await?;
    let results = body
        .patients
        .into_iter()
        .zip(answers)
        .map(|(p, mut preds)| {
            for (i, a) in preds.iter_mut().enumerate() {
                a.visit_seq = Some(i as i32 + 2);
            }
            BatchResult { id: p.id, predictions: preds }
        })
        .collect();
    Ok(axum::Json(BatchResponse { model: serving::ModelRef { id: model.id, version: model.version.clone() }, results }))
}

/// A visit as the audit view shows it.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct AuditVisit {
    pub id: Uuid,
    pub seq: i32,
    pub occurred_at: DateTime<Utc>,
    /// The medications recorded for it (`null` when unknown).
    pub recorded_medications: Option<Vec<String>>,
}

/// A stored prediction next to what was recorded.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    /// The API key that asked (`null` once the key is deleted).
    pub api_key_id: Option<Uuid>,
    /// The visit predicted, with the medications recorded for it.
    pub visit: AuditVisit,
    /// The patient's following visit, when there is one.
    pub next_visit: Option<AuditVisit>,
    /// The answer as it was given.
    pub prediction: MedicationChange,
}

/// List a patient's stored predictions, oldest first.
///
/// Each prediction comes with the medications recorded for the predicted
/// visit and for the following visit, for comparison.
#[utoipa::path(get, path = "/v1/patients/{patient_id}/predictions", tag = "predictions",
    params(("patient_id" = Uuid, Path, description = "Patient id"), PageParams),
    responses((status = 200, description = "A page of predictions", body = Page<AuditEntry>),
        (status = 404, description = "No such patient", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = ["clinical"])))]
pub async fn list_predictions(
    State(state): State<AppState>,
    _auth: Clinical,
    Path(patient_id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Page<AuditEntry>>, ApiError> {
    let limit = page.limit()?;
    let after = page.cursor(|s| s.parse::<Uuid>().ok())?;
    if store::patients::get(&state.db, patient_id).await?.is_none() {
        return Err(ApiError::NotFound("patient".into()));
    }
    let rows = store::predictions::list(&state.db, patient_id, after, limit + 1).await?;
    let mut items = Vec::with_capacity(rows.len());
    for r in rows {
        let prediction: MedicationChange = serde_json::from_value(r.response.clone())
            .map_err(|e| anyhow::anyhow!("stored prediction {} does not parse: {e}", r.id))?;
        let next_visit = match (r.next_visit_id, r.next_visit_seq, r.next_visit_occurred_at) {
            (Some(id), Some(seq), Some(occurred_at)) => {
                Some(AuditVisit { id, seq, occurred_at, recorded_medications: r.next_recorded.clone() })
            }
            _ => None,
        };
        items.push((
            r.id,
            AuditEntry {
                id: r.id,
                created_at: r.created_at,
                api_key_id: r.api_key_id,
                visit: AuditVisit {
                    id: r.visit_id,
                    seq: r.visit_seq,
                    occurred_at: r.visit_occurred_at,
                    recorded_medications: r.recorded,
                },
                next_visit,
                prediction,
            },
        ));
    }
    Ok(axum::Json(Page::from_rows(items, limit, |(id, _)| encode_cursor(id), |(_, e)| e)))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsParams {
    /// How many hours back, 1 to 720 (default 24).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 720)]
    pub hours: Option<String>,
}

/// Stored predictions in one hour.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct HourCount {
    /// Start of the hour (UTC).
    pub hour: DateTime<Utc>,
    pub count: i64,
    /// Of which with an interaction warning.
    pub with_interactions: i64,
}

/// Prediction counts per hour.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct PredictionStats {
    pub hours: i64,
    pub total: i64,
    /// Every hour of the window, oldest first (zero counts included).
    pub per_hour: Vec<HourCount>,
}

/// Count stored predictions per hour (admin).
#[utoipa::path(get, path = "/v1/predictions/stats", tag = "predictions", params(StatsParams),
    responses((status = 200, description = "Counts per hour", body = PredictionStats)),
    security(("api_key" = ["admin"])))]
pub async fn stats(
    State(state): State<AppState>,
    _auth: Admin,
    Query(params): Query<StatsParams>,
) -> Result<axum::Json<PredictionStats>, ApiError> {
    let hours = match params.hours.as_deref() {
        None => 24,
        Some(s) => match s.parse::<i64>() {
            Ok(h) if (1..=720).contains(&h) => h,
            _ => return Err(ApiError::validation("query:hours", "must be an integer from 1 to 720")),
        },
    };
    let per_hour: Vec<HourCount> = store::predictions::hourly(&state.db, hours)
        .await?
        .into_iter()
        .map(|(hour, count, with_interactions)| HourCount { hour, count, with_interactions })
        .collect();
    let total = per_hour.iter().map(|h| h.count).sum();
    Ok(axum::Json(PredictionStats { hours, total, per_hour }))
}
