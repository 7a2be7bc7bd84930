//! The model registry (admin): list and inspect versions, compare two
//! versions' metrics, activate (atomic swap of the served version, no
//! restart) and retire.
use std::collections::BTreeMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    auth::Admin,
    error::ApiError,
    extract::{Path, Query},
    pagination::{Page, PageParams, encode_cursor},
};
use crate::{
    app::AppState,
    registry::{ModelKind, RegistryError},
    store,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models))
        .routes(routes!(served_models))
        .routes(routes!(compare_models))
        .routes(routes!(get_model))
        .routes(routes!(activate_model))
        .routes(routes!(retire_model))
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound => ApiError::NotFound("model version".into()),
            e @ RegistryError::Integrity { .. } => {
                ApiError::ArtifactIntegrity(format!("{e}; the version was not loaded"))
            }
            RegistryError::Conflict(why) => ApiError::Conflict(why),
            RegistryError::Database(e) => ApiError::Database(e),
            RegistryError::Other(e) => ApiError::Internal(e),
        }
    }
}

/// A version's status.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatus {
    Training,
    Ready,
    /// Served.
    Active,
    Retired,
    Failed,
}

/// A registered model version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelVersion {
    pub id: Uuid,
    pub kind: ModelKind,
    /// Serving scope: one version per kind and scope is active. Empty for
    /// MICRON and the baselines; for density models `micron_health:<MICRON
    /// version id>` or `vectors:<dataset id>`, so that density models over
    /// different feature spaces are served side by side.
    pub scope: String,
    pub version: String,
    pub status: ModelStatus,
    #[schema(value_type = Object)]
    pub config: Value,
    /// E.g. `{"val": {...}, "test": {...}}`.
    #[schema(value_type = Object)]
    pub metrics: Value,
    /// Validation score (higher is better) used for automatic promotion.
    pub val_score: Option<f64>,
    /// Vocabulary sizes.
    #[schema(value_type = Object)]
    pub vocab: Value,
    /// Folder under the models directory.
    pub artifact_path: String,
    /// sha256 of every artifact file, by relative path.
    pub files: BTreeMap<String, String>,
    /// `job`, `shipped` or `import`.
    pub source: String,
    /// Lineage: the job that trained it, its data snapshot, the version it
    /// started from.
    pub job_id: Option<Uuid>,
    #[schema(value_type = Option<crate::jobs::DataSnapshot>)]
    pub data_snapshot: Option<Value>,
    pub parent_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
}

impl From<store::models::ModelRow> for ModelVersion {
    fn from(r: store::models::ModelRow) -> Self {
        ModelVersion {
            id: r.id,
            kind: ModelKind::parse(&r.kind).unwrap_or(ModelKind::CopyPrevious),
            scope: r.scope,
            version: r.version,
            status: serde_json::from_value(Value::String(r.status)).unwrap_or(ModelStatus::Failed),
            config: r.config,
            metrics: r.metrics,
            val_score: r.val_score,
            vocab: r.vocab,
            artifact_path: r.artifact_path,
            files: r.files.0,
            source: r.source,
            job_id: r.job_id,
            data_snapshot: r.data_snapshot,
            parent_id: r.parent_id,
            created_at: r.created_at,
            activated_at: r.activated_at,
            retired_at: r.retired_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ModelFilter {
    /// Only versions of this kind.
    pub kind: Option<ModelKind>,
    /// Only versions with this status.
    pub status: Option<ModelStatus>,
}

#[derive(Debug, Deserialize)]
pub struct ModelFilterRaw {
    pub kind: Option<String>,
    pub status: Option<String>,
}

/// List model versions, newest first.
#[utoipa::path(get, path = "/v1/models", tag = "models", params(ModelFilter, PageParams),
    responses((status = 200, description = "A page of versions, newest first", body = Page<ModelVersion>)),
    security(("api_key" = ["admin"])))]
pub async fn list_models(
    State(state): State<AppState>,
    _auth: Admin,
    Query(page): Query<PageParams>,
    Query(filter): Query<ModelFilterRaw>,
) -> Result<axum::Json<Page<ModelVersion>>, ApiError> {
    let limit = page.limit()?;
    let before = page.cursor(|s| s.parse::<Uuid>().ok())?;
    if let Some(k) = &filter.kind
        && ModelKind::parse(k).is_none()
    {
        return Err(ApiError::validation("query:kind", "must be one of micron, gru, copy_previous, density"));
    }
    if let Some(s) = &filter.status
        && serde_json::from_value::<ModelStatus>(Value::String(s.clone())).is_err()
    {
        return Err(ApiError::validation("query:status", "must be one of training, ready, active, retired, failed"));
    }
    let rows =
        store::models::list(&state.db, filter.kind.as_deref(), filter.status.as_deref(), before, limit + 1).await?;
    Ok(axum::Json(Page::from_rows(rows, limit, |r| encode_cursor(r.id), ModelVersion::from)))
}

/// A version served by this process.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServedModel {
    pub kind: String,
    /// Serving scope (empty, or a density model's feature space).
    pub scope: String,
    pub model_id: Uuid,
    pub version: String,
    /// sha256 of every file, verified when it was loaded.
    pub files: BTreeMap<String, String>,
}

/// The versions this process serves.
///
/// What is loaded in memory (checksums verified), one per kind and scope; replicas
/// follow activations made elsewhere within a few seconds.
#[utoipa::path(get, path = "/v1/models/active", tag = "models",
    responses((status = 200, description = "Served versions by kind", body = Vec<ServedModel>)),
    security(("api_key" = ["admin"])))]
pub async fn served_models(State(state): State<AppState>, _auth: Admin) -> axum::Json<Vec<ServedModel>> {
    axum::Json(
        state
            .registry
            .active_all()
            .iter()
            .map(|m| ServedModel {
                kind: m.kind.clone(),
                scope: m.scope.clone(),
                model_id: m.id,
                version: m.version.clone(),
                files: m.files.clone(),
            })
            .collect(),
    )
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CompareParams {
    /// The first version.
    #[param(value_type = Uuid)]
    pub a: String,
    /// The second version.
    #[param(value_type = Uuid)]
    pub b: String,
}

/// One metric of two versions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricDiff {
    /// JSON pointer into `metrics`, e.g. `/val/jaccard`.
    pub metric: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// `b - a` when both exist.
    pub diff: Option<f64>,
}

/// Two versions side by side.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Comparison {
    pub a: ModelVersion,
    pub b: ModelVersion,
    /// Every numeric metric of either version.
    pub metrics: Vec<MetricDiff>,
}

fn numbers(prefix: &str, v: &Value, out: &mut BTreeMap<String, f64>) {
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.insert(prefix.to_string(), x);
            }
        }
        Value::Object(m) => {
            for (k, v) in m {
                numbers(&format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1")), v, out);
            }
        }
        _ => {}
    }
}

/// Compare two versions' metrics.
#[utoipa::path(get, path = "/v1/models/compare", tag = "models", params(CompareParams),
    responses((status = 200, description = "Both versions and every numeric metric", body = Comparison),
        (status = 404, description = "No such version", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn compare_models(
    State(state): State<AppState>,
    _auth: Admin,
    Query(q): Query<CompareParams>,
) -> Result<axum::Json<Comparison>, ApiError> {
    let a: Uuid = q.a.parse().map_err(|_| ApiError::validation("query:a", "must be a model version id (UUID)"))?;
    let b: Uuid = q.b.parse().map_err(|_| ApiError::validation("query:b", "must be a model version id (UUID)"))?;
    let a = store::models::get(&state.db, a).await?.ok_or_else(|| ApiError::NotFound("model version `a`".into()))?;
    let b = store::models::get(&state.db, b).await?.ok_or_else(|| ApiError::NotFound("model version `b`".into()))?;
    let (mut ma, mut mb) = (BTreeMap::new(), BTreeMap::new());
    numbers("", &a.metrics, &mut ma);
    numbers("", &b.metrics, &mut mb);
    let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
    let metrics = keys
        .into_iter()
        .map(|k| {
            let (x, y) = (ma.get(k).copied(), mb.get(k).copied());
            MetricDiff { metric: k.clone(), a: x, b: y, diff: x.zip(y).map(|(x, y)| y - x) }
        })
        .collect();
    Ok(axum::Json(Comparison { a: a.into(), b: b.into(), metrics }))
}

/// Fetch a model version.
#[utoipa::path(get, path = "/v1/models/{model_id}", tag = "models",
    params(("model_id" = Uuid, Path, description = "Model version id")),
    responses((status = 200, description = "The version", body = ModelVersion),
        (status = 404, description = "No such version", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn get_model(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<ModelVersion>, ApiError> {
    store::models::get(&state.db, id)
        .await?
        .map(|r| axum::Json(r.into()))
        .ok_or_else(|| ApiError::NotFound("model version".into()))
}

/// Activate a model version.
///
/// Verifies every artifact's sha256, loads the version, then makes it the
/// served version of its kind and scope (the previous one goes back to `ready`),
/// without a restart. A version whose artifacts fail verification is
/// refused (409 `artifact-integrity`) and the served version stays.
#[utoipa::path(post, path = "/v1/models/{model_id}/activate", tag = "models",
    params(("model_id" = Uuid, Path, description = "Model version id")),
    responses((status = 200, description = "Now served", body = ModelVersion),
        (status = 404, description = "No such version", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Artifacts failed verification, or the status does not allow it", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn activate_model(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<ModelVersion>, ApiError> {
    Ok(axum::Json(state.registry.activate(id).await?.into()))
}

/// Retire a model version.
///
/// Its files stay; it can be activated again. The served version cannot be
/// retired (activate another one first).
#[utoipa::path(post, path = "/v1/models/{model_id}/retire", tag = "models",
    params(("model_id" = Uuid, Path, description = "Model version id")),
    responses((status = 200, description = "Retired", body = ModelVersion),
        (status = 404, description = "No such version", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The version is being served", body = super::error::Problem, content_type = "application/problem+json")),
    security(("api_key" = ["admin"])))]
pub async fn retire_model(
    State(state): State<AppState>,
    _auth: Admin,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<ModelVersion>, ApiError> {
    Ok(axum::Json(state.registry.retire(id).await?.into()))
}
